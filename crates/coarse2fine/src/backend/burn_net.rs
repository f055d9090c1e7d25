//! burn's side of the backend: the reference engine the native one is tested against
//! (`flex`, burn's CPU backend), and the GPU backends (`cuda`, `wgpu`). A spec compiles to a
//! list of burn operations over flat parameter tensors, reshaped inside the forward pass,
//! with autodiff for the backward pass.

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use super::Sgd;
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::net::spec::{Layer, NetSpec, Param, param_name};
use crate::net::weights::Tensor as HostTensor;

enum Op {
    Conv {
        w: usize,
        shape: [usize; 4],
        opts: ConvOptions<2>,
    },
    Relu,
    Pool(MaxPoolOptions<2>),
    AvgPool(AvgPoolOptions<2>),
    /// A dilated average pool, which burn's pooling lacks: a convolution of each channel
    /// with a constant `1/k²` kernel.
    DilatedAvgPool {
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    },
    GlobalAvgPool,
    BatchNorm {
        /// Index of γ; β, the running mean and the running variance follow it.
        w: usize,
        eps: f32,
        momentum: f32,
    },
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
    },
    Dropout(f32),
    Fc {
        w: usize,
        shape: [usize; 2],
    },
    /// `body(x) + shortcut(x)`; an empty shortcut is the identity.
    Residual {
        body: Vec<Op>,
        shortcut: Vec<Op>,
    },
}

/// What a training forward pass needs and leaves: the dropout masks' generator, and each
/// batch norm's batch statistics for its running averages.
struct Training {
    rng: rand_chacha::ChaCha8Rng,
    stats: Vec<BatchStats>,
}

/// One batch norm's statistics of a training batch, on the device, outside the autodiff
/// graph: the mean and the unbiased variance, with the index of its γ and its momentum.
struct BatchStats {
    w: usize,
    momentum: f32,
    mean: Tensor<1>,
    var: Tensor<1>,
}

enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

/// A burn network: compiled layer list, parameters and momentum buffers on the device.
pub(super) struct BurnNet {
    ops: Vec<Op>,
    pub(super) params: Vec<Tensor<1>>,
    /// Momentum buffers, one per parameter (empty until the first step or
    /// [`BurnNet::set_velocity`]).
    velocity: Vec<Tensor<1>>,
    device: Device,
}

