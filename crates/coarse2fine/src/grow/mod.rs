//! Growth operators: map a trained network f to a larger network g with g(x) = f(x) (the
//! paper's Eq. 1) wherever that is defined, so training can continue from what f learnt.
//!
//! Every operator is a pure function of a bound spec and its weights. The same function
//! transforms the optimizer's momentum buffers: values that move are moved (and scaled) as
//! the weights are, values that are new start at zero ([`Role::Momentum`]).
//!
//! * [`upscale`]: the input side doubles (Eq. 5–8).
//! * [`widen`]: a layer gets more filters or units (Net2WiderNet, the paper's new filters).
//! * [`deepen`]: an identity layer is inserted (Net2DeeperNet), or [`deepen_residual`]: a
//!   residual block that adds zero.
//!
//! See docs/growth.md for the equations and guarantees, and [`verify`] for the numerical
//! check that each guarantee holds.

mod deepen;
mod upscale;
pub mod verify;
mod widen;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

pub use deepen::{deepen, deepen_residual};
pub use upscale::upscale;
pub use widen::widen;

use crate::error::{Error, Result};
use crate::net::{NetSpec, WeightMap};

/// What a map of tensors is: weights get fresh values where a network grows; momentum
/// buffers get zeros there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Network weights.
    Weights,
    /// Optimizer state, shaped like the weights.
    Momentum,
}

/// How upscaling treats the layers after the first convolution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpscaleMode {
    /// Spatial layers act on the lattice of the small net's positions (dilation ×2,
    /// padding ×2, in-between fully connected weights zero): g(upsample(x)) = f(x).
    #[default]
    Exact,
    /// As the paper's Fig. 3: kernels and fully connected weights spread onto the lattice
    /// with Gaussian noise in between; approximately function-preserving.
    Paper,
    /// Progressive resizing: every layer stays as it is and reads the larger image; the
    /// first fully connected layer's weights are resampled over the larger map (scaled by
    /// the ratio of map areas). The result is the net as a user designs it for the larger
    /// size, with no dilation; the function is kept only approximately (measured by each
    /// growth check).
    Resize,
}

/// Initialisation of new filters or units of [`widen`]. Written as in the CLI and in plans:
/// `gauss:0.01`, `zeros`, `flip-h`, `flip-v`, `flip-diag`, `flip-central`, `net2wider`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NewFiltersRepr", into = "String")]
pub enum NewFilters {
    /// N(0, σ²).
    Gauss(f32),
    /// All zero.
    Zeros,
    /// Mirror images (left–right) of existing filters.
    FlipH,
    /// Upside-down copies of existing filters.
    FlipV,
    /// Transposed (main-diagonal mirror) copies of existing filters.
    FlipDiag,
    /// Copies of existing filters rotated by 180°.
    FlipCentral,
    /// Net2WiderNet: copies of randomly chosen filters; the next layer's weights of each
    /// copied unit are split evenly among its copies, so the function is kept exactly.
    Net2Wider,
}

impl std::fmt::Display for NewFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewFilters::Gauss(s) => write!(f, "gauss:{s}"),
            NewFilters::Zeros => f.write_str("zeros"),
            NewFilters::FlipH => f.write_str("flip-h"),
            NewFilters::FlipV => f.write_str("flip-v"),
            NewFilters::FlipDiag => f.write_str("flip-diag"),
            NewFilters::FlipCentral => f.write_str("flip-central"),
            NewFilters::Net2Wider => f.write_str("net2wider"),
        }
    }
}

impl From<NewFilters> for String {
    fn from(n: NewFilters) -> String {
        n.to_string()
    }
}

/// What [`NewFilters`] is read from: its text form, or `{"gauss": σ}` as checkpoints written
/// before the text form recorded it.
#[derive(Deserialize)]
#[serde(untagged)]
enum NewFiltersRepr {
    Text(String),
    Gauss { gauss: f32 },
}

impl TryFrom<NewFiltersRepr> for NewFilters {
    type Error = Error;
    fn try_from(r: NewFiltersRepr) -> Result<Self> {
        match r {
            NewFiltersRepr::Text(s) => s.parse(),
            NewFiltersRepr::Gauss { gauss } => Ok(NewFilters::Gauss(gauss)),
        }
    }
}

