//! `c2f`: the coarse2fine command line.
//!
//! Each verb parses its flags, validates them into a plan (opening inputs, binding the
//! network to the data), and only then runs, so a bad value fails before any work is done.

mod bench_cmd;
mod export_cmd;
mod grow_cmd;
mod report_cmd;
mod run_cmd;
#[cfg(feature = "tensorboard")]
mod tensorboard;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use coarse2fine::backend::{self, BackendKind, Compute, Network};
use coarse2fine::checkpoint::{Checkpoint, Hyper};
use coarse2fine::data::prepare::{self, PrepareConfig, SourceFormat};
use coarse2fine::data::resize::Fit;
use coarse2fine::lr::LrPolicy;
use coarse2fine::net::presets::{self, PRESETS};
use coarse2fine::net::spec::InputShape;
use coarse2fine::net::weights::Init;
use coarse2fine::net::{NetSpec, WeightMap};
use coarse2fine::progress::Progress;
use coarse2fine::train::{self, CHECKPOINT_DIR, METRICS_FILE, Start, TrainConfig, TrainData};

use crate::ui::Bars;

#[derive(Parser, Debug)]
#[command(
    name = "c2f",
    version,
    about = "Incremental coarse-to-fine CNN training: tiny images first, then grow the net",
    long_about = "coarse2fine trains convolutional networks coarse to fine: prepare a labelled image set \
at a ladder of resolutions, train a small net on 8×8 images, grow it to larger inputs and keep training.\n\n\
Typical session:\n  c2f prepare /usr/share/datasets/fashion-mnist --out data/fmnist --sizes 8,16,32 --pad-pow2\n  \
c2f train --data data/fmnist --size 16 --net net-2 --epochs 2 --out runs/net2-16\n  \
c2f eval runs/net2-16/checkpoint\n\n\
An experiment (stages, growth, baseline) from a plan, and its report:\n  \
c2f run plans/exp1-upscale.toml --out runs/exp1\n  \
c2f report runs/exp1 --out reports/exp1"
)]
struct Cli {
    /// CPU threads for training and data preparation (default: all cores). The paper ran on one.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// No progress bars or notes; results only.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Prepare(PrepareArgs),
    Train(TrainArgs),
    Eval(EvalArgs),
    Grow(grow_cmd::GrowArgs),
    Verify(grow_cmd::VerifyArgs),
    Run(run_cmd::RunArgs),
    Report(report_cmd::ReportArgs),
    Export(export_cmd::ExportArgs),
    Import(export_cmd::ImportArgs),
    Nets(NetsArgs),
    Bench(bench_cmd::BenchArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Auto,
    Idx,
    Cifar,
    Folder,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FitArg {
    CenterCrop,
    Squash,
}

/// Prepare a labelled image set as shards at a ladder of resolutions.
///
/// Reads MNIST/Fashion-MNIST IDX files (optionally .gz), CIFAR-10/100 binary batches, or a
/// class-folder tree of JPEG/PNG images (root/<class>/<image>, or root/train/… with root/val/…),
/// downscales every image from the original to each size by area averaging, and writes one
/// folder per size plus dataset.json with per-channel mean/std of the training split.
///
/// Example:
///   c2f prepare /usr/share/datasets/fashion-mnist --out data/fmnist --sizes 8,16,32 --pad-pow2
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
struct PrepareArgs {
    /// Source folder (IDX files, CIFAR batches, or class folders).
    source: PathBuf,
    /// Output folder; built under a temporary name and renamed into place when complete.
    #[arg(long, short)]
    out: PathBuf,
    /// Ladder sizes (square), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    sizes: Vec<usize>,
    /// Source format.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// Zero-pad fixed-size images to the next power of two first (Fashion-MNIST 28 → 32).
    #[arg(long)]
    pad_pow2: bool,
    /// Channels for class-folder images: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// How non-square folder images are made square.
    #[arg(long, value_enum, default_value = "center-crop")]
    fit: FitArg,
    /// Held-out fraction per class for folder trees without val/.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of that split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per shard file.
    #[arg(long, default_value_t = 65_536)]
    shard_images: usize,
    /// Class names in label order, comma-separated (IDX sets carry none).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
}

/// Train a network on prepared data at one size.
///
/// Writes RUN/metrics.jsonl (one JSON event per line: train loss, test accuracy, wall-clock,
/// training and evaluation seconds) and RUN/checkpoint/ (spec.json, weights.safetensors,
/// optimizer.safetensors, meta.json). Checkpoints are written whole or not at all; after an
/// interruption, run the same command with --resume to continue exactly where it stopped.
///
/// Examples:
///   c2f train --data data/fmnist --size 16 --net net-2 --epochs 2 --out runs/net2-16
///   c2f train --data data/fmnist --size 32 --net nets/small-cnn.toml --iterations 5000 --lr-policy step:0.1:2000 --out runs/mine
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
struct TrainArgs {
    /// Prepared data folder (from `c2f prepare`).
    #[arg(long)]
    data: PathBuf,
    /// Input size: one of the prepared sizes.
    #[arg(long)]
    size: usize,
    /// Network: a preset name (see `c2f nets`) or a .toml/.json spec file.
    #[arg(long, required_unless_present_any = ["init_from", "resume"])]
    net: Option<String>,
    /// Start a new run from the spec, weights and momentum buffers of this checkpoint (e.g. a grown one).
    #[arg(long, conflicts_with_all = ["net", "resume"])]
    init_from: Option<PathBuf>,
    /// Continue the checkpoint in --out exactly (same data order, optimizer state and clock).
    #[arg(long)]
    resume: bool,
    /// Run folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Replace an existing run folder.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Training iterations (batches).
    #[arg(long, conflicts_with = "epochs")]
    iterations: Option<u64>,
    /// Training epochs (converted to iterations, rounded up).
    #[arg(long)]
    epochs: Option<f64>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Base learning rate (Caffe's default 0.01).
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// Learning-rate policy: fixed, step:GAMMA:STEPSIZE, or inv:GAMMA:POWER.
    #[arg(long, default_value = "fixed")]
    lr_policy: String,
    /// Momentum (Caffe's form: the rate sits inside the momentum buffer).
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay on weights (not biases).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Evaluate on the test split every N iterations (default: about 10 times per run).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save a checkpoint every N iterations (default: about 10 times per run).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Seed of weight init, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight initialisation for fresh nets: kaiming, xavier, or gauss:SIGMA.
    #[arg(long, default_value = "kaiming")]
    init: String,
    /// Compute backend: cpu (the native engine), flex (burn's CPU backend, the reference),
    /// cuda, cuda:N, wgpu (GPU ones need the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    backend: String,
}

/// Evaluate a checkpoint: top-1, top-5 accuracy and loss.
///
/// Example:
///   c2f eval runs/net2-16/checkpoint
///   c2f eval runs/net2-16/checkpoint --data data/fmnist --split train --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
struct EvalArgs {
    /// Checkpoint folder (or a run folder containing checkpoint/).
    checkpoint: PathBuf,
    /// Prepared data folder (default: the one the checkpoint was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Compute backend: cpu, flex, cuda, cuda:N, wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Also write the first --dump-images images (pixels 0–255, float32) and the net's
    /// logits for them to this safetensors file, to compare with other runtimes.
    #[arg(long, value_name = "FILE.safetensors")]
    dump: Option<PathBuf>,
    /// Images in --dump.
    #[arg(long, default_value_t = 256)]
    dump_images: usize,
}

/// List the preset networks, or show one network's layers.
///
/// Without --show, prints every preset with its parameter count and forward FLOPs per image
/// at its native size (or at --size). With --show, prints the layer table of a preset, a spec
/// file, or a checkpoint.
///
/// Examples:
///   c2f nets
///   c2f nets --size 32 --classes 10 --channels 1
///   c2f nets --show net-4 --size 16
///   c2f nets --show runs/net2-16/checkpoint
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
struct NetsArgs {
    /// A preset, spec file or checkpoint folder to show layer by layer.
    #[arg(long)]
    show: Option<String>,
    /// Input size (default: each preset's native size).
    #[arg(long)]
    size: Option<usize>,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = matches!(
                e.downcast_ref::<coarse2fine::Error>(),
                Some(coarse2fine::Error::Interrupted(_))
            );
            eprintln!("{}{e:#}", if interrupted { "" } else { "error: " });
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    let cli_threads = cli.threads.is_some();
    if let Some(n) = cli.threads {
        backend::set_threads(n)?;
    }
    let bars = Bars::new(cli.quiet);
    match cli.cmd {
        Command::Prepare(a) => cmd_prepare(a, &bars),
        Command::Train(a) => cmd_train(a, &bars),
        Command::Eval(a) => cmd_eval(a),
        Command::Grow(a) => {
            let m = matches
                .subcommand_matches("grow")
                .context("grow arguments")?;
            grow_cmd::cmd_grow(a, m, &bars)
        }
        Command::Verify(a) => grow_cmd::cmd_verify(a),
        Command::Run(a) => run_cmd::cmd_run(a, cli_threads, &bars),
        Command::Report(a) => report_cmd::cmd_report(a),
        Command::Export(a) => export_cmd::cmd_export(a),
        Command::Import(a) => export_cmd::cmd_import(a),
        Command::Nets(a) => cmd_nets(a),
        Command::Bench(a) => bench_cmd::cmd_bench(a),
    }
}

fn cmd_prepare(a: PrepareArgs, bars: &Bars) -> Result<()> {
    let cfg = PrepareConfig {
        sizes: a.sizes,
        format: match a.format {
            FormatArg::Auto => None,
            FormatArg::Idx => Some(SourceFormat::Idx),
            FormatArg::Cifar => Some(SourceFormat::Cifar),
            FormatArg::Folder => Some(SourceFormat::Folder),
        },
        pad_pow2: a.pad_pow2,
        channels: a.channels,
        fit: match a.fit {
            FitArg::CenterCrop => Fit::CenterCrop,
            FitArg::Squash => Fit::Squash,
        },
        val_fraction: a.val_fraction,
        seed: a.seed,
        shard_images: a.shard_images,
        class_names: a.classes,
        strict: a.strict,
        force: a.force,
    };
    let t0 = std::time::Instant::now();
    let rep = prepare::prepare(&a.source, &a.out, &cfg, bars)?;
    let m = &rep.manifest;
    let total: usize = m.splits.values().sum();
    println!(
        "prepared {} ({} classes, {} channel{}) at sizes {:?} into {}: {} train, {} test images in {:.1}s ({:.0} images/s)",
        a.source.display(),
        m.classes.len(),
        m.channels,
        if m.channels == 1 { "" } else { "s" },
        m.sizes,
        a.out.display(),
        m.splits.get("train").copied().unwrap_or(0),
        m.splits.get("test").copied().unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        total as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    );
    if m.skipped > 0 {
        eprintln!(
            "warning: skipped {} unreadable image(s) (--strict makes this an error); first: {}",
            m.skipped,
            rep.skipped_examples.join("; ")
        );
    }
    Ok(())
}

/// A network from a preset name or a spec file.
fn resolve_net(name: &str) -> Result<NetSpec> {
    Ok(presets::resolve(name)?)
}

pub(crate) fn checkpoint_dir(p: &Path) -> PathBuf {
    if Checkpoint::exists(&p.join(CHECKPOINT_DIR)).unwrap_or(false) {
        p.join(CHECKPOINT_DIR)
    } else {
        p.to_path_buf()
    }
}

fn cmd_train(a: TrainArgs, bars: &Bars) -> Result<()> {
    // Validate everything before touching the run folder.
    let policy: LrPolicy = a.lr_policy.parse()?;
    let init: Init = a.init.parse()?;
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let data = TrainData::open(&a.data, a.size)?;
    let n_train = data.train.set.len() as u64;
    let iterations = match (a.iterations, a.epochs) {
        (Some(i), _) => i,
        (None, Some(e)) if e > 0.0 && e.is_finite() => {
            ((e * n_train as f64) / a.batch as f64).ceil() as u64
        }
        (None, Some(e)) => bail!("--epochs {e} must be positive"),
        (None, None) => bail!("give --iterations N or --epochs E"),
    };
    if iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let hyper = Hyper {
        batch_size: a.batch,
        base_lr: a.lr,
        lr_policy: policy,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    let metrics = a.out.join(METRICS_FILE);
    let start = if a.resume {
        let dir = a.out.join(CHECKPOINT_DIR);
        let ckpt =
            Checkpoint::load(&dir).with_context(|| format!("cannot resume {}", a.out.display()))?;
        if ckpt.meta.hyper != hyper {
            bail!(
                "{}: the checkpoint was trained with different settings ({:?}); resume with the same flags",
                dir.display(),
                ckpt.meta.hyper
            );
        }
        if ckpt.meta.size != a.size {
            bail!(
                "{}: the checkpoint is at size {}, not {}",
                dir.display(),
                ckpt.meta.size,
                a.size
            );
        }
        Start::resume(ckpt)
    } else {
        if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
            if !a.force {
                bail!(
                    "{}: run folder exists and is not empty (use --resume to continue it or --force to replace it)",
                    a.out.display()
                );
            }
            for p in [metrics.clone(), a.out.join(CHECKPOINT_DIR)] {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).with_context(|| p.display().to_string())?;
                } else if p.exists() {
                    std::fs::remove_file(&p).with_context(|| p.display().to_string())?;
                }
            }
        }
        match (&a.net, &a.init_from) {
            (_, Some(from)) => Start::from_checkpoint(Checkpoint::load(&checkpoint_dir(from))?),
            (Some(name), None) => {
                let spec = resolve_net(name)?.bind(data.input(), data.classes())?;
                coarse2fine::resources::training_estimate(&spec, a.batch)?.check(&format!(
                    "training {name} at {}×{} with batch {}",
                    a.size, a.size, a.batch
                ))?;
                let w = WeightMap::init(&spec, init, a.seed)?;
                Start::fresh(spec, w)
            }
            (None, None) => bail!("give --net, --init-from or --resume"),
        }
    };
    let spec = start.spec.bind(data.input(), data.classes())?;
    coarse2fine::resources::training_estimate(&spec, a.batch)?.check(&format!(
        "training {} at {}×{} with batch {}",
        spec.name, a.size, a.size, a.batch
    ))?;
    let per_run = (iterations / 10).max(1);
    let cfg = TrainConfig {
        iterations,
        hyper,
        eval_every: a.eval_every.unwrap_or(per_run),
        eval_at_start: true,
        log_every: (iterations / 200).clamp(1, 50),
        checkpoint_every: a.checkpoint_every.unwrap_or(per_run),
        eval_batch: 500,
        lr_offset: 0,
        warmup: 0,
        time_limit: None,
        stop: Some(stop_flag()?),
    };
    bars.note(&format!(
        "training {} ({} parameters, {:.2} MFLOP/image) at {}×{} on {} train images, {} iterations of {} on {} with {} thread(s)",
        spec.name,
        spec.num_params()?,
        spec.flops()? as f64 / 1e6,
        a.size,
        a.size,
        n_train,
        iterations,
        a.batch,
        compute.kind(),
        backend::threads()
    ));
    let ckpt = train::train(&a.out, start, &data, &cfg, &compute, bars)
        .map_err(|e| with_hint(e, "continue with the same command and --resume"))?;
    let m = &ckpt.meta;
    match m.last_eval {
        Some(e) => println!(
            "iteration {}: test top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  (train {:.1}s, eval {:.1}s, wall {:.1}s) → {}",
            m.iteration,
            100.0 * e.top1,
            100.0 * e.top5,
            e.loss,
            m.train_seconds,
            m.eval_seconds,
            m.wall_seconds,
            a.out.join(CHECKPOINT_DIR).display()
        ),
        None => println!(
            "iteration {} → {}",
            m.iteration,
            a.out.join(CHECKPOINT_DIR).display()
        ),
    }
    Ok(())
}

/// Adds how to continue to an interruption's message.
pub(crate) fn with_hint(e: coarse2fine::Error, hint: &str) -> coarse2fine::Error {
    match e {
        coarse2fine::Error::Interrupted(m) => {
            coarse2fine::Error::Interrupted(format!("{m}; {hint}"))
        }
        other => other,
    }
}

/// A flag raised by the first Ctrl-C (or SIGTERM); a second one ends the process at once.
pub(crate) fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!(
            "stopping after this step and saving a checkpoint (Ctrl-C again to quit at once)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    let dir = checkpoint_dir(&a.checkpoint);
    let ckpt = Checkpoint::load(&dir)?;
    let data_root = a
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(&ckpt.meta.dataset));
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
    let s = train::evaluate(&net, &set, &ckpt.meta.normalization, a.batch.max(1))?;
    if let Some(path) = &a.dump {
        dump_logits(path, &net, &set, &ckpt.meta.normalization, a.dump_images)?;
    }
    if a.json {
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
            })
        );
    } else {
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
    }
    Ok(())
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

