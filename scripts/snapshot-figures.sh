#!/usr/bin/env bash
# The figures of snapshots and compaction (README, "Snapshots and compaction"),
# measured on a real 3-node cluster of this machine (scripts/bench.sh: release
# build, fsync on, one loopback address per node).
#
#   scripts/snapshot-figures.sh            # everything below
#   scripts/snapshot-figures.sh long       # only the long run (5M puts)
#   scripts/snapshot-figures.sh ab         # only snapshots on against off
#   scripts/snapshot-figures.sh p999       # only p999 with a million keys
#
# long: puts of 256 B over 1,000 keys, 64 clients, for LONG_SECS (default
#   150: about 5 million at this machine's rate); then each node's peak RSS
#   (VmHWM) and data directory size; the restart time of a follower (kill -9,
#   start: the node's own "node started" figure); and a wiped follower's
#   catch-up (data directory deleted, started again: until its log says the
#   snapshot is installed and it has applied the leader's last index).
# ab: put throughput, 64 clients, AB_SECS (20) per run, snapshots on (the
#   defaults) and off, alternating, AB_RUNS (3) each; medians.
# p999: put latency with 1,000,000 keys loaded, snapshots on and off.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${LATTICE_BENCH_DIR:-$root/target/bench}
export LATTICE_DIR="$out/cluster" LATTICE_BIN="$root/target/release/lattice"
cluster="$root/scripts/cluster.sh"
what=${1:-all}
OFF="--snapshot-entries 0 --snapshot-bytes 0"

trap '"$cluster" stop >/dev/null 2>&1 || true' EXIT

# One put run: prints its ops/s and p999 (ms) line from `lattice bench`.
put_run() { # secs keys [node args]
    LATTICE_NODE_ARGS="${3:-}" LATTICE_BENCH_KEEP=${KEEP:-0} "$root/scripts/bench.sh" \
        --workloads put --clients 64 --duration-secs "$1" --keys "$2" | grep '^put '
}

ms_of() { # RFC 3339 timestamp at the start of a log line -> ms since epoch
    date -d "$(echo "$1" | cut -c1-26 | tr T ' ')" +%s%3N
}

wait_for_line() { # file pattern timeout_s -> the first matching line
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}

long_run() {
    local secs=${LONG_SECS:-150}
    echo "== long run: puts of 256 B over 1,000 keys, 64 clients, $secs s"
    KEEP=1 put_run "$secs" 1000
    echo "== per node: peak RSS (VmHWM), data directory, snapshot and log files"
    for id in 1 2 3; do
        pid=$(cat "$LATTICE_DIR/node-$id.pid")
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
        bytes=$(du -sb "$LATTICE_DIR/node-$id" | cut -f1)
        segments=$(ls "$LATTICE_DIR/node-$id/log" | wc -l)
        echo "node $id: peak RSS $((hwm / 1024)) MiB, data dir $((bytes / 1000000)) MB ($bytes B), $segments segment(s), snapshots: $(ls "$LATTICE_DIR/node-$id/snap")"
    done
    leader=$("$LATTICE_BIN" kv --endpoints "$("$cluster" endpoints)" leader 2>/dev/null | grep -o '127.0.0.[0-9]*' | head -1 || true)
    follower=2
    [ "$leader" = "127.0.0.12" ] && follower=3
    echo "== restart of follower $follower (kill -9, start)"
    : > "$LATTICE_DIR/node-$follower.log"
    "$cluster" restart "$follower" >/dev/null
    line=$(wait_for_line "$LATTICE_DIR/node-$follower.log" "node started" 30)
    echo "$line" | grep -o 'elapsed_ms=[0-9]*' | sed 's/^/restart: /'
    grep -m1 "restored from storage" "$LATTICE_DIR/node-$follower.log" | grep -o 'snapshot=[0-9]* entries=[0-9]*' | sed 's/^/restart replayed: /'
    echo "== wiped follower $follower: data directory deleted, started again"
    "$cluster" kill "$follower" >/dev/null
    rm -rf "$LATTICE_DIR/node-$follower"
    : > "$LATTICE_DIR/node-$follower.log"
    "$cluster" restart "$follower" >/dev/null
    first=$(wait_for_line "$LATTICE_DIR/node-$follower.log" "Starting Raft loop" 30)
    installed=$(wait_for_line "$LATTICE_DIR/node-$follower.log" "snapshot installed" 60)
    echo "caught up by snapshot in $(( $(ms_of "$installed") - $(ms_of "$first") )) ms: $(echo "$installed" | grep -o 'index=[0-9]*')"
    "$cluster" stop >/dev/null
}

ab_runs() {
    local secs=${AB_SECS:-20} runs=${AB_RUNS:-3}
    echo "== snapshots on against off: puts, 64 clients, $secs s per run, $runs runs each"
    for run in $(seq 1 "$runs"); do
        echo "on  $run: $(put_run "$secs" 1000)"
        echo "off $run: $(put_run "$secs" 1000 "$OFF")"
    done
}

p999_runs() {
    local secs=${P999_SECS:-30} log="$out/latency.csv"
    echo "== put latency with 1,000,000 keys, 64 clients, $secs s: snapshots off, then on"
    echo "off: $(put_run "$secs" 1000000 "$OFF")"
    echo "on : $(LATTICE_NODE_ARGS="" "$root/scripts/bench.sh" --workloads put --clients 64 \
        --duration-secs "$secs" --keys 1000000 --latency-log "$log" | grep '^put ')"
    # Split the "on" run's operations by whether any node was writing a
    # snapshot when they completed ("snapshot started" .. "snapshot saved").
    python3 - "$log" "$LATTICE_DIR"/node-*.log <<'PY'
import sys, datetime, re
def ms(line):
    stamp = line.split()[0].rstrip('Z')[:23]
    return datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
intervals = []
for path in sys.argv[2:]:
    begun = None
    for line in open(path, errors='replace'):
        if 'snapshot started' in line:
            begun = ms(line)
        elif 'snapshot saved' in line and begun is not None:
            intervals.append((begun, ms(line)))
            begun = None
intervals.sort()
during, outside = [], []
for row in open(sys.argv[1]):
    at, latency = row.split(',')
    at, latency = int(at), int(latency)
    (during if any(a <= at <= b for a, b in intervals) else outside).append(latency)
def p(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000 if xs else float('nan')
took = [b - a for a, b in intervals]
print(f"snapshots taken: {len(intervals)}, each {min(took, default=0):.0f}-{max(took, default=0):.0f} ms")
print(f"ops while a snapshot was written: {len(during)}, p50 {p(during, .5):.2f} ms, p99 {p(during, .99):.2f} ms, p999 {p(during, .999):.2f} ms")
print(f"ops otherwise:                    {len(outside)}, p50 {p(outside, .5):.2f} ms, p99 {p(outside, .99):.2f} ms, p999 {p(outside, .999):.2f} ms")
PY
}

case $what in
    long) long_run ;;
    ab) ab_runs ;;
    p999) p999_runs ;;
    all) long_run; ab_runs; p999_runs ;;
    *) echo "usage: $0 [long|ab|p999|all]" >&2; exit 2 ;;
esac
