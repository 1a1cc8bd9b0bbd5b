#!/usr/bin/env bash
# Runs a local N-broker Riffle cluster on 127.0.0.1 (default N=3).
#
#   scripts/cluster.sh start  [N] [-- extra riffle flags]
#   scripts/cluster.sh stop   [N]
#   scripts/cluster.sh status [N]
#
# Broker ids are 1..N.  Broker <ID> listens on Kafka 127.0.0.1:(19090+ID),
# RPC 127.0.0.1:(19190+ID), HTTP 127.0.0.1:(19290+ID) and keeps its data, log
# (broker.log) and pid file under ${RIFFLE_CLUSTER_DIR:-./cluster-data}/broker<ID>.
# The first min(N,3) brokers are the metadata quorum voters; the others join as
# non-voters.  The binary is $RIFFLE_BIN, else ${CARGO_TARGET_DIR:-target}/release/riffle
# (built with `cargo build --release --bin riffle` only if missing).  stop and
# status default to the N of the last start.  Waits are bounded by
# RIFFLE_CLUSTER_START_TIMEOUT / RIFFLE_CLUSTER_STOP_TIMEOUT (seconds, default 60 / 45).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="$(realpath -m "${RIFFLE_CLUSTER_DIR:-./cluster-data}")"
START_TIMEOUT="${RIFFLE_CLUSTER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${RIFFLE_CLUSTER_STOP_TIMEOUT:-45}"
HOST=127.0.0.1
KAFKA_BASE=19090
RPC_BASE=19190
HTTP_BASE=19290

usage() {
    echo "usage: $0 start [N] [-- extra riffle flags] | stop [N] | status [N]" >&2
    exit 2
}

kafka_addr() { echo "${HOST}:$((KAFKA_BASE + $1))"; }
rpc_addr() { echo "${HOST}:$((RPC_BASE + $1))"; }
http_addr() { echo "${HOST}:$((HTTP_BASE + $1))"; }
broker_dir() { echo "${CLUSTER_DIR}/broker$1"; }
pid_file() { echo "$(broker_dir "$1")/broker.pid"; }

# The pid of broker $1 if its pid file names a live riffle process, else nothing.
broker_pid() {
    local file pid
    file="$(pid_file "$1")"
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    # Guard against a stale pid file whose pid now belongs to another process.
    local cmdline
    cmdline="$( { tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null || true)"
    if [[ "$cmdline" == *"--data-dir $(broker_dir "$1")/data "* ]]; then
        echo "$pid"
    fi
}

readyz() {
    curl -fsS -m 2 -o /dev/null -w '%{http_code}' "http://$(http_addr "$1")/readyz" 2>/dev/null || true
}

bootstrap_servers() {
    local id out=""
    for ((id = 1; id <= $1; id++)); do
        out="${out:+${out},}$(kafka_addr "$id")"
    done
    echo "$out"
}

# N from the argument, else from the last start (raised to the highest id of a
# still-running broker, so nothing is left behind), else 3.
cluster_size() {
    local n=3 d id
    if [ -n "${1:-}" ]; then
        echo "$1"
        return
    fi
    if [ -f "${CLUSTER_DIR}/cluster.size" ]; then
        n="$(cat "${CLUSTER_DIR}/cluster.size")"
    fi
    for d in "${CLUSTER_DIR}"/broker*; do
        id="${d##*/broker}"
        if [[ "$id" =~ ^[0-9]+$ ]] && [ "$id" -gt "$n" ] && [ -n "$(broker_pid "$id")" ]; then
            n="$id"
        fi
    done
    echo "$n"
}

check_size() {
    if ! [[ "$1" =~ ^[1-9][0-9]?$ ]]; then
        echo "N must be 1..99, got '$1'" >&2
        exit 2
    fi
}

