//! The training loop: SGD steps on prefetched batches, periodic evaluation, a JSONL event
//! log and checkpoints. It can start from fresh weights, from any checkpoint's weights
//! (e.g. a grown one), or continue a checkpoint exactly.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::{self, Compute, EvalCounts, Network, Sgd};
use crate::checkpoint::{
    CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoint, CheckpointMeta, EvalSummary, Hyper,
};
use crate::data::loader::{Normalizer, Prefetcher};
use crate::data::prepare::{ChannelStats, DatasetManifest};
use crate::data::shard::ShardSet;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::net::spec::InputShape;
use crate::net::{NetSpec, WeightMap};
use crate::progress::Progress;

/// File name of the event log in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Folder name of the latest checkpoint in a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// One split of a prepared data set at one size, ready to batch.
#[derive(Debug, Clone)]
pub struct SplitData {
    /// The shards.
    pub set: Arc<ShardSet>,
    /// Normalisation of the training split at this size.
    pub stats: ChannelStats,
}

/// The training and test splits of a prepared data folder at one size.
#[derive(Debug, Clone)]
pub struct TrainData {
    /// Prepared data folder.
    pub root: PathBuf,
    /// Its manifest.
    pub manifest: DatasetManifest,
    /// Input side.
    pub size: usize,
    /// Training split.
    pub train: SplitData,
    /// Held-out split, used for evaluation.
    pub test: SplitData,
}

impl TrainData {
    /// Opens `root` at `size`.
    pub fn open(root: &Path, size: usize) -> Result<Self> {
        let manifest = DatasetManifest::load(root)?;
        let stats = manifest.stats_at(root, size)?.clone();
        let train = Arc::new(manifest.open_split(root, size, "train")?);
        let test = Arc::new(manifest.open_split(root, size, "test")?);
        Ok(Self {
            root: root.to_path_buf(),
            size,
            train: SplitData {
                set: train,
                stats: stats.clone(),
            },
            test: SplitData { set: test, stats },
            manifest,
        })
    }

    /// Input shape of networks for this data.
    pub fn input(&self) -> InputShape {
        InputShape::square(self.manifest.channels, self.size)
    }

    /// Class count.
    pub fn classes(&self) -> usize {
        self.manifest.classes.len()
    }
}

/// Evaluates `net` on every image of `set`, normalised with `stats`.
pub fn evaluate(
    net: &Network,
    set: &Arc<ShardSet>,
    stats: &ChannelStats,
    batch: usize,
) -> Result<EvalSummary> {
    let mut total = EvalCounts::default();
    for b in Prefetcher::sequential(set.clone(), Normalizer::new(stats), batch) {
        total.merge(backend::eval_batch(net, &b)?);
    }
    let n = total.n.max(1) as f64;
    Ok(EvalSummary {
        top1: total.top1 as f64 / n,
        top5: total.top5 as f64 / n,
        loss: total.loss_sum / n,
        images: total.n,
    })
}

/// Options of a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Iteration at which to stop (counted from the start of the run, across resumes).
    pub iterations: u64,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Evaluate every this many iterations (0: only at the end).
    pub eval_every: u64,
    /// Also evaluate before the first step of a fresh start.
    pub eval_at_start: bool,
    /// Log a training event every this many iterations.
    pub log_every: u64,
    /// Save a checkpoint every this many iterations (0: only at the end).
    pub checkpoint_every: u64,
    /// Batch size of evaluation.
    pub eval_batch: usize,
    /// Added to the iteration when the learning-rate policy is evaluated, so one schedule can
    /// run across several stages.
    pub lr_offset: u64,
    /// Linear warm-up: the rate ramps from 1/warmup to 1 times the scheduled rate over the
    /// first `warmup` iterations (0: none).
    pub warmup: u64,
    /// Stop once the run's cumulative training seconds reach this (a wall-clock budget);
    /// `iterations` is then an upper bound.
    pub time_limit: Option<f64>,
    /// Raised (e.g. by a Ctrl-C handler) to stop after the current step; a checkpoint of
    /// that step is saved first.
    pub stop: Option<Arc<AtomicBool>>,
}

/// Where a run starts: fresh or initial weights at iteration 0, or a checkpoint to continue.
#[derive(Debug, Clone)]
pub struct Start {
    /// Bound spec.
    pub spec: NetSpec,
    /// Weights.
    pub weights: WeightMap,
    /// Momentum buffers (`None`: zeros).
    pub optimizer: Option<WeightMap>,
    /// Iteration already done.
    pub iteration: u64,
    /// Images already consumed.
    pub images_seen: u64,
    /// Seconds already spent training, evaluating, and in all.
    pub seconds: (f64, f64, f64),
    /// Growth history carried into the new checkpoints.
    pub growth: Vec<crate::grow::verify::Verification>,
}

