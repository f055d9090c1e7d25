//! The PyTorch hand-off: an export folder (`model.py`, `model.safetensors`,
//! `coarse2fine.json`) written from a checkpoint, and the checkpoint made again from such a
//! folder after training elsewhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::error::{Error, Result};
use crate::fsutil::{self, OutputLock, OutputState, Ownership, StagedDir};
use crate::net::{NetSpec, WeightMap};

/// `coarse2fine.json` of a PyTorch export: what an import needs to rebuild a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PytorchExport {
    /// Always [`PYTORCH_FORMAT`].
    pub format: String,
    /// [`PYTORCH_VERSION`].
    pub version: u32,
    /// The network.
    pub spec: NetSpec,
    /// The exported checkpoint's metadata (normalisation, classes, history).
    pub meta: CheckpointMeta,
}

/// `format` of `coarse2fine.json`.
pub const PYTORCH_FORMAT: &str = "coarse2fine-pytorch-export";
/// Version of `coarse2fine.json` written by this build.
pub const PYTORCH_VERSION: u32 = 1;
/// The export's description of itself.
pub const INFO: &str = "coarse2fine.json";
/// The module file.
pub const MODULE: &str = "model.py";
/// The weights file.
pub const WEIGHTS: &str = "model.safetensors";

/// A PyTorch export folder.
pub const PYTORCH_EXPORT: Ownership = Ownership {
    what: "PyTorch export folder",
    marked: |dir| fsutil::has_format(&dir.join(INFO), PYTORCH_FORMAT),
    // Python caches the compiled model.py beside it.
    entry: Some(|n| [INFO, MODULE, WEIGHTS, "__pycache__"].contains(&n)),
};

/// A new checkpoint folder: an import never writes into an existing one.
const NEW_CHECKPOINT: Ownership = Ownership {
    what: "checkpoint folder",
    marked: |_| false,
    entry: None,
};

/// Writes the export of `ckpt` (read from `source`) into the folder `dir`, which may be new,
/// or with `force` an earlier export.
pub fn export_pytorch(dir: &Path, ckpt: &Checkpoint, source: &Path, force: bool) -> Result<()> {
    let _lock = OutputLock::acquire(dir)?;
    if fsutil::check_output(dir, &PYTORCH_EXPORT, &[source])? == OutputState::Ours && !force {
        return Err(Error::format(
            dir,
            "already exists (pass --force to replace this export)",
        ));
    }
    let staged = StagedDir::new(dir)?;
    let module = super::pytorch_module(&ckpt.spec, &ckpt.meta.normalization)?;
    fsutil::write_bytes_atomic(&staged.path().join(MODULE), module.as_bytes())?;
    ckpt.weights.save(&staged.path().join(WEIGHTS), None)?;
    let info = PytorchExport {
        format: PYTORCH_FORMAT.into(),
        version: PYTORCH_VERSION,
        spec: ckpt.spec.clone(),
        meta: ckpt.meta.clone(),
    };
    fsutil::write_json_atomic(&staged.path().join(INFO), &info)?;
    staged.commit()?;
    Ok(())
}

/// A checkpoint from an export's `coarse2fine.json` text and safetensors bytes (momentum
/// zero, the old evaluation dropped); `info` and `weights` name them in errors. Every
/// tensor must have the net's name and shape and finite values.
pub fn checkpoint_from(
    info_text: &str,
    info: &Path,
    bytes: &[u8],
    weights: &Path,
) -> Result<Checkpoint> {
    let e: PytorchExport =
        serde_json::from_str(info_text).map_err(|err| Error::format(info, err.to_string()))?;
    if e.format != PYTORCH_FORMAT || e.version != PYTORCH_VERSION {
        return Err(Error::format(
            info,
            format!(
                "format {:?} version {} is not {PYTORCH_FORMAT:?} version {PYTORCH_VERSION}",
                e.format, e.version
            ),
        ));
    }
    e.spec
        .summary()
        .map_err(|err| Error::format(info, err.to_string()))?;
    let w = WeightMap::parse(bytes, weights)?;
    w.check_against(&e.spec, weights)?;
    if let Some((name, _)) = w
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::format(
            weights,
            format!("tensor {name:?} holds values that are not finite (NaN or infinite)"),
        ));
    }
    // A variance below zero would make a batch norm's output NaN in evaluation.
    if let Some((name, _)) = w
        .iter()
        .find(|(n, t)| n.ends_with(".running_var") && t.data.iter().any(|&v| v < 0.0))
    {
        return Err(Error::format(
            weights,
            format!("tensor {name:?} holds a negative variance"),
        ));
    }
    let mut meta = e.meta;
    // Trained elsewhere: what the old checkpoint measured no longer holds.
    meta.last_eval = None;
    Ok(Checkpoint {
        optimizer: WeightMap::zeros_for(&e.spec)?,
        spec: e.spec,
        weights: w,
        meta,
    })
}

/// Imports the export folder `dir` (weights from `weights`, default `dir/model.safetensors`)
/// into the new checkpoint folder `out`. Returns the checkpoint and the weights file read.
pub fn import_pytorch(
    dir: &Path,
    weights: Option<&Path>,
    out: &Path,
) -> Result<(Checkpoint, PathBuf)> {
    let _lock = OutputLock::acquire(out)?;
    if out.exists() {
        return Err(Error::format(out, "already exists; choose a new --out"));
    }
    let path = weights.map_or_else(|| dir.join(WEIGHTS), Path::to_path_buf);
    fsutil::check_output(out, &NEW_CHECKPOINT, &[dir, &path])?;
    let ckpt = read_export(dir, &path)?;
    ckpt.save(out)?;
    Ok((ckpt, path))
}

/// The checkpoint of the export folder `dir` with the weights of `weights`.
pub fn read_export(dir: &Path, weights: &Path) -> Result<Checkpoint> {
    let info = dir.join(INFO);
    if !info.is_file() {
        return Err(Error::format(
            dir,
            format!("not a `c2f export --pytorch` folder: no {INFO}"),
        ));
    }
    let text = std::fs::read_to_string(&info).map_err(|e| Error::io(&info, e))?;
    let bytes = std::fs::read(weights).map_err(|e| Error::io(weights, e))?;
    checkpoint_from(&text, &info, &bytes, weights)
}
