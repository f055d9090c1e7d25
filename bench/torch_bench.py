#!/usr/bin/env python3
"""PyTorch reference for `c2f bench`: the same nets, the same step, timed the same way.

    python3 bench/torch_bench.py --threads 1 --batch 128 --steps 20 --warmup 3 [--device cuda:N] DIR...

Each DIR holds a `model.py` written by coarse2fine's PyTorch export (`c2f bench` writes
them; `c2f export --pytorch` writes the same file for a checkpoint), so both sides run
exactly the same layers. Prints one JSON object per net: the median seconds of a training
step (SGD with momentum 0.9, dampening 0, weight decay 5e-4, cross-entropy on the logits —
what c2f does) and of an inference forward pass, over --steps steps after --warmup.
With --device cuda[:N] the net and the batch live on that GPU and every timed step ends with
torch.cuda.synchronize(), so the time is the GPU's work, not its queueing.

Needs torch (pip install torch).
"""

import argparse
import importlib.util
import json
import statistics
import time

import torch


def load(path):
    spec = importlib.util.spec_from_file_location("model", f"{path}/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, steps, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"torch_bench.py --device {args.device}: PyTorch finds no such CUDA GPU")
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for d in args.dirs:
        m = load(d)
        net = m.Net().to(device)
        c, h, w = m.INPUT_SHAPE
        x = torch.rand(args.batch, c, h, w, device=device) * 255.0
        opt = torch.optim.SGD(
            net.parameters(), lr=0.01, momentum=0.9, dampening=0.0, weight_decay=5e-4
        )
        net.train()
        with torch.no_grad():
            classes = net(x[:1]).shape[1]
        y = torch.randint(0, classes, (args.batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        train = timed(step, args.steps, args.warmup, sync)
        net.eval()

        def infer():
            with torch.inference_mode():
                net(x)

        inference = timed(infer, args.steps, args.warmup, sync)
        print(
            json.dumps(
                {
                    "dir": d,
                    "threads": args.threads,
                    "batch": args.batch,
                    "train_step_s": train,
                    "infer_step_s": inference,
                    "torch": torch.__version__,
                    "capability": torch.backends.cpu.get_cpu_capability(),
                    "device": torch.cuda.get_device_name(device) if gpu else "cpu",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
