//! The native CPU engine: forward and backward passes of a spec written directly on
//! [`kernels`], with every buffer allocated once per batch size and reused across steps.
//!
//! burn's CPU backend runs each operation eagerly through a general autodiff graph: it
//! allocates every intermediate, and lowers a 2-D convolution to a 3-D one whose im2col
//! and transposes were a third of a training step. A spec's layer set is small and fixed,
//! so this engine writes out each layer's gradient by hand and fuses a ReLU that follows
//! a convolution or fully connected layer into it.
//!
//! **Blocks.** A batch is split into at most [`MAX_BLOCKS`] blocks of consecutive images.
//! Feature maps are stored block by block, each block laid out `C × images × H × W`, and
//! every map layer runs block-parallel: one thread per block, no synchronisation inside a
//! layer, and each block's convolution unfolds only a cache-sized run of its images at a
//! time (a product over the whole batch's unfolded input ran at a third of the speed, for
//! want of cache). Weight gradients are summed per block and then over blocks in block
//! order; as the split does not depend on the number of threads, neither do the results.
//! Flattened activations (`N × features`, row-major) are shared by all blocks, and the
//! fully connected layers use the matrix product's own threads.
//!
//! It is checked against burn (`BackendKind::Flex`) on every layer type and option, for
//! logits, loss and updated weights, in the tests of the parent module.

use std::sync::{Mutex, PoisonError};

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::batch_norm::{self as bn, BatchStats};
use super::direct;
use super::kernels::{self, Epilogue, LrnParams, Mat, MatMut, Window};
use super::sparse_fc;
use super::winograd::{self, RunScratch};
use crate::error::{Error, Result};
use crate::net::spec::{Layer, NetSpec, Param, Shape, input_map, param_name};

/// Most blocks a batch is split into: enough to keep 16 threads busy.
const MAX_BLOCKS: usize = 16;

/// Values of an unfolded input a block handles at once: 512 KiB, about a core's L2 cache.
const COL_BUDGET: usize = 1 << 17;

/// One step of the compiled net. Sizes are per image.
#[derive(Debug, Clone)]
enum Step {
    Conv {
        /// Index of the weight in the parameter list; the bias follows it.
        param: usize,
        geom: Window,
        filters: usize,
        relu: bool,
        /// How the forward pass runs ([`Algo::forward`]).
        forward: Algo,
        /// How the backward pass runs ([`Algo::choose`]).
        backward: Algo,
    },
    Pool(Window),
    AvgPool(Window),
    /// Mean of each map of `plane` values.
    GlobalAvgPool {
        plane: usize,
    },
    BatchNorm {
        /// Index of γ; β, the running mean and the running variance follow it.
        param: usize,
        channels: usize,
        plane: usize,
        eps: f32,
        momentum: f32,
        /// An activation added after the affine map (before the ReLU): the other branch of
        /// a residual block whose body ends here, so the block's sum is no pass of its own.
        add: Option<usize>,
        relu: bool,
    },
    Lrn(LrnParams),
    Relu,
    /// Drop probability, and the channels of the maps it drops from (`None`: flat values).
    Dropout(f32, Option<usize>),
    /// `C × images × HW` maps to `images × C·HW` rows, block by block.
    Flatten {
        channels: usize,
        plane: usize,
    },
    Fc {
        param: usize,
        inputs: usize,
        outputs: usize,
        relu: bool,
    },
    /// The end of a residual block: the activation it reads plus activation `other`.
    Add {
        other: usize,
        relu: bool,
    },
}

/// A 1×1 convolution with stride 1 and no padding reads its input as the unfolded matrix.
fn is_pointwise(g: &Window) -> bool {
    g.kernel == 1 && g.stride == 1 && g.pad == 0
}

/// How a convolution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    /// Unfolded input times the weights.
    Unfolded,
    /// Winograd F(2×2, 3×3) ([`winograd::applies`]).
    Winograd,
    /// Shifted reads of a padded copy ([`direct::applies`]) for the output, the weight
    /// gradient and the input gradient (strided: by phases).
    Direct,
}

impl Algo {
    /// How a convolution's backward pass runs, and its forward unless [`Algo::forward`]
    /// says otherwise.
    fn choose(g: &Window, filters: usize) -> Self {
        if winograd::applies(g, filters) {
            Algo::Winograd
        } else if direct::applies(g, filters) {
            Algo::Direct
        } else {
            Algo::Unfolded
        }
    }

    /// How a convolution's forward pass runs, given its `backward`: as Winograd on more
    /// windows than the backward ([`winograd::applies_forward`]), never on fewer, so a
    /// Winograd backward finds the filters its forward transformed.
    fn forward(g: &Window, filters: usize, backward: Algo) -> Self {
        if winograd::applies_forward(g, filters) {
            Algo::Winograd
        } else {
            backward
        }
    }
}

/// Images of a convolution's unfolded input that fit in [`COL_BUDGET`] (at least one).
fn images_per_run(g: &Window) -> usize {
    (COL_BUDGET / (g.col_rows() * g.out_plane()).max(1)).max(1)
}

/// A convolution's weights and bias with the batch norm after it folded in
/// ([`NativeNet::folded_batch_norm`]), and what that batch norm adds (the activation of
/// a residual block's other branch) and its ReLU.
struct FoldedConv {
    wt: Vec<f32>,
    bias: Vec<f32>,
    add: Option<usize>,
    relu: bool,
}

/// Per-block scratch buffers.
#[derive(Debug, Default, Clone)]
struct Scratch {
    col: Vec<f32>,
    dcol: Vec<f32>,
    /// One zero-padded input plane.
    padded: Vec<f32>,
    /// A convolution's weight gradient for this block (`K × C_out`, i.e. transposed),
    /// then its bias gradient.
    partial: Vec<f32>,
    /// Winograd convolutions: input-tile gradients, and filter-tile gradients.
    dv: Vec<f32>,
    du: Vec<f32>,
    /// Direct convolutions: the padded input run, and staged outputs; for the weight
    /// gradient, the output gradient position by position and the gradient's sums.
    direct_in: Vec<f32>,
    stage: Vec<f32>,
    dyt: Vec<f32>,
    acc: Vec<f32>,
}

impl Scratch {
    /// The Winograd view: transformed input in `col`, products in `dcol`.
    fn winograd(&mut self) -> RunScratch<'_> {
        RunScratch {
            v: &mut self.col,
            m: &mut self.dcol,
            dv: &mut self.dv,
            du: &mut self.du,
            padded: &mut self.padded,
        }
    }

    /// Makes room for a convolution over blocks of `g.images` images.
    fn fit(&mut self, g: &Window, filters: usize, algo: Algo) {
        fn at_least(v: &mut Vec<f32>, n: usize) {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
        at_least(&mut self.partial, (g.col_rows() + 1) * filters);
        if algo == Algo::Winograd {
            let run = winograd::images_per_run(g, filters, COL_BUDGET).min(g.images);
            let (vn, mn) = winograd::run_values(g, filters, run);
            at_least(&mut self.col, vn.max(mn));
            at_least(&mut self.dcol, vn.max(mn));
            at_least(&mut self.dv, vn);
            at_least(&mut self.du, winograd::XI * filters * g.channels);
            at_least(&mut self.padded, winograd::padded_plane(g));
            return;
        }
        let run = images_per_run(g).min(g.images);
        if algo == Algo::Direct {
            // The weight gradient's buffers grow on first use.
            let mut windows = vec![(*g, filters)];
            if direct::input_gradient_is_direct(g) {
                windows.push((direct::transposed_window(g, filters), g.channels));
            } else {
                at_least(&mut self.dcol, g.col_rows() * g.out_plane() * run);
                at_least(&mut self.padded, g.padded_plane());
            }
            for (d, f) in windows {
                let (p, s) = direct::scratch_len(&d, f, direct::images_per_run(&d, COL_BUDGET));
                at_least(&mut self.direct_in, p);
                at_least(&mut self.stage, s);
            }
            return;
        }
        at_least(&mut self.col, g.col_rows() * g.out_plane() * run);
        at_least(&mut self.dcol, g.col_rows() * g.out_plane() * run);
        at_least(&mut self.padded, g.padded_plane());
    }

    fn direct(&mut self) -> direct::RunScratch<'_> {
        direct::RunScratch {
            padded: &mut self.direct_in,
            stage: &mut self.stage,
        }
    }
}

