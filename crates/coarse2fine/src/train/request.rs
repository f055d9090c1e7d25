//! [`TrainRequest`]: what `c2f train` was asked, checked and turned into a [`TrainJob`].

use std::path::{Path, PathBuf};

use super::trainer::{Cadence, Start, TrainJob};
use super::{TRAIN_RUN, TrainData, checkpoint_dir, latest_checkpoint};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::fsutil::{self, OutputLock, OutputState};
use crate::hyper::{Hyper, LrSchedule, StopAt};
use crate::net::weights::Init;
use crate::net::{NetSpec, WeightMap, presets};

/// Which network a `c2f train` job trains.
#[derive(Debug, Clone)]
pub enum NetSource {
    /// A preset name or a spec file, with fresh weights.
    Spec {
        /// Preset or file.
        name: String,
        /// Initialisation of the weights.
        init: Init,
    },
    /// The spec, weights and momentum buffers of a checkpoint (e.g. a grown one), from
    /// iteration 0.
    InitFrom(PathBuf),
    /// The checkpoint in the output folder, continued exactly. A net given here must be
    /// the one the checkpoint holds.
    Resume {
        /// The net named on the command line, if any.
        net: Option<String>,
    },
}

/// A `c2f train` invocation, as given.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Prepared data folder.
    pub data: PathBuf,
    /// Input side.
    pub size: usize,
    /// The network.
    pub net: NetSource,
    /// Run folder.
    pub out: PathBuf,
    /// Replace a run already in `out`.
    pub force: bool,
    /// Budget in iterations…
    pub iterations: Option<u64>,
    /// …or in epochs.
    pub epochs: Option<f64>,
    /// Hyper-parameters (checked here).
    pub hyper: Hyper,
    /// Evaluation interval (default: about ten times per run).
    pub eval_every: Option<u64>,
    /// Checkpoint interval (default: about ten times per run).
    pub checkpoint_every: Option<u64>,
}

impl TrainRequest {
    /// Checks everything and reserves the output folder: the numbers, the data, the net
    /// against the data and the memory, and the folder (a new run needs an empty or absent
    /// folder, or `force` over a run folder; a resume needs a checkpoint made with the same
    /// net, size, data and settings but the learning rate). Nothing on disk changes here
    /// but the output's lock and the repair of a checkpoint a crash left moved aside.
    pub fn prepare(self) -> Result<TrainJob> {
        self.hyper.validate()?;
        self.hyper.augment.fits(self.size)?;
        let data = TrainData::open(&self.data, self.size)?;
        let n_train = data.train.set.len();
        let stop =
            StopAt::from_counts(self.iterations, self.epochs, n_train, self.hyper.batch_size)?;
        let iterations = stop.iterations().unwrap_or(u64::MAX);
        let lock = OutputLock::acquire(&self.out)?;
        let (start, replace) = match &self.net {
            NetSource::Resume { net } => (self.resumed(&data, net.as_deref())?, false),
            source => self.fresh(&data, source)?,
        };
        if start.iteration > iterations {
            return Err(Error::invalid(format!(
                "{}: the checkpoint is at iteration {}, past the requested {iterations}",
                self.out.display(),
                start.iteration
            )));
        }
        let per_run = (iterations / 10).max(1);
        Ok(TrainJob {
            dir: self.out,
            data,
            start,
            hyper: self.hyper,
            stop,
            schedule: LrSchedule {
                offset: 0,
                total: iterations,
                warmup: 0,
            },
            cadence: Cadence {
                eval_every: self.eval_every.unwrap_or(per_run),
                eval_at_start: true,
                log_every: (iterations / 200).clamp(1, 50),
                checkpoint_every: self.checkpoint_every.unwrap_or(per_run),
                eval_batch: 500,
            },
            place: None,
            origin: (0, 0),
            replace,
            lock: Some(lock),
            leave: None,
        })
    }

    /// The start of a new run, and whether an old run in the folder is to be replaced.
    fn fresh(&self, data: &TrainData, source: &NetSource) -> Result<(Start, bool)> {
        let mut inputs: Vec<&Path> = vec![&self.data];
        if let NetSource::InitFrom(p) = source {
            inputs.push(p);
        }
        let state = fsutil::check_output(&self.out, &TRAIN_RUN, &inputs)?;
        if state == OutputState::Ours && !self.force {
            return Err(Error::format(
                &self.out,
                "run folder exists and is not empty (use --resume to continue it or --force to replace it)",
            ));
        }
        let start = match source {
            NetSource::InitFrom(p) => {
                let c = Checkpoint::load(&checkpoint_dir(p))?;
                let spec = self.bound(data, &c.spec)?;
                Start::from_checkpoint(Checkpoint { spec, ..c }, Default::default())
            }
            NetSource::Spec { name, init } => {
                let spec = self.bound(data, &presets::resolve(name)?)?;
                let w = WeightMap::init(&spec, *init, self.hyper.seed)?;
                Start::fresh(spec, w)
            }
            NetSource::Resume { .. } => return Err(Error::invalid("not a fresh start")),
        };
        Ok((start, state == OutputState::Ours))
    }

    /// `spec` bound to the data, refused if training it cannot fit in memory.
    fn bound(&self, data: &TrainData, spec: &NetSpec) -> Result<NetSpec> {
        let spec = spec.bind(data.input(), data.classes())?;
        crate::resources::training_estimate(&spec, self.hyper.batch_size)?.check(&format!(
            "training {} at {}×{} with batch {}",
            spec.name, self.size, self.size, self.hyper.batch_size
        ))?;
        Ok(spec)
    }

    /// The checkpoint in the output folder, checked against the request.
    fn resumed(&self, data: &TrainData, net: Option<&str>) -> Result<Start> {
        let dir = self.out.join(super::CHECKPOINT_DIR);
        let ckpt = latest_checkpoint(&self.out)?.ok_or_else(|| {
            Error::format(
                &self.out,
                "cannot resume: it holds no checkpoint (start the run without --resume)",
            )
        })?;
        let m = &ckpt.meta;
        let mut differ = Vec::new();
        if m.size != self.size {
            differ.push(format!("size {} → {}", m.size, self.size));
        }
        let (was, now) = (
            fsutil::resolved(Path::new(&m.dataset)),
            fsutil::resolved(&self.data),
        );
        if was != now || m.classes != data.manifest.classes {
            differ.push(format!("data {} → {}", was.display(), now.display()));
        }
        if let Some(name) = net {
            let asked = presets::resolve(name)?.bind(data.input(), data.classes());
            if asked.as_ref().ok() != Some(&ckpt.spec) {
                differ.push(format!("net {} → {name}", ckpt.spec.name));
            }
        }
        let changed = m.hyper.differences(&self.hyper);
        if !m.hyper.same_but_rate(&self.hyper) {
            differ.extend(changed.iter().filter(|c| !c.starts_with("lr")).cloned());
        }
        if !differ.is_empty() {
            return Err(Error::format(
                dir,
                format!(
                    "cannot resume with other settings ({}); only the learning rate and its policy may change",
                    differ.join(", ")
                ),
            ));
        }
        self.bound(data, &ckpt.spec)?;
        Ok(Start {
            changed,
            ..Start::resume(ckpt)
        })
    }
}
