#!/usr/bin/env bash
# proxy-compare.sh — compare sift, nginx and HAProxy as HTTP/1.1 reverse
# proxies in front of the same nginx backend, all on 127.0.0.1.
#
# Usage:  bench/proxy-compare.sh [SIFT_BIN]
#   SIFT_BIN   path to the sift binary (default: target/release/sift,
#              relative to the repository root)
#
# Environment knobs:
#   DURATION   measured wrk run per proxy        (default 10s)
#   CONNS      concurrent wrk connections         (default 50)
#   WARMUP     discarded wrk run before each one  (default 2s)
#   OUT        if set, also write the report (markdown) to this file
#   SKIP_SIFT  if 1, skip the sift row (useful before sift is built)
#
# Placement (fixed, needs >= 2 CPUs): the proxy under test runs on core 0,
# wrk and the backend nginx run on core 1.  Each proxy gets exactly one
# worker thread/process, access logs off, upstream keep-alive on.
#
# Missing tools are installed with apt-get (nginx haproxy wrk, plus curl if
# absent); nothing else is downloaded.  All benchmark traffic goes to
# 127.0.0.1 only.  Temp files live in a mktemp -d directory that is removed
# at exit; every server started here is killed at exit (also on Ctrl-C).
#
# Exit status: 0 if every row ran cleanly; 1 if a proxy failed to start,
# wrk failed or reported errors (the table is still printed, with the failed
# rows marked); 2 for usage/environment problems.

set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
WARMUP="${WARMUP:-2s}"
SKIP_SIFT="${SKIP_SIFT:-0}"
OUT="${OUT:-}"
PROXY_CPU=0
LOAD_CPU=1
READY_TIMEOUT=10   # seconds

log() { printf '[proxy-compare] %s\n' "$*" >&2; }
die() { printf '[proxy-compare] ERROR: %s\n' "$*" >&2; exit "${2:-2}"; }

