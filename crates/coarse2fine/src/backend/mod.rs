//! The one module that runs networks: burn, and the native CPU engine beside it.
//!
//! Everything else in the library works on plain specs, [`WeightMap`]s and [`Batch`]es; this
//! module turns them into tensors, runs forward and backward passes, and applies the
//! optimizer. The backend is chosen at run time through [`BackendKind`]:
//!
//! - `cpu` (the default) is the native engine of [`native`]: each layer's forward and
//!   backward pass written on the `gemm` crate, with buffers reused across steps.
//! - `flex` is burn's CPU backend with its autodiff, which the native engine is tested
//!   against operator by operator.
//! - `cuda` and `wgpu` are burn's GPU backends, present only when the crate is built with
//!   the feature of that name.
//!
//! Both engines keep parameters and momentum buffers as flat vectors in the order of
//! [`NetSpec::param_shapes`], inside the network itself, so an optimizer state can never
//! meet a network of the other engine. Momentum buffers leave as a [`WeightMap`] with the
//! weights' own names, which growth operators transform exactly like the weights. burn's
//! code is in `burn_net.rs`, the native engine's in `native.rs` and `kernels.rs`.

mod batch_norm;
mod burn_net;
mod direct;
mod kernels;
mod native;
mod sparse_fc;
mod winograd;

pub use direct::{DIRECT_ENV, direct_requested};
pub use kernels::{
    SIMD_ENV, Simd, SwitchMode, gemm_simd, measured_peak_gflops, simd, simd_requested,
};
pub use winograd::{WINOGRAD_ENV, winograd_requested};

use burn::tensor::Device;

use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::net::spec::{NetSpec, TensorKind};
use crate::net::weights::{Tensor as HostTensor, WeightMap};
use burn_net::BurnNet;
#[cfg(feature = "libtorch")]
mod libtorch;
use native::NativeNet;

/// Which compute backend runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The native CPU engine, the default.
    #[default]
    Cpu,
    /// burn's pure-Rust CPU backend, the reference the native engine is tested against.
    Flex,
    /// NVIDIA GPU `n` through CUDA (feature `cuda`).
    Cuda(usize),
    /// Any GPU through wgpu (feature `wgpu`).
    Wgpu,
    /// libtorch on the CPU (feature `libtorch`).
    Libtorch,
    /// NVIDIA GPU `n` through libtorch's CUDA kernels (feature `libtorch`).
    LibtorchCuda(usize),
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let gpu = |prefix: &str| {
            if s == prefix {
                Some(0)
            } else {
                s.strip_prefix(prefix)?.strip_prefix(':')?.parse().ok()
            }
        };
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "flex" => Ok(BackendKind::Flex),
            "wgpu" => Ok(BackendKind::Wgpu),
            "libtorch" => Ok(BackendKind::Libtorch),
            _ => gpu("cuda")
                .map(BackendKind::Cuda)
                .or_else(|| gpu("libtorch-cuda").map(BackendKind::LibtorchCuda))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "backend {s:?}: use cpu, flex, cuda, cuda:N, wgpu, libtorch, libtorch-cuda or libtorch-cuda:N"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendKind::Cpu => write!(f, "cpu"),
            BackendKind::Flex => write!(f, "flex"),
            BackendKind::Cuda(n) => write!(f, "cuda:{n}"),
            BackendKind::Wgpu => write!(f, "wgpu"),
            BackendKind::Libtorch => write!(f, "libtorch"),
            BackendKind::LibtorchCuda(n) => write!(f, "libtorch-cuda:{n}"),
        }
    }
}

impl BackendKind {
    /// The cargo feature that builds this backend in.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            BackendKind::Cpu | BackendKind::Flex => None,
            BackendKind::Cuda(_) => Some("cuda"),
            BackendKind::Wgpu => Some("wgpu"),
            BackendKind::Libtorch | BackendKind::LibtorchCuda(_) => Some("libtorch"),
        }
    }
}

/// A device of the chosen backend.
#[derive(Debug, Clone)]
pub struct Compute {
    device: Device,
    kind: BackendKind,
}

impl Compute {
    /// Opens the backend; fails with a clear message if it was not compiled in or has no
    /// device.
    pub fn new(kind: BackendKind) -> Result<Self> {
        let device = match kind {
            // The native engine needs no device; burn's CPU one stands in for it.
            BackendKind::Cpu | BackendKind::Flex => Device::flex(),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda(n) => Device::cuda(n),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Device::wgpu(Default::default()),
            #[cfg(feature = "libtorch")]
            BackendKind::Libtorch => libtorch::device(None)?,
            #[cfg(feature = "libtorch")]
            BackendKind::LibtorchCuda(n) => libtorch::device(Some(n))?,
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::invalid(format!(
                    "backend {other} is not built in; rebuild with `--features {}`",
                    other.feature().unwrap_or_default()
                )));
            }
        };
        Ok(Self { device, kind })
    }

    /// The backend kind.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }
}

/// Sets the number of CPU threads used by the backend and data preparation. Must be called
/// before any parallel work; a second call with a different count fails. The calling thread
/// becomes the pool's first thread, so the work it starts runs on it and `n − 1` others
/// without being handed to the pool and back (two thread switches per call, a tenth of
/// net-1's inference at one thread). Call it from the thread that runs the training, and
/// keep that thread alive: work sent to the pool from another thread runs only on the
/// other `n − 1` threads, or, with `n = 1`, only while the calling thread is itself inside
/// a parallel call — so no other thread may wait on such work while the calling thread
/// waits on it (nothing in coarse2fine does: its loader thread does no parallel work).
pub fn set_threads(n: usize) -> Result<()> {
    let (cores, most) = thread_limit();
    if n == 0 || n > most {
        return Err(Error::invalid(format!(
            "--threads {n}: give 1 to {most} (this machine has {cores} core{})",
            if cores == 1 { "" } else { "s" }
        )));
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(Error::invalid(format!("cannot set {n} threads: {e}"))),
    }
}

/// The thread count when none is given: `RAYON_NUM_THREADS` if it is a valid count, else
/// one per logical CPU.
pub fn default_threads() -> usize {
    let (cores, most) = thread_limit();
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| (1..=most).contains(&n))
        .unwrap_or(cores)
}

/// The machine's logical CPUs, and the most threads [`set_threads`] accepts: more only
/// time-slice the same cores (and the native engine splits a batch into at most 16
/// blocks).
fn thread_limit() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    (cores, (4 * cores).max(16))
}

/// Runs `f` on one of the thread pool's workers. The native engine's parallel loops then
/// split their work from inside the pool; called from another thread, each loop is handed
/// to the pool while the caller sleeps until it returns — two thread switches per loop,
/// about a tenth of a small net's training step at one thread (bn-cnn's profile).
fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Threads the backend currently uses.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A network ready to run on the chosen backend, with its momentum buffers.
pub struct Network {
    spec: NetSpec,
    names: Vec<(String, Vec<usize>)>,
    /// What each of `names` is (trained or not, decayed or not).
    kinds: Vec<TensorKind>,
    engine: Engine,
    kind: BackendKind,
}

