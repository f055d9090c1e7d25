//! Resolution upscaling ×2 (the paper's Section III-A/B).
//!
//! Let U be pixel replication (Eq. 5): U(X)[2i + a, 2j + b] = X[i, j] for a, b ∈ {0, 1}.
//!
//! * The first convolution, seeing the replicated image, gets each weight replicated into a
//!   2×2 block and divided by 4 (Eq. 7), kernel 2k, padding 2p, same stride; the bias is
//!   copied. Its output at even positions is the small net's output (Eq. 8):
//!   Y'[2y] = Y[y] — the *lattice*.
//! * Every later spatial layer must read only lattice positions. In exact mode a conv or
//!   max-pool keeps its weights and gets dilation 2d and padding 2p; by induction its
//!   output satisfies Y'[2y] = Y[y] again. In paper mode (Fig. 3) a conv kernel is spread
//!   onto the lattice instead (kernel 2k − 1, old weights at even taps, N(0, σ²) noise in
//!   between) and a pool window widens to 2k − 1, so in-between values leak in.
//! * The first fully connected layer after the maps takes its old weights at lattice
//!   positions; the others are zero (exact) or noise (paper). Later layers are unchanged.
//!
//! * Batch norms keep their values: per channel they are an affine map in evaluation, so
//!   the lattice argument holds for them. In training their statistics are taken over the
//!   whole larger map, lattice and in-between positions alike, so the training-mode
//!   function changes; exactness here is that of evaluation (what the growth check
//!   measures).
//! * An average pool is dilated like a max pool. A global average pool becomes an average
//!   pool over the lattice of the small map (its side, dilation 2): averaging the whole
//!   larger map would mix in the in-between values.
//!
//! In resize mode (progressive resizing) the layers are kept and read the larger image; the
//! first fully connected layer's weights are resampled over the larger map, divided by the
//! ratio of the maps' areas, so that a map that is constant in each block still gives that
//! layer the same inputs. Nothing is dilated, and the function is kept only approximately.
//! A net whose maps end in a global average pool needs no weight change at all: it is
//! trained on with the larger images as it is.
//!
//! Output sides follow: a stride-s layer of output side m becomes one whose side is at
//! least 2m − 1 (exactly 2m − 1 for stride 1 and floor-mode pools); the check below refuses
//! a net where a lattice position would fall outside a map (possible with `ceil_mode`).

use super::{Fresh, Role, UpscaleMode, tensor};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

use crate::net::spec::{
    Conv, InputShape, Layer, NetSpec, Param, Pool, Residual, Shape, param_name,
};
use crate::net::{Tensor, WeightMap};