impl std::str::FromStr for NewFilters {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "zeros" => NewFilters::Zeros,
            "flip-h" => NewFilters::FlipH,
            "flip-v" => NewFilters::FlipV,
            "flip-diag" => NewFilters::FlipDiag,
            "flip-central" => NewFilters::FlipCentral,
            "net2wider" => NewFilters::Net2Wider,
            _ => match s.strip_prefix("gauss:").and_then(|v| v.parse::<f32>().ok()) {
                Some(v) if v.is_finite() && v >= 0.0 => NewFilters::Gauss(v),
                _ => {
                    return Err(Error::invalid(format!(
                        "filter init {s:?}: use gauss:SIGMA, zeros, flip-h, flip-v, flip-diag, flip-central or net2wider"
                    )));
                }
            },
        })
    }
}

/// One growth step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum GrowOp {
    /// Double the input side.
    Upscale {
        /// Exact or paper mode.
        #[serde(default)]
        mode: UpscaleMode,
        /// σ of the in-between noise in paper mode.
        #[serde(default = "default_sigma")]
        sigma: f32,
    },
    /// Add `add` filters (conv) or units (fc) to layer `layer`.
    Widen {
        /// Layer name.
        layer: String,
        /// How many to add.
        add: usize,
        /// Initialisation of the new filters' incoming weights.
        init: NewFilters,
        /// σ of the next layer's weights from the new units (0: zero, keeping the function).
        #[serde(default)]
        next_sigma: f32,
        /// Bias of new units (flips and Net2Wider copy their source's instead).
        #[serde(default)]
        bias: f32,
        /// σ of noise added to the new units' incoming weights (breaks the symmetry of
        /// Net2Wider copies, which otherwise receive identical gradients).
        #[serde(default)]
        noise: f32,
        /// Allow new units that can never learn (zero incoming and outgoing weights).
        #[serde(default)]
        force: bool,
    },
    /// Insert an identity layer (with ReLU) after the ReLU that follows layer `after`; or,
    /// with `block = "residual"`, a residual block whose last batch norm's scale is zero.
    Deepen {
        /// Layer after which to insert (for a residual block: a layer of the net, or one
        /// inside the block after which to insert).
        after: String,
        /// What to insert.
        #[serde(default, skip_serializing_if = "DeepenBlock::is_identity")]
        block: DeepenBlock,
        /// Kernel side of an inserted conv (odd).
        #[serde(default = "default_kernel")]
        kernel: usize,
        /// σ of noise added to the identity.
        #[serde(default)]
        noise: f32,
    },
}

/// What `deepen` inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeepenBlock {
    /// An identity convolution or fully connected layer, and a ReLU (Net2DeeperNet).
    #[default]
    Identity,
    /// A residual block (conv–BN–ReLU–conv–BN, identity shortcut) whose last batch norm
    /// has γ = β = 0, so that it adds zero, and a ReLU (the zero-init trick of Goyal et
    /// al. 2017).
    Residual,
}

impl DeepenBlock {
    fn is_identity(&self) -> bool {
        *self == DeepenBlock::Identity
    }
}

fn default_sigma() -> f32 {
    0.01
}
fn default_kernel() -> usize {
    3
}

