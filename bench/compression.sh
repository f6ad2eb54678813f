#!/usr/bin/env bash
# gzip speed: sift vs nginx as proxies in front of the same nginx backend
# serving one ~16 KB JSON answer (generated here, deterministic), all on
# 127.0.0.1, in one invocation. Runs interleave ROUNDS times (noise on a
# 2-core machine is larger than most effects), each with its proxy started
# afresh:
#
#   sift          sift, no compression
#   sift gzip 6   sift, routes[].compression {level: 6, content_types: [application/json]}
#   nginx         nginx proxy, gzip off
#   nginx gzip 6  nginx proxy, gzip on; gzip_comp_level 6; gzip_types application/json;
#                 gzip_proxied any;
#
# Every client (wrk) sends Accept-Encoding: gzip, also to the proxies that do
# not compress (the backend never compresses). Per run: req/s, p50/p99, the
# proxy's CPU time (user + system, all threads / processes) per request from
# /proc, and the bytes per answer (wrk's read bytes / requests). Before the
# rounds, each proxy's answer is fetched with curl and checked: gzip where
# expected, decoding (python's gzip) to the backend's file byte for byte.
#
#   bench/compression.sh [SIFT_BIN]   env: DURATION (10s) CONNS (50) ROUNDS (3) WARMUP (2s)
#                                     CODING (gzip | br) LEVEL (gzip 6, br 4)
#
# CODING=br: brotli instead, sift's compression {algorithms: [br],
# brotli_quality: LEVEL} against nginx with Debian's brotli filter module
# (libnginx-mod-http-brotli-filter, installed when missing; brotli on;
# brotli_comp_level LEVEL), clients sending Accept-Encoding: br; answers
# checked by curl --compressed (curl decodes br).
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
CODING=${CODING:-gzip}
case "$CODING" in
  gzip) LEVEL=${LEVEL:-6} ;;
  br) LEVEL=${LEVEL:-4} ;;
  *) echo "CODING is gzip or br" >&2; exit 1 ;;
esac
BR_MOD=/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx wrk curl
if [ "$CODING" = br ] && [ ! -f "$BR_MOD" ]; then
  apt-get update -qq && apt-get install -y -qq libnginx-mod-http-brotli-filter >/dev/null
fi

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
http { access_log off; keepalive_requests 1000000; gzip off;
  types { application/json json; }
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$BE; root $d/www; } }
NGX
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

nginx_conf() { # $1 file, $2 extra http-level directives, $3 main-level ones
  cat > "$1" <<NGX
${3:-}
worker_processes 1; daemon off; pid $d/nx/nx.pid; error_log $d/nx/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; $2
  client_body_temp_path $d/nx/cb; proxy_temp_path $d/nx/pt; fastcgi_temp_path $d/nx/ft; uwsgi_temp_path $d/nx/ut; scgi_temp_path $d/nx/st;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$P; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
}
nginx_conf "$d/nginx.conf" "gzip off;"
if [ "$CODING" = br ]; then
  nginx_conf "$d/nginx-c.conf" "brotli on; brotli_comp_level $LEVEL; brotli_types application/json;" "load_module $BR_MOD;"
else
  nginx_conf "$d/nginx-c.conf" "gzip on; gzip_comp_level $LEVEL; gzip_types application/json; gzip_proxied any;"
fi

plain_sift_conf "$d/sift.yaml" ""
if [ "$CODING" = br ]; then
  plain_sift_conf "$d/sift-c.yaml" "    compression: { algorithms: [br], brotli_quality: $LEVEL, content_types: [application/json] }"
else
  plain_sift_conf "$d/sift-c.yaml" "    compression: { level: $LEVEL, content_types: [application/json] }"
fi
AE="Accept-Encoding: $CODING"

URL="http://127.0.0.1:$P/data.json"
start() { proxy_start "$@"; }
stop() { proxy_stop; }
ticks() { proxy_ticks; }