/// Doubles the input side of a bound spec; see the module documentation.
pub fn upscale(
    spec: &NetSpec,
    map: &WeightMap,
    mode: UpscaleMode,
    sigma: f32,
    role: Role,
    seed: u64,
) -> Result<(NetSpec, WeightMap)> {
    let input = spec
        .input
        .ok_or_else(|| Error::invalid("upscale needs a bound spec"))?;
    let classes = spec
        .classes
        .ok_or_else(|| Error::invalid("upscale needs a bound spec"))?;
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::invalid(format!("upscale σ {sigma} must be ≥ 0")));
    }
    let small_rows = spec.summary()?;
    let mut rules = BTreeMap::new();
    let layers = grown_layers(spec, &small_rows, mode, &mut rules)?;
    let grown = NetSpec {
        name: spec.name.clone(),
        input: Some(InputShape {
            height: 2 * input.height,
            width: 2 * input.width,
            ..input
        }),
        classes: Some(classes),
        layers,
    };
    grown.check_structure()?;
    let big_rows = grown.summary()?;
    if mode != UpscaleMode::Resize {
        check_lattice(spec, &small_rows, &big_rows)?;
    }
    // What each layer reads: the input for the first, the previous layer's output after.
    let reads = |rows: &[crate::net::spec::LayerSummary], side: usize, i: usize| {
        if i == 0 {
            Shape::Map {
                c: input.channels,
                h: side * input.height,
                w: side * input.width,
            }
        } else {
            rows[i - 1].output
        }
    };
    let mut fresh = Fresh::new(role, seed);
    let mut out = WeightMap::new();
    // Every layer with weights, with its index in the net (a block's layers share the
    // block's).
    let leaves = spec
        .layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.leaves().map(move |leaf| (i, leaf)));
    for (i, l) in leaves {
        let Some(name) = l.name() else { continue };
        let rule = rules.get(name).copied().unwrap_or(Rule::Copy);
        if let Layer::BatchNorm(_) = l {
            // Per-channel values: the same channels, the same values.
            for p in [
                Param::Weight,
                Param::Bias,
                Param::RunningMean,
                Param::RunningVar,
            ] {
                let n = param_name(name, p);
                out.insert(n.clone(), tensor(map, &n)?.clone());
            }
            continue;
        }
        let (wn, bn) = (
            param_name(name, Param::Weight),
            param_name(name, Param::Bias),
        );
        let w = tensor(map, &wn)?;
        let b = tensor(map, &bn)?.clone();
        let new_w = match (rule, l) {
            (Rule::Replicate, Layer::Conv(_)) => replicate_kernel(w),
            (Rule::Spread, Layer::Conv(_)) => spread_kernel(w, &mut fresh, sigma),
            (Rule::FcFromMap, Layer::Fc(_)) => {
                match (reads(&small_rows, 1, i), reads(&big_rows, 2, i)) {
                    (Shape::Map { c, h, w: ww }, Shape::Map { h: bh, w: bw, .. }) => match mode {
                        UpscaleMode::Resize => resample_fc(w, c, (h, ww), (bh, bw)),
                        UpscaleMode::Paper => spread_fc(w, c, (h, ww), (bh, bw), &mut fresh, sigma),
                        UpscaleMode::Exact => spread_fc(w, c, (h, ww), (bh, bw), &mut fresh, 0.0),
                    },
                    _ => w.clone(),
                }
            }
            _ => w.clone(),
        };
        out.insert(wn, new_w);
        out.insert(bn, b);
    }
    Ok((grown, out))
}

/// How an upscaled layer's weights derive from the small one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Copy,
    Replicate,
    Spread,
    FcFromMap,
}

/// Each layer of the upscaled net; how each named layer's weights derive from the old goes
/// into `rules`. `rows` is the small net's summary.
fn grown_layers(
    spec: &NetSpec,
    rows: &[crate::net::spec::LayerSummary],
    mode: UpscaleMode,
    rules: &mut BTreeMap<String, Rule>,
) -> Result<Vec<Layer>> {
    let mut state = Walk {
        replicated: true,
        seen_fc: false,
    };
    spec.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (grown, rule) = grown_layer(spec, rows, mode, (i, l), &mut state, rules)?;
            if let Some(n) = l.name() {
                rules.insert(n.to_string(), rule);
            }
            Ok(grown)
        })
        .collect()
}

/// What upscaling has passed: whether the first convolution (which is replicated) is yet
/// to come, and whether the first fully connected layer has been.
struct Walk {
    replicated: bool,
    seen_fc: bool,
}

