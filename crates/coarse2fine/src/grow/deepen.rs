//! Adding layers (Net2DeeperNet): an identity layer followed by a ReLU, inserted after the
//! ReLU that follows layer L. Its input is non-negative (it comes out of a ReLU), so
//! ReLU(identity(x)) = x and the function is unchanged.
//!
//! After a conv L: a k×k conv (k odd, stride 1, padding (k − 1)/2) with as many filters
//! as L, whose kernel is the Dirac delta (1 at the centre tap of channel c for filter c).
//! After a fully connected L: a square identity matrix. Biases are zero; optional
//! N(0, σ²) noise is added to every weight to break symmetry (then the guarantee is
//! approximate).

use super::{Fresh, Role, find_layer};
use crate::error::{Error, Result};
use crate::net::spec::{Conv, Fc, Layer, NetSpec, Param, Shape, Units, param_name};
use crate::net::{Tensor, WeightMap};

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
    if !matches!(spec.layers.get(i + 1), Some(Layer::Relu)) {
        return Err(Error::invalid(format!(
            "deepen after {after}: it must be followed by a ReLU, so that identity + ReLU keeps the function"
        )));
    }
    if kernel.is_multiple_of(2) {
        return Err(Error::invalid(format!(
            "deepen after {after}: kernel {kernel} must be odd"
        )));
    }
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