fn print_layers(spec: &NetSpec) -> Result<()> {
    let input = spec.input.context("network is not bound to an input")?;
    println!(
        "{}: input {}×{}×{}, {} classes",
        spec.name,
        input.channels,
        input.height,
        input.width,
        spec.classes.unwrap_or(0)
    );
    println!(
        "{:<4} {:<32} {:>14} {:>12} {:>12}",
        "#", "layer", "output", "params", "MFLOP"
    );
    for (i, r) in spec.summary()?.iter().enumerate() {
        println!(
            "{:<4} {:<32} {:>14} {:>12} {:>12.3}",
            i + 1,
            r.layer,
            r.output.to_string(),
            r.params,
            r.flops as f64 / 1e6
        );
    }
    println!(
        "{:<4} {:<32} {:>14} {:>12} {:>12.3}",
        "",
        "total",
        "",
        spec.num_params()?,
        spec.flops()? as f64 / 1e6
    );
    Ok(())
}

fn cmd_nets(a: NetsArgs) -> Result<()> {
    let input = |side: usize| InputShape::square(a.channels, side);
    if let Some(what) = &a.show {
        let p = Path::new(what);
        let spec = if p.is_dir() {
            Checkpoint::load(&checkpoint_dir(p))?.spec
        } else {
            let spec = resolve_net(what)?;
            let side = a
                .size
                .or_else(|| {
                    PRESETS
                        .iter()
                        .find(|pr| pr.name == what)
                        .map(|pr| pr.native_size)
                })
                .or(spec.input.map(|i| i.height))
                .context("give --size for a spec file without an input size")?;
            spec.bind(
                spec.input.unwrap_or(input(side)),
                spec.classes.unwrap_or(a.classes),
            )?
        };
        return print_layers(&spec);
    }
    println!(
        "{:<12} {:>6} {:>12} {:>12}  about",
        "preset", "input", "params", "MFLOP/img"
    );
    for p in PRESETS {
        let side = a.size.unwrap_or(p.native_size);
        let spec = presets::preset(p.name).context("preset table out of sync")?;
        match spec.bind(input(side), a.classes) {
            Ok(b) => println!(
                "{:<12} {:>6} {:>12} {:>12.3}  {}",
                p.name,
                format!("{side}"),
                b.num_params()?,
                b.flops()? as f64 / 1e6,
                p.about
            ),
            Err(e) => println!(
                "{:<12} {:>6} {:>12} {:>12}  does not fit: {e}",
                p.name, side, "-", "-"
            ),
        }
    }
    Ok(())
}