impl GrowOp {
    /// Checks the operator's numbers: every σ finite and not negative, a finite bias.
    pub fn validate(&self) -> Result<()> {
        let sigma = |name: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{}: {name} {v} must be 0 or a positive number",
                    self.describe()
                )))
            }
        };
        match self {
            GrowOp::Upscale { sigma: s, .. } => sigma("sigma", *s),
            GrowOp::Widen {
                init,
                next_sigma,
                bias,
                noise,
                ..
            } => {
                if let NewFilters::Gauss(s) = init {
                    sigma("the init's sigma", *s)?;
                }
                sigma("next_sigma", *next_sigma)?;
                sigma("noise", *noise)?;
                if bias.is_finite() {
                    Ok(())
                } else {
                    Err(Error::invalid(format!(
                        "{}: bias {bias} is not a number",
                        self.describe()
                    )))
                }
            }
            GrowOp::Deepen { noise, .. } => sigma("noise", *noise),
        }
    }

    /// Whether the operator's guarantee is exact (g = f up to rounding).
    pub fn is_exact(&self) -> bool {
        match *self {
            GrowOp::Upscale { mode, sigma } => {
                mode == UpscaleMode::Exact || (mode == UpscaleMode::Paper && sigma == 0.0)
            }
            GrowOp::Widen {
                init,
                next_sigma,
                noise,
                ..
            } => match init {
                // Copies with split outgoing weights: exact unless noise perturbs a copy.
                NewFilters::Net2Wider => noise == 0.0,
                // Otherwise exact iff the next layer ignores the new units.
                _ => next_sigma == 0.0,
            },
            GrowOp::Deepen { noise, .. } => noise == 0.0,
        }
    }

    /// Whether the guarantee is exact for this operator applied to `spec`: widening a layer
    /// whose output passes through an LRN before the next layer with weights is not, since
    /// LRN mixes the new channels into the old ones.
    pub fn is_exact_on(&self, spec: &NetSpec) -> bool {
        if !self.is_exact() {
            return false;
        }
        match self {
            GrowOp::Widen {
                layer,
                init,
                bias,
                noise,
                ..
            } if !(*init == NewFilters::Zeros && *bias == 0.0 && *noise == 0.0) => {
                let Ok(i) = find_layer(spec, layer) else {
                    return true;
                };
                !spec.layers[i + 1..]
                    .iter()
                    .take_while(|l| l.name().is_none())
                    .any(|l| matches!(l, crate::net::spec::Layer::Lrn(_)))
            }
            _ => true,
        }
    }

    /// Short description, e.g. `upscale exact`.
    pub fn describe(&self) -> String {
        match self {
            GrowOp::Upscale {
                mode: UpscaleMode::Exact,
                ..
            } => "upscale exact".into(),
            GrowOp::Upscale {
                mode: UpscaleMode::Paper,
                sigma,
            } => format!("upscale paper σ={sigma}"),
            GrowOp::Upscale {
                mode: UpscaleMode::Resize,
                ..
            } => "upscale resize".into(),
            GrowOp::Widen {
                layer, add, init, ..
            } => format!("widen {layer} +{add} ({init})"),
            GrowOp::Deepen {
                after,
                kernel,
                block: DeepenBlock::Identity,
                ..
            } => format!("deepen after {after} (k={kernel})"),
            GrowOp::Deepen {
                after,
                kernel,
                block: DeepenBlock::Residual,
                ..
            } => format!("deepen after {after} (residual block, k={kernel})"),
        }
    }
}

/// Fresh values: noise for weights, zeros for momentum.
pub(crate) struct Fresh {
    role: Role,
    rng: rand_chacha::ChaCha8Rng,
}