impl BurnNet {
    /// Compiles `spec` with its parameters `host` (in the order of `names`) on `device`.
    pub(super) fn new(
        spec: &NetSpec,
        names: &[(String, Vec<usize>)],
        host: &[&HostTensor],
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            ops: compile(spec, names)?,
            params: host.iter().map(|t| upload(t, device)).collect(),
            velocity: Vec::new(),
            device: device.clone(),
        })
    }

    fn input(&self, batch: &Batch) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(batch.images.clone(), batch.shape),
            &self.device,
        )
    }

    /// Logits `N × classes`, row-major.
    pub(super) fn logits(&self, batch: &Batch) -> Result<Vec<f32>> {
        let out = forward(&self.ops, &self.params, self.input(batch), None, None);
        host_values(out.into_data())
    }

    /// Seconds of each operation of an inference forward pass (queued work on a GPU makes
    /// these meaningless there).
    pub(super) fn layer_times(&self, batch: &Batch) -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(self.ops.len());
        let mut t0 = std::time::Instant::now();
        let mut record = |_: usize| {
            times.push(t0.elapsed().as_secs_f64());
            t0 = std::time::Instant::now();
        };
        let out = forward(
            &self.ops,
            &self.params,
            self.input(batch),
            None,
            Some(&mut record),
        );
        host_values(out.into_data())?;
        Ok(times)
    }

    /// Each batch norm's statistics of `batch` in a training-mode forward pass (dropout
    /// masks from `seed`): the index of its γ, the batch mean and the unbiased variance.
    pub(super) fn batch_norm_statistics(
        &self,
        batch: &Batch,
        seed: u64,
    ) -> Result<super::BatchNormStats> {
        let mut training = Training {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            stats: Vec::new(),
        };
        forward(
            &self.ops,
            &self.params,
            self.input(batch),
            Some(&mut training),
            None,
        );
        training
            .stats
            .iter()
            .map(|s| Ok((s.w, download(&s.mean)?, download(&s.var)?)))
            .collect()
    }

    /// Replaces parameter `i` with `values`.
    pub(super) fn set_param(&mut self, i: usize, values: Vec<f32>) {
        let n = values.len();
        self.params[i] = Tensor::from_data(TensorData::new(values, [n]), &self.device);
    }

    /// Parameter `i` on the host.
    pub(super) fn param(&self, i: usize) -> Result<Vec<f32>> {
        download(&self.params[i])
    }

    /// Momentum buffer `i` on the host (zeros before the first step).
    pub(super) fn velocity(&self, i: usize) -> Result<Vec<f32>> {
        match self.velocity.get(i) {
            Some(v) => download(v),
            None => Ok(vec![0.0; self.params[i].dims()[0]]),
        }
    }

    /// Sets the momentum buffers.
    pub(super) fn set_velocity(&mut self, host: &[HostTensor]) {
        self.velocity = host.iter().map(|t| upload(t, &self.device)).collect();
    }

    /// One SGD step with autodiff; returns the batch's mean loss before the update.
    pub(super) fn train_step(
        &mut self,
        sgd: &Sgd,
        batch: &Batch,
        lr: f32,
        dropout_seed: u64,
    ) -> Result<f32> {
        if self.velocity.len() != self.params.len() {
            self.velocity = self.params.iter().map(|p| p.zeros_like()).collect();
        }
        let tracked: Vec<Tensor<1>> = self
            .params
            .iter()
            .map(|p| p.clone().autodiff().require_grad())
            .collect();
        let mut training = Training {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(dropout_seed),
            stats: Vec::new(),
        };
        let x = self.input(batch).autodiff();
        let logits = forward(&self.ops, &tracked, x, Some(&mut training), None);
        let loss = cross_entropy(
            logits,
            (&batch.labels, sgd.label_smoothing),
            &self.device.clone().autodiff(),
        );
        let loss_value = host_values(loss.clone().inner().into_data())?;
        let grads = loss.backward();
        for (i, t) in tracked.iter().enumerate() {
            if !sgd.trains(i) {
                continue;
            }
            let g = t
                .grad(&grads)
                .ok_or_else(|| Error::Backend(format!("no gradient for parameter {i}")))?;
            let p = self.params[i].clone();
            let decay = sgd.decay(i);
            let g = if decay != 0.0 {
                g + p.clone().mul_scalar(decay)
            } else {
                g
            };
            let v = self.velocity[i].clone().mul_scalar(sgd.momentum) - g.mul_scalar(lr);
            self.params[i] = p + v.clone();
            self.velocity[i] = v;
        }
        for s in training.stats {
            for (r, b) in [(s.w + 2, s.mean), (s.w + 3, s.var)] {
                let old = self.params[r].clone().mul_scalar(1.0 - s.momentum);
                self.params[r] = old + b.mul_scalar(s.momentum);
            }
        }
        loss_value
            .first()
            .copied()
            .ok_or_else(|| Error::Backend("empty loss".into()))
    }
}

fn upload(t: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(t.data.clone(), [t.numel()]), device)
}

fn host_values(data: TensorData) -> Result<Vec<f32>> {
    data.try_to_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))
}

fn download(t: &Tensor<1>) -> Result<Vec<f32>> {
    host_values(t.to_data())
}

fn compile(spec: &NetSpec, names: &[(String, Vec<usize>)]) -> Result<Vec<Op>> {
    compile_layers(spec.logit_layers(), names)
}

fn compile_layers(layers: &[Layer], names: &[(String, Vec<usize>)]) -> Result<Vec<Op>> {
    let index = |n: &str| names.iter().position(|(k, _)| k == n);
    let mut ops = Vec::new();
    for l in layers {
        ops.push(match l {
            Layer::Conv(c) => {
                let w = index(&param_name(&c.name, Param::Weight))
                    .ok_or_else(|| Error::invalid(format!("no weights for {}", c.name)))?;
                let s = &names[w].1;
                Op::Conv {
                    w,
                    shape: [s[0], s[1], s[2], s[3]],
                    opts: ConvOptions::new([c.stride; 2], [c.padding; 2], [c.dilation; 2], 1),
                }
            }
            Layer::Relu => Op::Relu,
            Layer::MaxPool(p) => Op::Pool(
                MaxPoolOptions::new([p.kernel; 2])
                    .with_stride([p.stride(); 2])
                    .with_padding([p.padding; 2])
                    .with_dilation([p.dilation; 2])
                    .with_ceil_mode(p.ceil_mode),
            ),
            Layer::AvgPool(p) if p.dilation == 1 => Op::AvgPool(
                AvgPoolOptions::new([p.kernel; 2])
                    .with_stride([p.stride(); 2])
                    .with_padding([p.padding; 2])
                    .with_count_include_pad(true),
            ),
            Layer::AvgPool(p) => Op::DilatedAvgPool {
                kernel: p.kernel,
                stride: p.stride(),
                padding: p.padding,
                dilation: p.dilation,
            },
            Layer::GlobalAvgPool => Op::GlobalAvgPool,
            Layer::BatchNorm(b) => Op::BatchNorm {
                w: index(&param_name(&b.name, Param::Weight))
                    .ok_or_else(|| Error::invalid(format!("no weights for {}", b.name)))?,
                eps: b.eps,
                momentum: b.momentum,
            },
            Layer::Lrn(n) => Op::Lrn {
                size: n.size,
                alpha: n.alpha,
                beta: n.beta,
                k: n.k,
            },
            Layer::Dropout(d) => Op::Dropout(d.p),
            Layer::Fc(f) => {
                let w = index(&param_name(&f.name, Param::Weight))
                    .ok_or_else(|| Error::invalid(format!("no weights for {}", f.name)))?;
                let s = &names[w].1;
                Op::Fc {
                    w,
                    shape: [s[0], s[1]],
                }
            }
            Layer::Softmax => continue,
            Layer::Residual(r) => Op::Residual {
                body: compile_layers(&r.body, names)?,
                shortcut: compile_layers(&r.shortcut, names)?,
            },
        });
    }
    Ok(ops)
}

