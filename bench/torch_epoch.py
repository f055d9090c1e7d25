#!/usr/bin/env python3
"""PyTorch side of `c2f bench --epoch-data`: a plain training loop over a prepared split.

    python3 bench/torch_epoch.py --threads 1 --batch 128 --images 55040 SPLIT_DIR MODEL_DIR

Reads every `train-*.c2fs` shard of SPLIT_DIR (coarse2fine's shard format: a header, `u8`
pixels planar C × H × W image after image, then `u32` labels) into memory, and trains the
net of MODEL_DIR/model.py (written by coarse2fine's PyTorch export, which normalises raw
pixels itself) on shuffled batches until it has seen --images images: SGD with momentum
0.9, weight decay 5e-4, cross-entropy, no evaluation, as `c2f train` does. Prints one JSON
object: the seconds of the loop (from the first batch to the last step's end) and the
images it trained on.

Needs torch and numpy (pip install torch).
"""

import argparse
import glob
import importlib.util
import json
import struct
import time

import numpy as np
import torch


def read_shard(path):
    b = open(path, "rb").read()
    if b[:8] != b"C2FSHARD":
        raise SystemExit(f"{path}: not a coarse2fine shard (bad magic)")
    version, c, h, w = struct.unpack_from("<4I", b, 8)
    if version != 1:
        raise SystemExit(f"{path}: shard version {version}, this script reads 1")
    (count,) = struct.unpack_from("<Q", b, 24)
    (names_len,) = struct.unpack_from("<I", b, 36)
    offset = (40 + names_len + 63) // 64 * 64
    pixels = count * c * h * w
    x = np.frombuffer(b, np.uint8, pixels, offset).reshape(count, c, h, w)
    y = np.frombuffer(b, "<u4", count, offset + pixels)
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("split_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, required=True)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shards = sorted(glob.glob(f"{args.split_dir}/train-*.c2fs"))
    if not shards:
        raise SystemExit(f"{args.split_dir}: no train-*.c2fs shards")
    parts = [read_shard(p) for p in shards]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    spec = importlib.util.spec_from_file_location("model", f"{args.model_dir}/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.Net()
    net.train()
    opt = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=0.9, dampening=0.0, weight_decay=5e-4
    )
    steps = -(-args.images // args.batch)
    order = torch.randperm(len(x))
    at = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        if at + args.batch > len(order):
            order, at = torch.randperm(len(x)), 0
        idx = order[at : at + args.batch]
        at += args.batch
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x[idx].float()), y[idx])
        loss.backward()
        opt.step()
    loop = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "loop_s": loop,
                "images": steps * args.batch,
                "final_loss": float(loss),
                "torch": torch.__version__,
                "capability": torch.backends.cpu.get_cpu_capability(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
