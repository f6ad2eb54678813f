#!/usr/bin/env bash
# The cost of the access log: sift with JSON access lines on (to stdout,
# redirected to a file as a log collector would read them), binaries
# alternated round by round, against nginx with its own access_log on for
# reference, and the last binary with access_log: false. sift (one
# worker) and nginx (one worker) pinned to core 0; wrk
# and the backend nginx on core 1. Per run: req/s, p99, and the proxy's CPU
# time per request (user + system, from /proc).
#
#   bench/access-log.sh SIFT_BIN...        env: DURATION (5s) ROUNDS (3) CONNS (50)
#
# Loopback only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
[ $# -gt 0 ] || set -- target/release/sift
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
. bench/common.sh
need_tools nginx wrk curl taskset
scratch
bench_header access-log
BE=$(port)
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
P=$(port); A=$(port)
URL="http://127.0.0.1:$P/"
mkdir -p "$d/nx"
cat > "$d/nx.conf" <<NGX
worker_processes 1; daemon off; pid $d/nx/nx.pid; error_log $d/nx/nx.err;
events { worker_connections 4096; }
http {
  log_format json escape=json '{"time":"\$time_iso8601","remote":"\$remote_addr","method":"\$request_method","host":"\$host","uri":"\$request_uri","status":\$status,"bytes":\$body_bytes_sent,"duration":\$request_time,"upstream":"\$upstream_response_time","ua":"\$http_user_agent"}';
  access_log $d/nx/access.log json;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  client_body_temp_path $d/nx/cb; proxy_temp_path $d/nx/pt; fastcgi_temp_path $d/nx/ft; uwsgi_temp_path $d/nx/ut; scgi_temp_path $d/nx/st;
  server { listen 127.0.0.1:$P; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
run() { # label kind config
  local t0 t1 out rps p99 n
  proxy_start "$2" "$3"
  taskset -c 1 wrk -t1 -c"$CONNS" -d1s "$URL" > /dev/null
  t0=$(proxy_ticks)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$URL")
  t1=$(proxy_ticks)
  proxy_stop
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  n=$(awk '/requests in/{print $1}' <<<"$out")
  printf '| %s | %s | %s | %.1f |\n' "$1" "$rps" "$p99" \
    "$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)"
}
echo "| run | req/s | p99 | proxy CPU µs/req |"
echo "|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    SIFT=$bin
    cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: info, access_log: true }
admin: { address: "127.0.0.1:$A" }
listeners: [ { name: bench, address: "127.0.0.1:$P" } ]
routes: [ { name: all, cluster: backend } ]
clusters: [ { name: backend, endpoints: ["127.0.0.1:$BE"] } ]
YAML
    run "round $r: $bin" sift "$d/sift.yaml"
  done
  # The last binary without access lines, for the cost of the log alone.
  sed -i 's/access_log: true/access_log: false/' "$d/sift.yaml"
  run "round $r: $SIFT, access_log: false" sift "$d/sift.yaml"
  run "round $r: nginx (access_log json)" nginx "$d/nx.conf"
done
