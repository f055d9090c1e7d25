#!/usr/bin/env bash
# The test suite: unit tests, property tests and the CLI integration tests, including the
# real-data tests on Fashion-MNIST (Debian package dataset-fashion-mnist; .ci/run and
# scripts/demo.sh install it), the NumPy cross-check of the growth operators and the
# onnxruntime check of ONNX exports (NumPy and onnxruntime are installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import numpy, onnxruntime' 2>/dev/null; then
    echo "installing NumPy and onnxruntime for the growth and ONNX cross-checks…" >&2
    python3 -m pip install --quiet --disable-pip-version-check numpy onnxruntime
fi
cargo test --locked --workspace "$@"
