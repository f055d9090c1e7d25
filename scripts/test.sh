#!/usr/bin/env bash
# The test suite: unit tests, property tests and the CLI integration tests, including the
# real-data tests on Fashion-MNIST (Debian package dataset-fashion-mnist; .ci/run and
# scripts/demo.sh install it), the NumPy cross-check of the growth operators and the
# onnxruntime check of ONNX exports and the TensorBoard reader check of event files
# (NumPy, onnxruntime and tensorboard are installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import numpy, onnxruntime, tensorboard' 2>/dev/null; then
    echo "installing NumPy, onnxruntime and tensorboard for the cross-checks…" >&2
    python3 -m pip install --quiet --disable-pip-version-check numpy onnxruntime tensorboard
fi
# The tensorboard feature adds only the event-file writer; building it here costs nothing
# extra and lets its test run.
cargo test --locked --workspace --features c2f/tensorboard "$@"
# The engine's kernels again with their own loops capped to AVX2: the narrower tiles and
# filter blocks an AVX-512 machine otherwise never runs (a no-op cap where AVX2 is missing).
C2F_SIMD=avx2 cargo test --locked --workspace --features c2f/tensorboard --lib backend::
# And built without AVX-512 products, as for a CPU without it: the engine then takes the
# sparse fully connected product where an input is mostly zero, and its tests through the
# engine run that way.
cargo test --locked -p coarse2fine --no-default-features --features training --lib backend::
