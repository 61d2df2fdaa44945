#!/usr/bin/env bash
# Cut a live cluster (scripts/cluster.sh) apart with iptables, and heal it.
# Nodes are named by id; node N is 127.0.0.(10+N). Rules live in a chain of
# their own (LATTICE, jumped to from OUTPUT), are idempotent, and `heal`
# removes them all. Needs root and iptables; run it inside a network namespace
# of your own (scripts/live-jepsen.sh does) rather than on a shared machine.
#
#   scripts/partition.sh isolate N     cut node N off from every other node
#   scripts/partition.sh split 1,2 3   no traffic between the two groups
#   scripts/partition.sh oneway A B    drop what A sends to B (B -> A still flows)
#   scripts/partition.sh heal          remove every rule
#   scripts/partition.sh status        list the rules
#
# Clients on 127.0.0.1 are never cut: like Jepsen, only nodes are partitioned.
set -euo pipefail

chain=LATTICE
nodes=${LATTICE_NODES_MAX:-9}

die() { echo "partition.sh: $*" >&2; exit 1; }
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
ip_of() { echo "127.0.0.$((10 + $1))"; }
check_id() { [[ "$1" =~ ^[1-9]$ ]] || die "node ids are 1 to 9, not '$1'"; }

command=${1:-}
case "$command" in ""|help|-h|--help) usage; exit 0 ;; esac

[ "$(id -u)" = 0 ] || die "needs root (iptables); try sudo, or run inside scripts/live-jepsen.sh"
command -v iptables >/dev/null || die "iptables is not installed (apt-get install iptables)"

ensure_chain() {
    iptables -N "$chain" 2>/dev/null || true
    iptables -C OUTPUT -j "$chain" 2>/dev/null || iptables -I OUTPUT -j "$chain"
}

# drop A B: drop packets from node A to node B (idempotent).
drop() {
    local a b
    a=$(ip_of "$1"); b=$(ip_of "$2")
    iptables -C "$chain" -s "$a" -d "$b" -j DROP 2>/dev/null || iptables -A "$chain" -s "$a" -d "$b" -j DROP
}

cut_both() { drop "$1" "$2"; drop "$2" "$1"; }

case "$command" in
    isolate)
        [ $# -eq 2 ] || die "usage: $0 isolate N"
        check_id "$2"
        ensure_chain
        for other in $(seq 1 "$nodes"); do
            [ "$other" = "$2" ] || cut_both "$2" "$other"
        done
        echo "node $2 isolated"
        ;;
    split)
        [ $# -eq 3 ] || die "usage: $0 split 1,2 3"
        IFS=, read -ra left <<< "$2"
        IFS=, read -ra right <<< "$3"
        for id in "${left[@]}" "${right[@]}"; do check_id "$id"; done
        for a in "${left[@]}"; do
            for b in "${right[@]}"; do
                [ "$a" != "$b" ] || die "node $a is on both sides"
            done
        done
        ensure_chain
        for a in "${left[@]}"; do
            for b in "${right[@]}"; do cut_both "$a" "$b"; done
        done
        echo "split: {$2} | {$3}"
        ;;
    oneway)
        [ $# -eq 3 ] || die "usage: $0 oneway A B"
        check_id "$2"; check_id "$3"
        [ "$2" != "$3" ] || die "a node cannot be cut from itself"
        ensure_chain
        drop "$2" "$3"
        echo "oneway: node $2 -> node $3 dropped"
        ;;
    heal)
        if iptables -L "$chain" -n >/dev/null 2>&1; then
            iptables -D OUTPUT -j "$chain" 2>/dev/null || true
            iptables -F "$chain"
            iptables -X "$chain"
        fi
        echo "healed: no partition rules"
        ;;
    status)
        if iptables -L "$chain" -n >/dev/null 2>&1; then
            rules=$(iptables -S "$chain" | grep -c -- '-j DROP' || true)
            echo "$rules rule(s):"
            iptables -S "$chain" | grep -- '-j DROP' | sed -E 's/-A LATTICE -s 127\.0\.0\.1([0-9])\/32 -d 127\.0\.0\.1([0-9])\/32 -j DROP/  node \1 -> node \2 dropped/' || true
        else
            echo "no partition rules"
        fi
        ;;
    *)
        usage >&2
        die "unknown command '$command'"
        ;;
esac