/// Logits `N × classes` for input `x` (`N × C × H × W`), using `params` (which may be
/// autodiff-tracked copies of the network's own). `training` draws dropout masks and
/// collects batch norms' statistics; without it batch norms use their running ones.
///
/// `after_op(i)` is called once layer `i` of the logit layers has been computed.
fn forward(
    ops: &[Op],
    params: &[Tensor<1>],
    x: Tensor<4>,
    training: Option<&mut Training>,
    after_op: Option<&mut dyn FnMut(usize)>,
) -> Tensor<2> {
    match run(ops, params, Act::Map(x), training, after_op) {
        Act::Flat(x) => x,
        Act::Map(x) => {
            let [n, c, h, w] = x.dims();
            x.reshape([n, c * h * w])
        }
    }
}

/// `ops` applied in turn to `a`; `after_op(i)` is called after op `i`.
fn run(
    ops: &[Op],
    params: &[Tensor<1>],
    mut a: Act,
    mut training: Option<&mut Training>,
    mut after_op: Option<&mut dyn FnMut(usize)>,
) -> Act {
    for (i, op) in ops.iter().enumerate() {
        a = apply(op, params, a, training.as_deref_mut());
        if let Some(f) = after_op.as_deref_mut() {
            f(i);
        }
    }
    a
}

/// One op applied to `a`.
fn apply(op: &Op, params: &[Tensor<1>], a: Act, mut training: Option<&mut Training>) -> Act {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    match (op, a) {
        (Op::Conv { w, shape, opts }, Act::Map(x)) => {
            let weight = params[*w].clone().reshape(*shape);
            let bias = params[*w + 1].clone();
            Act::Map(conv2d(x, weight, Some(bias), opts.clone()))
        }
        (Op::Relu, Act::Map(x)) => Act::Map(relu(x)),
        (Op::Relu, Act::Flat(x)) => Act::Flat(relu(x)),
        (Op::Pool(o), Act::Map(x)) => Act::Map(max_pool2d(x, o.clone())),
        (Op::AvgPool(o), Act::Map(x)) => Act::Map(avg_pool2d(x, o.clone())),
        (
            Op::DilatedAvgPool {
                kernel,
                stride,
                padding,
                dilation,
            },
            Act::Map(x),
        ) => {
            let c = x.dims()[1];
            let taps = c * kernel * kernel;
            let value = 1.0 / (kernel * kernel) as f32;
            let weight: Tensor<4> = Tensor::from_data(
                TensorData::new(vec![value; taps], [c, 1, *kernel, *kernel]),
                &x.device(),
            );
            let opts = ConvOptions::new([*stride; 2], [*padding; 2], [*dilation; 2], c);
            Act::Map(conv2d(x, weight, None, opts))
        }
        (Op::GlobalAvgPool, Act::Map(x)) => Act::Map(x.mean_dims(&[2, 3])),
        (Op::BatchNorm { w, eps, momentum }, Act::Map(x)) => {
            let stats = training.as_deref_mut().map(|t| (&mut t.stats, *momentum));
            Act::Map(batch_norm(x, &params[*w..*w + 4], *eps, (*w, stats)))
        }
        (
            Op::Lrn {
                size,
                alpha,
                beta,
                k,
            },
            Act::Map(x),
        ) => Act::Map(lrn(x, *size, *alpha, *beta, *k)),
        (Op::Dropout(p), a) => match training.as_deref_mut().map(|t| &mut t.rng) {
            None => a,
            Some(rng) => match a {
                Act::Map(x) => {
                    let m = dropout_mask(x.dims(), *p, rng, &x.device());
                    Act::Map(x * m)
                }
                Act::Flat(x) => {
                    let m = dropout_mask(x.dims(), *p, rng, &x.device());
                    Act::Flat(x * m)
                }
            },
        },
        (Op::Fc { w, shape }, a) => {
            let x = match a {
                Act::Map(x) => {
                    let [n, c, h, ww] = x.dims();
                    x.reshape([n, c * h * ww])
                }
                Act::Flat(x) => x,
            };
            let weight = params[*w].clone().reshape(*shape);
            let bias = params[*w + 1].clone().reshape([1, shape[0]]);
            Act::Flat(x.matmul(weight.transpose()) + bias)
        }
        // The body first, then the shortcut: the order of the native engine's steps,
        // so that both draw the same dropout masks.
        (Op::Residual { body, shortcut }, Act::Map(x)) => {
            let b = run(
                body,
                params,
                Act::Map(x.clone()),
                training.as_deref_mut(),
                None,
            );
            let s = run(shortcut, params, Act::Map(x), training, None);
            match (b, s) {
                (Act::Map(b), Act::Map(s)) => Act::Map(b + s),
                (b, _) => b,
            }
        }
        // Shape inference in `NetSpec::summary` rules these out.
        (_, a) => a,
    }
}

