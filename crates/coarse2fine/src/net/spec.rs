//! The network spec: an ordered list of layers, bound to an input shape and class count.
//!
//! Spec files are TOML or JSON (by extension). A spec may leave its input and class count
//! open (`input`/`classes` absent, the classifier's `outputs = "classes"`); binding it to a
//! data set fills them in. Checkpoints always store bound specs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

fn one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// The maps an input of this shape is.
pub fn input_map(input: InputShape) -> Shape {
    Shape::Map {
        c: input.channels,
        h: input.height,
        w: input.width,
    }
}

/// Input of a network: channels and spatial size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputShape {
    /// Channels (1 grey, 3 RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl InputShape {
    /// A square input of `side × side` pixels.
    pub fn square(channels: usize, side: usize) -> Self {
        Self {
            channels,
            height: side,
            width: side,
        }
    }
}

/// A 2-D convolution with `filters` square `kernel × kernel` filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv {
    /// Unique name; its tensors are `<name>.weight` (`filters × in × k × k`) and `<name>.bias`.
    pub name: String,
    /// Output channels.
    pub filters: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stride: usize,
    /// Zero padding on every side.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub padding: usize,
    /// Dilation (spacing of kernel taps).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub dilation: usize,
}

/// Max pooling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Window side.
    pub kernel: usize,
    /// Stride; defaults to the window side.
    #[serde(default)]
    pub stride: Option<usize>,
    /// Padding on every side (padded cells never win the max).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub padding: usize,
    /// Dilation of the window.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub dilation: usize,
    /// Round the output size up, as Caffe does, instead of down.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ceil_mode: bool,
}

impl Pool {
    /// The effective stride.
    pub fn stride(&self) -> usize {
        self.stride.unwrap_or(self.kernel)
    }

    /// Window, stride and the options that differ from their defaults: `3/2 p1 d2 ceil`.
    fn describe(&self) -> String {
        let mut s = format!("{}/{}", self.kernel, self.stride());
        if self.padding != 0 {
            s += &format!(" p{}", self.padding);
        }
        if self.dilation != 1 {
            s += &format!(" d{}", self.dilation);
        }
        if self.ceil_mode {
            s += " ceil";
        }
        s
    }
}

/// Local response normalisation across channels (Caffe's `ACROSS_CHANNELS`):
/// `y = x / (k + α/n · Σ x²)^β` over `n = size` neighbouring channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lrn {
    /// Channels in the window (odd).
    #[serde(default = "Lrn::default_size")]
    pub size: usize,
    /// α.
    #[serde(default = "Lrn::default_alpha")]
    pub alpha: f32,
    /// β.
    #[serde(default = "Lrn::default_beta")]
    pub beta: f32,
    /// k.
    #[serde(default = "Lrn::default_k")]
    pub k: f32,
}

impl Lrn {
    fn default_size() -> usize {
        5
    }
    fn default_alpha() -> f32 {
        1e-4
    }
    fn default_beta() -> f32 {
        0.75
    }
    fn default_k() -> f32 {
        1.0
    }
}

impl Default for Lrn {
    fn default() -> Self {
        Self {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 1.0,
        }
    }
}

/// Dropout with drop probability `p` (training only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    /// Probability of zeroing a unit.
    pub p: f32,
}

/// Batch normalisation of each channel of a feature map, as PyTorch's `BatchNorm2d`:
/// in training `y = γ·(x − μ_B)/√(σ²_B + ε) + β` with the batch's mean and (biased)
/// variance over images and positions, and running averages
/// `r ← (1 − momentum)·r + momentum·b` of the mean and the unbiased variance; in
/// evaluation the running averages stand in for the batch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm {
    /// Unique name; tensors `<name>.weight` (γ), `<name>.bias` (β), `<name>.running_mean`
    /// and `<name>.running_var`, each one value per channel.
    pub name: String,
    /// ε, added to the variance.
    #[serde(default = "BatchNorm::default_eps")]
    pub eps: f32,
    /// Weight of the newest batch in the running averages.
    #[serde(default = "BatchNorm::default_momentum")]
    pub momentum: f32,
}

impl BatchNorm {
    fn default_eps() -> f32 {
        1e-5
    }
    fn default_momentum() -> f32 {
        0.1
    }

    /// A batch norm with PyTorch's defaults (ε = 10⁻⁵, momentum 0.1).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            eps: Self::default_eps(),
            momentum: Self::default_momentum(),
        }
    }
}

/// A residual block (He et al. 2016): `body(x) + shortcut(x)`, where an empty shortcut is
/// the identity. The body and the shortcut must give maps of the same shape; when the body
/// changes the channels or the side, the shortcut is a projection (typically a strided 1×1
/// convolution and a batch norm). A ReLU after the sum is a layer of its own, after the
/// block. Blocks hold map layers only (no fully connected layer, global pool, softmax or
/// nested block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residual {
    /// The residual branch, applied in order to the block's input.
    #[serde(default)]
    pub body: Vec<Layer>,
    /// The shortcut branch; empty (the default) for the identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shortcut: Vec<Layer>,
}

