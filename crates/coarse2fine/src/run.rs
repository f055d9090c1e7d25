//! Executing a [`RunPlan`]: the incremental stages with growth between them, then the
//! from-scratch baseline, into one run folder that survives interruption.
//!
//! ```text
//! RUN/run.json                         the validated plan (a re-run must match it)
//! RUN/incremental/stage-K/grown/       the grown start checkpoint (K ≥ 2)
//! RUN/incremental/stage-K/growth.json  its checks and timings
//! RUN/incremental/stage-K/metrics.jsonl, checkpoint/, done.json
//! RUN/baseline/metrics.jsonl, checkpoint/, done.json
//! RUN/PART/override.json               a learning rate set with --retry-lr, if any
//! RUN/events.jsonl                     every event on one clock per curve (when finished)
//! ```
//!
//! Each stage and the baseline is a *part*: one [`TrainJob`] whose events are already
//! placed on their curve. Every file is written atomically and `done.json` only after its
//! part's final checkpoint, so running the same plan again continues from the last
//! checkpoint: finished parts are skipped, a part in progress resumes exactly, a growth
//! step is redone if it was cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::backend::{Compute, Network};
use crate::checkpoint::{Checkpoint, EvalSummary};
use crate::clock::Clock;
use crate::data::loader::{Batch, Normalizer, make_batch};
use crate::error::{Error, Result};
pub use crate::events::CurveKind;
use crate::events::{Event, Place, What, read_events};
use crate::fsutil::{self, OutputLock, Ownership};
use crate::grow::GrowOp;
use crate::grow::verify::{self, Growth, Verification};
use crate::hyper::{Hyper, LrSchedule, StopAt};
use crate::metrics::Confusion;
use crate::net::{NetSpec, WeightMap};
use crate::plan::{Budget, MomentumState, RunPlan, Schedule, StageBudget};
use crate::progress::Progress;
use crate::train::{
    CHECKPOINT_DIR, Cadence, METRICS_FILE, Start, TrainData, TrainJob, latest_checkpoint,
};

/// The run folder's manifest.
pub const RUN_FILE: &str = "run.json";
/// The run-wide event log.
pub const EVENTS_FILE: &str = "events.jsonl";
/// `format` of `run.json`.
pub const RUN_FORMAT: &str = "coarse2fine-run";
/// Version of `run.json` written by this build. Version 2 places each part's events on
/// its curve; a version-1 run folder can still be reported, not continued.
pub const RUN_VERSION: u32 = 2;

const DONE: &str = "done.json";
const GROWTH: &str = "growth.json";
const GROWN: &str = "grown";
const OVERRIDE: &str = "override.json";
const SWEEP: &str = "sweep.json";

/// `baseline/sweep.json` of a run whose baseline rate a sweep chose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    /// The chosen base learning rate.
    pub chosen: f32,
    /// Every rate tried, with its baseline's final validation and test top-1.
    pub tried: Vec<SweepEntry>,
}

/// One rate of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepEntry {
    /// Base learning rate.
    pub lr: f32,
    /// Final validation top-1.
    pub val_top1: f64,
    /// Final test top-1.
    pub test_top1: Option<f64>,
}

/// The sweep record of run folder `dir`, if its baseline's rate was chosen by one.
pub fn sweep_record(dir: &Path) -> Option<SweepRecord> {
    fsutil::read_json(&baseline_dir(dir).join(SWEEP)).ok()
}

/// A run folder of `c2f run`.
pub const PLAN_RUN: Ownership = Ownership {
    what: "run folder",
    marked: |dir| fsutil::has_format(&dir.join(RUN_FILE), RUN_FORMAT),
    entry: Some(|n| [RUN_FILE, EVENTS_FILE, "incremental", "baseline"].contains(&n)),
};

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    /// Always [`RUN_FORMAT`].
    pub format: String,
    /// [`RUN_VERSION`] when written.
    pub version: u32,
    /// The validated plan.
    pub plan: RunPlan,
}

