#!/usr/bin/env bash
# The speed benchmark of docs/performance.md, in one invocation: c2f and PyTorch on the
# same nets at 1 and 2 threads, five interleaved pairs of processes a row (and burn's CPU
# backend, the reference engine), one epoch of Fashion-MNIST at 32×32 end to end, the data
# loader, prepare, and peak memory. About 30 minutes on a 2-core machine.
#
#   ./bench/run.sh [OUT_DIR [MORE c2f bench FLAGS]]      (default: runs/bench)
#
# To measure an AVX2-only machine on an AVX-512 one, build without AVX-512 kernels and cap
# both sides (PyTorch's own switches included):
#
#   C2F_BUILD_FLAGS=--no-default-features C2F_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 \
#       ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ./bench/run.sh runs/bench-avx2
#
# Sets up what it needs: PyTorch (CPU wheels, ~200 MB) into the current Python if it is
# missing, Fashion-MNIST prepared at 8/16/32 for the loader figure. Stop other work on the
# machine first: the figures are ratios taken back to back, but a busy machine still adds
# noise.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench}
mkdir -p "$out"
if ! python3 -c "import torch" 2>/dev/null; then
    pip install torch --index-url https://download.pytorch.org/whl/cpu ||
        pip install torch
fi
# shellcheck disable=SC2086
cargo build --locked -p c2f ${C2F_BUILD_FLAGS:-}
c2f=target/debug/c2f
if [ ! -f data/fashion-mnist/dataset.json ]; then
    "$c2f" prepare /usr/share/datasets/fashion-mnist --out data/fashion-mnist --sizes 8,16,32 --pad-pow2
fi
"$c2f" bench --pytorch --reference flex --data data/fashion-mnist --prepare-jpegs 2000 \
    --epoch-data data/fashion-mnist "${@:2}" --md "$out/bench.md" --json "$out/bench.json"
echo "wrote $out/bench.md and $out/bench.json"
