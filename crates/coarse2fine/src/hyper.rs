//! Training settings and budgets, and the one place where their numbers are checked.
//!
//! `c2f train`, every stage of a plan and its baseline build a [`Hyper`] and a [`StopAt`]
//! from their flags or keys and call [`Hyper::validate`] / [`StopAt::validate`]; nothing
//! else checks these numbers, so the rules and the messages are the same everywhere.

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::lr::LrPolicy;

/// Largest batch accepted: far beyond any that fits in memory, small enough that products
/// of batch and image size cannot overflow.
pub const MAX_BATCH: usize = 1 << 20;
/// Largest iteration budget accepted (a million steps per second would take 30 years).
pub const MAX_ITERATIONS: u64 = 1 << 40;

/// Training hyper-parameters, stored with every checkpoint so a run can be continued
/// exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyper {
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub base_lr: f32,
    /// Learning-rate policy.
    pub lr_policy: LrPolicy,
    /// Momentum μ.
    pub momentum: f32,
    /// Weight decay λ.
    pub weight_decay: f32,
    /// Seed of shuffling, dropout and augmentation.
    pub seed: u64,
    /// Augmentation of training images (none in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Augment::is_none")]
    pub augment: Augment,
    /// Label smoothing ε of the training loss (0: plain cross-entropy).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f32,
}

/// For `skip_serializing_if`: settings whose zero means "off" are left out of files.
pub(crate) fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

impl Hyper {
    /// Checks every number: a batch of at least 1, a positive finite learning rate,
    /// momentum in [0, 1), a finite non-negative weight decay and a policy whose rate stays
    /// positive. Errors name the setting and its value.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(Error::invalid(format!(
                "batch size {} must be between 1 and {MAX_BATCH}",
                self.batch_size
            )));
        }
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(Error::invalid(format!(
                "learning rate {} must be a positive number",
                self.base_lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(format!(
                "momentum {} must be at least 0 and below 1",
                self.momentum
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(format!(
                "weight decay {} must be 0 or a positive number",
                self.weight_decay
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid(format!(
                "label smoothing {} must be at least 0 and below 1",
                self.label_smoothing
            )));
        }
        self.lr_policy.validate()
    }

    /// The names and values of the settings that differ between `self` and `other`, e.g.
    /// `["batch 128 → 64"]`; empty when they are equal.
    pub fn differences(&self, other: &Hyper) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} {a} → {b}"));
            }
        };
        cmp(
            "batch",
            self.batch_size.to_string(),
            other.batch_size.to_string(),
        );
        cmp("lr", self.base_lr.to_string(), other.base_lr.to_string());
        cmp(
            "lr policy",
            self.lr_policy.to_string(),
            other.lr_policy.to_string(),
        );
        cmp(
            "momentum",
            self.momentum.to_string(),
            other.momentum.to_string(),
        );
        cmp(
            "weight decay",
            self.weight_decay.to_string(),
            other.weight_decay.to_string(),
        );
        cmp("seed", self.seed.to_string(), other.seed.to_string());
        cmp(
            "augment",
            self.augment.to_string(),
            other.augment.to_string(),
        );
        cmp(
            "label smoothing",
            self.label_smoothing.to_string(),
            other.label_smoothing.to_string(),
        );
        out
    }

    /// Whether `other` differs from `self` only in the learning rate and its policy, the
    /// settings a resumed run may change (e.g. after its loss diverged).
    pub fn same_but_rate(&self, other: &Hyper) -> bool {
        Hyper {
            base_lr: other.base_lr,
            lr_policy: other.lr_policy.clone(),
            ..self.clone()
        } == *other
    }
}

/// When a training part stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAt {
    /// After this many iterations of the part.
    Iterations(u64),
    /// Once the curve's training seconds reach this many (not reproducible: how many
    /// iterations fit depends on the machine's speed).
    TrainSeconds(f64),
}

