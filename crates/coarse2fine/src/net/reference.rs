//! A plain-Rust forward pass: slow, obvious, framework-free.
//!
//! It computes in `f64` (weights and inputs are `f32`), so that as an oracle it is far more
//! precise than what it checks: a grown net sums many more, smaller terms than the small
//! one, and with `f32` sums their rounding can exceed the 1e-5 tolerance of exact growth
//! when logits nearly cancel.
//!
//! It is the oracle that the framework backend is tested against, and lets invariants of
//! specs and weights (such as growth preserving a network's function) be checked without
//! any deep-learning framework. Layouts follow PyTorch: inputs `N × C × H × W`, conv
//! weights `out × in × kh × kw` applied as cross-correlation, flattening channel-major.

use super::spec::{Layer, LayerSummary, NetSpec, Param, Shape, input_map, param_name};
use super::weights::WeightMap;
use crate::error::{Error, Result};

fn tensor(w: &WeightMap, name: &str) -> Result<Vec<f64>> {
    w.get(name)
        .map(|t| t.data.iter().map(|&v| f64::from(v)).collect())
        .ok_or_else(|| Error::invalid(format!("missing tensor {name:?}")))
}

/// Logits (`n × classes`, row-major) of a bound spec for `n` images in `x`.
pub fn forward(spec: &NetSpec, weights: &WeightMap, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let input = spec
        .input
        .ok_or_else(|| Error::invalid("spec is not bound"))?;
    let rows = spec.summary()?;
    let shape = input_map(input);
    if x.len() != n * shape.numel() {
        return Err(Error::invalid(format!(
            "input has {} values, expected {}",
            x.len(),
            n * shape.numel()
        )));
    }
    let a: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let a = run(spec, weights, spec.logit_layers(), (&rows, shape), a, n)?;
    // Rounded once, at the end.
    Ok(a.into_iter().map(|v| v as f32).collect())
}

