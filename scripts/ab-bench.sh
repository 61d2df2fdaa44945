#!/usr/bin/env bash
# A/B benchmark of two lattice binaries on this machine, rounds interleaved
# (A B A B ...) so drift on a shared machine hits both alike: each round
# starts a fresh 3-node cluster (scripts/cluster.sh, fsync on), runs
# `lattice bench` against it, and stops it. Prints every round and the
# medians, and the ratio B/A of the medians.
#
#   scripts/ab-bench.sh BIN_A BIN_B [ROUNDS] [-- lattice bench args]
#   scripts/ab-bench.sh /tmp/lattice-base target/release/lattice 5 -- --workloads put --clients 64
#
# Environment: AB_A_ENV and AB_B_ENV, extra environment for each side's
# cluster (e.g. AB_A_ENV=LATTICE_NO_METRICS=1 for a binary without
# --metrics-addr); AB_SCRAPE=SECONDS scrapes every node's /metrics that
# often during B's runs (what a Prometheus server costs it); AB_A_TLS=1 and
# AB_B_TLS=1 run that side's cluster with TLS everywhere (`cluster.sh start 3
# --tls`, client certificates included), so one binary on both sides and
# AB_B_TLS=1 measures what TLS costs:
#   AB_B_TLS=1 scripts/ab-bench.sh target/release/lattice target/release/lattice 5
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,19p' "$0"; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
a=$(realpath "$1") b=$(realpath "$2")
rounds=${3:-5}
shift $(( $# >= 3 ? 3 : 2 ))
[ "${1:-}" = "--" ] && shift
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--workloads put --clients 64)
out=${AB_DIR:-$root/target/ab-bench}
mkdir -p "$out"
cluster="$root/scripts/cluster.sh"

run() { # side binary: prints ops/s
    local side=$1 bin=$2 env_var scraper="" tls=""
    env_var=$([ "$side" = A ] && echo "${AB_A_ENV:-}" || echo "${AB_B_ENV:-}")
    if [ "$([ "$side" = A ] && echo "${AB_A_TLS:-0}" || echo "${AB_B_TLS:-0}")" = 1 ]; then tls=--tls; fi
    export LATTICE_DIR="$out/cluster-$side" LATTICE_BIN="$bin"
    rm -rf "$LATTICE_DIR"
    # shellcheck disable=SC2086
    env $env_var "$cluster" start 3 $tls >/dev/null
    # A TLS cluster's client settings (this runs in a subshell: they stay here).
    eval "$("$cluster" env)"
    local endpoints
    endpoints=$("$cluster" endpoints)
    for _ in $(seq 1 40); do
        "$bin" kv --endpoints "$endpoints" --timeout-secs 2 leader >/dev/null 2>&1 && break
        sleep 0.5
    done
    if [ "$side" = B ] && [ -n "${AB_SCRAPE:-}" ]; then
        (while true; do
            for i in 1 2 3; do curl -s "http://127.0.0.1$i:7003/metrics" >/dev/null || true; done
            sleep "$AB_SCRAPE"
        done) &
        scraper=$!
    fi
    "$bin" bench --endpoints "$endpoints" --csv "$out/ab.csv" "${bench_args[@]}" \
        > "$out/last-$side.txt" 2>&1
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    "$cluster" stop >/dev/null 2>&1 || true
    # The bench's table: the throughput column of its one row.
    awk '/ops\/s/ && !done { for (i = 1; i <= NF; i++) if ($i == "ops/s") col = i; next }
         col && NF >= col && $col ~ /^[0-9.]+$/ { print $col; done = 1; exit }' "$out/last-$side.txt"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: > "$out/a.txt"; : > "$out/b.txt"
for r in $(seq 1 "$rounds"); do
    ra=$(run A "$a"); rb=$(run B "$b")
    echo "round $r: A $ra ops/s, B $rb ops/s"
    echo "$ra" >> "$out/a.txt"; echo "$rb" >> "$out/b.txt"
done
ma=$(median < "$out/a.txt") mb=$(median < "$out/b.txt")
echo "median of $rounds: A $ma ops/s, B $mb ops/s, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3f", b / a }')"
