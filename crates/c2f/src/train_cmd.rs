//! `c2f train`, `c2f eval` and `c2f predict`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use coarse2fine::backend::{self, BackendKind, Compute, Network};
use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::data::loader::{Batch, Normalizer};
use coarse2fine::data::prepare;
use coarse2fine::data::resize::Fit;
use coarse2fine::hyper::{Hyper, StopAt};
use coarse2fine::lr::LrPolicy;
use coarse2fine::net::WeightMap;
use coarse2fine::progress::Progress;
use coarse2fine::train::{self, NetSource, TrainRequest};

use crate::ui::Bars;

/// Train a network on prepared data at one size.
///
/// Writes RUN/metrics.jsonl (one JSON event per line: train loss, test accuracy, wall-clock,
/// training and evaluation seconds) and RUN/checkpoint/ (spec.json, weights.safetensors,
/// optimizer.safetensors, meta.json). Checkpoints are written whole or not at all; after an
/// interruption, run the same command with --resume to continue exactly where it stopped.
/// --resume may change the learning rate and its policy (logged as a settings event), e.g.
/// after the loss diverged; anything else that differs from the checkpoint is refused.
/// --force replaces only a run folder c2f made, never other folders.
///
/// Examples:
///   c2f train --data data/fmnist --size 16 --net net-2 --epochs 2 --out runs/net2-16
///   c2f train --data data/fmnist --size 32 --net nets/small-cnn.toml --iterations 5000 --lr-policy step:0.1:2000 --out runs/mine
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct TrainArgs {
    /// Prepared data folder (from `c2f prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Input size: one of the prepared sizes.
    #[arg(long)]
    pub size: usize,
    /// Network: a preset name (see `c2f nets`) or a .toml/.json spec file.
    #[arg(long, required_unless_present_any = ["init_from", "resume"])]
    pub net: Option<String>,
    /// Start a new run from the spec, weights and momentum buffers of this checkpoint (e.g. a grown one).
    #[arg(long, conflicts_with_all = ["net", "resume"])]
    pub init_from: Option<PathBuf>,
    /// Continue the checkpoint in --out exactly (same data order, optimizer state and clock).
    #[arg(long)]
    pub resume: bool,
    /// Run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace an existing run folder.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Training iterations (batches).
    #[arg(long, conflicts_with = "epochs")]
    pub iterations: Option<u64>,
    /// Training epochs (converted to iterations, rounded up).
    #[arg(long, allow_hyphen_values = true)]
    pub epochs: Option<f64>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Base learning rate (Caffe's default 0.01).
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true)]
    pub lr: f32,
    /// Learning-rate policy: fixed, step:GAMMA:STEPSIZE, inv:GAMMA:POWER, or over the run's
    /// budget cosine (to zero), linear, onecycle:WARMUP or steps:F1,F2:GAMMA.
    #[arg(long, default_value = "fixed")]
    pub lr_policy: String,
    /// Momentum (Caffe's form: the rate sits inside the momentum buffer).
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub momentum: f32,
    /// Weight decay on weights (not biases).
    #[arg(long, default_value_t = 5e-4, allow_hyphen_values = true)]
    pub weight_decay: f32,
    /// Evaluate on the test split every N iterations (default: about 10 times per run).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Save a checkpoint every N iterations (default: about 10 times per run).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Seed of weight init, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Augmentation of training images: none, or a comma list of crop:PAD (zero-pad by PAD
    /// pixels, crop back to the size at a random offset) and flip (mirror with
    /// probability ½), e.g. crop:4,flip. Seeded by --seed and each image's place in the
    /// data stream, so resumes are exact.
    #[arg(long, default_value = "none")]
    pub augment: String,
    /// Label smoothing ε of the training loss: the target is ε/K for every one of the K
    /// classes plus 1 − ε for the label (0: plain cross-entropy; 0.1 is common).
    /// Evaluation reports the plain cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Weight initialisation for fresh nets: kaiming, xavier, or gauss:SIGMA.
    #[arg(long, default_value = "kaiming")]
    pub init: String,
    /// Compute backend: cpu (the native engine), flex (burn's CPU backend, the reference),
    /// libtorch-cuda[:N] and libtorch (feature libtorch), cuda[:N] (feature cuda), wgpu
    /// (feature wgpu); see docs/gpu.md.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
}