impl RunManifest {
    /// Reads and checks `dir/run.json` (versions 1 and 2).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_FILE);
        if !path.is_file() {
            return Err(Error::format(
                dir,
                format!("not a run folder: no {RUN_FILE} (made by `c2f run`)"),
            ));
        }
        let m: RunManifest = fsutil::read_json(&path)?;
        if m.format != RUN_FORMAT || !(1..=RUN_VERSION).contains(&m.version) {
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

/// `growth.json` of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrowthRecord {
    ops: Vec<GrowOp>,
    checks: Vec<Verification>,
    grow_seconds: f64,
    check_seconds: f64,
}

impl GrowthRecord {
    /// The growth event of stage `stage` (from `from_size` to `size`), on a curve whose
    /// clock read `before` when the growth began.
    fn event(
        &self,
        place: Place,
        from_size: usize,
        iter: u64,
        images: u64,
        before: Clock,
    ) -> Event {
        let seen = |c: &Verification| c.data.unwrap_or(c.random);
        Event {
            what: What::Growth {
                from_size,
                ops: self.ops.iter().map(GrowOp::describe).collect(),
                exact: self.checks.iter().all(|c| c.exact),
                rel: self.checks.iter().map(|c| seen(c).rel).fold(0.0, f64::max),
                top1_agreement: self
                    .checks
                    .iter()
                    .map(|c| seen(c).top1_agreement)
                    .fold(1.0, f64::min),
                seconds: self.grow_seconds,
            },
            place: Some(place),
            iter,
            images,
            epoch: None,
            clock: before.after_growth(self.grow_seconds, self.check_seconds),
        }
    }
}

/// `done.json` of a part: its own iterations and images, the curve's clock at its end,
/// its last evaluation and the confusion matrix of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartDone {
    iterations: u64,
    images: u64,
    #[serde(flatten)]
    clock: Clock,
    last_eval: Option<EvalSummary>,
    /// The last evaluation on the validation split, if the data has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val: Option<EvalSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confusion: Option<Confusion>,
}

/// A learning rate (and policy) set with `--retry-lr` for the part in progress: it
/// applies from the part's last checkpoint on, and is kept in the part's `override.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Base learning rate.
    pub base_lr: f32,
    /// Learning-rate policy (`None`: the plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_policy: Option<crate::lr::LrPolicy>,
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
    /// Continue the part in progress (one whose loss diverged, say) from its last
    /// checkpoint with this learning rate.
    pub retry: Option<Retry>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 0,
            check_images: 500,
            stop: None,
            retry: None,
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
    /// Parts skipped because they were already done.
    pub skipped: usize,
}

/// Folder of stage `k` (0-based).
pub fn stage_dir(run: &Path, k: usize) -> PathBuf {
    run.join("incremental").join(format!("stage-{}", k + 1))
}

/// Folder of the incremental curve's continuation outside coarse2fine (`c2f import
/// --into`), after its last stage.
pub fn handoff_dir(run: &Path) -> PathBuf {
    run.join("incremental").join("handoff")
}

/// Where the incremental curve ended, once every stage is done: iterations, images and
/// the clock.
pub fn incremental_end(dir: &Path, plan: &RunPlan) -> Option<(u64, u64, Clock)> {
    if plan.stages.is_empty() {
        return None;
    }
    let mut end = (0, 0, Clock::default());
    for k in 0..plan.stages.len() {
        let d: PartDone = fsutil::read_json(&stage_dir(dir, k).join(DONE)).ok()?;
        end = (end.0 + d.iterations, end.1 + d.images, d.clock);
    }
    Some(end)
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
    d.normalise_with(&stats);
    Ok(d)
}

/// Creates the run folder for `plan`, or checks that the one there holds the same plan.
fn open_run_folder(dir: &Path, plan: &RunPlan) -> Result<()> {
    // A run killed while writing leaves temporary files; they must not make its folder look
    // foreign to the command that resumes it.
    fsutil::clean_stale(dir)?;
    fsutil::check_output(dir, &PLAN_RUN, &[&plan.data])?;
    if dir.join(RUN_FILE).exists() {
        let old = RunManifest::load(dir)?;
        if old.version != RUN_VERSION {
            return Err(Error::format(
                dir.join(RUN_FILE),
                format!(
                    "a run of format version {} (an older c2f) cannot be continued; report it, or start the plan in a new --out",
                    old.version
                ),
            ));
        }
        if old.plan != *plan {
            return Err(Error::invalid(format!(
                "{}: this folder holds a run of a different plan (or other settings); choose a new --out",
                dir.display()
            )));
        }
        return Ok(());
    }
    fsutil::create_dir_all(dir)?;
    let manifest = RunManifest {
        format: RUN_FORMAT.into(),
        version: RUN_VERSION,
        plan: plan.clone(),
    };
    fsutil::write_json_atomic(&dir.join(RUN_FILE), &manifest)
}

