#!/usr/bin/env python3
"""Independent cross-check of coarse2fine's growth operators, in NumPy (float64).

Rebuilds both networks from their checkpoint folders (spec.json + weights.safetensors),
runs the small net on random images and the grown net on the same images
pixel-replicated to its input size (the paper's Eq. 5), and compares the logits.

    python3 scripts/crosscheck_growth.py SMALL_CHECKPOINT GROWN_CHECKPOINT [--tol 1e-5]

Exits 1 if the relative error ||g - f|| / ||f|| exceeds --tol. Needs only NumPy: the
safetensors file is parsed directly (8-byte header length, JSON header, raw data).
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np


def load_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out


def window_out(size, kernel, stride, pad, dil, ceil):
    span = dil * (kernel - 1) + 1
    room = size + 2 * pad - span
    out = (-(-room // stride) if ceil else room // stride) + 1
    if ceil and pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def taps(x, k, stride, dil, oh, ow):
    """Yields (ky, kx, patch) with patch[n, c, i, j] = x[n, c, i*stride + ky*dil, j*stride + kx*dil]."""
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * dil, kx * dil
            yield ky, kx, x[:, :, y0 : y0 + stride * (oh - 1) + 1 : stride, x0 : x0 + stride * (ow - 1) + 1 : stride]


def conv(x, w, b, layer):
    k, s = layer["kernel"], layer.get("stride", 1)
    p, d = layer.get("padding", 0), layer.get("dilation", 1)
    n, c, h, wd = x.shape
    oh, ow = window_out(h, k, s, p, d, False), window_out(wd, k, s, p, d, False)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, w.shape[0], oh, ow)) + b[None, :, None, None]
    for ky, kx, patch in taps(xp, k, s, d, oh, ow):
        out += np.einsum("nchw,oc->nohw", patch, w[:, :, ky, kx])
    return out


def max_pool(x, layer):
    k = layer["kernel"]
    s = layer.get("stride") or k
    p, d, ceil = layer.get("padding", 0), layer.get("dilation", 1), layer.get("ceil_mode", False)
    n, c, h, wd = x.shape
    oh, ow = window_out(h, k, s, p, d, ceil), window_out(wd, k, s, p, d, ceil)
    extra = s * (max(oh, ow) + 1) + d * k
    xp = np.pad(x, ((0, 0), (0, 0), (p, extra), (p, extra)), constant_values=-np.inf)
    out = np.full((n, c, oh, ow), -np.inf)
    for _, _, patch in taps(xp, k, s, d, oh, ow):
        out = np.maximum(out, patch)
    return out


def avg_pool(x, layer):
    """Window sums over input positions divided by kernel² (padding counts as zeros)."""
    k = layer["kernel"]
    s = layer.get("stride") or k
    p, d = layer.get("padding", 0), layer.get("dilation", 1)
    n, c, h, wd = x.shape
    oh, ow = window_out(h, k, s, p, d, False), window_out(wd, k, s, p, d, False)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, c, oh, ow))
    for _, _, patch in taps(xp, k, s, d, oh, ow):
        out += patch
    return out / (k * k)


def batch_norm(x, w, layer):
    """Evaluation: the running statistics stand in for the batch's."""
    name, eps = layer["name"], layer.get("eps", 1e-5)
    per = lambda t: w[f"{name}.{t}"][None, :, None, None]  # noqa: E731
    return per("weight") * (x - per("running_mean")) / np.sqrt(per("running_var") + eps) + per("bias")


def lrn(x, layer):
    size, alpha = layer.get("size", 5), layer.get("alpha", 1e-4)
    beta, kk = layer.get("beta", 0.75), layer.get("k", 1.0)
    half = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    total = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (kk + alpha / size * total) ** beta


def forward(spec, w, x):
    return run(spec["layers"], w, x)


def run(layers, w, x):
    for layer in layers:
        t = layer["type"]
        if t == "conv":
            x = conv(x, w[layer["name"] + ".weight"], w[layer["name"] + ".bias"], layer)
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "max_pool":
            x = max_pool(x, layer)
        elif t == "lrn":
            x = lrn(x, layer)
        elif t == "avg_pool":
            x = avg_pool(x, layer)
        elif t == "global_avg_pool":
            x = x.mean(axis=(2, 3), keepdims=True)
        elif t == "batch_norm":
            x = batch_norm(x, w, layer)
        elif t == "fc":
            x = x.reshape(x.shape[0], -1) @ w[layer["name"] + ".weight"].T + w[layer["name"] + ".bias"]
        elif t in ("dropout", "softmax"):
            pass
        elif t == "residual":
            x = run(layer["body"], w, x) + run(layer.get("shortcut", []), w, x)
        else:
            raise SystemExit(f"unknown layer type {t!r}")
    return x


def load(folder):
    folder = Path(folder)
    if (folder / "checkpoint" / "spec.json").is_file():
        folder = folder / "checkpoint"
    spec = json.loads((folder / "spec.json").read_text())
    return spec, load_safetensors(folder / "weights.safetensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("small")
    ap.add_argument("grown")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    (fs, fw), (gs, gw) = load(args.small), load(args.grown)
    si, gi = fs["input"], gs["input"]
    factor = gi["height"] // si["height"]
    if gi["height"] != factor * si["height"] or gi["width"] != factor * si["width"]:
        raise SystemExit("input sizes do not differ by an integer factor")
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.images, si["channels"], si["height"], si["width"]))
    up = np.repeat(np.repeat(x, factor, axis=2), factor, axis=3)
    f, g = forward(fs, fw, x), forward(gs, gw, up)
    rel = np.linalg.norm(g - f) / np.linalg.norm(f)
    agree = float(np.mean(f.argmax(1) == g.argmax(1)))
    print(json.dumps({"images": args.images, "factor": factor, "max_abs": float(np.abs(g - f).max()), "rel": float(rel), "top1_agreement": agree}))
    if not rel <= args.tol:
        print(f"relative error {rel:.3e} exceeds {args.tol:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
