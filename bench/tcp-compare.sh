#!/usr/bin/env bash
# TCP proxying (sift `serve: tcp`) vs nginx's stream module and HAProxy in
# `mode tcp`, in front of the same echo backend, one worker each, same load
# generator (bench/tcp_load.rs), one invocation, rounds alternating:
#   - bulk: CONNS_BULK connections stream 64 KiB writes and read the echo
#     (each byte crosses the proxy twice): MiB/s echoed, proxy CPU per MiB;
#   - rr: CONNS_RR tasks each open a connection, send 64 bytes, read them
#     back and close, again and again: connections/s, p50/p99, proxy CPU
#     per connection.
#
#   bench/tcp-compare.sh [SIFT_BIN]     env: DURATION (10), ROUNDS (3),
#                                       CONNS_BULK (4), CONNS_RR (16),
#                                       LOAD (a prebuilt tcp_load binary)
#
# nginx gets `proxy_half_close on` (the load half-closes its connections
# and reads the rest of the echo; nginx's default closes both sides).
# nginx's stream module (Debian libnginx-mod-stream) and haproxy are
# installed with apt-get when missing. Loopback only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS_BULK=${CONNS_BULK:-4}
CONNS_RR=${CONNS_RR:-16}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx haproxy
STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so
if [ ! -f "$STREAM_SO" ]; then
  apt-get update -qq && apt-get install -y -qq libnginx-mod-stream >/dev/null
fi
[ -f "$STREAM_SO" ] || { echo "no nginx stream module at $STREAM_SO" >&2; exit 1; }
LOAD=${LOAD:-$(bench_bin tcp_load)}
[ -x "$LOAD" ] || { echo "cannot build bench/tcp_load.rs" >&2; exit 1; }

scratch
taskset -c 1 "$LOAD" echo "$d/be.port" & pids+=($!)
for _ in $(seq 100); do [ -s "$d/be.port" ] && break; sleep 0.05; done
BE=$(cat "$d/be.port")

SP=$(port); SA=$(port); NP=$(port); HP=$(port)
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { level: warn, access_log: false }
admin: { address: "127.0.0.1:$SA" }
listeners:
  - name: tcp
    address: "127.0.0.1:$SP"
    serve: tcp
    tcp: { cluster: echo }
clusters:
  - { name: echo, endpoints: ["127.0.0.1:$BE"] }
YAML
cat > "$d/nginx.conf" <<NGX
load_module $STREAM_SO;
worker_processes 1; daemon off; pid $d/nx.pid; error_log $d/nx.err;
events { worker_connections 4096; }
stream { server { listen 127.0.0.1:$NP; proxy_pass 127.0.0.1:$BE; proxy_half_close on; } }
NGX
cat > "$d/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen echo
  bind 127.0.0.1:$HP
  server be 127.0.0.1:$BE
HAP

taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & sp=$!; pids+=($sp)
taskset -c 0 nginx -c "$d/nginx.conf" -p "$d" & np=$!; pids+=($np)
taskset -c 0 haproxy -f "$d/haproxy.cfg" -db > "$d/haproxy.log" 2>&1 & hp=$!; pids+=($hp)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SA/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1

ticks_ms() { python3 -c "print(f'{($2 - $1) * 1000 / $(getconf CLK_TCK):.0f}')"; }
measure() { # $1 label, $2 pids, $3 port
  local c0 c1 c2 bulk rr
  taskset -c 1 "$LOAD" rr "127.0.0.1:$3" 1 "$CONNS_RR" >/dev/null
  c0=$(cpu_ticks_of $2)
  bulk=$(taskset -c 1 "$LOAD" bulk "127.0.0.1:$3" "$DURATION" "$CONNS_BULK")
  c1=$(cpu_ticks_of $2)
  rr=$(taskset -c 1 "$LOAD" rr "127.0.0.1:$3" "$DURATION" "$CONNS_RR")
  c2=$(cpu_ticks_of $2)
  python3 - "$1" "$bulk" "$rr" "$(ticks_ms "$c0" "$c1")" "$(ticks_ms "$c1" "$c2")" "$(rss_mb $2)" <<'PY'
import sys
label, bulk, rr, bulk_ms, rr_ms, rss = sys.argv[1:]
b = dict(kv.split("=") for kv in bulk.split()[1:])
r = dict(kv.split("=") for kv in rr.split()[1:])
mib = float(b["echoed_mib"]); conns = int(r["connections"])
print(f"| {label} | {float(b['mib_per_s']):.0f} | {float(bulk_ms) / max(mib, 1):.2f} | {float(r['per_s']):.0f} | {r['p50_ms']} / {r['p99_ms']} | {float(rr_ms) * 1000 / max(conns, 1):.1f} | {int(b['errors']) + int(r['errors'])} | {rss} |")
PY
}

echo "TCP proxying: $(date -u) | nproc $(nproc) | $(nginx -v 2>&1) | $(haproxy -v 2>&1 | head -1) | $($SIFT --version)"
echo "load: bench/tcp_load.rs, bulk ${CONNS_BULK} conns, rr ${CONNS_RR} tasks, ${DURATION}s each, ${ROUNDS} alternating rounds | proxies on core 0 (one worker each), load + echo backend on core 1"
echo
echo "| round | proxy | bulk MiB/s echoed | CPU ms per MiB | connections/s | p50 / p99 ms | CPU µs per connection | errors | RSS MB after |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
: > "$d/results"
for r in $(seq "$ROUNDS"); do
  for who in sift nginx haproxy; do
    case $who in
      sift) row=$(measure sift "$sp" "$SP") ;;
      nginx) row=$(measure nginx "$np $(pgrep -P "$np" | tr '\n' ' ')" "$NP") ;;
      haproxy) row=$(measure haproxy "$hp" "$HP") ;;
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
    c = [x.strip() for x in rest.strip().strip("|").split("|")]
    rows.setdefault(who, []).append((float(c[1]), float(c[2]), float(c[3]), float(c[5])))
med = {w: [statistics.median(v[i] for v in r) for i in range(4)] for w, r in rows.items()}
print("medians over rounds: bulk MiB/s, CPU ms per MiB, connections/s, CPU µs per connection")
for w, m in med.items():
    print(f"  {w:8} {m[0]:8.0f} {m[1]:6.2f} {m[2]:8.0f} {m[3]:7.1f}")
s = med["sift"]
for peer in ("nginx", "haproxy"):
    p = med[peer]
    print(f"sift / {peer}: bulk {100*s[0]/p[0]:.0f} %, connections/s {100*s[2]/p[2]:.0f} %; CPU per MiB {100*s[1]/p[1]:.0f} %, per connection {100*s[3]/p[3]:.0f} %")
PY
