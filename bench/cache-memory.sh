#!/usr/bin/env bash
# The HTTP cache's memory: what sift's resident memory grows by when its
# cache fills, against what the cache counts (`GET /cache` bytes) and its
# max_bytes. A backend nginx answers every path with a SIZE-byte body and
# Cache-Control: max-age=3600; curl (one keep-alive connection, a URL
# range) asks for N distinct paths through sift (routes[].cache: {max_bytes:
# MAX}), then the same N again. Per step: sift's VmRSS, the cache's entries
# and bytes (admin API), evictions, and the second pass's hits.
#
#   bench/cache-memory.sh [SIFT_BIN]   env: N (100000) SIZE (4096) MAX (256MiB)
#
# sift on core 0, curl and nginx on core 1; everything on 127.0.0.1; stops
# by itself.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
N=${N:-100000}
SIZE=${SIZE:-4096}
MAX=${MAX:-256MiB}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx curl

scratch
BE=$(port); P=$(port); A=$(port)
mkdir -p "$d/nx"
chmod 755 "$d" "$d/nx"
mkdir -p "$d/www"; chmod 755 "$d/www"
head -c "$SIZE" /dev/zero | tr '\0' 'x' > "$d/www/body"; chmod 644 "$d/www/body"
cat > "$d/backend.conf" <<NGX
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$BE; default_type text/plain;
    location / { root $d/www; expires 1h; try_files /body =404; } } }
NGX
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

plain_sift_conf "$d/sift.yaml" "    cache: { max_bytes: $MAX }"
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & SP=$!
pids+=("$SP")
ok=0
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$P/warm" 2>/dev/null)" = 200 ] && { ok=1; break; }
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "sift did not answer 200 on /warm" >&2; cat "$d/sift.log" "$d/be.err" >&2; exit 1; }

rss() { awk '/VmRSS/{print $2}' "/proc/$SP/status"; }
view() { curl -s "http://127.0.0.1:$A/cache" | python3 -c 'import json,sys; r=json.load(sys.stdin)["routes"][0]; print(r["entries"], r["bytes"])'; }
metric() { curl -s "http://127.0.0.1:$A/metrics" | awk -v m="$1" '$1==m{print $2}'; }

bench_header "cache memory"
echo "N=$N distinct paths of $SIZE-byte bodies (max-age=3600), cache max_bytes $MAX; sift on core 0, curl (one connection, /p/[0-$((N - 1))]) and nginx on core 1"
echo
echo "| step | sift VmRSS KiB | entries | bytes counted | evictions | hits |"
echo "|---|---:|---:|---:|---:|---:|"
r0=$(rss); read -r e0 b0 < <(view)
echo "| started (1 request) | $r0 | $e0 | $b0 | 0 | 0 |"
for pass in 1 2; do
  timeout -k 5 600 taskset -c 1 curl -s "http://127.0.0.1:$P/p/[0-$((N - 1))]" > /dev/null
  read -r e b < <(view)
  echo "| after pass $pass | $(rss) | $e | $b | $(metric 'sift_cache_evictions_total{route="all"}') | $(metric 'sift_cache_requests_total{result="hit",route="all"}') |"
done
r1=$(rss); read -r e1 b1 < <(view)
python3 - "$r0" "$r1" "$b1" "$e1" <<'PY'
import sys
r0, r1, b1, e1 = map(int, sys.argv[1:])
grew = (r1 - r0) * 1024
print()
print(f"RSS grew by {grew / 2**20:.1f} MiB for {b1 / 2**20:.1f} MiB counted in {e1} entries: "
      f"{grew / max(b1, 1):.2f} x the count, {grew / max(e1, 1):.0f} bytes per entry")
PY
