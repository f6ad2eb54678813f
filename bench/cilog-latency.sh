#!/usr/bin/env bash
# Latency the CI-log filter adds through the proxy, measured three ways on a
# real ~1 MB CI log, each against the no-filter route in the same run
# (requests to the two routes interleaved, so both see the same machine):
#
#  1. one connection, requests back to back (no queueing behind other logs:
#     the classifier's own latency);
#  2. open loop: requests sent at a fixed rate (well under the filter
#     thread's capacity) whatever the responses do, each on a free
#     keep-alive connection (a new one if none is free); latency counted
#     from the planned send time, so a slow response cannot hide the wait
#     of the ones planned behind it;
#  3. closed loop, wrk -c$LOG_CONNS back to back (saturation: the filter
#     thread is the bottleneck and the p99 measures queueing).
#
#   bench/cilog-latency.sh [SIFT_BIN]
#   env: N1 (300 requests per route, mode 1) DURATION (10, seconds per rate,
#        mode 2) RATES ("20 60": cilog requests per second, mode 2; as many
#        no-filter ones) WRK_DURATION (10s) LOG_CONNS (4) LOG (a log file)
#
# Placement as bench/filter-overhead.sh: sift (1 worker + 1 filter thread) on
# core 0; the client and the backend nginx on core 1. Everything runs on
# 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
N1=${N1:-300}
DURATION=${DURATION:-10}
RATES=${RATES:-"20 60"}
WRK_DURATION=${WRK_DURATION:-10s}
LOG_CONNS=${LOG_CONNS:-4}
DATA=${SIFT_SHARED_DATA:-../shared/data}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx wrk curl
# The log of bench/filter-overhead.sh (the first, in path order, of 0.8-1.2 MB).
LOG=${LOG:-$(find "$DATA/cilogs/logs" -name '*.log' -size -1200k -size +800k 2>/dev/null | sort | head -1 || true)}
[ -n "$LOG" ] && [ -f "$LOG" ] || { echo "no CI log of about 1 MB under $DATA/cilogs/logs" >&2; exit 1; }

scratch
BE=$(port); P=$(port); A=$(port)
backend_conf "$BE" "client_max_body_size 64m;"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
filter_pool: { threads: 1 }
listeners:
  - name: bench
    address: "127.0.0.1:$P"
filters:
  - { name: cilog, kind: cilog }
routes:
  - { name: logoff, match: { path: { exact: /logoff } }, cluster: backend, max_request_body: 64MiB }
  - { name: cilog, match: { path: { exact: /cilog } }, cluster: backend, max_request_body: 64MiB, filters: [ { filter: cilog, mode: annotate } ] }
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$A/readyz" >/dev/null || { cat "$d/sift.log" >&2; exit 1; }

cat > "$d/client.py" <<'PY'
"""Loopback HTTP/1.1 client: one connection back to back, or open loop."""
import asyncio, sys, time

HOST, PORT, LOG, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
BODY = open(LOG, "rb").read()
HEAD = {
    p: (f"POST {p} HTTP/1.1\r\nHost: bench\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n").encode()
    for p in ("/logoff", "/cilog")
}
ROUTES = ("/logoff", "/cilog")


async def connect():
    return await asyncio.open_connection(HOST, PORT)


async def request(conn, path):
    r, w = conn
    w.write(HEAD[path])
    w.write(BODY)
    await w.drain()
    status = await r.readline()
    n = 0
    while True:
        h = await r.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            n = int(v)
    if n:
        await r.readexactly(n)
    return status.split()[1] == b"200"


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] * 1e3


def report(label, lat, bad):
    off, on = lat["/logoff"], lat["/cilog"]
    a50, a99 = pct(off, 0.50), pct(off, 0.99)
    b50, b99 = pct(on, 0.50), pct(on, 0.99)
    print(f"| {label} | {len(off)} / {len(on)} | {a50:.2f} / {a99:.2f} | "
          f"{b50:.2f} / {b99:.2f} | **{b50 - a50:+.2f}** / **{b99 - a99:+.2f}** | {bad} |")


async def one_connection(n):
    conn = await connect()
    lat = {p: [] for p in ROUTES}
    bad = 0
    for i in range(2 * (n + 20)):
        p = ROUTES[i % 2]
        t = time.perf_counter()
        ok = await request(conn, p)
        dt = time.perf_counter() - t
        if i >= 40:  # warm-up
            lat[p].append(dt)
        bad += not ok
    report("one connection, back to back", lat, bad)


