//! `prepare`: turn a labelled image set into shards at every size of a resolution ladder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fast_image_resize::Resizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cifar::{self, CifarKind};
use super::folder::{self, FolderListing};
use super::idx;
use super::resize::{self, Fit};
use super::shard::{ShardSet, ShardWriter, shard_name};
use super::{ImageSet, Splits};
use crate::error::{Error, Result};
use crate::fsutil::{self, OutputLock, OutputState, Ownership, StagedDir};
use crate::progress::Progress;

/// Name of the manifest file in a prepared data folder.
pub const MANIFEST_FILE: &str = "dataset.json";
/// `format` field of the manifest.
pub const MANIFEST_FORMAT: &str = "coarse2fine-dataset";
/// Manifest version written by this build. Version 2 added the shards' checksums;
/// version 1 folders are still read, without that check.
pub const MANIFEST_VERSION: u32 = 2;
/// Largest ladder size accepted.
pub const MAX_SIZE: usize = 1024;

/// The kind of source to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// MNIST-style IDX files.
    Idx,
    /// CIFAR-10 or CIFAR-100 binary batches.
    Cifar,
    /// Class folders of JPEG/PNG images.
    Folder,
}

impl SourceFormat {
    /// Guesses the format of `dir` from the files it contains.
    pub fn detect(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(dir, "not a folder (or does not exist)"));
        }
        if idx::looks_like_idx_dir(dir) {
            Ok(SourceFormat::Idx)
        } else if cifar::detect_cifar(dir).is_some() {
            Ok(SourceFormat::Cifar)
        } else {
            Ok(SourceFormat::Folder)
        }
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// The ladder: square output sizes, e.g. `[8, 16, 32]`.
    pub sizes: Vec<usize>,
    /// Source format; `None` detects it.
    pub format: Option<SourceFormat>,
    /// Zero-pad fixed-size sources to the next power of two first (28 → 32).
    pub pad_pow2: bool,
    /// Channels of folder images (1 or 3); IDX and CIFAR keep their own.
    pub channels: usize,
    /// How non-square folder images become square.
    pub fit: Fit,
    /// Held-out fraction for folder trees without a val/ folder.
    pub val_fraction: f64,
    /// Seed of that split.
    pub seed: u64,
    /// Images per shard file.
    pub shard_images: usize,
    /// Class names overriding the defaults of IDX sets.
    pub class_names: Option<Vec<String>>,
    /// Fail on the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Replace an existing output folder.
    pub force: bool,
    /// Training images held out as a validation split (`val`), for choosing settings.
    pub val_images: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            sizes: vec![8, 16, 32],
            format: None,
            pad_pow2: false,
            channels: 3,
            fit: Fit::CenterCrop,
            val_fraction: 0.1,
            seed: 0,
            shard_images: 65_536,
            class_names: None,
            strict: false,
            force: false,
            val_images: 0,
        }
    }
}

/// Per-channel statistics of the training split at one size, on the 0–1 scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Mean of each channel.
    pub mean: Vec<f32>,
    /// Standard deviation of each channel.
    pub std: Vec<f32>,
}

/// The manifest of a prepared data folder (`dataset.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] when written.
    pub version: u32,
    /// Where the images came from.
    pub source: String,
    /// Source format.
    pub source_format: SourceFormat,
    /// Channels per image.
    pub channels: usize,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// Sizes of the ladder, ascending.
    pub sizes: Vec<usize>,
    /// Size every fixed-size source image was padded to first, if any.
    pub padded_to: Option<usize>,
    /// How non-square images were made square.
    pub fit: Fit,
    /// Number of images per split.
    pub splits: BTreeMap<String, usize>,
    /// Training-split statistics per size (keyed by the size as text).
    pub stats: BTreeMap<String, ChannelStats>,
    /// Source images that could not be read and were left out.
    pub skipped: usize,
    /// CRC-32C of every shard file (hex), by its path relative to the folder
    /// (`8x8/train-00000.c2fs`), checked whenever a split is opened.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// The split names every prepared folder has (`val`, held out from the training images
/// with `--val-images`, is optional).
pub const SPLITS: [&str; 2] = ["train", "test"];