# Each proxy's answer, checked once: encoding, size, decodes to the file.
check() { # $1 label, $2 kind, $3 config, $4 want the coding (1/0)
  start "$2" "$3"
  curl -s -H "$AE" -D "$d/h" -o "$d/body" "$URL"
  curl -s --compressed -H "$AE" -o "$d/plain" "$URL"
  stop
  python3 - "$1" "$4" "$d/h" "$d/body" "$d/plain" "$d/www/data.json" "$CODING" <<'PY'
import gzip, sys
label, want, h, body, plain, orig, coding = sys.argv[1:]
orig = open(orig, "rb").read()
heads = open(h, "rb").read().decode("latin-1").lower()
body = open(body, "rb").read()
enc = f"content-encoding: {coding}" in heads
if enc != (want == "1"):
    sys.exit(f"{label}: Content-Encoding {coding} is {enc}, expected {want == '1'}")
# gzip is decoded here too; br only by curl (no brotli in Python's stdlib).
if coding == "gzip" and (gzip.decompress(body) if enc else body) != orig:
    sys.exit(f"{label}: the answer does not decode to the backend's {len(orig)} bytes")
if not enc and body != orig:
    sys.exit(f"{label}: the plain answer is not the backend's {len(orig)} bytes")
if open(plain, "rb").read() != orig:
    sys.exit(f"{label}: curl --compressed did not get the backend's bytes")
print(f"| {label} | {coding if enc else 'identity'} | {len(body)} | {len(orig) / len(body):.2f} | yes |")
PY
}

bench_header "$CODING compression"
echo "$(nginx -v 2>&1) | $(wrk -v 2>&1 | head -1) | sift: $("$SIFT" --version 2>/dev/null | head -1)"
echo "answer: $SIZE bytes of JSON (application/json, backend nginx, gzip off); wrk -t1 -c$CONNS -d$DURATION --latency -H '$AE' after a ${WARMUP} warmup; proxy on core 0, wrk + backend on core 1"
echo
echo "| proxy | Content-Encoding | answer bytes | ratio | decodes to the original |"
echo "|---|---|---:|---:|---|"
check "sift" sift "$d/sift.yaml" 0
check "sift $CODING $LEVEL" sift "$d/sift-c.yaml" 1
check "nginx" nginx "$d/nginx.conf" 0
check "nginx $CODING $LEVEL" nginx "$d/nginx-c.conf" 1

run() { # $1 label, $2 kind, $3 config
  start "$2" "$3"
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$WARMUP" -H "$AE" "$URL" > /dev/null
  local c0 c1 out; c0=$(ticks)
  out=$(timeout -k 5 120 taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "$AE" "$URL")
  c1=$(ticks)
  stop
  local rps p50 p99 reqs bytes bad cpu per
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  read -r reqs bytes < <(echo "$out" | awk '/requests in/{v=$5; u=v; gsub(/[0-9.]/, "", u); sub(/[A-Za-z]+$/, "", v); m=(u=="KB"?1024:u=="MB"?1048576:u=="GB"?1073741824:1); printf "%s %.0f\n", $1, v*m}')
  bad=$(echo "$out" | awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/, ""); n+=$4+$6+$8+$10} END{print n+0}')
  cpu=$(python3 -c "print(round(($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  per=$(python3 -c "print(round($bytes / $reqs))")
  echo "| $1 | $rps | $p50 | $p99 | $bad | $cpu | $per |"
  LAST_RPS=$rps; LAST_CPU=$cpu
}

echo
echo "| run | req/s | p50 | p99 | errors | proxy CPU µs/req | bytes read per answer (wrk, with head) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
declare -A rps cpu
for r in $(seq "$ROUNDS"); do
  for v in "sift:sift:$d/sift.yaml" "sift $CODING $LEVEL:sift:$d/sift-c.yaml" \
           "nginx:nginx:$d/nginx.conf" "nginx $CODING $LEVEL:nginx:$d/nginx-c.conf"; do
    IFS=: read -r label kind conf <<< "$v"
    run "round $r: $label" "$kind" "$conf"
    rps[$label]="${rps[$label]:-} $LAST_RPS"; cpu[$label]="${cpu[$label]:-} $LAST_CPU"
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo
for label in "sift" "sift $CODING $LEVEL" "nginx" "nginx $CODING $LEVEL"; do
  # shellcheck disable=SC2086
  echo "$label: median req/s $(median ${rps[$label]}), median proxy CPU $(median ${cpu[$label]}) µs/req"
done
