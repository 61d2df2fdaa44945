#!/usr/bin/env bash
# A local Lattice cluster of real processes, one loopback address per node
# (node N listens on 127.0.0.(10+N), Raft on :7001, KV on :7002, and dials its
# peers from that address, so scripts/partition.sh can cut nodes apart).
#
#   scripts/cluster.sh start [N] [--tls]
#                                    start N nodes (default 3); --tls: a development
#                                    CA in $LATTICE_DIR/certs, mutual TLS between
#                                    peers, TLS and client certificates on the KV port
#   scripts/cluster.sh join ID       start node ID (above N) with --join: it asks
#                                    the cluster to add it as a learner
#   scripts/cluster.sh stop          SIGTERM every node (SIGKILL after 5 s)
#   scripts/cluster.sh status        which nodes run, and who leads
#   scripts/cluster.sh kill ID       kill -9 one node
#   scripts/cluster.sh restart ID    (kill -9 and) start one node again
#   scripts/cluster.sh pause ID      SIGSTOP one node (it keeps its beliefs)
#   scripts/cluster.sh resume ID     SIGCONT a paused node
#   scripts/cluster.sh endpoints     the KV endpoints, comma separated
#   scripts/cluster.sh env           for a --tls cluster, the client's TLS settings:
#                                    eval "$(scripts/cluster.sh env)"; lattice kv ...
#
# Environment: LATTICE_DIR (data, logs, pids; default ./live-cluster),
# LATTICE_BIN (default: target/release/lattice, else target/debug/lattice),
# LATTICE_NODE_ARGS (extra `lattice node` flags, e.g. --inflight-appends 2),
# LATTICE_NO_METRICS=1 (no --metrics-addr: binaries from before it, A/B runs).
set -euo pipefail

