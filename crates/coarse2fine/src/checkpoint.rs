//! Checkpoint folders: `spec.json`, `weights.safetensors`, `optimizer.safetensors` and
//! `meta.json`, written as a unit (staged, then renamed) so a crash never leaves a mixed or
//! partial checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::data::prepare::{ChannelStats, MANIFEST_FILE};
use crate::error::{Error, Result};
use crate::fsutil::{self, StagedDir};
use crate::grow::verify::Verification;
pub use crate::hyper::Hyper;
pub use crate::metrics::EvalSummary;
use crate::net::{NetSpec, WeightMap};

/// `format` field of `meta.json`.
pub const CHECKPOINT_FORMAT: &str = "coarse2fine-checkpoint";
/// Checkpoint version written by this build. Version 3 stores the data set's absolute
/// path and its path relative to the checkpoint, and the growth seconds; version 2 added
/// `checksums`. Versions 1 and 2 are still read (version 1 without the checksum check).
pub const CHECKPOINT_VERSION: u32 = 3;

/// `meta.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// [`CHECKPOINT_VERSION`] when written.
    pub version: u32,
    /// Prepared data folder trained on: an absolute path (relative to the working
    /// directory of the run in versions 1 and 2).
    pub dataset: String,
    /// The same folder relative to the checkpoint folder, so a checkpoint moved together
    /// with its data still finds it. Filled in by [`Checkpoint::save`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_from_checkpoint: Option<String>,
    /// Input side.
    pub size: usize,
    /// Class names by label.
    pub classes: Vec<String>,
    /// Normalisation applied to inputs (training-split statistics at `size`).
    pub normalization: ChannelStats,
    /// Iterations done.
    pub iteration: u64,
    /// Training images consumed.
    pub images_seen: u64,
    /// Seconds spent in training steps.
    pub train_seconds: f64,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
    /// Wall-clock seconds since the run started.
    pub wall_seconds: f64,
    /// Seconds in growth operators on the way to this net (a plan's stages).
    #[serde(default)]
    pub grow_seconds: f64,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Threads used.
    pub threads: usize,
    /// Backend used.
    pub backend: String,
    /// Last evaluation, if any.
    pub last_eval: Option<EvalSummary>,
    /// Growth steps that produced this net from a trained one, with their checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub growth: Vec<Verification>,
    /// CRC-32C of each other file of the checkpoint (hex), filled in by
    /// [`Checkpoint::save`] and verified by [`Checkpoint::load`].
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

impl CheckpointMeta {
    /// The clock at this checkpoint.
    pub fn clock(&self) -> Clock {
        Clock::new(
            self.train_seconds,
            self.grow_seconds,
            self.eval_seconds,
            self.wall_seconds,
        )
    }

    /// Sets the clock fields from `c`.
    pub fn set_clock(&mut self, c: Clock) {
        self.train_seconds = c.train_s;
        self.grow_seconds = c.grow_s;
        self.eval_seconds = c.eval_s;
        self.wall_seconds = c.wall_s;
    }

    /// The prepared data folder of a checkpoint stored in `dir`: the recorded path if it
    /// holds a data set, else the path recorded relative to the checkpoint. The error names
    /// every path tried.
    pub fn locate_dataset(&self, dir: &Path) -> Result<PathBuf> {
        let mut tried = vec![PathBuf::from(&self.dataset)];
        if let Some(rel) = &self.dataset_from_checkpoint {
            tried.push(dir.join(rel));
        }
        if let Some(found) = tried.iter().find(|p| p.join(MANIFEST_FILE).is_file()) {
            return Ok(found.clone());
        }
        let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        Err(Error::format(
            dir,
            format!(
                "the prepared data it was trained on is not at {}; give its folder with --data",
                tried.join(" nor at ")
            ),
        ))
    }
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Bound network spec.
    pub spec: NetSpec,
    /// Weights.
    pub weights: WeightMap,
    /// Momentum buffers (same names as the weights).
    pub optimizer: WeightMap,
    /// Metadata.
    pub meta: CheckpointMeta,
}

const SPEC: &str = "spec.json";
const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const META: &str = "meta.json";
/// The files `meta.json` holds checksums of.
const CHECKED_FILES: [&str; 3] = [SPEC, WEIGHTS, OPTIMIZER];

fn file_crc(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:08x}", crc32c::crc32c(&bytes)))
}

impl Checkpoint {
    /// Writes the checkpoint to `dir`, replacing any previous one there only once the new
    /// one is complete.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let staged = StagedDir::new(dir)?;
        self.spec.save_json(&staged.path().join(SPEC))?;
        self.weights.save(&staged.path().join(WEIGHTS), None)?;
        self.optimizer.save(&staged.path().join(OPTIMIZER), None)?;
        let mut meta = self.meta.clone();
        meta.version = CHECKPOINT_VERSION;
        let data = fsutil::resolved(Path::new(&meta.dataset));
        meta.dataset_from_checkpoint =
            pathdiff::diff_paths(&data, fsutil::resolved(dir)).map(|p| p.display().to_string());
        meta.dataset = data.display().to_string();
        meta.checksums = CHECKED_FILES
            .iter()
            .map(|f| Ok((f.to_string(), file_crc(&staged.path().join(f))?)))
            .collect::<Result<_>>()?;
        fsutil::write_json_atomic(&staged.path().join(META), &meta)?;
        staged.commit()
    }

    /// Whether `dir` holds a checkpoint, after repairing what a process killed while
    /// replacing it left behind (see [`fsutil::clean_stale`]).
    pub fn exists(dir: &Path) -> Result<bool> {
        if let Some(parent) = dir.parent() {
            fsutil::clean_stale(parent)?;
        }
        Ok(dir.join(META).is_file())
    }

    /// Reads and validates a checkpoint folder, verifying its checksums.
    pub fn load(dir: &Path) -> Result<Self> {
        if !Self::exists(dir)? {
            return Err(Error::format(
                dir,
                format!("not a checkpoint folder: no {META}"),
            ));
        }
        let meta: CheckpointMeta = fsutil::read_json(&dir.join(META))?;
        if meta.format != CHECKPOINT_FORMAT || !(1..=CHECKPOINT_VERSION).contains(&meta.version) {
            return Err(Error::format(
                dir.join(META),
                format!(
                    "format {:?} version {} is not {CHECKPOINT_FORMAT:?} version {CHECKPOINT_VERSION}",
                    meta.format, meta.version
                ),
            ));
        }
        if meta.version >= 2 {
            for f in CHECKED_FILES {
                let want = meta
                    .checksums
                    .get(f)
                    .ok_or_else(|| Error::format(dir.join(META), format!("no checksum for {f}")))?;
                let have = file_crc(&dir.join(f))?;
                if *want != have {
                    return Err(Error::format(
                        dir.join(f),
                        format!(
                            "checksum mismatch (CRC-32C {have}, {META} records {want}): the file is damaged"
                        ),
                    ));
                }
            }
        }
        let spec = NetSpec::load(&dir.join(SPEC))?;
        spec.summary()
            .map_err(|e| Error::format(dir.join(SPEC), e.to_string()))?;
        let weights = WeightMap::load(&dir.join(WEIGHTS))?;
        weights.check_against(&spec, &dir.join(WEIGHTS))?;
        let optimizer = WeightMap::load(&dir.join(OPTIMIZER))?;
        optimizer.check_against(&spec, &dir.join(OPTIMIZER))?;
        Ok(Self {
            spec,
            weights,
            optimizer,
            meta,
        })
    }
}