impl StopAt {
    /// The budget of `iterations` or `epochs` of `n_train` images in batches of `batch`;
    /// exactly one must be given.
    pub fn from_counts(
        iterations: Option<u64>,
        epochs: Option<f64>,
        n_train: usize,
        batch: usize,
    ) -> Result<Self> {
        let stop = match (iterations, epochs) {
            (Some(i), None) => StopAt::Iterations(i),
            (None, Some(e)) if e.is_finite() && e > 0.0 => {
                let it = (e * n_train as f64 / batch.max(1) as f64).ceil();
                StopAt::Iterations(if it >= MAX_ITERATIONS as f64 {
                    u64::MAX
                } else {
                    (it as u64).max(1)
                })
            }
            (None, Some(e)) => {
                return Err(Error::invalid(format!(
                    "epochs {e} must be a positive number"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid("give iterations or epochs, not both"));
            }
            (None, None) => return Err(Error::invalid("give iterations or epochs")),
        };
        stop.validate()?;
        Ok(stop)
    }

    /// Checks the budget: 1 to [`MAX_ITERATIONS`] iterations, or a positive finite time.
    pub fn validate(&self) -> Result<()> {
        match *self {
            StopAt::Iterations(n) if n == 0 || n > MAX_ITERATIONS => Err(Error::invalid(format!(
                "{n} iterations: give 1 to {MAX_ITERATIONS}"
            ))),
            StopAt::TrainSeconds(s) if !(s.is_finite() && s > 0.0) => Err(Error::invalid(format!(
                "{s} seconds: the time budget must be a positive number"
            ))),
            _ => Ok(()),
        }
    }

    /// The iteration limit, if the budget is one.
    pub fn iterations(&self) -> Option<u64> {
        match *self {
            StopAt::Iterations(n) => Some(n),
            StopAt::TrainSeconds(_) => None,
        }
    }

    /// Whether a part at iteration `t` whose curve has trained `train_s` seconds is done.
    pub fn reached(&self, t: u64, train_s: f64) -> bool {
        match *self {
            StopAt::Iterations(n) => t >= n,
            StopAt::TrainSeconds(s) => t > 0 && train_s >= s,
        }
    }
}

/// How a part's learning rate follows its policy: `offset` iterations of earlier stages
/// counted in (one schedule across stages), over a budget of `total` iterations (all
/// stages' for one schedule across stages), and a linear warm-up over the part's first
/// `warmup` iterations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Added to the part's iteration when the policy is evaluated.
    pub offset: u64,
    /// The budget the policy runs over (policies such as `cosine` anneal to its end).
    pub total: u64,
    /// The rate ramps from 1/warmup to 1 times the scheduled rate over this many
    /// iterations (0: none).
    pub warmup: u64,
}

impl LrSchedule {
    /// The learning rate of the part's iteration `t` under `h`.
    pub fn rate(&self, h: &Hyper, t: u64) -> f32 {
        let lr = h.lr_policy.rate(h.base_lr, t + self.offset, self.total);
        if t < self.warmup {
            lr * (t + 1) as f32 / self.warmup as f32
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper() -> Hyper {
        Hyper {
            batch_size: 32,
            base_lr: 0.01,
            lr_policy: LrPolicy::Fixed,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            augment: Augment::default(),
            label_smoothing: 0.0,
        }
    }

    fn refused(h: Hyper, needle: &str) {
        match h.validate() {
            Ok(()) => panic!("{h:?} should be refused"),
            Err(e) => assert!(e.to_string().contains(needle), "{e}"),
        }
    }

    #[test]
    fn every_number_is_checked_with_its_name() {
        assert!(hyper().validate().is_ok());
        refused(
            Hyper {
                batch_size: 0,
                ..hyper()
            },
            "batch size 0",
        );
        refused(
            Hyper {
                base_lr: -1.0,
                ..hyper()
            },
            "learning rate -1",
        );
        refused(
            Hyper {
                base_lr: f32::NAN,
                ..hyper()
            },
            "learning rate NaN",
        );
        refused(
            Hyper {
                momentum: 1.0,
                ..hyper()
            },
            "momentum 1",
        );
        refused(
            Hyper {
                momentum: -0.1,
                ..hyper()
            },
            "momentum -0.1",
        );
        refused(
            Hyper {
                weight_decay: -1e-4,
                ..hyper()
            },
            "weight decay -0.0001",
        );
        let inv = LrPolicy::Inv {
            gamma: -0.1,
            power: 0.75,
        };
        refused(
            Hyper {
                lr_policy: inv,
                ..hyper()
            },
            "gamma",
        );
        assert!(
            Hyper {
                momentum: 0.0,
                weight_decay: 0.0,
                ..hyper()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn differences_name_what_changed() {
        let a = hyper();
        let b = Hyper {
            batch_size: 64,
            base_lr: 0.001,
            ..hyper()
        };
        assert_eq!(a.differences(&b), vec!["batch 32 → 64", "lr 0.01 → 0.001"]);
        assert!(!a.same_but_rate(&b));
        let c = Hyper {
            base_lr: 0.001,
            lr_policy: LrPolicy::Step {
                gamma: 0.1,
                step: 10,
            },
            ..hyper()
        };
        assert!(a.same_but_rate(&c));
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn budgets_are_checked() -> Result<()> {
        assert_eq!(
            StopAt::from_counts(None, Some(1.0), 100, 32)?,
            StopAt::Iterations(4)
        );
        assert!(StopAt::from_counts(Some(0), None, 100, 32).is_err());
        assert!(StopAt::from_counts(None, Some(-1.0), 100, 32).is_err());
        assert!(StopAt::from_counts(None, Some(1e300), 100, 32).is_err());
        assert!(StopAt::from_counts(Some(1), Some(1.0), 100, 32).is_err());
        assert!(StopAt::TrainSeconds(f64::INFINITY).validate().is_err());
        assert!(StopAt::TrainSeconds(2.0).reached(3, 2.5));
        assert!(!StopAt::TrainSeconds(2.0).reached(0, 2.5));
        Ok(())
    }

    #[test]
    fn warmup_scales_the_first_iterations() {
        let s = LrSchedule {
            offset: 0,
            total: 100,
            warmup: 4,
        };
        assert_eq!(s.rate(&hyper(), 0), 0.01 / 4.0);
        assert_eq!(s.rate(&hyper(), 4), 0.01);
    }
}
