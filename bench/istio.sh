#!/usr/bin/env bash
# The Istio mode: Envoy's ext_authz gRPC calls (Authorization/Check over one
# HTTP/2 connection, as Envoy multiplexes them), and ext_proc streams (one per
# request: headers, buffered body, response headers), answered by
#   - floor: an always-allow tonic server (bench/authz_load.rs), the stack's
#     ceiling with no logic;
#   - sift, a route with no filter (route match, hygiene, the answer);
#   - sift, the spam filter in annotate mode on a 2 KB body of real SMS text
#     sent as raw_body (Envoy's with_request_body + pack_as_bytes);
#   - sift, the same filter in block mode.
# One sift worker and the floor pinned to core 0, the load on core 1; the
# rounds alternate. No Envoy binary is installable here, so the load
# generator stands in for Envoy.
#
#   bench/istio.sh [SIFT_BIN]     env: DURATION (10), ROUNDS (3), CONC (32),
#                                 LOAD (a prebuilt authz_load binary)
#
# Loopback only; stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
SIFT=${1:-target/release/sift}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
DATA=${DATA:-../shared/data}
[ -x "$SIFT" ] || { echo "no sift binary at $SIFT (cargo build --release)" >&2; exit 1; }
. bench/common.sh
LOAD=${LOAD:-$(bench_bin authz_load)}
[ -x "$LOAD" ] || { echo "cannot build bench/authz_load.rs" >&2; exit 1; }
scratch

sms_body "$DATA/spam/sms/SMSSpamCollection" > "$d/body.txt"

F=$(port); S=$(port); A=$(port)
cat > "$d/sift.yaml" <<YAML
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$A" }
listeners:
  - { name: authz, address: "127.0.0.1:$S", serve: envoy, protocol: h2, limits: { max_concurrent_streams: 1000 } }
filters:
  - { name: spam, kind: spam }
routes:
  - { name: annotate, match: { path: { exact: /annotate } }, filters: [ { filter: spam, mode: annotate } ] }
  - { name: block, match: { path: { exact: /block } }, filters: [ { filter: spam, mode: block } ] }
  - { name: plain }
YAML
taskset -c 0 "$LOAD" floor "127.0.0.1:$F" & pids+=($!); FPID=$!
taskset -c 0 "$SIFT" run --config "$d/sift.yaml" > "$d/sift.log" 2>&1 & pids+=($!); SPID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
run() { # $1 label, $2 pid, $3 port, $4 path, $5 body file or "", $6 load|proc
  local c0 c1 r mode=${6:-load}
  taskset -c 1 "$LOAD" "$mode" "127.0.0.1:$3" 1 "$CONC" "$4" $5 >/dev/null
  c0=$(cpu_ticks "$2")
  r=$(taskset -c 1 "$LOAD" "$mode" "127.0.0.1:$3" "$DURATION" "$CONC" "$4" $5)
  c1=$(cpu_ticks "$2")
  read -r rate p50 p99 err denied <<<"$r"
  local us
  us=$(python3 -c "print(f'{($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max(1, $rate * $DURATION):.1f}')")
  echo "| $1 | $rate | $p50 / $p99 | $us | $err | $denied | $(rss "$2") |"
}

echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) DURATION=$DURATION ROUNDS=$ROUNDS CONC=$CONC body=$(wc -c < "$d/body.txt") B"
echo "| server | checks (streams) /s | p50 / p99 µs | server CPU µs/check | errors | denied | RSS MB |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  run "floor (always allow)" "$FPID" "$F" /plain "$d/body.txt"
  run "sift, no filter" "$SPID" "$S" /plain "$d/body.txt"
  run "sift, spam annotate" "$SPID" "$S" /annotate "$d/body.txt"
  run "sift, spam block" "$SPID" "$S" /block "$d/body.txt"
  run "ext_proc: floor (continue all)" "$FPID" "$F" /plain "$d/body.txt" proc
  run "ext_proc: sift, spam annotate" "$SPID" "$S" /annotate "$d/body.txt" proc
  run "ext_proc: sift, spam block" "$SPID" "$S" /block "$d/body.txt" proc
done
