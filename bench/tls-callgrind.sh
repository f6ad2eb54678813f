#!/usr/bin/env bash
# Instructions per TLS keep-alive request, load-independent: a proxy (sift,
# the floor proxy, or nginx as one process) runs under valgrind's callgrind in front of a backend
# nginx; bench/tls_load.rs drives CONNS keep-alive connections; the counters
# are zeroed after a warm-up and dumped after the measured run, and the
# total user-space instructions are divided by the requests served.
#
#   bench/tls-callgrind.sh [SIFT_BIN]   env: WHO (sift|floor|nginx), SECONDS_RUN (6),
#                                       CONNS (10), MTLS (0|1), OUT (callgrind file),
#                                       LOAD, FLOOR (prebuilt bench binaries)
#
# Prints "instructions/request N (I instructions over R requests)". With OUT
# set, the dump stays there for callgrind_annotate. Loopback only; stops by
# itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
WHO=${WHO:-sift}
SECONDS_RUN=${SECONDS_RUN:-6}
CONNS=${CONNS:-10}
MTLS=${MTLS:-0}
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v valgrind >/dev/null || need+=(valgrind)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
. bench/tls-common.sh
LOAD=${LOAD:-$(bench_bin tls_load)}
[ "$WHO" = floor ] && FLOOR=${FLOOR:-$(bench_bin floor_proxy)}

d=$(mktemp -d); chmod 755 "$d"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$d"; }
trap cleanup EXIT INT TERM
make_certs

BE=$(port); P=$(port); A=$(port)
backend_conf "$BE"
nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
client_auth=""
[ "$MTLS" = 1 ] && client_auth="client_auth: { mode: require, ca: \"$d/ca.pem\" }"
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
listeners:
  - name: tls
    address: "127.0.0.1:$P"
    protocol: h1
    tls:
      certificates: [ { cert: "$d/server.pem", key: "$d/server.key" } ]
      $client_auth
routes: [ { name: all, cluster: backend } ]
clusters: [ { name: backend, endpoints: ["127.0.0.1:$BE"] } ]
YAML
out=${OUT:-$d/callgrind.out}
case $WHO in
  sift) cmd=("$SIFT" run --config "$d/sift.yaml") ;;
  floor)
    cmd=("$FLOOR" "127.0.0.1:$P" "127.0.0.1:$BE" "$d/server.pem" "$d/server.key")
    [ "$MTLS" = 1 ] && cmd+=("$d/ca.pem") ;;
  nginx)
    # One process (no master), so valgrind sees the worker itself.
    verify=""
    [ "$MTLS" = 1 ] && verify="ssl_client_certificate $d/ca.pem; ssl_verify_client on;"
    cat > "$d/nginx.conf" <<NGX
master_process off; daemon off; pid $d/nx.pid; error_log $d/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d/cb2; proxy_temp_path $d/pt2; fastcgi_temp_path $d/ft2; uwsgi_temp_path $d/ut2; scgi_temp_path $d/st2;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  ssl_certificate $d/server.pem; ssl_certificate_key $d/server.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:$P ssl; $verify
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
    cmd=(nginx -c "$d/nginx.conf" -p "$d") ;;
  *) echo "WHO is sift, floor or nginx" >&2; exit 2 ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" > "$d/proxy.log" 2>&1 & vp=$!; pids+=($vp)
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.1; done
client=()
[ "$MTLS" = 1 ] && client=("$d/client.pem" "$d/client.key")
"$LOAD" keepalive "127.0.0.1:$P" 2 "$CONNS" "$d/ca.pem" "${client[@]}" >/dev/null
callgrind_control -z "$vp" >/dev/null
read -r _ rps _ _ errs < <("$LOAD" keepalive "127.0.0.1:$P" "$SECONDS_RUN" "$CONNS" "$d/ca.pem" "${client[@]}")
callgrind_control -d "$vp" >/dev/null
sleep 1
kill -TERM "$vp" 2>/dev/null || true
wait "$vp" 2>/dev/null || true
# The dump taken by callgrind_control -d is the file with the highest part number.
dump=$(ls -1 "$out"* | grep -v '\.[0-9]*$' | head -1)
part=$(ls -1 "$out".* 2>/dev/null | sort -t. -k3 -n | tail -1 || true)
[ -n "$part" ] && dump=$part
ir=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
reqs=$(python3 -c "print(round(float('$rps') * $SECONDS_RUN))")
echo "$WHO: instructions/request $((ir / reqs)) ($ir instructions over $reqs requests, $errs errors) dump $dump"
