#!/usr/bin/env python3
"""The table of bench/ab.sh: B/A training and inference throughput per net and thread
count, the median over the rounds with the min–max.

    python3 bench/ab_table.py OUT_DIR "COMMAND_A" "COMMAND_B"
"""

import collections
import glob
import json
import statistics
import sys


def main():
    out, a_name, b_name = sys.argv[1:4]
    runs = collections.defaultdict(lambda: collections.defaultdict(dict))
    for path in glob.glob(f"{out}/[ab]-*.json"):
        side, rnd = path.rsplit("/", 1)[1].removesuffix(".json").split("-")
        for r in json.load(open(path))["rows"]:
            ips = (r["batch"] / r["ours"]["train_step_s"], r["batch"] / r["ours"]["infer_step_s"])
            runs[(r["net"], r["threads"])][side][rnd] = ips
    print(f"A: `{a_name}`, B: `{b_name}`\n")
    print("| net | threads | train img/s A | train img/s B | train B/A | infer B/A |")
    print("|---|---|---|---|---|---|")
    for (net, threads), sides in runs.items():
        rounds = sorted(set(sides["a"]) & set(sides["b"]))
        if not rounds:
            continue
        cells = []
        for k in (0, 1):
            ratios = [sides["b"][r][k] / sides["a"][r][k] for r in rounds]
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
        med = lambda s: statistics.median(sides[s][r][0] for r in rounds)
        print(f"| {net} | {threads} | {med('a'):.0f} | {med('b'):.0f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
