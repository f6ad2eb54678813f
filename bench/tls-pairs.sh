#!/usr/bin/env bash
# TLS and mTLS keep-alive throughput, sift against nginx, as many short
# paired runs: each pair measures both proxies back to back (who goes first
# alternates), so a drift of the host's speed hits both sides of a pair
# alike. Prints each pair's ratio, the median ratio with a bootstrap 95 %
# interval, and the share of pairs sift wins. For hosts whose speed moves
# more from run to run than the difference measured (this 2-core VM: ±15 %).
#
#   bench/tls-pairs.sh [SIFT_BIN]   env: PAIRS (20), DURATION (3), CONNS (50), LOAD,
#                                   HS (0: seconds of full TLS and mTLS handshakes,
#                                   16 tasks, on both proxies before each pair)
#
# Same setup as tls-compare.sh (same certificates, configs, placement: the
# proxies on core 0, the load and the backend on core 1). Loopback only;
# stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
PAIRS=${PAIRS:-20}
DURATION=${DURATION:-3}
CONNS=${CONNS:-50}
HS=${HS:-0}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx openssl curl
LOAD=${LOAD:-$(bench_bin tls_load)}
[ -x "$LOAD" ] || { echo "cannot build bench/tls_load.rs" >&2; exit 1; }
bench_setup
BE=$(port); ST=$(port); SM=$(port); SA=$(port); NT=$(port); NM=$(port)
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
sift_conf "$d/sift.yaml" "$SA" "$ST" "$SM"
nginx_proxy_conf "$d/nginx.conf" "worker_processes 1" "$NT" "$NM"
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & pids+=($!)
taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SA/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
client=("$d/client.pem" "$d/client.key")
run() { # $1 port, then optional client cert and key: prints req/s
  local r
  read -r _ r _ _ _ < <(taskset -c 1 "$LOAD" keepalive "127.0.0.1:$1" "$DURATION" "$CONNS" "$d/ca.pem" "${@:2}")
  echo "$r"
}
for p in "$ST" "$SM" "$NT" "$NM"; do # warm-up
  taskset -c 1 "$LOAD" keepalive "127.0.0.1:$p" 1 "$CONNS" "$d/ca.pem" "${client[@]}" >/dev/null
done
echo "TLS / mTLS pairs: $(date -u) | $(nginx -v 2>&1) | $($SIFT --version) | ${PAIRS} pairs of ${DURATION}s keep-alive runs, ${CONNS} conns, ${HS}s of handshakes on each before each pair"
echo
echo "| pair | first | sift TLS | nginx TLS | sift / nginx | sift mTLS | nginx mTLS | sift / nginx |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
: > "$d/pairs"
for i in $(seq "$PAIRS"); do
  if [ "$HS" != 0 ]; then # handshake bursts first, as a gateway sees between keep-alive traffic
    for p in "$ST" "$NT"; do taskset -c 1 "$LOAD" handshake "127.0.0.1:$p" "$HS" 16 "$d/ca.pem" >/dev/null; done
    for p in "$SM" "$NM"; do taskset -c 1 "$LOAD" handshake "127.0.0.1:$p" "$HS" 16 "$d/ca.pem" "${client[@]}" >/dev/null; done
  fi
  if [ $((i % 2)) = 1 ]; then
    st=$(run "$ST"); nt=$(run "$NT"); sm=$(run "$SM" "${client[@]}"); nm=$(run "$NM" "${client[@]}"); first=sift
  else
    nt=$(run "$NT"); st=$(run "$ST"); nm=$(run "$NM" "${client[@]}"); sm=$(run "$SM" "${client[@]}"); first=nginx
  fi
  echo "$st $nt $sm $nm" >> "$d/pairs"
  python3 -c "print(f'| $i | $first | {$st:.0f} | {$nt:.0f} | {100*$st/$nt:.0f} % | {$sm:.0f} | {$nm:.0f} | {100*$sm/$nm:.0f} % |')"
done
echo
python3 - "$d/pairs" <<'PY'
import random, statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
random.seed(1)
for name, a, b in (("TLS", 0, 1), ("mTLS", 2, 3)):
    r = [x[a] / x[b] for x in rows]
    boots = sorted(statistics.median(random.choices(r, k=len(r))) for _ in range(10000))
    lo, hi = boots[250], boots[9749]
    wins = sum(1 for x in r if x >= 1)
    print(f"{name}: median sift / nginx {100*statistics.median(r):.1f} % (bootstrap 95 % interval {100*lo:.1f}–{100*hi:.1f} %), "
          f"sift >= nginx in {wins} of {len(r)} pairs; medians {statistics.median(x[a] for x in rows):.0f} vs {statistics.median(x[b] for x in rows):.0f} req/s")
PY
