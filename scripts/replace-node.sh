#!/usr/bin/env bash
# Replacing a machine, live: a real 3-node cluster on loopback
# (scripts/cluster.sh), recording clients that follow the leader, and, while
# they run: node 4 starts with --join (it asks the cluster to add it as a
# learner), catches up and is promoted (`lattice member promote 4`); then
# the old machine, node 1, dies by kill -9 and is removed (`lattice member
# remove 1`). Then the history is checked. Exit 0 only if it is
# linearizable, the member list is {2,3,4} with 1 removed, the new
# configuration serves, and operations succeeded after the replacement.
#
#   scripts/replace-node.sh          (no root needed)
#
# Environment: LATTICE_BIN and LATTICE_CHECKER (binaries; default the release
# builds, else the debug ones), LATTICE_REPLACE_DIR (output; default
# target/replace-node).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "replace-node: $*" >&2; exit 1; }

output=${LATTICE_REPLACE_DIR:-$root/target/replace-node}
# shellcheck source=scripts/live-lib.sh
. "$root/scripts/live-lib.sh"
live_setup "$output"
trap '"$cluster" stop >/dev/null 2>&1 || true' EXIT

"$cluster" start 3 > /dev/null
founders=$("$cluster" endpoints)
all="$founders,127.0.0.14:7002"
for _ in $(seq 1 40); do [ -n "$(leader_and_term "$founders")" ] && break; sleep 0.25; done
[ -n "$(leader_and_term "$founders")" ] || die "no leader was elected"

duration=24
"$lattice" workload --endpoints "$all" --clients 8 --keys 20 \
    --duration-secs "$duration" --history "$out/history.jsonl" > "$out/workload.log" 2>&1 &
workload=$!
started=$(date +%s%N)
stamp() { echo "$(( ($(date +%s%N) - started) / 1000000 ))"; }
sleep 3

echo "[$(stamp) ms] node 4 joins"
"$cluster" join 4 > /dev/null
# It adds itself as a learner. A promotion is refused until it holds 90%
# of the leader's log; `member promote` retries until then.
for _ in $(seq 1 50); do
    "$lattice" endpoint status --endpoints 127.0.0.14:7002 --timeout-secs 1 2>/dev/null \
        | awk '$2 == 4 && $NF == "learner"' | grep -q . && break
    sleep 0.1
done
echo "[$(stamp) ms] node 4 is a learner"
"$lattice" member promote 4 --endpoints "$founders" --timeout-secs 20 > "$out/promote.txt" \
    || die "promoting node 4 failed: $(cat "$out/promote.txt")"
echo "[$(stamp) ms] node 4 promoted"
"$lattice" endpoint status --endpoints "$all" | tee "$out/status-after-promote.txt"
sleep 2

"$cluster" kill 1 > /dev/null
echo "[$(stamp) ms] node 1 killed (kill -9): the old machine is gone"
replaced_at=$(stamp)
"$lattice" member remove 1 --endpoints "$all" --timeout-secs 20 > "$out/remove.txt" \
    || die "removing node 1 failed: $(cat "$out/remove.txt")"
echo "[$(stamp) ms] node 1 removed"
"$lattice" member list --endpoints "$all" > "$out/members.txt" || die "member list failed"
cat "$out/members.txt"
voters=$(awk '$2 == "voter" { print $1 }' "$out/members.txt" | sort -n | tr '\n' ' ')
[ "$voters" = "2 3 4 " ] || die "the voters are '$voters', not 2 3 4"
grep -q "^removed (ids never reused): 1$" "$out/members.txt" || die "node 1 is not listed as removed"

finish_workload "$workload"
[ "$verdict" -eq 0 ] || die "the history is not linearizable (see $out/checker.txt)"
# Operations that succeeded after node 1 was removed, by the new configuration.
after=$(grep '"type":"ok"' "$out/history.jsonl" | grep -o '"time":[0-9]*' | cut -d: -f2 \
    | awk -v from="$replaced_at" -v t0="$(grep -o '"time":[0-9]*' "$out/history.jsonl" | head -1 | cut -d: -f2)" \
        '($1 - t0) / 1e6 > from' | wc -l)
echo "operations that succeeded after node 1 was killed: $after"
[ "$after" -gt 100 ] || die "the new configuration served only $after operations"
echo "replace node: node 4 joined, was promoted, node 1 was killed and removed under load; linearizable"
