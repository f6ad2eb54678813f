#!/usr/bin/env bash
# The rate limit service: Envoy's RateLimitService/ShouldRateLimit calls
# over one HTTP/2 connection (as Envoy multiplexes them), each with two
# descriptors (remote_address of KEYS client addresses in turn, and
# generic_key=api), answered by
#   - floor: an always-OK tonic server (bench/authz_load.rs), the stack's
#     ceiling with no logic;
#   - sift, store: local (buckets in the process);
#   - sift, store: redis (one GCRA script per descriptor on redis-server).
# The limits are high enough that every call is admitted: this is the cost
# of the admitted path. One sift worker, the floor and redis-server pinned
# to core 0, the load on core 1; the rounds alternate. envoyproxy/ratelimit
# (Go) cannot be built here (no Go toolchain), so it is not in the run.
#
#   bench/rls.sh [SIFT_BIN]      env: DURATION (10), ROUNDS (3), CONC (32),
#                                KEYS (10000), LOAD (a prebuilt authz_load)
#
# Loopback only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
KEYS=${KEYS:-10000}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
need_tools redis-server
LOAD=${LOAD:-$(bench_bin authz_load)}
[ -x "$LOAD" ] || { echo "cannot build bench/authz_load.rs" >&2; exit 1; }
scratch

F=$(port); L=$(port); LA=$(port); R=$(port); RA=$(port); RP=$(port)
conf() { # $1 port, $2 admin port, $3 store, $4 extra top-level lines
  cat <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$2" }
$4
listeners:
  - { name: authz, address: "127.0.0.1:$1", serve: envoy, protocol: h2, limits: { max_concurrent_streams: 1000 } }
rate_limit_service:
  store: $3
  domains:
    - domain: bench
      descriptors:
        - key: remote_address
          rate_limit: { unit: second, requests_per_unit: 1000000000 }
        - key: generic_key
          value: api
          rate_limit: { unit: second, requests_per_unit: 1000000000 }
YAML
}
conf "$L" "$LA" local "" > "$d/local.yaml"
conf "$R" "$RA" redis "redis: { address: \"127.0.0.1:$RP\", timeout: 1s }" > "$d/redis.yaml"

taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --dir "$d" >/dev/null 2>&1 & pids+=($!); RPID=$!
taskset -c 0 "$LOAD" floor "127.0.0.1:$F" & pids+=($!); FPID=$!
taskset -c 0 "$SIFT" run --config "$d/local.yaml" > "$d/local.log" 2>&1 & pids+=($!); LPID=$!
taskset -c 0 "$SIFT" run --config "$d/redis.yaml" > "$d/redis.log" 2>&1 & pids+=($!); SPID=$!
for a in "$LA" "$RA"; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$a/readyz" >/dev/null 2>&1 && break; sleep 0.1
  done
done

run() { # $1 label, $2 port, $3 server pid, $4 second pid (redis) or ""
  local c0 c1 r0 r1 r
  taskset -c 1 "$LOAD" rls "127.0.0.1:$2" 1 "$CONC" "$KEYS" >/dev/null
  c0=$(cpu_ticks_of "$3"); r0=$(cpu_ticks_of $4)
  r=$(taskset -c 1 "$LOAD" rls "127.0.0.1:$2" "$DURATION" "$CONC" "$KEYS")
  c1=$(cpu_ticks_of "$3"); r1=$(cpu_ticks_of $4)
  read -r rate p50 p99 err denied <<<"$r"
  local us rus
  us=$(python3 -c "print(f'{($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max(1, $rate * $DURATION):.1f}')")
  rus=$( [ -n "$4" ] && python3 -c "print(f'{($r1 - $r0) * 1e6 / $(getconf CLK_TCK) / max(1, $rate * $DURATION):.1f}')" || echo "-")
  echo "| $1 | $rate | $p50 / $p99 | $us | $rus | $err | $denied | $(rss_mb "$3") |"
}

echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) DURATION=$DURATION ROUNDS=$ROUNDS CONC=$CONC KEYS=$KEYS"
echo "| server | calls/s | p50 / p99 µs | server CPU µs/call | redis CPU µs/call | errors | over limit | RSS MB |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  run "floor (always OK)" "$F" "$FPID" ""
  run "sift, store: local" "$L" "$LPID" ""
  run "sift, store: redis" "$R" "$SPID" "$RPID"
done
