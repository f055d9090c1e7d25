//! Adding layers (Net2DeeperNet): an identity layer followed by a ReLU, inserted after the
//! ReLU that follows layer L. Its input is non-negative (it comes out of a ReLU), so
//! ReLU(identity(x)) = x and the function is unchanged.
//!
//! After a conv L: a k×k conv (k odd, stride 1, padding (k − 1)/2) with as many filters
//! as L, whose kernel is the Dirac delta (1 at the centre tap of channel c for filter c).
//! After a fully connected L: a square identity matrix. Biases are zero; optional
//! N(0, σ²) noise is added to every weight to break symmetry (then the guarantee is
//! approximate).
//!
//! A residual block instead ([`deepen_residual`]): conv–BN–ReLU–conv–BN with an identity
//! shortcut, and a ReLU after it, inserted after the ReLU that follows layer L, or after
//! the block that holds L and its ReLU. The convolutions get He-initialised weights, but
//! the last batch norm has γ = β = 0: its output is zero in training and in evaluation
//! alike, so the block adds nothing and ReLU(x + 0) = x for the non-negative x it reads
//! (Goyal et al. 2017's zero-init of residual blocks). γ's gradient is not zero, so the
//! block starts to learn at the first step. N(0, σ²) noise on γ makes the guarantee
//! approximate.

use super::{Fresh, Role, find_layer, find_top};
use crate::error::{Error, Result};
use crate::net::spec::{
    BatchNorm, Conv, Fc, Layer, NetSpec, Param, Residual, Shape, Units, param_name,
};
use crate::net::{Tensor, WeightMap};

/// Refuses an insertion after layer `i` (called `after`) that no ReLU follows (`why` says
/// why one is needed), or with an even kernel.
fn check_insertion(
    spec: &NetSpec,
    (i, after): (usize, &str),
    kernel: usize,
    why: &str,
) -> Result<()> {
    if !matches!(spec.layers.get(i + 1), Some(Layer::Relu)) {
        return Err(Error::invalid(format!("deepen after {after}: {why}")));
    }
    if kernel.is_multiple_of(2) {
        return Err(Error::invalid(format!(
            "deepen after {after}: kernel {kernel} must be odd"
        )));
    }
    Ok(())
}

/// Inserts an identity layer after the ReLU following `after`; see the module documentation.
pub fn deepen(
    spec: &NetSpec,
    map: &WeightMap,
    after: &str,
    kernel: usize,
    noise: f32,
    role: Role,
    seed: u64,
) -> Result<(NetSpec, WeightMap)> {
    let i = find_layer(spec, after)?;
    check_insertion(
        spec,
        (i, after),
        kernel,
        "it must be followed by a ReLU, so that identity + ReLU keeps the function",
    )?;
    let rows = spec.summary()?;
    let taken = |n: &str| spec.layers.iter().any(|l| l.name() == Some(n));
    let mut name = format!("{after}_id");
    let mut k = 2;
    while taken(&name) {
        name = format!("{after}_id{k}");
        k += 1;
    }
    let mut fresh = Fresh::new(role, seed);
    let (layer, weight) = match rows[i].output {
        Shape::Map { c, .. } => {
            let mut t = Tensor::zeros(&[c, c, kernel, kernel]);
            let centre = kernel / 2;
            for (idx, v) in t.data.iter_mut().enumerate() {
                let (o, rest) = (idx / (c * kernel * kernel), idx % (c * kernel * kernel));
                let (q, y, x) = (
                    rest / (kernel * kernel),
                    (rest / kernel) % kernel,
                    rest % kernel,
                );
                let identity = if o == q && y == centre && x == centre {
                    fresh.constant(1.0)
                } else {
                    0.0
                };
                *v = identity + fresh.gauss(noise);
            }
            let conv = Conv {
                name: name.clone(),
                filters: c,
                kernel,
                stride: 1,
                padding: kernel / 2,
                dilation: 1,
            };
            (Layer::Conv(conv), t)
        }
        Shape::Flat(n) => {
            let mut t = Tensor::zeros(&[n, n]);
            for (idx, v) in t.data.iter_mut().enumerate() {
                let identity = if idx / n == idx % n {
                    fresh.constant(1.0)
                } else {
                    0.0
                };
                *v = identity + fresh.gauss(noise);
            }
            (
                Layer::Fc(Fc {
                    name: name.clone(),
                    outputs: Units::Fixed(n),
                }),
                t,
            )
        }
    };
    let bias = Tensor::zeros(&[weight.shape[0]]);
    let mut grown = spec.clone();
    grown.layers.splice(i + 2..i + 2, [layer, Layer::Relu]);
    grown.check_structure()?;
    grown.summary()?;
    let mut out = map.clone();
    out.insert(param_name(&name, Param::Weight), weight);
    out.insert(param_name(&name, Param::Bias), bias);
    Ok((grown, out))
}