/// How a part that has no checkpoint yet begins.
enum Begin<'a> {
    /// Fresh weights for this spec.
    Fresh(&'a crate::net::NetSpec),
    /// Stage `k` grown from the previous stage's final checkpoint.
    Grown { k: usize, from: &'a Checkpoint },
}

/// One stage or the baseline, ready to run.
struct Part<'a> {
    dir: PathBuf,
    place: Place,
    hyper: Hyper,
    stop: StopAt,
    /// Leave early for the next stage (an `auto` stage).
    leave: Option<crate::train::Leave>,
    schedule: LrSchedule,
    eval_every: u64,
    /// Iterations and images of the curve before this part.
    origin: (u64, u64),
    /// The curve's clock when this part begins.
    clock: Clock,
    begin: Begin<'a>,
    reset_momentum: bool,
}

/// The curve so far: what the last finished part left, and the iterations an early-leaving
/// stage passed on to the next.
struct Curve {
    last: Option<(PartDone, Checkpoint)>,
    iterations: u64,
    images: u64,
    carry: u64,
}

impl Curve {
    fn new() -> Self {
        Self {
            last: None,
            iterations: 0,
            images: 0,
            carry: 0,
        }
    }

    fn clock(&self) -> Clock {
        self.last
            .as_ref()
            .map_or(Clock::default(), |(d, _)| d.clock)
    }

    /// Adds a finished stage whose planned budget was `planned`.
    fn push(&mut self, done: PartDone, ckpt: Checkpoint, planned: &StageBudget) {
        self.carry = match *planned {
            StageBudget::Iterations(n) => (n + self.carry).saturating_sub(done.iterations),
            StageBudget::Seconds(_) => 0,
        };
        self.iterations += done.iterations;
        self.images += done.images;
        self.last = Some((done, ckpt));
    }
}

/// Runs (or continues) `plan` in `dir`.
pub fn execute(
    dir: &Path,
    plan: &RunPlan,
    opts: &RunOptions,
    compute: &Compute,
    progress: &dyn Progress,
) -> Result<RunOutcome> {
    let _lock = OutputLock::acquire(dir)?;
    open_run_folder(dir, plan)?;
    let runner = Runner {
        dir,
        plan,
        opts,
        compute,
        progress,
        parts: if plan.sweep.is_some() {
            1
        } else {
            plan.stages.len() + usize::from(plan.baseline.is_some())
        },
    };
    runner.place_retry()?;
    let mut outcome = RunOutcome {
        incremental: None,
        baseline: None,
        incremental_time: 0.0,
        baseline_time: 0.0,
        skipped: 0,
    };
    let mut curve = Curve::new();
    if plan.sweep.is_none() {
        for k in 0..plan.stages.len() {
            let part = runner.stage(k, &curve)?;
            let (done, ckpt, skip) = runner.run_part(&part, k)?;
            outcome.skipped += usize::from(skip);
            curve.push(done, ckpt, &plan.stages[k].budget);
        }
        let (inc, _) = curve
            .last
            .as_ref()
            .ok_or_else(|| Error::invalid("the plan has no stages"))?;
        outcome.incremental = inc.last_eval;
        outcome.incremental_time = inc.clock.time_s;
    }
    if let Some(part) = runner.baseline(&curve)? {
        let index = runner.parts - 1;
        let (done, _, skip) = runner.run_part(&part, index)?;
        outcome.skipped += usize::from(skip);
        outcome.baseline = done.last_eval;
        outcome.baseline_time = done.clock.train_s;
    }
    write_events(dir, plan)?;
    progress.overall(runner.parts as u64, runner.parts as u64, "done");
    Ok(outcome)
}

/// What every part of one execution shares.
struct Runner<'a> {
    dir: &'a Path,
    plan: &'a RunPlan,
    opts: &'a RunOptions,
    compute: &'a Compute,
    progress: &'a dyn Progress,
    parts: usize,
}