/// Evaluate a checkpoint: top-1, top-5 accuracy and loss, accuracy per class and the
/// confusion matrix (rows: true class, columns: predicted class).
///
/// Example:
///   c2f eval runs/net2-16/checkpoint
///   c2f eval runs/net2-16/checkpoint --data data/fmnist --split train --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct EvalArgs {
    /// Checkpoint folder (or a run folder containing checkpoint/).
    pub checkpoint: PathBuf,
    /// Prepared data folder (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Images per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Compute backend: cpu, flex, libtorch-cuda[:N], libtorch, cuda[:N], wgpu.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Also write the first --dump-images images (pixels 0–255, float32) and the net's
    /// logits for them to this safetensors file, to compare with other runtimes.
    #[arg(long, value_name = "FILE.safetensors")]
    pub dump: Option<PathBuf>,
    /// Images in --dump.
    #[arg(long, default_value_t = 256)]
    pub dump_images: usize,
}

/// Classify image files with a trained network.
///
/// Each JPEG or PNG is decoded, made square and downscaled by area averaging to the
/// checkpoint's input size exactly as `c2f prepare` does (grey or RGB as the net expects),
/// normalised with the checkpoint's statistics, and run through the net. Prints the top
/// classes with their probabilities. Images smaller than the net's input are refused (they
/// would have to be upscaled, which `prepare` never does).
///
/// Examples:
///   c2f predict runs/net2-16/checkpoint shirt.jpg boot.png
///   c2f predict runs/net2-16 photos/*.jpg --top 3 --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct PredictArgs {
    /// Checkpoint folder (or a run folder containing checkpoint/).
    pub checkpoint: PathBuf,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// How non-square images are made square (default: as the training data was prepared,
    /// else center-crop).
    #[arg(long, value_enum)]
    pub fit: Option<crate::prepare_cmd::FitArg>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn hints(e: coarse2fine::Error, lr: f32) -> coarse2fine::Error {
    crate::with_hint(
        e,
        "continue with the same command and --resume",
        &format!(
            "to continue from it, run the same command with --resume and a lower --lr (e.g. {})",
            lr / 10.0
        ),
    )
}

impl TrainArgs {
    /// The request these flags make.
    fn request(&self) -> Result<TrainRequest> {
        let net = match (&self.net, &self.init_from, self.resume) {
            (net, _, true) => NetSource::Resume { net: net.clone() },
            (_, Some(from), false) => NetSource::InitFrom(from.clone()),
            (Some(name), None, false) => NetSource::Spec {
                name: name.clone(),
                init: self.init.parse()?,
            },
            (None, None, false) => bail!("give --net, --init-from or --resume"),
        };
        Ok(TrainRequest {
            data: self.data.clone(),
            size: self.size,
            net,
            out: self.out.clone(),
            force: self.force,
            iterations: self.iterations,
            epochs: self.epochs,
            hyper: Hyper {
                batch_size: self.batch,
                base_lr: self.lr,
                lr_policy: self.lr_policy.parse::<LrPolicy>()?,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                seed: self.seed,
                augment: self.augment.parse()?,
                label_smoothing: self.label_smoothing,
            },
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
        })
    }
}

pub fn cmd_train(a: TrainArgs, bars: &Bars) -> Result<()> {
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    let job = a.request()?.prepare()?;
    let spec = &job.start.spec;
    bars.note(&format!(
        "training {} ({} parameters, {:.2} MFLOP/image) at {}×{} on {} train images, {} on {} with {} thread(s)",
        spec.name,
        spec.num_params()?,
        spec.flops()? as f64 / 1e6,
        a.size,
        a.size,
        job.data.train.set.len(),
        match job.stop {
            StopAt::Iterations(n) => format!("{n} iterations of {}", a.batch),
            StopAt::TrainSeconds(s) => format!("{s} s of training"),
        },
        compute.kind(),
        backend::threads()
    ));
    let stop = crate::stop_flag()?;
    let fin = job
        .run(&compute, bars, Some(&stop))
        .map_err(|e| hints(e, a.lr))?;
    let m = &fin.checkpoint.meta;
    let at = job.dir.join(train::CHECKPOINT_DIR);
    match m.last_eval {
        Some(e) => println!(
            "iteration {}: test top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  (train {}, eval {}, wall {}) → {}",
            m.iteration,
            100.0 * e.top1,
            100.0 * e.top5,
            e.loss,
            crate::ui::seconds(m.train_seconds),
            crate::ui::seconds(m.eval_seconds),
            crate::ui::seconds(m.wall_seconds),
            at.display()
        ),
        None => println!("iteration {} → {}", m.iteration, at.display()),
    }
    Ok(())
}

