//! The event log: one JSON object per line, written as training goes.
//!
//! `c2f train` writes `metrics.jsonl`; each stage and the baseline of a plan write theirs
//! already placed on their curve (curve, stage, size, and iterations, images and seconds
//! counted from the curve's start), so a run's `events.jsonl` is their concatenation with
//! the growth events between stages, and reports read events without converting them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fsutil;

/// Which curve of a run an event belongs to.
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

/// Where on a run an event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Curve.
    pub curve: CurveKind,
    /// Stage (1-based; the baseline has one).
    pub stage: usize,
    /// Input side.
    pub size: usize,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// Training progress since the previous train event.
    Train {
        /// Mean loss over the iterations since the previous train event.
        loss: f64,
        /// Learning rate of the last step.
        lr: f32,
    },
    /// An evaluation on the test split (and the validation split, if there is one).
    Eval {
        /// Top-1 accuracy in [0, 1].
        top1: f64,
        /// Top-5 accuracy.
        top5: f64,
        /// Mean loss.
        loss: f64,
        /// Top-1 on the validation split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_top1: Option<f64>,
        /// Mean loss on the validation split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_loss: Option<f64>,
    },
    /// A growth step between stages (its place is the stage it starts).
    Growth {
        /// Input side before.
        from_size: usize,
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
    },
    /// Training settings changed from here on (a resume with another learning rate).
    Settings {
        /// What changed, e.g. `lr 0.1 → 0.01`.
        changed: Vec<String>,
    },
    /// An automatic decision: to leave a stage for the next size, and why.
    Decision {
        /// What was decided.
        decision: String,
        /// The numbers behind it.
        reason: String,
    },
}

/// One line of an event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(flatten)]
    pub what: What,
    /// Where on a run (absent in a `c2f train` log).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// Iterations done (since the curve started).
    pub iter: u64,
    /// Training images consumed (since the curve started).
    pub images: u64,
    /// Epochs of the training split done (in a `c2f train` log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Clock readings.
    #[serde(flatten)]
    pub clock: Clock,
}

impl Event {
    /// Top-1 of an evaluation.
    pub fn top1(&self) -> Option<f64> {
        match self.what {
            What::Eval { top1, .. } => Some(top1),
            _ => None,
        }
    }

    /// Whether this is an evaluation.
    pub fn is_eval(&self) -> bool {
        matches!(self.what, What::Eval { .. })
    }

    /// The event's curve (`None` in a `c2f train` log).
    pub fn curve(&self) -> Option<CurveKind> {
        self.place.map(|p| p.curve)
    }
}

/// Reads an event log.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    fsutil::read_jsonl(path)
}

/// An event log open for appending, one flushed line per event.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: File,
}

impl EventLog {
    /// Opens the log, first dropping the events after iteration `keep_until` (those of an
    /// interrupted stretch that will be redone) and a half-written last line. With `keep`
    /// false nothing is kept: a part starting afresh writes its events again.
    pub fn open(path: &Path, keep: bool, keep_until: u64) -> Result<Self> {
        if path.exists() {
            let kept: Vec<Event> = fsutil::read_jsonl_recovering::<Event>(path)?
                .into_iter()
                .filter(|e| keep && e.iter <= keep_until)
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

    /// Appends `e`.
    pub fn write(&mut self, e: &Event) -> Result<()> {
        let line =
            serde_json::to_string(e).map_err(|err| Error::format(&self.path, err.to_string()))?;
        writeln!(self.file, "{line}").map_err(|err| Error::io(&self.path, err))?;
        self.file.flush().map_err(|err| Error::io(&self.path, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_line_format() -> Result<()> {
        let train = r#"{"event":"train","iter":10,"epoch":0.5,"images":160,"loss":1.5,"lr":0.01,"train_s":1.0,"eval_s":0.5,"wall_s":2.0}"#;
        let e: Event = serde_json::from_str(train).map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(
            e.what,
            What::Train {
                loss: 1.5,
                lr: 0.01
            }
        );
        assert_eq!((e.place, e.epoch, e.clock.time_s), (None, Some(0.5), 1.0));
        let run = r#"{"event":"eval","curve":"baseline","stage":1,"size":16,"iter":20,"images":640,"top1":0.5,"top5":0.9,"loss":1.2,"time_s":3.0,"train_s":3.0,"grow_s":0.0,"eval_s":1.0,"wall_s":5.0}"#;
        let e: Event = serde_json::from_str(run).map_err(|e| Error::invalid(e.to_string()))?;
        let place = Place {
            curve: CurveKind::Baseline,
            stage: 1,
            size: 16,
        };
        assert_eq!((e.place, e.top1()), (Some(place), Some(0.5)));
        let back: serde_json::Value = serde_json::from_str(
            &serde_json::to_string(&e).map_err(|e| Error::invalid(e.to_string()))?,
        )
        .map_err(|e| Error::invalid(e.to_string()))?;
        let want: serde_json::Value =
            serde_json::from_str(run).map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(back, want, "a run event is written back as it was read");
        Ok(())
    }
}