impl Start {
    /// A fresh start with the given weights.
    pub fn fresh(spec: NetSpec, weights: WeightMap) -> Self {
        Self {
            spec,
            weights,
            optimizer: None,
            iteration: 0,
            images_seen: 0,
            seconds: (0.0, 0.0, 0.0),
            growth: Vec::new(),
        }
    }

    /// A fresh run (iteration 0) from a checkpoint's spec, weights and momentum buffers,
    /// e.g. a grown one.
    pub fn from_checkpoint(c: Checkpoint) -> Self {
        Self {
            optimizer: Some(c.optimizer),
            growth: c.meta.growth,
            ..Self::fresh(c.spec, c.weights)
        }
    }

    /// Continues checkpoint `c` exactly where it stopped.
    pub fn resume(c: Checkpoint) -> Self {
        let m = &c.meta;
        Self {
            iteration: m.iteration,
            images_seen: m.images_seen,
            seconds: (m.train_seconds, m.eval_seconds, m.wall_seconds),
            growth: m.growth.clone(),
            spec: c.spec,
            weights: c.weights,
            optimizer: Some(c.optimizer),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Training progress since the previous train event.
    Train {
        /// Iterations done.
        iter: u64,
        /// Epochs done (fractional).
        epoch: f64,
        /// Images consumed.
        images: u64,
        /// Mean loss over the iterations since the last train event.
        loss: f64,
        /// Learning rate of the last step.
        lr: f32,
        /// Seconds in training so far.
        train_s: f64,
        /// Seconds in evaluation so far.
        eval_s: f64,
        /// Wall-clock seconds since the run started.
        wall_s: f64,
    },
    /// An evaluation on the held-out split.
    Eval {
        /// Iterations done.
        iter: u64,
        /// Epochs done.
        epoch: f64,
        /// Images consumed.
        images: u64,
        /// Top-1 accuracy.
        top1: f64,
        /// Top-5 accuracy.
        top5: f64,
        /// Mean loss.
        loss: f64,
        /// Seconds in training so far.
        train_s: f64,
        /// Seconds in evaluation so far (including this one).
        eval_s: f64,
        /// Wall-clock seconds since the run started.
        wall_s: f64,
    },
}

impl Event {
    /// Iteration of the event.
    pub fn iter(&self) -> u64 {
        match self {
            Event::Train { iter, .. } | Event::Eval { iter, .. } => *iter,
        }
    }
}

/// Reads a metrics file.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    fsutil::read_jsonl(path)
}

struct EventLog {
    path: PathBuf,
    file: File,
}

impl EventLog {
    /// Opens the log, first dropping events after `keep_until` (those of an interrupted
    /// stretch that will be redone). Starting at iteration 0 nothing is kept: the only
    /// events there, the evaluation at the start, are written again.
    fn open(path: &Path, keep_until: u64) -> Result<Self> {
        if path.exists() {
            let kept: Vec<Event> = fsutil::read_jsonl_recovering::<Event>(path)?
                .into_iter()
                .filter(|e| keep_until > 0 && e.iter() <= keep_until)
                .collect();
            fsutil::write_jsonl_atomic(path, &kept)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let line =
            serde_json::to_string(e).map_err(|err| Error::format(&self.path, err.to_string()))?;
        writeln!(self.file, "{line}").map_err(|err| Error::io(&self.path, err))?;
        self.file.flush().map_err(|err| Error::io(&self.path, err))
    }
}

fn step_seed(seed: u64, t: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl TrainConfig {
    /// The learning rate of iteration `t` (counted from the start of this run).
    pub fn rate(&self, t: u64) -> f32 {
        let h = &self.hyper;
        let lr = h.lr_policy.rate(h.base_lr, t + self.lr_offset);
        if t < self.warmup {
            lr * (t + 1) as f32 / self.warmup as f32
        } else {
            lr
        }
    }
}

/// Trains from `start` up to `cfg.iterations` (or `cfg.time_limit`), writing `run_dir/metrics.jsonl` and
/// `run_dir/checkpoint/`. Returns the final checkpoint.
pub fn train(
    run_dir: &Path,
    start: Start,
    data: &TrainData,
    cfg: &TrainConfig,
    compute: &Compute,
    progress: &dyn Progress,
) -> Result<Checkpoint> {
    let h = &cfg.hyper;
    if h.batch_size == 0 {
        return Err(Error::invalid("batch size must be at least 1"));
    }
    if !(h.base_lr.is_finite() && h.base_lr > 0.0) {
        return Err(Error::invalid(format!(
            "learning rate {} must be positive",
            h.base_lr
        )));
    }
    if start.iteration > cfg.iterations {
        return Err(Error::invalid(format!(
            "the checkpoint is at iteration {}, past the requested {}",
            start.iteration, cfg.iterations
        )));
    }
    let spec = start.spec.bind(data.input(), data.classes())?;
    start
        .weights
        .check_against(&spec, Path::new("initial weights"))?;
    fsutil::create_dir_all(run_dir)?;
    let mut log = EventLog::open(&run_dir.join(METRICS_FILE), start.iteration)?;

    let mut net = Network::new(&spec, &start.weights, compute)?;
    let mut sgd = Sgd::new(&net, h.momentum, h.weight_decay, start.optimizer.as_ref())?;
    let n_train = data.train.set.len() as f64;
    let clock = Instant::now();
    let (train0, eval0, wall0) = start.seconds;
    let mut eval_s = eval0;
    let mut pause_s = 0.0; // checkpoint writing: part of wall time, not of training time
    let mut t = start.iteration;
    let mut images = start.images_seen;
    let mut last_eval = None;
    let growth = start.growth.clone();
    let wall = |clock: &Instant| wall0 + clock.elapsed().as_secs_f64();

    // Training time is everything but evaluation and checkpoint writing, so that time spent
    // waiting for data counts against training, as it would for a user.
    let train_s = |eval_s: f64, pause_s: f64, clock: &Instant| {
        train0 + clock.elapsed().as_secs_f64() - (eval_s - eval0) - pause_s
    };

    let do_eval = |net: &Network,
                   t: u64,
                   images: u64,
                   eval_s: &mut f64,
                   pause_s: f64,
                   log: &mut EventLog|
     -> Result<EvalSummary> {
        let t0 = Instant::now();
        let s = evaluate(net, &data.test.set, &data.test.stats, cfg.eval_batch)?;
        *eval_s += t0.elapsed().as_secs_f64();
        let w = wall(&clock);
        log.write(&Event::Eval {
            iter: t,
            epoch: images as f64 / n_train,
            images,
            top1: s.top1,
            top5: s.top5,
            loss: s.loss,
            train_s: train_s(*eval_s, pause_s, &clock),
            eval_s: *eval_s,
            wall_s: w,
        })?;
        Ok(s)
    };

    let make_checkpoint = |net: &Network,
                           sgd: &Sgd,
                           t: u64,
                           images: u64,
                           eval_s: f64,
                           pause_s: f64,
                           last_eval: Option<EvalSummary>|
     -> Result<Checkpoint> {
        Ok(Checkpoint {
            spec: spec.clone(),
            weights: net.weights()?,
            optimizer: sgd.state(net)?,
            meta: CheckpointMeta {
                format: CHECKPOINT_FORMAT.into(),
                version: CHECKPOINT_VERSION,
                dataset: data.root.display().to_string(),
                size: data.size,
                classes: data.manifest.classes.clone(),
                normalization: data.train.stats.clone(),
                iteration: t,
                images_seen: images,
                train_seconds: train_s(eval_s, pause_s, &clock),
                eval_seconds: eval_s,
                wall_seconds: wall(&clock),
                hyper: h.clone(),
                threads: backend::threads(),
                backend: compute.kind().to_string(),
                last_eval,
                growth: growth.clone(),
                checksums: Default::default(),
            },
        })
    };

    if t == 0 && cfg.eval_at_start {
        last_eval = Some(do_eval(&net, t, images, &mut eval_s, pause_s, &mut log)?);
    }
    // A time-limited run counts its bar in seconds of training.
    let bar_seconds = cfg.time_limit.map(|l| (l - train0).max(0.0));
    match bar_seconds {
        Some(s) => progress.begin("train (s)", s.ceil() as u64),
        None => progress.begin("train", cfg.iterations - start.iteration),
    }
    let mut bar_pos = 0u64;
    let loader = Prefetcher::training(
        data.train.set.clone(),
        Normalizer::new(&data.train.stats),
        h.seed,
        h.batch_size,
        start.iteration,
        cfg.iterations,
    );
    let (mut loss_sum, mut loss_n) = (0.0f64, 0u64);
    let mut rate_clock = (Instant::now(), images);
    for batch in loader {
        let lr = cfg.rate(t);
        let loss = backend::train_step(&mut net, &mut sgd, &batch, lr, step_seed(h.seed, t))?;
        if !loss.is_finite() {
            let ckpt = run_dir.join(CHECKPOINT_DIR);
            let kept = match Checkpoint::exists(&ckpt) {
                Ok(true) => format!("the last saved checkpoint {} is kept", ckpt.display()),
                _ => "no checkpoint had been saved yet".to_string(),
            };
            return Err(Error::invalid(format!(
                "loss became {loss} at iteration {t} (lr {lr}); training stopped and {kept} — try a lower learning rate"
            )));
        }
        t += 1;
        images += batch.len() as u64;
        loss_sum += f64::from(loss);
        loss_n += 1;
        let now_train = train_s(eval_s, pause_s, &clock);
        let done = t == cfg.iterations || cfg.time_limit.is_some_and(|l| now_train >= l);
        match bar_seconds {
            Some(_) => {
                let pos = (now_train - train0).max(0.0) as u64;
                progress.advance(pos.saturating_sub(bar_pos));
                bar_pos = bar_pos.max(pos);
            }
            None => progress.advance(1),
        }
        if t.is_multiple_of(cfg.log_every.max(1)) || done {
            let w = wall(&clock);
            log.write(&Event::Train {
                iter: t,
                epoch: images as f64 / n_train,
                images,
                loss: loss_sum / loss_n as f64,
                lr,
                train_s: train_s(eval_s, pause_s, &clock),
                eval_s,
                wall_s: w,
            })?;
            let dt = rate_clock.0.elapsed().as_secs_f64().max(1e-9);
            progress.status(&format!(
                "loss {:.4}  lr {lr:.3e}  {:.0} img/s",
                loss_sum / loss_n as f64,
                (images - rate_clock.1) as f64 / dt
            ));
            rate_clock = (Instant::now(), images);
            (loss_sum, loss_n) = (0.0, 0);
        }
        if (cfg.eval_every > 0 && t.is_multiple_of(cfg.eval_every)) || done {
            let s = do_eval(&net, t, images, &mut eval_s, pause_s, &mut log)?;
            progress.note(&format!(
                "iter {t}: test top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
                100.0 * s.top1,
                100.0 * s.top5,
                s.loss
            ));
            last_eval = Some(s);
        }
        if done {
            break;
        }
        if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            progress.end();
            make_checkpoint(&net, &sgd, t, images, eval_s, pause_s, last_eval)?
                .save(&run_dir.join(CHECKPOINT_DIR))?;
            return Err(Error::Interrupted(format!(
                "interrupted at iteration {t} of {}; saved {}",
                cfg.iterations,
                run_dir.join(CHECKPOINT_DIR).display()
            )));
        }
        if cfg.checkpoint_every > 0 && t.is_multiple_of(cfg.checkpoint_every) {
            let t0 = Instant::now();
            make_checkpoint(&net, &sgd, t, images, eval_s, pause_s, last_eval)?
                .save(&run_dir.join(CHECKPOINT_DIR))?;
            pause_s += t0.elapsed().as_secs_f64();
        }
    }
    progress.end();
    let timed_out = cfg
        .time_limit
        .is_some_and(|l| train_s(eval_s, pause_s, &clock) >= l);
    if t != cfg.iterations && !timed_out {
        return Err(Error::Backend(format!(
            "data loader stopped early at iteration {t}"
        )));
    }
    let ckpt = make_checkpoint(&net, &sgd, t, images, eval_s, pause_s, last_eval)?;
    ckpt.save(&run_dir.join(CHECKPOINT_DIR))?;
    Ok(ckpt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::data::prepare::{PrepareConfig, prepare};
    use crate::data::synthetic::write_quadrant_idx;
    use crate::lr::LrPolicy;
    use crate::net::presets::preset;
    use crate::net::weights::Init;
    use crate::progress::Silent;

    fn fixture(root: &Path) -> Result<TrainData> {
        write_quadrant_idx(&root.join("src"), 256, 64, 8, 11)?;
        let cfg = PrepareConfig {
            sizes: vec![8],
            class_names: Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
            ..Default::default()
        };
        prepare(&root.join("src"), &root.join("data"), &cfg, &Silent)?;
        TrainData::open(&root.join("data"), 8)
    }

    fn config(iterations: u64) -> TrainConfig {
        TrainConfig {
            iterations,
            hyper: Hyper {
                batch_size: 16,
                base_lr: 0.02,
                lr_policy: LrPolicy::Step {
                    gamma: 0.5,
                    step: 10,
                },
                momentum: 0.9,
                weight_decay: 5e-4,
                seed: 5,
            },
            eval_every: 10,
            eval_at_start: true,
            log_every: 5,
            checkpoint_every: 10,
            eval_batch: 50,
            lr_offset: 0,
            warmup: 0,
            time_limit: None,
            stop: None,
        }
    }

    fn start(data: &TrainData) -> Result<Start> {
        // alexnet-s5 has dropout and LRN, so their determinism is covered too.
        let spec = preset("alexnet-s5")
            .expect("preset")
            .bind(data.input(), data.classes())?;
        let w = WeightMap::init(&spec, Init::Kaiming, 1)?;
        Ok(Start::fresh(spec, w))
    }

    /// Events with the clock fields removed.
    fn untimed(path: &Path) -> Result<Vec<Event>> {
        Ok(read_events(path)?
            .into_iter()
            .map(|e| match e {
                Event::Train {
                    iter,
                    epoch,
                    images,
                    loss,
                    lr,
                    ..
                } => Event::Train {
                    iter,
                    epoch,
                    images,
                    loss,
                    lr,
                    train_s: 0.0,
                    eval_s: 0.0,
                    wall_s: 0.0,
                },
                Event::Eval {
                    iter,
                    epoch,
                    images,
                    top1,
                    top5,
                    loss,
                    ..
                } => Event::Eval {
                    iter,
                    epoch,
                    images,
                    top1,
                    top5,
                    loss,
                    train_s: 0.0,
                    eval_s: 0.0,
                    wall_s: 0.0,
                },
            })
            .collect())
    }

    #[test]
    fn same_seed_gives_identical_metrics_and_weights_and_it_learns() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let compute = Compute::new(BackendKind::Cpu)?;
        let a = train(
            &tmp.path().join("a"),
            start(&data)?,
            &data,
            &config(40),
            &compute,
            &Silent,
        )?;
        let b = train(
            &tmp.path().join("b"),
            start(&data)?,
            &data,
            &config(40),
            &compute,
            &Silent,
        )?;
        assert_eq!(a.weights, b.weights);
        let ea = untimed(&tmp.path().join("a").join(METRICS_FILE))?;
        assert_eq!(ea, untimed(&tmp.path().join("b").join(METRICS_FILE))?);
        assert_eq!(
            ea.iter()
                .filter(|e| matches!(e, Event::Eval { .. }))
                .count(),
            5,
            "evals at 0, 10, 20, 30, 40"
        );
        let first = ea.iter().find_map(|e| match e {
            Event::Eval { top1, .. } => Some(*top1),
            _ => None,
        });
        let last = a.meta.last_eval.map(|e| e.top1);
        assert!(
            last > Some(0.9),
            "the quadrant task should be learnt: {first:?} → {last:?}"
        );
        // A checkpoint round-trips through disk.
        let back = Checkpoint::load(&tmp.path().join("a").join(CHECKPOINT_DIR))?;
        assert_eq!(back.weights, a.weights);
        assert_eq!(back.meta.iteration, 40);
        Ok(())
    }

    #[test]
    fn resume_continues_exactly() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let compute = Compute::new(BackendKind::Cpu)?;
        let full = train(
            &tmp.path().join("full"),
            start(&data)?,
            &data,
            &config(30),
            &compute,
            &Silent,
        )?;
        let run = tmp.path().join("split");
        train(&run, start(&data)?, &data, &config(15), &compute, &Silent)?;
        let resumed = Checkpoint::load(&run.join(CHECKPOINT_DIR))?;
        assert_eq!(resumed.meta.iteration, 15);
        let done = train(
            &run,
            Start::resume(resumed),
            &data,
            &config(30),
            &compute,
            &Silent,
        )?;
        assert_eq!(
            done.weights, full.weights,
            "resumed weights differ from an uninterrupted run"
        );
        assert_eq!(done.optimizer, full.optimizer);
        let last = |p: &Path| -> Result<Option<Event>> {
            Ok(untimed(&p.join(METRICS_FILE))?
                .into_iter()
                .rfind(|e| matches!(e, Event::Eval { .. })))
        };
        assert_eq!(last(&run)?, last(&tmp.path().join("full"))?);
        Ok(())
    }
}
