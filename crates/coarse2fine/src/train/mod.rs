//! Training: a [`TrainJob`] (what to train, from where, for how long) run by a
//! [`Trainer`] (SGD steps on prefetched batches, periodic evaluation, an event log and
//! checkpoints). `c2f train` builds its job from a [`TrainRequest`]; each stage and the
//! baseline of a plan build theirs in [`crate::run`]. The job starts from fresh weights,
//! from any checkpoint's weights (e.g. a grown one), or continues a checkpoint exactly.

mod auto;
mod request;
mod trainer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{self, EvalCounts, Network};
use crate::checkpoint::Checkpoint;
use crate::data::loader::{Normalizer, Prefetcher};
use crate::data::prepare::{ChannelStats, DatasetManifest};
use crate::data::shard::ShardSet;
use crate::error::{Error, Result};
use crate::fsutil::{self, Ownership};
use crate::metrics::{Confusion, EvalSummary};
use crate::net::spec::InputShape;

pub use request::{NetSource, TrainRequest};
pub use trainer::{Cadence, Finished, Leave, Start, TrainJob, Trainer};

/// File name of the event log in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Folder name of the latest checkpoint in a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// Folder name of the checkpoint before it, kept until a step after the latest one has had
/// a finite loss, so that a diverging run can fall back to it.
pub const PREVIOUS_DIR: &str = "checkpoint-previous";

/// A `c2f train` run folder: its event log and checkpoints.
pub const TRAIN_RUN: Ownership = Ownership {
    what: "training run folder",
    marked: |dir| {
        fsutil::has_format(
            &dir.join(CHECKPOINT_DIR).join("meta.json"),
            crate::checkpoint::CHECKPOINT_FORMAT,
        ) || dir.join(METRICS_FILE).is_file()
    },
    entry: Some(|n| [METRICS_FILE, CHECKPOINT_DIR, PREVIOUS_DIR].contains(&n)),
};

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
    /// Validation split held out from the training images, if prepared: settings are
    /// chosen on it, while the test split is reported.
    pub val: Option<SplitData>,
}