enum Engine {
    Burn(BurnNet),
    Native {
        net: Box<NativeNet>,
        /// Momentum buffers (empty until the first step or [`Network::set_momentum`]), and
        /// gradient buffers reused across steps.
        velocity: Vec<Vec<f32>>,
        grads: Vec<Vec<f32>>,
    },
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("spec", &self.spec.name)
            .field("backend", &self.kind)
            .finish()
    }
}

/// A host map of the parameters `names`, the `i`-th one's values from `values(i)`.
fn host_map(
    names: &[(String, Vec<usize>)],
    values: impl Fn(usize) -> Result<Vec<f32>>,
) -> Result<WeightMap> {
    let mut map = WeightMap::new();
    for (i, (name, shape)) in names.iter().enumerate() {
        map.insert(
            name.clone(),
            HostTensor {
                shape: shape.clone(),
                data: values(i)?,
            },
        );
    }
    Ok(map)
}

/// The tensors of `map` in the order of `names`, each checked for presence and shape.
fn in_order<'m>(
    map: &'m WeightMap,
    names: &[(String, Vec<usize>)],
    what: &str,
) -> Result<Vec<&'m HostTensor>> {
    names
        .iter()
        .map(|(name, shape)| match map.get(name) {
            Some(t) if &t.shape == shape => Ok(t),
            Some(t) => Err(Error::invalid(format!(
                "{what} {name:?} has shape {:?}, the net needs {shape:?}",
                t.shape
            ))),
            None => Err(Error::invalid(format!("{what} has no tensor {name:?}"))),
        })
        .collect()
}

impl Network {
    /// Builds the network of a bound spec with the given weights; momentum starts at zero.
    pub fn new(spec: &NetSpec, weights: &WeightMap, compute: &Compute) -> Result<Self> {
        let (names, kinds): (Vec<_>, Vec<_>) = spec
            .tensors()?
            .into_iter()
            .map(|(n, s, k)| ((n, s), k))
            .unzip();
        weights.check_against(spec, std::path::Path::new("<weights>"))?;
        let host = in_order(weights, &names, "weights")?;
        let engine = if compute.kind == BackendKind::Cpu {
            let params = host.iter().map(|t| t.data.clone()).collect();
            Engine::Native {
                net: Box::new(NativeNet::new(spec, &names, params)?),
                velocity: Vec::new(),
                grads: Vec::new(),
            }
        } else {
            Engine::Burn(BurnNet::new(spec, &names, &host, &compute.device)?)
        };
        Ok(Self {
            spec: spec.clone(),
            names,
            kinds,
            engine,
            kind: compute.kind,
        })
    }

    /// The spec this network runs.
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// The backend this network runs on.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    fn check_input(&self, batch: &Batch) -> Result<()> {
        let input = self
            .spec
            .input
            .ok_or_else(|| Error::invalid("network spec is not bound to an input size"))?;
        let [_, c, h, w] = batch.shape;
        if (c, h, w) != (input.channels, input.height, input.width) {
            return Err(Error::invalid(format!(
                "batch of {c}×{h}×{w} images for a net built for {}×{}×{}",
                input.channels, input.height, input.width
            )));
        }
        Ok(())
    }

    /// Logits for a batch, row-major `N × classes`.
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>> {
        self.check_input(batch)?;
        match &self.engine {
            Engine::Native { net, .. } => on_workers(|| net.logits(&batch.images, batch.shape)),
            Engine::Burn(net) => net.logits(batch),
        }
    }

    /// Seconds of each layer's inference forward pass on `batch`, with the layer's
    /// description, for profiling. Meaningful on the CPU backends, which compute each
    /// operation before returning; GPU backends queue work, so their figures are not. The
    /// native engine fuses a ReLU into the layer before it, which then shows 0 s.
    pub fn forward_layer_times(&self, batch: &Batch) -> Result<Vec<(String, f64)>> {
        self.check_input(batch)?;
        let layers = self.spec.logit_layers();
        let times = match &self.engine {
            Engine::Native { net, .. } => {
                net.layer_times(&batch.images, batch.shape, layers.len())?
            }
            Engine::Burn(net) => net.layer_times(batch)?,
        };
        Ok(layers.iter().map(|l| l.describe()).zip(times).collect())
    }

    /// Re-estimates every batch norm's running statistics from `batches`: each becomes the
    /// average over the batches of its training-mode batch statistics (mean and unbiased
    /// variance; PyTorch's `momentum = None`), nothing else changes. After progressive
    /// resizing the running statistics were gathered at the smaller size; this brings
    /// them to the new one without a training step. Returns the batch norms updated.
    pub fn recalibrate_batch_norms(&mut self, batches: &[Batch]) -> Result<usize> {
        let mut sums: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            self.check_input(batch)?;
            let stats = match &self.engine {
                Engine::Native { net, .. } => {
                    net.batch_norm_statistics(&batch.images, batch.shape, b as u64)?
                }
                Engine::Burn(net) => net.batch_norm_statistics(batch, b as u64)?,
            };
            if sums.is_empty() {
                sums = stats
                    .iter()
                    .map(|(p, m, _)| (*p, vec![0.0; m.len()], vec![0.0; m.len()]))
                    .collect();
            }
            for ((_, sm, sv), (_, m, v)) in sums.iter_mut().zip(&stats) {
                sm.iter_mut().zip(m).for_each(|(a, &x)| *a += f64::from(x));
                sv.iter_mut().zip(v).for_each(|(a, &x)| *a += f64::from(x));
            }
        }
        let n = batches.len().max(1) as f64;
        for (p, sm, sv) in &sums {
            for (i, sum) in [(p + 2, sm), (p + 3, sv)] {
                let values: Vec<f32> = sum.iter().map(|v| (v / n) as f32).collect();
                match &mut self.engine {
                    Engine::Native { net, .. } => net.params[i] = values,
                    Engine::Burn(net) => net.set_param(i, values),
                }
            }
        }
        Ok(sums.len())
    }

    /// The current weights as a host map.
    pub fn weights(&self) -> Result<WeightMap> {
        host_map(&self.names, |i| match &self.engine {
            Engine::Native { net, .. } => Ok(net.params[i].clone()),
            Engine::Burn(net) => net.param(i),
        })
    }

    /// The momentum buffers as a host map, named like the weights (zeros before the first
    /// step).
    pub fn momentum(&self) -> Result<WeightMap> {
        host_map(&self.names, |i| match &self.engine {
            Engine::Native { velocity, .. } => Ok(velocity
                .get(i)
                .cloned()
                .unwrap_or_else(|| vec![0.0; self.names[i].1.iter().product()])),
            Engine::Burn(net) => net.velocity(i),
        })
    }

    /// Restores momentum buffers saved by [`Network::momentum`].
    pub fn set_momentum(&mut self, state: &WeightMap) -> Result<()> {
        let host: Vec<HostTensor> = in_order(state, &self.names, "optimizer state")?
            .into_iter()
            .cloned()
            .collect();
        match &mut self.engine {
            Engine::Native { velocity, .. } => {
                *velocity = host.into_iter().map(|t| t.data).collect();
            }
            Engine::Burn(net) => net.set_velocity(&host),
        }
        Ok(())
    }
}

/// A batch norm's statistics of one batch in training mode: the index of its γ among the
/// parameters, the batch mean and the unbiased variance.
type BatchNormStats = Vec<(usize, Vec<f32>, Vec<f32>)>;

