#!/usr/bin/env bash
# Rate-limit overhead: sift with a per-client-IP token bucket over 100k
# distinct keys (X-Forwarded-For from one trusted hop) vs the same sift with
# no limit, same load, one invocation. Runs alternate (off, on) ROUNDS times
# because run-to-run noise on a 2-core machine is larger than the effect;
# the ratio reported is the median of the per-round ratios.
# Prints req/s, p50/p99 and sift's RSS per run. With GLOBAL=1 each round
# also runs the same limit as a `global` one, counted in a redis-server
# (Debian's) on core 1 beside wrk and the backend: the cost of one Redis
# round trip per request.
#
#   bench/ratelimit.sh [SIFT_BIN]     env: DURATION (10s) CONNS (50) KEYS (100000) GLOBAL (0)
#
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
KEYS=${KEYS:-100000}
ROUNDS=${ROUNDS:-3}
GLOBAL=${GLOBAL:-0}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools nginx wrk curl
[ "$GLOBAL" = 1 ] && need_tools redis-server

scratch
BE=$(port); P=$(port); A=$(port); R=$(port)
backend_conf "$BE"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)
if [ "$GLOBAL" = 1 ]; then
  taskset -c 1 redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$R" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
cat > "$d/keys.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local k = n % $KEYS
  local ip = string.format("10.%d.%d.%d", math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256)
  return wrk.format("GET", "/", { ["X-Forwarded-For"] = ip })
end
LUA
config() { # $1 = "" or the rate_limits block
cat <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
redis: { address: "127.0.0.1:$R" }
listeners:
  - name: bench
    address: "127.0.0.1:$P"
    forwarded: { trusted_hops: 1 }
routes:
  - name: all
    cluster: backend
$1
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
}
run() { # $1 label, $2 config file
  taskset -c 0 "$SIFT" run --config "$2" > "$d/sift.log" 2>&1 & local sp=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$d/keys.lua" "http://127.0.0.1:$P/" >/dev/null
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$d/keys.lua" "http://127.0.0.1:$P/")
  local rss; rss=$(awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$sp/status")
  local rps p50 p99 non2xx buckets
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}'); non2xx=${non2xx:-0}
  buckets=$(curl -fs "http://127.0.0.1:$A/metrics" | awk '/^sift_ratelimit_decisions_total.*decision="allowed"/{s+=$2} END{print s+0}')
  kill "$sp"; wait "$sp" 2>/dev/null || true
  echo "| $1 | $rps | $p50 | $p99 | $non2xx | $buckets | $rss |"
  LAST_RPS=$rps
}
config "" > "$d/off.yaml"
config "    rate_limits:
      - { name: per-ip, requests_per_unit: 1000, unit: second, key: [client_ip], max_keys: 200000 }" > "$d/on.yaml"
config "    rate_limits:
      - { name: per-ip, requests_per_unit: 1000, unit: second, key: [client_ip], global: true }" > "$d/global.yaml"
echo "rate-limit overhead: $(date -u) | nproc $(nproc) | wrk -t1 -c$CONNS -d$DURATION, $KEYS client IPs via X-Forwarded-For (trusted_hops 1) | sift on core 0, wrk + backend nginx on core 1"
echo
echo "| run | req/s | p50 | p99 | non-2xx | allowed decisions | sift RSS MB after |"
echo "|---|---:|---:|---:|---:|---:|---:|"
ratios=(); gratios=()
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for r in $(seq "$ROUNDS"); do
  run "round $r: no limit" "$d/off.yaml"; off=$LAST_RPS
  run "round $r: per-IP limit, $KEYS keys" "$d/on.yaml"; on=$LAST_RPS
  ratios+=("$(python3 -c "print(round($on / $off * 100, 1))")")
  if [ "$GLOBAL" = 1 ]; then
    run "round $r: global per-IP limit in Redis, $KEYS keys" "$d/global.yaml"; g=$LAST_RPS
    gratios+=("$(python3 -c "print(round($g / $off * 100, 1))")")
  fi
done
echo
echo "limited / unlimited throughput per round: ${ratios[*]} % | median: $(median "${ratios[@]}") %"
if [ "$GLOBAL" = 1 ]; then
  echo "global (Redis) / unlimited throughput per round: ${gratios[*]} % | median: $(median "${gratios[@]}") % | redis keys at the end: $(redis-cli -p "$R" dbsize)"
fi
