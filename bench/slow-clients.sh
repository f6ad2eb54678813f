#!/usr/bin/env bash
# Slow request bodies (R.U.D.Y. / slow POST): sift vs nginx, all on
# 127.0.0.1, in one invocation. SLOW clients each open a connection, send
# a POST head with Content-Length 65536 and the first 16 KiB of the body,
# then stall; meanwhile wrk sends ordinary GETs. Per proxy:
#
#   - what each slow client got within HOLD seconds: a 408, a close
#     without an answer, or nothing (still held open by the proxy);
#   - how long the proxy took to cut them (median, max);
#   - the proxy's resident memory 1 s into the attack (bodies held);
#   - the ordinary GETs' req/s and p99 during the attack.
#
# Proxies (request_body_timeout / client_body_timeout TIMEOUT):
#   sift        a route holding bodies for a block filter (spam), as an
#               edge that inspects user text does;
#   sift-base   the same config on an older binary (SIFT_BASE, optional:
#               before request_body_timeout existed, without the key);
#   nginx       proxy_pass with request buffering (the default), which
#               also holds the body before forwarding.
#
#   bench/slow-clients.sh [SIFT_BIN]
#   env: SLOW (1000) TIMEOUT (2) HOLD (8) DURATION (5s) SIFT_BASE (unset)
#        SLOW_PATH (/held/x; /x: sift streams the body to the backend)
#
# sift or nginx on core 0; wrk, the slow clients and the backend on core 1.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
SLOW=${SLOW:-1000}
SLOW_PATH=${SLOW_PATH:-/held/x}
TIMEOUT=${TIMEOUT:-2}
HOLD=${HOLD:-8}
DURATION=${DURATION:-5s}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx wrk curl
ulimit -n 65536 2>/dev/null || true

body_bench_setup 1m ${TIMEOUT}

write_sift() { # $1 file, $2 limits line
  cat > "$1" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
listeners:
  - name: bench
    address: "127.0.0.1:$P"
$2
filters:
  - { name: spam, kind: spam, max_inspect_bytes: 64KiB }
routes:
  - name: held
    match: { path: { prefix: /held } }
    cluster: backend
    filters: [ { filter: spam, mode: block } ]
  - name: all
    cluster: backend
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
}
write_sift "$d/sift.yaml" "    limits: { request_body_timeout: ${TIMEOUT}s, max_connections: 20000 }"
write_sift "$d/sift-base.yaml" "    limits: { max_connections: 20000 }"

# The slow clients: connect, send the head and 16 KiB, stall; report per
# client what came back within HOLD seconds and when.
cat > "$d/slow.py" <<'PY'
import asyncio, json, sys, time
port, n, hold, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 65536\r\n\r\n")
part = b"a slow client sends some words and then nothing more. " * 300
part = part[:16384]
async def one():
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head + part)
        await w.drain()
    except OSError:
        return ("refused", 0.0)
    try:
        data = await asyncio.wait_for(r.read(64), hold)
    except asyncio.TimeoutError:
        w.close()
        return ("open", hold)
    except OSError:
        data = b""
    took = time.monotonic() - t0
    w.close()
    if data.startswith(b"HTTP/1.1 408"):
        return ("408", took)
    if data.startswith(b"HTTP/"):
        return (data[9:12].decode(), took)
    return ("closed", took)
async def main():
    res = []
    async def go(i):
        await asyncio.sleep(i * 0.0005)
        res.append(await one())
    await asyncio.gather(*(go(i) for i in range(n)))
    print(json.dumps(res))
asyncio.run(main())
PY

URL="http://127.0.0.1:$P/"
bench_header "slow-clients"
echo "$(nginx -v 2>&1) | $(wrk -v 2>&1 | head -1) | sift: $("$SIFT" --version 2>/dev/null | head -1)"
echo "$SLOW slow clients (POST $SLOW_PATH: head + 16 KiB of 64 KiB, then nothing), body timeout ${TIMEOUT}s, watched for ${HOLD}s; wrk -t1 -c50 -d$DURATION GET / meanwhile; proxy on core 0, the rest on core 1"
echo
echo "| proxy | 408 | closed, no answer | other answer | still open after ${HOLD}s | time to cut: median, max (s) | proxy RSS idle → 1 s into the attack (MiB) | GETs during the attack: req/s, p99 |"
echo "|---|---:|---:|---:|---:|---|---|---|"
run() { # $1 label, $2 kind, $3 config, $4 binary
  local SIFT=${4:-$SIFT}
  proxy_start "$2" "$3"
  local idle; idle=$(rss_mb "$SP" $(pgrep -P "$SP" || true))
  taskset -c 1 python3 "$d/slow.py" "$P" "$SLOW" "$HOLD" "$SLOW_PATH" > "$d/slow.json" & local sp=$!
  sleep 1
  local mem; mem=$(rss_mb "$SP" $(pgrep -P "$SP" || true))
  local out; out=$(timeout -k 5 60 taskset -c 1 wrk -t1 -c50 -d"$DURATION" --latency "$URL")
  wait "$sp"
  proxy_stop
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  python3 - "$1" "$d/slow.json" "$idle" "$mem" "$rps" "$p99" <<'PY'
import json, statistics, sys
label, f, idle, mem, rps, p99 = sys.argv[1:]
res = json.load(open(f))
count = lambda k: sum(1 for r, _ in res if r == k)
other = sum(1 for r, _ in res if r not in ("408", "closed", "open"))
cut = [t for r, t in res if r in ("408", "closed")]
times = f"{statistics.median(cut):.2f}, {max(cut):.2f}" if cut else "-"
print(f"| {label} | {count('408')} | {count('closed')} | {other} | {count('open')} | {times} | {idle} → {mem} | {rps}, {p99} |")
PY
}
run "sift" sift "$d/sift.yaml"
[ -z "${SIFT_BASE:-}" ] || run "sift-base ($("$SIFT_BASE" --version 2>/dev/null | head -1))" sift "$d/sift-base.yaml" "$SIFT_BASE"
run "nginx" nginx "$d/nginx.conf"