/// Folder of one ladder size.
pub fn size_dir(root: &Path, size: usize) -> PathBuf {
    root.join(format!("{size}x{size}"))
}

impl DatasetManifest {
    /// Reads and checks `root/dataset.json`.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(Error::format(
                root,
                format!("not a prepared data folder: no {MANIFEST_FILE} (run `c2f prepare` first)"),
            ));
        }
        let m: DatasetManifest = fsutil::read_json(&path)?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::format(
                &path,
                format!("format {:?} is not {MANIFEST_FORMAT:?}", m.format),
            ));
        }
        if !(1..=MANIFEST_VERSION).contains(&m.version) {
            return Err(Error::format(
                &path,
                format!(
                    "manifest version {}, this build reads {MANIFEST_VERSION}",
                    m.version
                ),
            ));
        }
        Ok(m)
    }

    /// Statistics at `size`.
    pub fn stats_at(&self, root: &Path, size: usize) -> Result<&ChannelStats> {
        self.stats
            .get(&size.to_string())
            .ok_or_else(|| self.missing_size(root, size))
    }

    fn missing_size(&self, root: &Path, size: usize) -> Error {
        Error::format(
            root,
            format!(
                "size {size} was not prepared; available sizes: {:?}",
                self.sizes
            ),
        )
    }

    /// Opens one split at one size, checking it against the manifest.
    pub fn open_split(&self, root: &Path, size: usize, split: &str) -> Result<ShardSet> {
        if !self.sizes.contains(&size) {
            return Err(self.missing_size(root, size));
        }
        let dir = size_dir(root, size);
        let set = ShardSet::open(&dir, split)?;
        if set.shape() != (self.channels, size, size) || set.classes() != self.classes {
            return Err(Error::format(
                &dir,
                "shards do not match dataset.json (shape or classes)",
            ));
        }
        if self.version >= 2 {
            self.verify(root, size, split, &set)?;
        }
        if Some(&set.len()) != self.splits.get(split) {
            return Err(Error::format(
                &dir,
                format!(
                    "{split} has {} images, dataset.json says {:?}",
                    set.len(),
                    self.splits.get(split)
                ),
            ));
        }
        Ok(set)
    }
}

