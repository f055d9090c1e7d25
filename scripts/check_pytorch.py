#!/usr/bin/env python3
"""Round trip of a `c2f export --pytorch` folder through PyTorch.

    c2f export CHECKPOINT --pytorch DIR
    c2f eval CHECKPOINT --dump dump.safetensors
    python3 scripts/check_pytorch.py DIR dump.safetensors tuned.safetensors tuned-dump.safetensors

1. Loads DIR/model.py with DIR/model.safetensors and checks that its logits on the dumped
   pixels equal c2f's (max abs difference <= --tol).
2. Takes one SGD step in PyTorch (seeded labels), saves the state_dict to
   tuned.safetensors and the new logits on the same pixels to tuned-dump.safetensors, for
   `c2f import DIR --weights tuned.safetensors` to be checked against.

Needs torch and safetensors (pip install torch safetensors).
"""

import argparse
import importlib.util
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("dump")
    ap.add_argument("tuned_weights")
    ap.add_argument("tuned_dump")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("model", f"{args.export_dir}/model.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    torch.manual_seed(0)
    net = model.load(f"{args.export_dir}/model.safetensors")
    dump = load_file(args.dump)
    pixels, expected = dump["pixels"], dump["logits"]
    with torch.no_grad():
        got = net(pixels)
    diff = (got - expected).abs().max().item()
    print(f"PyTorch {torch.__version__}: max |torch - c2f| = {diff:.3e} on {len(pixels)} images")
    if not diff <= args.tol:
        sys.exit(f"FAIL: above {args.tol}")
    labels = torch.randint(0, got.shape[1], (len(pixels),))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(net(pixels), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.tuned_weights)
    with torch.no_grad():
        save_file({"pixels": pixels, "logits": net(pixels).contiguous()}, args.tuned_dump)
    print(f"one SGD step (loss {loss.item():.4f}); state_dict in {args.tuned_weights}")


if __name__ == "__main__":
    main()
