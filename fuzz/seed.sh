#!/usr/bin/env bash
# Fills fuzz/corpus/TARGET/ with valid inputs to start from: the shipped plans and spec
# files, the regression seeds of fuzz/seeds/, and files made by c2f itself (IDX files, a
# shard, checkpoint weights and a PyTorch export). Run from the repository root after
# building c2f (cargo build -p c2f):
#
#   fuzz/seed.sh && cd fuzz && cargo +nightly fuzz run -s none -a idx -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
C2F=${C2F:-target/debug/c2f}
C=fuzz/corpus
mkdir -p $C/idx $C/shard $C/spec $C/plan $C/checkpoint $C/import
cp plans/*.toml fuzz/seeds/plan/* $C/plan/
for f in nets/*.toml; do printf '\0' | cat - "$f" > "$C/spec/$(basename "$f")"; done
cp fuzz/seeds/spec/* $C/spec/
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$C2F" --quiet prepare /usr/share/datasets/fashion-mnist --out "$WORK/data" --sizes 8 --pad-pow2 >/dev/null
python3 - $C/idx <<'PY'
import struct, sys
d = sys.argv[1]
open(d + "/images", "wb").write(bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 3, 3) + bytes(range(18)))
open(d + "/labels", "wb").write(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes([0, 1, 2, 9]))
PY
head -c 100000 "$WORK/data/8x8/test-00000.c2fs" > $C/shard/test-head
cp "$WORK/data/8x8/test-00000.c2fs" $C/shard/test
"$C2F" --quiet train --data "$WORK/data" --size 8 --net net-1 --iterations 2 --out "$WORK/run" >/dev/null
cp "$WORK/run/checkpoint/weights.safetensors" $C/checkpoint/net-1
"$C2F" --quiet export "$WORK/run" --pytorch "$WORK/torch" >/dev/null
python3 - "$WORK/torch" $C/import/net-1 <<'PY'
import struct, sys
d, out = sys.argv[1], sys.argv[2]
info = open(d + "/coarse2fine.json", "rb").read()
weights = open(d + "/model.safetensors", "rb").read()
open(out, "wb").write(struct.pack("<H", len(info)) + info + weights)
PY
echo "corpus in $C: $(find $C -type f | wc -l) files"