impl Fresh {
    pub(crate) fn new(role: Role, seed: u64) -> Self {
        Self {
            role,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A value drawn from N(0, σ²) (weights) or 0 (momentum).
    pub(crate) fn gauss(&mut self, sigma: f32) -> f32 {
        if self.role == Role::Momentum || sigma == 0.0 {
            return 0.0;
        }
        Normal::new(0.0f32, sigma)
            .map(|n| n.sample(&mut self.rng))
            .unwrap_or(0.0)
    }

    /// A constant (weights) or 0 (momentum).
    pub(crate) fn constant(&self, v: f32) -> f32 {
        if self.role == Role::Momentum { 0.0 } else { v }
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }
}

/// Applies one operator to a spec and its weights, and to momentum buffers if given.
pub fn apply(
    spec: &NetSpec,
    weights: &WeightMap,
    momentum: Option<&WeightMap>,
    op: &GrowOp,
    seed: u64,
) -> Result<(NetSpec, WeightMap, Option<WeightMap>)> {
    let run = |map: &WeightMap, role: Role| -> Result<(NetSpec, WeightMap)> {
        match op {
            GrowOp::Upscale { mode, sigma } => upscale(spec, map, *mode, *sigma, role, seed),
            GrowOp::Widen {
                layer,
                add,
                init,
                next_sigma,
                bias,
                noise,
                force,
            } => {
                let units = widen::NewUnits {
                    init: *init,
                    next_sigma: *next_sigma,
                    bias: *bias,
                    noise: *noise,
                    force: *force,
                };
                widen(spec, map, layer, *add, &units, role, seed)
            }
            GrowOp::Deepen {
                after,
                block: DeepenBlock::Identity,
                kernel,
                noise,
            } => deepen(spec, map, after, *kernel, *noise, role, seed),
            GrowOp::Deepen {
                after,
                block: DeepenBlock::Residual,
                kernel,
                noise,
            } => deepen_residual(spec, map, after, *kernel, *noise, role, seed),
        }
    };
    op.validate()?;
    refuse_oversized(spec, op)?;
    let (new_spec, new_weights) = run(weights, Role::Weights)?;
    let new_momentum = match momentum {
        Some(m) => Some(run(m, Role::Momentum)?.1),
        None => None,
    };
    Ok((new_spec, new_weights, new_momentum))
}

/// Refuses, before anything is allocated, an operator whose result would exceed the spec
/// limits or the memory available: a widening by a huge count, a huge deepening kernel.
fn refuse_oversized(spec: &NetSpec, op: &GrowOp) -> Result<()> {
    use crate::net::spec::{Layer, MAX_WINDOW, Units};
    match op {
        GrowOp::Widen { layer, add, .. } => {
            let i = find_top(spec, layer)?;
            // A residual block after the layer: refused here in its own words, before the
            // grown spec's branches fail to match. (The classifier is refused by widen.)
            let classifier = spec
                .logit_layers()
                .iter()
                .rposition(|l| matches!(l, Layer::Fc(_)));
            if spec.layers[i].name() != Some(layer) {
                widen::block_body(spec, (i, layer))?;
            } else if Some(i) != classifier {
                widen::next_weighted(spec, i, layer)?;
            }
            let mut grown = spec.clone();
            let too_many = || Error::invalid(format!("widen {layer}: adding {add} is too many"));
            let target = match &mut grown.layers[i] {
                Layer::Residual(b) => b
                    .body
                    .iter_mut()
                    .chain(b.shortcut.iter_mut())
                    .find(|l| l.name() == Some(layer.as_str())),
                l => Some(l),
            };
            match target {
                Some(Layer::Conv(c)) => {
                    c.filters = c.filters.checked_add(*add).ok_or_else(too_many)?;
                }
                Some(Layer::Fc(f)) => {
                    if let Units::Fixed(n) = &mut f.outputs {
                        *n = n.checked_add(*add).ok_or_else(too_many)?;
                    }
                }
                _ => return Ok(()),
            }
            grown.check_structure()?;
            crate::resources::training_estimate(&grown, 1)?
                .check(&format!("widening {layer} by {add}"))
        }
        GrowOp::Deepen { kernel, .. } if *kernel > MAX_WINDOW => Err(Error::invalid(format!(
            "deepen: kernel {kernel} is larger than {MAX_WINDOW}"
        ))),
        _ => Ok(()),
    }
}

/// Index of the layer whose parameters are called `name`; a layer inside a residual block
/// is refused (see [`find_top`]).
pub(crate) fn find_layer(spec: &NetSpec, name: &str) -> Result<usize> {
    let i = find_top(spec, name)?;
    if spec.layers[i].name() != Some(name) {
        return Err(Error::invalid(format!(
            "layer {name:?} is inside a residual block (layer {} of net {:?}); identity layers are inserted outside blocks (a residual block can follow it: block = \"residual\")",
            i + 1,
            spec.name
        )));
    }
    Ok(i)
}

/// Index of the layer called `name`, or of the residual block that holds it.
pub(crate) fn find_top(spec: &NetSpec, name: &str) -> Result<usize> {
    spec.layers
        .iter()
        .position(|l| l.leaves().any(|leaf| leaf.name() == Some(name)))
        .ok_or_else(|| {
            let names: Vec<&str> = spec
                .layers
                .iter()
                .flat_map(|l| l.leaves())
                .filter_map(|l| l.name())
                .collect();
            Error::invalid(format!(
                "net {:?} has no layer {name:?} (layers: {})",
                spec.name,
                names.join(", ")
            ))
        })
}

pub(crate) fn tensor<'a>(map: &'a WeightMap, name: &str) -> Result<&'a crate::net::Tensor> {
    map.get(name)
        .ok_or_else(|| Error::invalid(format!("missing tensor {name:?}")))
}

#[cfg(test)]
mod tests;
