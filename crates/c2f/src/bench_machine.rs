//! What `c2f bench` records about the machine beside its figures: the CPU, its vector
//! extensions, clock and caches, which threads the workers may use, and which instruction
//! sets each side dispatched to. Speed figures from different machines are not comparable,
//! and on one machine they are only comparable with this context.

use serde::{Deserialize, Serialize};

use coarse2fine::backend;

/// The machine and the instruction sets in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// Logical CPUs this process may run on, as the kernel lists them (e.g. `0-1`).
    pub allowed_cpus: String,
    pub logical_cpus: usize,
    /// Nominal maximum clock, where the kernel exposes it, else the clock it reports now.
    pub clock_ghz: Option<f64>,
    /// Cache levels of CPU 0, e.g. `L1d 48K, L2 2048K`.
    pub caches: String,
    /// The vector extensions among the CPU's flags that either side can use.
    pub vector_flags: Vec<String>,
    /// Running under a hypervisor (the `hypervisor` CPU flag): other guests share the cores.
    pub virtual_machine: bool,
    /// Instruction set of c2f's matrix products (`gemm`'s kernels).
    pub c2f_products: String,
    /// Instruction set of c2f's own loops, and whether `C2F_SIMD` capped it.
    pub c2f_loops: String,
    /// PyTorch's version and CPU capability (its own dispatch level), when it was timed.
    pub pytorch: Option<String>,
    /// Peak single-precision GFLOP/s of one core estimated from the reported clock (see
    /// [`core_peak_gflops`]).
    pub core_peak_gflops: Option<f64>,
    /// The same peak measured: multiply-adds from registers on one thread, in the
    /// instruction set c2f's loops use ([`backend::measured_peak_gflops`]). Shares of the
    /// peak are of this one.
    #[serde(default)]
    pub measured_peak_gflops: Option<f64>,
}

const VECTOR_FLAGS: [&str; 12] = [
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "asimd",
];

fn cpuinfo_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_string())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn caches() -> String {
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let (Some(level), Some(kind), Some(size)) = (
            read_trimmed(&format!("{dir}/level")),
            read_trimmed(&format!("{dir}/type")),
            read_trimmed(&format!("{dir}/size")),
        ) else {
            continue;
        };
        let tag = match kind.as_str() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        out.push(format!("L{level}{tag} {size}"));
    }
    if out.is_empty() {
        "unknown".into()
    } else {
        out.join(", ")
    }
}

fn clock_ghz(info: &str) -> Option<f64> {
    match read_trimmed("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") {
        Some(khz) => khz.parse::<f64>().ok().map(|k| k / 1e6),
        None => cpuinfo_field(info, "cpu MHz")?
            .parse::<f64>()
            .ok()
            .map(|m| m / 1e3),
    }
}

/// Peak single-precision GFLOP/s of one core, estimated from /proc/cpuinfo: vector width
/// (AVX-512: 16, AVX2: 8, else 4 floats) × 2 (fused multiply-add) × 2 FMA units × GHz.
/// AMD's first Zen cores (family 23, models below 0x30) run each 256-bit operation as two
/// 128-bit halves, so they count 4 floats; Zen 4 (family 25) runs each 512-bit one as two
/// 256-bit halves, so it counts 8 (PyTorch's own 2048-cube product reaches about that
/// peak there, not twice it). The width is that of the kernels c2f's products use, so a
/// build without AVX-512 kernels is measured against an AVX2 peak.
fn core_peak_gflops(info: &str, ghz: f64) -> f64 {
    let number = |key: &str| cpuinfo_field(info, key).and_then(|v| v.parse::<u32>().ok());
    let amd = cpuinfo_field(info, "vendor_id").is_some_and(|v| v == "AuthenticAMD");
    let family = number("cpu family");
    let half_width_256 = amd && family == Some(23) && number("model").is_some_and(|m| m < 0x30);
    let half_width_512 = amd && family == Some(25);
    let issued: f64 = match backend::gemm_simd() {
        backend::Simd::Avx512 => 16.0,
        backend::Simd::Avx2 => 8.0,
        _ => 4.0,
    };
    let width = match (half_width_256, half_width_512) {
        (true, _) => issued.min(4.0),
        (_, true) => issued.min(8.0),
        _ => issued,
    };
    width * 4.0 * ghz
}

