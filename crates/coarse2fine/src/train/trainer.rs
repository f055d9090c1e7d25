//! [`TrainJob`] and the [`Trainer`] that runs it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{CHECKPOINT_DIR, Evaluation, METRICS_FILE, PREVIOUS_DIR, TrainData, evaluate};
use crate::backend::{self, Compute, Network, Sgd};
use crate::checkpoint::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoint, CheckpointMeta};
use crate::clock::{Aside, Clock, Stopwatch};
use crate::data::loader::{Batch, Normalizer, Prefetcher};
use crate::error::{Error, Result};
use crate::events::{Event, EventLog, Place, What};
use crate::fsutil::{self, OutputLock};
use crate::grow::verify::Verification;
use crate::hyper::{Hyper, LrSchedule, StopAt};
use crate::metrics::{Confusion, EvalSummary};
use crate::net::{NetSpec, WeightMap};
use crate::progress::Progress;

/// Where a job starts: fresh or initial weights at iteration 0, or a checkpoint to continue.
#[derive(Debug, Clone)]
pub struct Start {
    /// Bound spec.
    pub spec: NetSpec,
    /// Weights.
    pub weights: WeightMap,
    /// Momentum buffers (`None`: zeros).
    pub momentum: Option<WeightMap>,
    /// Iterations of this part already done.
    pub iteration: u64,
    /// Images of this part already consumed.
    pub images: u64,
    /// The curve's clock so far.
    pub clock: Clock,
    /// Growth history carried into the new checkpoints.
    pub growth: Vec<Verification>,
    /// Settings changed on resuming (logged as a settings event), e.g. `lr 0.1 → 0.01`.
    pub changed: Vec<String>,
}

impl Start {
    /// A fresh start with the given weights.
    pub fn fresh(spec: NetSpec, weights: WeightMap) -> Self {
        Self {
            spec,
            weights,
            momentum: None,
            iteration: 0,
            images: 0,
            clock: Clock::default(),
            growth: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// A fresh part (iteration 0) from a checkpoint's spec, weights and momentum buffers,
    /// e.g. a grown one, on the curve's clock so far.
    pub fn from_checkpoint(c: Checkpoint, clock: Clock) -> Self {
        Self {
            momentum: Some(c.optimizer),
            growth: c.meta.growth,
            clock,
            ..Self::fresh(c.spec, c.weights)
        }
    }

    /// Continues checkpoint `c` exactly where it stopped.
    pub fn resume(c: Checkpoint) -> Self {
        let m = &c.meta;
        Self {
            iteration: m.iteration,
            images: m.images_seen,
            clock: m.clock(),
            growth: m.growth.clone(),
            spec: c.spec,
            weights: c.weights,
            momentum: Some(c.optimizer),
            changed: Vec::new(),
        }
    }
}

/// How often a job logs, evaluates and saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
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
}

/// One validated training job: everything needed to train, nothing left to check.
#[derive(Debug)]
pub struct TrainJob {
    /// Run folder: `metrics.jsonl` and the checkpoints.
    pub dir: PathBuf,
    /// The data at the job's size.
    pub data: TrainData,
    /// Where it starts (its spec is bound to the data).
    pub start: Start,
    /// Hyper-parameters (validated).
    pub hyper: Hyper,
    /// When it stops.
    pub stop: StopAt,
    /// How the learning rate runs.
    pub schedule: LrSchedule,
    /// Logging, evaluation and checkpoint intervals.
    pub cadence: Cadence,
    /// Where on a run its events lie (`None` for `c2f train`).
    pub place: Option<Place>,
    /// Iterations and images of the curve before this part, added to its events'.
    pub origin: (u64, u64),
    /// Clear the folder's old run first (`--force`).
    pub replace: bool,
    /// The output folder's lock, held while the job runs (`c2f train`; a plan locks its
    /// whole run folder instead).
    pub lock: Option<OutputLock>,
    /// Leave early for the next stage by the validation rule (a plan's `auto` stage).
    pub leave: Option<Leave>,
}

/// What a stage that may leave early needs to know of the next one: its net and batch, to
/// price a step of it.
#[derive(Debug, Clone)]
pub struct Leave {
    /// The next stage's net, bound to its size.
    pub next: NetSpec,
    /// The next stage's batch size.
    pub next_batch: usize,
}

impl TrainJob {
    /// Runs the job to its end (clearing the folder's old run first if asked); see
    /// [`Trainer::run`].
    pub fn run(
        &self,
        compute: &Compute,
        progress: &dyn Progress,
        stop: Option<&AtomicBool>,
    ) -> Result<Finished> {
        if self.replace {
            for p in [METRICS_FILE, CHECKPOINT_DIR, PREVIOUS_DIR].map(|n| self.dir.join(n)) {
                fsutil::remove_path(&p)?;
            }
        }
        Trainer::new(self, compute)?.run(progress, stop)
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }
}

/// The training state of a running job: network, optimizer, clock, event log.
#[derive(Debug)]
pub struct Trainer<'a> {
    job: &'a TrainJob,
    net: Network,
    sgd: Sgd,
    watch: Stopwatch,
    log: EventLog,
    /// Iterations and images of this part so far.
    t: u64,
    images: u64,
    last_eval: Option<EvalSummary>,
    last_val: Option<EvalSummary>,
    confusion: Option<Confusion>,
    /// Whether the latest checkpoint on disk still waits for a step with a finite loss.
    unconfirmed: bool,
    /// Validation history of a stage that may leave early.
    auto: super::auto::AutoState,
}