/// Batch norm of `x` (`N × C × H × W`) with `p` = [γ, β, running mean, running variance].
/// With `stats` (training) it normalises by the batch's statistics and records their
/// values, under the index of γ, for the running averages.
fn batch_norm(
    x: Tensor<4>,
    p: &[Tensor<1>],
    eps: f32,
    (w, stats): (usize, Option<(&mut Vec<BatchStats>, f32)>),
) -> Tensor<4> {
    let [n, c, h, ww] = x.dims();
    let per_channel = |t: &Tensor<1>| t.clone().reshape([1, c, 1, 1]);
    let (gamma, beta) = (per_channel(&p[0]), per_channel(&p[1]));
    let (centred, inv) = match stats {
        Some((sink, momentum)) => {
            let mean = x.clone().mean_dims(&[0, 2, 3]);
            let centred = x - mean.clone();
            let var = (centred.clone() * centred.clone()).mean_dims(&[0, 2, 3]);
            let m = (n * h * ww) as f32;
            sink.push(BatchStats {
                w,
                momentum,
                mean: mean.inner().reshape([c]),
                var: var
                    .clone()
                    .inner()
                    .mul_scalar(m / (m - 1.0).max(1.0))
                    .reshape([c]),
            });
            (centred, var.add_scalar(eps).sqrt().recip())
        }
        None => (
            x - per_channel(&p[2]),
            per_channel(&p[3]).add_scalar(eps).sqrt().recip(),
        ),
    };
    centred * inv * gamma + beta
}

fn lrn(x: Tensor<4>, size: usize, alpha: f32, beta: f32, k: f32) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    // Average of x² over a window of `size` channels: an average pool over the channel
    // axis once channels are laid out as the pool's height.
    let sq = (x.clone() * x.clone()).reshape([n, 1, c, h * w]);
    let opts = AvgPoolOptions::new([size, 1])
        .with_stride([1, 1])
        .with_padding([(size - 1) / 2, 0])
        .with_count_include_pad(true);
    let avg = avg_pool2d(sq, opts).reshape([n, c, h, w]);
    x / avg.mul_scalar(alpha).add_scalar(k).powf_scalar(beta)
}

fn dropout_mask<const D: usize>(
    dims: [usize; D],
    p: f32,
    rng: &mut rand_chacha::ChaCha8Rng,
    device: &Device,
) -> Tensor<D> {
    let n: usize = dims.iter().product();
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    Tensor::from_data(TensorData::new(mask, dims), device)
}

/// Cross-entropy of logits against labels smoothed by `ε` (target `ε/K` for every class
/// plus `1 − ε` for the label), averaged over the batch.
fn cross_entropy(logits: Tensor<2>, (labels, eps): (&[u32], f32), device: &Device) -> Tensor<1> {
    let [n, k] = logits.dims();
    let mut onehot = vec![eps / k as f32; n * k];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * k + l as usize] += 1.0 - eps;
    }
    let onehot: Tensor<2> = Tensor::from_data(TensorData::new(onehot, [n, k]), device);
    (log_softmax(logits, 1) * onehot)
        .sum()
        .mul_scalar(-1.0 / n as f32)
}