/// The upscaled form of layer `l` (layer `i` of the net, or of a block inside it) and how
/// its weights derive; a block's layers' rules go into `rules`, by name.
fn grown_layer(
    spec: &NetSpec,
    rows: &[crate::net::spec::LayerSummary],
    mode: UpscaleMode,
    (i, l): (usize, &Layer),
    state: &mut Walk,
    rules: &mut BTreeMap<String, Rule>,
) -> Result<(Layer, Rule)> {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    let Walk {
        replicated,
        seen_fc,
    } = state;
    match l {
        Layer::Fc(_) if !*seen_fc => {
            *seen_fc = true;
            Ok((l.clone(), Rule::FcFromMap))
        }
        other if mode == UpscaleMode::Resize => Ok((other.clone(), Rule::Copy)),
        Layer::Conv(c) if *replicated && c.dilation == 1 => {
            *replicated = false;
            let conv = Conv {
                kernel: 2 * c.kernel,
                padding: 2 * c.padding,
                ..c.clone()
            };
            Ok((Layer::Conv(conv), Rule::Replicate))
        }
        Layer::Conv(c) => {
            *replicated = false;
            match mode {
                UpscaleMode::Exact => {
                    let conv = Conv {
                        dilation: 2 * c.dilation,
                        padding: 2 * c.padding,
                        ..c.clone()
                    };
                    Ok((Layer::Conv(conv), Rule::Copy))
                }
                UpscaleMode::Paper | UpscaleMode::Resize => {
                    let conv = Conv {
                        kernel: 2 * c.kernel - 1,
                        padding: 2 * c.padding,
                        ..c.clone()
                    };
                    Ok((Layer::Conv(conv), Rule::Spread))
                }
            }
        }
        Layer::MaxPool(p) => {
            *replicated = false;
            let grown = match mode {
                UpscaleMode::Exact => Pool {
                    dilation: 2 * p.dilation,
                    padding: 2 * p.padding,
                    ..p.clone()
                },
                UpscaleMode::Paper | UpscaleMode::Resize => Pool {
                    kernel: 2 * p.kernel - 1,
                    padding: 2 * p.padding,
                    stride: Some(p.stride()),
                    ..p.clone()
                },
            };
            Ok((Layer::MaxPool(grown), Rule::Copy))
        }
        // An average over the lattice: the mean of the small net's window (paper mode
        // has no rule of its own for it, and takes this exact one).
        Layer::AvgPool(p) => {
            *replicated = false;
            let grown = Pool {
                dilation: 2 * p.dilation,
                padding: 2 * p.padding,
                ..p.clone()
            };
            Ok((Layer::AvgPool(grown), Rule::Copy))
        }
        // The mean over the lattice of the small map, not over the whole larger map:
        // an average pool of the small map's side, dilated ×2.
        Layer::GlobalAvgPool => {
            *replicated = false;
            Ok((lattice_mean(spec, rows, i)?, Rule::Copy))
        }
        // The sum of two branches each on the lattice is on the lattice.
        Layer::Residual(r) => {
            *replicated = false;
            let mut branch = |layers: &[Layer]| -> Result<Vec<Layer>> {
                layers
                    .iter()
                    .map(|inner| {
                        let (g, rule) = grown_layer(spec, rows, mode, (i, inner), state, rules)?;
                        if let Some(n) = inner.name() {
                            rules.insert(n.to_string(), rule);
                        }
                        Ok(g)
                    })
                    .collect()
            };
            let body = branch(&r.body)?;
            let shortcut = branch(&r.shortcut)?;
            Ok((Layer::Residual(Residual { body, shortcut }), Rule::Copy))
        }
        other => Ok((other.clone(), Rule::Copy)),
    }
}

/// The upscaled form of the global average pool at layer `i`: the mean over the lattice of
/// the small map (window its side, dilation 2), not over the whole larger map, which would
/// mix in the in-between values.
fn lattice_mean(
    spec: &NetSpec,
    rows: &[crate::net::spec::LayerSummary],
    i: usize,
) -> Result<Layer> {
    let input = if i == 0 {
        spec.input.map(|s| (s.height, s.width))
    } else {
        match rows[i - 1].output {
            Shape::Map { h, w, .. } => Some((h, w)),
            Shape::Flat(_) => None,
        }
    };
    match input {
        Some((h, w)) if h == w => Ok(Layer::AvgPool(Pool {
            kernel: h,
            stride: Some(1),
            padding: 0,
            dilation: 2,
            ceil_mode: false,
        })),
        _ => Err(Error::invalid(format!(
            "net {:?}, layer {} (global-avg-pool): an exact upscale needs a square map before it; upscale with mode resize instead",
            spec.name,
            i + 1
        ))),
    }
}

