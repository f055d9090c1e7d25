#!/usr/bin/env python3
"""Runs an ONNX model exported by `c2f export` with onnxruntime and compares its logits
with those c2f computed for the same images.

    c2f export CHECKPOINT --onnx model.onnx
    c2f eval CHECKPOINT --dump dump.safetensors --dump-images 256
    python3 scripts/check_onnx.py model.onnx dump.safetensors [--tol 1e-4]

Prints the largest absolute difference of logits and the top-1 agreement; exits 1 if the
difference exceeds --tol. Needs NumPy and onnxruntime.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosscheck_growth import load_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("dump")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("onnxruntime is missing: python3 -m pip install onnxruntime")
    dump = load_safetensors(args.dump)
    pixels = dump["pixels"].astype(np.float32)
    expected = dump["logits"]
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"pixels": pixels})[:1]
    got = got.astype(np.float64)
    if got.shape != expected.shape:
        raise SystemExit(f"logits shape {got.shape}, c2f's {expected.shape}")
    max_abs = float(np.max(np.abs(got - expected)))
    agree = float(np.mean(got.argmax(1) == expected.argmax(1)))
    print(f"{args.model}: {len(pixels)} images, max |onnxruntime - c2f| = {max_abs:.3e}, "
          f"top-1 agreement {100 * agree:.2f}% (onnxruntime {ort.__version__})")
    if not max_abs <= args.tol:
        print(f"FAIL: above the tolerance {args.tol}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