impl Machine {
    /// This machine as seen from this process; `pytorch` is filled in once PyTorch ran.
    pub fn detect() -> Machine {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo_field(&info, "flags")
            .or_else(|| cpuinfo_field(&info, "Features"))
            .unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let clock = clock_ghz(&info);
        let capped = match backend::simd_requested() {
            Ok(Some(_)) => format!(
                " (capped by {}={})",
                backend::SIMD_ENV,
                backend::simd().name()
            ),
            _ => String::new(),
        };
        Machine {
            cpu_model: cpuinfo_field(&info, "model name").unwrap_or_else(|| "unknown".into()),
            allowed_cpus: cpuinfo_field(&status, "Cpus_allowed_list")
                .unwrap_or_else(|| "unknown".into()),
            logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clock_ghz: clock,
            caches: caches(),
            vector_flags: VECTOR_FLAGS
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string())
                .collect(),
            virtual_machine: has("hypervisor"),
            c2f_products: backend::gemm_simd().name().into(),
            c2f_loops: format!(
                "{}{capped}, Winograd 3×3 convolutions {}, direct convolutions {}",
                backend::simd().name(),
                backend::winograd_requested()
                    .unwrap_or(backend::SwitchMode::Auto)
                    .name(),
                backend::direct_requested()
                    .unwrap_or(backend::SwitchMode::Auto)
                    .name(),
            ),
            pytorch: None,
            core_peak_gflops: clock.map(|g| core_peak_gflops(&info, g)),
            measured_peak_gflops: Some(backend::measured_peak_gflops()),
        }
    }

    /// The peak GFLOP/s of one core that shares are taken of: the measured one, else the
    /// estimate.
    pub fn peak_gflops(&self) -> Option<f64> {
        self.measured_peak_gflops.or(self.core_peak_gflops)
    }

    /// The Markdown paragraph that heads the tables.
    pub fn markdown(&self) -> String {
        let clock = self
            .clock_ghz
            .map_or("clock unknown".into(), |g| format!("{g:.2} GHz"));
        let estimate = self.core_peak_gflops.map_or(String::new(), |p| {
            format!(", estimated peak {p:.0} GFLOP/s per core at that clock")
        });
        let measured = self.measured_peak_gflops.map_or(String::new(), |p| {
            format!(
                ", measured {p:.0} GFLOP/s (multiply-adds from registers, one thread; \
                 the shares of peak below are of it)"
            )
        });
        let peak = format!("{estimate}{measured}");
        format!(
            "Machine: {} ({} logical CPUs{}), {clock}{peak}; caches {}; vector extensions {}. \
             Workers are not pinned to cores; allowed CPUs {}.\n\
             c2f: matrix products {}, own loops {}. PyTorch: {}.\n",
            self.cpu_model,
            self.logical_cpus,
            if self.virtual_machine {
                ", a virtual machine"
            } else {
                ""
            },
            self.caches,
            self.vector_flags.join(" "),
            self.allowed_cpus,
            self.c2f_products,
            self.c2f_loops,
            self.pytorch.as_deref().unwrap_or("not timed"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpuinfo(vendor: &str, family: u32, model: u32) -> String {
        format!(
            "vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: X\n"
        )
    }

    /// Floats per FMA per unit on each kind of core, for the products' kernels this
    /// machine dispatches: Zen 4 halves AVX-512, the first Zen halves AVX2, others run
    /// their full width.
    #[test]
    fn peak_counts_the_width_the_core_executes() {
        let (zen1, zen4) = (
            cpuinfo("AuthenticAMD", 23, 1),
            cpuinfo("AuthenticAMD", 25, 17),
        );
        let (zen5, intel) = (
            cpuinfo("AuthenticAMD", 26, 2),
            cpuinfo("GenuineIntel", 6, 143),
        );
        let width = |info: &str| core_peak_gflops(info, 1.0) / 4.0;
        let full = match backend::gemm_simd() {
            backend::Simd::Avx512 => 16.0,
            backend::Simd::Avx2 => 8.0,
            _ => 4.0,
        };
        assert_eq!(width(&zen5), full);
        assert_eq!(width(&intel), full);
        assert_eq!(width(&zen4), full.min(8.0));
        assert_eq!(width(&zen1), full.min(4.0));
    }

    /// Shares of the peak are of the measured one where there is one: the reported clock
    /// of a virtual machine can be far below the one it runs at.
    #[test]
    fn shares_are_of_the_measured_peak() {
        let mut m = Machine::detect();
        assert!(
            m.measured_peak_gflops
                .is_some_and(|p| p.is_finite() && p > 0.0)
        );
        m.core_peak_gflops = Some(80.0);
        m.measured_peak_gflops = Some(110.0);
        assert_eq!(m.peak_gflops(), Some(110.0));
        assert!(m.markdown().contains("estimated peak 80 GFLOP/s"));
        assert!(m.markdown().contains("measured 110 GFLOP/s"));
        m.measured_peak_gflops = None;
        assert_eq!(m.peak_gflops(), Some(80.0));
        assert!(!m.markdown().contains("measured"));
    }
}
