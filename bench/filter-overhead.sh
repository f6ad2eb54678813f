#!/usr/bin/env bash
# Filter overhead through the proxy, one invocation, alternating runs:
#
#  1. spam: POST 2 KB bodies of real SMS text to a route with no filter and to
#     the same route with the spam filter in annotate mode; throughput ratio
#     (median of ROUNDS alternating rounds) and p50/p99; also sift's CPU time
#     per request in each run (from /proc), whose no-filter/annotate ratio is
#     the throughput share when sift's core is the limit, and which moves far
#     less than req/s with whatever else the machine runs.
#  2. cilog (if the cilog filter is built in): POST a real ~1 MB CI log to a
#     route with no filter and with the cilog filter in annotate mode, at low
#     concurrency; the p99 latency it adds.
#
#   bench/filter-overhead.sh [SIFT_BIN]
#   env: DURATION (10s) CONNS (50) ROUNDS (3) LOG_CONNS (4)
#        ACCESS_LOG (false; true: sift writes its JSON access log, as it does
#        by default, to a file, as a container's stdout would go)
#        SPAM_ONLY (unset; 1: skip the cilog part)
#        MODEL_B (unset; a spam model file: each round also runs the
#        annotate route with that model, e.g. one with a smaller table)
#        MTLS (unset; 1: sift's listener terminates TLS and requires a client
#        certificate, as the Kubernetes sidecar does; the spam part is driven
#        by bench/tls_load.rs in keep-alive mode presenting the client
#        certificate (CONNS connections, DURATION whole seconds) instead of
#        wrk; the cilog part is skipped; the table adds how busy sift's core
#        was: below 100 % the load side set the rate, read the CPU share)
#        LOAD (with MTLS=1: a prebuilt tls_load binary; default: build it)
#
# Placement: sift (1 worker + 1 filter thread) on core 0; wrk (or tls_load)
# and the backend nginx on core 1. Everything runs on 127.0.0.1 and stops by
# itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
LOG_CONNS=${LOG_CONNS:-4}
ACCESS_LOG=${ACCESS_LOG:-false}
DATA=${SIFT_SHARED_DATA:-../shared/data}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
if [ -n "${MTLS:-}" ]; then
  need_tools nginx curl openssl
  SECS=${DURATION%s}
  [[ $SECS =~ ^[0-9]+$ ]] || { echo "MTLS=1 needs DURATION in whole seconds (e.g. 10s), not $DURATION" >&2; exit 1; }
  LOAD=${LOAD:-$(bench_bin tls_load)}
  [ -x "$LOAD" ] || { echo "cannot build bench/tls_load.rs" >&2; exit 1; }
  SPAM_ONLY=1
  bench_setup # scratch + CA, server and client certificates (ECDSA P-256)
  # As in sift_conf (bench/common.sh): no resumption; the load is keep-alive,
  # so only the connections' first handshakes are full ones anyway.
  TLS="tls: { certificates: [ { cert: \"$d/server.pem\", key: \"$d/server.key\" } ], session_resumption: { tickets: false, cache_size: 0 }, client_auth: { mode: require, ca: \"$d/ca.pem\" } }"
else
  need_tools nginx wrk curl
  scratch
fi
BE=$(port); P=$(port); A=$(port)
backend_conf "$BE" "client_max_body_size 64m;"
taskset -c 1 nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

# 2 KB of real SMS text: spam and ham lines alternating, cut at 2048 bytes.
sms_body "$DATA/spam/sms/SMSSpamCollection" > "$d/body.txt"
# A real CI log close to 1 MB (the largest below 1.2 MB in the set).
LOG=$(find "$DATA/cilogs/logs" -name '*.log' -size -1200k -size +800k 2>/dev/null | sort | head -1 || true)

lua() { # $1 body file, $2 path
cat <<LUA
local f = io.open("$1", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "text/plain"
request = function() return wrk.format(nil, "$2") end
LUA
}
lua "$d/body.txt" /off > "$d/off.lua"
lua "$d/body.txt" /spam > "$d/spam.lua"
lua "$d/body.txt" /spamb > "$d/spamb.lua"
[ -n "$LOG" ] && { lua "$LOG" /logoff > "$d/logoff.lua"; lua "$LOG" /cilog > "$d/cilog.lua"; }

CILOG=""
if [ -z "${SPAM_ONLY:-}" ] && "$SIFT" classify --help 2>&1 | grep -q cilog && [ -n "$LOG" ]; then CILOG=1; fi
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: $ACCESS_LOG }
admin: { address: "127.0.0.1:$A" }
filter_pool: { threads: 1 }
listeners:
  - name: bench
    address: "127.0.0.1:$P"
