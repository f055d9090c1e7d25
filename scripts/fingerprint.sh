#!/usr/bin/env bash
# Prints the SHA-256 of the weights and the evaluations of a fixed-seed `c2f train`, a
# `c2f run` (budget = "images") and a `c2f grow` on Fashion-MNIST, so that a change meant
# to keep every number (a refactor) can be checked on one machine: run it before and after
# and compare the outputs with diff. Hashes are machine-specific (the matrix-product kernels
# differ between CPUs), so compare only outputs made on the same machine and thread count.
#
#   scripts/fingerprint.sh [C2F_BINARY] > before.txt
set -euo pipefail
C2F=${1:-target/debug/c2f}
C2F=$(realpath "$C2F")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
c2f() { "$C2F" --threads 2 --quiet "$@"; }
c2f prepare /usr/share/datasets/fashion-mnist --out data --sizes 8,16 --pad-pow2 >/dev/null
# Evaluations without their clock readings, keys sorted, so only numbers are compared.
evals() {
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "eval":
        print(json.dumps({k: v for k, v in e.items() if not k.endswith("_s")}, sort_keys=True))' "$1"
}

c2f train --data data --size 8 --net net-4 --iterations 60 --batch 32 --lr 0.02 \
    --lr-policy step:0.5:20 --seed 3 --eval-every 30 --out train >/dev/null
echo "train: $(sha256sum train/checkpoint/weights.safetensors | cut -d' ' -f1)"
evals train/metrics.jsonl

cat > plan.toml <<PLAN
name = "fingerprint"
data = "data"
seed = 5
batch = 32
lr = 0.02
eval_every = 20
[[stage]]
size = 8
net = "net-4"
iterations = 40
[[stage]]
size = 16
grow = [{ op = "upscale" }, { op = "widen", layer = "conv1", add = 2, init = "flip-h" }]
iterations = 40
warmup = 5
[baseline]
budget = "images"
PLAN
c2f run plan.toml --out run >/dev/null
for f in run/incremental/stage-1 run/incremental/stage-2 run/baseline; do
    echo "run $f: $(sha256sum $f/checkpoint/weights.safetensors | cut -d' ' -f1)"
done
evals run/events.jsonl

c2f grow train --upscale --widen conv2=+3 --init gauss:0.01 --seed 9 --deepen after=conv1 \
    --out grown >/dev/null
echo "grow: $(sha256sum grown/weights.safetensors | cut -d' ' -f1)"
echo "grow momentum: $(sha256sum grown/optimizer.safetensors | cut -d' ' -f1)"