/// SGD with momentum and weight decay in Caffe's form, which the paper used:
/// `v ← μ·v − lr·(∇L + λ·w)`, `w ← w + v`. The learning rate sits inside the
/// momentum buffer, so a change of rate takes effect smoothly. Weight decay applies to
/// the weights of convolutions and fully connected layers, not to biases or batch norms;
/// a batch norm's running statistics are not the optimizer's. The buffers themselves live
/// in the [`Network`].
#[derive(Debug, Clone)]
pub struct Sgd {
    momentum: f32,
    weight_decay: f32,
    /// Label smoothing ε of the loss (0: plain cross-entropy). The loss is the
    /// optimizer's objective, so it travels with its settings into [`train_step`].
    label_smoothing: f32,
    /// What each parameter is, which says whether it is updated and decayed.
    kinds: Vec<TensorKind>,
}

impl Sgd {
    /// An optimizer for `net`'s parameters.
    pub fn new(net: &Network, momentum: f32, weight_decay: f32) -> Self {
        Self {
            momentum,
            weight_decay,
            label_smoothing: 0.0,
            kinds: net.kinds.clone(),
        }
    }

    /// The same optimizer minimising the cross-entropy against labels smoothed by `eps`.
    pub fn with_label_smoothing(self, eps: f32) -> Self {
        Self {
            label_smoothing: eps,
            ..self
        }
    }

    /// Whether the optimizer updates parameter `i`.
    fn trains(&self, i: usize) -> bool {
        self.kinds.get(i).is_none_or(|k| k.trained())
    }

    /// The weight decay of parameter `i`.
    fn decay(&self, i: usize) -> f32 {
        if self.kinds.get(i).is_some_and(|k| k.decayed()) {
            self.weight_decay
        } else {
            0.0
        }
    }
}

/// One training step on `batch` at learning rate `lr`; returns the batch's mean loss
/// (before the update). `dropout_seed` fixes the dropout masks of this step.
pub fn train_step(
    net: &mut Network,
    sgd: &Sgd,
    batch: &Batch,
    lr: f32,
    dropout_seed: u64,
) -> Result<f32> {
    net.check_input(batch)?;
    match &mut net.engine {
        Engine::Native {
            net: n,
            velocity,
            grads,
        } => {
            if velocity.len() != n.params.len() {
                *velocity = n.params.iter().map(|p| vec![0.0; p.len()]).collect();
            }
            if grads.len() != n.params.len() {
                *grads = n.params.iter().map(|p| vec![0.0; p.len()]).collect();
            }
            on_workers(|| {
                let loss = n.gradients(
                    &batch.images,
                    batch.shape,
                    (&batch.labels, sgd.label_smoothing),
                    dropout_seed,
                    grads,
                )?;
                for (i, ((w, v), g)) in n
                    .params
                    .iter_mut()
                    .zip(velocity)
                    .zip(grads.iter())
                    .enumerate()
                {
                    if sgd.trains(i) {
                        native::sgd_update(w, v, g, lr, sgd.momentum, sgd.decay(i));
                    }
                }
                n.update_running_statistics();
                Ok(loss)
            })
        }
        Engine::Burn(n) => n.train_step(sgd, batch, lr, dropout_seed),
    }
}

/// Loss and accuracy counts of one evaluation batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalCounts {
    /// Images seen.
    pub n: usize,
    /// Sum of per-image cross-entropy.
    pub loss_sum: f64,
    /// Images whose label is the top-scoring class.
    pub top1: usize,
    /// Images whose label is among the 5 top-scoring classes.
    pub top5: usize,
}

impl EvalCounts {
    /// Adds another batch's counts.
    pub fn merge(&mut self, o: EvalCounts) {
        self.n += o.n;
        self.loss_sum += o.loss_sum;
        self.top1 += o.top1;
        self.top5 += o.top5;
    }
}

/// Scores logits against labels on the host (shared by evaluation and checks).
pub fn score_logits(logits: &[f32], labels: &[u32]) -> EvalCounts {
    let n = labels.len();
    let k = logits.len().checked_div(n).unwrap_or(0);
    let mut c = EvalCounts {
        n,
        ..Default::default()
    };
    for (row, &l) in logits.chunks_exact(k.max(1)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        c.loss_sum += f64::from(lse - row[l as usize]);
        let target = row[l as usize];
        // Rank as a stable arg-sort would give it: higher scores first, ties by class
        // index, so a constant output is not counted as right for every class.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || (v == target && j < l as usize))
            .count();
        c.top1 += usize::from(rank == 0);
        c.top5 += usize::from(rank < 5);
    }
    c
}

/// Evaluates one batch.
pub fn eval_batch(net: &Network, batch: &Batch) -> Result<EvalCounts> {
    Ok(score_logits(&net.logits(batch)?, &batch.labels))
}

/// The top-scoring class of a row of logits, ties to the lower index (as the top-1 count
/// of [`score_logits`] ranks them).
pub fn top_class(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// The largest absolute difference of two equally long outputs; infinite where either
/// side is NaN (an output never written keeps the NaN the tests start it at, or a
/// blow-up), which `f32::max` alone would pass over.
#[cfg(test)]
pub(crate) fn max_abs_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0.0, f32::max)
}

/// Asserts that `y` is `x · Wᵀ + b`, through a ReLU if `relu`, the sums written out in
/// `f64`; a NaN (an output never written) fails.
#[cfg(test)]
pub(crate) fn check_fc(
    y: &[f32],
    x: &[f32],
    (wt, bias, relu): (&[f32], &[f32], bool),
    shape: (usize, usize, usize),
) {
    let (n, inputs, outputs) = shape;
    for i in 0..n {
        for o in 0..outputs {
            let sum: f64 = (0..inputs)
                .map(|k| x[i * inputs + k] as f64 * wt[o * inputs + k] as f64)
                .sum();
            let sum = sum + f64::from(bias[o]);
            let want = if relu { sum.max(0.0) } else { sum };
            let got = y[i * outputs + o] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{n}×{inputs}→{outputs}: y[{i}][{o}] = {got}, want {want}"
            );
        }
    }
}