/// Every map of the upscaled net must still hold the lattice of the small net's positions.
fn check_lattice(
    spec: &NetSpec,
    small: &[crate::net::spec::LayerSummary],
    big: &[crate::net::spec::LayerSummary],
) -> Result<()> {
    for (i, (s, b)) in small.iter().zip(big).enumerate() {
        if let (Shape::Map { h, w, .. }, Shape::Map { h: bh, w: bw, .. }) = (s.output, b.output)
            && (bh < 2 * h - 1 || bw < 2 * w - 1)
        {
            return Err(Error::invalid(format!(
                "net {:?}, layer {} ({}): upscaled output {bh}×{bw} cannot hold the {h}×{w} lattice (ceil-mode pooling?)",
                spec.name,
                i + 1,
                spec.layers[i].describe()
            )));
        }
    }
    Ok(())
}

/// Eq. 7: every tap becomes a 2×2 block of a quarter of its value.
fn replicate_kernel(w: &Tensor) -> Tensor {
    let (o, i, k) = (w.shape[0], w.shape[1], w.shape[2]);
    let k2 = 2 * k;
    let mut t = Tensor::zeros(&[o, i, k2, k2]);
    for oi in 0..o * i {
        for y in 0..k2 {
            for x in 0..k2 {
                t.data[(oi * k2 + y) * k2 + x] = w.data[(oi * k + y / 2) * k + x / 2] / 4.0;
            }
        }
    }
    t
}

/// Fig. 3: old taps at even positions of a (2k − 1)-kernel, noise in between.
fn spread_kernel(w: &Tensor, fresh: &mut Fresh, sigma: f32) -> Tensor {
    let (o, i, k) = (w.shape[0], w.shape[1], w.shape[2]);
    let k2 = 2 * k - 1;
    let mut t = Tensor::zeros(&[o, i, k2, k2]);
    for oi in 0..o * i {
        for y in 0..k2 {
            for x in 0..k2 {
                t.data[(oi * k2 + y) * k2 + x] = if y % 2 == 0 && x % 2 == 0 {
                    w.data[(oi * k + y / 2) * k + x / 2]
                } else {
                    fresh.gauss(sigma)
                };
            }
        }
    }
    t
}

/// First fully connected layer: old weights at lattice positions of each channel's map.
/// The first fully connected layer of a resized net: each channel's weight plane over the
/// small `h × w` map resampled (nearest) over the big one, divided by the ratio of areas.
fn resample_fc(w: &Tensor, channels: usize, small: (usize, usize), big: (usize, usize)) -> Tensor {
    let outputs = w.shape[0];
    let ((h, ww), (bh, bw)) = (small, big);
    let (n_small, n_big) = (channels * h * ww, channels * bh * bw);
    let scale = (h * ww) as f32 / (bh * bw) as f32;
    let mut t = Tensor::zeros(&[outputs, n_big]);
    for o in 0..outputs {
        for c in 0..channels {
            for y in 0..bh {
                for x in 0..bw {
                    let (sy, sx) = (y * h / bh, x * ww / bw);
                    t.data[o * n_big + (c * bh + y) * bw + x] =
                        w.data[o * n_small + (c * h + sy) * ww + sx] * scale;
                }
            }
        }
    }
    t
}

fn spread_fc(
    w: &Tensor,
    channels: usize,
    small: (usize, usize),
    big: (usize, usize),
    fresh: &mut Fresh,
    sigma: f32,
) -> Tensor {
    let outputs = w.shape[0];
    let (h, ww) = small;
    let (bh, bw) = big;
    let (n_small, n_big) = (channels * h * ww, channels * bh * bw);
    let mut t = Tensor::zeros(&[outputs, n_big]);
    for o in 0..outputs {
        for c in 0..channels {
            for y in 0..bh {
                for x in 0..bw {
                    let v = if y % 2 == 0 && x % 2 == 0 && y / 2 < h && x / 2 < ww {
                        w.data[o * n_small + (c * h + y / 2) * ww + x / 2]
                    } else {
                        fresh.gauss(sigma)
                    };
                    t.data[o * n_big + (c * bh + y) * bw + x] = v;
                }
            }
        }
    }
    t
}