/// Buffers for one batch size.
#[derive(Debug, Default)]
struct Workspace {
    batch: usize,
    /// First image of each block, and the batch size last.
    starts: Vec<usize>,
    /// `acts[0]` is the input, `acts[i + 1]` the output of step `i`.
    acts: Vec<Vec<f32>>,
    /// Per step: maxima positions (pool), LRN sums and scales, dropout masks.
    args: Vec<Vec<u32>>,
    lrn_sum: Vec<Vec<f32>>,
    lrn_scale: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    /// Per step: a batch norm's statistics of the last training batch.
    bn: Vec<BatchStats>,
    scratch: Vec<Scratch>,
    grad_out: Vec<f32>,
    grad_in: Vec<f32>,
    /// LRN backward scratch, the size of the largest LRN input.
    lrn_tmp: Vec<f32>,
    /// Per step: a Winograd convolution's transformed filters (`16 × C_out × C_in`), or a
    /// direct one's packed weights.
    wino_u: Vec<Vec<f32>>,
    /// Per step: a direct convolution's packed weights for the input gradient.
    packed_t: Vec<Vec<f32>>,
    /// Per activation off the chain: the sum of its gradient over its readers so far.
    stash: Vec<Vec<f32>>,
    /// A convolution's weight and bias gradients summed over the blocks, in the blocks'
    /// layout.
    partial_sum: Vec<f32>,
    /// A fully connected layer's buffers ([`fc_forward`]).
    fc: FcScratch,
}

/// [`fc_forward`]'s buffers, kept between calls.
#[derive(Debug, Default)]
struct FcScratch {
    /// The output, transposed.
    transposed: Vec<f32>,
    /// The sparse product's.
    sparse: sparse_fc::Scratch,
}

/// A network compiled for the native engine.
#[derive(Debug)]
pub(crate) struct NativeNet {
    steps: Vec<Step>,
    /// Index of the spec's logit layer each step computes (a fused ReLU has none).
    layer_of: Vec<usize>,
    /// Values per image of each activation: the input (`sizes[0]`), then the output of
    /// each step (`sizes[i + 1]`).
    sizes: Vec<usize>,
    /// The activation each step reads: the previous step's output, except where a
    /// residual block's shortcut starts from the block's input.
    src: Vec<usize>,
    /// Per activation: read by exactly one step, the next one. The gradient of any other
    /// (a residual block's input, or its body's output when the shortcut is a projection)
    /// is summed in its own buffer over the steps that read it.
    chain: Vec<bool>,
    input: [usize; 3],
    pub(crate) params: Vec<Vec<f32>>,
    ws: Mutex<Workspace>,
}

fn window(
    shape: Shape,
    out: Shape,
    kernel: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Window {
    let (Shape::Map { c, h, w }, Shape::Map { h: oh, w: ow, .. }) = (shape, out) else {
        unreachable!("shape inference gives windows map inputs and outputs")
    };
    Window {
        channels: c,
        images: 0,
        h,
        w,
        oh,
        ow,
        kernel,
        stride,
        pad,
        dilation: dil,
    }
}

/// Splits `buf` into the blocks of `starts`, `per` values per image.
fn blocks<'a, T>(buf: &'a [T], starts: &[usize], per: usize) -> Vec<&'a [T]> {
    starts
        .windows(2)
        .map(|w| &buf[w[0] * per..w[1] * per])
        .collect()
}

fn blocks_mut<'a, T>(mut buf: &'a mut [T], starts: &[usize], per: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(starts.len().saturating_sub(1));
    for w in starts.windows(2) {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut((w[1] - w[0]) * per);
        out.push(head);
        buf = tail;
    }
    out
}

/// The blocks of activation `add` (a residual block's other branch, `per` values per
/// image), or none for each block.
fn other_branch<'a>(
    acts: &'a [Vec<f32>],
    add: Option<usize>,
    starts: &[usize],
    per: usize,
) -> Vec<Option<&'a [f32]>> {
    match add {
        Some(o) => blocks(&acts[o], starts, per)
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; starts.len().saturating_sub(1)],
    }
}