$( [ -n "${MTLS:-}" ] && echo "    $TLS" )
filters:
  - { name: spam, kind: spam }
$( [ -n "${MODEL_B:-}" ] && echo "  - { name: spamb, kind: spam, model: \"$MODEL_B\" }" )
$( [ -n "$CILOG" ] && echo "  - { name: cilog, kind: cilog }" )
routes:
  - { name: off, match: { path: { exact: /off } }, cluster: backend }
  - { name: spam, match: { path: { exact: /spam } }, cluster: backend, filters: [ { filter: spam, mode: annotate } ] }
$( [ -n "${MODEL_B:-}" ] && echo "  - { name: spamb, match: { path: { exact: /spamb } }, cluster: backend, filters: [ { filter: spamb, mode: annotate } ] }" )
  - { name: logoff, match: { path: { exact: /logoff } }, cluster: backend, max_request_body: 64MiB }
$( [ -n "$CILOG" ] && echo "  - { name: cilog, match: { path: { exact: /cilog } }, cluster: backend, max_request_body: 64MiB, filters: [ { filter: cilog, mode: annotate } ] }" )
clusters:
  - { name: backend, endpoints: ["127.0.0.1:$BE"] }
YAML
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & SP=$!; pids+=($SP)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$A/readyz" >/dev/null || { cat "$d/sift.log" >&2; exit 1; }

LAST_RPS=0
if [ -n "${MTLS:-}" ]; then
# Refuses a client without a certificate (else the mode is not mTLS): the
# same POST to the no-filter route, which succeeds with the certificate.
if taskset -c 1 env TLS_LOAD_BODY="$d/body.txt" TLS_LOAD_PATH=/off "$LOAD" keepalive "127.0.0.1:$P" 1 1 "$d/ca.pem" |
  awk '{exit !($2 == 0 && $5 > 0)}'; then :; else
  echo "sift's listener accepted a client without a certificate" >&2; exit 1
