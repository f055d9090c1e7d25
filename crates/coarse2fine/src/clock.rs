//! Where the seconds of a curve went: training, growth, evaluation and the wall clock.
//!
//! One [`Clock`] is stamped on every event, stored with every checkpoint and every finished
//! part of a run, so the curves, the resume and the reports read the same numbers.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Clock readings of a curve. `time_s` (training plus growth seconds) is the x-axis of the
/// curves: evaluation and checkpoint writing are left out, since their cost depends on how
/// often one measures, not on the method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ClockFields")]
pub struct Clock {
    /// Training plus growth seconds.
    pub time_s: f64,
    /// Seconds in training steps (and waiting for their data).
    pub train_s: f64,
    /// Seconds in growth operators.
    pub grow_s: f64,
    /// Seconds in evaluation and growth checks.
    pub eval_s: f64,
    /// Wall-clock seconds since the curve started.
    pub wall_s: f64,
}

/// The stored form: `time_s` is derived, and files written before growth was timed lack
/// `grow_s`.
#[derive(Deserialize)]
struct ClockFields {
    train_s: f64,
    #[serde(default)]
    grow_s: f64,
    eval_s: f64,
    wall_s: f64,
}

impl From<ClockFields> for Clock {
    fn from(f: ClockFields) -> Self {
        Clock::new(f.train_s, f.grow_s, f.eval_s, f.wall_s)
    }
}

impl Clock {
    /// A reading; `time_s` is `train_s + grow_s`.
    pub fn new(train_s: f64, grow_s: f64, eval_s: f64, wall_s: f64) -> Self {
        Self {
            time_s: train_s + grow_s,
            train_s,
            grow_s,
            eval_s,
            wall_s,
        }
    }

    /// This reading after a growth of `grow` seconds checked in `check` seconds.
    pub fn after_growth(&self, grow: f64, check: f64) -> Self {
        Clock::new(
            self.train_s,
            self.grow_s + grow,
            self.eval_s + check,
            self.wall_s + grow + check,
        )
    }
}

/// What a stretch of time was spent on, besides training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// Evaluation: counted in `eval_s` and the wall clock.
    Eval,
    /// Writing checkpoints: counted in the wall clock only.
    Save,
}

/// A running [`Clock`] that continues from a reading. Everything that is neither
/// evaluation nor checkpoint writing counts as training, so that time spent waiting for
/// data counts against training, as it would for a user.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    base: Clock,
    started: Instant,
    eval: f64,
    saving: f64,
}

impl Stopwatch {
    /// Starts from `base`.
    pub fn start(base: Clock) -> Self {
        Self {
            base,
            started: Instant::now(),
            eval: 0.0,
            saving: 0.0,
        }
    }

    /// The reading now.
    pub fn now(&self) -> Clock {
        let elapsed = self.started.elapsed().as_secs_f64();
        Clock::new(
            self.base.train_s + elapsed - self.eval - self.saving,
            self.base.grow_s,
            self.base.eval_s + self.eval,
            self.base.wall_s + elapsed,
        )
    }

    /// Runs `f`, counting its time as `aside`.
    pub fn aside<T>(&mut self, aside: Aside, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        let s = t0.elapsed().as_secs_f64();
        match aside {
            Aside::Eval => self.eval += s,
            Aside::Save => self.saving += s,
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_training_plus_growth_and_old_files_read() {
        let c = Clock::new(2.0, 0.5, 1.0, 4.0);
        assert_eq!(c.time_s, 2.5);
        let back: Clock = serde_json::from_str(r#"{"train_s":2.0,"eval_s":1.0,"wall_s":4.0}"#)
            .expect("old form reads");
        assert_eq!((back.time_s, back.grow_s), (2.0, 0.0));
        let g = c.after_growth(0.25, 0.75);
        assert_eq!((g.time_s, g.eval_s, g.wall_s), (2.75, 1.75, 5.0));
    }

    #[test]
    fn time_set_aside_is_not_training() {
        let mut w = Stopwatch::start(Clock::new(10.0, 1.0, 2.0, 20.0));
        w.aside(Aside::Eval, || {
            std::thread::sleep(std::time::Duration::from_millis(20))
        });
        w.aside(Aside::Save, || {
            std::thread::sleep(std::time::Duration::from_millis(20))
        });
        let now = w.now();
        assert!(now.eval_s >= 2.02 && now.wall_s >= 20.04, "{now:?}");
        // Wall time not spent training or evaluating is the 20 ms of saving (and the base's
        // 20 − 10 − 2 = 8 s), however slow the machine was around the two asides.
        let saving = (now.wall_s - 20.0) - (now.train_s - 10.0) - (now.eval_s - 2.0);
        assert!((0.02..0.5).contains(&saving), "{now:?}");
        assert_eq!(now.grow_s, 1.0);
    }
}
