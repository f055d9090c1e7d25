//! Adding filters or units to a layer (the paper's Section III-C, Net2WiderNet).
//!
//! Layer L gets `add` new output channels (conv) or units (fc), initialised by
//! [`NewFilters`]; the next layer with weights, N, gets matching new inputs. N's weights from
//! the new units are zero by default, so N's output — and the network's function — is
//! unchanged whatever the new units compute. Net2Wider instead copies existing units and
//! splits N's weights of each copied unit evenly among its copies, which also keeps the
//! function. Layers between L and N that mix channels (LRN) see the new channels, so with
//! non-zero new filters the guarantee there is approximate; the verification reports it.
//! Batch norms between L and N get the new channels too: copies of their source channel's
//! values for Net2Wider and flips (so a copied filter is normalised like its original),
//! a fresh batch norm's (γ = 1, β = 0, mean 0, variance 1) otherwise. N's zero (or split)
//! weights keep the function either way.
//!
//! Inside a residual block's body, L and N are layers of the body: the block's output
//! keeps its channels, so only a layer that another layer of the same body reads can be
//! widened (the body's last convolution and the shortcut's feed the block's sum). Outside
//! blocks, a layer whose output a block reads is refused for the same reason.

use rand::{Rng, SeedableRng};

use super::{Fresh, NewFilters, Role, find_layer, find_top, tensor};
use crate::error::{Error, Result};
use crate::net::spec::{
    Fc, InputShape, Layer, NetSpec, Param, Shape, Units, input_map, param_name,
};
use crate::net::{Tensor, WeightMap};

/// Flips a `k × k` kernel.
fn flip(src: &[f32], k: usize, how: NewFilters) -> Vec<f32> {
    let mut out = vec![0f32; k * k];
    for y in 0..k {
        for x in 0..k {
            let (sy, sx) = match how {
                NewFilters::FlipH => (y, k - 1 - x),
                NewFilters::FlipV => (k - 1 - y, x),
                NewFilters::FlipDiag => (x, y),
                _ => (k - 1 - y, k - 1 - x),
            };
            out[y * k + x] = src[sy * k + sx];
        }
    }
    out
}

/// How new units of [`widen`] start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewUnits {
    /// Incoming weights.
    pub init: NewFilters,
    /// σ of the next layer's weights from the new units (0 keeps the function).
    pub next_sigma: f32,
    /// Bias of new units for `gauss` and `zeros` inits.
    pub bias: f32,
    /// σ of noise added to the new units' incoming weights.
    pub noise: f32,
    /// Allow units that can never learn.
    pub force: bool,
}

/// Widens layer `layer` by `add` filters/units; see the module documentation.
pub fn widen(
    spec: &NetSpec,
    map: &WeightMap,
    layer: &str,
    add: usize,
    units: &NewUnits,
    role: Role,
    seed: u64,
) -> Result<(NetSpec, WeightMap)> {
    let top = find_top(spec, layer)?;
    if spec.layers[top].name() != Some(layer) {
        return widen_in_block(spec, map, (top, layer), add, units, (role, seed));
    }
    let (i, j) = check_widen(spec, layer, add, units)?;
    let mut grown = spec.clone();
    let old = widen_layer(&mut grown.layers[i], layer, add)?;
    // Net2Wider's choice of source units must not depend on the role, so that momentum
    // buffers are split exactly like the weights.
    let mut choice = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c401);
    let sources: Vec<usize> = (0..add)
        .map(|r| match units.init {
            NewFilters::Net2Wider => choice.random_range(0..old),
            _ => r % old,
        })
        .collect();
    let mut fresh = Fresh::new(role, seed);
    let mut out = map.clone();
    // The new units' weights first, then their columns in the next layer: the order in
    // which `fresh` draws its noise.
    let (wn, new_w, bn, new_b) = new_rows(map, layer, &sources, units, &mut fresh)?;
    out.insert(wn, new_w);
    out.insert(bn, new_b);
    let rows = spec.summary()?;
    let next_name = spec.layers[j].name().unwrap_or_default().to_string();
    let per = match (&spec.layers[j], rows[j - 1].output) {
        (Layer::Conv(c), _) => c.kernel * c.kernel,
        (Layer::Fc(_), Shape::Map { h, w, .. }) => h * w,
        _ => 1,
    };
    let next_cols = NextColumns {
        layer,
        next_name: &next_name,
        per,
        old,
        sources: &sources,
    };
    let (nwn, next) = next_cols.widen(map, units, &mut fresh)?;
    out.insert(nwn, next);
    for l in &mut grown.layers[i + 1..j] {
        if let Layer::BatchNorm(b) = l {
            widen_batch_norm(&mut out, &b.name, &sources, units.init, &fresh)?;
        }
    }
    Ok((grown, out))
}

