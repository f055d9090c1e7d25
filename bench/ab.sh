#!/usr/bin/env bash
# Two builds or settings of c2f against each other, interleaved: ROUNDS rounds of
# `A bench …` then `B bench …`, each a fresh `c2f bench --pairs 1` over the same nets,
# then a table of B/A throughput ratios (median and min–max over the rounds).
#
#   bench/ab.sh OUT_DIR ROUNDS "COMMAND_A" "COMMAND_B" [c2f bench FLAGS]
#
# COMMAND_A and COMMAND_B run c2f, with whatever environment they set, e.g.
#   bench/ab.sh runs/ab-winograd 3 "env C2F_WINOGRAD=off target/release/c2f" \
#       "env C2F_WINOGRAD=on target/release/c2f" --nets cifar32,alexnet-s3 --steps 10
# Stop other work on the machine first.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: bench/ab.sh OUT_DIR ROUNDS COMMAND_A COMMAND_B [c2f bench FLAGS]" >&2
    exit 2
fi
out=$1 rounds=$2 a=$3 b=$4
shift 4
mkdir -p "$out"
for r in $(seq "$rounds"); do
    for side in a b; do
        cmd=$a
        [ "$side" = b ] && cmd=$b
        echo "round $r/$rounds: $cmd" >&2
        # shellcheck disable=SC2086
        $cmd bench --pairs 1 "$@" --json "$out/$side-$r.json" >/dev/null
    done
done
python3 "$(dirname "$0")/ab_table.py" "$out" "$a" "$b" | tee "$out/ab.md"