/// Images per block: the block's share of `starts`.
fn block_images(starts: &[usize]) -> Vec<usize> {
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The steps of a spec as they are compiled: each step reads activation `src[i]` and
/// writes activation `i + 1`.
#[derive(Default)]
struct Compiler {
    steps: Vec<Step>,
    layer_of: Vec<usize>,
    sizes: Vec<usize>,
    src: Vec<usize>,
    /// The activation the next step reads.
    cur: usize,
    /// Whether a ReLU may be fused into the last step: its output is `cur` and nothing else
    /// reads it (a residual block's input is also read by its shortcut).
    fusable: bool,
}

impl Compiler {
    fn push(&mut self, step: Step, top: usize, out: Shape) {
        self.fusable = matches!(
            step,
            Step::Conv { .. } | Step::Fc { .. } | Step::BatchNorm { .. } | Step::Add { .. }
        );
        self.steps.push(step);
        self.layer_of.push(top);
        self.src.push(self.cur);
        self.sizes.push(out.numel());
        self.cur = self.steps.len();
    }

    /// Makes the last step, a batch norm whose output only the residual block's sum reads,
    /// add activation `other` itself; false if it cannot.
    fn add_to_batch_norm(&mut self, other: usize) -> bool {
        let last = self.steps.len();
        match self.steps.last_mut() {
            Some(Step::BatchNorm { add, relu, .. })
                if add.is_none() && !*relu && self.cur == last =>
            {
                *add = Some(other);
                self.fusable = true;
                true
            }
            _ => false,
        }
    }

    /// Compiles `layers` reading maps of `shape`; `top` is the spec layer they belong to
    /// (`None`: each is one).
    fn layers(
        &mut self,
        spec: &NetSpec,
        names: &[(String, Vec<usize>)],
        layers: &[Layer],
        mut shape: Shape,
        top: Option<usize>,
    ) -> Result<Shape> {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        let rows = spec.rows(layers, shape, "")?;
        let index = |n: String| {
            names
                .iter()
                .position(|(k, _)| *k == n)
                .ok_or_else(|| Error::invalid(format!("no tensor {n:?}")))
        };
        for (li, (layer, row)) in layers.iter().zip(&rows).enumerate() {
            let li = top.unwrap_or(li);
            let out = row.output;
            let step = match layer {
                Layer::Conv(c) => {
                    let geom = window(shape, out, c.kernel, c.stride, c.padding, c.dilation);
                    let backward = Algo::choose(&geom, c.filters);
                    Step::Conv {
                        param: index(param_name(&c.name, Param::Weight))?,
                        geom,
                        filters: c.filters,
                        relu: false,
                        forward: Algo::forward(&geom, c.filters, backward),
                        backward,
                    }
                }
                Layer::MaxPool(p) => Step::Pool(window(
                    shape,
                    out,
                    p.kernel,
                    p.stride(),
                    p.padding,
                    p.dilation,
                )),
                Layer::AvgPool(p) => Step::AvgPool(window(
                    shape,
                    out,
                    p.kernel,
                    p.stride(),
                    p.padding,
                    p.dilation,
                )),
                Layer::GlobalAvgPool => Step::GlobalAvgPool {
                    plane: shape.numel() / out.numel().max(1),
                },
                Layer::BatchNorm(b) => {
                    let Shape::Map { c, h, w } = shape else {
                        return Err(Error::invalid("batch norm needs feature maps"));
                    };
                    Step::BatchNorm {
                        param: index(param_name(&b.name, Param::Weight))?,
                        channels: c,
                        plane: h * w,
                        eps: b.eps,
                        momentum: b.momentum,
                        add: None,
                        relu: false,
                    }
                }
                Layer::Lrn(l) => {
                    let Shape::Map { c, h, w } = shape else {
                        return Err(Error::invalid("LRN needs feature maps"));
                    };
                    Step::Lrn(LrnParams {
                        channels: c,
                        plane: h * w,
                        size: l.size,
                        alpha: l.alpha,
                        beta: l.beta,
                        k: l.k,
                    })
                }
                Layer::Relu => match self.steps.last_mut() {
                    Some(
                        Step::Conv { relu, .. }
                        | Step::Fc { relu, .. }
                        | Step::BatchNorm { relu, .. }
                        | Step::Add { relu, .. },
                    ) if self.fusable && !*relu => {
                        *relu = true;
                        self.fusable = false;
                        continue;
                    }
                    _ => Step::Relu,
                },
                Layer::Dropout(d) => Step::Dropout(
                    d.p,
                    match shape {
                        Shape::Map { c, .. } => Some(c),
                        Shape::Flat(_) => None,
                    },
                ),
                Layer::Fc(f) => {
                    if let Shape::Map { c, h, w } = shape {
                        let flatten = Step::Flatten {
                            channels: c,
                            plane: h * w,
                        };
                        self.push(flatten, li, Shape::Flat(shape.numel()));
                    }
                    Step::Fc {
                        param: index(param_name(&f.name, Param::Weight))?,
                        inputs: shape.numel(),
                        outputs: out.numel(),
                        relu: false,
                    }
                }
                Layer::Softmax => continue,
                Layer::Residual(r) => {
                    let input = self.cur;
                    self.fusable = false;
                    self.layers(spec, names, &r.body, shape, Some(li))?;
                    let body = self.cur;
                    let other = if r.shortcut.is_empty() {
                        input
                    } else {
                        self.cur = input;
                        self.fusable = false;
                        self.layers(spec, names, &r.shortcut, shape, Some(li))?;
                        body
                    };
                    if self.add_to_batch_norm(other) {
                        shape = out;
                        continue;
                    }
                    Step::Add { other, relu: false }
                }
            };
            self.push(step, li, out);
            shape = out;
        }
        Ok(shape)
    }
}

impl NativeNet {
    /// Compiles a bound spec; `names` are its parameters in order, `params` their values.
    pub(crate) fn new(
        spec: &NetSpec,
        names: &[(String, Vec<usize>)],
        params: Vec<Vec<f32>>,
    ) -> Result<Self> {
        let input = spec
            .input
            .ok_or_else(|| Error::invalid("network spec is not bound to an input size"))?;
        let shape = input_map(input);
        let mut c = Compiler {
            sizes: vec![shape.numel()],
            ..Compiler::default()
        };
        let layers = spec.logit_layers();
        let shape = c.layers(spec, names, layers, shape, None)?;
        if let Shape::Map { c: ch, h, w } = shape {
            let flatten = Step::Flatten {
                channels: ch,
                plane: h * w,
            };
            c.push(
                flatten,
                layers.len().saturating_sub(1),
                Shape::Flat(shape.numel()),
            );
        }
        // An activation is on the chain when exactly one step reads it, as the next step.
        let mut readers = vec![0usize; c.sizes.len()];
        for (i, s) in c.steps.iter().enumerate() {
            readers[c.src[i]] += 1;
            if let Step::Add { other, .. }
            | Step::BatchNorm {
                add: Some(other), ..
            } = s
            {
                readers[*other] += 1;
            }
        }
        let chain = (0..c.sizes.len())
            .map(|a| a == c.steps.len() || (readers[a] == 1 && c.src[a] == a))
            .collect();
        Ok(Self {
            steps: c.steps,
            layer_of: c.layer_of,
            sizes: c.sizes,
            src: c.src,
            chain,
            input: [input.channels, input.height, input.width],
            params,
            ws: Mutex::new(Workspace::default()),
        })
    }

    /// Convolutions that run as Winograd F(2×2, 3×3).
    #[cfg(test)]
    pub(crate) fn winograd_steps(&self) -> usize {
        self.conv_steps(Algo::Winograd)
    }

    /// Convolutions that inference runs with the batch norm after them folded in.
    #[cfg(test)]
    pub(crate) fn folded_steps(&self) -> usize {
        (0..self.steps.len())
            .filter(|&i| self.folded_batch_norm(i).is_some())
            .count()
    }

    /// Convolutions that run directly.
    #[cfg(test)]
    pub(crate) fn direct_steps(&self) -> usize {
        self.conv_steps(Algo::Direct)
    }

    /// Convolutions whose backward pass runs with `algo` (and so does their forward,
    /// but for the Winograd forward passes of [`Algo::forward`]).
    #[cfg(test)]
    fn conv_steps(&self, algo: Algo) -> usize {
        let runs = |s: &Step| matches!(s, Step::Conv { backward, .. } if *backward == algo);
        self.steps.iter().filter(|s| runs(s)).count()
    }

    /// Runs every convolution that Winograd can take forward as Winograd and backward
    /// directly (unfolded where direct convolutions cannot run), as [`Algo::forward`]
    /// does on some machines whatever the switches say; returns how many it set so.
    #[cfg(test)]
    pub(crate) fn run_winograd_forward_only(&mut self) -> usize {
        let mut changed = 0;
        for s in &mut self.steps {
            if let Step::Conv {
                geom,
                filters,
                forward,
                backward,
                ..
            } = s
                && winograd::possible(geom, *filters)
            {
                *forward = Algo::Winograd;
                *backward = if direct::possible(geom) {
                    Algo::Direct
                } else {
                    Algo::Unfolded
                };
                changed += 1;
            }
        }
        changed
    }

    fn prepare(&self, ws: &mut Workspace, n: usize) {
        if ws.batch == n && !ws.acts.is_empty() {
            return;
        }
        let steps = self.steps.len();
        let blocks = n.clamp(1, MAX_BLOCKS);
        let starts: Vec<usize> = (0..=blocks).map(|b| b * n / blocks).collect();
        let most = block_images(&starts).into_iter().max().unwrap_or(0);
        *ws = Workspace {
            batch: n,
            acts: self.sizes.iter().map(|s| vec![0.0; s * n]).collect(),
            args: vec![Vec::new(); steps],
            lrn_sum: vec![Vec::new(); steps],
            lrn_scale: vec![Vec::new(); steps],
            masks: vec![Vec::new(); steps],
            bn: vec![BatchStats::default(); steps],
            wino_u: vec![Vec::new(); steps],
            packed_t: vec![Vec::new(); steps],
            stash: self
                .chain
                .iter()
                .zip(&self.sizes)
                .map(|(&on, &size)| if on { Vec::new() } else { vec![0.0; size * n] })
                .collect(),
            ..Default::default()
        };
        let (mut scratch, mut lrn) = (Scratch::default(), 0);
        for (i, s) in self.steps.iter().enumerate() {
            match s {
                Step::Conv {
                    geom,
                    filters,
                    forward,
                    backward,
                    ..
                } => {
                    let g = Window {
                        images: most,
                        ..*geom
                    };
                    scratch.fit(&g, *filters, *forward);
                    scratch.fit(&g, *filters, *backward);
                    if *forward == Algo::Winograd {
                        ws.wino_u[i] = vec![0.0; winograd::XI * filters * g.channels];
                    }
                }
                Step::Pool(_) => ws.args[i] = vec![0; self.sizes[i + 1] * n],
                Step::Lrn(_) => {
                    ws.lrn_sum[i] = vec![0.0; self.sizes[i] * n];
                    ws.lrn_scale[i] = vec![0.0; self.sizes[i] * n];
                    lrn = lrn.max(self.sizes[i] * n);
                }
                Step::Dropout(..) => ws.masks[i] = vec![0.0; self.sizes[i] * n],
                _ => {}
            }
        }
        ws.scratch = vec![scratch; blocks];
        ws.starts = starts;
        let largest = self.sizes.iter().max().copied().unwrap_or(0) * n;
        ws.grad_out = vec![0.0; largest];
        ws.grad_in = vec![0.0; largest];
        ws.lrn_tmp = vec![0.0; lrn];
    }

    /// Runs the forward pass on `images` (`N × C × H × W`); the logits (`N × classes`) end
    /// up in the last activation. `dropout` is given exactly when training: masks are then
    /// drawn in the order and layout of the burn path, so both engines drop the same units
    /// for a seed, and batch norms use (and keep) the batch's statistics.
    fn forward(
        &self,
        ws: &mut Workspace,
        images: &[f32],
        n: usize,
        mut dropout: Option<&mut rand_chacha::ChaCha8Rng>,
        mut after_step: Option<&mut dyn FnMut(usize)>,
    ) {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        self.prepare(ws, n);
        let starts = ws.starts.clone();
        let counts = block_images(&starts);
        let [c, h, w] = self.input;
        to_blocks(images, &mut ws.acts[0], &starts, c, h * w);
        let mut folded_in = false;
        for (i, step) in self.steps.iter().enumerate() {
            if std::mem::take(&mut folded_in) {
                // A batch norm the convolution before it has applied.
                if let Some(f) = after_step.as_deref_mut() {
                    f(i);
                }
                continue;
            }
            let fold = match dropout {
                None => self.folded_batch_norm(i),
                Some(_) => None,
            };
            let (before, after) = ws.acts.split_at_mut(i + 1);
            let src = self.src[i];
            let (x, y) = (&before[src], &mut after[usize::from(fold.is_some())]);
            let (sx, sy) = (self.sizes[src], self.sizes[i + 1]);
            folded_in = fold.is_some();
            match step {
                Step::Conv {
                    param,
                    geom,
                    filters,
                    relu,
                    forward: algo,
                    ..
                } => {
                    let (wt, bias, relu, add) = match &fold {
                        Some(f) => (&f.wt, &f.bias, f.relu, f.add),
                        None => (&self.params[*param], &self.params[*param + 1], *relu, None),
                    };
                    let prepared = &mut ws.wino_u[i];
                    match algo {
                        Algo::Winograd => {
                            winograd::transform_filters(wt, *filters, geom.channels, prepared)
                        }
                        Algo::Direct => direct::pack(wt, *filters, geom, prepared),
                        Algo::Unfolded => {}
                    }
                    let prepared = &prepared[..];
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .zip(ws.scratch.par_iter_mut())
                        .zip(&counts)
                        .zip(other_branch(before, add, &starts, sy))
                        .for_each(|((((xb, yb), s), &images), add)| {
                            let g = Window { images, ..*geom };
                            let w = Filters {
                                wt,
                                algo: *algo,
                                prepared,
                            };
                            let out = Epilogue { bias, add, relu };
                            conv_block(&g, *filters, w, &out, xb, yb, s);
                        });
                }
                Step::Pool(geom) => {
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .zip(blocks_mut(&mut ws.args[i], &starts, sy))
                        .zip(&counts)
                        .for_each(|(((xb, yb), ab), &images)| {
                            kernels::max_pool(&Window { images, ..*geom }, xb, yb, ab);
                        });
                }
                Step::AvgPool(geom) => {
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .zip(&counts)
                        .for_each(|((xb, yb), &images)| {
                            kernels::avg_pool(&Window { images, ..*geom }, xb, yb);
                        });
                }
                Step::GlobalAvgPool { plane } => {
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .for_each(|(xb, yb)| kernels::global_avg_pool(*plane, xb, yb));
                }
                Step::BatchNorm {
                    param,
                    channels,
                    plane,
                    eps,
                    add,
                    relu,
                    ..
                } => {
                    let p = &self.params[*param..*param + 4];
                    let (scale, shift) = if dropout.is_some() {
                        let st =
                            batch_statistics(blocks(x, &starts, sx), *channels, n * plane, *eps);
                        let ab = bn_affine(&p[0], &p[1], &st.mean, &st.inv_std);
                        ws.bn[i] = st;
                        ab
                    } else {
                        let inv: Vec<f32> = p[3].iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
                        bn_affine(&p[0], &p[1], &p[2], &inv)
                    };
                    let ab = (&scale[..], &shift[..]);
                    match add {
                        None => blocks(x, &starts, sx)
                            .into_par_iter()
                            .zip(blocks_mut(y, &starts, sy))
                            .for_each(|(xb, yb)| bn::affine(xb, yb, ab, None, *relu)),
                        Some(o) => blocks(x, &starts, sx)
                            .into_par_iter()
                            .zip(blocks(&before[*o], &starts, sy))
                            .zip(blocks_mut(y, &starts, sy))
                            .for_each(|((xb, zb), yb)| bn::affine(xb, yb, ab, Some(zb), *relu)),
                    }
                }
                Step::Lrn(p) => {
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .zip(blocks_mut(&mut ws.lrn_sum[i], &starts, sx))
                        .zip(blocks_mut(&mut ws.lrn_scale[i], &starts, sx))
                        .zip(&counts)
                        .for_each(|((((xb, yb), sb), pb), &images)| {
                            let p = LrnParams {
                                plane: p.plane * images,
                                ..*p
                            };
                            kernels::lrn(&p, xb, yb, sb, pb);
                        });
                }
                Step::Relu => elementwise(y, x, x, |y, x, _| relu_into(y, x)),
                Step::Dropout(p, channels) => match dropout.as_deref_mut() {
                    None => y.copy_from_slice(x),
                    Some(rng) => {
                        let mask = &mut ws.masks[i];
                        draw_mask(rng, *p, mask, &starts, sx, *channels);
                        for ((o, &v), &m) in y.iter_mut().zip(x.iter()).zip(mask.iter()) {
                            *o = v * m;
                        }
                    }
                },
                Step::Flatten { channels, plane } => {
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(y, &starts, sy))
                        .zip(&counts)
                        .for_each(|((xb, yb), &images)| {
                            transpose_blocks(xb, yb, *channels, images, *plane);
                        });
                }
                Step::Fc {
                    param,
                    inputs,
                    outputs,
                    relu,
                } => {
                    let p = (&self.params[*param..*param + 2], *relu);
                    fc_forward(y, x, p, (n, *inputs, *outputs), &mut ws.fc);
                }
                Step::Add { other, relu } => {
                    elementwise(y, x, &before[*other], |y, a, b| add_relu(y, a, b, *relu));
                }
            }
            if let Some(f) = after_step.as_deref_mut() {
                f(i);
            }
        }
    }

    /// At inference, the convolution of step `i` with the batch norm after it folded in,
    /// where that batch norm is all that reads the convolution and no ReLU lies between
    /// them: each filter scaled by `γ/√(σ² + ε)` and the bias moved to match, so the
    /// normalisation costs no pass over the maps (the sums differ from the two steps' in
    /// rounding only). A batch norm that ends a residual block adds the other branch,
    /// which the convolution's [`Epilogue`] then adds as it writes.
    fn folded_batch_norm(&self, i: usize) -> Option<FoldedConv> {
        // A convolution with a ReLU of its own (`conv → relu → batch_norm`) keeps it.
        let (
            Step::Conv {
                param,
                filters,
                relu: false,
                ..
            },
            Some(next),
        ) = (&self.steps[i], self.steps.get(i + 1))
        else {
            return None;
        };
        let &Step::BatchNorm {
            param: bn,
            eps,
            add,
            relu,
            ..
        } = next
        else {
            return None;
        };
        // The other branch must be written before the convolution runs.
        if !self.chain[i + 1] || add.is_some_and(|o| o > i) {
            return None;
        }
        let p = &self.params[bn..bn + 4];
        let inv: Vec<f32> = p[3].iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (scale, shift) = bn_affine(&p[0], &p[1], &p[2], &inv);
        let (wt, bias) = (&self.params[*param], &self.params[*param + 1]);
        let k = wt.len() / (*filters).max(1);
        let mut folded = wt.clone();
        for (wf, a) in folded.chunks_exact_mut(k.max(1)).zip(&scale) {
            wf.iter_mut().for_each(|v| *v *= a);
        }
        let bias = bias.iter().zip(&scale).zip(&shift);
        Some(FoldedConv {
            wt: folded,
            bias: bias.map(|((b, a), t)| b.mul_add(*a, *t)).collect(),
            add,
            relu,
        })
    }

    fn check_input(&self, shape: [usize; 4], len: usize) -> Result<()> {
        let [n, c, h, w] = shape;
        if [c, h, w] != self.input {
            let [ec, eh, ew] = self.input;
            return Err(Error::invalid(format!(
                "batch of {c}×{h}×{w} images for a net built for {ec}×{eh}×{ew}"
            )));
        }
        if len != n * c * h * w {
            return Err(Error::invalid(format!(
                "batch holds {len} values, its shape needs {}",
                n * c * h * w
            )));
        }
        Ok(())
    }

    fn workspace(&self) -> std::sync::MutexGuard<'_, Workspace> {
        // A panic inside a step leaves only scratch values behind, which the next step
        // overwrites.
        self.ws.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logits, row-major `N × classes`.
    pub(crate) fn logits(&self, images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
        self.check_input(shape, images.len())?;
        let mut ws = self.workspace();
        self.forward(&mut ws, images, shape[0], None, None);
        Ok(ws.acts.last().cloned().unwrap_or_default())
    }

    /// Seconds per logit layer of an inference forward pass (a fused ReLU counts 0, and so
    /// does a batch norm folded into the convolution before it, whose time that counts).
    pub(crate) fn layer_times(
        &self,
        images: &[f32],
        shape: [usize; 4],
        layers: usize,
    ) -> Result<Vec<f64>> {
        self.check_input(shape, images.len())?;
        let mut ws = self.workspace();
        let mut times = vec![0.0; layers];
        let mut t0 = std::time::Instant::now();
        let mut record = |i: usize| {
            if let Some(t) = times.get_mut(self.layer_of[i]) {
                *t += t0.elapsed().as_secs_f64();
            }
            t0 = std::time::Instant::now();
        };
        self.forward(&mut ws, images, shape[0], None, Some(&mut record));
        Ok(times)
    }

    /// A batch norm in training needs at least two values per channel to have a variance
    /// (PyTorch refuses the same).
    fn check_batch_norm_batch(&self, n: usize) -> Result<()> {
        for s in &self.steps {
            if let Step::BatchNorm { plane, .. } = s
                && n * plane < 2
            {
                return Err(Error::invalid(format!(
                    "a batch norm over 1×1 maps needs a batch of at least 2 images to train, not {n}"
                )));
            }
        }
        Ok(())
    }

    /// Each batch norm's statistics of `images` in a training-mode forward pass (dropout
    /// masks from `seed`): the index of its γ, the batch mean and the unbiased variance.
    pub(crate) fn batch_norm_statistics(
        &self,
        images: &[f32],
        shape: [usize; 4],
        seed: u64,
    ) -> Result<super::BatchNormStats> {
        self.check_input(shape, images.len())?;
        self.check_batch_norm_batch(shape[0])?;
        let mut ws = self.workspace();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        self.forward(&mut ws, images, shape[0], Some(&mut rng), None);
        Ok(self
            .steps
            .iter()
            .zip(&ws.bn)
            .filter_map(|(s, st)| match s {
                Step::BatchNorm { param, .. } => {
                    Some((*param, st.mean.clone(), st.var_unbiased.clone()))
                }
                _ => None,
            })
            .collect())
    }

    /// Moves each batch norm's running statistics towards those of the last training
    /// batch: `r ← (1 − momentum)·r + momentum·b`, with the unbiased batch variance.
    pub(crate) fn update_running_statistics(&mut self) {
        let ws = self.ws.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (i, step) in self.steps.iter().enumerate() {
            let Step::BatchNorm {
                param, momentum, ..
            } = step
            else {
                continue;
            };
            let st = &ws.bn[i];
            for (r, b) in [(*param + 2, &st.mean), (*param + 3, &st.var_unbiased)] {
                for (v, &x) in self.params[r].iter_mut().zip(b.iter()) {
                    *v = (1.0 - momentum) * *v + momentum * x;
                }
            }
        }
    }

    /// Forward and backward pass on a batch: returns the mean cross-entropy and writes the
    /// gradient of each parameter into `grads`.
    pub(crate) fn gradients(
        &self,
        images: &[f32],
        shape: [usize; 4],
        (labels, smoothing): (&[u32], f32),
        dropout_seed: u64,
        grads: &mut [Vec<f32>],
    ) -> Result<f32> {
        // Long by design: one arm per layer type, each reading beside the others; split, the
        // cases of one layer would be scattered over several functions.
        self.check_input(shape, images.len())?;
        let n = shape[0];
        if labels.len() != n {
            return Err(Error::invalid(format!(
                "batch has {n} images but {} labels",
                labels.len()
            )));
        }
        self.check_batch_norm_batch(n)?;
        let mut guard = self.workspace();
        let ws = &mut *guard;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(dropout_seed);
        self.forward(ws, images, n, Some(&mut rng), None);
        let classes = self.sizes.last().copied().unwrap_or(0);
        let logits = ws.acts.last().map(Vec::as_slice).unwrap_or_default();
        let loss = softmax_cross_entropy(logits, (labels, smoothing), classes, &mut ws.grad_out)?;
        let starts = ws.starts.clone();
        let counts = block_images(&starts);

        // No gradient has reached any activation off the chain yet.
        let mut fresh = vec![true; ws.stash.len()];
        for (i, step) in self.steps.iter().enumerate().rev() {
            let src = self.src[i];
            let (sx, sy) = (self.sizes[src], self.sizes[i + 1]);
            if !self.chain[i + 1] {
                // Every reader of this activation came later, so its sum is complete.
                let sum = &mut ws.grad_out[..sy * n];
                match fresh[i + 1] {
                    true => sum.fill(0.0),
                    false => copy_into(sum, &ws.stash[i + 1]),
                }
            }
            let x = &ws.acts[src][..];
            let y = &ws.acts[i + 1][..];
            let dy = &mut ws.grad_out[..sy * n];
            let dx = &mut ws.grad_in[..sx * n];
            // The gradient of the input images is never used.
            let need_dx = src > 0;
            match step {
                Step::Conv {
                    param,
                    geom,
                    filters,
                    relu,
                    backward: algo,
                    ..
                } => {
                    let wt = &self.params[*param];
                    let prepared = match algo {
                        Algo::Direct => {
                            let packed = &mut ws.packed_t[i];
                            if direct::input_gradient_is_direct(geom) {
                                direct::pack_transposed(wt, *filters, geom, packed);
                            } else {
                                direct::pack_phases(wt, *filters, geom, packed);
                            }
                            &packed[..]
                        }
                        _ => &ws.wino_u[i][..],
                    };
                    let w = Filters {
                        wt,
                        algo: *algo,
                        prepared,
                    };
                    blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks(y, &starts, sy))
                        .zip(blocks_mut(dy, &starts, sy))
                        .zip(blocks_mut(dx, &starts, sx))
                        .zip(ws.scratch.par_iter_mut())
                        .zip(&counts)
                        .for_each(|(((((xb, yb), dyb), dxb), s), &images)| {
                            if *relu {
                                relu_mask(dyb, yb);
                            }
                            let g = Window { images, ..*geom };
                            let dxb = need_dx.then_some(dxb);
                            conv_block_backward(&g, *filters, w, xb, dyb, dxb, s);
                        });
                    let (gw, rest) = grads[*param..].split_at_mut(1);
                    let k = geom.col_rows();
                    let sum = &mut ws.partial_sum;
                    sum_partials(&ws.scratch, (*filters, k), sum, &mut gw[0], &mut rest[0]);
                }
                Step::Pool(geom) => {
                    if need_dx {
                        blocks(dy, &starts, sy)
                            .into_par_iter()
                            .zip(blocks(&ws.args[i], &starts, sy))
                            .zip(blocks_mut(dx, &starts, sx))
                            .zip(&counts)
                            .for_each(|(((dyb, ab), dxb), &images)| {
                                let g = Window { images, ..*geom };
                                kernels::max_pool_backward(&g, dyb, ab, dxb);
                            });
                    }
                }
                Step::AvgPool(geom) => {
                    if need_dx {
                        blocks(dy, &starts, sy)
                            .into_par_iter()
                            .zip(blocks_mut(dx, &starts, sx))
                            .zip(&counts)
                            .for_each(|((dyb, dxb), &images)| {
                                let g = Window { images, ..*geom };
                                kernels::avg_pool_backward(&g, dyb, dxb);
                            });
                    }
                }
                Step::GlobalAvgPool { plane } => {
                    if need_dx {
                        blocks(dy, &starts, sy)
                            .into_par_iter()
                            .zip(blocks_mut(dx, &starts, sx))
                            .for_each(|(dyb, dxb)| {
                                kernels::global_avg_pool_backward(*plane, dyb, dxb);
                            });
                    }
                }
                Step::BatchNorm {
                    param,
                    channels,
                    plane,
                    add,
                    relu,
                    ..
                } => {
                    // With a ReLU after it, its mask is applied to `dy` on the way.
                    let st = &ws.bn[i];
                    let parts: Vec<Vec<f64>> = blocks(x, &starts, sx)
                        .into_par_iter()
                        .zip(blocks_mut(dy, &starts, sy))
                        .zip(blocks(y, &starts, sy))
                        .map(|((xb, dyb), yb)| bn::gradient_sums(xb, dyb, relu.then_some(yb), st))
                        .collect();
                    if let Some(o) = add {
                        stash_add(&mut ws.stash[*o], &mut fresh[*o], dy);
                    }
                    let sums: Vec<f32> = bn::add_blocks(&parts, 2 * channels)
                        .into_iter()
                        .map(|v| v as f32)
                        .collect();
                    let (sum_dy, sum_dy_xhat) = sums.split_at(*channels);
                    grads[*param].copy_from_slice(sum_dy_xhat);
                    grads[*param + 1].copy_from_slice(sum_dy);
                    // The running statistics have no gradient: training sets them.
                    grads[*param + 2].fill(0.0);
                    grads[*param + 3].fill(0.0);
                    if need_dx {
                        let gamma = &self.params[*param];
                        blocks(x, &starts, sx)
                            .into_par_iter()
                            .zip(blocks(dy, &starts, sy))
                            .zip(blocks_mut(dx, &starts, sx))
                            .for_each(|((xb, dyb), dxb)| {
                                let sums = (sum_dy, sum_dy_xhat);
                                bn::input_gradient(xb, dyb, dxb, st, gamma, sums, n * plane);
                            });
                    }
                }
                Step::Lrn(p) => {
                    if need_dx {
                        blocks(x, &starts, sx)
                            .into_par_iter()
                            .zip(blocks(y, &starts, sy))
                            .zip(blocks(&ws.lrn_sum[i], &starts, sx))
                            .zip(blocks(&ws.lrn_scale[i], &starts, sx))
                            .zip(blocks(dy, &starts, sy))
                            .zip(blocks_mut(&mut ws.lrn_tmp, &starts, sx))
                            .zip(blocks_mut(dx, &starts, sx))
                            .zip(&counts)
                            .for_each(|(((((((xb, yb), sb), pb), dyb), tb), dxb), &images)| {
                                let p = LrnParams {
                                    plane: p.plane * images,
                                    ..*p
                                };
                                kernels::lrn_backward(&p, xb, yb, sb, pb, dyb, tb, dxb);
                            });
                    }
                }
                Step::Relu => elementwise(dx, dy, y, relu_gradient),
                Step::Dropout(..) => {
                    for ((d, &g), &m) in dx.iter_mut().zip(dy.iter()).zip(&ws.masks[i]) {
                        *d = g * m;
                    }
                }
                Step::Flatten { channels, plane } => {
                    blocks(dy, &starts, sy)
                        .into_par_iter()
                        .zip(blocks_mut(dx, &starts, sx))
                        .zip(&counts)
                        .for_each(|((dyb, dxb), &images)| {
                            transpose_blocks(dyb, dxb, images, *channels, *plane);
                        });
                }
                Step::Fc {
                    param,
                    inputs,
                    outputs,
                    relu,
                } => {
                    if *relu {
                        relu_mask(dy, y);
                    }
                    let (gw, rest) = grads[*param..].split_at_mut(1);
                    kernels::matmul(
                        MatMut::rows(&mut gw[0], *outputs, *inputs),
                        Mat::transposed(dy, *outputs, n),
                        Mat::rows(x, n, *inputs),
                        false,
                        true,
                    );
                    column_sums(dy, *outputs, &mut rest[0]);
                    if need_dx {
                        let wt = &self.params[*param];
                        kernels::matmul(
                            MatMut::rows(dx, n, *inputs),
                            Mat::rows(dy, n, *outputs),
                            Mat::rows(wt, *outputs, *inputs),
                            false,
                            true,
                        );
                    }
                }
                Step::Add { other, relu } => {
                    if *relu {
                        relu_mask(dy, y);
                    }
                    stash_add(&mut ws.stash[*other], &mut fresh[*other], dy);
                    // The gradient of the main input is `dy` itself, left where it is.
                    if !self.chain[src] {
                        stash_add(&mut ws.stash[src], &mut fresh[src], dy);
                    }
                    continue;
                }
            }
            if need_dx {
                if self.chain[src] {
                    std::mem::swap(&mut ws.grad_out, &mut ws.grad_in);
                } else {
                    stash_add(&mut ws.stash[src], &mut fresh[src], dx);
                }
            }
        }
        Ok(loss)
    }
}