riffle_bin() {
    local bin
    if [ -n "${RIFFLE_BIN:-}" ]; then
        bin="$RIFFLE_BIN"
    else
        local target="${CARGO_TARGET_DIR:-target}"
        case "$target" in /*) ;; *) target="${ROOT}/${target}" ;; esac
        bin="${target}/release/riffle"
        if [ ! -x "$bin" ]; then
            echo "cluster: ${bin} missing; building it" >&2
            (cd "$ROOT" && bash scripts/install-build-deps.sh >&2 && cargo build --release --bin riffle >&2)
        fi
    fi
    if [ ! -x "$bin" ]; then
        echo "cluster: riffle binary not found or not executable at ${bin}" >&2
        exit 1
    fi
    echo "$bin"
}

log_tail() {
    echo "--- tail of $(broker_dir "$1")/broker.log ---" >&2
    tail -n 30 "$(broker_dir "$1")/broker.log" >&2 || true
}

start() {
    local n="$1"
    shift
    local bin voters="" id dir pid deadline failed=0 rf
    bin="$(riffle_bin)"
    # Topics created without a replication factor get min(N, 3) replicas here.
    rf=$((n < 3 ? n : 3))
    mkdir -p "$CLUSTER_DIR"
    echo "$n" >"${CLUSTER_DIR}/cluster.size"
    for ((id = 1; id <= n && id <= 3; id++)); do
        voters="${voters:+${voters},}${id}@$(rpc_addr "$id")"
    done
    for ((id = 1; id <= n; id++)); do
        dir="$(broker_dir "$id")"
        mkdir -p "${dir}/data"
        pid="$(broker_pid "$id")"
        if [ -n "$pid" ]; then
            echo "broker ${id}: already running (pid ${pid})"
            continue
        fi
        {
            echo
            echo "===== $(date -u +%FT%TZ) cluster.sh start"
        } >>"${dir}/broker.log"
        nohup "$bin" \
            --node-id "$id" \
            --data-dir "${dir}/data" \
            --listen "$(kafka_addr "$id")" \
            --advertised-listener "$(kafka_addr "$id")" \
            --http-listen "$(http_addr "$id")" \
            --rpc-listen "$(rpc_addr "$id")" \
            --advertised-rpc "$(rpc_addr "$id")" \
            --voters "$voters" \
            --default-replication-factor "$rf" \
            "$@" >>"${dir}/broker.log" 2>&1 </dev/null &
        echo "$!" >"$(pid_file "$id")"
        echo "broker ${id}: started (pid $!), kafka $(kafka_addr "$id"), rpc $(rpc_addr "$id"), http $(http_addr "$id")"
    done
    # Brokers are all launched before waiting: a voter may only become ready
    # once a quorum of voters is up.
    deadline=$((SECONDS + START_TIMEOUT))
    for ((id = 1; id <= n; id++)); do
        while :; do
            if [ -z "$(broker_pid "$id")" ]; then
                echo "broker ${id}: exited during startup" >&2
                log_tail "$id"
                failed=1
                break
            fi
            if [ "$(readyz "$id")" = "200" ]; then
                echo "broker ${id}: ready"
                break
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "broker ${id}: not ready after ${START_TIMEOUT}s" >&2
                log_tail "$id"
                failed=1
                break
            fi
            sleep 0.2
        done
    done
    echo "bootstrap servers: $(bootstrap_servers "$n")"
    if [ "$failed" -ne 0 ]; then
        echo "cluster: some brokers failed to start; logs are under ${CLUSTER_DIR}; \`$0 stop\` stops the rest" >&2
        exit 1
    fi
}

stop() {
    local n="$1" id pid deadline failed=0
    local -a pids=()
    for ((id = 1; id <= n; id++)); do
        pid="$(broker_pid "$id")"
        pids[id]="$pid"
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    for ((id = 1; id <= n; id++)); do
        pid="${pids[id]}"
        if [ -z "$pid" ]; then
            echo "broker ${id}: not running"
            rm -f "$(pid_file "$id")"
            continue
        fi
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "broker ${id}: still running ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            log_tail "$id"
            failed=1
        else
            echo "broker ${id}: stopped (pid ${pid})"
        fi
        rm -f "$(pid_file "$id")"
    done
    return "$failed"
}

status() {
    local n="$1" id pid state code running=0
    for ((id = 1; id <= n; id++)); do
        pid="$(broker_pid "$id")"
        if [ -n "$pid" ]; then
            running=$((running + 1))
            code="$(readyz "$id")"
            state="running (pid ${pid}), readyz ${code:-unreachable}"
        else
            state="stopped"
        fi
        echo "broker ${id}: ${state}; kafka $(kafka_addr "$id"), rpc $(rpc_addr "$id"), http $(http_addr "$id")"
    done
    echo "bootstrap servers: $(bootstrap_servers "$n")"
    echo "${running}/${n} brokers running"
}

[ "$#" -ge 1 ] || usage
cmd="$1"
shift
n_arg=""
if [ "$#" -ge 1 ] && [ "$1" != "--" ]; then
    n_arg="$1"
    shift
fi
case "$cmd" in
    start)
        n="${n_arg:-3}"
        check_size "$n"
        if [ "$#" -ge 1 ]; then
            [ "$1" = "--" ] || usage
            shift
        fi
        start "$n" "$@"
        ;;
    stop | status)
        [ "$#" -eq 0 ] || usage
        n="$(cluster_size "$n_arg")"
        check_size "$n"
        "$cmd" "$n"
        ;;
    *) usage ;;
esac
