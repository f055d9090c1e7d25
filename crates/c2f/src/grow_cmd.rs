//! `c2f grow` and `c2f verify`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, Args, ValueEnum};
use coarse2fine::backend::{BackendKind, Compute, Network};
use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::data::loader::{Batch, Normalizer, make_batch};
use coarse2fine::data::prepare::DatasetManifest;
use coarse2fine::fsutil::{self, OutputLock, Ownership};
use coarse2fine::grow::verify::{self, Agreement, Growth, Verification};
use coarse2fine::grow::{DeepenBlock, GrowOp, NewFilters, UpscaleMode};
use coarse2fine::net::WeightMap;
use coarse2fine::progress::Progress;
use coarse2fine::train;

use crate::ui::Bars;

/// A new checkpoint folder: `grow` never writes into an existing one.
const NEW_CHECKPOINT: Ownership = Ownership {
    what: "checkpoint folder",
    marked: |_| false,
    entry: None,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Exact,
    Paper,
    Resize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BlockArg {
    Identity,
    Residual,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MomentumArg {
    /// Move momentum buffers with the weights (scaled as they are), zeros for new weights.
    Carry,
    /// Start the grown net's optimizer from zeros.
    Reset,
}

/// Grow a trained network into a larger one that computes the same function.
///
/// Operators apply in the order given: --upscale doubles the input side (the first conv's
/// weights spread over 2×2 blocks ÷4, later layers on the lattice of the small net's
/// positions); --widen LAYER=+N adds N filters or units; --deepen after=LAYER inserts an
/// identity layer with ReLU after LAYER's ReLU (--block residual: a residual block that
/// starts as the identity). Each step is checked numerically (logits of
/// the small net on real and random images against the grown net on the same images,
/// pixel-replicated) and the figures are stored in the new checkpoint's meta.json; an exact
/// operator that misses 1e-5 relative error is an error.
///
/// Examples:
///   c2f grow runs/net2-8/checkpoint --upscale --out grown/net2-16
///   c2f grow runs/net2-8 --upscale --mode paper --sigma 0.01 --out grown/paper
///   c2f grow runs/net2-8 --widen conv1=+6 --init flip-h --upscale --out grown/net3-16
///   c2f grow runs/net4-8 --deepen after=conv2 --kernel 3 --out grown/deeper
///   c2f grow runs/resnet-8 --deepen after=s3b1_bn2 --block residual --out grown/resnet-10
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct GrowArgs {
    /// Checkpoint folder (or run folder) of the trained small net.
    pub checkpoint: PathBuf,
    /// Output checkpoint folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Double the input resolution (repeat to quadruple, …); optionally with its own MODE.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "", action = clap::ArgAction::Append)]
    pub upscale: Vec<String>,
    /// Mode of upscales given without one: exact (lattice, function kept), paper (Fig. 3,
    /// noise in between) or resize (the same layers on the larger image, the first fully
    /// connected layer resampled; no dilation, function kept approximately).
    #[arg(long, value_enum, default_value = "exact")]
    pub mode: ModeArg,
    /// σ of the in-between noise of --mode paper.
    #[arg(long, default_value_t = 0.01)]
    pub sigma: f32,
    /// Add filters/units: LAYER=+N (repeatable).
    #[arg(long, value_name = "LAYER=+N")]
    pub widen: Vec<String>,
    /// New filters: gauss:SIGMA, zeros, flip-h, flip-v, flip-diag, flip-central, net2wider.
    #[arg(long, default_value = "gauss:0.01")]
    pub init: String,
    /// σ of the next layer's weights from new units (default 0 keeps the function).
    #[arg(long, default_value_t = 0.0)]
    pub next_sigma: f32,
    /// Bias of new units (gauss and zeros inits).
    #[arg(long, default_value_t = 0.0)]
    pub bias: f32,
    /// Allow new units that can never learn.
    #[arg(long)]
    pub force: bool,
    /// Insert an identity layer: after=LAYER (repeatable).
    #[arg(long, value_name = "after=LAYER")]
    pub deepen: Vec<String>,
    /// What --deepen inserts: identity (a conv or fc layer holding the identity, and a
    /// ReLU) or residual (a conv–BN–ReLU–conv–BN block whose last γ is zero, and a ReLU;
    /// LAYER may then be a layer inside a block, to insert after that block).
    #[arg(long, value_enum, default_value = "identity")]
    pub block: BlockArg,
    /// Kernel side of inserted conv layers (odd).
    #[arg(long, default_value_t = 3)]
    pub kernel: usize,
    /// σ of noise added to new units' incoming weights (--widen; breaks the symmetry of
    /// net2wider copies) and to inserted identity layers (--deepen).
    #[arg(long, default_value_t = 0.0)]
    pub noise: f32,
    /// After growing, re-estimate the batch norms' running statistics on this many training
    /// images at the new size (training-mode statistics averaged over batches of 128; from
    /// --data or the checkpoint's own data). Useful after `--upscale resize`, whose
    /// statistics were gathered at the smaller size. 0: keep them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub recalibrate: usize,
    /// Optimizer state of the grown net.
    #[arg(long, value_enum, default_value = "carry")]
    pub momentum: MomentumArg,
    /// Prepared data for the check (default: the checkpoint's own data, if present).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Real test images used by each check.
    #[arg(long, default_value_t = 500)]
    pub check_images: usize,
    /// Seed of new weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Compare a small network with a grown one on the same images.
///
/// Runs both checkpoints on real images at the small net's size (pixel-replicated for the
/// grown one) and on random images, and prints the largest absolute difference of logits,
/// the relative error ‖g − f‖/‖f‖ and the top-1 agreement.
///
/// Example:
///   c2f verify runs/net2-8/checkpoint grown/net2-16 --images 10000
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct VerifyArgs {
    /// The small net's checkpoint.
    pub small: PathBuf,
    /// The grown net's checkpoint.
    pub grown: PathBuf,
    /// Prepared data (default: the small net's own).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split to take images from.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Real images to compare on (default: the whole split).
    #[arg(long)]
    pub images: Option<usize>,
    /// Random N(0, 1) images to compare on.
    #[arg(long, default_value_t = 256)]
    pub random: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_widen(s: &str) -> Result<(String, usize)> {
    let (layer, n) = s
        .split_once("=+")
        .with_context(|| format!("--widen {s:?}: expected LAYER=+N, e.g. conv1=+6"))?;
    let n: usize = n
        .parse()
        .with_context(|| format!("--widen {s:?}: {n:?} is not a count"))?;
    Ok((layer.to_string(), n))
}

fn parse_deepen(s: &str) -> Result<String> {
    s.strip_prefix("after=")
        .filter(|l| !l.is_empty())
        .map(String::from)
        .with_context(|| format!("--deepen {s:?}: expected after=LAYER, e.g. after=conv1"))
}

/// The operators in command-line order.
fn ops_in_order(a: &GrowArgs, m: &ArgMatches) -> Result<Vec<GrowOp>> {
    let init: NewFilters = a.init.parse()?;
    let mut ops: Vec<(usize, GrowOp)> = Vec::new();
    if let Some(idx) = m.indices_of("upscale") {
        for (i, v) in idx.zip(&a.upscale) {
            let mode = match (v.as_str(), a.mode) {
                ("", ModeArg::Exact) | ("exact", _) => UpscaleMode::Exact,
                ("", ModeArg::Paper) | ("paper", _) => UpscaleMode::Paper,
                ("", ModeArg::Resize) | ("resize", _) => UpscaleMode::Resize,
                (other, _) => bail!("--upscale {other:?}: the mode is exact, paper or resize"),
            };
            ops.push((
                i,
                GrowOp::Upscale {
                    mode,
                    sigma: a.sigma,
                },
            ));
        }
    }
    if let Some(idx) = m.indices_of("widen") {
        for (i, s) in idx.zip(&a.widen) {
            let (layer, add) = parse_widen(s)?;
            ops.push((
                i,
                GrowOp::Widen {
                    layer,
                    add,
                    init,
                    next_sigma: a.next_sigma,
                    bias: a.bias,
                    noise: a.noise,
                    force: a.force,
                },
            ));
        }
    }
    if let Some(idx) = m.indices_of("deepen") {
        for (i, s) in idx.zip(&a.deepen) {
            ops.push((
                i,
                GrowOp::Deepen {
                    after: parse_deepen(s)?,
                    block: match a.block {
                        BlockArg::Identity => DeepenBlock::Identity,
                        BlockArg::Residual => DeepenBlock::Residual,
                    },
                    kernel: a.kernel,
                    noise: a.noise,
                },
            ));
        }
    }
    ops.sort_by_key(|(i, _)| *i);
    if ops.is_empty() {
        bail!("nothing to do: give --upscale, --widen LAYER=+N or --deepen after=LAYER");
    }
    Ok(ops.into_iter().map(|(_, o)| o).collect())
}

/// Normalised test images of a prepared folder at `size`, for checks.
fn check_batches(
    root: &Path,
    size: usize,
    split: &str,
    norm: &Normalizer,
    limit: Option<usize>,
) -> coarse2fine::Result<Vec<Batch>> {
    let m = DatasetManifest::load(root)?;
    let set = Arc::new(m.open_split(root, size, split)?);
    let n = limit.unwrap_or(set.len()).min(set.len());
    let idx: Vec<usize> = (0..n).collect();
    Ok(idx.chunks(500).map(|c| make_batch(&set, norm, c)).collect())
}

fn describe(a: &Agreement) -> String {
    format!(
        "max |Δ| {:.3e}, rel {:.3e}, top-1 agreement {:.2}% ({} images)",
        a.max_abs,
        a.rel,
        100.0 * a.top1_agreement,
        a.images
    )
}

pub fn cmd_grow(a: GrowArgs, m: &ArgMatches, bars: &Bars) -> Result<()> {
    let ops = ops_in_order(&a, m)?;
    let _lock = OutputLock::acquire(&a.out)?;
    if a.out.exists() {
        bail!("{}: already exists; choose a new --out", a.out.display());
    }
    fsutil::check_output(&a.out, &NEW_CHECKPOINT, &[&a.checkpoint])?;
    let src = train::checkpoint_dir(&a.checkpoint);
    let small = Checkpoint::load(&src)?;
    let compute = Compute::new(BackendKind::Cpu)?;
    let norm = Normalizer::new(&small.meta.normalization);
    let batches = match a
        .data
        .clone()
        .map_or_else(|| small.meta.locate_dataset(&src), Ok)
    {
        Ok(root) => check_batches(&root, small.meta.size, "test", &norm, Some(a.check_images)),
        Err(e) => Err(e),
    };
    let batches = match batches {
        Ok(b) => b,
        Err(e) if a.data.is_none() => {
            bars.note(&format!("checking on random images only: {e}"));
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let growth = Growth {
        ops: &ops,
        batches: &batches,
        seed: a.seed,
    };
    let grown = verify::grow_checked(
        &small.spec,
        &small.weights,
        Some(&small.optimizer),
        &growth,
        &compute,
        |op, v| {
            let figures = v.data.map_or_else(|| describe(&v.random), |d| describe(&d));
            println!("{}: {}", op.describe(), figures);
        },
    )?;
    let mut records = small.meta.growth.clone();
    records.extend(grown.checks);
    let (spec, weights, momentum) = (grown.spec, grown.weights, grown.momentum);
    let current = Network::new(&spec, &weights, &compute)?;
    let original = Network::new(&small.spec, &small.weights, &compute)?;
    let overall = verify::check(&original, &current, &batches, 64, a.seed ^ 0xC0FFEE, &ops)?;
    let momentum = match a.momentum {
        MomentumArg::Carry => momentum.context("momentum buffers were not carried")?,
        MomentumArg::Reset => WeightMap::zeros_for(&spec)?,
    };
    let input = spec.input.context("grown spec is not bound")?;
    let weights = if a.recalibrate > 0 {
        let root = a
            .data
            .clone()
            .map_or_else(|| small.meta.locate_dataset(&src), Ok)
            .context("--recalibrate needs the prepared data (give --data)")?;
        let m = DatasetManifest::load(&root)?;
        let set = m.open_split(&root, input.height, "train")?;
        let mut net = Network::new(&spec, &weights, &compute)?;
        let (used, updated) = train::recalibrate(&mut net, (&set, &norm), a.recalibrate, 128)?;
        let after = verify::check(&original, &net, &batches, 64, a.seed ^ 0xC0FFEE, &[])?;
        println!(
            "recalibrated {updated} batch norms on {used} training images at {}×{}; then: {}",
            input.height,
            input.width,
            after
                .data
                .map_or_else(|| describe(&after.random), |d| describe(&d)),
        );
        net.weights()?
    } else {
        weights
    };
    let mut meta = small.meta.clone();
    meta.size = input.height;
    meta.growth = records;
    let grown = Checkpoint {
        spec,
        weights,
        optimizer: momentum,
        meta,
    };
    grown.save(&a.out)?;
    let (p0, p1) = (small.spec.num_params()?, grown.spec.num_params()?);
    println!(
        "grew {} ({}×{}, {p0} parameters) into {} ({}×{}, {p1} parameters); overall: {}",
        src.display(),
        small.meta.size,
        small.meta.size,
        a.out.display(),
        input.height,
        input.width,
        overall
            .data
            .map_or_else(|| describe(&overall.random), |d| describe(&d)),
    );
    Ok(())
}

pub fn cmd_verify(a: VerifyArgs) -> Result<()> {
    let compute = Compute::new(BackendKind::Cpu)?;
    let small_dir = train::checkpoint_dir(&a.small);
    let small = Checkpoint::load(&small_dir)?;
    let grown = Checkpoint::load(&train::checkpoint_dir(&a.grown))?;
    let norm = Normalizer::new(&small.meta.normalization);
    let root = match &a.data {
        Some(d) => d.clone(),
        None => small.meta.locate_dataset(&small_dir)?,
    };
    let batches = check_batches(&root, small.meta.size, &a.split, &norm, a.images)?;
    let f = Network::new(&small.spec, &small.weights, &compute)?;
    let g = Network::new(&grown.spec, &grown.weights, &compute)?;
    let v: Verification = verify::check(&f, &g, &batches, a.random, 7, &[])?;
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        if let Some(d) = v.data {
            println!(
                "{} images of {} ({}×{} → ×{}): {}",
                a.split,
                root.display(),
                small.meta.size,
                small.meta.size,
                v.factor,
                describe(&d)
            );
        }
        println!("random N(0,1) images: {}", describe(&v.random));
    }
    Ok(())
}