/// Values per task of the element-wise loops below: enough that a task outweighs its
/// hand-off, few enough that both threads get work on small activations.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Runs `f(out, a, b)` over matching chunks of three equally long arrays, in parallel.
fn elementwise(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) {
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(a.par_chunks(ELEMENTWISE_CHUNK))
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((o, a), b)| f(o, a, b));
}

/// Adds `g` to the gradient summed in `acc`, or copies it there if it is the first
/// (`fresh`): the sums start without a pass that zeroes them.
fn stash_add(acc: &mut [f32], fresh: &mut bool, g: &[f32]) {
    if std::mem::replace(fresh, false) {
        copy_into(acc, g);
    } else {
        add_into(acc, g);
    }
}

/// `to = from`, in parallel chunks.
fn copy_into(to: &mut [f32], from: &[f32]) {
    to.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(from.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(t, f)| t.copy_from_slice(f));
}

/// `acc += g`, element by element.
fn add_into(acc: &mut [f32], g: &[f32]) {
    acc.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(g.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(acc, g)| kernels::vectorized!(accumulate(acc: &mut [f32], g: &[f32])));
}

#[inline(always)]
fn accumulate(acc: &mut [f32], g: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(g) {
        *a += v;
    }
}

kernels::vectorized! {
    /// `y = max(x, 0)`.
    fn relu_into = relu_into_in(y: &mut [f32], x: &[f32]);
}

