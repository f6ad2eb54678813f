#!/usr/bin/env bash
# User-space instructions sift spends per plain-HTTP request, counted by
# valgrind's callgrind (load-independent, unlike wall-clock figures): sift
# (1 worker) in front of a one-worker nginx backend; one keep-alive curl
# client sends N requests, then N0; the difference of the two totals over
# N - N0 is the per-request cost (start-up and shutdown cancel out).
#
#   bench/http-callgrind.sh [SIFT_BIN...]
#   env: N (2200) N0 (200) BODY (a file to POST; default: GET)
#        CT (the POST's Content-Type; default text/plain)
#        ROUTE_EXTRA (YAML appended to the route, e.g. a filter list)
#        FILTERS (YAML of a top-level filters: list)
#        TOP (YAML lines added at the top level, e.g. a tracing: map;
#        @BE@ in it becomes the backend nginx port, which answers 200)
#        LOG (the log: map; default { format: json, level: warn,
#        access_log: false }, so that writing lines is not counted)
#        KEEP (a directory: the callgrind dumps are copied there, named
#        after the binary and the request count, for callgrind_annotate)
#
# Several binaries are measured in turn on the same workload, for a
# before/after comparison. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
N=${N:-2200}
N0=${N0:-200}
BODY=${BODY:-}
[ $# -gt 0 ] || set -- target/release/sift
. bench/common.sh
need_tools nginx curl valgrind
scratch
BE=$(port)
backend_conf "$BE" "client_max_body_size 64m;"
nginx -c "$d/backend.conf" -p "$d" & pids+=($!)

count() { # sift binary, requests -> instructions
  local bin=$1 n=$2 p a out
  p=$(port); a=$(port)
  {
    echo "workers: 1"
    echo "log: ${LOG:-{ format: json, level: warn, access_log: false \}}"
    echo "admin: { address: \"127.0.0.1:$a\" }"
    echo "listeners: [ { name: main, address: \"127.0.0.1:$p\" } ]"
    [ -z "${FILTERS:-}" ] || echo "filters: $FILTERS"
    [ -z "${TOP:-}" ] || echo "${TOP//@BE@/$BE}"
    echo "routes: [ { name: all, cluster: backend ${ROUTE_EXTRA:-} } ]"
    echo "clusters: [ { name: backend, endpoints: [\"127.0.0.1:$BE\"] } ]"
  } > "$d/sift.yaml"
  out="$d/cg.$n"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$d/sift.yaml" \
    > "$d/sift.log" 2>&1 &
  local vp=$!
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$a/readyz" && break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$a/readyz" || {
    echo "sift did not start:" >&2; cat "$d/sift.log" >&2; return 1; }
  if [ -n "$BODY" ]; then
    curl -sf -o /dev/null -H "content-type: ${CT:-text/plain}" --data-binary @"$BODY" "http://127.0.0.1:$p/r[1-$n]"
  else
    curl -sf -o /dev/null "http://127.0.0.1:$p/r[1-$n]"
  fi
  kill -TERM "$vp"; wait "$vp" || true
  [ -z "${KEEP:-}" ] || cp "$out" "$KEEP/$(basename "$bin").$n.cg"
  awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}

echo "http-callgrind: $(date -u) | N=$N N0=$N0 | body: ${BODY:-none (GET)} | route extra: ${ROUTE_EXTRA:-none}"
for bin in "$@"; do
  hi=$(count "$bin" "$N")
  lo=$(count "$bin" "$N0")
  [ -n "$hi" ] && [ -n "$lo" ] || exit 1
  echo "$bin: $(( (hi - lo) / (N - N0) )) instructions per request ($hi for $N, $lo for $N0)"
done