/// Inserts a zero-initialised residual block and a ReLU after the ReLU that follows
/// `after` (or the block holding it); see the module documentation.
pub fn deepen_residual(
    spec: &NetSpec,
    map: &WeightMap,
    after: &str,
    kernel: usize,
    noise: f32,
    role: Role,
    seed: u64,
) -> Result<(NetSpec, WeightMap)> {
    let i = find_top(spec, after)?;
    check_insertion(
        spec,
        (i, after),
        kernel,
        "it (or its block) must be followed by a ReLU, so that the block's ReLU(x + 0) keeps the function",
    )?;
    let Shape::Map { c, .. } = spec.summary()?[i].output else {
        return Err(Error::invalid(format!(
            "deepen after {after}: a residual block needs feature maps, {after} gives flat values"
        )));
    };
    let taken: Vec<&str> = spec
        .layers
        .iter()
        .flat_map(|l| l.leaves())
        .filter_map(Layer::name)
        .collect();
    let mut base = format!("{after}_res");
    let mut k = 2;
    while taken.iter().any(|n| n.starts_with(&base)) {
        base = format!("{after}_res{k}");
        k += 1;
    }
    let conv = |n: usize| Conv {
        name: format!("{base}_conv{n}"),
        filters: c,
        kernel,
        stride: 1,
        padding: kernel / 2,
        dilation: 1,
    };
    let bn = |n: usize| BatchNorm::new(&format!("{base}_bn{n}"));
    let body = vec![
        Layer::Conv(conv(1)),
        Layer::BatchNorm(bn(1)),
        Layer::Relu,
        Layer::Conv(conv(2)),
        Layer::BatchNorm(bn(2)),
    ];
    let mut fresh = Fresh::new(role, seed);
    let mut out = map.clone();
    // He initialisation for the convolutions: N(0, 2 / fan-in).
    let he = (2.0 / (c * kernel * kernel) as f32).sqrt();
    for n in 1..=2 {
        let name = conv(n).name;
        let mut w = Tensor::zeros(&[c, c, kernel, kernel]);
        w.data.iter_mut().for_each(|v| *v = fresh.gauss(he));
        out.insert(param_name(&name, Param::Weight), w);
        out.insert(param_name(&name, Param::Bias), Tensor::zeros(&[c]));
        let gamma = if n == 1 { fresh.constant(1.0) } else { 0.0 };
        let bn_name = bn(n).name;
        for (p, v) in [
            (Param::Weight, gamma),
            (Param::Bias, 0.0),
            (Param::RunningMean, 0.0),
            (Param::RunningVar, fresh.constant(1.0)),
        ] {
            let mut t = Tensor::zeros(&[c]);
            t.data.iter_mut().for_each(|x| *x = v);
            if n == 2 && p == Param::Weight {
                t.data.iter_mut().for_each(|x| *x = fresh.gauss(noise));
            }
            out.insert(param_name(&bn_name, p), t);
        }
    }
    let block = Layer::Residual(Residual {
        body,
        shortcut: Vec::new(),
    });
    let mut grown = spec.clone();
    grown.layers.splice(i + 2..i + 2, [block, Layer::Relu]);
    grown.check_structure()?;
    grown.summary()?;
    Ok((grown, out))
}
