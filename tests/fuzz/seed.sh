#!/usr/bin/env bash
# Build the fuzz targets' seed corpora from real data, at run time (never
# commit them): tests/fuzz/corpus/<target>/.
#
#   SMS texts        ../shared/data/spam/sms/SMSSpamCollection (relative to the repo)
#   SpamAssassin     $SIFT_DATA_DIR/spam-assassin, else target/data/spam-assassin
#                    (fetched with filters/spam/fetch-data.sh when missing)
#   CI logs          ../shared/data/cilogs/logs/
#   models           filters/spam/model.bin, filters/cilog/model.bin
#   configs          config/*.yaml and the ```yaml blocks of README.md and docs/*.md
#   request heads    written here (http_head: byte 0 picks the listener)
#   Envoy checks     written here (envoy_check: text form, SMS bodies)
#   RLS calls        written here (rls: text form, the tree's keys and values)
#
# Idempotent; a target's corpus is rebuilt from scratch only with --clean.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=tests/fuzz/corpus
SHARED=${SIFT_SHARED_DATA:-../shared/data}
DATA=${SIFT_DATA_DIR:-target/data}
[[ ${1:-} == --clean ]] && rm -rf "$OUT"
mkdir -p "$OUT"/{mail_view,extract,cilog,models,decode,config,http_head,envoy_check,wire,rls,web_auth}

if [[ ! -d $DATA/spam-assassin ]]; then
    filters/spam/fetch-data.sh
fi

python3 - "$ROOT" "$OUT" "$SHARED" "$DATA" <<'PY'
import glob, gzip, hashlib, os, random, re, sys, zlib
root, out, shared, data = sys.argv[1:]
rnd = random.Random(1)
os.chdir(root)

def put(target, blob):
    name = hashlib.sha1(blob).hexdigest()
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(blob)

MAX = 64 << 10

# Mail: SpamAssassin messages (a sample per group) and SMS texts.
mails = []
for group in sorted(glob.glob(os.path.join(data, "spam-assassin", "*"))):
    files = sorted(glob.glob(os.path.join(group, "*.txt")))
    for p in rnd.sample(files, min(60, len(files))):
        mails.append(open(p, "rb").read()[:MAX])
sms = []
with open(os.path.join(shared, "spam/sms/SMSSpamCollection"), "rb") as f:
    lines = f.read().splitlines()
for l in rnd.sample(lines, min(100, len(lines))):
    sms.append(l.split(b"\t", 1)[-1])
for m in mails + sms:
    put("mail_view", m)

# Extract: "<content-type>[\t<pointer or field>...]\n<body>".
def esc(s):
    return s.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
for i, t in enumerate(sms[:40]):
    import urllib.parse
    put("extract", b"text/plain; charset=utf-8\n" + t)
    put("extract", b"application/json\n" + ('{"message": "%s", "n": [1, 2.5e3, true, null]}' % esc(t)).encode())
    put("extract", b"application/json\t/message\t/meta/0\n" + ('{"meta": ["%s", {"x": "\\u00e9\\ud83d\\ude00"}], "message": "%s"}' % (esc(t[:20]), esc(t))).encode())
    put("extract", b"application/x-www-form-urlencoded\tcomment\n" + b"name=x&comment=" + urllib.parse.quote_plus(t).encode())
    b = b"XyZ%d" % i
    put("extract", b"multipart/form-data; boundary=\"" + b + b"\"\tmsg\n--" + b + b"\r\nContent-Disposition: form-data; name=\"msg\"\r\n\r\n" + t + b"\r\n--" + b + b"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile\r\n--" + b + b"--\r\n")
for m in mails[:40]:
    put("extract", b"message/rfc822\n" + m)

