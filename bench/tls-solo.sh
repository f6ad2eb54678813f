#!/usr/bin/env bash
# TLS keep-alive, each proxy alone: sift, nginx or the floor proxy is
# started by itself (nothing else idle beside it), then measured three times
# with bench/tls_load.rs (50 keep-alive connections, DURATION s each):
# fresh, right after DURATION*2 s of full handshakes (16 tasks), and again.
# Rounds alternate the proxies; each line gives requests/s and the proxy's
# CPU time (user + system, /proc) per request.
#
#   bench/tls-solo.sh [SIFT_BIN]   env: DURATION (5), ROUNDS (2), LOAD, FLOOR
#
# Complements tls-compare.sh, where all three run at once. Loopback only;
# stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
for t in nginx openssl; do command -v $t >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx openssl >/dev/null; }; done
. bench/tls-common.sh
LOAD=${LOAD:-$(bench_bin tls_load)}
FLOOR=${FLOOR:-$(bench_bin floor_proxy)}
d=$(mktemp -d); chmod 755 "$d"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$d"; }
trap cleanup EXIT INT TERM
make_certs
BE=$(port); P=$(port); A=$(port)
temp_paths() { echo "client_body_temp_path $d/cb$1; proxy_temp_path $d/pt$1; fastcgi_temp_path $d/ft$1; uwsgi_temp_path $d/ut$1; scgi_temp_path $d/st$1;"; }
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
listeners: [ { name: tls, address: "127.0.0.1:$P", protocol: h1, tls: { certificates: [ { cert: "$d/server.pem", key: "$d/server.key" } ] } } ]
routes: [ { name: all, cluster: backend } ]
clusters: [ { name: backend, endpoints: ["127.0.0.1:$BE"] } ]
YAML
cat > "$d/nx.conf" <<NGX
worker_processes 1; daemon off; pid $d/nx.pid; error_log $d/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; $(temp_paths 2)
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  ssl_certificate $d/server.pem; ssl_certificate_key $d/server.key; ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:$P ssl; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
keepalive() { # $1 pid whose CPU is counted
  local a b r
  a=$(awk '{print $14 + $15}' "/proc/$1/stat")
  read -r _ r _ _ _ < <(taskset -c 1 "$LOAD" keepalive "127.0.0.1:$P" "$DURATION" 50 "$d/ca.pem")
  b=$(awk '{print $14 + $15}' "/proc/$1/stat")
  python3 -c "print(f'{float(\"$r\"):8.0f} req/s {($b - $a) * 1e6 / $(getconf CLK_TCK) / (float(\"$r\") * $DURATION):5.1f} µs CPU/req')"
}
echo "TLS keep-alive, each proxy alone: $(date -u) | $(nginx -v 2>&1) | proxy on core 0, load + backend on core 1, ${DURATION}s runs"
for r in $(seq "$ROUNDS"); do
  for who in sift nginx floor; do
    case $who in
      sift) taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & pp=$! ;;
      nginx) taskset -c 0 nginx -c "$d/nx.conf" -p "$d" & pp=$! ;;
      floor) taskset -c 0 "$FLOOR" "127.0.0.1:$P" "127.0.0.1:$BE" "$d/server.pem" "$d/server.key" & pp=$! ;;
    esac
    pids+=("$pp")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    w=$pp; [ "$who" = nginx ] && w=$(pgrep -P "$pp" | head -1)
    taskset -c 1 "$LOAD" keepalive "127.0.0.1:$P" 2 50 "$d/ca.pem" >/dev/null
    fresh=$(keepalive "$w")
    taskset -c 1 "$LOAD" handshake "127.0.0.1:$P" $((DURATION * 2)) 16 "$d/ca.pem" >/dev/null
    after=$(keepalive "$w")
    again=$(keepalive "$w")
    printf "round %s %-6s fresh %s | after handshakes %s | again %s\n" "$r" "$who" "$fresh" "$after" "$again"
    kill "$pp"; wait "$pp" 2>/dev/null || true
    sleep 0.5
  done
done
