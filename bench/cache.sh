#!/usr/bin/env bash
# HTTP caching: sift vs nginx as caching proxies in front of the same nginx
# backend serving one ~16 KB JSON answer that says it may be cached
# (Cache-Control: max-age=3600, from nginx's `expires 1h`), all on
# 127.0.0.1, in one invocation. Runs interleave ROUNDS times, each proxy
# started afresh:
#
#   sift          sift, no cache
#   sift cache    sift, routes[].cache: {} (in memory)
#   nginx         nginx proxy, no cache
#   nginx cache   nginx proxy_cache (keys_zone=c:10m, files under the run's
#                 scratch directory: the page cache holds them), with
#                 proxy_cache_lock on
#
# Per run: req/s, p50/p99, the proxy's CPU time (user + system, all threads
# / processes) per request from /proc, the requests the backend saw during
# the run (from its access log: 1 for a cache that works, one per request
# without), and the proxy's resident memory at the end (VmRSS of the
# process and its children). Before the rounds, each proxy's answer is
# fetched twice with curl and checked: the backend's bytes, and the second
# one a cache hit (x-sift-cache: HIT; nginx's X-Cache-Status: HIT) where a
# cache is on.
#
#   bench/cache.sh [SIFT_BIN]   env: DURATION (10s) CONNS (50) ROUNDS (3) WARMUP (2s)
#
# sift and the proxy nginx on core 0, wrk and the backend nginx on core 1.
# Everything stops by itself; servers are killed at exit.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx wrk curl

scratch
BE=$(port); P=$(port); A=$(port)
mkdir -p "$d/www" "$d/nx"
chmod 755 "$d/www" "$d/nx"
api_json "$d/www/data.json"
chmod 644 "$d/www/data.json"
SIZE=$(stat -c %s "$d/www/data.json")

cat > "$d/backend.conf" <<NGX
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 4096; }
http { access_log $d/be.access; keepalive_requests 1000000; gzip off;
  types { application/json json; }
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$BE; root $d/www; expires 1h; } }
NGX
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

nginx_conf() { # $1 file, $2 http-level directives, $3 location-level ones
  cat > "$1" <<NGX
worker_processes 1; daemon off; pid $d/nx/nx.pid; error_log $d/nx/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; $2
  client_body_temp_path $d/nx/cb; proxy_temp_path $d/nx/pt; fastcgi_temp_path $d/nx/ft; uwsgi_temp_path $d/nx/ut; scgi_temp_path $d/nx/st;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$P; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; $3 } } }
NGX
}
nginx_conf "$d/nginx.conf" "" ""
nginx_conf "$d/nginx-c.conf" "proxy_cache_path $d/nx/cache levels=1:2 keys_zone=c:10m max_size=64m;" \
  "proxy_cache c; proxy_cache_lock on; add_header X-Cache-Status \$upstream_cache_status;"

plain_sift_conf "$d/sift.yaml" ""
plain_sift_conf "$d/sift-c.yaml" "    cache: {}"

URL="http://127.0.0.1:$P/data.json"
start() { # as proxy_start, with nginx's cache emptied first
  [ "$1" = sift ] || rm -rf "$d/nx/cache"
  proxy_start "$@"
}
stop() { proxy_stop; }
ticks() { proxy_ticks; }
rss() { # VmRSS in KiB of the proxy and its children
  local t=0 p
  for p in "$SP" $(pgrep -P "$SP" || true); do
    t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
backend_requests() { wc -l < "$d/be.access"; }

# Each proxy's answer, checked: the backend's bytes; the second a hit.
check() { # $1 label, $2 kind, $3 config, $4 want a hit (1/0)
  start "$2" "$3"
  curl -s -o "$d/body1" "$URL"
  curl -s -D "$d/h" -o "$d/body" "$URL"
  stop
  python3 - "$1" "$4" "$d/h" "$d/body1" "$d/body" "$d/www/data.json" <<'PY'
import sys
label, want, h, b1, b2, orig = sys.argv[1:]
orig = open(orig, "rb").read()
heads = open(h, "rb").read().decode("latin-1").lower()
hit = "x-sift-cache: hit" in heads or "x-cache-status: hit" in heads
if hit != (want == "1"):
    sys.exit(f"{label}: second answer a cache hit is {hit}, expected {want == '1'}:\n{heads}")
for b in (b1, b2):
    if open(b, "rb").read() != orig:
        sys.exit(f"{label}: an answer is not the backend's {len(orig)} bytes")
print(f"| {label} | {'HIT' if hit else '-'} | {len(orig)} | yes |")
PY
}

bench_header "cache"
echo "$(nginx -v 2>&1) | $(wrk -v 2>&1 | head -1) | sift: $("$SIFT" --version 2>/dev/null | head -1)"
echo "answer: $SIZE bytes of JSON (backend nginx, Cache-Control: max-age=3600); wrk -t1 -c$CONNS -d$DURATION --latency after a ${WARMUP} warmup; proxy on core 0, wrk + backend on core 1"
echo
echo "| proxy | second answer | bytes | the backend's bytes |"
echo "|---|---|---:|---|"
check "sift" sift "$d/sift.yaml" 0
check "sift cache" sift "$d/sift-c.yaml" 1
check "nginx" nginx "$d/nginx.conf" 0
check "nginx cache" nginx "$d/nginx-c.conf" 1

run() { # $1 label, $2 kind, $3 config
  start "$2" "$3"
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$WARMUP" "$URL" > /dev/null
  local c0 c1 b0 b1 out mem; c0=$(ticks); b0=$(backend_requests)
  out=$(timeout -k 5 120 taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$URL")
  c1=$(ticks); b1=$(backend_requests); mem=$(rss)
  stop
  local rps p50 p99 reqs bad cpu
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  bad=$(echo "$out" | awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/, ""); n+=$4+$6+$8+$10} END{print n+0}')
  cpu=$(python3 -c "print(round(($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  echo "| $1 | $rps | $p50 | $p99 | $bad | $cpu | $((b1 - b0)) | $((mem / 1024)) |"
  LAST_RPS=$rps; LAST_CPU=$cpu
}

echo
echo "| run | req/s | p50 | p99 | errors | proxy CPU µs/req | backend requests | proxy RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
declare -A rps cpu
for r in $(seq "$ROUNDS"); do
  for v in "sift:sift:$d/sift.yaml" "sift cache:sift:$d/sift-c.yaml" \
           "nginx:nginx:$d/nginx.conf" "nginx cache:nginx:$d/nginx-c.conf"; do
    IFS=: read -r label kind conf <<< "$v"
    run "round $r: $label" "$kind" "$conf"
    rps[$label]="${rps[$label]:-} $LAST_RPS"; cpu[$label]="${cpu[$label]:-} $LAST_CPU"
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo
for label in "sift" "sift cache" "nginx" "nginx cache"; do
  # shellcheck disable=SC2086
  echo "$label: median req/s $(median ${rps[$label]}), median proxy CPU $(median ${cpu[$label]}) µs/req"
done