dir=${LATTICE_DIR:-./live-cluster}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${LATTICE_BIN:-}
if [ -z "$bin" ]; then
    for candidate in "$root/target/release/lattice" "$root/target/debug/lattice"; do
        if [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi

die() { echo "cluster.sh: $*" >&2; exit 1; }
ip_of() { echo "127.0.0.$((10 + $1))"; }
nodes() { cat "$dir/nodes" 2>/dev/null || die "no cluster in $dir (run: $0 start)"; }
# Every node started here: the founders, then those that joined.
all_ids() { seq 1 "$(nodes)"; cat "$dir/joined" 2>/dev/null || true; }
pid_of() { cat "$dir/node-$1.pid" 2>/dev/null || true; }
is_running() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
check_id() {
    [[ "$1" =~ ^[1-9]$ ]] || die "node ids are 1 to 9, not '$1'"
    all_ids | grep -qx "$1" || die "node $1 was not started in this cluster"
}

certs() { echo "$dir/certs"; }
is_tls() { [ -f "$dir/tls" ]; }

# The client settings of a --tls cluster (every `lattice` command that dials
# reads them from the environment).
tls_env() {
    echo "export LATTICE_CACERT=$(certs)/ca.pem LATTICE_CERT=$(certs)/client-admin.pem LATTICE_KEY=$(certs)/client-admin-key.pem"
}

# Node $1's certificate, made on first use (a node that joins later gets its own).
node_tls_flags() {
    local id=$1 c
    c=$(certs)
    if [ ! -f "$c/node-$id.pem" ]; then
        "$bin" cert node --dir "$c" --id "$id" --host "$(ip_of "$id")" > /dev/null
    fi
    echo "--cert $c/node-$id.pem --key $c/node-$id-key.pem --cacert $c/ca.pem --client-cert-auth" \
        "--peer-cert $c/node-$id.pem --peer-key $c/node-$id-key.pem --peer-cacert $c/ca.pem"
}

endpoints() {
    local i list=""
    for i in $(all_ids); do list="$list${list:+,}$(ip_of "$i"):7002"; done
    echo "$list"
}

start_node() {
    local id=$1 n peers="" i
    [ -x "$bin" ] || die "no lattice binary (cargo build --release --bin lattice, or set LATTICE_BIN)"
    n=$(nodes)
    if is_running "$id"; then echo "node $id already running (pid $(pid_of "$id"))"; return; fi
    if [ "$id" -gt "$n" ]; then
        # A node that joined: it knows the cluster through its endpoints only.
        peers="--join $(seq 1 "$n" | while read -r i; do printf '%s:7002,' "$(ip_of "$i")"; done | sed 's/,$//')"
    else
        for i in $(seq 1 "$n"); do
            [ "$i" = "$id" ] && continue
            peers="$peers --peer $i=$(ip_of "$i"):7001,$(ip_of "$i"):7002"
        done
    fi
    local metrics="--metrics-addr $(ip_of "$id"):7003"
    if [ "${LATTICE_NO_METRICS:-0}" = 1 ]; then metrics=""; fi
    local tls=""
    if is_tls; then tls=$(node_tls_flags "$id"); fi
    # shellcheck disable=SC2086
    nohup "$bin" node --id "$id" --raft-addr "$(ip_of "$id"):7001" --kv-addr "$(ip_of "$id"):7002" \
        $metrics $peers $tls --data-dir "$dir/node-$id" --source-ip raft ${LATTICE_NODE_ARGS:-} >> "$dir/node-$id.log" 2>&1 &
    echo $! > "$dir/node-$id.pid"
    echo "node $id started (pid $!, raft $(ip_of "$id"):7001, kv $(ip_of "$id"):7002, metrics http://$(ip_of "$id"):7003/metrics, log $dir/node-$id.log)"
}

kill_node() {
    local pid
    pid=$(pid_of "$1")
    if is_running "$1"; then
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        echo "node $1 killed (kill -9 $pid)"
    else
        echo "node $1 is not running"
    fi
}

command=${1:-}
case "$command" in
    start)
        shift
        n=3; tls=0
        for arg in "$@"; do
            case "$arg" in
                --tls) tls=1 ;;
                *) n=$arg ;;
            esac
        done
        [[ "$n" =~ ^[1-9]$ ]] || die "a cluster has 1 to 9 nodes, not '$n'"
        mkdir -p "$dir"
        echo "$n" > "$dir/nodes"
        rm -f "$dir/joined" "$dir/tls"
        if [ "$tls" = 1 ]; then
            [ -x "$bin" ] || die "no lattice binary (cargo build --release --bin lattice, or set LATTICE_BIN)"
            if [ ! -f "$(certs)/ca.pem" ]; then
                mkdir -p "$(certs)"
                "$bin" cert ca --dir "$(certs)" > /dev/null
                "$bin" cert client --dir "$(certs)" --name admin > /dev/null
            fi
            touch "$dir/tls"
        fi
        for i in $(seq 1 "$n"); do start_node "$i"; done
        echo "KV endpoints: $(endpoints)"
        if is_tls; then echo "TLS: certificates in $(certs); for clients: eval \"\$($0 env)\""; fi
        ;;
    join)
        [ -n "${2:-}" ] || die "usage: $0 join ID"
        [[ "$2" =~ ^[1-9]$ ]] || die "node ids are 1 to 9, not '$2'"
        [ "$2" -gt "$(nodes)" ] || die "node $2 is a founder of this cluster: give a new id"
        all_ids | grep -qx "$2" || echo "$2" >> "$dir/joined"
        start_node "$2"
        ;;
    stop)
        for i in $(all_ids); do
            if is_running "$i"; then kill -TERM "$(pid_of "$i")"; fi
        done
        for i in $(all_ids); do
            for _ in $(seq 1 50); do is_running "$i" || break; sleep 0.1; done
            if is_running "$i"; then kill -9 "$(pid_of "$i")"; echo "node $i did not stop: killed"; fi
        done
        echo "cluster stopped"
        ;;
    status)
        for i in $(all_ids); do
            if is_running "$i"; then state="running (pid $(pid_of "$i"))"; else state="stopped"; fi
            echo "node $i  raft $(ip_of "$i"):7001  kv $(ip_of "$i"):7002  $state"
        done
        if is_tls; then eval "$(tls_env)"; fi
        leader=$("$bin" kv --endpoints "$(endpoints)" --timeout-secs 3 leader 2>/dev/null || true)
        echo "leader: ${leader:-none reachable}"
        ;;
    kill)
        [ -n "${2:-}" ] || die "usage: $0 kill ID"
        check_id "$2"
        kill_node "$2"
        ;;
    restart)
        [ -n "${2:-}" ] || die "usage: $0 restart ID"
        check_id "$2"
        kill_node "$2"
        start_node "$2"
        ;;
    pause|resume)
        [ -n "${2:-}" ] || die "usage: $0 $command ID"
        check_id "$2"
        is_running "$2" || die "node $2 is not running"
        if [ "$command" = pause ]; then signal=STOP; else signal=CONT; fi
        kill -"$signal" "$(pid_of "$2")"
        echo "node $2 ${command}d (SIG$signal $(pid_of "$2"))"
        ;;
    endpoints)
        endpoints
        ;;
    env)
        if is_tls; then tls_env; fi
        ;;
    *)
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
        [ -z "$command" ] || [ "$command" = help ] || [ "$command" = -h ] || [ "$command" = --help ] || exit 2
        ;;
esac
