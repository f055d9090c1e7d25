//! Numerical checks that a grown network computes what the small one did.
//!
//! Both networks run on the same images: the small one at its size, the grown one on the
//! pixel-replicated images (Eq. 5) when it has a larger input. The report gives the largest
//! absolute difference of logits, the relative error ‖g − f‖₂ / ‖f‖₂ over all logits, and
//! the fraction of images whose top-1 class agrees.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::GrowOp;
#[cfg(feature = "training")]
use crate::backend::Network;
use crate::data::loader::Batch;
#[cfg(feature = "training")]
use crate::error::{Error, Result};

/// Relative error an exact operator must stay within.
pub const EXACT_TOLERANCE: f64 = 1e-5;

/// How closely two networks' logits agree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Images compared.
    pub images: usize,
    /// Largest |g − f| over all logits.
    pub max_abs: f64,
    /// ‖g − f‖₂ / ‖f‖₂ over all logits.
    pub rel: f64,
    /// Fraction of images with the same top-1 class.
    pub top1_agreement: f64,
}

/// Compares logits of `n` images.
pub fn compare(f: &[f32], g: &[f32], n: usize) -> Agreement {
    let k = f.len().checked_div(n).unwrap_or(0).max(1);
    let (mut max_abs, mut diff2, mut norm2) = (0f64, 0f64, 0f64);
    for (&a, &b) in f.iter().zip(g) {
        let d = f64::from(a) - f64::from(b);
        max_abs = max_abs.max(d.abs());
        diff2 += d * d;
        norm2 += f64::from(a) * f64::from(a);
    }
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0
    };
    let agree = f
        .chunks_exact(k)
        .zip(g.chunks_exact(k))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    Agreement {
        images: n,
        max_abs,
        rel: if norm2 > 0.0 {
            (diff2 / norm2).sqrt()
        } else {
            diff2.sqrt()
        },
        top1_agreement: agree as f64 / n.max(1) as f64,
    }
}

/// Merges agreements of several batches (exact for max and agreement, and for the
/// relative error when given the batches' squared norms).
#[cfg(feature = "training")]
fn merge(parts: &[(Agreement, f64)]) -> Agreement {
    let images: usize = parts.iter().map(|(a, _)| a.images).sum();
    let norm2: f64 = parts.iter().map(|(_, n)| n).sum();
    let diff2: f64 = parts.iter().map(|(a, n)| (a.rel * a.rel) * n).sum();
    Agreement {
        images,
        max_abs: parts.iter().map(|(a, _)| a.max_abs).fold(0.0, f64::max),
        rel: if norm2 > 0.0 {
            (diff2 / norm2).sqrt()
        } else {
            0.0
        },
        top1_agreement: parts
            .iter()
            .map(|(a, _)| a.top1_agreement * a.images as f64)
            .sum::<f64>()
            / images.max(1) as f64,
    }
}

/// Pixel replication by an integer `factor` (Eq. 5).
pub fn upsample(batch: &Batch, factor: usize) -> Batch {
    if factor == 1 {
        return batch.clone();
    }
    let [n, c, h, w] = batch.shape;
    let (bh, bw) = (h * factor, w * factor);
    let mut images = vec![0f32; n * c * bh * bw];
    for p in 0..n * c {
        for y in 0..bh {
            for x in 0..bw {
                images[(p * bh + y) * bw + x] = batch.images[(p * h + y / factor) * w + x / factor];
            }
        }
    }
    Batch {
        images,
        labels: batch.labels.clone(),
        shape: [n, c, bh, bw],
    }
}

/// `n` images of N(0, 1) noise.
pub fn random_batch(shape: [usize; 4], seed: u64) -> Batch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let len = shape.iter().product();
    let images = (0..len).map(|_| StandardNormal.sample(&mut rng)).collect();
    Batch {
        images,
        labels: vec![0; shape[0]],
        shape,
    }
}

/// Results of one verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The operators checked (empty when two arbitrary nets were compared).
    pub ops: Vec<GrowOp>,
    /// Whether every operator promises exact preservation.
    pub exact: bool,
    /// Input upsampling factor from the small to the grown net.
    pub factor: usize,
    /// On real images, if any were given.
    pub data: Option<Agreement>,
    /// On random N(0, 1) images.
    pub random: Agreement,
}

impl Verification {
    /// Whether an exact operator kept its promise (always true for approximate ones).
    pub fn holds(&self) -> bool {
        !self.exact
            || (self.random.rel <= EXACT_TOLERANCE
                && self.data.is_none_or(|d| d.rel <= EXACT_TOLERANCE))
    }
}

