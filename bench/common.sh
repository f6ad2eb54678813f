# Shared by the benchmark scripts: sourced, not run. Functions that write
# files use $d (the scratch directory of scratch or bench_setup).

# Install (Debian) the packages of the named commands that are missing.
need_tools() {
  local m=() t
  for t in "$@"; do command -v "$t" >/dev/null || m+=("$t"); done
  if [ ${#m[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${m[@]}" >/dev/null; fi
}

# Build bench target $1 (release) and print its executable.
bench_bin() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")==sys.argv[1] and m.get("executable"): print(m["executable"])' "$1" | tail -1
}

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# One CA, an ECDSA P-256 server certificate (localhost, 127.0.0.1) and a
# client certificate with a SPIFFE URI, in $d: ca.pem, server.{pem,key},
# client.{pem,key}.
make_certs() {
  ( cd "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench CA" -out ca.pem
    for who in server client; do
      openssl ecparam -name prime256v1 -genkey -noout -out $who.key
      openssl req -new -key $who.key -subj "/CN=$who" -out $who.csr
    done
    printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > s.cnf
    printf "subjectAltName=URI:spiffe://bench.example/ns/load/sa/client\nextendedKeyUsage=clientAuth\n" > c.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 -extfile s.cnf -out server.pem
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 -extfile c.cnf -out client.pem
  ) >/dev/null 2>&1
  chmod 644 "$d"/*
}

# The backend every proxy forwards to: one nginx worker on port $1
# answering "200 ok", with extra http-level directives $2 (e.g. a body
# size); config in $d/backend.conf (run it yourself).
backend_conf() {
  cat > "$d/backend.conf" <<NGX
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; ${2:-}
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } } }
NGX
}

# A scratch directory $d (readable by nginx's workers) and the array pids
# of processes to kill on exit.
scratch() {
  d=$(mktemp -d); chmod 755 "$d"
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$d"' EXIT INT TERM
}

# scratch, and the certificates of make_certs in $d.
bench_setup() {
  scratch
  make_certs
}

# nginx as a TLS-terminating proxy to the backend on port $BE, config in $1.
# $2 is the process line ("worker_processes 1" or "master_process off"),
# $3 a TLS port and $4 an mTLS port (client certificate required); either
# may be empty. No session cache or tickets: every handshake is full.
# A benchmark's first line: its name, the time, the commit, the machine's
# CPUs and load. bench_header NAME
bench_header() {
  echo "$1: $(date -u) | commit $(git rev-parse --short HEAD) | nproc $(nproc) | load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# The body benchmarks' setup (slow-clients.sh, body-flood.sh): scratch dir,
# ports BE (backend), P (proxy), A (sift admin), the backend nginx on core 1
# taking bodies up to $1, and $d/nginx.conf: nginx as the proxy under test
# on P with request buffering (its default), client_max_body_size $1 and
# client_body_timeout $2 seconds. body_bench_setup MAX_BODY TIMEOUT_S
body_bench_setup() {
  scratch
  BE=$(port); P=$(port); A=$(port)
  mkdir -p "$d/nx"
  backend_conf "$BE" "client_max_body_size $1;"
  taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
  cat > "$d/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $d/nx/nx.pid; error_log $d/nx/nx.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; client_body_timeout ${2}s;
  client_max_body_size $1;
  client_body_temp_path $d/nx/cb; proxy_temp_path $d/nx/pt; fastcgi_temp_path $d/nx/ft; uwsgi_temp_path $d/nx/ut; scgi_temp_path $d/nx/st;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$P; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
}

nginx_proxy_conf() {
  local loc='location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }'
  {
    echo "$2; daemon off; pid $d/nx.pid; error_log $d/nx.err;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; keepalive_requests 1000000;"
    echo "  client_body_temp_path $d/cb2; proxy_temp_path $d/pt2; fastcgi_temp_path $d/ft2; uwsgi_temp_path $d/ut2; scgi_temp_path $d/st2;"
    echo "  upstream be { server 127.0.0.1:$BE; keepalive 64; }"
    echo "  ssl_certificate $d/server.pem; ssl_certificate_key $d/server.key;"
    echo "  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;"
    [ -z "$3" ] || echo "  server { listen 127.0.0.1:$3 ssl; $loc }"
    [ -z "${4:-}" ] || echo "  server { listen 127.0.0.1:$4 ssl; ssl_client_certificate $d/ca.pem; ssl_verify_client on; $loc }"
    echo "}"
  } > "$1"
}

# sift with one worker in front of the backend on port $BE, config in $1:
# admin on port $2, a TLS listener on $3 and an mTLS listener on $4 (either
# may be empty). Session tickets and cache off, as in nginx_proxy_conf.
sift_conf() {
  local tls="tls: { certificates: [ { cert: \"$d/server.pem\", key: \"$d/server.key\" } ], session_resumption: { tickets: false, cache_size: 0 }"
  {
    echo "workers: 1"
    echo "log: { format: json, level: warn, access_log: false }"
    echo "admin: { address: \"127.0.0.1:$2\" }"
    echo "listeners:"
    [ -z "$3" ] || echo "  - { name: tls, address: \"127.0.0.1:$3\", protocol: h1, $tls } }"
    [ -z "${4:-}" ] || echo "  - { name: mtls, address: \"127.0.0.1:$4\", protocol: h1, $tls, client_auth: { mode: require, ca: \"$d/ca.pem\" } } }"
    echo "routes: [ { name: all, cluster: backend } ]"
    echo "clusters: [ { name: backend, endpoints: [\"127.0.0.1:$BE\"] } ]"
  } > "$1"
}

# sift with one worker and one plain listener on port $P (admin on $A)
# whose one route `all` goes to the backend on port $BE, with YAML lines
# $2 added to the route (indented four spaces; may be empty): config in $1.
plain_sift_conf() {
  cat > "$1" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
listeners:
  - { name: bench, address: "127.0.0.1:$P" }
routes:
  - name: all
    cluster: backend
$2
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
}

# 2 KB of real SMS text from the SMS Spam Collection at $1: spam and ham
# lines alternating, cut at 2048 bytes, on stdout.
sms_body() {
  python3 - "$1" <<'PY'
import sys
lines = [l.split("\t", 1) for l in open(sys.argv[1], encoding="utf-8", errors="replace")]
spam = [t.strip() for k, t in lines if k == "spam"]
ham = [t.strip() for k, t in lines if k == "ham"]
out = []
i = 0
while sum(len(x) + 1 for x in out) < 2048:
    out.append(spam[i] if i % 2 else ham[i])
    i += 1
sys.stdout.write("\n".join(out)[:2048])
PY
}

# Resident memory of processes $@ together, in MB (one decimal).
rss_mb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "scale=1; $t/1024" | bc; }

# CPU time (user + system) of processes $@ together, in clock ticks.
cpu_ticks_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }

# The ~16 KB JSON answer of the compression and cache benchmarks, written
# to $1: an API's list page (users with nested objects, numbers, booleans,
# ISO dates, free text), seeded, the same bytes every run.
api_json() {
  python3 - "$1" <<'PY'
import json, random, sys
rnd = random.Random(20261206)
first = ["Ada", "Grace", "Linus", "Ken", "Barbara", "Edsger", "Donald", "Frances", "Tim", "Radia",
         "Margaret", "John", "Sophie", "Niklaus", "Leslie", "Anita"]
last = ["Lovelace", "Hopper", "Torvalds", "Thompson", "Liskov", "Dijkstra", "Knuth", "Allen",
        "Berners-Lee", "Perlman", "Hamilton", "Backus", "Wilson", "Wirth", "Lamport", "Borg"]
cities = ["Lisbon", "Oslo", "Kyoto", "Austin", "Nairobi", "Lyon", "Porto Alegre", "Tallinn"]
tags = ["admin", "beta", "billing", "eu", "us", "mobile", "trial", "vip", "support", "api"]
words = ("the quick brown fox jumps over a lazy dog while the proxy streams compressed "
         "answers to clients that asked for them and keeps the rest as it is").split()
items = []
doc = {}
i = 0
while True:
    f, l = rnd.choice(first), rnd.choice(last)
    items.append({
        "id": 100000 + i * 7 + rnd.randrange(7),
        "name": f"{f} {l}",
        "email": f"{f.lower()}.{l.lower()}{rnd.randrange(100)}@example.com",
        "active": rnd.random() < 0.8,
        "score": round(rnd.uniform(0, 100), 2),
        "created_at": f"2026-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}Z",
        "tags": rnd.sample(tags, rnd.randrange(1, 4)),
        "address": {"city": rnd.choice(cities), "zip": f"{rnd.randrange(10000, 99999)}"},
        "bio": " ".join(rnd.choice(words) for _ in range(rnd.randrange(6, 16))),
    })
    i += 1
    doc = {"page": 1, "per_page": len(items), "total": 1234, "items": items}
    if len(json.dumps(doc, indent=1)) >= 16384:
        items.pop()
        doc["per_page"] = len(items)
        break
open(sys.argv[1], "w").write(json.dumps(doc, indent=1) + "\n")
PY
}

# The proxy under test, pinned to core 0: proxy_start KIND CONFIG starts
# sift ($SIFT run --config) or nginx (prefix $d/nx) and waits until $URL
# answers 200 (exits with the logs otherwise); its pid is $SP.
# proxy_stop ends it; proxy_ticks prints its CPU time (user + system, with
# nginx's worker) in clock ticks.
SP=""
proxy_start() {
  if [ "$1" = sift ]; then
    taskset -c 0 "$SIFT" run --config "$2" > "$d/sift.log" 2>&1 & SP=$!
  else
    taskset -c 0 nginx -c "$2" -p "$d/nx" > "$d/nx/out.log" 2>&1 & SP=$!
  fi
  pids+=("$SP")
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$URL" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 did not answer 200 on $URL" >&2; cat "$d/sift.log" "$d/nx/nx.err" 2>/dev/null >&2; exit 1
}
proxy_stop() {
  local kids; kids=$(pgrep -P "$SP" || true)
  kill "$SP" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SP" 2>/dev/null || break; sleep 0.1; done
  # shellcheck disable=SC2086
  kill -9 "$SP" $kids 2>/dev/null || true
  wait "$SP" 2>/dev/null || true
}
proxy_ticks() {
  # shellcheck disable=SC2046
  cpu_ticks_of "$SP" $(pgrep -P "$SP" || true)
}
