//! The end-to-end row of `c2f bench`: one epoch of `c2f train` on a prepared data set
//! against a plain PyTorch training loop over the same images (same net, batch, optimizer,
//! no evaluation), each in a fresh process, interleaved. The step benchmark times the
//! step alone; this is what a user waits for, data loading and the loop included.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use coarse2fine::data::prepare::DatasetManifest;
use coarse2fine::net::presets;
use coarse2fine::net::spec::InputShape;

use crate::bench_cmd::Spread;

const TORCH_EPOCH: &str = include_str!("../../../bench/torch_epoch.py");
/// The learning rate of both sides; the row times the loop, it does not compare accuracy.
const LR: f64 = 0.01;

/// What to time.
#[derive(Debug, Clone)]
pub struct EpochRequest {
    pub data: PathBuf,
    pub net: String,
    pub size: usize,
    pub batch: usize,
    pub thread_counts: Vec<usize>,
    pub pairs: usize,
    /// The Python interpreter, when PyTorch is timed.
    pub pytorch: Option<String>,
}

/// One thread count's epochs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub net: String,
    pub size: usize,
    pub threads: usize,
    pub batch: usize,
    /// Images of one epoch as `c2f train` ran it (whole batches).
    pub images: u64,
    /// `c2f train`'s training time (its clock without evaluation and start-up).
    pub c2f_loop_s: Spread,
    /// The whole `c2f train` process.
    pub c2f_wall_s: Spread,
    pub pytorch_loop_s: Option<Spread>,
    /// The whole Python process, `import torch` and reading the shards included.
    pub pytorch_wall_s: Option<Spread>,
    /// c2f/PyTorch throughput of the loops, one ratio per pair.
    pub ratio: Option<Spread>,
    pub pytorch_isa: Option<String>,
}

/// One `c2f train` epoch: (loop seconds, images, wall seconds).
fn run_c2f(r: &EpochRequest, threads: usize, out: &Path, seed: usize) -> Result<(f64, u64, f64)> {
    let exe = std::env::current_exe().context("locating the c2f executable")?;
    let never = "1000000000";
    let t0 = Instant::now();
    let status = Command::new(exe)
        .args(["--threads", &threads.to_string(), "--quiet", "train"])
        .arg("--data")
        .arg(&r.data)
        .args([
            "--size",
            &r.size.to_string(),
            "--net",
            &r.net,
            "--epochs",
            "1",
        ])
        .args(["--batch", &r.batch.to_string(), "--lr", &LR.to_string()])
        .args(["--eval-every", never, "--checkpoint-every", never])
        .args(["--seed", &seed.to_string(), "--force", "--out"])
        .arg(out)
        .output()
        .context("starting c2f train")?;
    let wall = t0.elapsed().as_secs_f64();
    if !status.status.success() {
        bail!(
            "c2f train for the epoch row failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let log = std::fs::read_to_string(out.join("metrics.jsonl"))
        .with_context(|| format!("reading {}", out.join("metrics.jsonl").display()))?;
    let last = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["event"] == "train")
        .context("c2f train logged no training event")?;
    let loop_s = last["train_s"]
        .as_f64()
        .context("train_s in the event log")?;
    let images = last["images"].as_u64().context("images in the event log")?;
    Ok((loop_s, images, wall))
}

#[derive(Debug, Deserialize)]
struct TorchEpoch {
    loop_s: f64,
    torch: String,
    capability: String,
}

fn run_torch(
    python: &str,
    script: &Path,
    split: &Path,
    model: &Path,
    args: [String; 3],
) -> Result<(TorchEpoch, f64)> {
    let [threads, batch, images] = args;
    let t0 = Instant::now();
    let out = Command::new(python)
        .arg(script)
        .arg(split)
        .arg(model)
        .args([
            "--threads",
            &threads,
            "--batch",
            &batch,
            "--images",
            &images,
        ])
        .args(["--lr", &LR.to_string()])
        .output()
        .with_context(|| format!("starting {python}"))?;
    let wall = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "PyTorch epoch failed (is torch installed? pip install torch): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let t = serde_json::from_slice(&out.stdout).context("PyTorch epoch output")?;
    Ok((t, wall))
}

/// The PyTorch module of the epoch net, bound to the data set's images, in `dir`.
fn write_model(r: &EpochRequest, dir: &Path) -> Result<()> {
    let m = DatasetManifest::load(&r.data)?;
    let stats = m.stats_at(&r.data, r.size)?;
    let spec =
        presets::resolve(&r.net)?.bind(InputShape::square(m.channels, r.size), m.classes.len())?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("model.py"),
        coarse2fine::export::pytorch_module(&spec, stats)?,
    )?;
    Ok(())
}