impl Runner<'_> {
    fn part_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = (0..self.plan.stages.len())
            .map(|k| stage_dir(self.dir, k))
            .collect();
        if self.plan.baseline.is_some() {
            dirs.push(baseline_dir(self.dir));
        }
        dirs
    }

    /// Records `--retry-lr` for the part in progress: the first one not done, which must
    /// have started.
    fn place_retry(&self) -> Result<()> {
        let Some(retry) = &self.opts.retry else {
            return Ok(());
        };
        let mut check = self.plan.stages[0].hyper.clone();
        check.base_lr = retry.base_lr;
        check.lr_policy = retry.lr_policy.clone().unwrap_or(check.lr_policy);
        check
            .validate()
            .map_err(|e| Error::invalid(format!("--retry-lr: {e}")))?;
        let dirs = self.part_dirs();
        let Some(part) = dirs.iter().find(|d| !d.join(DONE).is_file()) else {
            return Err(Error::invalid(format!(
                "--retry-lr: every part of {} is finished; there is nothing to continue",
                self.dir.display()
            )));
        };
        if !part.join(METRICS_FILE).is_file() {
            return Err(Error::invalid(format!(
                "--retry-lr: {} has not started; change the plan's lr instead",
                part.display()
            )));
        }
        fsutil::write_json_atomic(&part.join(OVERRIDE), retry)
    }

    /// Stage `k`, after the parts of `curve`.
    fn stage<'c>(&'c self, k: usize, curve: &'c Curve) -> Result<Part<'c>> {
        let stages = &self.plan.stages;
        let stage = &stages[k];
        let clock = curve.clock();
        let begin = match &curve.last {
            Some((_, from)) => Begin::Grown { k, from },
            None => Begin::Fresh(&stage.spec),
        };
        let stop = match stage.budget {
            StageBudget::Iterations(n) => StopAt::Iterations(n + curve.carry),
            StageBudget::Seconds(s) => StopAt::TrainSeconds(clock.train_s + s),
        };
        let global = self.plan.schedule == Schedule::Global;
        let total = if global {
            stages
                .iter()
                .map(|s| match s.budget {
                    StageBudget::Iterations(n) => n,
                    StageBudget::Seconds(_) => 0,
                })
                .sum()
        } else {
            stop.iterations().unwrap_or(0)
        };
        let leave = match (stage.auto, stages.get(k + 1)) {
            (true, Some(next)) => Some(crate::train::Leave {
                next: next.spec.clone(),
                next_batch: next.hyper.batch_size,
            }),
            _ => None,
        };
        Ok(Part {
            dir: stage_dir(self.dir, k),
            place: Place {
                curve: CurveKind::Incremental,
                stage: k + 1,
                size: stage.size,
            },
            hyper: stage.hyper.clone(),
            stop,
            leave,
            schedule: LrSchedule {
                offset: if global { curve.iterations } else { 0 },
                total,
                warmup: stage.warmup,
            },
            eval_every: stage.eval_every,
            origin: (curve.iterations, curve.images),
            clock,
            begin,
            reset_momentum: stage.momentum_state == MomentumState::Reset,
        })
    }

    /// The baseline, if the plan has one: the final stage's net (same layers and shapes as
    /// grown), fresh weights, for the incremental curve's time or images (a sweep run: the
    /// images the plan's stages would see, at the sweep's rate; a run of a plan with a
    /// sweep: at the rate the sweep chose).
    fn baseline(&self, curve: &Curve) -> Result<Option<Part<'_>>> {
        let (Some(b), Some(last)) = (&self.plan.baseline, self.plan.stages.last()) else {
            return Ok(None);
        };
        let mut hyper = b.hyper.clone();
        if let Some(lr) = self.plan.sweep {
            hyper.base_lr = lr;
        } else if !self.plan.baseline_lrs.is_empty() {
            hyper.base_lr = self.swept_rate()?;
        }
        let images = match self.plan.sweep {
            Some(_) => self.plan.planned_images().unwrap_or(0),
            None => curve.images,
        };
        let stop = match b.budget {
            Budget::Time => StopAt::TrainSeconds(curve.clock().time_s),
            Budget::Images => StopAt::Iterations(images.div_ceil(hyper.batch_size as u64).max(1)),
        };
        Ok(Some(Part {
            dir: baseline_dir(self.dir),
            place: Place {
                curve: CurveKind::Baseline,
                stage: 1,
                size: last.size,
            },
            stop,
            leave: None,
            schedule: LrSchedule {
                offset: 0,
                total: stop.iterations().unwrap_or(0),
                warmup: 0,
            },
            hyper,
            eval_every: b.eval_every,
            origin: (0, 0),
            clock: Clock::default(),
            begin: Begin::Fresh(&last.spec),
            reset_momentum: false,
        }))
    }

    /// The baseline rate the sweep chose: the swept rate whose baseline ended with the best
    /// validation top-1 (ties to the smaller rate), recorded in `baseline/sweep.json`.
    fn swept_rate(&self) -> Result<f32> {
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        let first = self.plan.variant_first;
        let mut tried = Vec::new();
        for (lr, folder) in self.plan.sweep_folders(first) {
            let done = baseline_dir(&parent.join(&folder)).join(DONE);
            let d: PartDone = fsutil::read_json(&done).map_err(|_| {
                Error::invalid(format!(
                    "{}: the baseline's learning-rate sweep has not finished (run the plan's sweep runs, indices {first} to {}, first)",
                    done.display(),
                    first + self.plan.baseline_lrs.len() - 1
                ))
            })?;
            let val = d
                .val
                .map(|v| v.top1)
                .ok_or_else(|| Error::format(&done, "has no validation accuracy to choose by"))?;
            tried.push(SweepEntry {
                lr,
                val_top1: val,
                test_top1: d.last_eval.map(|e| e.top1),
            });
        }
        let best = tried
            .iter()
            .fold(None::<&SweepEntry>, |b, e| match b {
                Some(b) if b.val_top1 >= e.val_top1 => Some(b),
                _ => Some(e),
            })
            .ok_or_else(|| Error::invalid("the sweep has no rates"))?;
        let chosen = best.lr;
        fsutil::create_dir_all(&baseline_dir(self.dir))?;
        let record = SweepRecord { chosen, tried };
        fsutil::write_json_atomic(&baseline_dir(self.dir).join(SWEEP), &record)?;
        Ok(chosen)
    }

    /// Runs part number `index` (0-based over stages then baseline) unless it is done.
    /// Returns its totals, its final checkpoint and whether it was skipped.
    fn run_part(&self, part: &Part<'_>, index: usize) -> Result<(PartDone, Checkpoint, bool)> {
        self.announce(part, index)?;
        if let Ok(done) = fsutil::read_json::<PartDone>(&part.dir.join(DONE)) {
            self.progress.note("  already done");
            let ckpt = Checkpoint::load(&part.dir.join(CHECKPOINT_DIR))?;
            return Ok((done, ckpt, true));
        }
        let mut hyper = part.hyper.clone();
        if let Ok(o) = fsutil::read_json::<Retry>(&part.dir.join(OVERRIDE)) {
            hyper.base_lr = o.base_lr;
            if let Some(p) = o.lr_policy {
                hyper.lr_policy = p;
            }
        }
        let start = match latest_checkpoint(&part.dir)? {
            Some(c) => self.resumed(c, &hyper, part)?,
            None => self.begun(part)?,
        };
        let job = TrainJob {
            dir: part.dir.clone(),
            data: open_data(self.plan, part.place.size)?,
            start,
            hyper,
            stop: part.stop,
            schedule: part.schedule,
            cadence: Cadence {
                eval_every: part.eval_every,
                eval_at_start: true,
                log_every: 10,
                checkpoint_every: match self.opts.checkpoint_every {
                    0 => part.eval_every,
                    n => n,
                },
                eval_batch: 500,
            },
            place: Some(part.place),
            origin: part.origin,
            replace: false,
            lock: None,
            leave: part.leave.clone(),
        };
        let fin = job.run(self.compute, self.progress, self.opts.stop.as_deref())?;
        let m = &fin.checkpoint.meta;
        let done = PartDone {
            iterations: m.iteration,
            images: m.images_seen,
            clock: m.clock(),
            last_eval: m.last_eval,
            val: fin.val,
            confusion: fin.confusion,
        };
        fsutil::write_json_atomic(&part.dir.join(DONE), &done)?;
        Ok((done, fin.checkpoint, false))
    }

    fn announce(&self, part: &Part<'_>, index: usize) -> Result<()> {
        let (label, n) = (self.plan.label(), self.parts);
        let size = part.place.size;
        let what = match part.place.curve {
            CurveKind::Incremental => format!("stage {}", part.place.stage),
            CurveKind::Baseline => "baseline".to_string(),
        };
        self.progress.overall(
            index as u64,
            n as u64,
            &format!("{label}: {what} at {size}×{size}"),
        );
        let detail = match &part.begin {
            Begin::Fresh(spec) => format!("{} ({} parameters)", spec.name, spec.num_params()?),
            Begin::Grown { k, .. } => {
                let s = &self.plan.stages[*k];
                let ops: Vec<String> = s.grow.iter().map(GrowOp::describe).collect();
                format!(
                    "{} ({} parameters), grown by {}",
                    s.spec.name,
                    s.spec.num_params()?,
                    if ops.is_empty() {
                        "nothing".into()
                    } else {
                        ops.join(", ")
                    }
                )
            }
        };
        let budget = match (part.place.curve, part.stop) {
            (CurveKind::Baseline, StopAt::TrainSeconds(s)) => {
                format!(" for {s:.1} s of training (the incremental run's)")
            }
            (CurveKind::Baseline, StopAt::Iterations(n)) => {
                format!(" for {n} iterations (the incremental run's images)")
            }
            _ => String::new(),
        };
        self.progress.note(&format!(
            "[{}/{n}] {label}: {what} at {size}×{size}: {detail}{budget}",
            index + 1
        ));
        Ok(())
    }

    /// The start of a part continued from its checkpoint `c`. Its settings must be the
    /// plan's, or differ only in the learning rate set by `--retry-lr`.
    fn resumed(&self, c: Checkpoint, hyper: &Hyper, part: &Part<'_>) -> Result<Start> {
        let retried = part.dir.join(OVERRIDE).is_file();
        if c.meta.hyper != *hyper && !(retried && c.meta.hyper.same_but_rate(hyper)) {
            return Err(Error::format(
                part.dir.join(CHECKPOINT_DIR),
                format!(
                    "trained with other settings than the plan's ({})",
                    c.meta.hyper.differences(hyper).join(", ")
                ),
            ));
        }
        self.progress
            .note(&format!("  resuming at iteration {}", c.meta.iteration));
        let changed = c.meta.hyper.differences(hyper);
        Ok(Start {
            changed,
            ..Start::resume(c)
        })
    }

    /// The start of a part that has no checkpoint yet.
    fn begun(&self, part: &Part<'_>) -> Result<Start> {
        match part.begin {
            Begin::Fresh(spec) => {
                let w = WeightMap::init(spec, self.plan.init, self.plan.seed)?;
                Ok(Start {
                    clock: part.clock,
                    ..Start::fresh(spec.clone(), w)
                })
            }
            Begin::Grown { k, from } => {
                let (grown, record) = self.grow_stage(k, from)?;
                let clock = part
                    .clock
                    .after_growth(record.grow_seconds, record.check_seconds);
                let mut s = Start::from_checkpoint(grown, clock);
                if part.reset_momentum {
                    s.momentum = Some(WeightMap::zeros_for(&s.spec)?);
                }
                Ok(s)
            }
        }
    }

    /// Grows the previous stage's checkpoint into stage `k`'s start, or reuses a growth
    /// that completed before an interruption.
    fn grow_stage(&self, k: usize, prev: &Checkpoint) -> Result<(Checkpoint, GrowthRecord)> {
        let sdir = stage_dir(self.dir, k);
        let stage = &self.plan.stages[k];
        if let (Ok(record), Ok(grown)) = (
            fsutil::read_json::<GrowthRecord>(&sdir.join(GROWTH)),
            Checkpoint::load(&sdir.join(GROWN)),
        ) {
            return Ok((grown, record));
        }
        let data = open_data(self.plan, self.plan.stages[k - 1].size)?;
        let norm = Normalizer::new(&data.test.stats);
        let n = self.opts.check_images.min(data.test.set.len());
        let idx: Vec<usize> = (0..n).collect();
        let batches: Vec<Batch> = idx
            .chunks(500)
            .map(|c| make_batch(&data.test.set, &norm, c))
            .collect();
        let growth = Growth {
            ops: &stage.grow,
            batches: &batches,
            seed: self.plan.seed.wrapping_add(2000 + k as u64),
        };
        let progress = self.progress;
        let grown = verify::grow_checked(
            &prev.spec,
            &prev.weights,
            Some(&prev.optimizer),
            &growth,
            self.compute,
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
        // Recalibration is part of growing: its seconds count as growth's.
        let started = std::time::Instant::now();
        let weights = if stage.recalibrate > 0 {
            self.recalibrate(k, &grown.spec, &grown.weights)?
        } else {
            grown.weights
        };
        let recalibrate_seconds = started.elapsed().as_secs_f64();
        let ckpt = Checkpoint {
            spec: grown.spec,
            weights,
            optimizer,
            meta,
        };
        ckpt.save(&sdir.join(GROWN))?;
        let record = GrowthRecord {
            ops: stage.grow.clone(),
            checks: grown.checks,
            grow_seconds: grown.grow_seconds + recalibrate_seconds,
            check_seconds: grown.check_seconds,
        };
        fsutil::write_json_atomic(&sdir.join(GROWTH), &record)?;
        Ok((ckpt, record))
    }

    /// The weights of stage `k`'s grown net with its batch norms recalibrated on the
    /// stage's `recalibrate` training images ([`crate::train::recalibrate`]).
    fn recalibrate(&self, k: usize, spec: &NetSpec, weights: &WeightMap) -> Result<WeightMap> {
        let stage = &self.plan.stages[k];
        let data = open_data(self.plan, stage.size)?;
        let norm = Normalizer::new(&data.train.stats);
        let mut net = Network::new(spec, weights, self.compute)?;
        let images = usize::try_from(stage.recalibrate).unwrap_or(usize::MAX);
        let (used, updated) = crate::train::recalibrate(
            &mut net,
            (&data.train.set, &norm),
            images,
            stage.hyper.batch_size,
        )?;
        self.progress.note(&format!(
            "  batch norms recalibrated: {updated} on {used} training images at {}×{}",
            stage.size, stage.size
        ));
        net.weights()
    }
}