impl DatasetManifest {
    /// Checks the shards of one split against the checksums recorded when they were
    /// written: every recorded shard present, none added, none changed.
    fn verify(&self, root: &Path, size: usize, split: &str, set: &ShardSet) -> Result<()> {
        let prefix = format!("{size}x{size}/{split}-");
        let recorded = self
            .checksums
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .count();
        if recorded != set.shards().len() {
            return Err(Error::format(
                size_dir(root, size),
                format!(
                    "has {} {split} shards, {MANIFEST_FILE} records {recorded}: the folder was changed after it was prepared (prepare it again)",
                    set.shards().len()
                ),
            ));
        }
        for shard in set.shards() {
            let name = shard_key(size, shard.path());
            let have = shard.crc32c();
            match self.checksums.get(&name) {
                Some(want) if *want == have => {}
                Some(want) => {
                    return Err(Error::format(
                        shard.path(),
                        format!(
                            "checksum mismatch (CRC-32C {have}, {MANIFEST_FILE} records {want}): the shard was changed after it was prepared (prepare it again)"
                        ),
                    ));
                }
                None => {
                    return Err(Error::format(
                        shard.path(),
                        format!("not recorded in {MANIFEST_FILE}: it was not written by prepare"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The manifest's key of a shard file at `size`: `8x8/train-00000.c2fs`.
fn shard_key(size: usize, path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{size}x{size}/{name}")
}

/// The checksums of every shard written into `root`.
fn shard_checksums(
    root: &Path,
    sizes: &[usize],
    splits: &[&str],
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for &size in sizes {
        for &split in splits {
            for shard in ShardSet::open(&size_dir(root, size), split)?.shards() {
                out.insert(shard_key(size, shard.path()), shard.crc32c());
            }
        }
    }
    Ok(out)
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    /// The manifest written.
    pub manifest: DatasetManifest,
    /// Messages of skipped images (at most the first 20).
    pub skipped_examples: Vec<String>,
}

enum Source {
    Memory {
        set: ImageSet,
        pad_to: Option<usize>,
    },
    Files {
        files: Vec<(PathBuf, u32)>,
        channels: usize,
        /// The largest ladder size: smaller images are refused, not upscaled.
        largest: usize,
    },
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Memory { set, .. } => set.len(),
            Source::Files { files, .. } => files.len(),
        }
    }

    fn label(&self, i: usize) -> u32 {
        match self {
            Source::Memory { set, .. } => set.labels[i],
            Source::Files { files, .. } => files[i].1,
        }
    }

    /// Image `i` as interleaved pixels with its height and width.
    fn load(&self, i: usize) -> Result<(Vec<u8>, usize, usize)> {
        match self {
            Source::Memory { set, pad_to } => {
                let (c, mut h, mut w) = (set.channels, set.height, set.width);
                let mut planar = std::borrow::Cow::Borrowed(set.image(i));
                if let Some(side) = *pad_to {
                    planar = resize::pad_planar(&planar, c, h, w, side).into();
                    (h, w) = (side, side);
                }
                Ok((resize::planar_to_interleaved(&planar, c, h * w), h, w))
            }
            Source::Files {
                files,
                channels,
                largest,
            } => folder::decode_at_least(&files[i].0, *channels, *largest),
        }
    }
}

struct StatsAcc {
    sum: Vec<u64>,
    sumsq: Vec<u64>,
    count: u64,
}

impl StatsAcc {
    fn new(c: usize) -> Self {
        Self {
            sum: vec![0; c],
            sumsq: vec![0; c],
            count: 0,
        }
    }
    fn add(&mut self, planar: &[u8], plane: usize) {
        for (c, px) in planar.chunks_exact(plane).enumerate() {
            self.sum[c] += px.iter().map(|&v| u64::from(v)).sum::<u64>();
            self.sumsq[c] += px.iter().map(|&v| u64::from(v) * u64::from(v)).sum::<u64>();
        }
        self.count += plane as u64;
    }
    fn finish(&self) -> ChannelStats {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|&s| s as f64 / n / 255.0).collect();
        let std = self
            .sumsq
            .iter()
            .zip(&mean)
            .map(|(&q, m)| {
                ((q as f64 / n / (255.0 * 255.0) - m * m).max(0.0))
                    .sqrt()
                    .max(1e-3)
            })
            .map(|s| s as f32)
            .collect();
        ChannelStats {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }
}

fn validate_sizes(sizes: &[usize]) -> Result<Vec<usize>> {
    if sizes.is_empty() {
        return Err(Error::invalid(
            "no sizes given: pass a ladder such as 8,16,32",
        ));
    }
    let mut s = sizes.to_vec();
    s.sort_unstable();
    s.dedup();
    if let Some(bad) = s.iter().find(|&&v| v == 0 || v > MAX_SIZE) {
        return Err(Error::invalid(format!(
            "size {bad} is outside 1..={MAX_SIZE}"
        )));
    }
    Ok(s)
}

/// Prepares `source` into `out`: one folder per size with `train` and `test` shards, plus
/// `dataset.json`. The output is built under a temporary name and renamed into place at
/// the end, so a failure leaves any previous `out` untouched.
pub fn prepare(
    source: &Path,
    out: &Path,
    cfg: &PrepareConfig,
    progress: &dyn Progress,
) -> Result<PrepareReport> {
    let sizes = validate_sizes(&cfg.sizes)?;
    if cfg.shard_images == 0 {
        return Err(Error::invalid("shard size must be at least 1 image"));
    }
    let _lock = OutputLock::acquire(out)?;
    check_prepare_output(source, out, cfg.force)?;
    let format = match cfg.format {
        Some(f) => f,
        None => SourceFormat::detect(source)?,
    };
    let read = match format {
        SourceFormat::Idx | SourceFormat::Cifar => read_arrays(source, format, cfg, &sizes)?,
        SourceFormat::Folder => read_listing(source, cfg, &sizes)?,
    };
    let classes = &read.classes;
    if classes.len() < 2 {
        return Err(Error::format(
            source,
            format!(
                "has {} class{} ({}); a classifier needs at least 2",
                classes.len(),
                if classes.len() == 1 { "" } else { "es" },
                classes.join(", ")
            ),
        ));
    }
    let staged = StagedDir::new(out)?;
    for &s in &sizes {
        let d = size_dir(staged.path(), s);
        std::fs::create_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    let mut writer = SplitWriter {
        root: staged.path(),
        sizes: &sizes,
        channels: read.channels,
        classes,
        cfg,
        progress,
        skipped: read.unread.len(),
        examples: read.unread.iter().take(20).cloned().collect(),
    };
    let (train_ids, val_ids) = hold_out(read.train.len(), cfg.val_images, cfg.seed, source)?;
    let test_ids: Vec<usize> = (0..read.test.len()).collect();
    let parts = [
        ("train", &read.train, train_ids),
        ("val", &read.train, val_ids),
        ("test", &read.test, test_ids),
    ];
    let (mut splits, mut stats) = (BTreeMap::new(), BTreeMap::new());
    for (split, src, ids) in parts.iter().filter(|p| !p.2.is_empty() || p.0 != "val") {
        let (written, accs) = writer.write(split, src, ids)?;
        if written == 0 {
            return Err(Error::format(
                source,
                format!("the {split} split has no readable images"),
            ));
        }
        splits.insert(split.to_string(), written);
        if *split == "train" {
            for (s, acc) in sizes.iter().zip(accs) {
                stats.insert(s.to_string(), acc.finish());
            }
        }
    }
    let (skipped, skipped_examples) = (writer.skipped, writer.examples);
    let split_names: Vec<&str> = splits.keys().map(String::as_str).collect();
    let checksums = shard_checksums(staged.path(), &sizes, &split_names)?;
    let manifest = DatasetManifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        source: source.display().to_string(),
        source_format: format,
        channels: read.channels,
        classes: read.classes,
        sizes,
        padded_to: read.padded_to,
        fit: cfg.fit,
        splits,
        stats,
        skipped,
        checksums,
    };
    fsutil::write_json_atomic(&staged.path().join(MANIFEST_FILE), &manifest)?;
    staged.commit()?;
    Ok(PrepareReport {
        manifest,
        skipped_examples,
    })
}

/// A source, read and checked: its classes, channels and splits.
struct Read {
    classes: Vec<String>,
    channels: usize,
    train: Source,
    test: Source,
    padded_to: Option<usize>,
    /// Class-folder entries that are not images: counted as skipped, like unreadable ones.
    unread: Vec<String>,
}

/// IDX or CIFAR arrays, padded as asked; no ladder size may exceed the images.
fn read_arrays(
    source: &Path,
    format: SourceFormat,
    cfg: &PrepareConfig,
    sizes: &[usize],
) -> Result<Read> {
    let Splits { train, test } = if format == SourceFormat::Idx {
        idx::read_idx_dir(source, cfg.class_names.clone())?
    } else {
        let kind = cifar::detect_cifar(source).unwrap_or(CifarKind::Cifar10);
        cifar::read_cifar_dir(source, kind)?
    };
    let side = train.height.max(train.width);
    let pad_to = if cfg.pad_pow2 {
        Some(resize::next_pow2(side))
    } else if train.height != train.width {
        Some(side)
    } else {
        None
    };
    let full = pad_to.unwrap_or(side);
    if let Some(big) = sizes.iter().find(|&&s| s > full) {
        return Err(Error::invalid(format!(
            "size {big} is larger than the {full}×{full} source images of {}",
            source.display()
        )));
    }
    Ok(Read {
        classes: train.classes.clone(),
        channels: train.channels,
        train: Source::Memory { set: train, pad_to },
        test: Source::Memory { set: test, pad_to },
        padded_to: pad_to,
        unread: Vec::new(),
    })
}

/// A class-folder tree's files, decoded later one by one.
fn read_listing(source: &Path, cfg: &PrepareConfig, sizes: &[usize]) -> Result<Read> {
    if cfg.channels != 1 && cfg.channels != 3 {
        return Err(Error::invalid(format!(
            "{} channels: use 1 or 3",
            cfg.channels
        )));
    }
    let FolderListing {
        classes,
        train,
        test,
        ignored,
    } = folder::list_folder(source, cfg.val_fraction, cfg.seed)?;
    if let Some(first) = ignored.first().filter(|_| cfg.strict) {
        return Err(Error::invalid(format!("{first} (--strict)")));
    }
    let (channels, largest) = (cfg.channels, sizes.last().copied().unwrap_or(1));
    let files = |files| Source::Files {
        files,
        channels,
        largest,
    };
    Ok(Read {
        classes,
        channels,
        train: files(train),
        test: files(test),
        padded_to: None,
        unread: ignored,
    })
}

/// Splits the `n` training images into those trained on and `val` held out for
/// validation (a seeded draw), each in source order.
fn hold_out(n: usize, val: usize, seed: u64, source: &Path) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if val >= n {
        return Err(Error::invalid(format!(
            "--val-images {val}: {} has {n} training images; hold out fewer",
            source.display()
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x0007_a11d,
    ));
    let mut held: Vec<usize> = order[..val].to_vec();
    let mut kept: Vec<usize> = order[val..].to_vec();
    held.sort_unstable();
    kept.sort_unstable();
    Ok((kept, held))
}

/// An image file as a net of input `channels × side × side` sees it: decoded, made square
/// with `fit` and downscaled by area averaging, exactly as `prepare` does; planar pixels.
pub fn load_for_net(path: &Path, channels: usize, side: usize, fit: Fit) -> Result<Vec<u8>> {
    let (hwc, h, w) = folder::decode_at_least(path, channels, side)?;
    resize::downscale_to_planar(&mut Resizer::new(), &hwc, channels, h, w, side, fit)
}

/// A prepared data folder: `dataset.json` and one folder per size.
pub const PREPARED: Ownership = Ownership {
    what: "prepared data folder",
    marked: |dir| fsutil::has_format(&dir.join(MANIFEST_FILE), MANIFEST_FORMAT),
    entry: Some(|n| {
        n == MANIFEST_FILE
            || n.split_once('x')
                .is_some_and(|(a, b)| a == b && a.parse::<usize>().is_ok())
    }),
};

/// `out` may be new or empty, or with `force` a folder `prepare` made before; it must
/// neither be, contain, nor lie inside the source.
fn check_prepare_output(source: &Path, out: &Path, force: bool) -> Result<()> {
    let (real_out, real_source) = (fsutil::resolved(out), fsutil::resolved(source));
    if real_out != real_source && real_out.starts_with(&real_source) {
        return Err(Error::format(
            out,
            format!(
                "is inside the source {}; write the prepared data elsewhere, so the source stays as it is",
                source.display()
            ),
        ));
    }
    let state = fsutil::check_output(out, &PREPARED, &[source])?;
    if state == OutputState::Ours && !force {
        return Err(Error::format(
            out,
            "already exists (pass --force to replace it)",
        ));
    }
    Ok(())
}

/// Writes the shards of one split after another into a staged folder, and counts what it
/// had to skip.
struct SplitWriter<'a> {
    root: &'a Path,
    sizes: &'a [usize],
    channels: usize,
    classes: &'a [String],
    cfg: &'a PrepareConfig,
    progress: &'a dyn Progress,
    skipped: usize,
    /// Messages of the first 20 skipped images.
    examples: Vec<String>,
}

impl SplitWriter<'_> {
    /// Writes images `indices` of `src` as split `split`; returns how many were written
    /// and the statistics of each size.
    fn write(
        &mut self,
        split: &str,
        src: &Source,
        indices: &[usize],
    ) -> Result<(usize, Vec<StatsAcc>)> {
        let (root, sizes, channels, classes, cfg, progress) = (
            self.root,
            self.sizes,
            self.channels,
            self.classes,
            self.cfg,
            self.progress,
        );
        const CHUNK: usize = 2048;
        progress.begin(&format!("prepare {split}"), indices.len() as u64);
        let mut accs: Vec<StatsAcc> = sizes.iter().map(|_| StatsAcc::new(channels)).collect();
        let mut writers: Vec<Option<ShardWriter>> = sizes.iter().map(|_| None).collect();
        let mut parts = 0usize;
        let mut written = 0usize;
        for ids in indices.chunks(CHUNK) {
            // Decoding and resizing are independent per image; the results are collected in
            // source order so the shards do not depend on the thread count.
            let chunk: Vec<Result<Vec<Vec<u8>>>> = ids
                .par_iter()
                .map_init(Resizer::new, |rz, &i| {
                    let (hwc, h, w) = src.load(i)?;
                    sizes
                        .iter()
                        .map(|&s| resize::downscale_to_planar(rz, &hwc, channels, h, w, s, cfg.fit))
                        .collect()
                })
                .collect();
            for (&i, res) in ids.iter().zip(chunk) {
                let images = match res {
                    Ok(v) => v,
                    Err(e) if !cfg.strict && matches!(src, Source::Files { .. }) => {
                        self.skipped += 1;
                        if self.examples.len() < 20 {
                            self.examples.push(e.to_string());
                        }
                        progress.note(&format!("skipped: {e}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if written.is_multiple_of(cfg.shard_images) {
                    for (j, &s) in sizes.iter().enumerate() {
                        if let Some(w) = writers[j].take() {
                            w.finish()?;
                        }
                        let path = size_dir(root, s).join(shard_name(split, parts));
                        writers[j] = Some(ShardWriter::create(&path, channels, s, classes)?);
                    }
                    parts += 1;
                }
                for (j, img) in images.iter().enumerate() {
                    accs[j].add(img, sizes[j] * sizes[j]);
                    if let Some(w) = writers[j].as_mut() {
                        w.push(img, src.label(i))?;
                    }
                }
                written += 1;
            }
            progress.advance(ids.len() as u64);
        }
        for w in writers.into_iter().flatten() {
            w.finish()?;
        }
        progress.end();
        Ok((written, accs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::encode_idx;
    use crate::progress::Silent;

    fn write_idx_fixture(dir: &Path, n_train: usize, n_test: usize) -> Result<()> {
        let w = |name: &str, bytes: Vec<u8>| {
            std::fs::write(dir.join(name), bytes).map_err(|e| Error::io(dir.join(name), e))
        };
        let img = |n: usize| {
            (0..n * 16)
                .map(|v| (v * 7 % 256) as u8)
                .collect::<Vec<u8>>()
        };
        w(
            "train-images-idx3-ubyte",
            encode_idx(&[n_train, 4, 4], &img(n_train)),
        )?;
        w(
            "train-labels-idx1-ubyte",
            encode_idx(&[n_train], &vec![3; n_train]),
        )?;
        w(
            "t10k-images-idx3-ubyte",
            encode_idx(&[n_test, 4, 4], &img(n_test)),
        )?;
        w(
            "t10k-labels-idx1-ubyte",
            encode_idx(&[n_test], &vec![1; n_test]),
        )?;
        Ok(())
    }

    #[test]
    fn prepare_idx_ladder_round_trips() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).map_err(|e| Error::io(&src, e))?;
        write_idx_fixture(&src, 5, 3)?;
        let out = tmp.path().join("prepared");
        let cfg = PrepareConfig {
            sizes: vec![4, 2],
            shard_images: 2,
            ..Default::default()
        };
        let rep = prepare(&src, &out, &cfg, &Silent)?;
        assert_eq!(rep.manifest.sizes, vec![2, 4]);
        let m = DatasetManifest::load(&out)?;
        assert_eq!(m.splits["train"], 5);
        // Full size: the shards hold exactly the source pixels.
        let full = m.open_split(&out, 4, "train")?;
        let src_set = idx::read_idx_dir(&src, None)?.train;
        for i in 0..5 {
            assert_eq!(full.get(i).0, src_set.image(i));
            assert_eq!(full.get(i).1, 3);
        }
        // Half size: each pixel is the rounded mean of a 2×2 block of the source.
        let half = m.open_split(&out, 2, "test")?;
        let s = src_set.image(0);
        let want = ((u32::from(s[0]) + u32::from(s[1]) + u32::from(s[4]) + u32::from(s[5])) as f64
            / 4.0)
            .round() as u8;
        assert_eq!(half.get(0).0[0], want);
        // Stats are computed from the training split.
        let mean = src_set.pixels.iter().map(|&v| f64::from(v)).sum::<f64>()
            / src_set.pixels.len() as f64
            / 255.0;
        assert!((f64::from(m.stats["4"].mean[0]) - mean).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn failure_leaves_existing_output_untouched() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let out = tmp.path().join("prepared");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).map_err(|e| Error::io(&src, e))?;
        write_idx_fixture(&src, 2, 2)?;
        let cfg = |sizes: Vec<usize>, force| PrepareConfig {
            sizes,
            force,
            ..Default::default()
        };
        prepare(&src, &out, &cfg(vec![2], false), &Silent)?;
        let manifest = std::fs::read(out.join(MANIFEST_FILE)).map_err(|e| Error::io(&out, e))?;
        let err = prepare(&src, &out, &cfg(vec![64], true), &Silent)
            .unwrap_err()
            .to_string();
        assert!(err.contains("size 64"), "{err}");
        let err = prepare(&src, &out, &cfg(vec![2], false), &Silent)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--force"), "{err}");
        let now = std::fs::read(out.join(MANIFEST_FILE)).map_err(|e| Error::io(&out, e))?;
        assert_eq!(now, manifest);
        Ok(())
    }

    #[test]
    fn force_never_replaces_the_source_or_a_folder_prepare_did_not_make() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).map_err(|e| Error::io(&src, e))?;
        write_idx_fixture(&src, 2, 2)?;
        let cfg = PrepareConfig {
            sizes: vec![2],
            force: true,
            ..Default::default()
        };
        let refused = |out: &Path, needle: &str| {
            let err = prepare(&src, out, &cfg, &Silent)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{}: {err}", out.display());
        };
        refused(&src, "which this command reads");
        refused(tmp.path(), "contains");
        refused(&src.join("inside"), "inside the source");
        let mine = tmp.path().join("mine");
        std::fs::create_dir(&mine).map_err(|e| Error::io(&mine, e))?;
        std::fs::write(mine.join("notes.txt"), "x").map_err(|e| Error::io(&mine, e))?;
        refused(&mine, "not a prepared data folder made by c2f");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").map_err(|e| Error::io(&file, e))?;
        refused(&file, "is a file");
        assert!(mine.join("notes.txt").is_file() && file.is_file());
        assert_eq!(
            std::fs::read_dir(&src)
                .map_err(|e| Error::io(&src, e))?
                .count(),
            4
        );
        Ok(())
    }

    #[test]
    fn pad_pow2_pads_before_downscaling() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).map_err(|e| Error::io(&src, e))?;
        let w = |name: &str, bytes: Vec<u8>| {
            std::fs::write(src.join(name), bytes).map_err(|e| Error::io(&src, e))
        };
        w("train-images-idx3-ubyte", encode_idx(&[1, 3, 3], &[255; 9]))?;
        w("train-labels-idx1-ubyte", encode_idx(&[1], &[0]))?;
        w("t10k-images-idx3-ubyte", encode_idx(&[1, 3, 3], &[255; 9]))?;
        w("t10k-labels-idx1-ubyte", encode_idx(&[1], &[0]))?;
        let out = tmp.path().join("p");
        let cfg = PrepareConfig {
            sizes: vec![4, 1],
            pad_pow2: true,
            ..Default::default()
        };
        let m = prepare(&src, &out, &cfg, &Silent)?.manifest;
        assert_eq!(m.padded_to, Some(4));
        let px = m.open_split(&out, 4, "train")?.get(0).0.to_vec();
        // 3×3 centred in 4×4 starts at offset (0, 0) since (4-3)/2 = 0.
        assert_eq!(&px[..4], &[255, 255, 255, 0]);
        assert_eq!(px[12..], [0, 0, 0, 0]);
        // 1×1 is the mean of 9 white pixels out of 16.
        let one = m.open_split(&out, 1, "train")?;
        assert_eq!(one.get(0).0, &[(255.0f64 * 9.0 / 16.0).round() as u8]);
        Ok(())
    }
}
