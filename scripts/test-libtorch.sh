#!/usr/bin/env bash
# The libtorch backend (cargo feature `libtorch`, docs/gpu.md) built for real and tested:
# PyTorch 2.9.0 from PyPI in a virtual environment (several GB; reused when present), then
# the tests named libtorch of the library and the command line: the engine against the
# native one on libtorch's CPU kernels (and on GPU 0 with C2F_TEST_LIBTORCH_CUDA=1),
# `c2f train --backend libtorch` end to end, and a GPU that is not there.
#
#   scripts/test-libtorch.sh                             # any machine
#   C2F_TEST_LIBTORCH_CUDA=1 scripts/test-libtorch.sh    # a machine with an NVIDIA GPU
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${C2F_TORCH_VENV:-target/torch-2.9.0}
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.9.0")' 2>/dev/null; then
    echo "installing PyTorch 2.9.0 from PyPI into $VENV (several GB)…" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.9.0
fi
VENV=$(cd "$VENV" && pwd)
TORCH_LIB=$("$VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
# tch's build script compiles against the torch that this python imports.
export LIBTORCH_USE_PYTORCH=1 PATH="$VENV/bin:$PATH"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo test --locked -p coarse2fine -p c2f --features coarse2fine/libtorch,c2f/libtorch \
    libtorch -- --nocapture