# CI logs: whole logs (up to 64 KiB: head and tail) and some chunked-JSON-ish lines.
logs = sorted(glob.glob(os.path.join(shared, "cilogs/logs/**/*.log"), recursive=True))
for p in rnd.sample(logs, min(150, len(logs))):
    b = open(p, "rb").read()
    put("cilog", b if len(b) <= MAX else b[: MAX // 2] + b[-MAX // 2 :])

# Models: the shipped files.
for p in ["filters/spam/model.bin", "filters/cilog/model.bin"]:
    put("models", open(p, "rb").read())

# Decode: byte 0 encoding (0 gzip, 1 deflate, 2 br, 3 none), byte 1 limits,
# byte 2 chunk step; then the encoded body.
def brotli_stored(b):
    # Brotli without a library: uncompressed meta-blocks (RFC 7932 9.2).
    bits = []
    def w(v, n):
        for k in range(n):
            bits.append((v >> k) & 1)
    w(0, 1)  # WBITS = 16
    for i in range(0, len(b), 65536):
        part = b[i : i + 65536]
        w(0, 1)  # ISLAST
        w(0, 2)  # MNIBBLES = 4
        w(len(part) - 1, 16)
        w(1, 1)  # ISUNCOMPRESSED
        while len(bits) % 8:
            bits.append(0)
        for byte in part:
            w(byte, 8)
    w(1, 1); w(1, 1)  # ISLAST, ISLASTEMPTY
    while len(bits) % 8:
        bits.append(0)
    return bytes(sum(bits[i + k] << k for k in range(8)) for i in range(0, len(bits), 8))
for i, m in enumerate(mails[:30] + sms[:10]):
    l = rnd.randrange(256)
    step = bytes([rnd.choice([1, 2, 7, 64, 255])])
    put("decode", bytes([0, l]) + step + gzip.compress(m))
    put("decode", bytes([1, l]) + step + zlib.compress(m))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    put("decode", bytes([1, l]) + step + c.compress(m) + c.flush())
    put("decode", bytes([2, l]) + step + brotli_stored(m))
    put("decode", bytes([3, l]) + step + m)
put("decode", bytes([0, 0x0f, 5]) + gzip.compress(b"a" * 300000))  # a small bomb

# Config: shipped configs and the YAML blocks of the docs.
for p in sorted(glob.glob("config/*.yaml")):
    put("config", open(p, "rb").read())
for p in ["README.md"] + sorted(glob.glob("docs/*.md")) + sorted(glob.glob("filters/*/README.md")):
    text = open(p, encoding="utf-8").read()
    for block in re.findall(r"```ya?ml\n(.*?)```", text, re.S):
        put("config", block.encode())

# http_head: byte 0 picks the listener (escaped_slashes keep, reject,
# unescape; path_parameters keep, reject, strip); the rest is sent as is. Heads for every route of the
# target's config, with the tricks the proxy normalises or refuses.
heads = [
    b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /%61dmin/x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET //admin//x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x/..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x/%2e%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin%2Fx HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a%5Cb%2f%2F/c%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /%7e%41%2D%5f%2e HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p;x/..;y/admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin;jsessionid=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x/;p/admin;q/y HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://api.example.com:8080/v1/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    b"GET /v1/users HTTP/1.1\r\nHost: API.Example.COM.:443\r\n\r\n",
    b"PUT /v1 HTTP/1.1\r\nHost: eu.api.example.com\r\nContent-Length: 2\r\n\r\nhi",
    b"DELETE /v1/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: old.example.com\r\n\r\n",
    b"GET /old/a/b?c=d HTTP/1.1\r\nHost: www.example.com:8080\r\n\r\n",
    b"GET /old/x HTTP/1.0\r\n\r\n",
    b"GET /g HTTP/1.1\r\nHost: a\r\nx-tenant: gold\r\n\r\n",
    b"GET /g HTTP/1.1\r\nHost: a\r\nx-tenant: gold\r\nX-Tenant: silver\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /docs/a/b?x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /docsx HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /contact?q=URGENT+you+have+WON+a+FREE+prize+txt+CLAIM&msg[]=x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /contact HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\napp-spam-score: 0\r\n\r\nmsg=Hello+there%2C+see+you+at+lunch&a=b",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /upload/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n",
    b"POST /spool HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 34\r\napp-spool-score: 0.0000\r\n\r\nWIN a FREE prize now, txt CLAIM!!!",
    b"POST /spool/x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 2996\r\n\r\n" + b"free money " * 272 + b"xxxx",
    b"POST /spool HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"y" * 2048 + b"\r\n" + b"c00\r\n" + b"z" * 3072 + b"\r\n0\r\nx-trailer: 1\r\n\r\n",
    b"POST /spool HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 7000\r\n\r\n" + b"lorem ipsum " * 583 + b"abcd",
    b"POST /spool HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /retry HTTP/1.1\r\nHost: a\r\nx-up-fail: 1\r\nContent-Length: 11\r\n\r\nhello world",
    b"PUT /retry/x HTTP/1.1\r\nHost: a\r\nx-up-fail: early\r\nContent-Length: 1000\r\n\r\n" + b"r" * 1000,
    b"POST /retry HTTP/1.1\r\nHost: a\r\nx-up-fail: early\r\nContent-Length: 3000\r\n\r\n" + b"s" * 3000,
    b"POST /retry HTTP/1.1\r\nHost: a\r\nx-up-fail: 1\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-other: 2\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\ncontent-type: x\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sift-spam-verdict, cookie, x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-sift-spam-verdict: ham\r\ncookie: a=b\r\nkeep-alive: 1\r\n\r\n",
    b"POST /retry HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sift-error, x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-sift-error: forged\r\nproxy-authorization: x\r\n\r\n",
    b"POST /spool HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: x-a, x-b\r\nTrailer: x-c\r\n\r\n3\r\nwin\r\n0\r\nx-a: 1\r\nx-c: 3\r\nx-d: 4\r\n\r\n",
    b"GET /limited HTTP/1.1\r\nHost: a\r\nx-user: u1\r\nx-user: u2\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nx-user: 42\r\nx-sift-canary: always\r\nx-sift-x: 1\r\nx_forwarded_for: 1.2.3.4\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nx-sift-canary: always\r\nx-sift-canary: never\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Forwarded-For: 10.0.0.3\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-foo, te\r\nx-foo: 1\r\nKeep-Alive: 5\r\nTE: trailers, gzip\r\nProxy-Connection: x\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example:80@b.example\r\n\r\n",
    b"GET /?a=%zz&b HTTP/1.1\r\nHost: a..b\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    # Regex path and header, query conditions, CORS, compression.
    b"GET /items/42/reviews HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /items/%34%32 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nx-client: v3.14\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nx-client: v3.1\r\nx-client: v4.2\r\n\r\n",
    b"GET /search?q=sift+proxy&lang=en-GB HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /search?page&mode=full+text HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /search?page=2&mode=full%20text&nocache HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /search?q=sift&lang=fr&debug=0&debug=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /search/x?d%65bug=%31 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS /cors/x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
    b"OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://a.b.example.org\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    b"OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.example.com\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    b"GET /cors/me HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example.com\r\nx-app-cors: star\r\n\r\n",
    b"OPTIONS /pub/a HTTP/1.1\r\nHost: a\r\nOrigin: http://x.test\r\nAccess-Control-Request-Method: DELETE\r\nAccess-Control-Request-Headers: x-a, x-b\r\n\r\n",
    b"GET /pub/a?n=40 HTTP/1.1\r\nHost: a\r\nOrigin: http://x.test\r\nAccept-Encoding: gzip\r\nx-app-cors: cred\r\n\r\n",
    b"GET /gz/page?n=300 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, br\r\nx-up-etag: 1\r\nx-up-piece: 7\r\n\r\n",
    b"GET /gz/a HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip;q=0, *\r\nx-up-cl: 1\r\n\r\n",
    b"GET /gz/b?n=2 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: *\r\nx-up-type: image/png\r\n\r\n",
    b"HEAD /gz/c HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /gz/d?n=100 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\nx-up-piece: 100\r\n\r\n",
]
for i, h in enumerate(heads):
    for sel in range(3):
        put("http_head", bytes([sel]) + h)

# envoy_check, text form (byte 0 odd): method, path, headers, blank
# line, body; bit 1 partial body, bit 2 an ops principal. Every route of
# the target's config, bodies from real SMS texts.
texts = [t.strip() for t in sms[:40]]
checks = [
    (b"POST", b"/submit", [b"content-type: text/plain"]),
    (b"POST", b"/submit/form", [b"content-type: application/x-www-form-urlencoded"]),
    (b"POST", b"/strict", [b"content-type: application/json"]),
    (b"POST", b"/notes/7?q=hello", [b"content-type: text/plain", b"x-tenant: t1", b"x-sift-spam-verdict: ham", b"x_user: admin"]),
    (b"OPTIONS", b"/notes/1", [b"origin: https://web.example", b"access-control-request-method: POST"]),
    (b"GET", b"/notes/2", [b"origin: https://web.example", b"x-tenant: a", b"x-tenant: b"]),
    (b"GET", b"/admin/x", []),
    (b"GET", b"/old?x=1", []),
    (b"POST", b"/classify", [b"x-mode: verdict", b"content-type: text/plain"]),
    (b"GET", b"/a/../admin", []),
    (b"GET", b"/", [b"x-sift-cluster: vip"]),
]
for i, (m, p, hs) in enumerate(checks):
    body = b""
    if m == b"POST":
        t = texts[i % len(texts)]
        if b"form" in p:
            body = b"message=" + t.replace(b" ", b"+")
        elif b"strict" in p:
            body = b'{"text": "' + t.replace(b'"', b"") + b'"}'
        else:
            body = t
    for flags in (1, 3, 5, 7):
        put("envoy_check", bytes([flags]) + m + b"\n" + p + b"\n" + b"\n".join(hs) + b"\n\n" + body)
# Bodies past the target's overload.max_buffered_bytes (1 KiB): 503 on
# routes whose filters read them.
long = b" ".join(texts)[:1500]
for p in (b"/notes/3", b"/submit", b"/classify", b"/"):
    put("envoy_check", bytes([1]) + b"POST\n" + p + b"\ncontent-type: text/plain\nx-mode: verdict\n\n" + long)

# rls, text form (byte 0 odd): domain, descriptors as k=v pairs, the
# tree's keys and values, some hits_addend and overrides.
calls = [
    "d\na=10.0.0.1", "d\na=10.0.0.1\na=10.0.0.1\na=10.0.0.1\na=10.0.0.1",
    "d\nt=gold\nt=gold,p=/x\nt=gold,p=/x", "d\nt=trial\nt=trial\nt=trial",
    "d\nt=silver\na=1.2.3.4", "d\nu=job\nt=x,y=z", "d\n+5\nt=gold\nt=gold",
    "d\n!2\na=9.9.9.9\n!2\na=9.9.9.9\n!2\na=9.9.9.9", "e\nx=1,y=z\nx=2,y=z\nx=1,y=z",
    "nope\na=1", "\na=1", "d",
]
for c in calls:
    put("rls", b"\x01" + c.encode())

# web_auth: base64 text as gRPC-Web clients send it (padded per message),
# bytes to encode, htpasswd files as htpasswd and openssl write them, and
# Authorization headers.
for data in (b"AAAABQo=AAAAAQ==", b"Zm9vYmFy", b"Zg==Zm8=\r\nZm9v", b"\x00\x00\x00\x00\x05hello"):
    put("web_auth", b"\x00\x03" + data)
for f in (b"ann:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\x00myPassword",
          b"# users\ncy:{SSHA}uJDd0BIdJ9Z7yDCZNWdgYeb33+cBAgME\n\x00secret"):
    put("web_auth", b"\x01\x01" + f)
for h in (b"Basic YW5uOnBhOnNz", b"basic Ym9iOnNlY3JldA==", b"Bearer x"):
    put("web_auth", b"\x02\x01" + h)

# wire: PROXY protocol headers (byte 0 = 0) and Redis replies (1), as
# load balancers and Redis send them, each followed by the next bytes; DNS
# answers (2: A records, 6: AAAA) as servers send them; TLS ClientHellos (3)
# as Python's ssl module writes them, whole and split over two records.
import struct
pp = [
    b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n",
    b"PROXY TCP6 2001:db8::7 ::1 4000 80\r\n\x16\x03\x01",
    b"PROXY UNKNOWN\r\n",
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11" + struct.pack(">H", 18) + bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 56324, 443) + b"\xea\x00\x03vpc" + b"\x16\x03\x01",
    b"\r\n\r\n\0\r\nQUIT\n\x21\x21" + struct.pack(">H", 36) + bytes(range(32)) + struct.pack(">HH", 1, 2),
    b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00GET /",
]
resp = [
    b"*4\r\n:1\r\n:41\r\n:0\r\n:60000000\r\n",
    b"$40\r\n" + b"a" * 40 + b"\r\n",
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    b"+OK\r\n",
    b"$-1\r\n",
    b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n",
]
for h in pp:
    put("wire", b"\x00" + h)
for r in resp:
    put("wire", b"\x01" + r)

def dns(qname, qtype, rcode, records, cname=None, flags=0x8180):
    m = struct.pack(">HHHHHH", 0xBEEF, flags | rcode, 1, len(records) + (1 if cname else 0), 0, 0)
    m += b"".join(bytes([len(l)]) + l.encode() for l in qname.split(".")) + b"\0"
    m += struct.pack(">HH", qtype, 1)
    if cname:
        target = b"".join(bytes([len(l)]) + l.encode() for l in cname.split(".")) + b"\0"
        m += b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 30, len(target)) + target
    for rtype, addr in records:
        m += b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, 5, len(addr)) + addr
    return m

four = lambda *o: bytes(o)
put("wire", b"\x02" + dns("app.ns.svc.cluster.local", 1, 0, [(1, four(10, 0, 0, i)) for i in range(1, 6)]))
put("wire", b"\x02" + dns("web.example", 1, 0, [(1, four(192, 0, 2, 1))], cname="edge.example.net"))
put("wire", b"\x02" + dns("gone.example", 1, 3, []))
put("wire", b"\x02" + dns("big.example", 1, 0, [], flags=0x8380))
put("wire", b"\x06" + dns("app.example", 28, 0, [(28, bytes(15) + b"\x01"), (28, bytes(range(16)))]))
put("wire", b"\x06" + dns("app.example", 28, 2, []))

import ssl
for host in ["api.example.com", "shop.apps.example", None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    put("wire", b"\x03" + hello)
    body = hello[5:]
    split = b"".join(b"\x16\x03\x01" + struct.pack(">H", len(p)) + p for p in (body[:40], body[40:]))
    put("wire", b"\x03" + split)
PY
for t in mail_view extract cilog models decode config http_head envoy_check wire rls web_auth; do
    echo "seed: $OUT/$t: $(find "$OUT/$t" -type f | wc -l) files"
done