impl Residual {
    /// `residual (body 5, shortcut 2)`, or `(body 5, identity)`.
    fn describe(&self) -> String {
        let shortcut = if self.shortcut.is_empty() {
            "identity".to_string()
        } else {
            format!("shortcut {}", self.shortcut.len())
        };
        format!("residual (body {}, {shortcut})", self.body.len())
    }
}

/// Number of outputs of a fully connected layer: a count, or `"classes"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// A fixed count.
    Fixed(usize),
    /// As many as the data set has classes.
    Classes,
}

impl Serialize for Units {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Units::Fixed(n) => s.serialize_u64(*n as u64),
            Units::Classes => s.serialize_str("classes"),
        }
    }
}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Units::Fixed(n as usize)),
            Raw::S(s) if s == "classes" => Ok(Units::Classes),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "outputs must be a number or \"classes\", not {s:?}"
            ))),
        }
    }
}

/// A fully connected layer; a spatial input is flattened (`C·H·W`, channel-major) first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fc {
    /// Unique name; tensors `<name>.weight` (`outputs × inputs`) and `<name>.bias`.
    pub name: String,
    /// Output units.
    pub outputs: Units,
}

/// One layer of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// Convolution.
    Conv(Conv),
    /// Rectified linear unit.
    Relu,
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling: every window's sum divided by `kernel²`, padded cells counting as
    /// zeros (PyTorch's and ONNX's `count_include_pad`). No `ceil_mode`.
    AvgPool(Pool),
    /// The mean of each channel's map: `C × H × W` → `C × 1 × 1`, whatever the input size.
    GlobalAvgPool,
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// Local response normalisation.
    Lrn(Lrn),
    /// Dropout.
    Dropout(Dropout),
    /// Fully connected.
    Fc(Fc),
    /// Softmax over classes; only allowed last. Training uses the logits before it.
    Softmax,
    /// A residual block.
    Residual(Residual),
}

impl Layer {
    /// Short description, e.g. `conv1 6×2×2/1`.
    pub fn describe(&self) -> String {
        match self {
            Layer::Conv(c) => {
                let mut s = format!("{} conv {}×{}×{}", c.name, c.filters, c.kernel, c.kernel);
                if c.stride != 1 {
                    s += &format!(" s{}", c.stride);
                }
                if c.padding != 0 {
                    s += &format!(" p{}", c.padding);
                }
                if c.dilation != 1 {
                    s += &format!(" d{}", c.dilation);
                }
                s
            }
            Layer::Relu => "relu".into(),
            Layer::MaxPool(p) => format!("max-pool {}", p.describe()),
            Layer::AvgPool(p) => format!("avg-pool {}", p.describe()),
            Layer::GlobalAvgPool => "global-avg-pool".into(),
            Layer::BatchNorm(b) => format!("{} batch-norm", b.name),
            Layer::Lrn(l) => format!("lrn n{}", l.size),
            Layer::Dropout(d) => format!("dropout {}", d.p),
            Layer::Fc(f) => match f.outputs {
                Units::Fixed(n) => format!("{} fc {n}", f.name),
                Units::Classes => format!("{} fc classes", f.name),
            },
            Layer::Softmax => "softmax".into(),
            Layer::Residual(r) => r.describe(),
        }
    }

    /// This layer, or the layers inside a residual block (body, then shortcut), in the
    /// order the forward pass runs them.
    pub fn leaves(&self) -> Box<dyn Iterator<Item = &Layer> + '_> {
        match self {
            Layer::Residual(r) => Box::new(r.body.iter().chain(&r.shortcut)),
            l => Box::new(std::iter::once(l)),
        }
    }

    /// Name of a layer with parameters (the prefix of its tensors' names).
    pub fn name(&self) -> Option<&str> {
        match self {
            Layer::Conv(c) => Some(&c.name),
            Layer::Fc(f) => Some(&f.name),
            Layer::BatchNorm(b) => Some(&b.name),
            _ => None,
        }
    }
}

/// The tensors of a layer: weight and bias of a convolution or fully connected layer, and
/// those four of a batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `NAME.weight`: `[filters, channels, k, k]`, `[outputs, inputs]`, or a batch norm's
    /// scale γ `[channels]`.
    Weight,
    /// `NAME.bias`: `[filters]`, `[outputs]`, or a batch norm's shift β `[channels]`.
    Bias,
    /// `NAME.running_mean` of a batch norm: a statistic, not trained by gradients.
    RunningMean,
    /// `NAME.running_var` of a batch norm.
    RunningVar,
}

impl Param {
    /// Which parameter the tensor called `name` is, from its suffix.
    pub fn of(name: &str) -> Option<Param> {
        match name.rsplit_once('.') {
            Some((_, "weight")) => Some(Param::Weight),
            Some((_, "bias")) => Some(Param::Bias),
            Some((_, "running_mean")) => Some(Param::RunningMean),
            Some((_, "running_var")) => Some(Param::RunningVar),
            _ => None,
        }
    }
}

