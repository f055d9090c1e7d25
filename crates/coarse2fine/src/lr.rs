//! Caffe's learning-rate policies.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the learning rate changes with the iteration `t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
}

impl LrPolicy {
    /// The rate at iteration `t` for base rate `base`.
    pub fn rate(&self, base: f32, t: u64) -> f32 {
        match *self {
            LrPolicy::Fixed => base,
            LrPolicy::Step { gamma, step } => base * gamma.powi((t / step.max(1)) as i32),
            LrPolicy::Inv { gamma, power } => base * (1.0 + gamma * t as f32).powf(-power),
        }
    }
}

impl LrPolicy {
    /// Checks that the rate stays positive and finite: a step factor γ in (0, ∞) and a
    /// step of at least one iteration; `inv` with γ ≥ 0 and power ≥ 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("lr policy {self}: {what}")));
        match *self {
            LrPolicy::Fixed => Ok(()),
            LrPolicy::Step { gamma, .. } if !(gamma.is_finite() && gamma > 0.0) => {
                bad("gamma must be a positive number")
            }
            LrPolicy::Step { step: 0, .. } => bad("the step must be at least 1 iteration"),
            LrPolicy::Inv { gamma, power }
                if !(gamma.is_finite() && gamma >= 0.0 && power.is_finite() && power >= 0.0) =>
            {
                bad(
                    "gamma and power must be 0 or positive, or the rate would grow without bound or turn negative",
                )
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
        }
    }
}

impl std::str::FromStr for LrPolicy {
    type Err = Error;
    /// `fixed`, `step:GAMMA:STEPSIZE` or `inv:GAMMA:POWER` (Caffe's LeNet uses inv:0.0001:0.75).
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            Error::invalid(format!(
                "lr policy {s:?}: use fixed, step:GAMMA:STEPSIZE or inv:GAMMA:POWER"
            ))
        };
        let num = |v: &str| {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(bad)
        };
        let policy = match parts.as_slice() {
            ["fixed"] => Ok(LrPolicy::Fixed),
            ["step", g, n] => Ok(LrPolicy::Step {
                gamma: num(g)?,
                step: n.parse().ok().filter(|&n: &u64| n > 0).ok_or_else(bad)?,
            }),
            ["inv", g, p] => Ok(LrPolicy::Inv {
                gamma: num(g)?,
                power: num(p)?,
            }),
            _ => Err(bad()),
        }?;
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_follow_caffe() -> Result<()> {
        let step: LrPolicy = "step:0.1:100".parse()?;
        assert_eq!(step.rate(0.01, 99), 0.01);
        assert!((step.rate(0.01, 100) - 0.001).abs() < 1e-9);
        let inv: LrPolicy = "inv:0.0001:0.75".parse()?;
        assert!((inv.rate(0.01, 10_000) - 0.01 * 2f32.powf(-0.75)).abs() < 1e-7);
        assert_eq!("fixed".parse::<LrPolicy>()?.rate(0.5, 1_000_000), 0.5);
        assert!("step:0.1".parse::<LrPolicy>().is_err());
        assert!("step:0.1:0".parse::<LrPolicy>().is_err());
        for bad in ["inv:-0.1:0.75", "inv:0.1:-1", "step:-0.1:10", "step:0:10"] {
            let e = bad.parse::<LrPolicy>().err().map(|e| e.to_string());
            assert!(e.as_ref().is_some_and(|e| e.contains(bad)), "{bad}: {e:?}");
        }
        Ok(())
    }
}
