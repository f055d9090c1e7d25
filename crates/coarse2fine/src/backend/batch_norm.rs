//! Batch normalisation in the native engine's block layout.
//!
//! A block holds `C × images × H × W` values, so each channel is one contiguous run per
//! block. Training needs statistics over the whole batch, that is over every block: each
//! block sums its runs and their squares (in `f64`, one pass), and the sums are added in
//! block order, so the result does not depend on how many threads ran the blocks.

use super::kernels::{add_lanes, vectorized};

/// A batch norm's per-channel values over one batch: what the forward pass computed and
/// the backward pass reuses.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchStats {
    /// Batch mean.
    pub mean: Vec<f32>,
    /// `1 / √(σ²_B + ε)`, with the biased batch variance σ²_B.
    pub inv_std: Vec<f32>,
    /// Unbiased batch variance, for the running average.
    pub var_unbiased: Vec<f32>,
}

/// Partial sums per channel run: each value goes to partial sum `i mod LANES`, and the
/// partials are added in a fixed order at the end. With fixed lanes the result does not
/// depend on the vector width the loop was compiled for, and there is no single chain of
/// dependent additions to wait on.
const LANES: usize = 16;

/// `(Σ x, Σ x²)` of one channel run, in `f64`.
#[inline(always)]
fn run_moments(xs: &[f32]) -> (f64, f64) {
    let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
    let mut add = |c: &[f32]| {
        for ((a, b), &v) in s1.iter_mut().zip(s2.iter_mut()).zip(c) {
            let v = f64::from(v);
            *a += v;
            *b += v * v;
        }
    };
    let (whole, tail) = xs.as_chunks::<LANES>();
    for c in whole {
        add(c);
    }
    add(tail);
    (add_lanes(s1), add_lanes(s2))
}

/// Per-channel `Σ x` and `Σ x²` of one block: `2 × C` values, the sums first. One pass
/// over the block: squares of `f32` values are exact in `f64` and the sums keep 29 more
/// bits than `f32`, so the variance `Σx²/M − mean²` loses to cancellation only when the
/// mean is some 10⁴ standard deviations from zero or more.
pub(crate) fn channel_moments(x: &[f32], channels: usize) -> Vec<f64> {
    let mut sums = vec![0.0; 2 * channels];
    let out = &mut sums[..];
    vectorized!(channel_moments_in(x: &[f32], out: &mut [f64]));
    sums
}

#[inline(always)]
fn channel_moments_in(x: &[f32], out: &mut [f64]) {
    let channels = out.len() / 2;
    let run = x.len() / channels.max(1);
    let (s1, s2) = out.split_at_mut(channels);
    for ((a, b), xs) in s1.iter_mut().zip(s2).zip(x.chunks_exact(run.max(1))) {
        (*a, *b) = run_moments(xs);
    }
}