/// The tensor name of parameter `p` of the layer called `layer`, as in PyTorch's
/// `state_dict`: `conv1.weight`, `bn1.running_var`. Every tensor name is made here.
pub fn param_name(layer: &str, p: Param) -> String {
    match p {
        Param::Weight => format!("{layer}.weight"),
        Param::Bias => format!("{layer}.bias"),
        Param::RunningMean => format!("{layer}.running_mean"),
        Param::RunningVar => format!("{layer}.running_var"),
    }
}

/// What a tensor of a net is for, which decides how it starts and how training treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A convolution's filters or a fully connected layer's matrix: drawn at random,
    /// trained, weight-decayed.
    Weight,
    /// A convolution's or fully connected layer's bias: zero, trained, not decayed.
    Bias,
    /// A batch norm's γ: one, trained, not decayed (as is usual for normalisation layers).
    Scale,
    /// A batch norm's β: zero, trained, not decayed.
    Shift,
    /// A batch norm's running mean (zero) or variance (one): updated by the forward pass
    /// in training, never by the optimizer.
    Statistic,
}

impl TensorKind {
    /// Whether the optimizer updates it.
    pub fn trained(self) -> bool {
        self != TensorKind::Statistic
    }

    /// Whether weight decay applies to it.
    pub fn decayed(self) -> bool {
        self == TensorKind::Weight
    }
}

/// Activation shape between layers (per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Feature maps `C × H × W`.
    Map {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// A vector of `n` features.
    Flat(usize),
}

/// Largest kernel, stride, dilation, padding or LRN size a spec may give.
pub const MAX_WINDOW: usize = 4096;
/// Largest filter or output count of one layer.
pub const MAX_UNITS: usize = 1 << 24;
/// Largest number of values one layer may produce per image.
pub const MAX_ELEMENTS: usize = 1 << 32;

impl Shape {
    /// Number of values, `None` if it does not fit in `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        match *self {
            Shape::Map { c, h, w } => c.checked_mul(h)?.checked_mul(w),
            Shape::Flat(n) => Some(n),
        }
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        match *self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "{c}×{h}×{w}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// Output side of a sliding window (`None` if the window does not fit).
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    ceil: bool,
) -> Option<usize> {
    let span = kernel.checked_sub(1)?.checked_mul(dil)?.checked_add(1)?;
    let padded = pad.checked_mul(2)?.checked_add(input)?;
    if span > padded || stride == 0 {
        return None;
    }
    let room = padded - span;
    let mut out = if ceil {
        room.div_ceil(stride) + 1
    } else {
        room / stride + 1
    };
    // As in Caffe and PyTorch: the last window must start inside the input or left padding.
    if ceil && pad > 0 && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Some(out)
}

/// The first output position of a sliding window that covers no input position (only
/// padding), if any: max pooling there would produce −∞.
pub fn empty_window(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    out: usize,
) -> Option<usize> {
    (0..out).find(|&o| {
        (0..kernel).all(|j| {
            let pos = (o * stride + j * dil) as isize - pad as isize;
            pos < 0 || pos >= input as isize
        })
    })
}

/// A network description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Name, e.g. `net-2`.
    pub name: String,
    /// Input shape, once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputShape>,
    /// Class count, once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Layers in order.
    pub layers: Vec<Layer>,
}

/// One row of [`NetSpec::summary`].
#[derive(Debug, Clone)]
pub struct LayerSummary {
    /// Layer description.
    pub layer: String,
    /// Output shape per image.
    pub output: Shape,
    /// Parameters of this layer.
    pub params: usize,
    /// Forward multiply-adds ×2 per image.
    pub flops: u64,
}

