//! `c2f bench`: training and inference throughput of the benchmark nets and the Table I
//! presets at several thread counts, with PyTorch timed on the same nets in the same
//! invocation, plus data-loader and `prepare` throughput.
//!
//! Every (net, thread count) is measured in a fresh child process (`--threads` sets the
//! size of the process-wide thread pool, and a fresh process gives an honest peak memory);
//! ours and PyTorch's are measured back to back, so both see the same machine load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use coarse2fine::backend::{self, BackendKind, Compute, Network, Sgd};
use coarse2fine::data::loader::{Normalizer, Prefetcher};
use coarse2fine::data::prepare::{self, ChannelStats, DatasetManifest, PrepareConfig};
use coarse2fine::grow::verify::random_batch;
use coarse2fine::net::NetSpec;
use coarse2fine::net::WeightMap;
use coarse2fine::net::presets::{self, PRESETS};
use coarse2fine::net::spec::InputShape;
use coarse2fine::net::weights::Init;
use coarse2fine::progress::Silent;

use crate::bench_epoch::{self, EpochRequest, EpochRow, epoch_table};
use crate::bench_machine::Machine;

/// Nets described in the speed issue, kept as spec files in bench/nets/.
const BENCH_NETS: [(&str, &str, usize, usize); 3] = [
    (
        "tiny16",
        include_str!("../../../bench/nets/tiny16.toml"),
        16,
        1000,
    ),
    (
        "small32",
        include_str!("../../../bench/nets/small32.toml"),
        32,
        1000,
    ),
    (
        "cifar32",
        include_str!("../../../bench/nets/cifar32.toml"),
        32,
        10,
    ),
];

const TORCH_SCRIPT: &str = include_str!("../../../bench/torch_bench.py");

/// Measure training speed against PyTorch, and the data pipeline's throughput.
///
/// For every net and thread count: the median time of a training step (SGD with momentum,
/// cross-entropy) and of an inference pass over --steps steps after --warmup, on random
/// images at the net's native size, as images/s and GFLOP/s (against a core's peak, measured
/// with multiply-adds from registers at start). With --pytorch the same nets (generated as
/// PyTorch modules) are timed by PyTorch right after ours, and the table gives our/PyTorch
/// ratios. With --data, the data loader's
/// images/s at the smallest prepared size; with --prepare-jpegs N, `prepare` on N
/// generated JPEGs.
///
/// Examples:
///   c2f bench
///   c2f bench --pytorch --data data/fashion-mnist --prepare-jpegs 2000 --md bench.md
///   c2f bench --nets tiny16,net-2 --thread-counts 1 --steps 50
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct BenchArgs {
    /// Nets: tiny16, small32, cifar32 (bench/nets/), Table I presets, or `all` (those three
    /// and every preset but the full-size alexnet).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    nets: Vec<String>,
    /// Thread counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    thread_counts: Vec<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Measurements of each row, each a fresh c2f process followed by a fresh PyTorch one
    /// (c2f, PyTorch, c2f, PyTorch, …), so both sides see the same drift in machine load.
    /// Tables give the median over them and ratios their min–max.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also time PyTorch on the same nets (needs python3 with torch: pip install torch).
    #[arg(long)]
    pytorch: bool,
    /// Python interpreter for --pytorch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// A prepared data folder: also measure the data loader at its smallest size.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also measure `prepare` on this many generated 256×256 JPEGs.
    #[arg(long, value_name = "N")]
    prepare_jpegs: Option<usize>,
    /// Write all results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the tables as Markdown.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Compute backend: cpu (the native engine), flex (burn's CPU backend),
    /// libtorch-cuda[:N], libtorch, cuda[:N], wgpu. With a CUDA backend, --pytorch runs
    /// PyTorch on the same GPU.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Also time this backend on the same nets (e.g. `flex`, burn's CPU backend), for a
    /// column of c2f/REFERENCE training ratios.
    #[arg(long, value_name = "BACKEND")]
    reference: Option<String>,
    /// A prepared data folder: also time one epoch of `c2f train` against a plain PyTorch
    /// training loop over the same images (same net, batch and optimizer, evaluation off).
    #[arg(long, value_name = "DIR")]
    epoch_data: Option<PathBuf>,
    /// Net of the epoch row.
    #[arg(long, default_value = "net-4")]
    epoch_net: String,
    /// Image size of the epoch row (a size prepared in --epoch-data).
    #[arg(long, default_value_t = 32)]
    epoch_size: usize,
    /// Internal: measure one net in this process and print JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Internal: the worker also times each layer.
    #[arg(long, hide = true)]
    layers: bool,
}

