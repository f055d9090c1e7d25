//! Memory estimates, checked before long work starts.
//!
//! A configuration that cannot fit is refused up front with the numbers, instead of being
//! killed by the operating system hours later (or taking the machine down with it). The
//! estimates are deliberately lower bounds — what the data and tensors themselves need —
//! so a refusal always means the job could not have run.

use std::fmt;

use crate::error::{Error, Result};
use crate::net::NetSpec;
use crate::net::spec::{Layer, Shape};

/// Environment variable that caps the memory coarse2fine plans to use, e.g. `8G`, `512M`.
pub const MEMORY_LIMIT_ENV: &str = "C2F_MEMORY_LIMIT";

/// Bytes, shown in binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let (v, unit) = if b >= (1u64 << 30) as f64 {
            (b / (1u64 << 30) as f64, "GiB")
        } else if b >= (1u64 << 20) as f64 {
            (b / (1u64 << 20) as f64, "MiB")
        } else if b >= 1024.0 {
            (b / 1024.0, "KiB")
        } else {
            return write!(f, "{} B", self.0);
        };
        write!(f, "{v:.1} {unit}")
    }
}

/// Parses `123`, `64K`, `512M`, `8G`, `1T` (binary multiples; an optional trailing `B` or
/// `iB` is accepted).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * (1u64 << shift) as f64) as u64)
}

/// Where a memory limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The user's [`MEMORY_LIMIT_ENV`].
    Env,
    /// The container's cgroup limit.
    Cgroup,
    /// `MemAvailable` of `/proc/meminfo`.
    System,
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitSource::Env => MEMORY_LIMIT_ENV,
            LimitSource::Cgroup => "the cgroup memory limit",
            LimitSource::System => "available system memory",
        })
    }
}

fn read_meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_cgroup_room() -> Option<u64> {
    let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" (no limit) does not parse
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(used))
}

/// The memory this process may plan to use, and where that figure came from; `None` when
/// nothing is known (the checks then pass).
pub fn available_memory() -> Result<Option<(Bytes, LimitSource)>> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) {
        let b = parse_bytes(&v).ok_or_else(|| {
            Error::invalid(format!(
                "{MEMORY_LIMIT_ENV}={v:?} is not a size (use e.g. 512M or 8G)"
            ))
        })?;
        return Ok(Some((Bytes(b), LimitSource::Env)));
    }
    let sys = read_meminfo_available().map(|b| (Bytes(b), LimitSource::System));
    let cg = read_cgroup_room().map(|b| (Bytes(b), LimitSource::Cgroup));
    Ok(match (sys, cg) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    })
}

/// A memory estimate broken into named parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// `(what, bytes)` parts.
    pub parts: Vec<(String, u64)>,
}

impl MemoryEstimate {
    /// Total bytes.
    pub fn total(&self) -> Bytes {
        Bytes(
            self.parts
                .iter()
                .fold(0u64, |a, (_, b)| a.saturating_add(*b)),
        )
    }

    /// Fails with a message naming `what`, the estimate and the limit when the estimate is
    /// larger than the memory available.
    pub fn check(&self, what: &str) -> Result<()> {
        let Some((avail, source)) = available_memory()? else {
            return Ok(());
        };
        let total = self.total();
        if total <= avail {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(n, b)| format!("{n} {}", Bytes(*b)))
            .collect();
        Err(Error::invalid(format!(
            "{what} needs at least {total} of memory ({}), but {source} is {avail}; refusing to start (set {MEMORY_LIMIT_ENV} to override)",
            parts.join(", ")
        )))
    }
}

/// Lower bound of the memory to train `spec` (bound to its input) with `batch` images per
/// step: parameters, gradients and momentum (3 × 4 bytes per weight), plus every layer's
/// output kept for the backward pass and its gradient (2 × 4 bytes per activation).
pub fn training_estimate(spec: &NetSpec, batch: usize) -> Result<MemoryEstimate> {
    let rows = spec.summary()?;
    let params: u64 = rows.iter().map(|r| r.params as u64).sum();
    let input = spec
        .input
        .map_or(0, |i| (i.channels * i.height * i.width) as u64);
    let act_per_image = match spec.input {
        Some(i) => outputs(spec, &spec.layers, crate::net::spec::input_map(i))?,
        None => 0,
    };
    Ok(MemoryEstimate {
        parts: vec![
            (
                format!("{params} weights with gradients and momentum"),
                params.saturating_mul(12),
            ),
            (
                format!("activations of a batch of {batch}"),
                (act_per_image + input)
                    .saturating_mul(batch as u64)
                    .saturating_mul(8),
            ),
        ],
    })
}

/// Values per image of the outputs of `layers` reading maps of `shape`, the layers inside
/// residual blocks included.
fn outputs(spec: &NetSpec, layers: &[Layer], shape: Shape) -> Result<u64> {
    let rows = spec.rows(layers, shape, "")?;
    let mut total = 0u64;
    let mut input = shape;
    for (l, r) in layers.iter().zip(&rows) {
        total = total.saturating_add(r.output.numel() as u64);
        if let Layer::Residual(b) = l {
            total = total
                .saturating_add(outputs(spec, &b.body, input)?)
                .saturating_add(outputs(spec, &b.shortcut, input)?);
        }
        input = r.output;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::spec::InputShape;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("64K"), Some(65_536));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("8gb"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1M"), None);
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn training_estimate_counts_weights_and_activations() -> Result<()> {
        let spec = crate::net::presets::resolve("net-1")?.bind(InputShape::square(1, 8), 10)?;
        let rows = spec.summary()?;
        let params: u64 = rows.iter().map(|r| r.params as u64).sum();
        let acts: u64 = rows.iter().map(|r| r.output.numel() as u64).sum::<u64>() + 64;
        let e = training_estimate(&spec, 32)?;
        assert_eq!(e.total().0, params * 12 + acts * 32 * 8);
        // Doubling the batch grows only the activations.
        let e2 = training_estimate(&spec, 64)?;
        assert_eq!(e2.total().0 - e.total().0, acts * 32 * 8);
        Ok(())
    }

    /// A residual block's layers keep their outputs too: resnet-8 at 8×8 holds, per image,
    /// the net's 12 outputs and the 5 + 5 + 2 + 5 + 2 inside its three blocks.
    #[test]
    fn training_estimate_counts_the_layers_inside_residual_blocks() -> Result<()> {
        let spec = crate::net::presets::resolve("resnet-8")?.bind(InputShape::square(1, 8), 10)?;
        let top: u64 = spec
            .summary()?
            .iter()
            .map(|r| r.output.numel() as u64)
            .sum();
        let inner = 5 * 16 * 64 + (5 + 2) * 32 * 16 + (5 + 2) * 64 * 4;
        let e = training_estimate(&spec, 1)?;
        let params = spec.summary()?.iter().map(|r| r.params as u64).sum::<u64>();
        assert_eq!(e.total().0, params * 12 + (top + inner + 64) * 8);
        Ok(())
    }
}