# ---------------------------------------------------------------- arguments
if [[ $# -gt 1 ]]; then
    die "usage: $0 [SIFT_BIN]   (env: DURATION CONNS WARMUP OUT SKIP_SIFT)"
fi
# Resolve a user-supplied path against the caller's cwd before we cd away.
SIFT_ARG="${1:-}"
if [[ -n "$SIFT_ARG" && "$SIFT_ARG" != /* ]]; then
    SIFT_ARG="$PWD/$SIFT_ARG"
fi
if [[ -n "$OUT" && "$OUT" != /* ]]; then
    OUT="$PWD/$OUT"
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if repo_root="$(git -C "$script_dir" rev-parse --show-toplevel 2>/dev/null)"; then
    :
else
    repo_root="$(cd "$script_dir/.." && pwd)"
fi
cd "$repo_root"
SIFT_BIN="${SIFT_ARG:-$repo_root/target/release/sift}"

# Duration string (wrk syntax: N, Ns, Nm, Nh) -> seconds.
dur_secs() {
    local d="$1"
    [[ "$d" =~ ^([0-9]+)([smh]?)$ ]] || return 1
    local n="${BASH_REMATCH[1]}" u="${BASH_REMATCH[2]}"
    case "$u" in
        ""|s) echo "$n" ;;
        m) echo $((n * 60)) ;;
        h) echo $((n * 3600)) ;;
    esac
}
DURATION_S="$(dur_secs "$DURATION")" || die "DURATION must look like 10s / 1m (got '$DURATION')"
WARMUP_S="$(dur_secs "$WARMUP")" || die "WARMUP must look like 2s / 1m (got '$WARMUP')"
[[ "$DURATION_S" -ge 1 ]] || die "DURATION must be at least 1s"
[[ "$CONNS" =~ ^[0-9]+$ && "$CONNS" -ge 1 ]] || die "CONNS must be a positive integer (got '$CONNS')"

# ------------------------------------------------------------- dependencies
need_pkgs=()
command -v nginx   >/dev/null 2>&1 || need_pkgs+=(nginx)
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
command -v wrk     >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl    >/dev/null 2>&1 || need_pkgs+=(curl)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "missing ${need_pkgs[*]}; run as root (apt-get) or install them first"
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and apt-get is not available"
    log "installing missing packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2 || die "apt-get update failed"
    apt-get install -y nginx haproxy wrk "${need_pkgs[@]}" >&2 || die "apt-get install failed"
fi
for tool in nginx haproxy wrk curl taskset pgrep timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
done
taskset -c "$PROXY_CPU,$LOAD_CPU" true 2>/dev/null \
    || die "CPUs $PROXY_CPU and $LOAD_CPU must both be usable (nproc=$(nproc)); this benchmark needs 2 cores"

# ------------------------------------------------------ temp dir & cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/proxy-compare.XXXXXX")"
# nginx workers drop to 'nobody' when started as root: let them traverse.
chmod 0711 "$TMP"
PIDS=()

stop_pid() {
    # Stop one server (and its direct children, e.g. nginx workers).
    local pid="$1" kids i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kids="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # shellcheck disable=SC2086  # $kids is a whitespace-separated pid list
    kill -KILL "$pid" $kids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    set +e
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ helpers
# Free TCP ports on 127.0.0.1, chosen below the ephemeral range so that
# client sockets of wrk/proxies can never grab them between runs.
pick_ports() {
    local n="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$n" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
try:
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except Exception:
    lo = 32768
hi = lo - 1 if lo > 21000 else 65000
bad = {3000, 8080, 9901}
held, ports = [], []
for _ in range(10000):
    if len(ports) == n:
        break
    p = random.randint(20000, hi)
    if p in bad or p in ports:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(p)
if len(ports) != n:
    sys.exit("could not find free ports")
print(" ".join(map(str, ports)))
PY
    else
        # Fallback: fixed high ports, checked free by a failed connect.
        local p=24100 out=()
        while [[ ${#out[@]} -lt $n && $p -lt 32000 ]]; do
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                out+=("$p")
            fi
            p=$((p + 7))
        done
        [[ ${#out[@]} -eq $n ]] || return 1
        echo "${out[*]}"
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() {
    curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# wait_ready NAME PID KIND TARGET LOG: KIND=port (TCP listen) or url (HTTP 200)
wait_ready() {
    local name="$1" pid="$2" kind="$3" target="$4" logf="$5" deadline
    READY_ERR=""
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            local st=0 last
            wait "$pid" 2>/dev/null || st=$?
            last="$(tail -n 3 "$logf" 2>/dev/null | tr '\n' ' ')"
            READY_ERR="process exited during startup with status $st${last:+ (log: $last)}"
            log "$name exited during startup (status $st); last log lines:"
            tail -n 20 "$logf" >&2 2>/dev/null || true
            return 1
        fi
        if [[ "$kind" == port ]]; then
            port_open "$target" && return 0
        else
            [[ "$(http_code "$target")" == 200 ]] && return 0
        fi
        sleep 0.1
    done
    READY_ERR="not ready after ${READY_TIMEOUT}s ($kind $target)"
    log "$name not ready after ${READY_TIMEOUT}s ($kind $target); last log lines:"
    tail -n 20 "$logf" >&2 2>/dev/null || true
    return 1
}

# RSS in MB of PID plus its direct children (nginx/haproxy master+workers).
rss_mb() {
    local pid="$1" kb=0 p v
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
        v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
        kb=$((kb + ${v:-0}))
    done
    awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# Parse wrk --latency output -> "rps p50ms p99ms errors"
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /s$/)  { sub(/s$/,  "", v); return v * 1000 }
            if (v ~ /m$/)  { sub(/m$/,  "", v); return v * 60000 }
            if (v ~ /h$/)  { sub(/h$/,  "", v); return v * 3600000 }
            return -1
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err
        }'
}

FAILURES=()
ROWS=()

fail_row() {  # fail_row NAME REASON
    ROWS+=("| $1 | FAILED | - | - | - | - | - |")
    FAILURES+=("$1: $2")
    log "FAILED $1: $2"
}

# run_load NAME PORT PID(or empty for direct)
run_load() {
    local name="$1" port="$2" pid="$3" url idle="n/a" loaded="n/a" out parsed rc
    local rps p50 p99 errs body
    url="http://127.0.0.1:$port/"

    if [[ -n "$pid" ]]; then
        sleep 0.5
        idle="$(rss_mb "$pid")"
    fi
    # Functional check: one request through the proxy must return "ok".
    body="$(curl --noproxy '*' -s --max-time 2 "$url" 2>/dev/null || true)"
    if [[ "$body" != "ok" ]]; then
        fail_row "$name" "sanity request to $url did not return 'ok' (got '${body:0:60}')"
        return 0
    fi

    if [[ "$WARMUP_S" -gt 0 ]]; then
        log "$name: warmup $WARMUP"
        if ! timeout --foreground -k 5 $((WARMUP_S + 30)) taskset -c "$LOAD_CPU" \
                wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >"$TMP/wrk-$name-warmup.txt" 2>&1; then
            fail_row "$name" "wrk warmup failed: $(tail -n 3 "$TMP/wrk-$name-warmup.txt" | tr '\n' ' ')"
            return 0
        fi
    fi

    log "$name: measuring $DURATION, $CONNS connections"
    rc=0
    out="$(timeout --foreground -k 5 $((DURATION_S + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" 2>&1)" || rc=$?
    if [[ -n "$pid" ]]; then
        loaded="$(rss_mb "$pid")"
    fi
    printf '%s\n' "$out" >"$TMP/wrk-$name.txt"
    if [[ $rc -ne 0 ]]; then
        fail_row "$name" "wrk exited with status $rc: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
        return 0
    fi
    if ! parsed="$(printf '%s\n' "$out" | parse_wrk)"; then
        fail_row "$name" "could not parse wrk output: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)"
        return 0
    fi
    read -r rps p50 p99 errs <<<"$parsed"
    ROWS+=("| $name | $rps | $p50 | $p99 | $errs | $idle | $loaded |")
    if [[ "$errs" -ne 0 ]]; then
        FAILURES+=("$name: wrk reported $errs errors (socket errors + non-2xx/3xx)")
        log "$name: wrk reported $errs errors"
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
        FAILURES+=("$name: proxy process died during the run")
        log "$name: proxy process died during the run"
    fi
}

# start_bg NAME LOGFILE CPU CMD... ; sets STARTED_PID
start_bg() {
    local name="$1" logf="$2" cpu="$3"
    shift 3
    taskset -c "$cpu" "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    log "$name started (pid $STARTED_PID, core $cpu)"
}

nginx_common() {  # nginx_common DIR -> common top-level + http-level lines
    local d="$1"
    cat <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $((CONNS * 2 + 1024)); }
EOF
}

nginx_http_common() {
    local d="$1"
    cat <<EOF
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# ------------------------------------------------------------------- ports
read -r BACKEND_PORT SIFT_PORT SIFT_ADMIN_PORT NGINX_PORT HAPROXY_PORT \
    <<<"$(pick_ports 5)" || die "could not pick free ports"
[[ -n "$HAPROXY_PORT" ]] || die "could not pick free ports"

# ------------------------------------------------------------------ versions
NGINX_VER="$(nginx -v 2>&1 | sed -n 1p)"
HAPROXY_VER="$(haproxy -v 2>&1 | sed -n 1p)"
WRK_VER="$({ wrk -v 2>&1 || true; } | sed -n 1p)"
SIFT_VER="n/a"
if [[ "$SKIP_SIFT" == 1 ]]; then
    SIFT_VER="skipped (SKIP_SIFT=1)"
elif [[ -x "$SIFT_BIN" ]]; then
    SIFT_VER="$({ timeout --foreground -k 2 5 "$SIFT_BIN" --version 2>/dev/null || true; } | sed -n 1p)"
    SIFT_VER="${SIFT_VER:-unknown (--version unsupported)}"
else
    SIFT_VER="missing ($SIFT_BIN)"
fi

PLACEMENT="CPU placement: proxy under test on core $PROXY_CPU (taskset -c $PROXY_CPU); wrk + backend nginx on core $LOAD_CPU (taskset -c $LOAD_CPU); same for every proxy (direct row: wrk + backend only, both on core $LOAD_CPU)"
log "$PLACEMENT"
log "temp dir: $TMP; ports: backend=$BACKEND_PORT sift=$SIFT_PORT sift-admin=$SIFT_ADMIN_PORT nginx=$NGINX_PORT haproxy=$HAPROXY_PORT"

# ------------------------------------------------------------------ backend
BD="$TMP/backend"
mkdir -p "$BD"
{
    nginx_common "$BD"
    echo "http {"
    nginx_http_common "$BD"
    cat <<EOF
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF
} >"$BD/nginx.conf"
start_bg backend "$BD/stderr.log" "$LOAD_CPU" nginx -e "$BD/error.log" -p "$BD/" -c "$BD/nginx.conf"
BACKEND_PID=$STARTED_PID
wait_ready backend "$BACKEND_PID" port "$BACKEND_PORT" "$BD/stderr.log" \
    || die "backend nginx failed to start: $READY_ERR" 1
[[ "$(curl --noproxy '*' -s --max-time 2 "http://127.0.0.1:$BACKEND_PORT/")" == ok ]] \
    || die "backend nginx does not answer 'ok'" 1

# ------------------------------------------------------------------- direct
run_load direct "$BACKEND_PORT" ""

# --------------------------------------------------------------------- sift
if [[ "$SKIP_SIFT" == 1 ]]; then
    log "sift: skipped (SKIP_SIFT=1)"
elif [[ ! -x "$SIFT_BIN" ]]; then
    fail_row sift "sift binary not found or not executable: $SIFT_BIN (build it with 'cargo build --release' or pass its path; SKIP_SIFT=1 skips this row)"
else
    SD="$TMP/sift"
    mkdir -p "$SD"
    cat >"$SD/sift.yaml" <<EOF
workers: 1
log: { format: json, level: warn, access_log: false }
admin: { address: "127.0.0.1:$SIFT_ADMIN_PORT" }
listeners:
  - name: bench
    address: "127.0.0.1:$SIFT_PORT"
routes:
  - name: all
    match: { path: { prefix: "/" } }
    cluster: backend
clusters:
  - name: backend
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
EOF
    start_bg sift "$SD/sift.log" "$PROXY_CPU" "$SIFT_BIN" run --config "$SD/sift.yaml"
    SIFT_PID=$STARTED_PID
    if wait_ready sift "$SIFT_PID" url "http://127.0.0.1:$SIFT_ADMIN_PORT/readyz" "$SD/sift.log"; then
        run_load sift "$SIFT_PORT" "$SIFT_PID"
    else
        fail_row sift "sift failed to start: $READY_ERR (readiness: GET http://127.0.0.1:$SIFT_ADMIN_PORT/readyz == 200)"
    fi
    stop_pid "$SIFT_PID"
fi

# -------------------------------------------------------------- nginx proxy
ND="$TMP/nginx-proxy"
mkdir -p "$ND"
{
    nginx_common "$ND"
    echo "http {"
    nginx_http_common "$ND"
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$ND/nginx.conf"
start_bg nginx "$ND/stderr.log" "$PROXY_CPU" nginx -e "$ND/error.log" -p "$ND/" -c "$ND/nginx.conf"
NGINX_PID=$STARTED_PID
if wait_ready nginx "$NGINX_PID" port "$NGINX_PORT" "$ND/stderr.log"; then
    run_load nginx "$NGINX_PORT" "$NGINX_PID"
else
    fail_row nginx "nginx proxy failed to start: $READY_ERR"
fi
stop_pid "$NGINX_PID"

# ------------------------------------------------------------------ haproxy
HD="$TMP/haproxy"
mkdir -p "$HD"
cat >"$HD/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $((CONNS * 2 + 1024))

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend backend

backend backend
    server b1 127.0.0.1:$BACKEND_PORT
EOF
start_bg haproxy "$HD/haproxy.log" "$PROXY_CPU" haproxy -db -f "$HD/haproxy.cfg"
HAPROXY_PID=$STARTED_PID
if wait_ready haproxy "$HAPROXY_PID" port "$HAPROXY_PORT" "$HD/haproxy.log"; then
    run_load haproxy "$HAPROXY_PORT" "$HAPROXY_PID"
else
    fail_row haproxy "haproxy failed to start: $READY_ERR"
fi
stop_pid "$HAPROXY_PID"

# ------------------------------------------------------------------- report
report() {
    echo "## proxy-compare: HTTP/1.1 reverse proxies on loopback"
    echo
    echo "- date: $(date -u) | nproc: $(nproc) | DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP"
    echo "- versions: $NGINX_VER | $HAPROXY_VER | $WRK_VER | sift: $SIFT_VER"
    echo "- $PLACEMENT"
    echo "- load: wrk -t1 -c$CONNS -d$DURATION --latency (after a discarded ${WARMUP} warmup); backend: nginx, 1 worker, return 200 \"ok\\n\""
    echo "- errors = wrk socket errors + non-2xx/3xx responses; RSS = VmRSS summed over master + workers (idle: after start, before load; loaded: right after the run)"
    echo
    echo "| proxy | req/s | p50 ms | p99 ms | errors | idle RSS MB | loaded RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        echo
        echo "FAILURES:"
        printf -- '- %s\n' "${FAILURES[@]}"
    fi
}

REPORT="$(report)"
printf '%s\n' "$REPORT"
if [[ -n "$OUT" ]]; then
    printf '%s\n' "$REPORT" >"$OUT"
    log "report written to $OUT"
fi

if [[ ${#FAILURES[@]} -gt 0 ]]; then
    log "ERROR: ${#FAILURES[@]} problem(s):"
    printf '[proxy-compare]   %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
exit 0