/// One net as benchmarked: unbound spec, side, classes.
fn bench_net(name: &str) -> Result<(NetSpec, usize, usize)> {
    if let Some((n, text, side, classes)) = BENCH_NETS.iter().find(|b| b.0 == name) {
        let spec = NetSpec::parse(Path::new(&format!("bench/nets/{n}.toml")), text)?;
        return Ok((spec, *side, *classes));
    }
    let p = PRESETS.iter().find(|p| p.name == name).with_context(|| {
        format!(
            "unknown bench net {name:?}: use tiny16, small32, cifar32 or a preset ({})",
            PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok((presets::resolve(name)?, p.native_size, 1000))
}

fn all_nets() -> Vec<String> {
    BENCH_NETS
        .iter()
        .map(|b| b.0.to_string())
        .chain(
            PRESETS
                .iter()
                .filter(|p| p.name != "alexnet")
                .map(|p| p.name.to_string()),
        )
        .collect()
}

/// What one worker measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    train_step_s: f64,
    infer_step_s: f64,
    peak_rss_bytes: Option<u64>,
    /// Median seconds of each layer's inference forward pass (c2f only).
    #[serde(default)]
    layer_forward_s: Vec<(String, f64)>,
    /// PyTorch: its version and CPU capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    isa: Option<String>,
}

/// One c2f measurement and the PyTorch one right after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pair {
    ours: Measured,
    pytorch: Option<Measured>,
}

/// The median of measurements and their range.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `**1.23** (1.10–1.31)`: the median in bold, the range when there is one.
    pub fn cell(&self) -> String {
        self.text(true)
    }

    /// `1.23 (1.10–1.31)`.
    pub fn plain(&self) -> String {
        self.text(false)
    }

    fn text(&self, bold: bool) -> String {
        let b = if bold { "**" } else { "" };
        let median = format!("{b}{:.2}{b}", self.median);
        if self.min == self.max {
            median
        } else {
            format!("{median} ({:.2}–{:.2})", self.min, self.max)
        }
    }
}

/// One row of the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    net: String,
    size: usize,
    threads: usize,
    batch: usize,
    /// Forward FLOPs per image.
    flops: u64,
    /// c2f's median step times over the pairs, its largest peak memory, and the per-layer
    /// times of the first pair.
    ours: Measured,
    /// PyTorch's median step times over the pairs.
    pytorch: Option<Measured>,
    /// c2f/PyTorch training throughput, one ratio per pair.
    train_ratio: Option<Spread>,
    /// c2f/PyTorch inference throughput, one ratio per pair.
    infer_ratio: Option<Spread>,
    /// The --reference backend, measured once.
    #[serde(default)]
    reference: Option<Measured>,
    pairs: Vec<Pair>,
}

impl Row {
    fn ips(&self, step_s: f64) -> f64 {
        self.batch as f64 / step_s
    }
}

/// Medians of the step times of `runs`, the largest peak memory, and the first run's
/// per-layer times.
fn summary<'a>(runs: impl Iterator<Item = &'a Measured> + Clone) -> Option<Measured> {
    let first = runs.clone().next()?;
    let med = |f: fn(&Measured) -> f64| Spread::of(runs.clone().map(f).collect()).map(|s| s.median);
    Some(Measured {
        train_step_s: med(|m| m.train_step_s)?,
        infer_step_s: med(|m| m.infer_step_s)?,
        peak_rss_bytes: runs.clone().filter_map(|m| m.peak_rss_bytes).max(),
        layer_forward_s: first.layer_forward_s.clone(),
        isa: first.isa.clone(),
    })
}