/// Widens `layer` inside the body of the residual block at index `top`: the body is
/// widened as a net of its own ([`block_body`]).
fn widen_in_block(
    spec: &NetSpec,
    map: &WeightMap,
    (top, layer): (usize, &str),
    add: usize,
    units: &NewUnits,
    (role, seed): (Role, u64),
) -> Result<(NetSpec, WeightMap)> {
    let body = block_body(spec, (top, layer))?;
    let kept = body.layers.len() - 1;
    let (grown_body, out) = widen(&body, map, layer, add, units, role, seed)?;
    let mut grown = spec.clone();
    if let Layer::Residual(b) = &mut grown.layers[top] {
        b.body = grown_body.layers[..kept].to_vec();
    }
    grown.check_structure()?;
    grown.summary()?;
    Ok((grown, out))
}

/// The body of the residual block at index `top` as a net of its own, which reads the
/// block's input and ends in a stand-in classifier; refused unless `layer` is in the body
/// and a later layer of the body reads it.
pub(super) fn block_body(spec: &NetSpec, (top, layer): (usize, &str)) -> Result<NetSpec> {
    let Layer::Residual(block) = &spec.layers[top] else {
        return Err(Error::invalid(format!("widen {layer}: not inside a block")));
    };
    let Some(i) = block.body.iter().position(|l| l.name() == Some(layer)) else {
        return Err(Error::invalid(format!(
            "widen {layer}: it is in the shortcut of the residual block at layer {}, whose output is the block's sum",
            top + 1
        )));
    };
    let input = match top {
        0 => spec.input.map(input_map),
        _ => spec.summary()?.get(top - 1).map(|r| r.output),
    };
    let Some(Shape::Map { c, h, w }) = input else {
        return Err(Error::invalid(format!(
            "widen {layer}: its block reads no maps"
        )));
    };
    let mut layers = block.body.clone();
    layers.push(Layer::Fc(Fc {
        name: format!("{layer}-block-end"),
        outputs: Units::Classes,
    }));
    let body = NetSpec {
        name: spec.name.clone(),
        input: Some(InputShape {
            channels: c,
            height: h,
            width: w,
        }),
        classes: spec.classes,
        layers,
    };
    if next_weighted(&body, i, layer)? + 1 == body.layers.len() {
        return Err(Error::invalid(format!(
            "widen {layer}: it is the last layer with weights of the residual block at layer {}, whose output is added to the shortcut's",
            top + 1
        )));
    }
    Ok(body)
}

/// Adds one channel per source to the batch norm `name`'s four tensors in `map`.
fn widen_batch_norm(
    map: &mut WeightMap,
    name: &str,
    sources: &[usize],
    init: NewFilters,
    fresh: &Fresh,
) -> Result<()> {
    let copy = !matches!(init, NewFilters::Gauss(_) | NewFilters::Zeros);
    for (p, start) in [
        (Param::Weight, 1.0),
        (Param::Bias, 0.0),
        (Param::RunningMean, 0.0),
        (Param::RunningVar, 1.0),
    ] {
        let n = param_name(name, p);
        let mut t = tensor(map, &n)?.clone();
        for &s in sources {
            let v = if copy { t.data[s] } else { start };
            t.data.push(fresh.constant(v));
        }
        t.shape[0] = t.data.len();
        map.insert(n, t);
    }
    Ok(())
}

