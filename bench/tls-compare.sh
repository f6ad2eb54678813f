#!/usr/bin/env bash
# TLS and mTLS: sift vs nginx as TLS-terminating reverse proxies in front of
# the same backend, same certificate and key type (ECDSA P-256), one worker
# each, same load generator (bench/tls_load.rs), one invocation:
#   - TLS keep-alive throughput, mTLS keep-alive throughput (HTTP/1.1);
#   - new full handshakes per second (no resumption: nginx session cache and
#     tickets off, client resumption disabled), TLS and mTLS.
# A third row, "floor", is bench/floor_proxy.rs: hyper + rustls with no proxy
# logic at all, the ceiling any proxy built on sift's stack can reach.
#
#   bench/tls-compare.sh [SIFT_BIN]     env: DURATION (10), ROUNDS (3), CONNS (50), HS_CONNS (16),
#                                       LOAD (a prebuilt tls_load binary),
#                                       FLOOR (a prebuilt floor_proxy binary)
#
# Loopback only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
HS_CONNS=${HS_CONNS:-16}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx openssl curl
LOAD=${LOAD:-$(bench_bin tls_load)}
[ -x "$LOAD" ] || { echo "cannot build bench/tls_load.rs" >&2; exit 1; }
FLOOR=${FLOOR:-$(bench_bin floor_proxy)}
[ -x "$FLOOR" ] || { echo "cannot build bench/floor_proxy.rs" >&2; exit 1; }

bench_setup

BE=$(port)
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

ST=$(port); SM=$(port); SA=$(port); NT=$(port); NM=$(port); FT=$(port); FM=$(port)
sift_conf "$d/sift.yaml" "$SA" "$ST" "$SM"
nginx_proxy_conf "$d/nginx.conf" "worker_processes 1" "$NT" "$NM"

# CPU time the proxy spent per request (user + system, from /proc, 10 ms ticks).
cpu_us() { python3 -c "print(f'{($2 - $1) * 1e6 / $(getconf CLK_TCK) / max(1, $3 * $DURATION):.1f}')"; }
measure() { # $1 proxy label, $2 pids, $3 tls port, $4 mtls port
  local label=$1 tport=$3 mport=$4 c0 c1 c2
  local client=("$d/client.pem" "$d/client.key")
  taskset -c 1 "$LOAD" keepalive "127.0.0.1:$tport" 2 "$CONNS" "$d/ca.pem" >/dev/null
  c0=$(cpu_ticks_of $2)
  read -r _ ka50 p50 p99 e1 < <(taskset -c 1 "$LOAD" keepalive "127.0.0.1:$tport" "$DURATION" "$CONNS" "$d/ca.pem")
  c1=$(cpu_ticks_of $2)
  read -r _ mka m50 m99 e2 < <(taskset -c 1 "$LOAD" keepalive "127.0.0.1:$mport" "$DURATION" "$CONNS" "$d/ca.pem" "${client[@]}")
  c2=$(cpu_ticks_of $2)
  read -r _ hs _ _ e3 < <(taskset -c 1 "$LOAD" handshake "127.0.0.1:$tport" "$DURATION" "$HS_CONNS" "$d/ca.pem")
  read -r _ mhs _ _ e4 < <(taskset -c 1 "$LOAD" handshake "127.0.0.1:$mport" "$DURATION" "$HS_CONNS" "$d/ca.pem" "${client[@]}")
  echo "| $label | $ka50 | $p50 / $p99 | $(cpu_us "$c0" "$c1" "$ka50") | $mka | $m50 / $m99 | $(cpu_us "$c1" "$c2" "$mka") | $hs | $mhs | $((e1+e2+e3+e4)) | $(rss_mb $2) |"
}

# All three run at once, each on core 0 (only the one under load works), and
# the rounds alternate sift / nginx / floor so that drift in the machine's
# speed hits all three alike; the summary gives each one's median.
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & sp=$!; pids+=($sp)
taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & np=$!; pids+=($np)
taskset -c 0 "$FLOOR" "127.0.0.1:$FT" "127.0.0.1:$BE" "$d/server.pem" "$d/server.key" & f1=$!; pids+=($f1)
taskset -c 0 "$FLOOR" "127.0.0.1:$FM" "127.0.0.1:$BE" "$d/server.pem" "$d/server.key" "$d/ca.pem" & f2=$!; pids+=($f2)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SA/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1

echo "TLS / mTLS: $(date -u) | nproc $(nproc) | $(nginx -v 2>&1) | $($SIFT --version) | ECDSA P-256 server and client certs"
echo "load: bench/tls_load.rs, keep-alive ${CONNS} conns, handshakes ${HS_CONNS} tasks, ${DURATION}s each, ${ROUNDS} alternating rounds | proxies on core 0, load + backend nginx on core 1"
echo
echo "| round | proxy | TLS req/s | TLS p50 / p99 ms | TLS CPU µs/req | mTLS req/s | mTLS p50 / p99 ms | mTLS CPU µs/req | TLS handshakes/s | mTLS handshakes/s | errors | RSS MB after |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
: > "$d/results"
for r in $(seq "$ROUNDS"); do
  for who in sift nginx floor; do
    case $who in
      sift) row=$(measure sift "$sp" "$ST" "$SM") ;;
      nginx) row=$(measure nginx "$np $(pgrep -P "$np" | tr '\n' ' ')" "$NT" "$NM") ;;
      floor) row=$(measure "floor (hyper + rustls, no logic)" "$f1 $f2" "$FT" "$FM") ;;
    esac
    echo "| $r $row"
    echo "$who $row" >> "$d/results"
  done
done
echo
python3 - "$d/results" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    who, rest = line.split(" ", 1)
    cells = [c.strip() for c in rest.strip().strip("|").split("|")]
    rows.setdefault(who, []).append((float(cells[1]), float(cells[4]), float(cells[7]), float(cells[8]), float(cells[3]), float(cells[6])))
med = {w: [statistics.median(v[i] for v in r) for i in range(6)] for w, r in rows.items()}
print("medians over rounds (req/s): TLS keep-alive, mTLS keep-alive, TLS handshakes, mTLS handshakes | CPU µs per keep-alive request: TLS, mTLS")
for w, m in med.items():
    print(f"  {w:6} " + "  ".join(f"{x:8.0f}" for x in m[:4]) + " | " + "  ".join(f"{x:6.1f}" for x in m[4:]))
s, n = med["sift"], med["nginx"]
print("sift / nginx: " + ", ".join(f"{name} {100*a/b:.0f} %" for name, a, b in zip(["TLS", "mTLS", "TLS hs", "mTLS hs"], s, n)))
print("nginx CPU per request / sift CPU per request: " + ", ".join(f"{name} {100*b/a:.0f} %" for name, a, b in zip(["TLS", "mTLS"], s[4:], n[4:])))
per = [100 * a[0] / b[0] for a, b in zip(rows["sift"], rows["nginx"])]
perm = [100 * a[1] / b[1] for a, b in zip(rows["sift"], rows["nginx"])]
print("sift / nginx per round, TLS keep-alive: " + " ".join(f"{p:.0f}%" for p in per) + " | mTLS: " + " ".join(f"{p:.0f}%" for p in perm))
PY
