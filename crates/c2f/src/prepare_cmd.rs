//! `c2f prepare`: a labelled image set as shards at a ladder of resolutions.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use coarse2fine::data::prepare::{self, PrepareConfig, SourceFormat};
use coarse2fine::data::resize::Fit;

use crate::ui::Bars;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Auto,
    Idx,
    Cifar,
    Folder,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FitArg {
    CenterCrop,
    Squash,
}

/// Prepare a labelled image set as shards at a ladder of resolutions.
///
/// Reads MNIST/Fashion-MNIST IDX files (optionally .gz), CIFAR-10/100 binary batches, or a
/// class-folder tree of JPEG/PNG images (root/<class>/<image>, or root/train/… with root/val/…),
/// downscales every image from the original to each size by area averaging, and writes one
/// folder per size plus dataset.json with per-channel mean/std of the training split.
///
/// Example:
///   c2f prepare /usr/share/datasets/fashion-mnist --out data/fmnist --sizes 8,16,32 --pad-pow2
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct PrepareArgs {
    /// Source folder (IDX files, CIFAR batches, or class folders).
    pub source: PathBuf,
    /// Output folder; built under a temporary name and renamed into place when complete.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Ladder sizes (square), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub sizes: Vec<usize>,
    /// Source format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Zero-pad fixed-size images to the next power of two first (Fashion-MNIST 28 → 32).
    #[arg(long)]
    pub pad_pow2: bool,
    /// Channels for class-folder images: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// How non-square folder images are made square.
    #[arg(long, value_enum, default_value = "center-crop")]
    pub fit: FitArg,
    /// Held-out fraction per class for folder trees without val/ (the test split).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Training images to hold out as a validation split, on which plans choose settings
    /// (the baseline's learning rate, automatic growth) while the test split is reported.
    #[arg(long, default_value_t = 0)]
    pub val_images: usize,
    /// Seed of that split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per shard file.
    #[arg(long, default_value_t = 65_536)]
    pub shard_images: usize,
    /// Class names in label order, comma-separated (IDX sets carry none).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn cmd_prepare(a: PrepareArgs, bars: &Bars) -> Result<()> {
    let cfg = PrepareConfig {
        sizes: a.sizes,
        format: match a.format {
            FormatArg::Auto => None,
            FormatArg::Idx => Some(SourceFormat::Idx),
            FormatArg::Cifar => Some(SourceFormat::Cifar),
            FormatArg::Folder => Some(SourceFormat::Folder),
        },
        pad_pow2: a.pad_pow2,
        channels: a.channels,
        fit: a.fit.into(),
        val_fraction: a.val_fraction,
        seed: a.seed,
        shard_images: a.shard_images,
        class_names: a.classes,
        strict: a.strict,
        force: a.force,
        val_images: a.val_images,
    };
    let t0 = std::time::Instant::now();
    let rep = prepare::prepare(&a.source, &a.out, &cfg, bars)?;
    let m = &rep.manifest;
    let total: usize = m.splits.values().sum();
    println!(
        "prepared {} ({} classes, {} channel{}) at sizes {:?} into {}: {} train, {}{} test images in {:.1}s ({:.0} images/s)",
        a.source.display(),
        m.classes.len(),
        m.channels,
        if m.channels == 1 { "" } else { "s" },
        m.sizes,
        a.out.display(),
        m.splits.get("train").copied().unwrap_or(0),
        m.splits
            .get("val")
            .map_or(String::new(), |v| format!("{v} validation, ")),
        m.splits.get("test").copied().unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        total as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    );
    if m.skipped > 0 {
        eprintln!(
            "warning: skipped {} unreadable image(s) (--strict makes this an error); first: {}",
            m.skipped,
            rep.skipped_examples.join("; ")
        );
    }
    Ok(())
}

impl From<FitArg> for Fit {
    fn from(f: FitArg) -> Self {
        match f {
            FitArg::CenterCrop => Fit::CenterCrop,
            FitArg::Squash => Fit::Squash,
        }
    }
}