/// Checks that `layer` can be widened by `add` with `units`; returns its index and the
/// index of the next layer with weights.
fn check_widen(
    spec: &NetSpec,
    layer: &str,
    add: usize,
    units: &NewUnits,
) -> Result<(usize, usize)> {
    let NewUnits {
        init,
        next_sigma,
        bias,
        noise,
        force,
    } = *units;
    if add == 0 {
        return Err(Error::invalid(format!(
            "widen {layer}: add at least one filter"
        )));
    }
    let i = find_layer(spec, layer)?;
    let logits = spec.logit_layers();
    let classifier = logits.iter().rposition(|l| matches!(l, Layer::Fc(_)));
    if Some(i) == classifier {
        return Err(Error::invalid(format!(
            "widen {layer}: it is the classifier, whose width is the class count"
        )));
    }
    let j = next_weighted(spec, i, layer)?;
    let relu_between = spec.layers[i + 1..j]
        .iter()
        .any(|l| matches!(l, Layer::Relu));
    let incoming_zero = init == NewFilters::Zeros && bias == 0.0 && noise == 0.0;
    if incoming_zero && (next_sigma == 0.0 || relu_between) && !force {
        return Err(Error::invalid(format!(
            "widen {layer}: new units with zero weights and zero bias {} would never learn; \
             use a non-zero init, a positive new-unit bias, {}or force it",
            if relu_between {
                "feed a ReLU (relu(0) = 0 has no gradient) and"
            } else {
                "and zero outgoing weights"
            },
            if relu_between {
                ""
            } else {
                "non-zero next-layer weights, "
            }
        )));
    }
    let is_conv = matches!(spec.layers[i], Layer::Conv(_));
    let flip = matches!(
        init,
        NewFilters::FlipH | NewFilters::FlipV | NewFilters::FlipDiag | NewFilters::FlipCentral
    );
    if !is_conv && flip {
        return Err(Error::invalid(format!(
            "widen {layer}: flips apply to conv filters, {layer} is fully connected"
        )));
    }
    Ok((i, j))
}

/// Index of the first layer with weights after layer `i` (called `layer`), which reads its
/// output; refused when a residual block comes first.
pub(super) fn next_weighted(spec: &NetSpec, i: usize, layer: &str) -> Result<usize> {
    let j = (i + 1..spec.layers.len())
        .find(|&j| {
            matches!(
                spec.layers[j],
                Layer::Conv(_) | Layer::Fc(_) | Layer::Residual(_)
            )
        })
        .ok_or_else(|| Error::invalid(format!("widen {layer}: no later layer with weights")))?;
    if let Layer::Residual(_) = spec.layers[j] {
        return Err(Error::invalid(format!(
            "widen {layer}: a residual block (layer {}) reads its output, and widen cannot widen the block's body and shortcut alike, which its sum needs",
            j + 1
        )));
    }
    Ok(j)
}

/// Adds `add` filters or units to the spec's layer; returns the count before.
fn widen_layer(l: &mut Layer, layer: &str, add: usize) -> Result<usize> {
    match l {
        Layer::Conv(c) => {
            c.filters += add;
            Ok(c.filters - add)
        }
        Layer::Fc(f) => match f.outputs {
            Units::Fixed(n) => {
                f.outputs = Units::Fixed(n + add);
                Ok(n)
            }
            Units::Classes => Err(Error::invalid(format!(
                "widen {layer}: its width is the class count"
            ))),
        },
        _ => Err(Error::invalid(format!(
            "widen {layer}: not a conv or fc layer"
        ))),
    }
}

/// The widened layer's weight and bias, with one new row per source unit.
fn new_rows(
    map: &WeightMap,
    layer: &str,
    sources: &[usize],
    units: &NewUnits,
    fresh: &mut Fresh,
) -> Result<(String, Tensor, String, Tensor)> {
    let (wn, bn) = (
        param_name(layer, Param::Weight),
        param_name(layer, Param::Bias),
    );
    let w = tensor(map, &wn)?;
    let b = tensor(map, &bn)?;
    let row_len: usize = w.shape[1..].iter().product();
    let mut new_w = w.clone();
    new_w.shape[0] += sources.len();
    let mut new_b = b.clone();
    new_b.shape[0] += sources.len();
    for &src in sources {
        let src_row = &w.data[src * row_len..(src + 1) * row_len];
        let row: Vec<f32> = match units.init {
            NewFilters::Gauss(s) => (0..row_len).map(|_| fresh.gauss(s)).collect(),
            NewFilters::Zeros => vec![0.0; row_len],
            NewFilters::Net2Wider => src_row.to_vec(),
            flip_kind if fresh.role() == Role::Weights => {
                let k = w.shape[2];
                src_row
                    .chunks_exact(k * k)
                    .flat_map(|kk| flip(kk, k, flip_kind))
                    .collect()
            }
            _ => vec![0.0; row_len],
        };
        new_w
            .data
            .extend(row.into_iter().map(|v| v + fresh.gauss(units.noise)));
        new_b.data.push(match units.init {
            NewFilters::Net2Wider => b.data[src],
            NewFilters::Gauss(_) | NewFilters::Zeros => fresh.constant(units.bias),
            _ => fresh.constant(b.data[src]),
        });
    }
    Ok((wn, new_w, bn, new_b))
}

