#!/usr/bin/env bash
# The test suite: unit tests, property tests and the CLI integration tests, including the
# real-data tests on Fashion-MNIST (Debian package dataset-fashion-mnist; .ci/run and
# scripts/demo.sh install it) and the NumPy cross-check of the growth operators (NumPy is
# installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import numpy' 2>/dev/null; then
    echo "installing NumPy for the growth cross-check…" >&2
    python3 -m pip install --quiet --disable-pip-version-check numpy
fi
cargo test --locked --workspace "$@"