/// What a finished job leaves: its final checkpoint, and the confusion matrix and
/// validation figures of its last evaluation (`None` when the job had nothing left to do).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The final checkpoint, as saved.
    pub checkpoint: Checkpoint,
    /// Predictions against labels at the last evaluation.
    pub confusion: Option<Confusion>,
    /// The last evaluation on the validation split.
    pub val: Option<EvalSummary>,
}

fn step_seed(seed: u64, t: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<'a> Trainer<'a> {
    /// Builds the network and optimizer of `job` and opens its event log, dropping events
    /// past the point it resumes from.
    pub fn new(job: &'a TrainJob, compute: &Compute) -> Result<Self> {
        let s = &job.start;
        s.weights
            .check_against(&s.spec, Path::new("initial weights"))?;
        fsutil::create_dir_all(&job.dir)?;
        let resumed = s.iteration > 0;
        let log = EventLog::open(
            &job.dir.join(METRICS_FILE),
            resumed,
            job.origin.0 + s.iteration,
        )?;
        let mut net = Network::new(&s.spec, &s.weights, compute)?;
        if let Some(m) = &s.momentum {
            net.set_momentum(m)?;
        }
        let sgd = Sgd::new(&net, job.hyper.momentum, job.hyper.weight_decay)
            .with_label_smoothing(job.hyper.label_smoothing);
        let mut trainer = Self {
            job,
            net,
            sgd,
            watch: Stopwatch::start(s.clock),
            log,
            t: s.iteration,
            images: s.images,
            last_eval: None,
            last_val: None,
            confusion: None,
            auto: Default::default(),
            unconfirmed: job.dir.join(PREVIOUS_DIR).exists(),
        };
        if !s.changed.is_empty() {
            trainer.log(What::Settings {
                changed: s.changed.clone(),
            })?;
        }
        Ok(trainer)
    }

    fn log(&mut self, what: What) -> Result<()> {
        let n_train = self.job.data.train.set.len() as f64;
        let e = Event {
            what,
            place: self.job.place,
            iter: self.job.origin.0 + self.t,
            images: self.job.origin.1 + self.images,
            epoch: self
                .job
                .place
                .is_none()
                .then(|| self.images as f64 / n_train),
            clock: self.watch.now(),
        };
        self.log.write(&e)
    }

    /// One SGD step on `batch` at learning rate `lr`; returns its loss. A non-finite loss
    /// stops the job with [`Error::Diverged`], after falling back to the last checkpoint
    /// whose next step had a finite loss.
    pub fn step(&mut self, batch: &Batch, lr: f32) -> Result<f32> {
        let seed = step_seed(self.job.hyper.seed, self.t);
        let loss = backend::train_step(&mut self.net, &self.sgd, batch, lr, seed)?;
        if !loss.is_finite() {
            return Err(self.diverged(loss, lr));
        }
        if self.unconfirmed {
            fsutil::remove_path(&self.job.dir.join(PREVIOUS_DIR))?;
            self.unconfirmed = false;
        }
        self.t += 1;
        self.images += batch.len() as u64;
        Ok(loss)
    }

    fn diverged(&mut self, loss: f32, lr: f32) -> Error {
        let (latest, previous) = (self.job.checkpoint_path(), self.job.dir.join(PREVIOUS_DIR));
        // The latest checkpoint's weights are the ones that just gave a non-finite loss:
        // the previous one is the last that did not.
        let restored = if self.unconfirmed && previous.exists() {
            fsutil::remove_path(&latest).and_then(|()| {
                std::fs::rename(&previous, &latest).map_err(|e| Error::io(&previous, e))
            })
        } else {
            Ok(())
        };
        let kept = match restored.and_then(|()| Checkpoint::load(&latest)) {
            Ok(c) => format!(
                "the last checkpoint whose next step had a finite loss, at iteration {}, is kept in {}",
                c.meta.iteration,
                latest.display()
            ),
            Err(_) => "no checkpoint with a finite loss had been saved".to_string(),
        };
        Error::Diverged(format!(
            "loss became {loss} at iteration {} (lr {lr}); training stopped and {kept}",
            self.t
        ))
    }

    /// Evaluates on the test split (and the validation split, if any) and logs it.
    pub fn evaluate(&mut self) -> Result<Evaluation> {
        let (net, data, batch) = (&self.net, &self.job.data, self.job.cadence.eval_batch);
        let (ev, val) = self.watch.aside(Aside::Eval, || -> Result<_> {
            let ev = evaluate(net, &data.test.set, &data.test.stats, batch)?;
            let val = match &data.val {
                Some(v) => Some(evaluate(net, &v.set, &v.stats, batch)?.summary),
                None => None,
            };
            Ok((ev, val))
        })?;
        let s = ev.summary;
        self.log(What::Eval {
            top1: s.top1,
            top5: s.top5,
            loss: s.loss,
            val_top1: val.map(|v| v.top1),
            val_loss: val.map(|v| v.loss),
        })?;
        self.last_eval = Some(s);
        self.last_val = val;
        self.confusion = Some(ev.confusion.clone());
        if let Some(v) = val {
            self.auto.record(self.t, v.top1);
        }
        Ok(ev)
    }

    /// Whether a stage that may leave early should leave now (after an evaluation); the
    /// decision and its reasons are logged.
    fn leaves(&mut self) -> Result<bool> {
        let Some(leave) = &self.job.leave else {
            return Ok(false);
        };
        let cost = |spec: &NetSpec, batch: usize| -> Result<f64> {
            Ok(spec.flops()? as f64 * batch as f64)
        };
        let ratio = cost(&self.job.start.spec, self.job.hyper.batch_size)?
            / cost(&leave.next, leave.next_batch)?.max(1.0);
        match self.auto.verdict(ratio) {
            Some(reason) => {
                self.log(What::Decision {
                    decision: format!("leave this stage at iteration {}", self.t),
                    reason,
                })?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The current state as a checkpoint.
    pub fn snapshot(&self) -> Result<Checkpoint> {
        let (job, data) = (self.job, &self.job.data);
        let mut meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            dataset: data.root.display().to_string(),
            dataset_from_checkpoint: None,
            size: data.size,
            classes: data.manifest.classes.clone(),
            normalization: data.train.stats.clone(),
            iteration: self.t,
            images_seen: self.images,
            train_seconds: 0.0,
            eval_seconds: 0.0,
            wall_seconds: 0.0,
            grow_seconds: 0.0,
            hyper: job.hyper.clone(),
            threads: backend::threads(),
            backend: self.net.backend().to_string(),
            last_eval: self.last_eval,
            growth: job.start.growth.clone(),
            checksums: Default::default(),
        };
        meta.set_clock(self.watch.now());
        Ok(Checkpoint {
            spec: job.start.spec.clone(),
            weights: self.net.weights()?,
            optimizer: self.net.momentum()?,
            meta,
        })
    }

    /// Saves a checkpoint of the current state. The one it replaces is kept as the
    /// previous checkpoint until a step has had a finite loss.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        let ckpt = self.snapshot()?;
        if let Some((name, _)) = ckpt
            .weights
            .iter()
            .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Diverged(format!(
                "{name} holds non-finite values at iteration {}; no checkpoint was saved",
                self.t
            )));
        }
        let (latest, previous) = (self.job.checkpoint_path(), self.job.dir.join(PREVIOUS_DIR));
        let keep = !self.unconfirmed && latest.exists();
        self.watch.aside(Aside::Save, || -> Result<()> {
            if keep {
                fsutil::remove_path(&previous)?;
                std::fs::rename(&latest, &previous).map_err(|e| Error::io(&latest, e))?;
            }
            ckpt.save(&latest).map(|_| ()).inspect_err(|_| {
                // A failed write (a full disk) leaves the confirmed checkpoint where it was.
                if keep && !latest.exists() {
                    let _ = std::fs::rename(&previous, &latest);
                }
            })
        })?;
        self.unconfirmed = true;
        Ok(ckpt)
    }

    fn due(every: u64, t: u64) -> bool {
        every > 0 && t.is_multiple_of(every)
    }

    /// Trains until the job's budget is met: evaluates at the start (of a fresh part) and
    /// every `eval_every` iterations, logs every `log_every`, checkpoints every
    /// `checkpoint_every` and at the end, and returns the final checkpoint. If `stop` is
    /// raised it saves a checkpoint and returns [`Error::Interrupted`].
    pub fn run(mut self, progress: &dyn Progress, stop: Option<&AtomicBool>) -> Result<Finished> {
        let (job, start) = (self.job, &self.job.start);
        let cadence = job.cadence;
        if job.stop.reached(self.t, self.watch.now().train_s) {
            // Met before it started: a crash after the final checkpoint, or a resume that
            // asks for no more iterations than were done.
            return Ok(Finished {
                checkpoint: Checkpoint::load(&job.checkpoint_path())?,
                confusion: None,
                val: None,
            });
        }
        if self.t == 0 && cadence.eval_at_start {
            self.evaluate()?;
        }
        let mut bar = ProgressBar::begin(progress, job, self.watch.now().train_s);
        let loader = Prefetcher::training(
            job.data.train.set.clone(),
            Normalizer::new(&job.data.train.stats),
            (job.hyper.seed, job.hyper.batch_size),
            (start.iteration, job.stop.iterations().unwrap_or(u64::MAX)),
            job.hyper.augment,
        );
        let mut window = LossWindow::new(self.images);
        for batch in loader {
            let lr = job.schedule.rate(&job.hyper, self.t);
            let loss = self.step(&batch, lr)?;
            window.add(loss);
            let now = self.watch.now();
            let done = job.stop.reached(self.t, now.train_s);
            bar.advance(now.train_s);
            if Self::due(cadence.log_every.max(1), self.t) || done {
                let mean = window.mean();
                self.log(What::Train { loss: mean, lr })?;
                progress.status(&window.status(mean, lr, self.images));
            }
            let mut leaving = false;
            if Self::due(cadence.eval_every, self.t) || done {
                let s = self.evaluate()?.summary;
                progress.note(&format!(
                    "iter {}: test top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
                    job.origin.0 + self.t,
                    100.0 * s.top1,
                    100.0 * s.top5,
                    s.loss
                ));
                leaving = !done && self.leaves()?;
            }
            if done || leaving {
                progress.end();
                let checkpoint = self.checkpoint()?;
                return Ok(Finished {
                    checkpoint,
                    confusion: self.confusion.take(),
                    val: self.last_val,
                });
            }
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                progress.end();
                self.checkpoint()?;
                return Err(Error::Interrupted(format!(
                    "interrupted at iteration {}; saved {}",
                    self.t,
                    job.checkpoint_path().display()
                )));
            }
            if Self::due(cadence.checkpoint_every, self.t) {
                self.checkpoint()?;
            }
        }
        Err(Error::Backend(format!(
            "data loader stopped early at iteration {}",
            self.t
        )))
    }
}

