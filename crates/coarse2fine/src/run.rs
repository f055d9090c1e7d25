//! Executing a [`RunPlan`]: the incremental stages with growth between them, then the
//! from-scratch baseline, into one run folder that survives interruption.
//!
//! ```text
//! RUN/run.json                         the validated plan (a re-run must match it)
//! RUN/incremental/stage-K/grown/       the grown start checkpoint (K ≥ 2)
//! RUN/incremental/stage-K/growth.json  its checks and timings
//! RUN/incremental/stage-K/metrics.jsonl, checkpoint/, done.json
//! RUN/baseline/metrics.jsonl, checkpoint/, done.json
//! RUN/events.jsonl                     every event on one run-wide clock
//! ```
//!
//! Every file is written atomically and `done.json` only after its stage's final checkpoint,
//! so running the same plan again continues from the last checkpoint: finished stages are
//! skipped, a stage in progress resumes exactly, a growth step is redone if it was cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::backend::Compute;
use crate::checkpoint::{Checkpoint, EvalSummary, Hyper};
use crate::data::loader::{Batch, Normalizer, make_batch};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::grow::GrowOp;
use crate::grow::verify::{self, Verification};
use crate::net::WeightMap;
use crate::plan::{Budget, MomentumState, RunPlan, Schedule, StageBudget};
use crate::progress::Progress;
use crate::train::{self, CHECKPOINT_DIR, Event, METRICS_FILE, Start, TrainConfig, TrainData};

/// The run folder's manifest.
pub const RUN_FILE: &str = "run.json";
/// The run-wide event log.
pub const EVENTS_FILE: &str = "events.jsonl";
/// `format` of `run.json`.
pub const RUN_FORMAT: &str = "coarse2fine-run";
/// Version of `run.json` and `events.jsonl` written by this build.
pub const RUN_VERSION: u32 = 1;

const DONE: &str = "done.json";
const GROWTH: &str = "growth.json";
const GROWN: &str = "grown";

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    /// Always [`RUN_FORMAT`].
    pub format: String,
    /// [`RUN_VERSION`].
    pub version: u32,
    /// The validated plan.
    pub plan: RunPlan,
}

impl RunManifest {
    /// Reads and checks `dir/run.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_FILE);
        if !path.is_file() {
            return Err(Error::format(
                dir,
                format!("not a run folder: no {RUN_FILE} (made by `c2f run`)"),
            ));
        }
        let m: RunManifest = fsutil::read_json(&path)?;
        if m.format != RUN_FORMAT || m.version != RUN_VERSION {
            return Err(Error::format(
                &path,
                format!(
                    "format {:?} version {} is not {RUN_FORMAT:?} version {RUN_VERSION}",
                    m.format, m.version
                ),
            ));
        }
        Ok(m)
    }
}

/// Which curve an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurveKind {
    /// The coarse-to-fine stages.
    Incremental,
    /// The final net from scratch.
    Baseline,
}

impl CurveKind {
    /// `incremental` or `baseline`.
    pub fn name(self) -> &'static str {
        match self {
            CurveKind::Incremental => "incremental",
            CurveKind::Baseline => "baseline",
        }
    }
}

