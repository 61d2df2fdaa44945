# Shared by the live scripts (sourced; needs $root, the repository).

# Empties the output directory $1 into $out, finds the binaries (below), and
# sets $cluster to scripts/cluster.sh keeping its cluster under $out/cluster.
live_setup() {
    out=$1
    rm -rf "$out"
    mkdir -p "$out"
    find_binaries
    export LATTICE_DIR="$out/cluster" LATTICE_BIN="$lattice"
    cluster="$root/scripts/cluster.sh"
}

# Sets $lattice and $checker: LATTICE_BIN and LATTICE_CHECKER if set, else
# the release builds, else the debug ones; builds the release ones if
# neither exists.
find_binaries() {
    pick() {
        for candidate in "$root/target/release/$1" "$root/target/debug/$1"; do
            if [ -x "$candidate" ]; then echo "$candidate"; return; fi
        done
    }
    lattice=${LATTICE_BIN:-$(pick lattice)}
    checker=${LATTICE_CHECKER:-$(pick checker)}
    if [ -z "$lattice" ] || [ -z "$checker" ]; then
        (cd "$root" && cargo build --release --bin lattice && cargo build --release -p checker --bin checker)
        lattice=${LATTICE_BIN:-$(pick lattice)}
        checker=${LATTICE_CHECKER:-$(pick checker)}
    fi
}

# "ID TERM" of the node that says it leads in the highest term, asking every
# node of ENDPOINTS (`lattice status`); nothing if none leads.
leader_and_term() {
    "$lattice" status --endpoints "$1" --timeout-secs 2 2>/dev/null \
        | awk '$3 == "leader" { print $4, $2 }' | sort -n | tail -1 | awk '{ print $2, $1 }'
}

# Waits for the workload (pid $1; its log in $out/workload.log), prints its
# summary, and checks $out/history.jsonl for linearizability: the checker's
# report goes to $out/checker.txt and its exit code to $verdict (0: yes).
finish_workload() {
    wait "$1" || die "the workload failed: $(tail -5 "$out/workload.log")"
    cat "$out/workload.log"
    set +e
    "$checker" "$out/history.jsonl" > "$out/checker.txt" 2>&1
    verdict=$?
    set -e
    tail -3 "$out/checker.txt"
}