/// The progress bar of a run: in iterations, or in seconds for a time budget.
struct ProgressBar<'p> {
    progress: &'p dyn Progress,
    /// Training seconds at the start, for a time budget.
    seconds_from: Option<f64>,
    pos: u64,
}

impl<'p> ProgressBar<'p> {
    fn begin(progress: &'p dyn Progress, job: &TrainJob, train_s: f64) -> Self {
        let seconds_from = match job.stop {
            StopAt::Iterations(n) => {
                progress.begin("train", n.saturating_sub(job.start.iteration));
                None
            }
            StopAt::TrainSeconds(limit) => {
                progress.begin("train (s)", (limit - train_s).max(0.0).ceil() as u64);
                Some(train_s)
            }
        };
        Self {
            progress,
            seconds_from,
            pos: 0,
        }
    }

    fn advance(&mut self, train_s: f64) {
        let pos = match self.seconds_from {
            Some(from) => (train_s - from).max(0.0) as u64,
            None => self.pos + 1,
        };
        self.progress.advance(pos.saturating_sub(self.pos));
        self.pos = self.pos.max(pos);
    }
}

/// The mean loss since the last train event, and the throughput for the status line.
struct LossWindow {
    sum: f64,
    n: u64,
    since: (Instant, u64),
}

impl LossWindow {
    fn new(images: u64) -> Self {
        Self {
            sum: 0.0,
            n: 0,
            since: (Instant::now(), images),
        }
    }

    fn add(&mut self, loss: f32) {
        self.sum += f64::from(loss);
        self.n += 1;
    }

    fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    /// The status line; starts a new window.
    fn status(&mut self, mean: f64, lr: f32, images: u64) -> String {
        let dt = self.since.0.elapsed().as_secs_f64().max(1e-9);
        let rate = (images - self.since.1) as f64 / dt;
        *self = Self::new(images);
        format!("loss {mean:.4}  lr {lr:.3e}  {rate:.0} img/s")
    }
}