impl NetSpec {
    /// Reads a spec from a `.toml` or `.json` file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses spec text, TOML or JSON as `path`'s extension says; `path` names it in
    /// errors. The layer structure is checked; shapes are checked by [`NetSpec::bind`].
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let spec: NetSpec = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                serde_json::from_str(text).map_err(|e| Error::format(path, e.to_string()))?
            }
            Some("toml") => toml::from_str(text).map_err(|e| {
                Error::format(path, e.to_string().replace('\n', " ").trim().to_string())
            })?,
            _ => return Err(Error::format(path, "spec files must end in .toml or .json")),
        };
        spec.check_structure()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(spec)
    }

    /// Writes the spec as pretty JSON, atomically.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json_atomic(path, self)
    }

    /// Checks names and layer order, independent of input size.
    pub fn check_structure(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::invalid(format!("net {:?} has no layers", self.name)));
        }
        let mut names = BTreeSet::new();
        self.check_layers(&self.layers, "", &mut names)?;
        match self.logit_layers().last() {
            Some(Layer::Fc(_)) => Ok(()),
            _ => Err(Error::invalid(format!(
                "net {:?} must end with a fully connected classifier (optionally followed by softmax)",
                self.name
            ))),
        }
    }

    /// Checks the layers of the net (`within` empty) or of a residual block's branch
    /// (`within` names it, e.g. `layer 4 (…), body `); `names` collects the names seen.
    fn check_layers(
        &self,
        layers: &[Layer],
        within: &str,
        names: &mut BTreeSet<String>,
    ) -> Result<()> {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        for (i, l) in layers.iter().enumerate() {
            let at = || format!("{within}layer {} ({})", i + 1, l.describe());
            if let Some(n) = l.name() {
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(Error::invalid(format!(
                        "{}: name {n:?} must be non-empty ASCII letters, digits, '_' or '-'",
                        at()
                    )));
                }
                if !names.insert(n.to_string()) {
                    return Err(Error::invalid(format!(
                        "{}: duplicate layer name {n:?}",
                        at()
                    )));
                }
            }
            match l {
                Layer::Conv(c)
                    if [c.kernel, c.stride, c.dilation, c.padding]
                        .iter()
                        .any(|&v| v > MAX_WINDOW)
                        || c.filters > MAX_UNITS =>
                {
                    return Err(Error::invalid(format!(
                        "{}: kernel, stride, dilation and padding must be at most {MAX_WINDOW}, filters at most {MAX_UNITS}",
                        at()
                    )));
                }
                Layer::MaxPool(p) | Layer::AvgPool(p)
                    if [p.kernel, p.stride(), p.dilation, p.padding]
                        .iter()
                        .any(|&v| v > MAX_WINDOW) =>
                {
                    return Err(Error::invalid(format!(
                        "{}: kernel, stride, dilation and padding must be at most {MAX_WINDOW}",
                        at()
                    )));
                }
                Layer::Fc(Fc {
                    outputs: Units::Fixed(n),
                    ..
                }) if *n > MAX_UNITS => {
                    return Err(Error::invalid(format!(
                        "{}: outputs must be at most {MAX_UNITS}",
                        at()
                    )));
                }
                Layer::Lrn(n) if n.size > MAX_WINDOW => {
                    return Err(Error::invalid(format!(
                        "{}: size must be at most {MAX_WINDOW}",
                        at()
                    )));
                }
                Layer::Conv(c)
                    if c.filters == 0 || c.kernel == 0 || c.stride == 0 || c.dilation == 0 =>
                {
                    return Err(Error::invalid(format!(
                        "{}: filters, kernel, stride and dilation must be ≥ 1",
                        at()
                    )));
                }
                Layer::MaxPool(p) | Layer::AvgPool(p)
                    if p.kernel == 0 || p.stride() == 0 || p.dilation == 0 =>
                {
                    return Err(Error::invalid(format!(
                        "{}: kernel, stride and dilation must be ≥ 1",
                        at()
                    )));
                }
                Layer::AvgPool(p) if p.ceil_mode => {
                    return Err(Error::invalid(format!(
                        "{}: average pooling has no ceil_mode (its divisor at the edge would be ambiguous)",
                        at()
                    )));
                }
                Layer::BatchNorm(b) if !(b.eps.is_finite() && b.eps > 0.0) => {
                    return Err(Error::invalid(format!("{}: eps must be > 0", at())));
                }
                Layer::BatchNorm(b) if !(0.0..=1.0).contains(&b.momentum) => {
                    return Err(Error::invalid(format!(
                        "{}: momentum must be in [0, 1]",
                        at()
                    )));
                }
                Layer::Lrn(n) if n.size % 2 == 0 || n.size == 0 => {
                    return Err(Error::invalid(format!("{}: size must be odd", at())));
                }
                Layer::Dropout(d) if !(0.0..1.0).contains(&d.p) => {
                    return Err(Error::invalid(format!("{}: p must be in [0, 1)", at())));
                }
                Layer::Fc(Fc {
                    outputs: Units::Fixed(0),
                    ..
                }) => {
                    return Err(Error::invalid(format!("{}: outputs must be ≥ 1", at())));
                }
                Layer::Softmax if i + 1 != layers.len() || !within.is_empty() => {
                    return Err(Error::invalid(format!(
                        "{}: softmax is only allowed as the last layer",
                        at()
                    )));
                }
                Layer::Residual(_) | Layer::Fc(_) | Layer::GlobalAvgPool if !within.is_empty() => {
                    return Err(Error::invalid(format!(
                        "{}: a residual block holds map layers only (conv, batch_norm, relu, pools, lrn, dropout)",
                        at()
                    )));
                }
                Layer::Residual(r) if r.body.is_empty() => {
                    return Err(Error::invalid(format!("{}: its body is empty", at())));
                }
                Layer::Residual(r) => {
                    self.check_layers(&r.body, &format!("{}, body ", at()), names)?;
                    self.check_layers(&r.shortcut, &format!("{}, shortcut ", at()), names)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The layers that produce the logits (everything but a final softmax).
    pub fn logit_layers(&self) -> &[Layer] {
        match self.layers.last() {
            Some(Layer::Softmax) => &self.layers[..self.layers.len() - 1],
            _ => &self.layers,
        }
    }

    /// Binds the spec to an input shape and class count, checking every layer fits.
    pub fn bind(&self, input: InputShape, classes: usize) -> Result<NetSpec> {
        if let Some(have) = self.input
            && have != input
        {
            return Err(Error::invalid(format!(
                "net {:?} is built for {}×{}×{} input, the data is {}×{}×{}",
                self.name,
                have.channels,
                have.height,
                have.width,
                input.channels,
                input.height,
                input.width
            )));
        }
        if let Some(have) = self.classes
            && have != classes
        {
            return Err(Error::invalid(format!(
                "net {:?} has {have} classes, the data has {classes}",
                self.name
            )));
        }
        let bound = NetSpec {
            input: Some(input),
            classes: Some(classes),
            ..self.clone()
        };
        bound.check_structure()?;
        bound.summary()?;
        if let Some(Layer::Fc(f)) = bound.logit_layers().last()
            && let Units::Fixed(n) = f.outputs
            && n != classes
        {
            return Err(Error::invalid(format!(
                "classifier {} has {n} outputs but the data has {classes} classes (use outputs = \"classes\")",
                f.name
            )));
        }
        Ok(bound)
    }

    fn bound_input(&self) -> Result<(InputShape, usize)> {
        match (self.input, self.classes) {
            (Some(i), Some(c)) => Ok((i, c)),
            _ => Err(Error::invalid(format!(
                "net {:?} is not bound to an input size and class count",
                self.name
            ))),
        }
    }

    /// Number of outputs of a fully connected layer.
    pub fn units(&self, u: Units) -> Result<usize> {
        match u {
            Units::Fixed(n) => Ok(n),
            Units::Classes => self.bound_input().map(|(_, c)| c),
        }
    }

    /// Per-layer output shapes, parameter and FLOP counts; fails naming the first layer
    /// that does not fit its input.
    pub fn summary(&self) -> Result<Vec<LayerSummary>> {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        let (input, _) = self.bound_input()?;
        self.rows(&self.layers, input_map(input), "")
    }

    /// The summary of `layers` (the net's, or a residual block's branch, which `within`
    /// names for errors) reading maps of `shape`.
    pub fn rows(
        &self,
        layers: &[Layer],
        mut shape: Shape,
        within: &str,
    ) -> Result<Vec<LayerSummary>> {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        let (input, _) = self.bound_input()?;
        let mut rows = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let at = format!("{within}layer {} ({})", i + 1, l.describe());
            let too_small = |what: &str| {
                Error::invalid(format!(
                    "net {:?}, {at}: {what} does not fit its {shape} input at {}×{} images",
                    self.name, input.height, input.width
                ))
            };
            let too_big = || {
                Error::invalid(format!(
                    "net {:?}, {at}: too large (more than {MAX_ELEMENTS} values per image, or sizes that overflow)",
                    self.name,
                ))
            };
            let (out, params, flops) = match (l, shape) {
                (Layer::Conv(c), Shape::Map { c: ci, h, w }) => {
                    let oh = window_out(h, c.kernel, c.stride, c.padding, c.dilation, false)
                        .ok_or_else(|| too_small("the kernel"))?;
                    let ow = window_out(w, c.kernel, c.stride, c.padding, c.dilation, false)
                        .ok_or_else(|| too_small("the kernel"))?;
                    let macs = [ci, c.kernel, c.kernel]
                        .iter()
                        .try_fold(c.filters, |a, &b| a.checked_mul(b));
                    let params = macs
                        .and_then(|m| m.checked_add(c.filters))
                        .ok_or_else(too_big)?;
                    let flops = macs
                        .and_then(|m| m.checked_mul(oh)?.checked_mul(ow)?.checked_mul(2))
                        .ok_or_else(too_big)? as u64;
                    (
                        Shape::Map {
                            c: c.filters,
                            h: oh,
                            w: ow,
                        },
                        params,
                        flops,
                    )
                }
                (Layer::MaxPool(p), Shape::Map { c, h, w }) => {
                    let oh =
                        window_out(h, p.kernel, p.stride(), p.padding, p.dilation, p.ceil_mode)
                            .ok_or_else(|| too_small("the pooling window"))?;
                    let ow =
                        window_out(w, p.kernel, p.stride(), p.padding, p.dilation, p.ceil_mode)
                            .ok_or_else(|| too_small("the pooling window"))?;
                    for (side, out) in [(h, oh), (w, ow)] {
                        if let Some(o) =
                            empty_window(side, p.kernel, p.stride(), p.padding, p.dilation, out)
                        {
                            return Err(too_small(&format!("its window {o}, all padding,")));
                        }
                    }
                    (Shape::Map { c, h: oh, w: ow }, 0, 0)
                }
                (Layer::AvgPool(p), Shape::Map { c, h, w }) => {
                    let oh = window_out(h, p.kernel, p.stride(), p.padding, p.dilation, false)
                        .ok_or_else(|| too_small("the pooling window"))?;
                    let ow = window_out(w, p.kernel, p.stride(), p.padding, p.dilation, false)
                        .ok_or_else(|| too_small("the pooling window"))?;
                    let flops = [c, oh, ow, p.kernel, p.kernel]
                        .iter()
                        .try_fold(1usize, |a, &b| a.checked_mul(b))
                        .ok_or_else(too_big)? as u64;
                    (Shape::Map { c, h: oh, w: ow }, 0, flops)
                }
                (Layer::GlobalAvgPool, Shape::Map { c, h, w }) => {
                    (Shape::Map { c, h: 1, w: 1 }, 0, (c * h * w) as u64)
                }
                (Layer::BatchNorm(_), Shape::Map { c, h, w }) => {
                    (Shape::Map { c, h, w }, 2 * c, (2 * c * h * w) as u64)
                }
                (
                    Layer::Conv(_)
                    | Layer::MaxPool(_)
                    | Layer::AvgPool(_)
                    | Layer::GlobalAvgPool
                    | Layer::BatchNorm(_)
                    | Layer::Lrn(_)
                    | Layer::Residual(_),
                    Shape::Flat(_),
                ) => {
                    return Err(Error::invalid(format!(
                        "net {:?}, {at}: needs feature maps but follows a fully connected layer",
                        self.name,
                    )));
                }
                (Layer::Residual(r), s) => {
                    let (out, params, flops) = self.residual_row(r, s, &at)?;
                    let add = flops.checked_add(out.numel() as u64).ok_or_else(too_big)?;
                    (out, params, add)
                }
                (Layer::Fc(f), s) => {
                    let n = self.units(f.outputs)?;
                    let macs = n.checked_mul(s.numel()).ok_or_else(too_big)?;
                    let params = macs.checked_add(n).ok_or_else(too_big)?;
                    let flops = macs.checked_mul(2).ok_or_else(too_big)? as u64;
                    (Shape::Flat(n), params, flops)
                }
                (Layer::Relu | Layer::Lrn(_) | Layer::Dropout(_) | Layer::Softmax, s) => (s, 0, 0),
            };
            // Every later size is a product of this one's: keep them all far from overflow.
            if out.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(too_big());
            }
            shape = out;
            rows.push(LayerSummary {
                layer: l.describe(),
                output: out,
                params,
                flops,
            });
        }
        Ok(rows)
    }

    /// Output shape, parameters and FLOPs (without the sum's) of a residual block at `at`
    /// reading maps of `shape`: both branches must give the same shape.
    fn residual_row(&self, r: &Residual, shape: Shape, at: &str) -> Result<(Shape, usize, u64)> {
        let body = self.rows(&r.body, shape, &format!("{at}, body "))?;
        let shortcut = self.rows(&r.shortcut, shape, &format!("{at}, shortcut "))?;
        let out = |rows: &[LayerSummary]| rows.last().map_or(shape, |r| r.output);
        if out(&body) != out(&shortcut) {
            return Err(Error::invalid(format!(
                "net {:?}, {at}: its body gives {} maps but its shortcut {}; they are added, so they must match (a 1×1 projection shortcut changes channels and side)",
                self.name,
                out(&body),
                out(&shortcut)
            )));
        }
        let all = body.iter().chain(&shortcut);
        let params = all.clone().map(|r| r.params).sum();
        let flops = all.map(|r| r.flops).sum();
        Ok((out(&body), params, flops))
    }

    /// Names and shapes of every tensor, in layer order (`.weight` before `.bias`).
    pub fn param_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(self
            .tensors()?
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .collect())
    }

    /// Names, shapes and kinds of every tensor, in layer order: `.weight` before `.bias`,
    /// then a batch norm's `.running_mean` and `.running_var`.
    pub fn tensors(&self) -> Result<Vec<(String, Vec<usize>, TensorKind)>> {
        let (input, _) = self.bound_input()?;
        let mut out = Vec::new();
        self.collect_tensors(&self.layers, input_map(input), "", &mut out)?;
        Ok(out)
    }

    /// The tensors of `layers` reading maps of `shape`, appended to `out`.
    fn collect_tensors(
        &self,
        layers: &[Layer],
        mut shape: Shape,
        within: &str,
        out: &mut Vec<(String, Vec<usize>, TensorKind)>,
    ) -> Result<()> {
        let rows = self.rows(layers, shape, within)?;
        for (l, row) in layers.iter().zip(&rows) {
            match l {
                Layer::Conv(c) => {
                    let ci = match shape {
                        Shape::Map { c, .. } => c,
                        Shape::Flat(_) => 0,
                    };
                    out.push((
                        param_name(&c.name, Param::Weight),
                        vec![c.filters, ci, c.kernel, c.kernel],
                        TensorKind::Weight,
                    ));
                    out.push((
                        param_name(&c.name, Param::Bias),
                        vec![c.filters],
                        TensorKind::Bias,
                    ));
                }
                Layer::Fc(f) => {
                    let n = self.units(f.outputs)?;
                    out.push((
                        param_name(&f.name, Param::Weight),
                        vec![n, shape.numel()],
                        TensorKind::Weight,
                    ));
                    out.push((param_name(&f.name, Param::Bias), vec![n], TensorKind::Bias));
                }
                Layer::BatchNorm(b) => {
                    let c = match shape {
                        Shape::Map { c, .. } => c,
                        Shape::Flat(n) => n,
                    };
                    for (p, kind) in [
                        (Param::Weight, TensorKind::Scale),
                        (Param::Bias, TensorKind::Shift),
                        (Param::RunningMean, TensorKind::Statistic),
                        (Param::RunningVar, TensorKind::Statistic),
                    ] {
                        out.push((param_name(&b.name, p), vec![c], kind));
                    }
                }
                Layer::Residual(r) => {
                    self.collect_tensors(&r.body, shape, within, out)?;
                    self.collect_tensors(&r.shortcut, shape, within, out)?;
                }
                _ => {}
            }
            shape = row.output;
        }
        Ok(())
    }

    /// Total count of trained parameters (a batch norm's running statistics are not).
    pub fn num_params(&self) -> Result<usize> {
        Ok(self.summary()?.iter().map(|r| r.params).sum())
    }

    /// Forward FLOPs per image.
    pub fn flops(&self) -> Result<u64> {
        Ok(self.summary()?.iter().map(|r| r.flops).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML_SPEC: &str = r#"
name = "tiny"

[[layers]]
type = "conv"
name = "conv1"
filters = 4
kernel = 3
padding = 1

[[layers]]
type = "relu"

[[layers]]
type = "max_pool"
kernel = 2

[[layers]]
type = "fc"
name = "fc1"
outputs = "classes"

[[layers]]
type = "softmax"
"#;

    /// Inputs that overflowed `summary`'s arithmetic (kept in fuzz/seeds/spec/): each is
    /// now an error naming the layer, never a panic.
    #[test]
    fn huge_numbers_are_errors_not_overflows() {
        let cases = [
            (
                "conv",
                "type=\"conv\"\nname=\"c\"\nfilters=4611686018427387904\nkernel=3",
            ),
            ("fc", "type=\"fc\"\nname=\"f\"\noutputs=4611686018427387904"),
            (
                "pad",
                "type=\"conv\"\nname=\"c\"\nfilters=2\nkernel=3\npadding=9223372036854775807",
            ),
            (
                "kernel",
                "type=\"conv\"\nname=\"c\"\nfilters=2\nkernel=18446744073709551615",
            ),
            (
                "wide",
                "type=\"conv\"\nname=\"c\"\nfilters=16777216\nkernel=1",
            ),
        ];
        for (what, layer) in cases {
            let text = format!(
                "name=\"x\"\n[[layers]]\n{layer}\n[[layers]]\ntype=\"fc\"\nname=\"g\"\noutputs=\"classes\"\n"
            );
            let bound = NetSpec::parse(Path::new("x.toml"), &text)
                .and_then(|s| s.bind(InputShape::square(3, 32), 10));
            let err = bound.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("at most") || err.contains("too large"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn toml_round_trip_and_shapes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = dir.path().join("tiny.toml");
        std::fs::write(&p, TOML_SPEC).map_err(|e| Error::io(&p, e))?;
        let spec = NetSpec::load(&p)?;
        let bound = spec.bind(InputShape::square(1, 8), 10)?;
        let j = dir.path().join("tiny.json");
        bound.save_json(&j)?;
        assert_eq!(NetSpec::load(&j)?, bound);
        let shapes = bound.param_shapes()?;
        assert_eq!(
            shapes,
            vec![
                ("conv1.weight".to_string(), vec![4, 1, 3, 3]),
                ("conv1.bias".to_string(), vec![4]),
                ("fc1.weight".to_string(), vec![10, 64]),
                ("fc1.bias".to_string(), vec![10]),
            ]
        );
        assert_eq!(bound.num_params()?, 4 * 9 + 4 + 640 + 10);
        assert_eq!(bound.flops()?, 2 * (4 * 9 * 64) + 2 * 640);
        Ok(())
    }

    #[test]
    fn rejects_bad_specs_with_names() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, TOML_SPEC.replace("\"max_pool\"", "\"avg_poo\""))
            .map_err(|e| Error::io(&p, e))?;
        let e = NetSpec::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("avg_poo"), "{e}");

        std::fs::write(
            &p,
            TOML_SPEC.replace("kernel = 3", "kernel = 3\nfilterz = 2"),
        )
        .map_err(|e| Error::io(&p, e))?;
        let e = NetSpec::load(&p).unwrap_err().to_string();
        assert!(e.contains("filterz"), "{e}");

        std::fs::write(&p, TOML_SPEC).map_err(|e| Error::io(&p, e))?;
        let spec = NetSpec::load(&p)?;
        let e = spec
            .bind(InputShape::square(1, 1), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 3") && e.contains("max-pool"), "{e}");
        Ok(())
    }

    /// Batch norms and average pools: their settings are checked, they need feature maps,
    /// and their tensors are named like PyTorch's.
    #[test]
    fn batch_norm_and_average_pool_settings_are_checked() -> Result<()> {
        let net = |layer: &str| {
            format!(
                "name=\"x\"\n[[layers]]\ntype=\"conv\"\nname=\"c\"\nfilters=2\nkernel=1\n[[layers]]\n{layer}\n[[layers]]\ntype=\"fc\"\nname=\"f\"\noutputs=\"classes\"\n"
            )
        };
        let parse = |layer: &str| NetSpec::parse(Path::new("x.toml"), &net(layer));
        for (layer, needle) in [
            (
                "type=\"batch_norm\"\nname=\"b\"\neps=0.0",
                "eps must be > 0",
            ),
            (
                "type=\"batch_norm\"\nname=\"b\"\nmomentum=1.5",
                "momentum must be in [0, 1]",
            ),
            ("type=\"batch_norm\"\nname=\"c\"", "duplicate layer name"),
            (
                "type=\"avg_pool\"\nkernel=2\nceil_mode=true",
                "no ceil_mode",
            ),
            ("type=\"avg_pool\"\nkernel=0", "must be ≥ 1"),
        ] {
            let err = parse(layer)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("x.toml") && err.contains(needle),
                "{layer}: {err}"
            );
        }
        let spec = parse("type=\"batch_norm\"\nname=\"b\"")?.bind(InputShape::square(1, 4), 3)?;
        let names: Vec<String> = spec.param_shapes()?.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names[2..6],
            ["b.weight", "b.bias", "b.running_mean", "b.running_var"]
        );
        assert_eq!(spec.num_params()?, 2 * 2 + 2 * 2 + (2 * 16 * 3 + 3));
        // A batch norm or pool after the maps are flattened is refused at binding.
        let flat = "name=\"x\"\n[[layers]]\ntype=\"fc\"\nname=\"f\"\noutputs=4\n[[layers]]\ntype=\"global_avg_pool\"\n[[layers]]\ntype=\"fc\"\nname=\"g\"\noutputs=\"classes\"\n";
        let err = NetSpec::parse(Path::new("x.toml"), flat)?
            .bind(InputShape::square(1, 4), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs feature maps"), "{err}");
        let gap = parse("type=\"global_avg_pool\"")?.bind(InputShape::square(1, 5), 3)?;
        assert_eq!(gap.summary()?[1].output, Shape::Map { c: 2, h: 1, w: 1 });
        Ok(())
    }

    /// A residual block in TOML: its branches' layers are checked like the net's, its
    /// tensors follow in order (body, then shortcut), and every misuse is an error naming
    /// the block and the layer.
    #[test]
    fn residual_blocks_parse_and_their_misuse_is_named() -> Result<()> {
        let net = |block: &str| {
            format!(
                "name=\"x\"\n[[layers]]\ntype=\"conv\"\nname=\"c\"\nfilters=2\nkernel=3\npadding=1\n\
                 [[layers]]\ntype=\"residual\"\n{block}\n\
                 [[layers]]\ntype=\"fc\"\nname=\"f\"\noutputs=\"classes\"\n"
            )
        };
        let conv = |name: &str, filters: usize, stride: usize| {
            format!(
                "type=\"conv\"\nname=\"{name}\"\nfilters={filters}\nkernel=3\npadding=1\nstride={stride}\n"
            )
        };
        let body = |layers: &[String]| {
            layers
                .iter()
                .map(|l| format!("[[layers.body]]\n{l}"))
                .collect::<String>()
        };
        let parse = |text: &str| NetSpec::parse(Path::new("x.toml"), text);
        let bind = |text: &str| parse(text).and_then(|s| s.bind(InputShape::square(1, 6), 3));

        let good = net(&format!(
            "{}[[layers.shortcut]]\ntype=\"conv\"\nname=\"p\"\nfilters=4\nkernel=1\nstride=2\n",
            body(&[conv("r1", 4, 2), "type=\"relu\"\n".into(), conv("r2", 4, 1)])
        ));
        let spec = bind(&good)?;
        let names: Vec<String> = spec.param_shapes()?.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "c.weight",
                "c.bias",
                "r1.weight",
                "r1.bias",
                "r2.weight",
                "r2.bias",
                "p.weight",
                "p.bias",
                "f.weight",
                "f.bias"
            ]
        );
        assert_eq!(spec.summary()?[1].output, Shape::Map { c: 4, h: 3, w: 3 });
        // r1 4×2×3×3, r2 4×4×3×3, p 4×2×1×1, and their biases.
        assert_eq!(spec.summary()?[1].params, 76 + 148 + 12);

        for (text, needle) in [
            (
                net(&body(&[conv("r1", 4, 1)])),
                "its body gives 4×6×6 maps but its shortcut 2×6×6",
            ),
            (net(&body(&[conv("c", 2, 1)])), "duplicate layer name \"c\""),
            (net(""), "its body is empty"),
            (
                net(&body(&["type=\"fc\"\nname=\"g\"\noutputs=3\n".into()])),
                "body layer 1 (g fc 3): a residual block holds map layers only",
            ),
            (
                net(&body(&[
                    "type=\"residual\"\n[[layers.body.body]]\ntype=\"relu\"\n".into(),
                ])),
                "a residual block holds map layers only",
            ),
        ] {
            let err = bind(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(err.contains("layer 2 (residual"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn window_sizes_match_caffe_and_pytorch() {
        assert_eq!(window_out(55, 3, 2, 0, 1, false), Some(27));
        assert_eq!(window_out(6, 3, 2, 0, 1, false), Some(2));
        assert_eq!(window_out(6, 3, 2, 0, 1, true), Some(3));
        assert_eq!(window_out(5, 2, 2, 1, 1, true), Some(3));
        assert_eq!(window_out(16, 4, 1, 0, 1, false), Some(13));
        assert_eq!(window_out(2, 3, 1, 0, 1, false), None);
        assert_eq!(window_out(7, 2, 1, 0, 2, false), Some(5));
    }
}