/// Clock readings shared by all events. `time_s` (training plus growth seconds) is the
/// x-axis of the curves: evaluation and checkpoint writing are left out, since their cost
/// depends on how often one measures, not on the method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    /// Training plus growth seconds.
    pub time_s: f64,
    /// Seconds in training steps.
    pub train_s: f64,
    /// Seconds in growth operators.
    pub grow_s: f64,
    /// Seconds in evaluation and growth checks.
    pub eval_s: f64,
    /// Wall-clock seconds since the curve started.
    pub wall_s: f64,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// Training progress.
    Train {
        /// Curve.
        curve: CurveKind,
        /// Stage (1-based; the baseline has one).
        stage: usize,
        /// Input side.
        size: usize,
        /// Iterations since the curve started.
        iter: u64,
        /// Training images since the curve started.
        images: u64,
        /// Mean loss since the previous train event.
        loss: f64,
        /// Learning rate of the last step.
        lr: f32,
        /// Clock.
        #[serde(flatten)]
        clock: Clock,
    },
    /// An evaluation on the held-out split.
    Eval {
        /// Curve.
        curve: CurveKind,
        /// Stage.
        stage: usize,
        /// Input side.
        size: usize,
        /// Iterations since the curve started.
        iter: u64,
        /// Training images since the curve started.
        images: u64,
        /// Top-1 accuracy in [0, 1].
        top1: f64,
        /// Top-5 accuracy.
        top5: f64,
        /// Mean loss.
        loss: f64,
        /// Clock.
        #[serde(flatten)]
        clock: Clock,
    },
    /// A growth step between stages (`stage` is the stage it starts).
    Growth {
        /// Curve (always incremental).
        curve: CurveKind,
        /// The stage the grown net trains in.
        stage: usize,
        /// Input side before.
        from_size: usize,
        /// Input side after.
        size: usize,
        /// The operators.
        ops: Vec<String>,
        /// Whether every operator promises exact preservation.
        exact: bool,
        /// Largest relative error of logits over the steps (real images if any).
        rel: f64,
        /// Smallest top-1 agreement over the steps.
        top1_agreement: f64,
        /// Seconds in the operators.
        seconds: f64,
        /// Clock after the growth.
        #[serde(flatten)]
        clock: Clock,
    },
}

impl RunEvent {
    /// The event's curve.
    pub fn curve(&self) -> CurveKind {
        match self {
            RunEvent::Train { curve, .. }
            | RunEvent::Eval { curve, .. }
            | RunEvent::Growth { curve, .. } => *curve,
        }
    }
}

/// Reads an `events.jsonl`.
pub fn read_run_events(path: &Path) -> Result<Vec<RunEvent>> {
    fsutil::read_jsonl(path)
}

/// `growth.json` of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrowthRecord {
    ops: Vec<GrowOp>,
    checks: Vec<Verification>,
    grow_seconds: f64,
    check_seconds: f64,
}

/// `done.json` of a part: its totals on the run-wide clock.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PartDone {
    iterations: u64,
    images: u64,
    train_s: f64,
    eval_s: f64,
    wall_s: f64,
    /// Growth seconds of this curve up to and including this part.
    grow_s: f64,
    last_eval: Option<EvalSummary>,
}

impl PartDone {
    /// The totals of a part that ended with `ckpt`.
    fn of(ckpt: &Checkpoint, grow_s: f64) -> Self {
        let m = &ckpt.meta;
        Self {
            iterations: m.iteration,
            images: m.images_seen,
            train_s: m.train_seconds,
            eval_s: m.eval_seconds,
            wall_s: m.wall_seconds,
            grow_s,
            last_eval: m.last_eval,
        }
    }
}

/// Options of [`execute`] that are not part of the plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Checkpoint every this many iterations (0: at each evaluation).
    pub checkpoint_every: u64,
    /// Real test images used by each growth check.
    pub check_images: usize,
    /// Raised to stop after the current step (a checkpoint is saved).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 0,
            check_images: 500,
            stop: None,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Final evaluation of the incremental curve.
    pub incremental: Option<EvalSummary>,
    /// Final evaluation of the baseline.
    pub baseline: Option<EvalSummary>,
    /// Training plus growth seconds of the incremental curve.
    pub incremental_time: f64,
    /// Training seconds of the baseline.
    pub baseline_time: f64,
    /// Stages skipped because they were already done.
    pub skipped: usize,
}

/// Folder of stage `k` (0-based).
pub fn stage_dir(run: &Path, k: usize) -> PathBuf {
    run.join("incremental").join(format!("stage-{}", k + 1))
}

/// Folder of the baseline.
pub fn baseline_dir(run: &Path) -> PathBuf {
    run.join("baseline")
}

