#!/usr/bin/env bash
# Forward auth: sift's `external_auth` against nginx's `auth_request`, each
# one worker on core 0 in front of the same nginx backend (core 1), which
# also serves the authorization check (`/verify`: 204 for
# `Authorization: Bearer good`, else 401). wrk (core 1) sends the good
# token over keep-alive connections. Each proxy also runs without the
# check, so the table shows what the check adds. Rounds alternate.
#
#   bench/auth-compare.sh [SIFT_BIN]     env: DURATION (10s), CONNS (50), ROUNDS (3)
#
# nginx and wrk are installed with apt-get when missing. Loopback only;
# stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
export PATH="$PATH:/usr/sbin:/sbin"
need_tools nginx wrk curl
scratch

BE=$(port); NA=$(port); NP=$(port); SA=$(port); SP=$(port); ADM=$(port)
cat > "$d/backend.conf" <<NGX
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$BE;
    location = /verify { if (\$http_authorization = "Bearer good") { return 204; } return 401; }
    location / { return 200 "ok\n"; } } }
NGX
cat > "$d/nginx.conf" <<NGX
worker_processes 1; master_process off; daemon off; pid $d/nx.pid; error_log $d/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d/cb2; proxy_temp_path $d/pt2; fastcgi_temp_path $d/ft2; uwsgi_temp_path $d/ut2; scgi_temp_path $d/st2;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$NA;
    location / { auth_request /_auth; proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_auth { internal; proxy_pass http://be/verify; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass_request_body off; proxy_set_header Content-Length ""; } }
  server { listen 127.0.0.1:$NP;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$ADM" }
listeners:
  - { name: auth, address: "127.0.0.1:$SA", protocol: h1, routes: [guarded] }
  - { name: plain, address: "127.0.0.1:$SP", protocol: h1, routes: [open] }
routes:
  - { name: guarded, cluster: backend, external_auth: { cluster: authsvc, path: /verify, request_headers: [authorization] } }
  - { name: open, cluster: backend }
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
  - { name: authsvc, endpoints: ["127.0.0.1:$BE"] }
YAML
taskset -c 1 nginx -c "$d/backend.conf" & pids+=($!)
taskset -c 0 nginx -c "$d/nginx.conf" & pids+=($!); NPID=$!
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & pids+=($!); SPID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ADM/readyz" >/dev/null 2>&1 && curl -fsS -o /dev/null "http://127.0.0.1:$NP/" 2>/dev/null && break
  sleep 0.1
done
# Both refuse a bad token and admit the good one.
for p in "$NA" "$SA"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer bad' "http://127.0.0.1:$p/")" = 401 ] || { echo "port $p did not refuse" >&2; exit 1; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer good' "http://127.0.0.1:$p/")" = 200 ] || { echo "port $p did not admit" >&2; exit 1; }
done

run() { # $1 label, $2 port, $3 pid
  local c0 c1 out rate lat non2xx
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H 'Authorization: Bearer good' "http://127.0.0.1:$2/" >/dev/null
  c0=$(cpu_ticks_of "$3")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H 'Authorization: Bearer good' "http://127.0.0.1:$2/")
  c1=$(cpu_ticks_of "$3")
  rate=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  lat=$(awk '$1=="50%"{p50=$2} $1=="99%"{p99=$2} END{print p50" / "p99}' <<<"$out")
  non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  local secs=${DURATION%s}
  local us
  us=$(python3 -c "print(f'{($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max(1.0, $rate * $secs):.1f}')")
  echo "| $1 | $rate | $lat | $us | $non2xx | $(rss_mb "$3") |"
}

echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS nginx $(nginx -v 2>&1 | sed 's/.*\///')"
echo "| proxy | req/s | p50 / p99 | proxy CPU µs/req | non-2xx | RSS MB |"
echo "|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  run "nginx, no check" "$NP" "$NPID"
  run "nginx, auth_request" "$NA" "$NPID"
  run "sift, no check" "$SP" "$SPID"
  run "sift, external_auth" "$SA" "$SPID"
done