/// Runs `f` on a pool of `threads` threads, for the tests that compare thread counts.
#[cfg(test)]
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a pool")
        .install(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::reference;
    use crate::net::spec::{
        BatchNorm, Conv, Dropout, Fc, InputShape, Layer, Lrn, Pool, Residual, Units,
    };
    use crate::net::weights::Init;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    fn cpu() -> Compute {
        Compute::new(BackendKind::Cpu).expect("cpu backend is always built")
    }

    fn flex() -> Compute {
        Compute::new(BackendKind::Flex).expect("flex backend is always built")
    }

    fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max).max(1e-3);
        max_abs_err(got, want) / scale
    }

    /// Trains the same net on both CPU engines for a few steps (momentum, weight decay,
    /// dropout) and compares loss, logits, weights and momentum after every step.
    fn engines_agree(spec: &NetSpec, n: usize, steps: u64, seed: u64) -> Result<()> {
        engine_differences(spec, n, steps, seed).map(|_| ())
    }

    /// [`engines_agree`], returning the largest relative differences seen in the logits
    /// and in the weights.
    fn engine_differences(spec: &NetSpec, n: usize, steps: u64, seed: u64) -> Result<[f64; 2]> {
        differences_from(&flex(), spec, n, steps, (seed, 0.0))
    }

    /// [`engine_differences`] against the burn backend `reference`, the loss's labels
    /// smoothed by `smoothing`.
    fn differences_from(
        reference: &Compute,
        spec: &NetSpec,
        n: usize,
        steps: u64,
        seed: (u64, f32),
    ) -> Result<[f64; 2]> {
        differences_adjusted(reference, spec, n, steps, seed, |_| ())
    }

    /// [`differences_from`] with the native net changed by `adjust` before its first
    /// step.
    fn differences_adjusted(
        reference: &Compute,
        spec: &NetSpec,
        n: usize,
        steps: u64,
        (seed, smoothing): (u64, f32),
        adjust: impl FnOnce(&mut NativeNet),
    ) -> Result<[f64; 2]> {
        let mut worst = [0.0f64; 2];
        let input = spec.input.expect("bound");
        let classes = spec.classes.expect("bound");
        let w = WeightMap::init(spec, Init::Kaiming, seed)?;
        let mut fast = Network::new(spec, &w, &cpu())?;
        let Engine::Native { net, .. } = &mut fast.engine else {
            panic!("the cpu backend is the native engine");
        };
        adjust(net);
        let mut slow = Network::new(spec, &w, reference)?;
        let sgd_fast = Sgd::new(&fast, 0.9, 5e-3).with_label_smoothing(smoothing);
        let sgd_slow = Sgd::new(&slow, 0.9, 5e-3).with_label_smoothing(smoothing);
        let size = input.channels * input.height * input.width;
        for t in 0..steps {
            let batch = Batch {
                images: rand_vec(n * size, seed * 100 + t),
                labels: (0..n)
                    .map(|i| ((i as u64 * 7 + t) % classes as u64) as u32)
                    .collect(),
                shape: [n, input.channels, input.height, input.width],
            };
            let e = max_rel_err(&fast.logits(&batch)?, &slow.logits(&batch)?);
            assert!(e < 1e-4, "{}: step {t}: logits differ by {e}", spec.name);
            worst[0] = worst[0].max(f64::from(e));
            let lf = train_step(&mut fast, &sgd_fast, &batch, 0.01, t)?;
            let ls = train_step(&mut slow, &sgd_slow, &batch, 0.01, t)?;
            assert!(
                (lf - ls).abs() <= 1e-4 * ls.abs().max(1.0),
                "{}: step {t}: loss {lf} vs {ls}",
                spec.name
            );
            for (what, a, b) in [
                ("weights", fast.weights()?, slow.weights()?),
                ("momentum", fast.momentum()?, slow.momentum()?),
            ] {
                for (name, ta) in a.iter() {
                    let tb = b.get(name).expect("same names");
                    let e = max_rel_err(&ta.data, &tb.data);
                    assert!(
                        e < 1e-3,
                        "{}: step {t}: {what} {name} differ by {e}",
                        spec.name
                    );
                    worst[1] = worst[1].max(f64::from(e));
                }
            }
        }
        Ok(worst)
    }

    #[test]
    fn native_engine_matches_burn_on_every_layer_option() -> Result<()> {
        let spec = mixed_spec().bind(InputShape::square(2, 11), 3)?;
        engines_agree(&spec, 5, 3, 1)
    }

    /// A stride-1, undilated convolution layer.
    fn conv(name: &str, filters: usize, kernel: usize, padding: usize) -> Layer {
        Layer::Conv(conv_spec(name, filters, kernel, padding))
    }

    fn conv_spec(name: &str, filters: usize, kernel: usize, padding: usize) -> Conv {
        Conv {
            name: name.into(),
            filters,
            kernel,
            stride: 1,
            padding,
            dilation: 1,
        }
    }

    /// Blocks of several images, and convolutions whose unfolded input exceeds the cache
    /// budget, so that each block is unfolded in several runs; a 1×1 convolution, which
    /// skips unfolding; an LRN with a general β.
    #[test]
    fn native_engine_matches_burn_on_large_maps_and_uneven_blocks() -> Result<()> {
        let spec = NetSpec {
            name: "wide".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 8, 3, 1),
                Layer::Relu,
                conv("c2", 4, 1, 0),
                Layer::Relu,
                // A β other than AlexNet's 0.75, which has a path of its own.
                Layer::Lrn(Lrn {
                    size: 3,
                    alpha: 0.1,
                    beta: 0.6,
                    k: 1.5,
                }),
                Layer::MaxPool(Pool {
                    kernel: 2,
                    stride: None,
                    padding: 0,
                    dilation: 1,
                    ceil_mode: false,
                }),
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(3, 48), 5)?;
        engines_agree(&spec, 37, 2, 3)
    }

    /// Winograd convolutions (3×3, stride 1, ≥ 16 channels and filters) train like burn's
    /// direct ones within the engine's tolerances: odd map sizes (edge tiles), no padding,
    /// blocks of uneven size, an input gradient through two Winograd layers.
    #[test]
    fn winograd_convolutions_train_like_burn() -> Result<()> {
        let conv = |name: &str, filters, padding| conv(name, filters, 3, padding);
        let spec = NetSpec {
            name: "winograd".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 16, 1),
                Layer::Relu,
                conv("c2", 24, 1),
                Layer::Relu,
                conv("c3", 16, 0),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(3, 11), 5)?;
        super::winograd::force_on();
        let w = WeightMap::init(&spec, Init::Kaiming, 0)?;
        let Engine::Native { net, .. } = &Network::new(&spec, &w, &cpu())?.engine else {
            panic!("the cpu backend is the native engine");
        };
        assert_eq!(net.winograd_steps(), 2, "c2 and c3 run as Winograd");
        let [logits, weights] = engine_differences(&spec, 19, 4, 5)?;
        eprintln!("Winograd vs burn over 4 steps: logits {logits:.1e}, weights {weights:.1e}");
        Ok(())
    }

    /// Convolutions that run forward as Winograd and backward directly, as `auto` runs
    /// some where the matrix products are AVX2 (`Algo::forward`), train like burn's within
    /// the engine's tolerances: the forward pass transforms the filters, the backward
    /// packs them for the direct input gradient, and inference folds the batch norm
    /// into the Winograd filters.
    #[test]
    fn winograd_forward_with_direct_backward_trains_like_burn() -> Result<()> {
        let spec = NetSpec {
            name: "winograd-forward".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 16, 3, 1),
                Layer::Relu,
                conv("c2", 24, 3, 1),
                Layer::BatchNorm(BatchNorm::new("b2")),
                Layer::Relu,
                conv("c3", 16, 3, 0),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(3, 11), 5)?;
        let mut changed = 0;
        let [logits, weights] = differences_adjusted(&flex(), &spec, 19, 4, (5, 0.0), |net| {
            changed = net.run_winograd_forward_only();
        })?;
        assert_eq!(
            changed, 2,
            "c2 and c3 run forward as Winograd, backward directly"
        );
        eprintln!(
            "Winograd forward vs burn over 4 steps: logits {logits:.1e}, weights {weights:.1e}"
        );
        Ok(())
    }

    /// Direct convolutions train like burn's within the engine's tolerances: 3×3 windows
    /// with and without padding, a 2×2 and a 5×5 one, a 3×3 of stride 2 onto a 4×4 map
    /// (computed position by position, its input gradient unfolded), filter counts that
    /// are not multiples of the packed blocks, odd map sizes and uneven blocks. Under 16
    /// filters, so Winograd (switched on by another test of this process) leaves them
    /// alone.
    #[test]
    fn direct_convolutions_train_like_burn() -> Result<()> {
        let spec = NetSpec {
            name: "direct".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 10, 3, 1),
                Layer::Relu,
                conv("c2", 7, 2, 0),
                Layer::Relu,
                conv("c3", 9, 5, 2),
                Layer::Relu,
                conv("c4", 13, 3, 0),
                Layer::Relu,
                Layer::Conv(Conv {
                    stride: 2,
                    ..conv_spec("c5", 11, 3, 1)
                }),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(3, 11), 5)?;
        direct_against_burn(&spec, 5, (19, 4, 5))
    }

    /// Trains `spec` with direct convolutions switched on against burn ([`engine_differences`]
    /// over `n` images, `steps` steps, from `seed`), after checking that its `convs`
    /// convolutions all run directly (none without fused multiply-adds).
    fn direct_against_burn(
        spec: &NetSpec,
        convs: usize,
        (n, steps, seed): (usize, u64, u64),
    ) -> Result<()> {
        super::direct::force_on();
        let w = WeightMap::init(spec, Init::Kaiming, 0)?;
        let Engine::Native { net, .. } = &Network::new(spec, &w, &cpu())?.engine else {
            panic!("the cpu backend is the native engine");
        };
        let want = if simd() == Simd::Baseline { 0 } else { convs };
        assert_eq!(
            net.direct_steps(),
            want,
            "{}: every convolution runs directly",
            spec.name
        );
        let [logits, weights] = engine_differences(spec, n, steps, seed)?;
        eprintln!(
            "{} vs burn over {steps} steps: logits {logits:.1e}, weights {weights:.1e}",
            spec.name
        );
        Ok(())
    }

    /// Strided direct convolutions whose output rows are 16 and 8 wide train like burn's:
    /// where the own loops run AVX2 (as in the suite's `C2F_SIMD=avx2` pass) they run
    /// forward over split rows, elsewhere position by position. Under 16 filters, so
    /// Winograd leaves them alone.
    #[test]
    fn strided_convolutions_with_rows_of_whole_vectors_train_like_burn() -> Result<()> {
        let strided = |name: &str, filters| {
            Layer::Conv(Conv {
                stride: 2,
                ..conv_spec(name, filters, 3, 1)
            })
        };
        let spec = NetSpec {
            name: "strided".into(),
            input: None,
            classes: None,
            layers: vec![
                strided("s1", 12),
                Layer::Relu,
                strided("s2", 14),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(3, 32), 5)?;
        direct_against_burn(&spec, 2, (9, 4, 7))
    }

    /// Layers with a single output: a conv with one filter, an fc with one unit, and a
    /// batch of one image. Their matrices are one row or column wide.
    #[test]
    fn native_engine_matches_burn_on_single_outputs() -> Result<()> {
        let spec = NetSpec {
            name: "thin".into(),
            input: None,
            classes: None,
            layers: vec![
                Layer::Conv(Conv {
                    name: "c1".into(),
                    filters: 1,
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                    dilation: 1,
                }),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f1".into(),
                    outputs: Units::Fixed(1),
                }),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f2".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(1, 6), 2)?;
        engines_agree(&spec, 4, 2, 5)?;
        engines_agree(&spec, 1, 2, 6)
    }

    /// The native engine splits batches into blocks independently of the thread count
    /// and sums in block order, so the thread count does not change a single bit.
    #[test]
    fn native_engine_is_bit_identical_across_thread_counts() -> Result<()> {
        let alexnet = crate::net::presets::preset("alexnet-s4").expect("preset");
        for spec in [alexnet, modern_spec(), residual_spec()] {
            let spec = spec.bind(InputShape::square(3, 16), 10)?;
            same_bits_at_any_thread_count(&spec)?;
        }
        Ok(())
    }

    fn same_bits_at_any_thread_count(spec: &NetSpec) -> Result<()> {
        let spec = spec.clone();
        let w = WeightMap::init(&spec, Init::Kaiming, 4)?;
        let batch = Batch {
            images: rand_vec(40 * 3 * 16 * 16, 6),
            labels: (0..40).map(|i| i % 10).collect(),
            shape: [40, 3, 16, 16],
        };
        let run = |threads: usize| -> Result<(Vec<f32>, WeightMap, WeightMap)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::Backend(e.to_string()))?;
            pool.install(|| {
                let mut net = Network::new(&spec, &w, &cpu())?;
                let sgd = Sgd::new(&net, 0.9, 5e-4);
                let mut losses = Vec::new();
                for t in 0..3 {
                    losses.push(train_step(&mut net, &sgd, &batch, 0.01, t)?);
                }
                losses.extend(net.logits(&batch)?);
                Ok((losses, net.weights()?, net.momentum()?))
            })
        };
        let one = run(1)?;
        for threads in [2, 3] {
            let other = run(threads)?;
            assert!(
                one.0
                    .iter()
                    .zip(&other.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "losses or logits differ at {threads} threads"
            );
            for (a, b) in [(&one.1, &other.1), (&one.2, &other.2)] {
                for (name, t) in a.iter() {
                    let u = b.get(name).expect("same names");
                    assert!(
                        t.data
                            .iter()
                            .zip(&u.data)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{name} differs at {threads} threads"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn native_engine_matches_burn_on_table_i_nets() -> Result<()> {
        // alexnet itself needs 227×227 images: too slow for burn in a unit test.
        for p in crate::net::presets::PRESETS
            .iter()
            .filter(|p| p.native_size <= 32)
        {
            let preset = crate::net::presets::preset(p.name).expect("listed preset");
            let spec = preset.bind(InputShape::square(3, p.native_size), 10)?;
            engines_agree(&spec, 4, 2, 2)?;
        }
        Ok(())
    }

    /// The libtorch backend runs the burn path on libtorch's kernels: it must train like the
    /// native engine on every layer option and the Table I nets, on libtorch's CPU kernels
    /// and, with `C2F_TEST_LIBTORCH_CUDA=1` (a machine with a GPU), on GPU 0.
    #[cfg(feature = "libtorch")]
    #[test]
    fn libtorch_backend_trains_like_the_native_engine() -> Result<()> {
        let mut kinds = vec![BackendKind::Libtorch];
        if std::env::var_os("C2F_TEST_LIBTORCH_CUDA").is_some() {
            kinds.push(BackendKind::LibtorchCuda(0));
        }
        for kind in kinds {
            let device = Compute::new(kind)?;
            let mixed = mixed_spec().bind(InputShape::square(2, 11), 3)?;
            let mut worst = differences_from(&device, &mixed, 5, 3, (1, 0.0))?;
            let modern = modern_spec().bind(InputShape::square(2, 10), 3)?;
            let w = differences_from(&device, &modern, 5, 3, (1, 0.0))?;
            worst = [worst[0].max(w[0]), worst[1].max(w[1])];
            let residual = residual_spec().bind(InputShape::square(2, 9), 3)?;
            let w = differences_from(&device, &residual, 5, 3, (1, 0.0))?;
            worst = [worst[0].max(w[0]), worst[1].max(w[1])];
            for p in crate::net::presets::PRESETS
                .iter()
                .filter(|p| p.native_size <= 32)
            {
                let preset = crate::net::presets::preset(p.name).expect("listed preset");
                let spec = preset.bind(InputShape::square(3, p.native_size), 10)?;
                let w = differences_from(&device, &spec, 4, 2, (2, 0.0))?;
                worst = [worst[0].max(w[0]), worst[1].max(w[1])];
            }
            eprintln!(
                "{kind}: largest relative difference from the native engine: logits {:.1e}, weights {:.1e}",
                worst[0], worst[1]
            );
        }
        Ok(())
    }

    /// A libtorch GPU that is not there is a one-line error that says so; one that is
    /// there opens.
    #[cfg(feature = "libtorch")]
    #[test]
    fn libtorch_cuda_without_that_gpu_is_a_clear_error() {
        let err = Compute::new(BackendKind::LibtorchCuda(99)).expect_err("no machine has 100 GPUs");
        let msg = err.to_string();
        assert!(msg.contains("libtorch-cuda:99"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        match Compute::new(BackendKind::LibtorchCuda(0)) {
            Ok(_) => assert!(tch::Cuda::device_count() > 0),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("no CUDA GPU found") || msg.contains("did not load"),
                    "{msg}"
                );
            }
        }
    }

    /// Label smoothing: the native loss and its gradient against burn's autodiff of the
    /// smoothed cross-entropy, on every layer option; and the loss's value by hand.
    #[test]
    fn label_smoothing_trains_like_burn() -> Result<()> {
        let spec = mixed_spec().bind(InputShape::square(2, 11), 3)?;
        differences_from(&flex(), &spec, 5, 3, (1, 0.2))?;
        // Logits (0, ln 2, 0) for label 1, ε = 0.3 over 3 classes: p = (¼, ½, ¼),
        // t = (0.1, 0.8, 0.1), loss = −Σ t·ln p = 0.2·ln 4 + 0.8·ln 2.
        let mut grad = [0f32; 3];
        let loss =
            native::softmax_cross_entropy(&[0.0, 2f32.ln(), 0.0], (&[1], 0.3), 3, &mut grad)?;
        let want = 0.2 * 4f32.ln() + 0.8 * 2f32.ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        for (g, w) in grad.iter().zip([0.15, -0.3, 0.15]) {
            assert!((g - w).abs() < 1e-6, "{grad:?}");
        }
        Ok(())
    }

    /// Exercises every layer type and option the backend maps to burn.
    fn mixed_spec() -> NetSpec {
        let conv = |name: &str, filters, kernel, stride, padding, dilation| {
            Layer::Conv(Conv {
                name: name.into(),
                filters,
                kernel,
                stride,
                padding,
                dilation,
            })
        };
        NetSpec {
            name: "mixed".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 4, 3, 1, 1, 1),
                Layer::Relu,
                Layer::Lrn(Lrn {
                    size: 3,
                    alpha: 0.5,
                    beta: 0.75,
                    k: 2.0,
                }),
                Layer::MaxPool(Pool {
                    kernel: 3,
                    stride: Some(2),
                    padding: 1,
                    dilation: 1,
                    ceil_mode: true,
                }),
                conv("c2", 5, 2, 2, 0, 2),
                Layer::Relu,
                Layer::MaxPool(Pool {
                    kernel: 2,
                    stride: Some(1),
                    padding: 0,
                    dilation: 1,
                    ceil_mode: false,
                }),
                Layer::Dropout(Dropout { p: 0.5 }),
                Layer::Fc(Fc {
                    name: "f1".into(),
                    outputs: Units::Fixed(7),
                }),
                Layer::Relu,
                Layer::Fc(Fc {
                    name: "f2".into(),
                    outputs: Units::Classes,
                }),
                Layer::Softmax,
            ],
        }
    }

    /// Batch norms (before a ReLU, before a pool, over 1×1 maps), average pools (padded,
    /// dilated) and a global average pool.
    fn modern_spec() -> NetSpec {
        let conv = |name: &str, filters| {
            Layer::Conv(Conv {
                name: name.into(),
                filters,
                kernel: 3,
                stride: 1,
                padding: 1,
                dilation: 1,
            })
        };
        let pool = |kernel, stride, padding, dilation| Pool {
            kernel,
            stride: Some(stride),
            padding,
            dilation,
            ceil_mode: false,
        };
        NetSpec {
            name: "modern".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 6),
                Layer::BatchNorm(BatchNorm::new("b1")),
                Layer::Relu,
                Layer::AvgPool(pool(3, 2, 1, 1)),
                conv("c2", 5),
                Layer::BatchNorm(BatchNorm {
                    name: "b2".into(),
                    eps: 1e-3,
                    momentum: 0.3,
                }),
                Layer::AvgPool(pool(2, 1, 0, 2)),
                Layer::Relu,
                Layer::GlobalAvgPool,
                Layer::BatchNorm(BatchNorm::new("b3")),
                Layer::Fc(Fc {
                    name: "f1".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
    }

    /// Residual blocks: an identity block with a dropout in its body, a projection block
    /// (strided, with a batch norm in the shortcut), and a pre-activation block whose body
    /// starts with a ReLU (which must not be fused into the layer before: the shortcut
    /// reads that layer's output too).
    fn residual_spec() -> NetSpec {
        let conv = |name: &str, filters, kernel, stride| {
            Layer::Conv(Conv {
                name: name.into(),
                filters,
                kernel,
                stride,
                padding: kernel / 2,
                dilation: 1,
            })
        };
        let bn = |name: &str| Layer::BatchNorm(BatchNorm::new(name));
        NetSpec {
            name: "residual".into(),
            input: None,
            classes: None,
            layers: vec![
                conv("c1", 6, 3, 1),
                bn("b1"),
                Layer::Relu,
                Layer::Residual(Residual {
                    body: vec![
                        conv("r1a", 6, 3, 1),
                        bn("b1a"),
                        Layer::Relu,
                        Layer::Dropout(Dropout { p: 0.3 }),
                        conv("r1b", 6, 3, 1),
                        bn("b1b"),
                    ],
                    shortcut: vec![],
                }),
                Layer::Relu,
                Layer::Residual(Residual {
                    body: vec![
                        conv("r2a", 8, 3, 2),
                        bn("b2a"),
                        Layer::Relu,
                        conv("r2b", 8, 3, 1),
                        bn("b2b"),
                    ],
                    shortcut: vec![conv("p2", 8, 1, 2), bn("bp2")],
                }),
                Layer::Residual(Residual {
                    body: vec![Layer::Relu, conv("r3", 8, 3, 1)],
                    shortcut: vec![],
                }),
                Layer::GlobalAvgPool,
                Layer::Fc(Fc {
                    name: "f1".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
    }

    /// Residual blocks train like burn's autodiff, which sums the gradient of a value read
    /// twice by itself; also a block straight on the input images.
    #[test]
    fn native_engine_matches_burn_on_residual_blocks() -> Result<()> {
        let spec = residual_spec().bind(InputShape::square(2, 9), 3)?;
        engines_agree(&spec, 5, 3, 1)?;
        engines_agree(&spec, 23, 2, 2)?;
        let mut first = residual_spec();
        first.layers.drain(..3);
        first.name = "residual-first".into();
        if let Some(Layer::Residual(r)) = first.layers.first_mut() {
            r.shortcut = vec![Layer::Conv(Conv {
                name: "p1".into(),
                filters: 6,
                kernel: 1,
                stride: 1,
                padding: 0,
                dilation: 1,
            })];
        }
        engines_agree(&first.bind(InputShape::square(2, 9), 3)?, 7, 2, 3)
    }

    /// Recalibration sets the running statistics to the average of the batches' training
    /// statistics, on both engines alike, and changes nothing else.
    #[test]
    fn recalibrated_batch_norms_hold_the_batches_statistics() -> Result<()> {
        let spec = modern_spec().bind(InputShape::square(2, 10), 3)?;
        let w = WeightMap::init(&spec, Init::Kaiming, 5)?;
        let batch = |seed| Batch {
            images: rand_vec(6 * 2 * 10 * 10, seed),
            labels: vec![0; 6],
            shape: [6, 2, 10, 10],
        };
        let mut got = Vec::new();
        for compute in [cpu(), flex()] {
            let mut net = Network::new(&spec, &w, &compute)?;
            assert_eq!(net.recalibrate_batch_norms(&[batch(1), batch(2)])?, 3);
            got.push(net.weights()?);
        }
        for (name, t) in got[0].iter() {
            let other = got[1].get(name).expect("same tensors");
            let c = max_rel_err(&t.data, &other.data);
            assert!(c < 1e-4, "{name}: native and burn differ by {c}");
            if !name.contains("running") {
                assert_eq!(Some(t), w.get(name), "{name} changed");
            }
        }
        // A batch norm on the input images: its statistics are the images' own, per
        // channel, averaged over the two batches.
        let first = NetSpec {
            name: "bn-first".into(),
            input: None,
            classes: None,
            layers: vec![
                Layer::BatchNorm(BatchNorm::new("b0")),
                Layer::GlobalAvgPool,
                Layer::Fc(Fc {
                    name: "f".into(),
                    outputs: Units::Classes,
                }),
            ],
        }
        .bind(InputShape::square(2, 10), 3)?;
        let mut net = Network::new(&first, &WeightMap::init(&first, Init::Kaiming, 1)?, &cpu())?;
        net.recalibrate_batch_norms(&[batch(1), batch(2)])?;
        let got = net.weights()?;
        for c in 0..2 {
            let (mut mean, mut var) = (0.0, 0.0);
            for b in [batch(1), batch(2)] {
                let v: Vec<f64> = (0..6)
                    .flat_map(|i| b.images[(i * 2 + c) * 100..][..100].to_vec())
                    .map(f64::from)
                    .collect();
                let m = v.iter().sum::<f64>() / 600.0;
                mean += m / 2.0;
                var += v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 599.0 / 2.0;
            }
            let r = |n: &str| f64::from(got.get(n).expect("statistic").data[c]);
            assert!((r("b0.running_mean") - mean).abs() < 1e-5, "channel {c}");
            assert!((r("b0.running_var") - var).abs() < 1e-5, "channel {c}");
        }
        Ok(())
    }

    /// Batch norm's training statistics, backward pass and running averages, and the
    /// average pools, against burn's autodiff; blocks of one and of several images.
    #[test]
    fn native_engine_matches_burn_on_batch_norm_and_average_pooling() -> Result<()> {
        let spec = modern_spec().bind(InputShape::square(2, 10), 3)?;
        engines_agree(&spec, 5, 3, 1)?;
        engines_agree(&spec, 37, 2, 2)?;
        // A batch norm over 1×1 maps has no variance in a batch of one image.
        let w = WeightMap::init(&spec, Init::Kaiming, 1)?;
        let mut net = Network::new(&spec, &w, &cpu())?;
        let sgd = Sgd::new(&net, 0.9, 0.0);
        let one = Batch {
            images: rand_vec(2 * 10 * 10, 3),
            labels: vec![0],
            shape: [1, 2, 10, 10],
        };
        let err = train_step(&mut net, &sgd, &one, 0.01, 0).expect_err("one image");
        assert!(err.to_string().contains("at least 2 images"), "{err}");
        Ok(())
    }

    /// The optimizer leaves running statistics to the forward pass, and decays only the
    /// weights of convolutions and fully connected layers.
    #[test]
    fn batch_norm_parameters_are_not_decayed_and_statistics_not_optimised() -> Result<()> {
        let spec = modern_spec().bind(InputShape::square(2, 10), 3)?;
        let w = WeightMap::init(&spec, Init::Kaiming, 1)?;
        let net = Network::new(&spec, &w, &cpu())?;
        let sgd = Sgd::new(&net, 0.9, 0.1);
        for (i, (name, _)) in net.names.iter().enumerate() {
            let conv_or_fc_weight = name.ends_with(".weight") && !name.starts_with('b');
            assert_eq!(sgd.decay(i) != 0.0, conv_or_fc_weight, "{name}");
            assert_eq!(sgd.trains(i), !name.contains("running"), "{name}");
        }
        // A batch norm starts as γ = 1, β = 0 with statistics 0 and 1.
        assert!(
            w.get("b1.weight")
                .expect("γ")
                .data
                .iter()
                .all(|&v| v == 1.0)
        );
        assert!(
            w.get("b1.running_var")
                .expect("var")
                .data
                .iter()
                .all(|&v| v == 1.0)
        );
        assert!(
            w.get("b1.running_mean")
                .expect("mean")
                .data
                .iter()
                .all(|&v| v == 0.0)
        );
        Ok(())
    }

    #[test]
    fn backend_matches_reference_forward() -> Result<()> {
        // A ReLU between a convolution and its batch norm (c2 → relu → b2) is fused into the
        // convolution, which then must not fold the batch norm in.
        let mut relu_first = modern_spec();
        relu_first.name = "relu-first".into();
        relu_first.layers.insert(5, Layer::Relu);
        for spec in [mixed_spec(), modern_spec(), residual_spec(), relu_first] {
            let spec = spec.bind(InputShape::square(2, 11), 3)?;
            let mut w = WeightMap::init(&spec, Init::Gaussian(0.5), 3)?;
            // Batch norms with statistics and an affine map of their own.
            let names: Vec<String> = w.iter().map(|(n, _)| n.clone()).collect();
            for name in names.iter().filter(|n| n.starts_with('b')) {
                let positive = name.ends_with("running_var");
                if let Some(t) = w.get_mut(name) {
                    for (j, v) in t.data.iter_mut().enumerate() {
                        let r = ((j * 37 + name.len()) % 11) as f32 / 11.0;
                        *v = if positive { 0.5 + r } else { r - 0.4 };
                    }
                }
            }
            for backend in [cpu(), flex()] {
                reference_agrees(&spec, &w, &backend)?;
            }
            // The native engine folds a batch norm into the convolution before it where
            // nothing else reads that convolution: such pairs are part of what was checked.
            let Engine::Native { net, .. } = &Network::new(&spec, &w, &cpu())?.engine else {
                panic!("the cpu backend is the native engine");
            };
            let norms = spec
                .layers
                .iter()
                .filter(|l| matches!(l, Layer::BatchNorm(_)));
            if norms.count() > 0 {
                assert!(net.folded_steps() > 0, "{}: nothing folded", spec.name);
            }
            // Every batch norm of the residual net follows a convolution only it reads,
            // those that end a block (adding the other branch) included.
            if spec.name == "residual" {
                assert_eq!(
                    net.folded_steps(),
                    6,
                    "residual: not every batch norm folded"
                );
            }
        }
        Ok(())
    }

    /// The logits of `backend` against the plain reference forward pass.
    fn reference_agrees(spec: &NetSpec, w: &WeightMap, backend: &Compute) -> Result<()> {
        let n = 4;
        let x = rand_vec(n * 2 * 11 * 11, 9);
        let want = reference::forward(spec, w, &x, n)?;
        let net = Network::new(spec, w, backend)?;
        let got = net.logits(&Batch {
            images: x,
            labels: vec![0; n],
            shape: [n, 2, 11, 11],
        })?;
        let err = max_abs_err(&got, &want);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(
            err <= 1e-4 * scale.max(1.0),
            "{} on {}: max abs error {err} (scale {scale})",
            spec.name,
            backend.kind()
        );
        Ok(())
    }

    /// The per-layer profile runs the same forward pass: one entry per logit layer, in
    /// order, named like the spec's layers.
    #[test]
    fn forward_layer_times_cover_every_layer() -> Result<()> {
        let spec = mixed_spec().bind(InputShape::square(2, 11), 3)?;
        let w = WeightMap::init(&spec, Init::Gaussian(0.5), 3)?;
        let net = Network::new(&spec, &w, &cpu())?;
        let times = net.forward_layer_times(&Batch {
            images: rand_vec(2 * 2 * 11 * 11, 9),
            labels: vec![0; 2],
            shape: [2, 2, 11, 11],
        })?;
        let names: Vec<String> = spec.logit_layers().iter().map(|l| l.describe()).collect();
        assert_eq!(times.iter().map(|t| t.0.clone()).collect::<Vec<_>>(), names);
        assert!(times.iter().all(|t| t.1.is_finite() && t.1 >= 0.0));
        Ok(())
    }

    #[test]
    fn sgd_step_matches_hand_computed_caffe_update() -> Result<()> {
        // A single fully connected layer: the cross-entropy gradient is known in closed form,
        // (softmax(Wx + b) − onehot) xᵀ / n, so the whole step can be checked by hand.
        let spec = NetSpec {
            name: "linear".into(),
            input: None,
            classes: None,
            layers: vec![Layer::Fc(Fc {
                name: "fc".into(),
                outputs: Units::Classes,
            })],
        }
        .bind(InputShape::square(1, 2), 3)?;
        let w0 = WeightMap::init(&spec, Init::Gaussian(0.3), 1)?;
        let (n, k, d) = (2usize, 3usize, 4usize);
        let x = rand_vec(n * d, 5);
        let labels = vec![2u32, 0];
        let batch = Batch {
            images: x.clone(),
            labels: labels.clone(),
            shape: [n, 1, 2, 2],
        };
        let mut net = Network::new(&spec, &w0, &cpu())?;
        let mut v0 = WeightMap::zeros_for(&spec)?;
        v0.insert(
            "fc.weight",
            HostTensor {
                shape: vec![k, d],
                data: rand_vec(k * d, 7),
            },
        );
        v0.insert(
            "fc.bias",
            HostTensor {
                shape: vec![k],
                data: rand_vec(k, 8),
            },
        );
        let (lr, mu, wd) = (0.1f32, 0.9f32, 0.01f32);
        net.set_momentum(&v0)?;
        let sgd = Sgd::new(&net, mu, wd);
        let loss = train_step(&mut net, &sgd, &batch, lr, 0)?;

        let wt = &w0.get("fc.weight").expect("w").data;
        let bias = &w0.get("fc.bias").expect("b").data;
        let mut gw = vec![0f32; k * d];
        let mut gb = vec![0f32; k];
        let mut want_loss = 0f32;
        for i in 0..n {
            let z: Vec<f32> = (0..k)
                .map(|o| bias[o] + (0..d).map(|j| wt[o * d + j] * x[i * d + j]).sum::<f32>())
                .collect();
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            want_loss += -(e[labels[i] as usize] / s).ln() / n as f32;
            for o in 0..k {
                let g = (e[o] / s - f32::from(o == labels[i] as usize)) / n as f32;
                gb[o] += g;
                for j in 0..d {
                    gw[o * d + j] += g * x[i * d + j];
                }
            }
        }
        assert!(
            (loss - want_loss).abs() < 1e-5,
            "loss {loss} vs {want_loss}"
        );
        let vw = &v0.get("fc.weight").expect("v").data;
        let vb = &v0.get("fc.bias").expect("v").data;
        let new_w = net.weights()?;
        let new_v = net.momentum()?;
        for idx in 0..k * d {
            let v = mu * vw[idx] - lr * (gw[idx] + wd * wt[idx]);
            assert!((new_v.get("fc.weight").expect("v").data[idx] - v).abs() < 1e-5);
            assert!((new_w.get("fc.weight").expect("w").data[idx] - (wt[idx] + v)).abs() < 1e-5);
        }
        for o in 0..k {
            // No weight decay on biases.
            let v = mu * vb[o] - lr * gb[o];
            assert!((new_w.get("fc.bias").expect("b").data[o] - (bias[o] + v)).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn loss_decreases_on_a_fixed_batch() -> Result<()> {
        let spec = crate::net::presets::preset("net-2")
            .expect("net-2")
            .bind(InputShape::square(1, 8), 10)?;
        let w = WeightMap::init(&spec, Init::Kaiming, 0)?;
        let mut net = Network::new(&spec, &w, &cpu())?;
        let sgd = Sgd::new(&net, 0.9, 5e-4);
        let n = 32;
        let batch = Batch {
            images: rand_vec(n * 64, 1),
            labels: (0..n as u32).map(|i| i % 10).collect(),
            shape: [n, 1, 8, 8],
        };
        let first = train_step(&mut net, &sgd, &batch, 0.05, 0)?;
        let mut last = first;
        for t in 1..40 {
            last = train_step(&mut net, &sgd, &batch, 0.05, t)?;
        }
        assert!(last < 0.5 * first, "loss went from {first} to {last}");
        Ok(())
    }

    #[test]
    fn scoring_counts_top1_top5_and_ties() {
        // Row 0: label 2 is the max. Row 1: label 0 ranks 3rd (top-5, not top-1).
        let logits = [0.0, 1.0, 5.0, 0.0, 0.0, 0.0, 2.0, 3.0, 5.0, 1.0, 0.0, 0.0];
        let c = score_logits(&logits, &[2, 0]);
        assert_eq!((c.n, c.top1, c.top5), (2, 1, 2));
        // All equal: label 3 ranks 4th by index, so it is not top-1.
        let tie = score_logits(&[1.0; 6], &[3]);
        assert_eq!((tie.top1, tie.top5), (0, 1));
        let want = (6.0f64).ln();
        assert!((tie.loss_sum - want).abs() < 1e-6);
    }
}
