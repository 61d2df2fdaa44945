#!/usr/bin/env bash
# Benchmark a real 3-node cluster on this machine: release build, fsync on,
# one loopback address per node (scripts/cluster.sh). Starts the cluster,
# runs `lattice bench` (1, 16, 64, 256 closed-loop clients; put, get, mixed;
# 256-byte values), stops it. Extra arguments go to `lattice bench`.
#
#   scripts/bench.sh                              # the full matrix
#   scripts/bench.sh --workloads put --clients 1,64
#
# Output: target/bench/bench.csv (appended per run), bench.svg, node logs.
# LATTICE_BENCH_KEEP=1 leaves the cluster running afterwards (stop it with
# LATTICE_DIR=target/bench/cluster scripts/cluster.sh stop); LATTICE_NODE_ARGS
# passes flags to every node (e.g. --snapshot-entries 0 --snapshot-bytes 0);
# LATTICE_BENCH_TLS=1 runs the cluster and the bench with TLS everywhere
# (scripts/cluster.sh start 3 --tls: mutual peer TLS, client certificates).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${LATTICE_BENCH_DIR:-$root/target/bench}
(cd "$root" && cargo build --release --bin lattice)
mkdir -p "$out"
export LATTICE_DIR="$out/cluster" LATTICE_BIN="$root/target/release/lattice"
rm -rf "$LATTICE_DIR"
cluster="$root/scripts/cluster.sh"
if [ "${LATTICE_BENCH_KEEP:-0}" != 1 ]; then
    trap '"$cluster" stop >/dev/null 2>&1 || true' EXIT
fi
tls=""
if [ "${LATTICE_BENCH_TLS:-0}" = 1 ]; then tls=--tls; fi
# shellcheck disable=SC2086
"$cluster" start 3 $tls >/dev/null
eval "$("$cluster" env)"
endpoints=$("$cluster" endpoints)
for _ in $(seq 1 40); do
    "$LATTICE_BIN" kv --endpoints "$endpoints" --timeout-secs 2 leader >/dev/null 2>&1 && break
    sleep 0.5
done
"$LATTICE_BIN" bench --endpoints "$endpoints" --csv "$out/bench.csv" --svg "$out/bench.svg" "$@"