/// Times `r.pairs` interleaved epochs per thread count.
pub fn measure(r: &EpochRequest, tmp: &Path) -> Result<Vec<EpochRow>> {
    let (script, model) = (tmp.join("torch_epoch.py"), tmp.join("epoch-model"));
    let split = r.data.join(format!("{0}x{0}", r.size));
    if r.pytorch.is_some() {
        std::fs::write(&script, TORCH_EPOCH)?;
        write_model(r, &model)?;
    }
    let mut rows = Vec::new();
    for &threads in &r.thread_counts {
        let (mut ours, mut theirs, mut images, mut isa) = (Vec::new(), Vec::new(), 0, None);
        for i in 0..r.pairs {
            eprintln!(
                "timing one epoch of {} at {}×{} at {threads} thread(s), pair {}/{}…",
                r.net,
                r.size,
                r.size,
                i + 1,
                r.pairs
            );
            let (loop_s, n, wall) = run_c2f(r, threads, &tmp.join("epoch-run"), i)?;
            images = n;
            ours.push((loop_s, wall));
            if let Some(python) = &r.pytorch {
                let args = [threads, r.batch, n as usize].map(|v| v.to_string());
                let (t, wall) = run_torch(python, &script, &split, &model, args)?;
                isa = Some(format!("{}, CPU capability {}", t.torch, t.capability));
                theirs.push((t.loop_s, wall));
            }
        }
        rows.push(row(r, threads, images, &ours, &theirs, isa)?);
    }
    Ok(rows)
}

fn row(
    r: &EpochRequest,
    threads: usize,
    images: u64,
    ours: &[(f64, f64)],
    theirs: &[(f64, f64)],
    pytorch_isa: Option<String>,
) -> Result<EpochRow> {
    let col = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| Spread::of(v.iter().map(f).collect());
    Ok(EpochRow {
        net: r.net.clone(),
        size: r.size,
        threads,
        batch: r.batch,
        images,
        c2f_loop_s: col(ours, |t| t.0).context("no epoch measured")?,
        c2f_wall_s: col(ours, |t| t.1).context("no epoch measured")?,
        pytorch_loop_s: col(theirs, |t| t.0),
        pytorch_wall_s: col(theirs, |t| t.1),
        ratio: Spread::of(ours.iter().zip(theirs).map(|(o, t)| t.0 / o.0).collect()),
        pytorch_isa,
    })
}

/// The epoch rows as Markdown (nothing when there are none).
pub fn epoch_table(rows: &[EpochRow]) -> String {
    let Some(head) = rows.first() else {
        return String::new();
    };
    let mut s = format!(
        "\nOne epoch of {} at {}×{} ({} images, batch {}): `c2f train` against a plain PyTorch \
         loop over the same images; loop seconds exclude start-up and evaluation, process \
         seconds include them (PyTorch's include `import torch` and reading the shards):\n\n\
         | threads | c2f loop s | PyTorch loop s | c2f/PyTorch | c2f process s | PyTorch process s |\n\
         |---|---|---|---|---|---|\n",
        head.net, head.size, head.size, head.images, head.batch
    );
    let num = |v: Option<Spread>| v.map_or("–".into(), |v| format!("{:.2}", v.median));
    for e in rows {
        s += &format!(
            "| {} | {:.2} | {} | {} | {:.2} | {} |\n",
            e.threads,
            e.c2f_loop_s.median,
            num(e.pytorch_loop_s),
            e.ratio.map_or("–".into(), |r| r.cell()),
            e.c2f_wall_s.median,
            num(e.pytorch_wall_s),
        );
    }
    s
}