pub fn cmd_eval(a: EvalArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch 0: give at least 1 image per batch");
    }
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    let dir = train::checkpoint_dir(&a.checkpoint);
    let ckpt = Checkpoint::load(&dir)?;
    let data_root = match &a.data {
        Some(d) => d.clone(),
        None => ckpt.meta.locate_dataset(&dir)?,
    };
    let manifest = prepare::DatasetManifest::load(&data_root)?;
    if manifest.classes != ckpt.meta.classes {
        bail!(
            "{}: its classes differ from those the checkpoint was trained on",
            data_root.display()
        );
    }
    let set = std::sync::Arc::new(manifest.open_split(&data_root, ckpt.meta.size, &a.split)?);
    let net = Network::new(&ckpt.spec, &ckpt.weights, &compute)?;
    // The checkpoint's own normalisation, so evaluation on other data matches training.
    let ev = train::evaluate(&net, &set, &ckpt.meta.normalization, a.batch)?;
    if let Some(path) = &a.dump {
        dump_logits(path, &net, &set, &ckpt.meta.normalization, a.dump_images)?;
    }
    let (s, classes) = (ev.summary, &ckpt.meta.classes);
    let per_class = ev.confusion.per_class();
    if a.json {
        let rows: Vec<serde_json::Value> = classes
            .iter()
            .zip(&per_class)
            .zip(&ev.confusion.rows)
            .map(|((c, acc), row)| {
                serde_json::json!({"class": c, "images": row.iter().sum::<u64>(), "top1": acc})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": dir.display().to_string(),
                "data": data_root.display().to_string(),
                "split": a.split,
                "size": ckpt.meta.size,
                "images": s.images,
                "top1": s.top1,
                "top5": s.top5,
                "loss": s.loss,
                "classes": classes,
                "per_class": rows,
                "confusion": ev.confusion.rows,
            })
        );
        return Ok(());
    }
    println!(
        "{} on {} {} ({} images at {}×{}): top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
        dir.display(),
        data_root.display(),
        a.split,
        s.images,
        ckpt.meta.size,
        ckpt.meta.size,
        100.0 * s.top1,
        100.0 * s.top5,
        s.loss
    );
    print!("{}", crate::ui::confusion_table(classes, &ev.confusion));
    Ok(())
}

pub fn cmd_predict(a: PredictArgs) -> Result<()> {
    let dir = train::checkpoint_dir(&a.checkpoint);
    let ckpt = Checkpoint::load(&dir)?;
    let input = ckpt
        .spec
        .input
        .context("the checkpoint's net is not bound to an input")?;
    let fit = match a.fit {
        Some(f) => f.into(),
        None => ckpt
            .meta
            .locate_dataset(&dir)
            .and_then(|d| prepare::DatasetManifest::load(&d))
            .map_or(Fit::CenterCrop, |m| m.fit),
    };
    let net = Network::new(&ckpt.spec, &ckpt.weights, &Compute::new(BackendKind::Cpu)?)?;
    let norm = Normalizer::new(&ckpt.meta.normalization);
    let top = a.top.clamp(1, ckpt.meta.classes.len());
    let mut all = Vec::new();
    for path in &a.images {
        let planar = prepare::load_for_net(path, input.channels, input.height, fit)?;
        let mut images = vec![0f32; planar.len()];
        norm.apply(&planar, &mut images);
        let batch = Batch {
            images,
            labels: vec![0],
            shape: [1, input.channels, input.height, input.width],
        };
        let probs = softmax(&net.logits(&batch)?);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]).then(i.cmp(&j)));
        let best: Vec<(usize, f32)> = order.iter().take(top).map(|&i| (i, probs[i])).collect();
        if a.json {
            all.push(serde_json::json!({
                "image": path.display().to_string(),
                "predictions": best.iter().map(|&(i, p)| serde_json::json!({
                    "class": ckpt.meta.classes[i], "index": i, "probability": p
                })).collect::<Vec<_>>(),
            }));
        } else {
            let text: Vec<String> = best
                .iter()
                .map(|&(i, p)| format!("{} {:.1}%", ckpt.meta.classes[i], 100.0 * p))
                .collect();
            println!("{}: {}", path.display(), text.join(", "));
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(all));
    }
    Ok(())
}

/// Probabilities of one row of logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Writes `pixels` (N×C×H×W, 0–255) and `logits` (N×classes) of the first `n` images.
fn dump_logits(
    path: &Path,
    net: &Network,
    set: &coarse2fine::data::shard::ShardSet,
    stats: &prepare::ChannelStats,
    n: usize,
) -> Result<()> {
    use coarse2fine::data::loader::{Normalizer, make_batch};
    use coarse2fine::net::Tensor;
    let n = n.clamp(1, set.len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = make_batch(set, &Normalizer::new(stats), &idx);
    let logits = net.logits(&batch)?;
    let pixels: Vec<f32> = idx
        .iter()
        .flat_map(|&i| set.get(i).0.iter().map(|&v| f32::from(v)))
        .collect();
    let mut out = WeightMap::new();
    out.insert(
        "pixels",
        Tensor {
            shape: batch.shape.to_vec(),
            data: pixels,
        },
    );
    out.insert(
        "logits",
        Tensor {
            shape: vec![n, logits.len() / n],
            data: logits,
        },
    );
    out.save(path, None)?;
    Ok(())
}