/// Adds per-block sums in block order.
pub(crate) fn add_blocks(parts: &[Vec<f64>], channels: usize) -> Vec<f64> {
    let mut total = vec![0.0; channels];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// The batch statistics of `count` values per channel from their moments
/// ([`channel_moments`], summed over the blocks).
pub(crate) fn batch_stats(moments: &[f64], count: usize, eps: f32) -> BatchStats {
    let m = count as f64;
    let (s1, s2) = moments.split_at(moments.len() / 2);
    let mut s = BatchStats::default();
    for (&a, &b) in s1.iter().zip(s2) {
        let mean = a / m;
        // Σ(x − mean)², never below zero however the sums rounded.
        let sq = (b - a * mean).max(0.0);
        s.mean.push(mean as f32);
        s.inv_std
            .push((1.0 / (sq / m + f64::from(eps)).sqrt()) as f32);
        s.var_unbiased.push((sq / (m - 1.0).max(1.0)) as f32);
    }
    s
}

vectorized! {
    /// `y = x·scale + shift` per channel of one block, plus `z` (a residual block's other
    /// branch) if given, then a ReLU if `relu`.
    pub(crate) fn affine = affine_in(
        x: &[f32],
        y: &mut [f32],
        affine: (&[f32], &[f32]),
        z: Option<&[f32]>,
        relu: bool,
    );
}

#[inline(always)]
fn affine_in(
    x: &[f32],
    y: &mut [f32],
    (scale, shift): (&[f32], &[f32]),
    z: Option<&[f32]>,
    relu: bool,
) {
    let run = x.len() / scale.len().max(1);
    let per_channel = x
        .chunks_exact(run.max(1))
        .zip(y.chunks_exact_mut(run.max(1)))
        .zip(scale.iter().zip(shift));
    match z {
        None => {
            for ((xs, ys), (&a, &b)) in per_channel {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    let t = v * a + b;
                    *o = if relu { t.max(0.0) } else { t };
                }
            }
        }
        Some(z) => {
            for (((xs, ys), (&a, &b)), zs) in per_channel.zip(z.chunks_exact(run.max(1))) {
                for ((o, &v), &w) in ys.iter_mut().zip(xs).zip(zs) {
                    let t = (v * a + b) + w;
                    *o = if relu { t.max(0.0) } else { t };
                }
            }
        }
    }
}

/// Per-channel `Σ dy` and `Σ dy·x̂` of one block, `x̂ = (x − mean)·inv_std`. With `y`,
/// the output of the ReLU that followed, `dy` is first zeroed where `y ≤ 0`, in place:
/// the ReLU's backward pass without a pass of its own.
pub(crate) fn gradient_sums(
    x: &[f32],
    dy: &mut [f32],
    y: Option<&[f32]>,
    s: &BatchStats,
) -> Vec<f64> {
    let mut sums = vec![0.0; 2 * s.mean.len()];
    let out = &mut sums[..];
    vectorized!(gradient_sums_in(
        x: &[f32],
        dy: &mut [f32],
        y: Option<&[f32]>,
        s: &BatchStats,
        out: &mut [f64]
    ));
    sums
}

#[inline(always)]
fn gradient_sums_in(x: &[f32], dy: &mut [f32], y: Option<&[f32]>, s: &BatchStats, out: &mut [f64]) {
    if let Some(y) = y {
        for (d, &v) in dy.iter_mut().zip(y) {
            *d = if v <= 0.0 { 0.0 } else { *d };
        }
    }
    let dy = &*dy;
    let channels = s.mean.len();
    let run = x.len() / channels.max(1);
    let (sums_dy, sums_dx) = out.split_at_mut(channels);
    for (c, (xs, ds)) in x
        .chunks_exact(run.max(1))
        .zip(dy.chunks_exact(run.max(1)))
        .take(channels)
        .enumerate()
    {
        let (m, inv) = (s.mean[c], s.inv_std[c]);
        let (mut sd, mut sdx) = ([0.0f64; LANES], [0.0f64; LANES]);
        let mut add = |v: &[f32], d: &[f32]| {
            for (((a, b), &v), &d) in sd.iter_mut().zip(sdx.iter_mut()).zip(v).zip(d) {
                *a += f64::from(d);
                *b += f64::from(d * (v - m) * inv);
            }
        };
        let ((vc, vt), (dc, dt)) = (xs.as_chunks::<LANES>(), ds.as_chunks::<LANES>());
        for (v, d) in vc.iter().zip(dc) {
            add(v, d);
        }
        add(vt, dt);
        sums_dy[c] = add_lanes(sd);
        sums_dx[c] = add_lanes(sdx);
    }
}

vectorized! {
    /// Input gradient of one block in training mode:
    /// `dx = γ·inv_std/M · (M·dy − Σdy − x̂·Σ(dy·x̂))` over the `count` values per channel,
    /// with `sums` = (Σdy, Σdy·x̂).
    pub(crate) fn input_gradient = input_gradient_in(
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        s: &BatchStats,
        gamma: &[f32],
        sums: (&[f32], &[f32]),
        count: usize,
    );
}

