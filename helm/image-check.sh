#!/usr/bin/env bash
# Runs a sift binary as helm/Dockerfile's runtime image would, without a
# container engine: in a chroot holding only the binary, the shared libraries
# distroless/cc gives it (dynamic linker, libc, libm, libgcc_s), an
# /etc/passwd with `nonroot` (65532), an empty /tmp and a config, as user
# 65532, with no /proc, /sys, /etc/ssl or /etc/resolv.conf. It checks that
# the binary needs no other library, starts, reports ready, proxies to an
# upstream on loopback, labels a body with the builtin spam model, serves
# metrics, and exits 0 on SIGTERM after its drain.
#
#   helm/image-check.sh [BINARY]      # default target/release/sift
#
# Needs root (chroot), python3 (the upstream), curl and binutils (readelf,
# strip). The binary is stripped in the copy, as the image's is.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sift}
[ -x "$bin" ] || { echo "image-check: no binary at $bin (cargo build --release)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "image-check: chroot needs root" >&2; exit 2; }

root=$(mktemp -d /tmp/sift-image.XXXXXX)
up_pid=; sift_pid=
cleanup() {
  [ -n "$sift_pid" ] && kill "$sift_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT
fail() { echo "image-check: FAIL: $*" >&2; [ -f "$root/sift.log" ] && tail -20 "$root/sift.log" >&2; exit 1; }

# 1. Libraries: only what distroless/cc-debian12 has.
allowed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
  [[ $lib =~ $allowed ]] || fail "the binary needs $lib, which distroless/cc does not have"
done
echo "image-check: libraries needed: $(echo $needed)"

chmod 755 "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/sift" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$bin" "$root/usr/local/bin/sift"
strip --strip-debug "$root/usr/local/bin/sift"
echo "image-check: binary $(stat -c %s "$bin") bytes, stripped $(stat -c %s "$root/usr/local/bin/sift") bytes"
# The dynamic linker and the libraries, at the paths the binary asks for.
for f in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
done
echo 'root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$root/etc/passwd"
echo 'root:x:0:
nonroot:x:65532:' > "$root/etc/group"

# 2. An upstream on loopback (chroot keeps the network namespace) that
#    answers with the headers it got, and free ports for sift.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); lis=$(port); adm=$(port)
python3 - "$up" <<'PY' &
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def answer(self):
        n = int(self.headers.get('content-length') or 0)
        self.rfile.read(n)
        out = ''.join(f'{k.lower()}: {v}\n' for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header('content-length', str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
up_pid=$!
for _ in $(seq 100); do
  python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$up" 2>/dev/null && break
  sleep 0.1
done

cat > "$root/etc/sift/sift.yaml" <<YAML
log: { format: json, level: info, access_log: true }
admin: { address: "127.0.0.1:$adm" }
shutdown: { delay: 0s, drain_timeout: 5s }
listeners: [ { name: main, address: "127.0.0.1:$lis" } ]
filters: [ { name: spam, kind: spam } ]
routes:
  - name: comments
    match: { path: { prefix: /comments } }
    cluster: app
    filters: [ { filter: spam, mode: annotate } ]
  - name: all
    cluster: app
clusters: [ { name: app, endpoints: ["127.0.0.1:$up"] } ]
YAML

# 3. sift as the image runs it.
chroot --userspec=65532:65532 "$root" /usr/local/bin/sift run --config /etc/sift/sift.yaml \
  > "$root/sift.log" 2>&1 &
sift_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$adm/readyz" >/dev/null 2>&1 && break
  kill -0 "$sift_pid" 2>/dev/null || fail "sift exited at start"
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$adm/readyz" >/dev/null || fail "not ready after 10 s"
echo "image-check: ready as uid 65532"

got=$(curl -fsS "http://127.0.0.1:$lis/hello") || fail "GET through sift failed"
grep -q '^x-request-id: ' <<<"$got" || fail "the upstream's answer lacks x-request-id: $got"
echo "image-check: proxied GET ok"

got=$(curl -fsS -H 'content-type: text/plain' \
  --data 'WINNER!! You have won a 1000 GBP prize. Call 09061701461 now to claim, code KL341. Valid 12 hours only.' \
  "http://127.0.0.1:$lis/comments") || fail "POST through sift failed"
grep -q '^x-sift-spam-verdict: spam' <<<"$got" || fail "no spam verdict from the builtin model: $got"
echo "image-check: builtin spam model labelled a spam text ($(grep '^x-sift-spam-score' <<<"$got"))"

curl -fsS "http://127.0.0.1:$adm/metrics" | grep -q '^sift_requests_total' || fail "no sift_requests_total in /metrics"
echo "image-check: metrics ok"

kill -TERM "$sift_pid"
rc=0; wait "$sift_pid" || rc=$?
sift_pid=
[ "$rc" = 0 ] || fail "exit status $rc after SIGTERM"
grep -q '"status":200' "$root/sift.log" || fail "no access log line on stderr/stdout"
if grep -q '"level":"ERROR"' "$root/sift.log"; then
  grep '"level":"ERROR"' "$root/sift.log" >&2
  fail "errors logged"
fi
grep '"level":"WARN"' "$root/sift.log" | sed 's/^/image-check: warning logged: /' || true
echo "image-check: exit 0 after SIGTERM; log has no error"
echo "image-check: PASS"