/// Compares `small` and `grown` on `batches` (images at the small net's size) and on
/// `random` noise images.
#[cfg(feature = "training")]
pub fn check(
    small: &Network,
    grown: &Network,
    batches: &[Batch],
    random: usize,
    seed: u64,
    ops: &[GrowOp],
) -> Result<Verification> {
    let (si, gi) = (
        small
            .spec()
            .input
            .ok_or_else(|| Error::invalid("small net is not bound"))?,
        grown
            .spec()
            .input
            .ok_or_else(|| Error::invalid("grown net is not bound"))?,
    );
    if gi.channels != si.channels
        || gi.height % si.height != 0
        || gi.width % si.width != 0
        || gi.height / si.height != gi.width / si.width
    {
        return Err(Error::invalid(format!(
            "cannot compare a {}×{}×{} net with a {}×{}×{} one: sizes must differ by an integer factor",
            si.channels, si.height, si.width, gi.channels, gi.height, gi.width
        )));
    }
    let factor = gi.height / si.height;
    let run = |b: &Batch| -> Result<(Agreement, f64)> {
        let f = small.logits(b)?;
        let g = grown.logits(&upsample(b, factor))?;
        if f.len() != g.len() {
            return Err(Error::invalid(
                "the two nets have different numbers of classes",
            ));
        }
        let norm2 = f.iter().map(|v| f64::from(*v).powi(2)).sum();
        Ok((compare(&f, &g, b.len()), norm2))
    };
    let data = if batches.is_empty() {
        None
    } else {
        Some(merge(&batches.iter().map(run).collect::<Result<Vec<_>>>()?))
    };
    let rb = random_batch([random.max(1), si.channels, si.height, si.width], seed);
    let random = run(&rb)?.0;
    Ok(Verification {
        exact: ops.iter().all(|o| o.is_exact_on(small.spec())),
        ops: ops.to_vec(),
        factor,
        data,
        random,
    })
}

/// A network grown by [`grow_checked`].
#[cfg(feature = "training")]
#[derive(Debug, Clone)]
pub struct Grown {
    /// Grown spec.
    pub spec: crate::net::NetSpec,
    /// Grown weights.
    pub weights: crate::net::WeightMap,
    /// Momentum buffers moved along, if given.
    pub momentum: Option<crate::net::WeightMap>,
    /// One check per operator.
    pub checks: Vec<Verification>,
    /// Seconds spent in the operators themselves.
    pub grow_seconds: f64,
    /// Seconds spent checking.
    pub check_seconds: f64,
}

/// What [`grow_checked`] applies and checks: the operators in order, the real images the
/// steps are compared on (at the first net's size, replicated as the input grows) and the
/// seed of new weights.
#[cfg(feature = "training")]
#[derive(Debug, Clone, Copy)]
pub struct Growth<'a> {
    /// Operators, in order.
    pub ops: &'a [GrowOp],
    /// Real images at the starting net's size.
    pub batches: &'a [Batch],
    /// Seed of new weights (step `k` uses `seed + k`).
    pub seed: u64,
}

/// Applies `growth.ops` in order to a net (`spec`, `weights`) and its momentum buffers,
/// checking each step: the net before and after it run on the real images and on 64
/// random ones. An operator whose guarantee is exact but whose relative error exceeds
/// [`EXACT_TOLERANCE`] is an error.
#[cfg(feature = "training")]
pub fn grow_checked(
    spec: &crate::net::NetSpec,
    weights: &crate::net::WeightMap,
    momentum: Option<&crate::net::WeightMap>,
    growth: &Growth<'_>,
    compute: &crate::backend::Compute,
    mut on_step: impl FnMut(&GrowOp, &Verification),
) -> Result<Grown> {
    let Growth { ops, batches, seed } = *growth;
    let (mut spec, mut weights, mut momentum) = (spec.clone(), weights.clone(), momentum.cloned());
    let mut current = Network::new(&spec, &weights, compute)?;
    let (mut grow_seconds, mut check_seconds) = (0.0, 0.0);
    let mut checks = Vec::new();
    // Real images for a later step are the original ones replicated to that step's input.
    let mut factor = 1;
    for (k, op) in ops.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let (s2, w2, m2) = super::apply(
            &spec,
            &weights,
            momentum.as_ref(),
            op,
            seed.wrapping_add(k as u64),
        )?;
        grow_seconds += t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let next = Network::new(&s2, &w2, compute)?;
        let step: Vec<Batch> = batches.iter().map(|b| upsample(b, factor)).collect();
        let v = check(
            &current,
            &next,
            &step,
            64,
            seed ^ 0xC0FFEE,
            std::slice::from_ref(op),
        )?;
        check_seconds += t1.elapsed().as_secs_f64();
        on_step(op, &v);
        if !v.holds() {
            return Err(Error::invalid(format!(
                "{} should preserve the network's function but its relative error is {:.3e} (> {:.0e})",
                op.describe(),
                v.data.map_or(v.random.rel, |d| d.rel.max(v.random.rel)),
                EXACT_TOLERANCE
            )));
        }
        factor *= v.factor;
        checks.push(v);
        (spec, weights, momentum, current) = (s2, w2, m2, next);
    }
    Ok(Grown {
        spec,
        weights,
        momentum,
        checks,
        grow_seconds,
        check_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_measures_errors_and_agreement() {
        let f = [1.0, 2.0, 0.0, 3.0];
        let g = [1.0, 2.5, 0.0, -3.0];
        let a = compare(&f, &g, 2);
        assert_eq!(a.max_abs, 6.0);
        assert!((a.rel - (0.25f64 + 36.0).sqrt() / 14f64.sqrt()).abs() < 1e-12);
        assert_eq!(a.top1_agreement, 0.5);
    }

    #[test]
    fn upsample_replicates_pixels() {
        let b = Batch {
            images: vec![1.0, 2.0, 3.0, 4.0],
            labels: vec![0],
            shape: [1, 1, 2, 2],
        };
        let u = upsample(&b, 2);
        assert_eq!(u.shape, [1, 1, 4, 4]);
        assert_eq!(u.images[..8], [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(u.images[12..], [3.0, 3.0, 4.0, 4.0]);
    }
}
