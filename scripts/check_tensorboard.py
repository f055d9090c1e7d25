#!/usr/bin/env python3
"""Reads the TensorBoard event files that `c2f report --tensorboard DIR` wrote, with
TensorBoard's own loader, and prints each curve's scalar tags and point counts.

    python3 scripts/check_tensorboard.py DIR [--expect-evals N]

Exits 1 if a file does not parse, has no test/top1 points, or (with --expect-evals) a
curve has another number of them. Needs the tensorboard package.
"""

import argparse
import sys
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--expect-evals", type=int, nargs="*", default=None)
    args = ap.parse_args()
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise SystemExit("tensorboard is missing: python3 -m pip install tensorboard")
    files = sorted(Path(args.dir).rglob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"{args.dir}: no event files")
    counts = []
    for f in files:
        acc = EventAccumulator(str(f.parent))
        acc.Reload()
        tags = sorted(acc.Tags()["scalars"])
        top1 = acc.Scalars("test/top1") if "test/top1" in tags else []
        print(f"{f.parent}: {', '.join(tags)}; {len(top1)} test/top1 points, last {top1[-1].value if top1 else None}")
        if not top1:
            sys.exit(1)
        counts.append(len(top1))
    if args.expect_evals is not None and sorted(counts) != sorted(args.expect_evals):
        print(f"FAIL: test/top1 counts {counts}, expected {args.expect_evals}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
