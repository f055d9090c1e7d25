#!/usr/bin/env python3
"""Continue a coarse2fine stage in PyTorch, on one process or many (DistributedDataParallel).

    c2f export RUN/incremental/stage-3/checkpoint --pytorch handoff
    torchrun --nproc_per_node 2 examples/pytorch/ddp_continue.py handoff \
        --iterations 2000 --lr 0.001 --eval-every 500 --out handoff/ddp
    c2f import handoff --weights handoff/ddp/weights.safetensors \
        --curve handoff/ddp/curve.jsonl --into RUN
    c2f report RUN --out RUN/report

It reads the prepared shards (`.c2fs`) of the data folder the checkpoint was trained on
directly (memory-mapped; their checksums are `c2f`'s to check), trains with coarse2fine's
optimizer (SGD with momentum and weight decay in Caffe's form, no decay on biases or batch
norms, the fixed rate --lr) and writes, into --out:

    weights.safetensors  the net's state_dict, the keys of model.safetensors
    curve.jsonl          train and eval events in `c2f train`'s format, counted from the
                         hand-off; `c2f import --curve … --into RUN` places them on the run
    summary.json         iterations, images, processes, device, the final evaluation

Every process takes its slice of each global batch (--batch images, split evenly), so N
processes compute the gradient of the same global batch as one: the weights after a step
differ from a one-process run only by the order of float sums. The order of the data is
one seeded permutation per epoch (NumPy's, not c2f's), read as a continuous stream.
Dropout masks are drawn per process and differ from a one-process run's. Batch norms
normalise by each process's slice of the batch (DDP without SyncBatchNorm) and keep rank
0's running statistics, so a net with batch norms does not match a one-process run. Label smoothing
is the export's (--label-smoothing); augmentation (`c2f train --augment`) is not applied.

Backend: gloo on the CPU, NCCL on CUDA (--device, default cuda when available). Started
without torchrun it runs as one process.
"""

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file

SHARD_MAGIC = b"C2FSHARD"
SHARD_VERSION = 1


def read_shard(path):
    """(pixels u8 N×C×H×W, labels int64 N) of one `.c2fs` shard (docs/data.md), the pixels
    left memory-mapped."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(raw[:8]) != SHARD_MAGIC:
        sys.exit(f"{path}: not a coarse2fine shard (bad magic)")
    version, c, h, w, n, classes, names = struct.unpack_from("<IIIIQII", raw, 8)
    if version != SHARD_VERSION:
        sys.exit(f"{path}: shard version {version}, this script reads {SHARD_VERSION}")
    start = (40 + names + 63) // 64 * 64
    size = n * c * h * w
    if len(raw) != start + size + 4 * n:
        sys.exit(f"{path}: length {len(raw)} is not what its header promises")
    pixels = raw[start : start + size].reshape(n, c, h, w)
    labels = np.frombuffer(raw[start + size :].tobytes(), dtype="<u4").astype(np.int64)
    if n and labels.max() >= classes:
        sys.exit(f"{path}: a label is not below the class count {classes}")
    return pixels, labels


class Split:
    """The shards of one split at one size, indexed as one array without copying it."""

    def __init__(self, data, size, split):
        paths = sorted((Path(data) / f"{size}x{size}").glob(f"{split}-*.c2fs"))
        if not paths:
            sys.exit(f"{data}: no {split} shards at {size}x{size}")
        self.parts = [read_shard(p) for p in paths]
        self.starts = np.cumsum([0] + [len(l) for _, l in self.parts])

    def __len__(self):
        return int(self.starts[-1])

    def take(self, idx):
        """Pixels (float32) and labels of the images at `idx`, in that order."""
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        first = self.parts[0][0]
        x = np.empty((len(idx),) + first.shape[1:], dtype=np.float32)
        y = np.empty(len(idx), dtype=np.int64)
        for k in np.unique(shard):
            rows = np.nonzero(shard == k)[0]
            local = idx[rows] - self.starts[k]
            x[rows] = self.parts[k][0][local]
            y[rows] = self.parts[k][1][local]
        return x, y


def parse_args(info):
    meta, hyper = info["meta"], info["meta"]["hyper"]
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("export", help="a folder written by `c2f export --pytorch`")
    a.add_argument("--data", default=meta["dataset"], help="prepared data folder")
    a.add_argument("--iterations", type=int, required=True)
    a.add_argument("--batch", type=int, default=hyper["batch_size"], help="global batch")
    a.add_argument("--lr", type=float, required=True,
                   help="the fixed rate to continue with (the stage's may have annealed)")
    a.add_argument("--momentum", type=float, default=hyper["momentum"])
    a.add_argument("--weight-decay", type=float, default=hyper["weight_decay"])
    a.add_argument("--seed", type=int, default=hyper["seed"])
    a.add_argument("--label-smoothing", type=float, default=hyper.get("label_smoothing", 0.0),
                   help="of the training loss, as c2f's (default: the export's)")
    a.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    a.add_argument("--log-every", type=int, default=50, help="iterations per train event (≥ 1)")
    a.add_argument("--device", choices=["cpu", "cuda"], default=None)
    a.add_argument("--out", required=True, help="new or earlier output folder")
    return a.parse_args()


def write_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Run:
    """One process's part: its rank, its device and the data."""

    def __init__(self, args, info):
        self.args = args
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        cuda = torch.cuda.is_available() if args.device is None else args.device == "cuda"
        if cuda and not torch.cuda.is_available():
            sys.exit("--device cuda: PyTorch finds no CUDA GPU")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if args.batch % self.world or args.iterations < 1 or args.log_every < 1:
            sys.exit(f"--batch {args.batch} must split evenly over {self.world} processes, "
                     "--iterations and --log-every be at least 1")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if cuda else "gloo")
        size = info["meta"]["size"]
        self.train = Split(args.data, size, "train")
        self.test = Split(args.data, size, "test")

    def reduce(self, values):
        # NCCL reduces only tensors on the GPU.
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def batch(self, t):
        """This process's slice of global batch `t` of the seeded stream."""
        n, b = len(self.train), self.args.batch
        idx = np.empty(b, dtype=np.int64)
        for j in range(b):
            pos = t * b + j
            epoch, k = divmod(pos, n)
            if epoch != getattr(self, "_epoch", None):
                rng = np.random.default_rng([self.args.seed, epoch])
                self._epoch, self._perm = epoch, rng.permutation(n)
            idx[j] = self._perm[k]
        mine = idx[self.rank * b // self.world : (self.rank + 1) * b // self.world]
        x, y = self.train.take(mine)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    @torch.no_grad()
    def evaluate(self, net):
        """Top-1, top-5 and mean loss on the test split, each process a strided share."""
        net.eval()
        n = len(self.test)
        sums = [0.0, 0.0, 0.0, 0.0]
        for lo in range(self.rank * 1000, n, self.world * 1000):
            x, y = self.test.take(np.arange(lo, min(lo + 1000, n)))
            x, y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
            logits = net(x)
            top5 = logits.topk(min(5, logits.shape[1]), 1).indices
            sums[0] += (top5[:, 0] == y).sum().item()
            sums[1] += (top5 == y[:, None]).any(1).sum().item()
            sums[2] += F.cross_entropy(logits, y, reduction="sum").item()
            sums[3] += len(y)
        net.train()
        top1, top5, loss, n = self.reduce(sums)
        return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n}


