#!/usr/bin/env bash
# Porcupine and this checker side by side on the same files: the crash-class
# histories `checker bench --write` writes (3,000 operations on 4 keys with 8
# clients, 100,000 on 100 keys with 20 clients; each also with one stale read).
#
# usage: checker/compare-porcupine.sh PORCUPINE_GIT_DIR [RUNS] [PORCUPINE_TIMEOUT_S]
#   PORCUPINE_GIT_DIR: a git directory of anishathalye/porcupine (the library's
#   `fetch github:anishathalye/porcupine` gives one). Needs Go (Debian golang-go).
# Porcupine's side is the script PORCBENCH names (a porcbench run.sh: Porcupine
# v1.3.0 driven on one history, unknown outcomes returning at +infinity); it
# lives outside this repository, so the variable is required. Prints per file: each checker's verdict, and the medians of its
# own parse and search times and of the whole process's wall time and peak RSS.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 2; }
porcupine_git=$1
runs=${2:-3}
porcupine_timeout=${3:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
porcbench=${PORCBENCH:?set PORCBENCH to a porcbench run.sh (Porcupine v1.3.0 on one history)}
cd "$root"
cargo build --release -q -p checker
checker=$root/target/release/checker
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$checker" bench --runs 1 --write "$dir" >/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-22s | %-14s %9s %9s %8s %7s | %-14s %9s %9s %8s %7s\n' file \
    checker parse_ms search_ms wall_s rss_MB porcupine parse_ms check_ms wall_s rss_MB
for file in "$dir"/*.jsonl; do
    name=$(basename "$file" .jsonl)
    : >"$dir/ours" ; : >"$dir/theirs"
    for _ in $(seq "$runs"); do
        out=$( { /usr/bin/time -f 'TIME %e %M' "$checker" "$file" || true; } 2>&1 )
        verdict=$(awk '/^verdict:/{print $2 == "NOT" ? "NotLinearizable" : ($2 == "LINEARIZABLE" ? "Linearizable" : "Unknown")}' <<<"$out")
        parse=$(sed -n 's/.*parse \([0-9.]*\) ms, search \([0-9.]*\) ms.*/\1/p' <<<"$out")
        search=$(sed -n 's/.*parse \([0-9.]*\) ms, search \([0-9.]*\) ms.*/\2/p' <<<"$out")
        read -r _ wall rss < <(grep '^TIME' <<<"$out")
        echo "$verdict $parse $search $wall $rss" >>"$dir/ours"
    done
    for _ in $(seq "$runs"); do
        out=$( { /usr/bin/time -f 'TIME %e %M' bash "$porcbench" "$porcupine_git" "$file" "$porcupine_timeout" || true; } 2>&1 )
        line=$(grep '^porcupine:' <<<"$out" || echo "porcupine: Error ops=0 parse_ms=0 check_ms=0")
        verdict=$(awk '{print $2}' <<<"$line")
        parse=$(sed -n 's/.*parse_ms=\([0-9]*\).*/\1/p' <<<"$line")
        check=$(sed -n 's/.*check_ms=\([0-9]*\).*/\1/p' <<<"$line")
        read -r _ wall rss < <(grep '^TIME' <<<"$out")
        echo "$verdict $parse $check $wall $rss" >>"$dir/theirs"
        # A run that hit the timeout says all there is to say.
        [ "$verdict" = Unknown ] && break
    done
    row() {
        local f=$1
        printf '%-14s %9s %9s %8s %7s' "$(awk '{print $1}' "$f" | sort | uniq -c | sort -rn | awk 'NR==1{print $2}')" \
            "$(awk '{print $2}' "$f" | median)" "$(awk '{print $3}' "$f" | median)" \
            "$(awk '{print $4}' "$f" | median)" "$(awk '{printf "%.0f\n", $5/1024}' "$f" | median)"
    }
    printf '%-22s | %s | %s\n' "$name" "$(row "$dir/ours")" "$(row "$dir/theirs")"
done
