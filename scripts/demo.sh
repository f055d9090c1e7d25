#!/usr/bin/env bash
# The main job on the bundled default data: Fashion-MNIST from Debian's
# dataset-fashion-mnist package. Installs the package if missing, builds c2f, prepares the
# 8/16/32 ladder (28×28 padded to 32×32), trains net-2 at 16×16 for a short run and prints
# its test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    echo "installing Debian package dataset-fashion-mnist…" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

cargo build --locked -p c2f
C2F=target/debug/c2f

if [ ! -f data/fashion-mnist/dataset.json ]; then
    "$C2F" prepare "$FMNIST" --out data/fashion-mnist --sizes 8,16,32 --pad-pow2
fi
"$C2F" train --data data/fashion-mnist --size 16 --net net-2 --epochs 2 \
    --out runs/demo-net2-16 --force
"$C2F" eval runs/demo-net2-16/checkpoint