/// Every event of a run on one clock per curve: each part's log (already placed on its
/// curve) and, before each grown stage's, its growth event. Parts not yet started add
/// nothing, so this also reads a run in progress.
pub fn collect_events(dir: &Path, plan: &RunPlan) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut prev: Option<PartDone> = None;
    let (mut iter0, mut images0) = (0u64, 0u64);
    let mut done = 0;
    for (k, stage) in plan.stages.iter().enumerate() {
        let sdir = stage_dir(dir, k);
        if let Some(p) = &prev {
            let Ok(g) = fsutil::read_json::<GrowthRecord>(&sdir.join(GROWTH)) else {
                break;
            };
            let place = Place {
                curve: CurveKind::Incremental,
                stage: k + 1,
                size: stage.size,
            };
            out.push(g.event(place, plan.stages[k - 1].size, iter0, images0, p.clock));
        }
        read_part(&sdir, &mut out)?;
        match fsutil::read_json::<PartDone>(&sdir.join(DONE)) {
            Ok(d) => {
                iter0 += d.iterations;
                images0 += d.images;
                prev = Some(d);
                done += 1;
            }
            Err(_) => break,
        }
    }
    // Only a finished curve can have been continued elsewhere.
    if done > 0 && done == plan.stages.len() {
        read_part(&handoff_dir(dir), &mut out)?;
    }
    read_part(&baseline_dir(dir), &mut out)?;
    Ok(out)
}