/// `layers` (the net's, or a residual block's branch), with their summary `rows`, applied
/// to `n` inputs `a` of `shape`.
fn run(
    spec: &NetSpec,
    weights: &WeightMap,
    layers: &[Layer],
    (rows, mut shape): (&[LayerSummary], Shape),
    mut a: Vec<f64>,
    n: usize,
) -> Result<Vec<f64>> {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    for (layer, row) in layers.iter().zip(rows) {
        let out = row.output;
        a = match (layer, shape, out) {
            (
                Layer::Conv(c),
                Shape::Map { c: ci, h, w },
                Shape::Map {
                    c: co,
                    h: oh,
                    w: ow,
                },
            ) => {
                let wt = tensor(weights, &param_name(&c.name, Param::Weight))?;
                let b = tensor(weights, &param_name(&c.name, Param::Bias))?;
                let k = c.kernel;
                let mut y = vec![0f64; n * co * oh * ow];
                for i in 0..n {
                    for o in 0..co {
                        for yy in 0..oh {
                            for xx in 0..ow {
                                let mut s = b[o];
                                for q in 0..ci {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let iy = (yy * c.stride + ky * c.dilation) as isize
                                                - c.padding as isize;
                                            let ix = (xx * c.stride + kx * c.dilation) as isize
                                                - c.padding as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy >= h as isize
                                                || ix >= w as isize
                                            {
                                                continue;
                                            }
                                            let v = a[((i * ci + q) * h + iy as usize) * w
                                                + ix as usize];
                                            s += v * wt[((o * ci + q) * k + ky) * k + kx];
                                        }
                                    }
                                }
                                y[((i * co + o) * oh + yy) * ow + xx] = s;
                            }
                        }
                    }
                }
                y
            }
            (Layer::MaxPool(p), Shape::Map { c, h, w }, Shape::Map { h: oh, w: ow, .. }) => {
                let mut y = vec![f64::NEG_INFINITY; n * c * oh * ow];
                for i in 0..n * c {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut m = f64::NEG_INFINITY;
                            for ky in 0..p.kernel {
                                for kx in 0..p.kernel {
                                    let iy = (yy * p.stride() + ky * p.dilation) as isize
                                        - p.padding as isize;
                                    let ix = (xx * p.stride() + kx * p.dilation) as isize
                                        - p.padding as isize;
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        m = m.max(a[(i * h + iy as usize) * w + ix as usize]);
                                    }
                                }
                            }
                            y[(i * oh + yy) * ow + xx] = m;
                        }
                    }
                }
                y
            }
            (Layer::AvgPool(p), Shape::Map { c, h, w }, Shape::Map { h: oh, w: ow, .. }) => {
                let mut y = vec![0f64; n * c * oh * ow];
                let area = (p.kernel * p.kernel) as f64;
                for i in 0..n * c {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut s = 0.0;
                            for ky in 0..p.kernel {
                                for kx in 0..p.kernel {
                                    let iy = (yy * p.stride() + ky * p.dilation) as isize
                                        - p.padding as isize;
                                    let ix = (xx * p.stride() + kx * p.dilation) as isize
                                        - p.padding as isize;
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        s += a[(i * h + iy as usize) * w + ix as usize];
                                    }
                                }
                            }
                            y[(i * oh + yy) * ow + xx] = s / area;
                        }
                    }
                }
                y
            }
            (Layer::GlobalAvgPool, Shape::Map { h, w, .. }, _) => a
                .chunks_exact(h * w)
                .map(|m| m.iter().sum::<f64>() / (h * w) as f64)
                .collect(),
            // Evaluation: the running statistics stand in for the batch's.
            (Layer::BatchNorm(b), Shape::Map { c, h, w }, _) => {
                let t = |p| tensor(weights, &param_name(&b.name, p));
                let (g, beta) = (t(Param::Weight)?, t(Param::Bias)?);
                let (mean, var) = (t(Param::RunningMean)?, t(Param::RunningVar)?);
                let plane = h * w;
                a.iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        let q = j / plane % c;
                        g[q] * (v - mean[q]) / (var[q] + f64::from(b.eps)).sqrt() + beta[q]
                    })
                    .collect()
            }
            (Layer::Lrn(l), Shape::Map { c, h, w }, _) => {
                let half = (l.size - 1) / 2;
                let plane = h * w;
                let mut y = a.clone();
                for i in 0..n {
                    for q in 0..c {
                        for p in 0..plane {
                            let lo = q.saturating_sub(half);
                            let hi = (q + half).min(c - 1);
                            let sum: f64 =
                                (lo..=hi).map(|r| a[(i * c + r) * plane + p].powi(2)).sum();
                            let scale = f64::from(l.k) + f64::from(l.alpha) / l.size as f64 * sum;
                            y[(i * c + q) * plane + p] =
                                a[(i * c + q) * plane + p] / scale.powf(f64::from(l.beta));
                        }
                    }
                }
                y
            }
            (Layer::Fc(f), s, _) => {
                let inputs = s.numel();
                let outputs = spec.units(f.outputs)?;
                let wt = tensor(weights, &param_name(&f.name, Param::Weight))?;
                let b = tensor(weights, &param_name(&f.name, Param::Bias))?;
                let mut y = vec![0f64; n * outputs];
                for i in 0..n {
                    for o in 0..outputs {
                        let row = &wt[o * inputs..(o + 1) * inputs];
                        let xi = &a[i * inputs..(i + 1) * inputs];
                        y[i * outputs + o] =
                            b[o] + row.iter().zip(xi).map(|(p, q)| p * q).sum::<f64>();
                    }
                }
                y
            }
            (Layer::Relu, _, _) => a.into_iter().map(|v| v.max(0.0)).collect(),
            (Layer::Dropout(_) | Layer::Softmax, _, _) => a,
            (Layer::Residual(r), s, _) => {
                let branch = |ls: &[Layer], a: Vec<f64>| {
                    run(spec, weights, ls, (&spec.rows(ls, s, "")?, s), a, n)
                };
                let body = branch(&r.body, a.clone())?;
                let shortcut = branch(&r.shortcut, a)?;
                body.iter().zip(&shortcut).map(|(p, q)| p + q).collect()
            }
            (l, s, _) => {
                return Err(Error::invalid(format!(
                    "layer {} cannot take a {s} input",
                    l.describe()
                )));
            }
        };
        shape = out;
    }
    Ok(a)
}