impl TrainData {
    /// Opens `root` at `size`.
    pub fn open(root: &Path, size: usize) -> Result<Self> {
        let manifest = DatasetManifest::load(root)?;
        let stats = manifest.stats_at(root, size)?.clone();
        let split = |name: &str| -> Result<SplitData> {
            Ok(SplitData {
                set: Arc::new(manifest.open_split(root, size, name)?),
                stats: stats.clone(),
            })
        };
        let val = match manifest.splits.contains_key("val") {
            true => Some(split("val")?),
            false => None,
        };
        Ok(Self {
            root: root.to_path_buf(),
            size,
            train: split("train")?,
            test: split("test")?,
            val,
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

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Accuracy and loss.
    pub summary: EvalSummary,
    /// Predictions against labels.
    pub confusion: Confusion,
}

impl TrainData {
    /// Sets one normalisation for every split (a plan's stages all use the final size's).
    pub fn normalise_with(&mut self, stats: &ChannelStats) {
        for s in [&mut self.train, &mut self.test]
            .into_iter()
            .chain(self.val.as_mut())
        {
            s.stats = stats.clone();
        }
    }
}

/// Evaluates `net` on every image of `set`, normalised with `stats`.
pub fn evaluate(
    net: &Network,
    set: &Arc<ShardSet>,
    stats: &ChannelStats,
    batch: usize,
) -> Result<Evaluation> {
    let classes = set.classes().len();
    let mut total = EvalCounts::default();
    let mut confusion = Confusion::new(classes);
    for b in Prefetcher::sequential(set.clone(), Normalizer::new(stats), batch) {
        let logits = net.logits(&b)?;
        total.merge(backend::score_logits(&logits, &b.labels));
        for (row, &label) in logits.chunks_exact(classes.max(1)).zip(&b.labels) {
            confusion.add(label as usize, backend::top_class(row));
        }
    }
    let n = total.n.max(1) as f64;
    Ok(Evaluation {
        summary: EvalSummary {
            top1: total.top1 as f64 / n,
            top5: total.top5 as f64 / n,
            loss: total.loss_sum / n,
            images: total.n,
        },
        confusion,
    })
}

/// Recalibrates the batch norms of `net` ([`Network::recalibrate_batch_norms`]) on `images`
/// training images of `set`: evenly spaced over the split, not augmented, normalised by
/// `norm`, in batches of `batch` (a last batch of one image is left out, having no
/// variance). Returns the images used and the batch norms updated.
pub fn recalibrate(
    net: &mut Network,
    (set, norm): (&ShardSet, &Normalizer),
    images: usize,
    batch: usize,
) -> Result<(usize, usize)> {
    let len = set.len();
    let n = images.min(len);
    let idx: Vec<usize> = (0..n).map(|i| i * len / n).collect();
    let batches: Vec<_> = idx
        .chunks(batch.max(2))
        .filter(|c| c.len() > 1)
        .map(|c| crate::data::loader::make_batch(set, norm, c))
        .collect();
    let used = batches.iter().map(|b| b.labels.len()).sum();
    Ok((used, net.recalibrate_batch_norms(&batches)?))
}

/// The latest checkpoint of a run folder, after repairing what a process killed while
/// writing it left behind: a checkpoint moved aside to become the previous one is moved
/// back if no newer one replaced it. `None` if the folder holds none.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<Checkpoint>> {
    let (latest, previous) = (run_dir.join(CHECKPOINT_DIR), run_dir.join(PREVIOUS_DIR));
    if !Checkpoint::exists(&latest)? && Checkpoint::exists(&previous)? {
        std::fs::rename(&previous, &latest).map_err(|e| Error::io(&previous, e))?;
    }
    if Checkpoint::exists(&latest)? {
        Ok(Some(Checkpoint::load(&latest)?))
    } else {
        Ok(None)
    }
}

/// The folder of `p` that holds a checkpoint: `p/checkpoint` for a run folder, else `p`.
pub fn checkpoint_dir(p: &Path) -> PathBuf {
    if Checkpoint::exists(&p.join(CHECKPOINT_DIR)).unwrap_or(false) {
        p.join(CHECKPOINT_DIR)
    } else {
        p.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, Compute};
    use crate::data::loader::Batch;
    use crate::data::prepare::{PrepareConfig, prepare};
    use crate::data::synthetic::write_quadrant_idx;
    use crate::events::{Event, What, read_events};
    use crate::hyper::{Hyper, LrSchedule, StopAt};
    use crate::lr::LrPolicy;
    use crate::net::WeightMap;
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

    fn hyper() -> Hyper {
        Hyper {
            batch_size: 16,
            base_lr: 0.02,
            lr_policy: LrPolicy::Step {
                gamma: 0.5,
                step: 10,
            },
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 5,
            augment: Default::default(),
            label_smoothing: 0.0,
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

    fn job(dir: &Path, data: &TrainData, start: Start, iterations: u64) -> TrainJob {
        TrainJob {
            dir: dir.to_path_buf(),
            data: data.clone(),
            start,
            hyper: hyper(),
            stop: StopAt::Iterations(iterations),
            schedule: LrSchedule::default(),
            cadence: Cadence {
                eval_every: 10,
                eval_at_start: true,
                log_every: 5,
                checkpoint_every: 10,
                eval_batch: 50,
            },
            place: None,
            origin: (0, 0),
            replace: false,
            lock: None,
            leave: None,
        }
    }

    fn train(dir: &Path, data: &TrainData, start: Start, iterations: u64) -> Result<Checkpoint> {
        let compute = Compute::new(BackendKind::Cpu)?;
        Ok(job(dir, data, start, iterations)
            .run(&compute, &Silent, None)?
            .checkpoint)
    }

    /// Events with the clock fields removed.
    fn untimed(path: &Path) -> Result<Vec<Event>> {
        Ok(read_events(path)?
            .into_iter()
            .map(|e| Event {
                clock: Default::default(),
                ..e
            })
            .collect())
    }

    #[test]
    fn same_seed_gives_identical_metrics_and_weights_and_it_learns() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let a = train(&tmp.path().join("a"), &data, start(&data)?, 40)?;
        let b = train(&tmp.path().join("b"), &data, start(&data)?, 40)?;
        assert_eq!(a.weights, b.weights);
        let ea = untimed(&tmp.path().join("a").join(METRICS_FILE))?;
        assert_eq!(ea, untimed(&tmp.path().join("b").join(METRICS_FILE))?);
        assert_eq!(
            ea.iter().filter(|e| e.is_eval()).count(),
            5,
            "evals at 0, 10, 20, 30, 40"
        );
        let first = ea.iter().find_map(Event::top1);
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
        let full = train(&tmp.path().join("full"), &data, start(&data)?, 30)?;
        let run = tmp.path().join("split");
        train(&run, &data, start(&data)?, 15)?;
        let resumed = Checkpoint::load(&run.join(CHECKPOINT_DIR))?;
        assert_eq!(resumed.meta.iteration, 15);
        let done = train(&run, &data, Start::resume(resumed), 30)?;
        assert_eq!(
            done.weights, full.weights,
            "resumed weights differ from an uninterrupted run"
        );
        assert_eq!(done.optimizer, full.optimizer);
        let last = |p: &Path| -> Result<Option<Event>> {
            Ok(untimed(&p.join(METRICS_FILE))?
                .into_iter()
                .rfind(Event::is_eval))
        };
        assert_eq!(last(&run)?, last(&tmp.path().join("full"))?);
        Ok(())
    }

    #[test]
    fn a_diverging_step_falls_back_to_the_last_checkpoint_with_a_finite_next_loss() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let dir = tmp.path().join("run");
        let j = job(&dir, &data, start(&data)?, 100);
        let compute = Compute::new(BackendKind::Cpu)?;
        let mut t = Trainer::new(&j, &compute)?;
        let good = make_batch_of(&data);
        for _ in 0..3 {
            t.step(&good, 0.02)?;
        }
        t.checkpoint()?; // iteration 3
        t.step(&good, 0.02)?; // its next step is finite: 3 is confirmed
        assert!(!dir.join(PREVIOUS_DIR).exists());
        t.checkpoint()?; // iteration 4, not yet confirmed: 3 is kept beside it
        assert!(dir.join(PREVIOUS_DIR).exists());
        // A huge rate: this step's loss (of the weights at 4) is finite, so 4 is confirmed,
        // but it leaves weights near 1e30 whose own loss overflows.
        t.step(&good, 1e30)?;
        t.checkpoint()?; // iteration 5: finite weights, not yet confirmed
        let msg = t
            .step(&good, 0.02)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("loss became") && msg.contains("at iteration 5"),
            "{msg}"
        );
        assert!(msg.contains("at iteration 4, is kept"), "{msg}");
        let kept = latest_checkpoint(&dir)?.expect("a checkpoint");
        assert_eq!(kept.meta.iteration, 4);
        assert!(!dir.join(PREVIOUS_DIR).exists());
        Ok(())
    }

    fn make_batch_of(data: &TrainData) -> Batch {
        let idx: Vec<usize> = (0..16).collect();
        crate::data::loader::make_batch(
            &data.train.set,
            &crate::data::loader::Normalizer::new(&data.train.stats),
            &idx,
        )
    }

    #[test]
    fn a_resume_with_another_rate_logs_the_change() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let data = fixture(tmp.path())?;
        let run = tmp.path().join("run");
        train(&run, &data, start(&data)?, 10)?;
        let c = Checkpoint::load(&run.join(CHECKPOINT_DIR))?;
        let s = Start {
            changed: c.meta.hyper.differences(&Hyper {
                base_lr: 0.01,
                ..hyper()
            }),
            ..Start::resume(c)
        };
        let mut j = job(&run, &data, s, 20);
        j.hyper.base_lr = 0.01;
        j.run(&Compute::new(BackendKind::Cpu)?, &Silent, None)?;
        let events = read_events(&run.join(METRICS_FILE))?;
        let settings: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e.what, What::Settings { .. }))
            .collect();
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].iter, 10);
        assert_eq!(
            settings[0].what,
            What::Settings {
                changed: vec!["lr 0.02 → 0.01".into()]
            }
        );
        assert_eq!(
            Checkpoint::load(&run.join(CHECKPOINT_DIR))?
                .meta
                .hyper
                .base_lr,
            0.01
        );
        Ok(())
    }
}
