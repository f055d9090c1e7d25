#!/usr/bin/env bash
# The main job on the bundled default data: Fashion-MNIST from Debian's
# dataset-fashion-mnist package. Installs the package if missing, builds c2f, prepares the
# 8/16/32 ladder (28×28 padded to 32×32, 5 000 training images held out for validation),
# runs plans/payoff-demo.toml (net-4 trained at 8×8, grown to 16×16 and 32×32 and trained
# on, against net-4 from scratch at 32×32, at four budgets) and writes its report to
# runs/payoff-demo/report/, whose first line says whether starting coarse paid off.
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

# A folder prepared before without a validation split is prepared again (it is c2f's own).
if ! grep -q '"val"' data/fashion-mnist/dataset.json 2>/dev/null; then
    FORCE=""
    [ -f data/fashion-mnist/dataset.json ] && FORCE="--force"
    "$C2F" prepare "$FMNIST" --out data/fashion-mnist --sizes 8,16,32 --pad-pow2 \
        --val-images 5000 $FORCE
fi
# Re-running continues an interrupted run, or finds it done.
"$C2F" run plans/payoff-demo.toml --out runs/payoff-demo
"$C2F" report runs/payoff-demo --out runs/payoff-demo/report
echo
head -n 1 runs/payoff-demo/report/report.md