#[inline(always)]
fn relu_into_in(y: &mut [f32], x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.max(0.0);
    }
}

kernels::vectorized! {
    /// `y = a + b`, then a ReLU if `relu`.
    fn add_relu = add_relu_in(y: &mut [f32], a: &[f32], b: &[f32], relu: bool);
}

#[inline(always)]
fn add_relu_in(y: &mut [f32], a: &[f32], b: &[f32], relu: bool) {
    for ((o, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *o = if relu { (a + b).max(0.0) } else { a + b };
    }
}

kernels::vectorized! {
    /// The gradient through a ReLU whose output was `y`: `dy` where `y > 0`, else 0.
    fn relu_gradient = relu_gradient_in(dx: &mut [f32], dy: &[f32], y: &[f32]);
}

#[inline(always)]
fn relu_gradient_in(dx: &mut [f32], dy: &[f32], y: &[f32]) {
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d = if v > 0.0 { g } else { 0.0 };
    }
}

/// A convolution's parameters: the weights (`C_out × C_in·k·k`) and what its algorithm
/// prepared from them (Winograd: the transformed filters; direct: the packed weights, for
/// the input gradient in the backward pass).
#[derive(Debug, Clone, Copy)]
struct Filters<'a> {
    wt: &'a [f32],
    algo: Algo,
    prepared: &'a [f32],
}