/// The next layer's new input columns. Inputs are flattened channel-major, so each input
/// unit of the next layer (a channel of the widened one, or a unit) owns a block of `per`
/// consecutive columns, and the new units' blocks go after the old ones.
struct NextColumns<'a> {
    layer: &'a str,
    next_name: &'a str,
    per: usize,
    /// Units before widening.
    old: usize,
    sources: &'a [usize],
}

impl NextColumns<'_> {
    fn widen(
        &self,
        map: &WeightMap,
        units: &NewUnits,
        fresh: &mut Fresh,
    ) -> Result<(String, Tensor)> {
        let NextColumns {
            layer,
            next_name,
            per,
            old,
            sources,
        } = *self;
        let nwn = param_name(next_name, Param::Weight);
        let nw = tensor(map, &nwn)?;
        let outputs = nw.shape[0];
        let cols = nw.numel() / outputs;
        let units_in = cols / per;
        if units_in != old {
            return Err(Error::invalid(format!(
                "widen {layer}: {next_name} has {units_in} inputs per position, expected {old}"
            )));
        }
        // Net2Wider divides a source's outgoing weights among its copies.
        let mut counts = vec![1usize; units_in];
        if units.init == NewFilters::Net2Wider {
            for &s in sources {
                counts[s] += 1;
            }
        }
        let add = sources.len();
        let new_cols_total = cols + add * per;
        let mut next = Tensor::zeros(&match nw.shape.len() {
            4 => vec![outputs, nw.shape[1] + add, nw.shape[2], nw.shape[3]],
            _ => vec![outputs, new_cols_total],
        });
        for o in 0..outputs {
            let src = &nw.data[o * cols..(o + 1) * cols];
            let dst = &mut next.data[o * new_cols_total..(o + 1) * new_cols_total];
            for u in 0..units_in {
                for p in 0..per {
                    dst[u * per + p] = src[u * per + p] / counts[u] as f32;
                }
            }
            for (r, &s) in sources.iter().enumerate() {
                for p in 0..per {
                    dst[(units_in + r) * per + p] = match units.init {
                        NewFilters::Net2Wider => src[s * per + p] / counts[s] as f32,
                        _ => fresh.gauss(units.next_sigma),
                    };
                }
            }
        }
        Ok((nwn, next))
    }
}

#[cfg(test)]
mod flip_tests {
    use super::*;

    #[test]
    fn flips_are_involutions_and_differ() {
        let k = 3;
        let src: Vec<f32> = (0..9).map(|v| v as f32).collect();
        for how in [
            NewFilters::FlipH,
            NewFilters::FlipV,
            NewFilters::FlipDiag,
            NewFilters::FlipCentral,
        ] {
            let once = flip(&src, k, how);
            assert_ne!(once, src, "{how:?} changes an asymmetric kernel");
            assert_eq!(flip(&once, k, how), src, "{how:?} twice is the identity");
        }
        assert_eq!(flip(&src, k, NewFilters::FlipH)[..3], [2.0, 1.0, 0.0]);
        assert_eq!(flip(&src, k, NewFilters::FlipV)[..3], [6.0, 7.0, 8.0]);
        assert_eq!(flip(&src, k, NewFilters::FlipDiag)[..3], [0.0, 3.0, 6.0]);
        assert_eq!(flip(&src, k, NewFilters::FlipCentral)[..3], [8.0, 7.0, 6.0]);
    }
}