/// Throughput ratios c2f/PyTorch of each pair, from the step times `f` picks.
fn ratios(pairs: &[Pair], f: fn(&Measured) -> f64) -> Option<Spread> {
    Spread::of(
        pairs
            .iter()
            .filter_map(|p| p.pytorch.as_ref().map(|t| f(t) / f(&p.ours)))
            .collect(),
    )
}

fn median_time(steps: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn worker(a: &BenchArgs, name: &str) -> Result<()> {
    let (spec, side, classes) = bench_net(name)?;
    let spec = spec.bind(InputShape::square(3, side), classes)?;
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    let w = WeightMap::init(&spec, "kaiming".parse::<Init>()?, 0)?;
    let mut net = Network::new(&spec, &w, &compute)?;
    let sgd = Sgd::new(&net, 0.9, 5e-4);
    let mut batch = random_batch([a.batch, 3, side, side], 1);
    batch.labels = (0..a.batch as u32).map(|i| i % classes as u32).collect();
    let mut t = 0u64;
    let train_step_s = median_time(a.steps, a.warmup, || {
        t += 1;
        backend::train_step(&mut net, &sgd, &batch, 0.001, t)?;
        Ok(())
    })?;
    let infer_step_s = median_time(a.steps, a.warmup, || {
        net.logits(&batch)?;
        Ok(())
    })?;
    let mut per_layer: Vec<Vec<(String, f64)>> = Vec::new();
    if a.layers {
        median_time(a.steps, a.warmup, || {
            per_layer.push(net.forward_layer_times(&batch)?);
            Ok(())
        })?;
    }
    let per_layer = &per_layer[a.warmup.min(per_layer.len())..];
    let layer_forward_s = per_layer
        .first()
        .map(|first| {
            first
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    let mut v: Vec<f64> = per_layer.iter().map(|run| run[i].1).collect();
                    v.sort_by(f64::total_cmp);
                    (name.clone(), v[v.len() / 2])
                })
                .collect()
        })
        .unwrap_or_default();
    let m = Measured {
        train_step_s,
        infer_step_s,
        peak_rss_bytes: peak_rss(),
        layer_forward_s,
        isa: None,
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn run_worker(
    a: &BenchArgs,
    name: &str,
    threads: usize,
    backend: &str,
    layers: bool,
) -> Result<Measured> {
    let exe = std::env::current_exe().context("locating the c2f executable")?;
    let out = Command::new(exe)
        .args(["--threads", &threads.to_string(), "--quiet", "bench"])
        .args(["--worker", name, "--backend", backend])
        .args(layers.then_some("--layers"))
        .args(["--batch", &a.batch.to_string()])
        .args(["--steps", &a.steps.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .output()
        .context("starting a bench worker")?;
    if !out.status.success() {
        bail!(
            "bench worker for {name} at {threads} thread(s) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("bench worker output")
}

/// PyTorch's device for the c2f backend `backend`: the same NVIDIA GPU for the CUDA
/// backends, else the CPU (wgpu's GPU may be any vendor's).
fn torch_device(backend: &str) -> String {
    match backend.parse::<BackendKind>() {
        Ok(BackendKind::Cuda(n) | BackendKind::LibtorchCuda(n)) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

fn run_torch(a: &BenchArgs, script: &Path, dir: &Path, threads: usize) -> Result<Measured> {
    let out = Command::new(&a.python)
        .arg(script)
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--steps", &a.steps.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .args(["--device", &torch_device(&a.backend)])
        .arg(dir)
        .output()
        .with_context(|| format!("starting {}", a.python))?;
    if !out.status.success() {
        bail!(
            "PyTorch reference failed (is torch installed? pip install torch): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    #[derive(Deserialize)]
    struct T {
        train_step_s: f64,
        infer_step_s: f64,
        torch: String,
        capability: String,
    }
    let t: T = serde_json::from_slice(&out.stdout).context("PyTorch reference output")?;
    Ok(Measured {
        train_step_s: t.train_step_s,
        infer_step_s: t.infer_step_s,
        peak_rss_bytes: None,
        layer_forward_s: Vec::new(),
        isa: Some(format!("{}, CPU capability {}", t.torch, t.capability)),
    })
}

/// Loader images/s at the smallest prepared size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoaderResult {
    size: usize,
    batch: usize,
    images_per_s: f64,
}

fn measure_loader(data: &Path, batch: usize) -> Result<LoaderResult> {
    let m = DatasetManifest::load(data)?;
    let size = *m.sizes.first().context("no sizes in dataset.json")?;
    let set = std::sync::Arc::new(m.open_split(data, size, "train")?);
    let norm = Normalizer::new(m.stats_at(data, size)?);
    let batches = ((200_000 / batch).max(20)) as u64;
    let none = coarse2fine::data::augment::Augment::default();
    // Warm the page cache first, so the figure is the loader's, not the disk's.
    for b in Prefetcher::training(set.clone(), norm.clone(), (0, batch), (0, 10), none) {
        std::hint::black_box(&b);
    }
    let t0 = Instant::now();
    let mut n = 0usize;
    for b in Prefetcher::training(set, norm, (0, batch), (0, batches), none) {
        n += std::hint::black_box(&b).len();
    }
    Ok(LoaderResult {
        size,
        batch,
        images_per_s: n as f64 / t0.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PrepareResult {
    images: usize,
    source_side: usize,
    sizes: Vec<usize>,
    images_per_s: f64,
}

fn measure_prepare(n: usize, tmp: &Path) -> Result<PrepareResult> {
    let src = tmp.join("jpegs");
    let side = 256usize;
    for i in 0..n {
        let class = src.join(format!("class{}", i % 10));
        std::fs::create_dir_all(&class)?;
        let img = image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
            image::Rgb([
                (x as usize * 255 / side) as u8,
                (y as usize * 255 / side) as u8,
                ((i * 37) % 256) as u8,
            ])
        });
        img.save(class.join(format!("{i}.jpg")))?;
    }
    let cfg = PrepareConfig {
        sizes: vec![8, 16, 32],
        ..Default::default()
    };
    let t0 = Instant::now();
    prepare::prepare(&src, &tmp.join("prepared"), &cfg, &Silent)?;
    Ok(PrepareResult {
        images: n,
        source_side: side,
        sizes: cfg.sizes,
        images_per_s: n as f64 / t0.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    command: String,
    date_unix_s: u64,
    machine: Machine,
    /// (c2f, PyTorch) pairs per row.
    pairs: usize,
    backend: &'a str,
    reference: Option<&'a str>,
    rows: &'a [Row],
    loader: Option<LoaderResult>,
    prepare: Option<PrepareResult>,
    epoch: Vec<EpochRow>,
}

fn markdown(r: &Report<'_>) -> String {
    let mut s = r.machine.markdown();
    s += &format!(
        "Each row: {} pair(s) of fresh processes, c2f then PyTorch, interleaved; images/s are \
         medians over the pairs, ratios (c2f/PyTorch, above 1: c2f is faster) the median of \
         the pairs' ratios with their min–max.\n\n",
        r.pairs
    );
    s += &rows_table(r);
    s += &layers_table(r.rows);
    s += &epoch_table(&r.epoch);
    s += &loader_and_prepare(r);
    s
}

fn rows_table(r: &Report<'_>) -> String {
    let mut s = String::new();
    let peak = r.machine.peak_gflops();
    s += "| net | input | threads | train img/s (c2f) | train img/s (PyTorch) | train c2f/PyTorch | infer img/s (c2f) | infer img/s (PyTorch) | infer c2f/PyTorch | train GFLOP/s (c2f) | % of peak | peak memory (c2f) |";
    if let Some(b) = r.reference {
        s += &format!(" train img/s ({b}) | train c2f/{b} |");
    }
    s += "\n|---|---|---|---|---|---|---|---|---|---|---|---|";
    if r.reference.is_some() {
        s += "---|---|";
    }
    s += "\n";
    for row in r.rows {
        let ours_train = row.ips(row.ours.train_step_s);
        let ours_infer = row.ips(row.ours.infer_step_s);
        // A training step costs about three forward passes (forward, and the two products
        // of the backward pass).
        let gflops = 3.0 * row.flops as f64 * ours_train / 1e9;
        let (tt, ti, rt, ri) = match &row.pytorch {
            Some(p) => {
                let (pt, pi) = (row.ips(p.train_step_s), row.ips(p.infer_step_s));
                (
                    format!("{pt:.0}"),
                    format!("{pi:.0}"),
                    row.train_ratio.map_or("–".into(), |r| r.cell()),
                    row.infer_ratio.map_or("–".into(), |r| r.plain()),
                )
            }
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        s += &format!(
            "| {} | {}×{} | {} | {ours_train:.0} | {tt} | {rt} | {ours_infer:.0} | {ti} | {ri} | {gflops:.1} | {} | {} |\n",
            row.net,
            row.size,
            row.size,
            row.threads,
            peak.map_or("–".into(), |p| format!(
                "{:.1}%",
                100.0 * gflops / (p * row.threads as f64)
            )),
            row.ours.peak_rss_bytes.map_or("–".into(), |b| format!(
                "{:.0} MiB",
                b as f64 / (1u64 << 20) as f64
            )),
        );
        if let Some(m) = &row.reference {
            let rt = row.ips(m.train_step_s);
            s.pop();
            s += &format!(" {rt:.0} | {:.2} |\n", ours_train / rt);
        }
    }
    s
}

fn layers_table(rows: &[Row]) -> String {
    let mut s = String::new();
    if let Some(head) = rows.first() {
        let first = head.threads;
        s += &format!(
            "\nInference forward time per layer (c2f, {first} thread(s), batch {}; median of the same steps):\n\n| net | layer | ms | share |\n|---|---|---|---|\n",
            head.batch
        );
        for row in rows.iter().filter(|row| row.threads == first) {
            let total: f64 = row.ours.layer_forward_s.iter().map(|l| l.1).sum();
            for (name, t) in &row.ours.layer_forward_s {
                s += &format!(
                    "| {} | {name} | {:.3} | {:.0}% |\n",
                    row.net,
                    1e3 * t,
                    100.0 * t / total.max(1e-12)
                );
            }
        }
    }
    s
}

fn loader_and_prepare(r: &Report<'_>) -> String {
    let mut s = String::new();
    if let Some(l) = &r.loader {
        let fastest = r
            .rows
            .iter()
            .filter(|row| row.size == l.size)
            .map(|row| row.ips(row.ours.train_step_s))
            .fold(0.0f64, f64::max);
        s += &format!(
            "\nData loader at {}×{} (batches of {}): {:.0} images/s",
            l.size, l.size, l.batch, l.images_per_s
        );
        if fastest > 0.0 {
            s += &format!(
                " = {:.1}× the fastest training step at that size ({fastest:.0} images/s)",
                l.images_per_s / fastest
            );
        }
        s += ".\n";
    }
    if let Some(p) = &r.prepare {
        s += &format!(
            "\n`prepare` of {} JPEGs ({}×{}) to sizes {:?}: {:.0} images/s.\n",
            p.images, p.source_side, p.source_side, p.sizes, p.images_per_s
        );
    }
    s
}

/// A PyTorch module of each net in `dir/NAME/model.py`, for the PyTorch side.
fn write_torch_modules(dir: &Path, nets: &[(String, NetSpec, usize)]) -> Result<()> {
    let neutral = ChannelStats {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    for (name, spec, _) in nets {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("model.py"),
            coarse2fine::export::pytorch_module(spec, &neutral)?,
        )?;
    }
    Ok(())
}

fn epoch_request(a: &BenchArgs, data: &Path) -> EpochRequest {
    EpochRequest {
        data: data.to_path_buf(),
        net: a.epoch_net.clone(),
        size: a.epoch_size,
        batch: a.batch,
        thread_counts: a.thread_counts.clone(),
        pairs: a.pairs,
        pytorch: a.pytorch.then(|| a.python.clone()),
    }
}

/// One row per thread count and net: `--pairs` interleaved (c2f, PyTorch) measurements,
/// each side in a fresh process, then the reference backend once.
fn measure(
    a: &BenchArgs,
    nets: &[(String, NetSpec, usize)],
    script: &Path,
    tmp: &Path,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &threads in &a.thread_counts {
        for (name, spec, side) in nets {
            let mut pairs = Vec::new();
            for i in 0..a.pairs {
                eprintln!(
                    "measuring {name} at {threads} thread(s), pair {}/{}…",
                    i + 1,
                    a.pairs
                );
                let ours = run_worker(a, name, threads, &a.backend, i == 0)?;
                let pytorch = a
                    .pytorch
                    .then(|| run_torch(a, script, &tmp.join(name), threads))
                    .transpose()?;
                pairs.push(Pair { ours, pytorch });
            }
            let reference = a
                .reference
                .as_deref()
                .map(|b| run_worker(a, name, threads, b, false))
                .transpose()?;
            rows.push(Row {
                net: name.clone(),
                size: *side,
                threads,
                batch: a.batch,
                flops: spec.flops()?,
                ours: summary(pairs.iter().map(|p| &p.ours)).context("no measurement")?,
                pytorch: summary(pairs.iter().filter_map(|p| p.pytorch.as_ref())),
                train_ratio: ratios(&pairs, |m| m.train_step_s),
                infer_ratio: ratios(&pairs, |m| m.infer_step_s),
                reference,
                pairs,
            });
        }
    }
    Ok(rows)
}

pub fn cmd_bench(a: BenchArgs) -> Result<()> {
    if let Some(name) = &a.worker {
        return worker(&a, name);
    }
    if a.batch == 0 || a.steps == 0 || a.pairs == 0 {
        bail!("--batch, --steps and --pairs must be at least 1");
    }
    if a.thread_counts.contains(&0) {
        bail!("--thread-counts must be at least 1");
    }
    let names = if a.nets.iter().any(|n| n == "all") {
        all_nets()
    } else {
        a.nets.clone()
    };
    // Validate every net before the first measurement.
    let nets: Vec<(String, NetSpec, usize)> = names
        .iter()
        .map(|n| {
            let (spec, side, classes) = bench_net(n)?;
            Ok((
                n.clone(),
                spec.bind(InputShape::square(3, side), classes)?,
                side,
            ))
        })
        .collect::<Result<_>>()?;
    let tmp = tempfile::tempdir()?;
    let script = tmp.path().join("torch_bench.py");
    if a.pytorch {
        std::fs::write(&script, TORCH_SCRIPT)?;
        write_torch_modules(tmp.path(), &nets)?;
    }
    let mut machine = Machine::detect();
    let rows = measure(&a, &nets, &script, tmp.path())?;
    let epoch = match &a.epoch_data {
        Some(d) => bench_epoch::measure(&epoch_request(&a, d), tmp.path())?,
        None => Vec::new(),
    };
    machine.pytorch = rows
        .iter()
        .find_map(|r| r.pytorch.as_ref().and_then(|p| p.isa.clone()))
        .or_else(|| epoch.iter().find_map(|e| e.pytorch_isa.clone()));
    let loader = a
        .data
        .as_deref()
        .map(|d| measure_loader(d, a.batch))
        .transpose()?;
    let prepare = a
        .prepare_jpegs
        .map(|n| measure_prepare(n, tmp.path()))
        .transpose()?;
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        machine,
        pairs: a.pairs,
        backend: &a.backend,
        reference: a.reference.as_deref(),
        rows: &rows,
        loader,
        prepare,
        epoch,
    };
    let md = markdown(&report);
    print!("{md}");
    if let Some(p) = &a.md {
        coarse2fine::fsutil::write_bytes_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.json {
        coarse2fine::fsutil::write_json_atomic(p, &report)?;
    }
    Ok(())
}