/// One block's convolution: `y = W ⊛ x` with `out` applied (the bias, a residual branch,
/// a ReLU), a cache-sized run of images at a time, unfolded, directly or in Winograd form.
fn conv_block(
    g: &Window,
    filters: usize,
    w: Filters<'_>,
    out: &Epilogue<'_>,
    x: &[f32],
    y: &mut [f32],
    s: &mut Scratch,
) {
    match w.algo {
        Algo::Winograd => {
            let run = winograd::images_per_run(g, filters, COL_BUDGET);
            for first in (0..g.images).step_by(run) {
                let count = run.min(g.images - first);
                let u = w.prepared;
                winograd::forward_run(g, filters, u, x, first, count, y, &mut s.winograd());
                finish_run(g, out, (first, count), y);
            }
        }
        Algo::Direct => {
            let (p, ys) = (w.prepared, (x, y));
            direct::convolve(g, filters, p, ys, COL_BUDGET, s.direct(), Some(out));
        }
        Algo::Unfolded => conv_block_unfolded(g, filters, w.wt, out, x, y, s),
    }
}

/// [`Epilogue::finish_images`] on a run of images just written.
fn finish_run(g: &Window, out: &Epilogue<'_>, (first, count): (usize, usize), y: &mut [f32]) {
    let (images, plane) = (g.images, g.out_plane());
    kernels::vectorized!(finish_images_in(
        out: &Epilogue<'_>,
        images: usize,
        plane: usize,
        first: usize,
        count: usize,
        y: &mut [f32]
    ));
}

#[inline(always)]
fn finish_images_in(
    out: &Epilogue<'_>,
    images: usize,
    plane: usize,
    first: usize,
    count: usize,
    y: &mut [f32],
) {
    out.finish_images((images, plane), (first, count), y);
}

/// `y = W · unfold(x)` for one block, with `out` applied run by run.
fn conv_block_unfolded(
    g: &Window,
    filters: usize,
    wt: &[f32],
    out: &Epilogue<'_>,
    x: &[f32],
    y: &mut [f32],
    s: &mut Scratch,
) {
    let (k, p) = (g.col_rows(), g.out_plane());
    let run = images_per_run(g);
    let row = g.images * p;
    for first in (0..g.images).step_by(run) {
        let count = run.min(g.images - first);
        let cols = count * p;
        let input = if is_pointwise(g) {
            Mat::strided(&x[first * p..], k, cols, row)
        } else {
            kernels::im2col(g, x, first, count, &mut s.col, &mut s.padded);
            Mat::rows(&s.col, k, cols)
        };
        kernels::matmul(
            MatMut::strided(&mut y[first * p..], filters, cols, row),
            Mat::rows(wt, filters, k),
            input,
            false,
            false,
        );
        finish_run(g, out, (first, count), y);
    }
}

