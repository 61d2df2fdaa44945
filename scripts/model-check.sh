#!/usr/bin/env bash
# Model-checks the real Raft core (tests/model.rs) deeper than `cargo test`
# does: every interleaving of up to LATTICE_MODEL_DEPTH steps (default 19)
# within the deep bounds (3 terms, 2 proposals, 3 messages in flight, 1
# crash, 1 duplicate, 1 read), release build, all cores. Needs ~12 GB of
# memory at depth 19 (breadth-first: the frontier is kept in memory).
#
#   scripts/model-check.sh                      # the deep run
#   LATTICE_MODEL_DEPTH=22 scripts/model-check.sh
#   LATTICE_MODEL_TERMS=4 LATTICE_MODEL_CRASHES=2 scripts/model-check.sh
#   scripts/model-check.sh --catalogue          # the planted bugs, release build
#
# The broad configurations run one after the other: the base protocol, then
# PreVote, CheckQuorum and a leadership transfer (2 steps deeper, without
# crashes, snapshots and reads), then membership changes;
# LATTICE_MODEL_CONFIG=base|liveness|membership runs one. (The per-family
# configurations run in every `cargo test`.)
# Every bound is an environment variable: LATTICE_MODEL_{TERMS,PROPOSALS,
# IN_FLIGHT,CRASHES,DUPLICATES,READS,SNAPSHOTS,TRANSFERS,DEPTH,APPEND_MAX};
# LATTICE_MODEL_MAX_STATES stops early after that many generated states (the
# run then is not exhaustive); LATTICE_MODEL_SEARCH=dfs searches depth-first
# (little memory, to hunt deeper, but not exhaustive under a depth bound).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--catalogue" ]]; then
    exec /usr/bin/time -f "%e s wall, %M KB peak memory" \
        cargo test --release --features planted-bugs --test model -- planted --nocapture
fi
export LATTICE_MODEL=deep
exec /usr/bin/time -f "%e s wall, %M KB peak memory" \
    cargo test --release --test model -- raft_core --nocapture