def sgd_step(params, velocity, lr, momentum, weight_decay, decayed):
    """coarse2fine's update: v ← μ·v − lr·(∇L + λ·w), w ← w + v; decay only on `decayed`
    (the weights of convolutions and fully connected layers)."""
    with torch.no_grad():
        for name, p in params:
            g = p.grad
            if name in decayed:
                g = g + weight_decay * p
            v = velocity[name]
            v.mul_(momentum).sub_(lr * g)
            p.add_(v)


def main():
    # The export's settings are the defaults of the options, so it comes first.
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    export = Path(sys.argv[1])
    if not (export / "coarse2fine.json").is_file():
        sys.exit(f"{export}: not a `c2f export --pytorch` folder (no coarse2fine.json); "
                 "usage: ddp_continue.py EXPORT_DIR --iterations N --out DIR [options]")
    info = json.loads((export / "coarse2fine.json").read_text())
    args = parse_args(info)
    run = Run(args, info)
    augment = info["meta"]["hyper"].get("augment", "none")
    if augment != "none" and run.rank == 0:
        print(f"note: the stage augmented its images ({augment}); this continuation does not",
              file=sys.stderr)
    torch.manual_seed(args.seed + run.rank)
    sys.path.insert(0, str(export))
    import model  # the export's module

    net = model.Net().to(run.device)
    net.load_state_dict(load_file(str(export / "model.safetensors"), device=str(run.device)))
    net.train()
    ddp = torch.nn.parallel.DistributedDataParallel(net) if run.world > 1 else net
    params = list(net.named_parameters())
    # Batch norms' γ and β are not decayed, as in coarse2fine.
    decayed = {
        f"{m}.weight" for m, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
    }
    velocity = {n: torch.zeros_like(p) for n, p in params}
    out = Path(args.out)
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    events, clock = [], {"train_s": 0.0, "eval_s": 0.0}
    start, losses = time.perf_counter(), []

    def log(event, t, **fields):
        e = {"event": event, "iter": t, "images": t * args.batch, **fields}
        e.update(train_s=clock["train_s"], eval_s=clock["eval_s"], wall_s=time.perf_counter() - start)
        events.append(e)
        if run.rank == 0:
            print(json.dumps(e), flush=True)

    def evaluate(t):
        t0 = time.perf_counter()
        result = run.evaluate(net)
        clock["eval_s"] += time.perf_counter() - t0
        log("eval", t, **result)
        return result

    evaluate(0)
    for t in range(args.iterations):
        t0 = time.perf_counter()
        x, y = run.batch(t)
        loss = F.cross_entropy(ddp(x), y, label_smoothing=args.label_smoothing)
        ddp.zero_grad(set_to_none=False)
        loss.backward()
        sgd_step(params, velocity, args.lr, args.momentum, args.weight_decay, decayed)
        losses.append(loss.item())
        clock["train_s"] += time.perf_counter() - t0
        done = t + 1
        if done % args.log_every == 0 or done == args.iterations:
            mean = run.reduce([sum(losses), len(losses)])
            log("train", done, loss=mean[0] / mean[1], lr=args.lr)
            losses = []
        if args.eval_every and done % args.eval_every == 0 and done != args.iterations:
            evaluate(done)
    final = evaluate(args.iterations)
    if run.rank == 0:
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(tensors, str(out / "weights.tmp"))
        os.replace(out / "weights.tmp", out / "weights.safetensors")
        write_atomic(out / "curve.jsonl", "".join(json.dumps(e) + "\n" for e in events))
        summary = {
            "iterations": args.iterations,
            "images": args.iterations * args.batch,
            "processes": run.world,
            "device": str(run.device),
            "batch": args.batch,
            "lr": args.lr,
            "final": final,
        }
        write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