fn read_part(dir: &Path, out: &mut Vec<Event>) -> Result<()> {
    let path = dir.join(METRICS_FILE);
    if path.is_file() {
        out.extend(read_events(&path)?);
    }
    Ok(())
}

/// Writes `dir/events.jsonl` from the parts' logs.
pub fn write_events(dir: &Path, plan: &RunPlan) -> Result<()> {
    fsutil::write_jsonl_atomic(&dir.join(EVENTS_FILE), &collect_events(dir, plan)?)
}

/// The confusion matrices of a run's final incremental net and its baseline, where
/// finished. A curve continued elsewhere (a hand-off) has none: its last stage's would
/// not be its final net's.
pub fn final_confusions(dir: &Path, plan: &RunPlan) -> Vec<(CurveKind, Confusion)> {
    let last = if handoff_dir(dir).exists() {
        handoff_dir(dir)
    } else {
        stage_dir(dir, plan.stages.len().saturating_sub(1))
    };
    [
        (CurveKind::Incremental, last),
        (CurveKind::Baseline, baseline_dir(dir)),
    ]
    .into_iter()
    .filter_map(|(kind, d)| {
        let done: PartDone = fsutil::read_json(&d.join(DONE)).ok()?;
        Some((kind, done.confusion?))
    })
    .collect()
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
    fn rates(events: &[Event]) -> Vec<(u64, f32)> {
        events
            .iter()
            .filter(|e| e.curve() == Some(CurveKind::Incremental))
            .filter_map(|e| match e.what {
                What::Train { lr, .. } => Some((e.iter, lr)),
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
        let (s1, s2) = (
            (s1.iterations, s1.clock.train_s),
            (s2.iterations, s2.clock.train_s),
        );
        // Stage 2 trained until its training seconds reached the budget, then stopped.
        assert_eq!(s1.0, 20);
        assert!(s2.0 > 0);
        assert!(s2.1 - s1.1 >= 0.5, "{} − {}", s2.1, s1.1);
        let events = read_events(&dir.join(EVENTS_FILE))?;
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

    /// `recalibrate = N`: the checkpoint the grown stage starts from holds new running
    /// statistics, and every other tensor as the growth left it (a resize: unchanged).
    #[test]
    fn recalibration_after_a_resize_changes_only_running_statistics() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let text = PLAN
            .replace("DATA", &data.display().to_string())
            .replace("net = \"net-4\"", "net = \"bn-cnn\"")
            .replace(
                "grow = [{ op = \"upscale\" }, { op = \"widen\", layer = \"fc6\", add = 8, init = \"gauss:0.01\" }]",
                "grow = [{ op = \"upscale\", mode = \"resize\" }]\nrecalibrate = 40",
            )
            .replace("budget = \"images\"", "enabled = false");
        let plan = PlanFile::parse(Path::new("p.toml"), &text)?.resolve(0, None)?;
        assert_eq!(plan.stages[1].recalibrate, 40);
        let compute = Compute::new(BackendKind::Cpu)?;
        let dir = tmp.path().join("run");
        execute(&dir, &plan, &RunOptions::default(), &compute, &Silent)?;
        let before = Checkpoint::load(&stage_dir(&dir, 0).join(crate::train::CHECKPOINT_DIR))?;
        let grown = Checkpoint::load(&stage_dir(&dir, 1).join(GROWN))?;
        let mut recalibrated = 0;
        for (name, t) in before.weights.iter() {
            let g = grown
                .weights
                .get(name)
                .expect("the resize keeps every tensor");
            if name.contains("running") {
                assert_ne!(g, t, "{name}");
                recalibrated += 1;
            } else {
                assert_eq!(g, t, "{name}");
            }
        }
        assert_eq!(recalibrated, 6);
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
        let events = read_events(&dir.join(EVENTS_FILE))?;

        // The growth is recorded between the stages, exact, with its check.
        let growth: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e.what, What::Growth { .. }))
            .collect();
        assert_eq!(growth.len(), 1);
        let What::Growth {
            exact, rel, ops, ..
        } = &growth[0].what
        else {
            unreachable!()
        };
        let (stage, clock) = (growth[0].place.map(|p| p.stage), growth[0].clock);
        assert_eq!((stage, *exact, ops.len()), (Some(2), true, 2));
        assert!(*rel <= verify::EXACT_TOLERANCE, "rel {rel}");

        // One clock per curve: iterations and time only grow; stage 2 continues stage 1.
        for kind in [CurveKind::Incremental, CurveKind::Baseline] {
            let evals: Vec<(u64, f64)> = events
                .iter()
                .filter(|e| e.is_eval() && e.curve() == Some(kind))
                .map(|e| (e.iter, e.clock.time_s))
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
            .filter(|e| e.is_eval() && e.curve() == Some(CurveKind::Incremental))
            .map(|e| e.iter)
            .max();
        assert_eq!(last_inc_iter, Some(50));
        assert!(clock.time_s >= clock.grow_s && clock.grow_s > 0.0);
        // Same images: 50 iterations of 16.
        let base_images = events
            .iter()
            .rev()
            .find(|e| e.is_eval() && e.curve() == Some(CurveKind::Baseline))
            .map(|e| e.images);
        assert_eq!(base_images, Some(800));
        assert!(first.baseline.is_some() && first.incremental.is_some());

        // Running the same plan again finds everything done and changes nothing.
        let again = execute(&dir, &plan, &RunOptions::default(), &compute, &Silent)?;
        assert_eq!(again.skipped, 3);
        assert_eq!(again.incremental, first.incremental);
        assert_eq!(read_events(&dir.join(EVENTS_FILE))?, events);

        // Another plan cannot reuse the folder.
        let mut other = plan.clone();
        other.seed = 99;
        let e = execute(&dir, &other, &RunOptions::default(), &compute, &Silent);
        assert!(e.is_err_and(|e| e.to_string().contains("different plan")));
        Ok(())
    }
}
