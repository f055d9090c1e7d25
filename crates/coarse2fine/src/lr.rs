//! Learning-rate policies: Caffe's (`fixed`, `step`, `inv`), which depend on the iteration
//! alone, and schedules over a known budget (`cosine`, `linear`, `onecycle`, `steps`),
//! which anneal to (near) zero at its end so that final accuracies are not evaluation
//! noise.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the learning rate changes with the iteration `t` of a budget of `total` iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum LrPolicy {
    /// `lr`.
    Fixed,
    /// `lr · γ^⌊t / step⌋`.
    Step {
        /// γ.
        gamma: f32,
        /// Iterations per step.
        step: u64,
    },
    /// `lr · (1 + γ·t)^(−power)`.
    Inv {
        /// γ.
        gamma: f32,
        /// Power.
        power: f32,
    },
    /// `lr · ½(1 + cos(π·t/T))`: from `lr` to 0 over the budget.
    Cosine,
    /// `lr · (1 − t/T)`.
    Linear,
    /// A linear rise from `lr/25` to `lr` over the first `warmup` fraction of the budget,
    /// then cosine to `lr/10⁴` (Smith's one-cycle policy, as PyTorch's `OneCycleLR`).
    #[serde(rename = "onecycle")]
    OneCycle {
        /// Fraction of the budget spent rising.
        warmup: f32,
    },
    /// `lr · γ^k` after the k-th of the given fractions of the budget.
    Steps {
        /// Fractions of the budget, ascending, in (0, 1).
        at: Vec<f32>,
        /// γ.
        gamma: f32,
    },
}

impl LrPolicy {
    /// The rate at iteration `t` of `total` for base rate `base`.
    pub fn rate(&self, base: f32, t: u64, total: u64) -> f32 {
        let x = t as f64 / total.max(1) as f64;
        let cosine = |x: f64| 0.5 * (1.0 + (std::f64::consts::PI * x.clamp(0.0, 1.0)).cos());
        match self {
            LrPolicy::Fixed => base,
            LrPolicy::Step { gamma, step } => base * gamma.powi((t / (*step).max(1)) as i32),
            LrPolicy::Inv { gamma, power } => base * (1.0 + gamma * t as f32).powf(-power),
            LrPolicy::Cosine => base * cosine(x) as f32,
            LrPolicy::Linear => base * (1.0 - x).max(0.0) as f32,
            LrPolicy::OneCycle { warmup } => {
                let w = f64::from(*warmup);
                let (lo, hi, end) = (
                    f64::from(base) / 25.0,
                    f64::from(base),
                    f64::from(base) / 1e4,
                );
                let r = if x < w {
                    lo + (hi - lo) * x / w
                } else {
                    end + (hi - end) * cosine((x - w) / (1.0 - w))
                };
                r as f32
            }
            LrPolicy::Steps { at, gamma } => {
                let k = at.iter().filter(|&&f| x >= f64::from(f)).count();
                base * gamma.powi(k as i32)
            }
        }
    }

    /// Whether the policy runs over a known budget (and so needs one in iterations).
    pub fn needs_total(&self) -> bool {
        !matches!(
            self,
            LrPolicy::Fixed | LrPolicy::Step { .. } | LrPolicy::Inv { .. }
        )
    }