fn open_data(plan: &RunPlan, size: usize) -> Result<TrainData> {
    let mut d = TrainData::open(&plan.data, size)?;
    // One normalisation for every stage and the baseline: the final size's statistics, so
    // the grown net sees inputs on the scale it was trained on, and the baseline the same.
    let last = plan.stages.last().map_or(size, |s| s.size);
    let stats = d.manifest.stats_at(&plan.data, last)?.clone();
    d.train.stats = stats.clone();
    d.test.stats = stats;
    Ok(d)
}

/// Runs (or continues) `plan` in `dir`.
pub fn execute(
    dir: &Path,
    plan: &RunPlan,
    opts: &RunOptions,
    compute: &Compute,
    progress: &dyn Progress,
) -> Result<RunOutcome> {
    let manifest = RunManifest {
        format: RUN_FORMAT.into(),
        version: RUN_VERSION,
        plan: plan.clone(),
    };
    // A run killed while writing leaves temporary files; they must not make its folder look
    // foreign to the command that resumes it.
    fsutil::clean_stale(dir)?;
    if dir.join(RUN_FILE).exists() {
        let old = RunManifest::load(dir)?;
        if old.plan != *plan {
            return Err(Error::invalid(format!(
                "{}: this folder holds a run of a different plan (or other settings); choose a new --out",
                dir.display()
            )));
        }
    } else {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .next()
                .is_some()
        {
            return Err(Error::invalid(format!(
                "{}: exists, is not empty and is not a run folder; choose a new --out",
                dir.display()
            )));
        }
        fsutil::create_dir_all(dir)?;
        fsutil::write_json_atomic(&dir.join(RUN_FILE), &manifest)?;
    }

    let n_parts = plan.stages.len() + usize::from(plan.baseline.is_some());
    let mut skipped = 0;
    let mut prev: Option<(PartDone, Checkpoint)> = None;
    let mut iters_before = 0u64;
    for (k, stage) in plan.stages.iter().enumerate() {
        let sdir = stage_dir(dir, k);
        progress.overall(
            k as u64,
            n_parts as u64,
            &format!(
                "{}: stage {} at {}×{}",
                plan.label(),
                k + 1,
                stage.size,
                stage.size
            ),
        );
        progress.note(&format!(
            "[{}/{n_parts}] {}: stage {} at {}×{}: {} ({} parameters){}",
            k + 1,
            plan.label(),
            k + 1,
            stage.size,
            stage.size,
            stage.spec.name,
            stage.spec.num_params()?,
            if stage.grow.is_empty() {
                String::new()
            } else {
                format!(
                    ", grown by {}",
                    stage
                        .grow
                        .iter()
                        .map(GrowOp::describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
        if let Ok(done) = fsutil::read_json::<PartDone>(&sdir.join(DONE)) {
            skipped += 1;
            progress.note("  already done");
            iters_before += done.iterations;
            prev = Some((done, Checkpoint::load(&sdir.join(CHECKPOINT_DIR))?));
            continue;
        }
        let data = open_data(plan, stage.size)?;
        let (start_train, grow_before) = prev
            .as_ref()
            .map_or((0.0, 0.0), |(d, _)| (d.train_s, d.grow_s));
        let mut grow_s = grow_before;
        let start = if Checkpoint::exists(&sdir.join(CHECKPOINT_DIR))? {
            let c = Checkpoint::load(&sdir.join(CHECKPOINT_DIR))?;
            check_hyper(&c, &stage.hyper, &sdir)?;
            if let Ok(g) = fsutil::read_json::<GrowthRecord>(&sdir.join(GROWTH)) {
                grow_s += g.grow_seconds;
            }
            progress.note(&format!("  resuming at iteration {}", c.meta.iteration));
            Start::resume(c)
        } else if let Some((pdone, pckpt)) = &prev {
            let (grown, record) = grow_stage(dir, k, plan, pckpt, opts, compute, progress)?;
            grow_s += record.grow_seconds;
            let mut s = Start::from_checkpoint(grown);
            if stage.momentum_state == MomentumState::Reset {
                s.optimizer = Some(WeightMap::zeros_for(&s.spec)?);
            }
            s.seconds = (
                pdone.train_s,
                pdone.eval_s + record.check_seconds,
                pdone.wall_s + record.grow_seconds + record.check_seconds,
            );
            s
        } else {
            let w = WeightMap::init(&stage.spec, plan.init, plan.seed)?;
            Start::fresh(stage.spec.clone(), w)
        };
        let budget = match stage.budget {
            StageBudget::Iterations(n) => (n, None),
            StageBudget::Seconds(s) => (u64::MAX / 4, Some(start_train + s)),
        };
        let cfg = TrainConfig {
            lr_offset: if plan.schedule == Schedule::Global {
                iters_before
            } else {
                0
            },
            warmup: stage.warmup,
            ..part_config(opts, &stage.hyper, stage.eval_every, budget)
        };
        let ckpt = finish_or_train(&sdir, start, &data, &cfg, compute, progress)?;
        let done = PartDone::of(&ckpt, grow_s);
        fsutil::write_json_atomic(&sdir.join(DONE), &done)?;
        iters_before += done.iterations;
        prev = Some((done, ckpt));
        write_events(dir, plan)?;
    }
    let (inc_done, inc_ckpt) = prev.ok_or_else(|| Error::invalid("the plan has no stages"))?;
    let inc_time = inc_done.train_s + inc_done.grow_s;
    let inc_images: u64 = (0..plan.stages.len())
        .map(|k| fsutil::read_json::<PartDone>(&stage_dir(dir, k).join(DONE)).map(|d| d.images))
        .sum::<Result<u64>>()?;

    let mut outcome = RunOutcome {
        incremental: inc_done.last_eval,
        baseline: None,
        incremental_time: inc_time,
        baseline_time: 0.0,
        skipped,
    };
    if let Some(b) = &plan.baseline {
        let bdir = baseline_dir(dir);
        let last = plan
            .stages
            .last()
            .ok_or_else(|| Error::invalid("no stages"))?;
        progress.overall(
            plan.stages.len() as u64,
            n_parts as u64,
            &format!("{}: baseline at {}×{}", plan.label(), last.size, last.size),
        );
        progress.note(&format!(
            "[{n_parts}/{n_parts}] {}: baseline: {} from scratch at {}×{} for {}",
            plan.label(),
            inc_ckpt.spec.name,
            last.size,
            last.size,
            match b.budget {
                Budget::Time => format!("{inc_time:.1} s of training (the incremental run's)"),
                Budget::Images => format!("{inc_images} images (the incremental run's)"),
            }
        ));
        let done = match fsutil::read_json::<PartDone>(&bdir.join(DONE)) {
            Ok(d) => {
                skipped += 1;
                progress.note("  already done");
                d
            }
            Err(_) => {
                let data = open_data(plan, last.size)?;
                let start = if Checkpoint::exists(&bdir.join(CHECKPOINT_DIR))? {
                    let c = Checkpoint::load(&bdir.join(CHECKPOINT_DIR))?;
                    check_hyper(&c, &b.hyper, &bdir)?;
                    progress.note(&format!("  resuming at iteration {}", c.meta.iteration));
                    Start::resume(c)
                } else {
                    // The final stage's net as grown (same layers and shapes), fresh weights.
                    let spec = inc_ckpt.spec.clone();
                    let w = WeightMap::init(&spec, plan.init, plan.seed)?;
                    Start::fresh(spec, w)
                };
                let budget = match b.budget {
                    Budget::Time => (u64::MAX / 4, Some(inc_time)),
                    Budget::Images => (inc_images.div_ceil(b.hyper.batch_size as u64).max(1), None),
                };
                let cfg = part_config(opts, &b.hyper, b.eval_every, budget);
                let ckpt = finish_or_train(&bdir, start, &data, &cfg, compute, progress)?;
                let d = PartDone::of(&ckpt, 0.0);
                fsutil::write_json_atomic(&bdir.join(DONE), &d)?;
                d
            }
        };
        outcome.baseline = done.last_eval;
        outcome.baseline_time = done.train_s;
    }
    outcome.skipped = skipped;
    write_events(dir, plan)?;
    progress.overall(n_parts as u64, n_parts as u64, "done");
    Ok(outcome)
}

/// The training options of a stage or the baseline: `budget` is the iterations (an upper
/// bound when timed) and the training-seconds limit, if any.
fn part_config(
    opts: &RunOptions,
    hyper: &Hyper,
    eval_every: u64,
    budget: (u64, Option<f64>),
) -> TrainConfig {
    TrainConfig {
        iterations: budget.0,
        hyper: hyper.clone(),
        eval_every,
        eval_at_start: true,
        log_every: 10,
        checkpoint_every: if opts.checkpoint_every > 0 {
            opts.checkpoint_every
        } else {
            eval_every
        },
        eval_batch: 500,
        lr_offset: 0,
        warmup: 0,
        time_limit: budget.1,
        stop: opts.stop.clone(),
    }
}

fn check_hyper(c: &Checkpoint, h: &Hyper, dir: &Path) -> Result<()> {
    if c.meta.hyper != *h {
        return Err(Error::format(
            dir.join(CHECKPOINT_DIR),
            format!(
                "trained with other settings ({:?}) than the plan's ({h:?})",
                c.meta.hyper
            ),
        ));
    }
    Ok(())
}

/// Trains, unless the checkpoint already met its budget (a crash after the last checkpoint
/// but before `done.json`).
fn finish_or_train(
    dir: &Path,
    start: Start,
    data: &TrainData,
    cfg: &TrainConfig,
    compute: &Compute,
    progress: &dyn Progress,
) -> Result<Checkpoint> {
    let met = start.iteration >= cfg.iterations
        || cfg
            .time_limit
            .is_some_and(|l| start.iteration > 0 && start.seconds.0 >= l);
    if met {
        return Checkpoint::load(&dir.join(CHECKPOINT_DIR));
    }
    train::train(dir, start, data, cfg, compute, progress)
}

/// Grows the previous stage's checkpoint into stage `k`'s start, or reuses a growth that
/// completed before an interruption.
fn grow_stage(
    dir: &Path,
    k: usize,
    plan: &RunPlan,
    prev: &Checkpoint,
    opts: &RunOptions,
    compute: &Compute,
    progress: &dyn Progress,
) -> Result<(Checkpoint, GrowthRecord)> {
    let sdir = stage_dir(dir, k);
    let stage = &plan.stages[k];
    if let (Ok(record), Ok(grown)) = (
        fsutil::read_json::<GrowthRecord>(&sdir.join(GROWTH)),
        Checkpoint::load(&sdir.join(GROWN)),
    ) {
        return Ok((grown, record));
    }
    let prev_size = plan.stages[k - 1].size;
    let data = open_data(plan, prev_size)?;
    let norm = Normalizer::new(&data.test.stats);
    let n = opts.check_images.min(data.test.set.len());
    let idx: Vec<usize> = (0..n).collect();
    let batches: Vec<Batch> = idx
        .chunks(500)
        .map(|c| make_batch(&data.test.set, &norm, c))
        .collect();
    let grown = verify::grow_checked(
        prev,
        &stage.grow,
        &batches,
        plan.seed.wrapping_add(2000 + k as u64),
        compute,
        |op, v| {
            let a = v.data.unwrap_or(v.random);
            progress.note(&format!(
                "  {}: relative error {:.2e}, top-1 agreement {:.2}%{}",
                op.describe(),
                a.rel,
                100.0 * a.top1_agreement,
                if v.exact { " (exact)" } else { "" }
            ));
        },
    )?;
    let mut meta = prev.meta.clone();
    meta.size = stage.size;
    meta.growth.extend(grown.checks.iter().cloned());
    let optimizer = match grown.momentum {
        Some(m) => m,
        None => WeightMap::zeros_for(&grown.spec)?,
    };
    let ckpt = Checkpoint {
        spec: grown.spec,
        weights: grown.weights,
        optimizer,
        meta,
    };
    ckpt.save(&sdir.join(GROWN))?;
    let record = GrowthRecord {
        ops: stage.grow.clone(),
        checks: grown.checks,
        grow_seconds: grown.grow_seconds,
        check_seconds: grown.check_seconds,
    };
    fsutil::write_json_atomic(&sdir.join(GROWTH), &record)?;
    Ok((ckpt, record))
}

fn clock_of(train_s: f64, eval_s: f64, wall_s: f64, grow_s: f64) -> Clock {
    Clock {
        time_s: train_s + grow_s,
        train_s,
        grow_s,
        eval_s,
        wall_s,
    }
}

/// Where a part sits on its curve.
struct PartOrigin {
    curve: CurveKind,
    stage: usize,
    size: usize,
    /// Iterations and images of the curve's earlier parts.
    iter0: u64,
    images0: u64,
    /// Growth seconds of the curve so far.
    grow_s: f64,
}

/// Events of one part's `metrics.jsonl`, moved onto the curve's clock.
fn part_events(path: &Path, o: &PartOrigin, out: &mut Vec<RunEvent>) -> Result<()> {
    let PartOrigin {
        curve,
        stage,
        size,
        iter0,
        images0,
        grow_s,
    } = *o;
    if !path.is_file() {
        return Ok(());
    }
    for e in train::read_events(path)? {
        out.push(match e {
            Event::Train {
                iter,
                images,
                loss,
                lr,
                train_s,
                eval_s,
                wall_s,
                ..
            } => RunEvent::Train {
                curve,
                stage,
                size,
                iter: iter0 + iter,
                images: images0 + images,
                loss,
                lr,
                clock: clock_of(train_s, eval_s, wall_s, grow_s),
            },
            Event::Eval {
                iter,
                images,
                top1,
                top5,
                loss,
                train_s,
                eval_s,
                wall_s,
                ..
            } => RunEvent::Eval {
                curve,
                stage,
                size,
                iter: iter0 + iter,
                images: images0 + images,
                top1,
                top5,
                loss,
                clock: clock_of(train_s, eval_s, wall_s, grow_s),
            },
        });
    }
    Ok(())
}

/// Collects every part's events onto one clock per curve.
pub fn collect_events(dir: &Path, plan: &RunPlan) -> Result<Vec<RunEvent>> {
    let mut out = Vec::new();
    let (mut iter0, mut images0, mut grow_s) = (0u64, 0u64, 0f64);
    let mut prev_done: Option<PartDone> = None;
    for (k, stage) in plan.stages.iter().enumerate() {
        let sdir = stage_dir(dir, k);
        if k > 0 {
            let Ok(g) = fsutil::read_json::<GrowthRecord>(&sdir.join(GROWTH)) else {
                break;
            };
            let Some(p) = prev_done else {
                break;
            };
            grow_s += g.grow_seconds;
            let worst = |f: &dyn Fn(&Verification) -> f64, pick: fn(f64, f64) -> f64, init: f64| {
                g.checks.iter().map(f).fold(init, pick)
            };
            out.push(RunEvent::Growth {
                curve: CurveKind::Incremental,
                stage: k + 1,
                from_size: plan.stages[k - 1].size,
                size: stage.size,
                ops: g.ops.iter().map(GrowOp::describe).collect(),
                exact: g.checks.iter().all(|c| c.exact),
                rel: worst(&|c| c.data.unwrap_or(c.random).rel, f64::max, 0.0),
                top1_agreement: worst(
                    &|c| c.data.unwrap_or(c.random).top1_agreement,
                    f64::min,
                    1.0,
                ),
                seconds: g.grow_seconds,
                clock: clock_of(
                    p.train_s,
                    p.eval_s + g.check_seconds,
                    p.wall_s + g.grow_seconds + g.check_seconds,
                    grow_s,
                ),
            });
        }
        let origin = PartOrigin {
            curve: CurveKind::Incremental,
            stage: k + 1,
            size: stage.size,
            iter0,
            images0,
            grow_s,
        };
        part_events(&sdir.join(METRICS_FILE), &origin, &mut out)?;
        match fsutil::read_json::<PartDone>(&sdir.join(DONE)) {
            Ok(d) => {
                iter0 += d.iterations;
                images0 += d.images;
                prev_done = Some(d);
            }
            Err(_) => break,
        }
    }
    if let Some(last) = plan.stages.last() {
        let origin = PartOrigin {
            curve: CurveKind::Baseline,
            stage: 1,
            size: last.size,
            iter0: 0,
            images0: 0,
            grow_s: 0.0,
        };
        part_events(&baseline_dir(dir).join(METRICS_FILE), &origin, &mut out)?;
    }
    Ok(out)
}

/// Rewrites `dir/events.jsonl` from the parts' logs.
pub fn write_events(dir: &Path, plan: &RunPlan) -> Result<()> {
    fsutil::write_jsonl_atomic(&dir.join(EVENTS_FILE), &collect_events(dir, plan)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::data::prepare::{PrepareConfig, prepare};
    use crate::data::synthetic::write_quadrant_idx;
    use crate::plan::PlanFile;
    use crate::progress::Silent;

    const PLAN: &str = r#"
name = "t"
data = "DATA"
eval_every = 10
batch = 16
lr = 0.02

[[stage]]
size = 8
net = "net-4"
iterations = 20

[[stage]]
size = 16
grow = [{ op = "upscale" }, { op = "widen", layer = "fc6", add = 8, init = "gauss:0.01" }]
iterations = 30
warmup = 5

[baseline]
budget = "images"
"#;

    /// A prepared 4-class fixture at sizes 8 and 16 in `root/data`.
    fn fixture(root: &Path) -> Result<PathBuf> {
        write_quadrant_idx(&root.join("src"), 128, 32, 16, 3)?;
        let cfg = PrepareConfig {
            sizes: vec![8, 16],
            ..Default::default()
        };
        let data = root.join("data");
        prepare(&root.join("src"), &data, &cfg, &Silent)?;
        Ok(data)
    }

    /// The learning rates of the incremental curve's train events, by curve iteration.
    fn rates(events: &[RunEvent]) -> Vec<(u64, f32)> {
        events
            .iter()
            .filter_map(|e| match e {
                RunEvent::Train {
                    curve: CurveKind::Incremental,
                    iter,
                    lr,
                    ..
                } => Some((*iter, *lr)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn time_budgets_global_schedules_and_warmup() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let text = PLAN
            .replace("DATA", &data.display().to_string())
            .replace(
                "lr = 0.02",
                "lr = 0.02\nschedule = \"global\"\nlr_policy = \"step:0.5:10\"",
            )
            .replace("iterations = 30\nwarmup = 5", "seconds = 0.5\nwarmup = 20")
            .replace("budget = \"images\"", "enabled = false");
        let plan = PlanFile::parse(Path::new("p.toml"), &text)?.resolve(0, None)?;
        let compute = Compute::new(BackendKind::Cpu)?;
        let dir = tmp.path().join("run");
        execute(&dir, &plan, &RunOptions::default(), &compute, &Silent)?;
        let s1: PartDone = fsutil::read_json(&stage_dir(&dir, 0).join(DONE))?;
        let s2: PartDone = fsutil::read_json(&stage_dir(&dir, 1).join(DONE))?;
        // Stage 2 trained until its training seconds reached the budget, then stopped.
        assert_eq!(s1.iterations, 20);
        assert!(s2.iterations > 0);
        assert!(
            s2.train_s - s1.train_s >= 0.5,
            "{} − {}",
            s2.train_s,
            s1.train_s
        );
        let events = read_run_events(&dir.join(EVENTS_FILE))?;
        let lr = rates(&events);
        // Global schedule: the step policy runs on across stages (the last step of stage 1
        // is global step 19, rate 0.02 · 0.5; curve iteration 30 is stage 2's tenth step,
        // global step 29, rate 0.02 · 0.5²), and the warm-up scales stage 2's first 20
        // steps by (t + 1)/20.
        assert_eq!(
            lr.iter().find(|(i, _)| *i == 20).map(|p| p.1),
            Some(0.02 * 0.5)
        );
        let at30 = lr.iter().find(|(i, _)| *i == 30).map(|p| p.1);
        assert_eq!(at30, Some(0.02 * 0.25 * 10.0 / 20.0));
        assert!(!baseline_dir(&dir).exists());
        Ok(())
    }

    #[test]
    fn a_plan_runs_stages_growth_and_baseline_and_a_rerun_skips_them() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let text = PLAN.replace("DATA", &data.display().to_string());
        let plan = PlanFile::parse(Path::new("p.toml"), &text)?.resolve(0, None)?;
        let compute = Compute::new(BackendKind::Cpu)?;
        let dir = tmp.path().join("run");
        let first = execute(&dir, &plan, &RunOptions::default(), &compute, &Silent)?;
        assert_eq!(first.skipped, 0);
        let events = read_run_events(&dir.join(EVENTS_FILE))?;

        // The growth is recorded between the stages, exact, with its check.
        let growth: Vec<&RunEvent> = events
            .iter()
            .filter(|e| matches!(e, RunEvent::Growth { .. }))
            .collect();
        assert_eq!(growth.len(), 1);
        let RunEvent::Growth {
            stage,
            exact,
            rel,
            ops,
            clock,
            ..
        } = growth[0]
        else {
            unreachable!()
        };
        assert_eq!((*stage, *exact, ops.len()), (2, true, 2));
        assert!(*rel <= verify::EXACT_TOLERANCE, "rel {rel}");

        // One clock per curve: iterations and time only grow; stage 2 continues stage 1.
        for kind in [CurveKind::Incremental, CurveKind::Baseline] {
            let evals: Vec<(u64, f64)> = events
                .iter()
                .filter_map(|e| match e {
                    RunEvent::Eval {
                        curve, iter, clock, ..
                    } if *curve == kind => Some((*iter, clock.time_s)),
                    _ => None,
                })
                .collect();
            assert!(
                evals
                    .windows(2)
                    .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
            );
            assert!(evals.len() >= 4, "{kind:?}: {evals:?}");
        }
        let last_inc_iter = events
            .iter()
            .filter_map(|e| match e {
                RunEvent::Eval {
                    curve: CurveKind::Incremental,
                    iter,
                    ..
                } => Some(*iter),
                _ => None,
            })
            .max();
        assert_eq!(last_inc_iter, Some(50));
        assert!(clock.time_s >= clock.grow_s && clock.grow_s > 0.0);
        // Same images: 50 iterations of 16.
        let base_images = events.iter().rev().find_map(|e| match e {
            RunEvent::Eval {
                curve: CurveKind::Baseline,
                images,
                ..
            } => Some(*images),
            _ => None,
        });
        assert_eq!(base_images, Some(800));
        assert!(first.baseline.is_some() && first.incremental.is_some());

        // Running the same plan again finds everything done and changes nothing.
        let again = execute(&dir, &plan, &RunOptions::default(), &compute, &Silent)?;
        assert_eq!(again.skipped, 3);
        assert_eq!(again.incremental, first.incremental);
        assert_eq!(read_run_events(&dir.join(EVENTS_FILE))?, events);

        // Another plan cannot reuse the folder.
        let mut other = plan.clone();
        other.seed = 99;
        let e = execute(&dir, &other, &RunOptions::default(), &compute, &Silent);
        assert!(e.is_err_and(|e| e.to_string().contains("different plan")));
        Ok(())
    }
}
