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
. bench/common.sh
need_tools nginx openssl
LOAD=${LOAD:-$(bench_bin tls_load)}
FLOOR=${FLOOR:-$(bench_bin floor_proxy)}
bench_setup
BE=$(port); P=$(port); A=$(port)
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
sift_conf "$d/sift.yaml" "$A" "$P"
nginx_proxy_conf "$d/nx.conf" "worker_processes 1" "$P"
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
