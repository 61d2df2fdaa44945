#!/usr/bin/env bash
# A rolling restart under load, measured: a real 3-node cluster on loopback
# (scripts/cluster.sh), recording clients that follow the leader, and each
# node in turn stopped with SIGTERM (a leader hands leadership to the most
# up-to-date follower first, and waits for the commands it accepted to
# commit), started again, and given time to catch up; the leader goes last,
# as an operator would do it. Then the history is checked, and the figures
# printed: failed and unknown operations (must be 0), the longest time
# without a successful operation (must be under 1 s), how long each node took
# to stop, and the leader changes.
#
#   scripts/rolling-restart.sh          (no root needed)
#
# Environment: LATTICE_BIN and LATTICE_CHECKER (binaries; default the release
# builds, else the debug ones), LATTICE_ROLLING_DIR (output; default
# target/rolling-restart),
# LATTICE_ROLLING_CLIENTS (default 8), LATTICE_ROLLING_SETTLE (seconds between
# restarts, default 3).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "rolling-restart: $*" >&2; exit 1; }

output=${LATTICE_ROLLING_DIR:-$root/target/rolling-restart}
clients=${LATTICE_ROLLING_CLIENTS:-8}
settle=${LATTICE_ROLLING_SETTLE:-3}
# shellcheck source=scripts/live-lib.sh
. "$root/scripts/live-lib.sh"
live_setup "$output"
trap '"$cluster" stop >/dev/null 2>&1 || true' EXIT

"$cluster" start 3 > /dev/null
endpoints=$("$cluster" endpoints)
leader_id() { leader_and_term "$endpoints" | cut -d' ' -f1; }
for _ in $(seq 1 40); do [ -n "$(leader_id)" ] && break; sleep 0.25; done
[ -n "$(leader_id)" ] || die "no leader was elected"

duration=$((4 + 3 * (settle + 2) + 4))
"$lattice" workload --endpoints "$endpoints" --clients "$clients" --keys 20 \
    --duration-secs "$duration" --history "$out/history.jsonl" > "$out/workload.log" 2>&1 &
workload=$!
sleep 4

first=$(leader_id)
order=""
for i in 1 2 3; do [ "$i" = "$first" ] || order="$order $i"; done
order="$order $first"
: > "$out/restarts.tsv"
for node in $order; do
    pid=$(cat "$LATTICE_DIR/node-$node.pid")
    before=$(leader_id)
    start=$(date +%s%N)
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    stopped=$(date +%s%N)
    "$cluster" restart "$node" > /dev/null
    after=$(leader_id)
    printf '%s\t%s\t%s\t%s\n' "$node" "$(( (stopped - start) / 1000000 ))" "$before" "$after" >> "$out/restarts.tsv"
    echo "node $node: SIGTERM to exit $(( (stopped - start) / 1000000 )) ms; leader before $before, after ${after:-none}"
    sleep "$settle"
done
finish_workload "$workload"

# A compare-and-swap that did not swap is recorded as a definite "fail":
# the cluster answered it. Any other fail is an operation that failed.
failed=$(grep '"type":"fail"' "$out/history.jsonl" | grep -vc '"f":"cas"' || true)
unknown=$(grep -c '"type":"info"' "$out/history.jsonl" || true)
# The longest time between two successful completions, from the first
# restart to the end of the workload.
gap_ms=$(grep '"type":"ok"' "$out/history.jsonl" | grep -o '"time":[0-9]*' | cut -d: -f2 | sort -n \
    | awk 'NR > 1 { gap = $1 - last; if (gap > max) max = gap } { last = $1 } END { printf "%.0f", max / 1e6 }')
echo "rolling restart of 3 nodes under $clients clients: failed $failed, unknown $unknown, longest gap without a successful operation ${gap_ms} ms"
[ "$verdict" -eq 0 ] || die "the history is not linearizable (see $out/checker.txt)"
[ "$failed" -eq 0 ] && [ "$unknown" -eq 0 ] || die "operations failed or ended unknown during the rolling restart"
[ "$gap_ms" -lt 1000 ] || die "a gap of ${gap_ms} ms without a successful operation"
echo "rolling restart: no failed or unknown operation, no gap over 1 s, linearizable"
