#!/usr/bin/env bash
# The main job on the bundled default data: Fashion-MNIST from Debian's
# dataset-fashion-mnist package. Installs the package if missing, builds c2f, prepares the
# 8/16/32 ladder (28×28 padded to 32×32), runs plans/exp1-upscale.toml (net-2 trained at
# 8×8, grown to 16×16, trained on; against 16×16 from scratch for the same time) and writes
# its report to runs/exp1/report/.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] || [ ! -f "$FONT" ]; then
    echo "installing Debian packages dataset-fashion-mnist and fonts-dejavu-core…" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist fonts-dejavu-core
fi

cargo build --locked -p c2f
C2F=target/debug/c2f

if [ ! -f data/fashion-mnist/dataset.json ]; then
    "$C2F" prepare "$FMNIST" --out data/fashion-mnist --sizes 8,16,32 --pad-pow2
fi
# Re-running continues an interrupted run, or finds it done.
"$C2F" run plans/exp1-upscale.toml --out runs/exp1
"$C2F" report runs/exp1 --out runs/exp1/report