#[inline(always)]
fn input_gradient_in(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    s: &BatchStats,
    gamma: &[f32],
    (sum_dy, sum_dy_xhat): (&[f32], &[f32]),
    count: usize,
) {
    let run = x.len() / gamma.len().max(1);
    let m = count as f32;
    for (c, ((xs, ds), dxs)) in x
        .chunks_exact(run.max(1))
        .zip(dy.chunks_exact(run.max(1)))
        .zip(dx.chunks_exact_mut(run.max(1)))
        .enumerate()
    {
        let (mean, inv) = (s.mean[c], s.inv_std[c]);
        let k = gamma[c] * inv / m;
        let (a, b) = (sum_dy[c], sum_dy_xhat[c]);
        for ((o, &v), &d) in dxs.iter_mut().zip(xs).zip(ds) {
            let xhat = (v - mean) * inv;
            *o = k * (m * d - a - xhat * b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One block's forward and backward against the formulas written out in `f64`, with a
    /// finite-difference check of one input's gradient.
    #[test]
    fn forward_and_backward_match_the_formulas() {
        let (c, m) = (2usize, 6usize);
        let x: Vec<f32> = (0..c * m)
            .map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let gamma = [1.5f32, -0.5];
        let beta = [0.2f32, 0.1];
        let eps = 1e-5;
        let st = batch_stats(&channel_moments(&x, c), m, eps);
        let scale: Vec<f32> = (0..c).map(|i| gamma[i] * st.inv_std[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - st.mean[i] * scale[i]).collect();
        let mut y = vec![0.0; c * m];
        affine(&x, &mut y, (&scale, &shift), None, false);
        // Loss L = Σ w·y with fixed weights w: dL/dy = w.
        let w: Vec<f32> = (0..c * m).map(|i| (i as f32 * 0.37).sin()).collect();
        let loss = |x: &[f64]| -> f64 {
            let mut l = 0.0;
            for ch in 0..c {
                let xs = &x[ch * m..][..m];
                let mu = xs.iter().sum::<f64>() / m as f64;
                let var = xs.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m as f64;
                for (j, v) in xs.iter().enumerate() {
                    let yv = f64::from(gamma[ch]) * (v - mu) / (var + f64::from(eps)).sqrt()
                        + f64::from(beta[ch]);
                    l += f64::from(w[ch * m + j]) * yv;
                }
            }
            l
        };
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let g = gradient_sums(&x, &mut w.clone(), None, &st);
        let (sd, sdx): (Vec<f32>, Vec<f32>) = (
            g[..c].iter().map(|&v| v as f32).collect(),
            g[c..].iter().map(|&v| v as f32).collect(),
        );
        let mut dx = vec![0.0; c * m];
        input_gradient(&x, &w, &mut dx, &st, &gamma, (&sd, &sdx), m);
        for j in [0, 3, 7, 11] {
            let h = 1e-4;
            let (mut up, mut down) = (x64.clone(), x64.clone());
            up[j] += h;
            down[j] -= h;
            let fd = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (fd - f64::from(dx[j])).abs() < 1e-3,
                "x[{j}]: {fd} vs {}",
                dx[j]
            );
        }
        // Normalised outputs have mean β and variance γ² (biased, up to ε).
        for ch in 0..c {
            let ys = &y[ch * m..][..m];
            let mu = ys.iter().map(|&v| f64::from(v)).sum::<f64>() / m as f64;
            let var = ys.iter().map(|&v| (f64::from(v) - mu).powi(2)).sum::<f64>() / m as f64;
            assert!((mu - f64::from(beta[ch])).abs() < 1e-5, "mean {mu}");
            assert!(
                (var - f64::from(gamma[ch]).powi(2)).abs() < 1e-3,
                "var {var}"
            );
        }
    }
}