/// One block's convolution gradients: the weight and bias gradients into
/// `s.partial` (weights transposed, `K × C_out`), and the input gradient into `dx`.
fn conv_block_backward(
    g: &Window,
    filters: usize,
    w: Filters<'_>,
    x: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    s: &mut Scratch,
) {
    let (k, row) = (g.col_rows(), g.images * g.out_plane());
    match w.algo {
        Algo::Winograd => {
            let (run, u) = (winograd::images_per_run(g, filters, COL_BUDGET), w.prepared);
            for first in (0..g.images).step_by(run) {
                let count = run.min(g.images - first);
                let dx = dx.as_deref_mut();
                let mut ws = s.winograd();
                winograd::backward_run(g, filters, u, x, dy, first, count, dx, first > 0, &mut ws);
            }
            winograd::filter_gradient(&s.du, filters, g.channels, &mut s.partial[..k * filters]);
        }
        Algo::Direct => {
            let dwt = &mut s.partial[..k * filters];
            let grad = direct::GradScratch {
                padded: &mut s.direct_in,
                dyt: &mut s.dyt,
                acc: &mut s.acc,
            };
            direct::weight_gradient(g, filters, x, dy, dwt, COL_BUDGET, grad);
            match dx {
                Some(dx) if direct::input_gradient_is_direct(g) => {
                    let gt = direct::transposed_window(g, filters);
                    let (p, ys) = (w.prepared, (dy, dx));
                    direct::convolve(&gt, g.channels, p, ys, COL_BUDGET, s.direct(), None);
                }
                Some(dx) => {
                    let p = w.prepared;
                    direct::input_gradient_by_phases(g, filters, p, dy, dx, COL_BUDGET, s.direct());
                }
                None => {}
            }
        }
        Algo::Unfolded => conv_block_backward_unfolded(g, filters, w.wt, x, dy, dx, s),
    }
    let db = &mut s.partial[k * filters..(k + 1) * filters];
    for (b, dyc) in db.iter_mut().zip(dy.chunks_exact(row.max(1))) {
        *b = kernels::sum(dyc);
    }
}

/// [`conv_block_backward`]'s weight and input gradients, unfolded.
fn conv_block_backward_unfolded(
    g: &Window,
    filters: usize,
    wt: &[f32],
    x: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    s: &mut Scratch,
) {
    let (k, p) = (g.col_rows(), g.out_plane());
    let run = images_per_run(g);
    let row = g.images * p;
    for first in (0..g.images).step_by(run) {
        let count = run.min(g.images - first);
        let cols = count * p;
        let dy_run = Mat::strided(&dy[first * p..], filters, cols, row);
        let input = if is_pointwise(g) {
            Mat::strided(&x[first * p..], k, cols, row)
        } else {
            kernels::im2col(g, x, first, count, &mut s.col, &mut s.padded);
            Mat::rows(&s.col, k, cols)
        };
        // dWᵀ (K × C_out) = unfold(x) · dyᵀ; stored so, the product runs at full speed.
        kernels::matmul(
            MatMut::rows(&mut s.partial[..k * filters], k, filters),
            input,
            dy_run.t(),
            first > 0,
            false,
        );
        if let Some(dx) = dx.as_deref_mut() {
            input_gradient_unfolded(g, filters, wt, dy, (first, count), dx, s);
        }
    }
}

/// The input gradient of images `first..first + count` of a block, unfolded: `Wᵀ · dy`,
/// folded back onto the input positions.
fn input_gradient_unfolded(
    g: &Window,
    filters: usize,
    wt: &[f32],
    dy: &[f32],
    (first, count): (usize, usize),
    dx: &mut [f32],
    s: &mut Scratch,
) {
    let (k, p) = (g.col_rows(), g.out_plane());
    let (cols, row) = (count * p, g.images * p);
    let dy_run = Mat::strided(&dy[first * p..], filters, cols, row);
    let w_t = Mat::transposed(wt, k, filters);
    if is_pointwise(g) {
        let dst = MatMut::strided(&mut dx[first * p..], k, cols, row);
        kernels::matmul(dst, w_t, dy_run, false, false);
    } else {
        kernels::matmul(
            MatMut::rows(&mut s.dcol, k, cols),
            w_t,
            dy_run,
            false,
            false,
        );
        kernels::col2im(g, &s.dcol, first, count, dx, &mut s.padded);
    }
}

/// Fewest inputs of a fully connected layer whose forward product [`fc_forward`]
/// computes transposed.
const FC_TRANSPOSED_MIN_INPUTS: usize = 128;

/// Images of `y` a task of [`fc_forward`] transposes and adds the bias to: tasks of 64
/// (one a thread) cost net-3's inference at two threads 3 % against these.
const FC_IMAGES_PER_TASK: usize = 16;

/// A fully connected layer's `y = x · Wᵀ + b` (`n × outputs`, row-major; `params` holds `W`
/// and `b`), then a ReLU if `relu`. From [`FC_TRANSPOSED_MIN_INPUTS`] inputs on it is
/// computed as `yᵀ = W · xᵀ` into `scratch` and transposed into `y`: `gemm` writes an
/// output with a row per layer output and a column per image much faster than the
/// transposed one (on one Zen 4 core, 128 images, 1000 outputs: 104 against 62 GFLOP/s with
/// 512 inputs, 111 against 86 with 256, 112 against 99 with 128), and the transposition
/// costs a pass over `y`, which with 64 inputs (111 against 99) takes back what the product
/// gains. The products split the work across threads by outputs and images, never within a
/// sum, so the bits stay independent of the thread count; so do the transposition and the
/// bias, by images (alone, they were a tenth of net-3's inference at two threads). An input
/// at most [`sparse_fc::MAX_DENSITY`] nonzero, as after a ReLU, goes to
/// [`sparse_fc::forward`] instead where that runs faster (AVX2).
fn fc_forward(
    y: &mut [f32],
    x: &[f32],
    (params, relu): (&[Vec<f32>], bool),
    (n, inputs, outputs): (usize, usize, usize),
    scratch: &mut FcScratch,
) {
    let (wt, bias) = (&params[0], &params[1]);
    if sparse_fc::forward(
        y,
        x,
        (wt, bias, relu),
        (n, inputs, outputs),
        &mut scratch.sparse,
    ) {
        return;
    }
    // In tasks where threads can share the work; one thread runs it in one piece, as
    // tasks cost it 2–4 % of net-4's inference.
    let per_task = match rayon::current_num_threads() {
        1 => n.max(1),
        _ => FC_IMAGES_PER_TASK,
    };
    let task = per_task * outputs.max(1);
    if inputs < FC_TRANSPOSED_MIN_INPUTS {
        kernels::matmul(
            MatMut::rows(y, n, outputs),
            Mat::rows(x, n, inputs),
            Mat::transposed(wt, inputs, outputs),
            false,
            true,
        );
        y.par_chunks_mut(task)
            .for_each(|yc| add_bias_cols(yc, bias, relu));
        return;
    }
    let scratch = &mut scratch.transposed;
    if scratch.len() < n * outputs {
        scratch.resize(n * outputs, 0.0);
    }
    let yt = &mut scratch[..n * outputs];
    kernels::matmul(
        MatMut::rows(yt, outputs, n),
        Mat::rows(wt, outputs, inputs),
        Mat::transposed(x, inputs, n),
        false,
        true,
    );
    let yt = &*yt;
    y.par_chunks_mut(task).enumerate().for_each(|(i, yc)| {
        let (first, images) = (i * per_task, yc.len() / outputs.max(1));
        kernels::transpose(&yt[first..], n, (outputs, images), yc, outputs);
        add_bias_cols(yc, bias, relu);
    });
}

/// A batch norm's batch statistics over every block of `x`, summed in block order.
fn batch_statistics(x: Vec<&[f32]>, channels: usize, count: usize, eps: f32) -> BatchStats {
    let parts: Vec<Vec<f64>> = x
        .par_iter()
        .map(|xb| bn::channel_moments(xb, channels))
        .collect();
    bn::batch_stats(&bn::add_blocks(&parts, 2 * channels), count, eps)
}

/// A batch norm as one affine map per channel: `scale = γ·inv_std`,
/// `shift = β − mean·scale`.
fn bn_affine(gamma: &[f32], beta: &[f32], mean: &[f32], inv_std: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, i)| g * i).collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), a)| b - m * a)
        .collect();
    (scale, shift)
}

