//! Automatic growth: when a stage should leave its size for the next one.
//!
//! The paper leaves open when to take each incremental step. The rule here is read from the
//! curve itself, on the validation split, in the currency that matters — accuracy per unit
//! of compute:
//!
//! * `g_start`: validation top-1 gained per iteration over the stage's first interval
//!   between evaluations (how fast a fresh start at this size paid);
//! * `g_now`: gained per iteration over its last two intervals;
//! * `c_now`, `c_next`: the cost of a step here and at the next size, as the nets' forward
//!   FLOPs per image times the batch.
//!
//! Leave when `g_now < g_start · c_now / c_next`: what this size now adds per unit of
//! compute has fallen below what its own start gave, priced at the next size's cost per
//! step — a fresh start at the next size, which begins from the same function, is expected
//! to pay at least that. The stage's budget is the cap; what it leaves unused goes to the
//! next stage. Costs are FLOPs rather than measured seconds so that the decision, and so
//! the whole run, is the same on every rerun; `docs/runs.md` compares the FLOP ratios with
//! measured step times.

/// A stage's validation history: (iteration, validation top-1).
#[derive(Debug, Clone, Default)]
pub(crate) struct AutoState {
    evals: Vec<(u64, f64)>,
}

impl AutoState {
    pub(crate) fn record(&mut self, t: u64, val_top1: f64) {
        self.evals.push((t, val_top1));
    }

    /// The reason to leave now, if the rule says so (needs three evaluations); `ratio` is
    /// `c_now / c_next`.
    pub(crate) fn verdict(&self, ratio: f64) -> Option<String> {
        let e = &self.evals;
        if e.len() < 3 {
            return None;
        }
        let gain =
            |a: (u64, f64), b: (u64, f64)| (b.1 - a.1) / (b.0.saturating_sub(a.0)).max(1) as f64;
        let g_start = gain(e[0], e[1]);
        let g_now = gain(e[e.len() - 3], e[e.len() - 1]);
        let bar = g_start * ratio;
        (g_start > 0.0 && g_now < bar).then(|| {
            format!(
                "validation top-1 gains {:.4} points per step now, below {:.4}: the {:.4} of this stage's start × its cost per step ÷ the next size's ({ratio:.4}, from FLOPs)",
                100.0 * g_now,
                100.0 * bar,
                100.0 * g_start,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_when_the_gain_per_step_falls_below_the_priced_start() {
        let mut a = AutoState::default();
        for (t, v) in [(0, 0.10), (10, 0.60), (20, 0.70)] {
            a.record(t, v);
        }
        // Start: 5 points per step; now: 3 over the last two intervals. A next size 4× as
        // dear per step sets the bar at 1.25: stay.
        assert_eq!(a.verdict(0.25), None);
        a.record(30, 0.71);
        a.record(40, 0.715);
        // Now 0.075 points per step: leave, and say why.
        let why = a.verdict(0.25).expect("leaves");
        assert!(
            why.contains("0.0750 points per step") && why.contains("1.2500"),
            "{why}"
        );
    }
}