    /// Checks that the rate stays positive and finite: a step factor γ in (0, ∞) and a
    /// step of at least one iteration; `inv` with γ ≥ 0 and power ≥ 0; a one-cycle
    /// warm-up fraction in (0, 1); step fractions ascending in (0, 1).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("lr policy {self}: {what}")));
        match self {
            LrPolicy::Step { gamma, .. } | LrPolicy::Steps { gamma, .. }
                if !(gamma.is_finite() && *gamma > 0.0) =>
            {
                bad("gamma must be a positive number")
            }
            LrPolicy::Step { step: 0, .. } => bad("the step must be at least 1 iteration"),
            LrPolicy::Inv { gamma, power }
                if !(gamma.is_finite() && *gamma >= 0.0 && power.is_finite() && *power >= 0.0) =>
            {
                bad(
                    "gamma and power must be 0 or positive, or the rate would grow without bound or turn negative",
                )
            }
            LrPolicy::OneCycle { warmup } if !(*warmup > 0.0 && *warmup < 1.0) => {
                bad("the warm-up fraction must lie between 0 and 1")
            }
            LrPolicy::Steps { at, .. }
                if at.is_empty()
                    || at.iter().any(|f| !(*f > 0.0 && *f < 1.0))
                    || at.windows(2).any(|w| w[0] >= w[1]) =>
            {
                bad("give fractions of the budget between 0 and 1, ascending")
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for LrPolicy {
    /// The form [`LrPolicy::from_str`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrPolicy::Fixed => f.write_str("fixed"),
            LrPolicy::Step { gamma, step } => write!(f, "step:{gamma}:{step}"),
            LrPolicy::Inv { gamma, power } => write!(f, "inv:{gamma}:{power}"),
            LrPolicy::Cosine => f.write_str("cosine"),
            LrPolicy::Linear => f.write_str("linear"),
            LrPolicy::OneCycle { warmup } => write!(f, "onecycle:{warmup}"),
            LrPolicy::Steps { at, gamma } => {
                let at: Vec<String> = at.iter().map(f32::to_string).collect();
                write!(f, "steps:{}:{gamma}", at.join(","))
            }
        }
    }
}

impl std::str::FromStr for LrPolicy {
    type Err = Error;
    /// `fixed`, `step:GAMMA:STEPSIZE`, `inv:GAMMA:POWER` (Caffe's LeNet uses
    /// inv:0.0001:0.75), `cosine`, `linear`, `onecycle:WARMUP`, `steps:F1,F2,…:GAMMA`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            Error::invalid(format!(
                "lr policy {s:?}: use fixed, step:GAMMA:STEPSIZE, inv:GAMMA:POWER, cosine, linear, onecycle:WARMUP or steps:F1,F2:GAMMA"
            ))
        };
        let num = |v: &str| {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(bad)
        };
        let policy = match parts.as_slice() {
            ["fixed"] => LrPolicy::Fixed,
            ["cosine"] => LrPolicy::Cosine,
            ["linear"] => LrPolicy::Linear,
            ["step", g, n] => LrPolicy::Step {
                gamma: num(g)?,
                step: n.parse().ok().filter(|&n: &u64| n > 0).ok_or_else(bad)?,
            },
            ["inv", g, p] => LrPolicy::Inv {
                gamma: num(g)?,
                power: num(p)?,
            },
            ["onecycle", w] => LrPolicy::OneCycle { warmup: num(w)? },
            ["steps", at, g] => LrPolicy::Steps {
                at: at.split(',').map(num).collect::<Result<_>>()?,
                gamma: num(g)?,
            },
            _ => return Err(bad()),
        };
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_schedules_anneal_to_zero_at_the_end() -> Result<()> {
        let cos: LrPolicy = "cosine".parse()?;
        assert_eq!(cos.rate(0.1, 0, 100), 0.1);
        assert!((cos.rate(0.1, 50, 100) - 0.05).abs() < 1e-7);
        assert!(cos.rate(0.1, 99, 100) < 1e-4);
        let lin: LrPolicy = "linear".parse()?;
        assert!((lin.rate(0.1, 75, 100) - 0.025).abs() < 1e-7);
        let one: LrPolicy = "onecycle:0.25".parse()?;
        assert!((one.rate(0.1, 0, 100) - 0.004).abs() < 1e-7);
        assert!((one.rate(0.1, 25, 100) - 0.1).abs() < 1e-7);
        assert!(one.rate(0.1, 99, 100) < 1e-3);
        let steps: LrPolicy = "steps:0.5,0.75:0.1".parse()?;
        assert_eq!(steps.to_string(), "steps:0.5,0.75:0.1");
        assert_eq!(steps.rate(1.0, 49, 100), 1.0);
        assert!((steps.rate(1.0, 50, 100) - 0.1).abs() < 1e-7);
        assert!((steps.rate(1.0, 80, 100) - 0.01).abs() < 1e-7);
        assert!(steps.needs_total() && !"fixed".parse::<LrPolicy>()?.needs_total());
        Ok(())
    }

    #[test]
    fn policies_follow_caffe() -> Result<()> {
        let step: LrPolicy = "step:0.1:100".parse()?;
        assert_eq!(step.rate(0.01, 99, 0), 0.01);
        assert!((step.rate(0.01, 100, 0) - 0.001).abs() < 1e-9);
        let inv: LrPolicy = "inv:0.0001:0.75".parse()?;
        assert!((inv.rate(0.01, 10_000, 0) - 0.01 * 2f32.powf(-0.75)).abs() < 1e-7);
        assert_eq!("fixed".parse::<LrPolicy>()?.rate(0.5, 1_000_000, 0), 0.5);
        assert!("step:0.1".parse::<LrPolicy>().is_err());
        assert!("step:0.1:0".parse::<LrPolicy>().is_err());
        for bad in [
            "inv:-0.1:0.75",
            "inv:0.1:-1",
            "step:-0.1:10",
            "step:0:10",
            "onecycle:1.5",
            "steps:0.75,0.5:0.1",
            "steps:1.2:0.1",
        ] {
            let e = bad.parse::<LrPolicy>().err().map(|e| e.to_string());
            assert!(e.as_ref().is_some_and(|e| e.contains(bad)), "{bad}: {e:?}");
        }
        Ok(())
    }
}
