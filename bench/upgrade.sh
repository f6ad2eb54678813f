#!/usr/bin/env bash
# Replacing a running proxy under load: what clients see. wrk sends requests
# for DURATION while the proxy is replaced UPGRADES times, one second apart:
#   - sift, `sift run --upgrade` (the listening sockets handed over);
#   - sift, stop and start (SIGTERM, then a new process once the old exited):
#     what a restart-only change costs without the hand-over;
#   - nginx, `nginx -s reload` (its master keeps the sockets, new workers);
#   - HAProxy, master-worker reload (USR2) with `expose-fd listeners`
#     (the sockets passed to the new worker, HAProxy's seamless reload).
# Two load shapes: a new connection per request (`Connection: close`: a
# refused connect shows as a connect error) and keep-alive connections (a
# connection closed under a request shows as a read error).
#
#   bench/upgrade.sh [SIFT_BIN]   env: DURATION (8s), UPGRADES (5), CONNS (16)
#
# nginx, haproxy and wrk are installed with apt-get when missing. Loopback
# only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-8s}
UPGRADES=${UPGRADES:-5}
CONNS=${CONNS:-16}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
export PATH="$PATH:/usr/sbin:/sbin"
need_tools nginx haproxy wrk curl
scratch

BE=$(port); NX=$(port); HA=$(port); SF=$(port); ADM=$(port)
backend_conf "$BE"
nginx -c "$d/backend.conf" & pids+=($!)
cat > "$d/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $d/nx.pid; error_log $d/nx.err;
events { worker_connections 4096; }
http { access_log off;
  client_body_temp_path $d/cb2; proxy_temp_path $d/pt2; fastcgi_temp_path $d/ft2; uwsgi_temp_path $d/ut2; scgi_temp_path $d/st2;
  upstream be { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$NX;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
cat > "$d/haproxy.cfg" <<HAP
global
  master-worker
  stats socket $d/ha.sock mode 600 level admin expose-fd listeners
  pidfile $d/ha.pid
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:$HA
  default_backend b
backend b
  server s1 127.0.0.1:$BE
HAP
cat > "$d/sift.yaml" <<YAML
log: { format: json, level: info, access_log: false }
admin: { address: "127.0.0.1:$ADM" }
upgrade: { socket: "$d/sift-upgrade.sock" }
shutdown: { drain_timeout: 5s }
listeners:
  - { name: main, address: "127.0.0.1:$SF", protocol: h1 }
routes:
  - { name: app, cluster: backend }
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML

up() { # wait until port $1 answers 200
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null)" = 200 ] && return 0
    sleep 0.05
  done
  echo "port $1 did not come up" >&2; return 1
}

n=0
MS=-
sift_start() { # $1: extra args; waits for "sift ready"; sets SPID and MS (ms taken)
  n=$((n + 1))
  local t0 log="$d/sift.$n.log"
  t0=$(date +%s%N)
  "$SIFT" run --config "$d/sift.yaml" $1 > "$log" 2>&1 & pids+=($!)
  SPID=$!
  for _ in $(seq 400); do grep -q '"sift ready"' "$log" && break; sleep 0.01; done
  grep -q '"sift ready"' "$log" || { echo "sift did not start: $(cat "$log")" >&2; return 1; }
  MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

replace() { # $1 proxy kind; sets MS
  MS=-
  case $1 in
    sift-upgrade) sift_start --upgrade ;;
    sift-restart)
      kill -TERM "$SPID"; while kill -0 "$SPID" 2>/dev/null; do sleep 0.01; done
      sift_start "" ;;
    nginx) nginx -c "$d/nginx.conf" -s reload ;;
    haproxy) kill -USR2 "$(head -1 "$d/ha.pid")" ;;
  esac
}

run() { # $1 label, $2 kind, $3 port, $4 "close" | "keepalive"
  local hdr=() out times=()
  [ "$4" = close ] && hdr=(-H 'Connection: close')
  wrk -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "http://127.0.0.1:$3/" > "$d/wrk.out" &
  local w=$!
  sleep 1
  for _ in $(seq "$UPGRADES"); do
    replace "$2"; times+=("$MS")
    sleep 1
  done
  wait "$w"
  out=$(cat "$d/wrk.out")
  local reqs errs non2xx
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  errs=$(awk '/Socket errors/{gsub(",",""); print "connect "$4", read "$6", write "$8", timeout "$10}' <<<"$out")
  non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  echo "| $1 | $4 | $UPGRADES | $reqs | ${errs:-connect 0, read 0, write 0, timeout 0} | ${non2xx:-0} | ${times[*]} |"
}

echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) DURATION=$DURATION UPGRADES=$UPGRADES CONNS=$CONNS nginx $(nginx -v 2>&1 | sed 's/.*\///') $(haproxy -v | head -1 | awk '{print $1, $3}')"
echo "| proxy | connections | replacements | requests | socket errors | non-2xx | sift: ms to ready per replacement |"
echo "|---|---|---|---|---|---|---|"
nginx -c "$d/nginx.conf" & pids+=($!)
haproxy -W -f "$d/haproxy.cfg" > "$d/ha.log" 2>&1 & pids+=($!)
sift_start ""
up "$NX"; up "$HA"; up "$SF"
for mode in close keepalive; do
  run "sift, --upgrade" sift-upgrade "$SF" "$mode"
  run "sift, stop + start" sift-restart "$SF" "$mode"
  run "nginx, -s reload" nginx "$NX" "$mode"
  run "HAProxy, USR2 reload" haproxy "$HA" "$mode"
done
kill -TERM "$SPID" 2>/dev/null || true
