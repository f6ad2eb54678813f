#!/usr/bin/env bash
# A flood of large request bodies held for a filter: does sift's memory
# stay bounded (overload.max_buffered_bytes), and what do the clients get?
# All on 127.0.0.1, in one invocation. FLOOD clients each open a
# connection, send a POST head with Content-Length SIZE KiB and all but
# the last KiB of the body, then wait HOLD seconds for an answer (the last
# KiB never comes, as from a slow or hostile uploader). The route holds
# bodies for a block filter (spam, max_inspect_bytes = SIZE KiB), as an
# edge that inspects uploads does. Per sift config:
#
#   - the clients' answers within HOLD seconds (503, other, none: held);
#   - sift's resident memory idle, 2 s into the flood, and its peak
#     (VmHWM) by the end;
#   - sift_buffered_request_bytes 2 s into the flood.
#
# Configs (one binary): `max_buffered_bytes: 0` (no limit: what sift did
# before the key existed) and `max_buffered_bytes: LIMIT`, with the
# filter's on_overload (ON_OVERLOAD, default fail_closed: past the limit
# the client gets 503 at once). nginx, with request buffering to disk
# (client_body_buffer_size 16k, the default), is the reference.
#
#   bench/body-flood.sh [SIFT_BIN]
#   env: FLOOD (300) SIZE (1024, KiB) LIMIT (32MiB) HOLD (6)
#        ON_OVERLOAD (fail_closed)
#
# A fourth run floods a route without a filter that has
# `request_buffering: { in_memory: 16KiB }` (nginx's client_body_buffer_size):
# sift reads each body to its end before asking the backend, the rest of
# it in a spool file, as nginx does.
#
# sift or nginx on core 0; the clients and the backend on core 1.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
FLOOD=${FLOOD:-300}
SIZE=${SIZE:-1024}
LIMIT=${LIMIT:-32MiB}
HOLD=${HOLD:-6}
ON_OVERLOAD=${ON_OVERLOAD:-fail_closed}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx curl
ulimit -n 65536 2>/dev/null || true

body_bench_setup 64m 60

write_sift() { # $1 file, $2 max_buffered_bytes
  cat > "$1" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
overload: { max_buffered_bytes: $2 }
listeners:
  - name: bench
    address: "127.0.0.1:$P"
    limits: { request_body_timeout: 60s, max_connections: 20000 }
filters:
  - { name: spam, kind: spam, max_inspect_bytes: ${SIZE}KiB }
routes:
  - name: buffered
    match: { path: { prefix: /buffered } }
    cluster: backend
    max_request_body: 64MiB
    request_buffering: { in_memory: 16KiB, spool_dir: "$d" }
  - name: held
    match: { path: { prefix: /held } }
    cluster: backend
    max_request_body: 64MiB
    filters: [ { filter: spam, mode: block, on_overload: $ON_OVERLOAD } ]
  - name: all
    cluster: backend
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
}
write_sift "$d/unlimited.yaml" 0
write_sift "$d/limited.yaml" "$LIMIT"

cat > "$d/flood.py" <<'PY'
import asyncio, json, sys
port, n, hold, size, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) * 1024, sys.argv[5]
head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(size).encode() + b"\r\n\r\n")
line = b"an upload of ordinary words that a filter has to read before it goes on. "
body = (line * (size // len(line) + 1))[: size - 1024]
async def one():
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head)
        for i in range(0, len(body), 65536):
            w.write(body[i:i + 65536])
            await w.drain()
    except OSError:
        return "refused"
    try:
        data = await asyncio.wait_for(r.read(64), hold)
    except asyncio.TimeoutError:
        w.close()
        return "open"
    except OSError:
        data = b""
    w.close()
    return data[9:12].decode() if data.startswith(b"HTTP/") else "closed"
async def main():
    res = await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps(res))
asyncio.run(main())
PY

URL="http://127.0.0.1:$P/"
bench_header "body-flood"
echo "$(nginx -v 2>&1) | sift: $("$SIFT" --version 2>/dev/null | head -1)"
echo "$FLOOD clients, each POST /held/upload (last row: /buffered/upload) with Content-Length ${SIZE} KiB, all but the last KiB sent, then nothing; answers watched for ${HOLD}s; block filter (spam, max_inspect_bytes ${SIZE}KiB, on_overload $ON_OVERLOAD); proxy on core 0, clients and backend on core 1"
echo
echo "| proxy | 503 | other answer | closed, no answer | no answer after ${HOLD}s (held) | RSS idle → 2 s into the flood → peak (MiB) | sift_buffered_request_bytes at 2 s (MiB) |"
echo "|---|---:|---:|---:|---:|---|---:|"
run() { # $1 label, $2 kind, $3 config, $4 path (/held/upload)
  proxy_start "$2" "$3"
  local idle; idle=$(rss_mb "$SP" $(pgrep -P "$SP" || true))
  taskset -c 1 python3 "$d/flood.py" "$P" "$FLOOD" "$HOLD" "$SIZE" "${4:-/held/upload}" > "$d/flood.json" & local fp=$!
  sleep 2
  local mem; mem=$(rss_mb "$SP" $(pgrep -P "$SP" || true))
  local held="-"
  if [ "$2" = sift ]; then
    held=$(curl -s "http://127.0.0.1:$A/metrics" | awk '$1=="sift_buffered_request_bytes"{printf "%.1f", $2/1048576}')
  fi
  wait "$fp"
  local peak=0 p
  for p in "$SP" $(pgrep -P "$SP" || true); do
    peak=$((peak + $(awk '/VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  peak=$(echo "scale=1; $peak/1024" | bc)
  proxy_stop
  python3 - "$1" "$d/flood.json" "$idle" "$mem" "$peak" "$held" <<'PY'
import json, sys
label, f, idle, mem, peak, held = sys.argv[1:]
res = json.load(open(f))
count = lambda k: sum(1 for r in res if r == k)
from collections import Counter
others = Counter(r for r in res if r not in ("503", "closed", "open"))
other = ", ".join(f"{n} ({k})" for k, n in sorted(others.items())) or "0"
print(f"| {label} | {count('503')} | {other} | {count('closed')} | {count('open')} | {idle} → {mem} → {peak} | {held} |")
PY
}
run "sift, max_buffered_bytes: 0 (no limit)" sift "$d/unlimited.yaml"
run "sift, max_buffered_bytes: $LIMIT" sift "$d/limited.yaml"
run "nginx (request buffering to disk)" nginx "$d/nginx.conf"
run "sift, no filter, request_buffering in_memory 16KiB" sift "$d/limited.yaml" /buffered/upload