fi
run() { # $1 label, $2 path, $3 conns: tls_load keep-alive with the client certificate
  local load=(taskset -c 1 env TLS_LOAD_BODY="$d/body.txt" TLS_LOAD_PATH="$2"
    "$LOAD" keepalive "127.0.0.1:$P")
  local cert=("$d/ca.pem" "$d/client.pem" "$d/client.key")
  "${load[@]}" 2 "$3" "${cert[@]}" >/dev/null
  local c0 c1 u0 u1 t0 t1 out; c0=$(cpu_ticks); u0=$(user_ticks); t0=$(date +%s.%N)
  out=$("${load[@]}" "$SECS" "$3" "${cert[@]}")
  c1=$(cpu_ticks); u1=$(user_ticks); t1=$(date +%s.%N)
  local rps p50 p99 errs reqs
  read -r _ rps p50 p99 errs <<< "$out"
  # tls_load prints the rate over its measured SECS; requests = rate x SECS.
  reqs=$(python3 -c "print($rps * $SECS)")
  LAST_CPU=$(python3 -c "print(round(($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  local usr; usr=$(python3 -c "print(round(($u1 - $u0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  # How busy sift's core was over the whole tls_load run (100 %: sift is the
  # limit, and the req/s share is its CPU share).
  local busy; busy=$(python3 -c "print(round(($c1 - $c0) / $(getconf CLK_TCK) / ($t1 - $t0) * 100))")
  echo "| $1 | $rps | ${p50}ms | ${p99}ms | $errs | $LAST_CPU | $usr | $busy % |"
  LAST_RPS=$rps; LAST_P99=${p99}ms
}
else
run() { # $1 label, $2 lua, $3 conns
  taskset -c 1 wrk -t1 -c"$3" -d2s -s "$2" "http://127.0.0.1:$P/" >/dev/null
  local c0 c1 u0 u1 out; c0=$(cpu_ticks); u0=$(user_ticks)
  out=$(taskset -c 1 wrk -t1 -c"$3" -d"$DURATION" --latency -s "$2" "http://127.0.0.1:$P/")
  c1=$(cpu_ticks); u1=$(user_ticks)
  local rps p50 p99 non2xx reqs
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  # sift's CPU time (user + system, all its threads) per request: unlike
  # req/s, it does not move with what else the machine is doing.
  LAST_CPU=$(python3 -c "print(round(($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  # Of which in user space (sift's own code; the rest is the kernel's
  # socket work, which a filter does not add to).
  local usr; usr=$(python3 -c "print(round(($u1 - $u0) / $(getconf CLK_TCK) * 1e6 / $reqs, 1))")
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}'); non2xx=${non2xx:-0}
  echo "| $1 | $rps | $p50 | $p99 | $non2xx | $LAST_CPU | $usr |"
  LAST_RPS=$rps; LAST_P99=$p99
}
fi
cpu_ticks() { # sift's utime + stime, in clock ticks
  awk '{print $14 + $15}' "/proc/$SP/stat"
}
user_ticks() { # sift's utime alone
  awk '{print $14}' "/proc/$SP/stat"
}
ms() { # wrk latency (e.g. 1.23ms, 850.00us, 1.2s) -> ms
  python3 -c "import sys,re;v=sys.argv[1];m=re.match(r'([0-9.]+)(us|ms|s)',v);n=float(m[1]);print({'us':n/1000,'ms':n,'s':n*1000}[m[2]])" "$1"
}
if [ -n "${MTLS:-}" ]; then
echo "filter overhead, mTLS: $(date -u) | nproc $(nproc) | sift: 1 worker + 1 filter thread on core 0, TLS listener with a required client certificate (ECDSA P-256); tls_load + backend nginx on core 1 | access log: $ACCESS_LOG"
echo
echo "spam filter, annotate mode, 2 KB real SMS text bodies, bench/tls_load.rs keepalive, $CONNS connections, ${SECS}s, client certificate:"
echo
echo "| run | req/s | p50 | p99 | errors (non-2xx or failed) | sift CPU µs/req | of which user | sift core busy |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
else
echo "filter overhead: $(date -u) | nproc $(nproc) | sift: 1 worker + 1 filter thread on core 0; wrk -t1 + backend nginx on core 1 | access log: $ACCESS_LOG"
echo
echo "spam filter, annotate mode, 2 KB real SMS text bodies, wrk -c$CONNS -d$DURATION:"
echo
echo "| run | req/s | p50 | p99 | non-2xx | sift CPU µs/req | of which user |"
echo "|---|---:|---:|---:|---:|---:|---:|"
fi
# The spam part's requests: wrk scripts, or the paths tls_load posts to.
if [ -n "${MTLS:-}" ]; then OFF=/off SPAM=/spam SPAMB=/spamb; else OFF=$d/off.lua SPAM=$d/spam.lua SPAMB=$d/spamb.lua; fi
ratios=()
cpus=()
ratios_b=()
cpus_b=()
for r in $(seq "$ROUNDS"); do
  run "round $r: no filter" "$OFF" "$CONNS"; off=$LAST_RPS; coff=$LAST_CPU
  run "round $r: spam annotate" "$SPAM" "$CONNS"; on=$LAST_RPS; con=$LAST_CPU
  ratios+=("$(python3 -c "print(round($on / $off * 100, 1))")")
  cpus+=("$(python3 -c "print(round($coff / $con * 100, 1))")")
  if [ -n "${MODEL_B:-}" ]; then
    run "round $r: spam annotate, MODEL_B" "$SPAMB" "$CONNS"
    ratios_b+=("$(python3 -c "print(round($LAST_RPS / $off * 100, 1))")")
    cpus_b+=("$(python3 -c "print(round($coff / $LAST_CPU * 100, 1))")")
  fi
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo
echo "annotate / no-filter throughput per round: ${ratios[*]} % | median: $(median "${ratios[@]}") %"
echo "no-filter / annotate sift CPU per request (the throughput share when sift's core is the limit): ${cpus[*]} % | median: $(median "${cpus[@]}") %"
if [ -n "${MODEL_B:-}" ]; then
  echo "MODEL_B ($MODEL_B): annotate / no-filter throughput ${ratios_b[*]} % | median $(median "${ratios_b[@]}") %; CPU share ${cpus_b[*]} % | median $(median "${cpus_b[@]}") %"
fi
verdicts=$(curl -fs "http://127.0.0.1:$A/metrics" | awk '/^sift_filter_verdicts_total\{filter="spam"/{s+=$2} END{print s+0}')
echo "spam verdicts counted: $verdicts"
if [ -n "$CILOG" ]; then
  echo
  echo "cilog filter, annotate mode, $(basename "$LOG") ($(stat -c %s "$LOG") bytes), wrk -c$LOG_CONNS -d$DURATION:"
  echo
  echo "| run | req/s | p50 | p99 | non-2xx | sift CPU µs/req | of which user |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  adds=()
  for r in $(seq "$ROUNDS"); do
    run "round $r: no filter" "$d/logoff.lua" "$LOG_CONNS"; a=$(ms "$LAST_P99")
    run "round $r: cilog annotate" "$d/cilog.lua" "$LOG_CONNS"; b=$(ms "$LAST_P99")
    adds+=("$(python3 -c "print(round($b - $a, 2))")")
  done
  echo
  echo "p99 added by cilog per round (ms): ${adds[*]} | median: $(printf '%s\n' "${adds[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') ms"
fi
