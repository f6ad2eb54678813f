#!/usr/bin/env bash
# Instructions per TLS keep-alive request, load-independent: a proxy (sift,
# the floor proxy, or nginx as one process) runs under valgrind's callgrind in front of a backend
# nginx; bench/tls_load.rs drives CONNS keep-alive connections; the counters
# are zeroed after a warm-up and dumped after the measured run (the load
# paused at both points, so no handshake is inside), and the total
# user-space instructions are divided by the requests served.
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
. bench/common.sh
need_tools nginx valgrind openssl curl
LOAD=${LOAD:-$(bench_bin tls_load)}
[ "$WHO" = floor ] && FLOOR=${FLOOR:-$(bench_bin floor_proxy)}

bench_setup

BE=$(port); P=$(port); A=$(port)
backend_conf "$BE"
nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
if [ "$MTLS" = 1 ]; then sift_conf "$d/sift.yaml" "$A" "" "$P"; else sift_conf "$d/sift.yaml" "$A" "$P"; fi
out=${OUT:-$d/callgrind.out}
case $WHO in
  sift) cmd=("$SIFT" run --config "$d/sift.yaml") ;;
  floor)
    cmd=("$FLOOR" "127.0.0.1:$P" "127.0.0.1:$BE" "$d/server.pem" "$d/server.key")
    [ "$MTLS" = 1 ] && cmd+=("$d/ca.pem") ;;
  nginx)
    # One process (no master), so valgrind sees the worker itself.
    if [ "$MTLS" = 1 ]; then nginx_proxy_conf "$d/nginx.conf" "master_process off" "" "$P"
    else nginx_proxy_conf "$d/nginx.conf" "master_process off" "$P"; fi
    cmd=(nginx -c "$d/nginx.conf" -p "$d") ;;
  *) echo "WHO is sift, floor or nginx" >&2; exit 2 ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" > "$d/proxy.log" 2>&1 & vp=$!; pids+=($vp)
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.1; done
client=()
[ "$MTLS" = 1 ] && client=("$d/client.pem" "$d/client.key")
# Warm-up, zero, measure, dump: all inside one tls_load run, with the load
# paused at both marks, so no handshake and no connection close is counted.
read -r _ rps _ _ errs < <(TLS_LOAD_WARM=2 TLS_LOAD_MARK="callgrind_control -z $vp >/dev/null" \
  TLS_LOAD_END="callgrind_control -d $vp >/dev/null" \
  "$LOAD" keepalive "127.0.0.1:$P" "$SECONDS_RUN" "$CONNS" "$d/ca.pem" "${client[@]}" 2> "$d/load.err")
sleep 1
kill -TERM "$vp" 2>/dev/null || true
wait "$vp" 2>/dev/null || true
# The dump taken by callgrind_control -d is the part with the highest number.
dump=$out; n=1
while [ -f "$out.$n" ]; do dump=$out.$n; n=$((n + 1)); done
ir=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
reqs=$(awk '/^tls_load: [0-9]+ requests/{print $2}' "$d/load.err")
[ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { echo "no measured requests ($rps req/s): $(cat "$d/load.err")" >&2; exit 1; }
echo "$WHO: instructions/request $((ir / reqs)) ($ir instructions over $reqs requests, $errs errors) dump $dump"