async def open_loop(rate, seconds):
    """`rate` requests/s to each route, interleaved evenly."""
    idle = []
    lat = {p: [] for p in ROUTES}
    bad = 0
    opened = 0
    period = 1.0 / (2 * rate)
    total = int(2 * rate * seconds)

    async def one(i, planned):
        nonlocal bad, opened
        conn = idle.pop() if idle else None
        if conn is None:
            conn = await connect()
            opened += 1
        ok = await request(conn, ROUTES[i % 2])
        done = time.perf_counter()
        idle.append(conn)
        if planned >= warm:
            lat[ROUTES[i % 2]].append(done - planned)
        bad += not ok

    for _ in range(4):
        idle.append(await connect())
    start = time.perf_counter() + 0.05
    warm = start + 1.0
    tasks = []
    for i in range(total + int(2 * rate)):  # 1 s of warm-up first
        planned = start + i * period
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, planned)))
    await asyncio.gather(*tasks)
    report(f"open loop, {rate} + {rate} req/s ({rate * len(BODY) / 1e6:.0f} MB/s to the filter); {opened} extra conns", lat, bad)


if MODE == "one":
    asyncio.run(one_connection(int(sys.argv[5])))
else:
    asyncio.run(open_loop(float(sys.argv[5]), float(sys.argv[6])))
PY

lua() { # $1 body file, $2 path
cat <<LUA
local f = io.open("$1", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "text/plain"
request = function() return wrk.format(nil, "$2") end
LUA
}
lua "$LOG" /logoff > "$d/logoff.lua"; lua "$LOG" /cilog > "$d/cilog.lua"
ms() { # wrk latency (e.g. 1.23ms, 850.00us, 1.2s) -> ms
  python3 -c "import sys,re;v=sys.argv[1];m=re.match(r'([0-9.]+)(us|ms|s)',v);n=float(m[1]);print({'us':n/1000,'ms':n,'s':n*1000}[m[2]])" "$1"
}
wrk_run() { # $1 lua -> "rps p50 p99" (ms)
  taskset -c 1 wrk -t1 -c"$LOG_CONNS" -d2s -s "$1" "http://127.0.0.1:$P/" >/dev/null
  local out; out=$(taskset -c 1 wrk -t1 -c"$LOG_CONNS" -d"$WRK_DURATION" --latency -s "$1" "http://127.0.0.1:$P/")
  echo "$(echo "$out" | awk '/Requests\/sec/{print $2}') $(ms "$(echo "$out" | awk '$1=="50%"{print $2}')") $(ms "$(echo "$out" | awk '$1=="99%"{print $2}')")"
}

echo "cilog latency: $(date -u) | nproc $(nproc) | load $(cut -d' ' -f1-3 /proc/loadavg) | sift: 1 worker + 1 filter thread on core 0; client + backend nginx on core 1"
echo "log: $(basename "$LOG") ($(stat -c %s "$LOG") bytes), cilog filter in annotate mode vs the same route without filter"
echo
echo "| mode | requests (off / cilog) | no filter p50 / p99 (ms) | cilog p50 / p99 (ms) | added p50 / p99 (ms) | non-200 |"
echo "|---|---:|---:|---:|---:|---:|"
taskset -c 1 python3 "$d/client.py" 127.0.0.1 "$P" "$LOG" one "$N1"
for r in $RATES; do
  taskset -c 1 python3 "$d/client.py" 127.0.0.1 "$P" "$LOG" open "$r" "$DURATION"
done
read -r rps0 a50 a99 <<<"$(wrk_run "$d/logoff.lua")"
read -r rps1 b50 b99 <<<"$(wrk_run "$d/cilog.lua")"
python3 -c "print(f'| closed loop, wrk -c$LOG_CONNS -d$WRK_DURATION ({float(\"$rps0\"):.0f} / {float(\"$rps1\"):.0f} req/s), runs one after the other | - | {$a50:.2f} / {$a99:.2f} | {$b50:.2f} / {$b99:.2f} | **{$b50-$a50:+.2f}** / **{$b99-$a99:+.2f}** | - |')"
echo
echo "cilog verdicts counted: $(curl -fs "http://127.0.0.1:$A/metrics" | awk '/^sift_filter_verdicts_total\{filter="cilog"/{s+=$2} END{print s+0}')"