/// The weight and bias gradients from the blocks' partial ones (`k` rows of `filters`,
/// then the `filters` bias terms): summed block by block in order in the partials' own
/// layout, whose reads are contiguous (read filter by filter, each value was a cache line
/// of its own, from partials larger than L2 in ResNet's last stage), then written filter
/// by filter into `gw` and `gb`.
fn sum_partials(
    scratch: &[Scratch],
    (filters, k): (usize, usize),
    sum: &mut Vec<f32>,
    gw: &mut [f32],
    gb: &mut [f32],
) {
    const CHUNK: usize = 4096;
    let n = (k + 1) * filters;
    sum.clear();
    sum.resize(n, 0.0);
    sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        for s in scratch {
            let part = &s.partial[i * CHUNK..][..out.len()];
            for (o, &p) in out.iter_mut().zip(part) {
                *o += p;
            }
        }
    });
    let sum = &sum[..];
    gw.par_chunks_mut(k)
        .zip(gb.par_iter_mut())
        .enumerate()
        .for_each(|(c, (gwc, gbc))| {
            for (r, v) in gwc.iter_mut().enumerate() {
                *v = sum[r * filters + c];
            }
            *gbc = sum[k * filters + c];
        });
}

/// `N × C × P` images into blocks laid out `C × images × P`.
fn to_blocks(src: &[f32], dst: &mut [f32], starts: &[usize], c: usize, plane: usize) {
    let per = c * plane;
    blocks(src, starts, per)
        .into_par_iter()
        .zip(blocks_mut(dst, starts, per))
        .for_each(|(s, d)| {
            let images = s.len() / per.max(1);
            transpose_blocks(s, d, images, c, plane);
        });
}

/// `a × b × P` → `b × a × P`: swaps the two outer axes of runs of `plane` values.
fn transpose_blocks(src: &[f32], dst: &mut [f32], a: usize, b: usize, plane: usize) {
    for i in 0..a {
        for j in 0..b {
            dst[(j * a + i) * plane..][..plane]
                .copy_from_slice(&src[(i * b + j) * plane..][..plane]);
        }
    }
}

kernels::vectorized! {
    /// Adds `bias` to every row of a row-major matrix with `bias.len()` columns, then a ReLU.
    fn add_bias_cols = add_bias_cols_in(y: &mut [f32], bias: &[f32], relu: bool);
}

#[inline(always)]
fn add_bias_cols_in(y: &mut [f32], bias: &[f32], relu: bool) {
    for row in y.chunks_exact_mut(bias.len().max(1)) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = if relu { (*v + b).max(0.0) } else { *v + b };
        }
    }
}

kernels::vectorized! {
    /// Zeroes the gradient where a ReLU's output was zero.
    fn relu_mask = relu_mask_in(dy: &mut [f32], y: &[f32]);
}

#[inline(always)]
fn relu_mask_in(dy: &mut [f32], y: &[f32]) {
    for (d, &v) in dy.iter_mut().zip(y) {
        *d = if v <= 0.0 { 0.0 } else { *d };
    }
}

fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    kernels::vectorized!(column_sums_in(m: &[f32], cols: usize, out: &mut [f32]));
}

#[inline(always)]
fn column_sums_in(m: &[f32], cols: usize, out: &mut [f32]) {
    for row in m.chunks_exact(cols.max(1)) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Fills `mask` (laid out like the activation: blocks for maps, rows for flat values)
/// with 0 or 1/(1−p), drawing image by image in `C × H × W` order as the burn path does.
fn draw_mask(
    rng: &mut rand_chacha::ChaCha8Rng,
    p: f32,
    mask: &mut [f32],
    starts: &[usize],
    size: usize,
    channels: Option<usize>,
) {
    let keep = 1.0 / (1.0 - p);
    let mut draw = || if rng.random::<f32>() < p { 0.0 } else { keep };
    match channels {
        Some(c) if c > 0 => {
            let plane = size / c;
            for (w, block) in starts.windows(2).zip(blocks_mut(mask, starts, size)) {
                let images = w[1] - w[0];
                for img in 0..images {
                    for ch in 0..c {
                        for v in &mut block[(ch * images + img) * plane..][..plane] {
                            *v = draw();
                        }
                    }
                }
            }
        }
        _ => mask.iter_mut().for_each(|v| *v = draw()),
    }
}

/// Mean cross-entropy of `logits` (`N × classes`) against the labels smoothed by `ε`
/// (target `ε/K` for every class plus `1 − ε` for the label); writes its gradient w.r.t.
/// the logits, `(softmax − target) / N`, into `grad`. Rows run in parallel, each on its
/// own, and their losses are added in row order, so the result does not depend on the
/// thread count.
pub(crate) fn softmax_cross_entropy(
    logits: &[f32],
    (labels, eps): (&[u32], f32),
    classes: usize,
    grad: &mut [f32],
) -> Result<f32> {
    let n = labels.len();
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::invalid(format!(
            "label {l} out of range for {classes} classes"
        )));
    }
    let losses: Vec<f64> = logits
        .par_chunks_exact(classes.max(1))
        .zip(grad.par_chunks_exact_mut(classes.max(1)))
        .zip(labels)
        .with_min_len(16)
        .map(|((row, g), &l)| row_cross_entropy(row, l as usize, (n, eps), g))
        .collect();
    Ok((losses.iter().sum::<f64>() / n.max(1) as f64) as f32)
}

/// One row of [`softmax_cross_entropy`]: its loss, and its gradient into `g`.
fn row_cross_entropy(row: &[f32], l: usize, (n, eps): (usize, f32), g: &mut [f32]) -> f64 {
    let classes = row.len();
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    g.copy_from_slice(row);
    let sum = kernels::exp_sum(g, max);
    for gj in g.iter_mut() {
        *gj /= sum * n as f32;
    }
    if eps == 0.0 {
        g[l] -= 1.0 / n as f32;
        return f64::from(sum.ln() + max - row[l]);
    }
    // −Σ t·log p = logsumexp − Σ t·z, with Σ t·z = (1 − ε)·z_l + ε·mean(z).
    let mean_logit = row.iter().sum::<f32>() / classes as f32;
    let uniform = eps / (classes * n) as f32;
    for gj in g.iter_mut() {
        *gj -= uniform;
    }
    g[l] -= (1.0 - eps) / n as f32;
    f64::from(sum.ln() + max - (1.0 - eps) * row[l] - eps * mean_logit)
}

/// `v ← μ·v − lr·(g + λ·w)` and `w ← w + v`, with `λ` applied where `decay` is set.
pub(crate) fn sgd_update(
    w: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    lr: f32,
    momentum: f32,
    decay: f32,
) {
    const CHUNK: usize = 1 << 14;
    w.par_chunks_mut(CHUNK)
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((w, v), g)| {
            kernels::vectorized!(sgd_chunk(
                w: &mut [f32],
                v: &mut [f32],
                g: &[f32],
                lr: f32,
                momentum: f32,
                decay: f32
            ))
        });
}

#[inline(always)]
fn sgd_chunk(w: &mut [f32], v: &mut [f32], g: &[f32], lr: f32, momentum: f32, decay: f32) {
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
        *v = momentum * *v - lr * (g + decay * *w);
        *w += *v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{check_fc, on_threads};

    /// Every way of [`fc_forward`] (below and from [`FC_TRANSPOSED_MIN_INPUTS`] inputs,
    /// batches that are and are not whole register tiles and tasks of images, and with
    /// AVX2 the sparse product for the input through a ReLU) against the sums written out,
    /// with a bias and a ReLU.
    #[test]
    fn fc_forward_is_the_product_either_way() {
        for (n, inputs, outputs) in [
            (5, 60, 7),
            (40, 100, 33),
            (3, 130, 9),
            (128, 300, 1000),
            (17, 256, 24),
        ] {
            let dense: Vec<f32> = (0..n * inputs)
                .map(|i| ((i * 7) % 13) as f32 - 6.0)
                .collect();
            let relued: Vec<f32> = dense.iter().map(|v| v.max(0.0)).collect();
            let wt: Vec<f32> = (0..outputs * inputs)
                .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let bias: Vec<f32> = (0..outputs).map(|o| (o % 5) as f32 - 2.0).collect();
            let params = [wt.clone(), bias.clone()];
            let ways = [(1, true), (3, true), (1, false), (3, false)];
            for (x, (threads, relu)) in [&dense, &relued]
                .into_iter()
                .flat_map(|x| ways.map(|w| (x, w)))
            {
                let mut y = vec![f32::NAN; n * outputs];
                on_threads(threads, || {
                    let shape = (n, inputs, outputs);
                    fc_forward(&mut y, x, (&params, relu), shape, &mut FcScratch::default())
                });
                check_fc(&y, x, (&wt, &bias, relu), (n, inputs, outputs));
            }
        }
    }
}
