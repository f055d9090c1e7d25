//! `c2f export` and `c2f import`: a checkpoint's network for other tools, and back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use coarse2fine::checkpoint::{Checkpoint, CheckpointMeta};
use coarse2fine::export;
use coarse2fine::fsutil::{self, OutputLock, OutputState, Ownership, StagedDir};
use coarse2fine::net::{NetSpec, WeightMap};
use coarse2fine::train;
use serde::{Deserialize, Serialize};

/// `coarse2fine.json` of a PyTorch export: what `c2f import` needs to rebuild a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PytorchExport {
    format: String,
    version: u32,
    spec: NetSpec,
    meta: CheckpointMeta,
}

const PYTORCH_FORMAT: &str = "coarse2fine-pytorch-export";
const PYTORCH_VERSION: u32 = 1;
const INFO: &str = "coarse2fine.json";
const MODULE: &str = "model.py";
const WEIGHTS: &str = "model.safetensors";

/// A `--pytorch` export folder.
const PYTORCH_EXPORT: Ownership = Ownership {
    what: "PyTorch export folder",
    marked: |dir| fsutil::has_format(&dir.join(INFO), PYTORCH_FORMAT),
    // Python caches the compiled model.py beside it.
    entry: Some(|n| [INFO, MODULE, WEIGHTS, "__pycache__"].contains(&n)),
};

/// A new checkpoint folder: `import` never writes into an existing one.
const NEW_CHECKPOINT: Ownership = Ownership {
    what: "checkpoint folder",
    marked: |_| false,
    entry: None,
};

/// Export a checkpoint's network: ONNX (opset 13) for inference anywhere, or a PyTorch
/// module with its weights to fine-tune in PyTorch.
///
/// The ONNX graph takes `pixels`, float32 N×C×H×W with values 0–255 at the checkpoint's
/// input size, normalises them as training did (the checkpoint's per-channel mean and
/// std), and outputs `logits` (N×classes) and, when the net ends in softmax,
/// `probabilities`. Dropout is left out (inference). The batch size is free.
///
/// --pytorch DIR writes DIR/model.py (a self-contained torch.nn.Module whose state_dict keys
/// are the weights' names; it also takes pixels 0–255), DIR/model.safetensors and
/// DIR/coarse2fine.json, from which `c2f import` makes a checkpoint again.
///
/// An existing output is replaced only with --force, and only if c2f wrote it (an ONNX
/// model of coarse2fine's, or a folder of this export); nothing else is ever overwritten.
///
/// Examples:
///   c2f export runs/net2-16/checkpoint --onnx net2-16.onnx
///   c2f export runs/net2-16/checkpoint --pytorch torch/net2-16
///   python3 -c "import onnxruntime as ort; s = ort.InferenceSession('net2-16.onnx'); print([i.shape for i in s.get_inputs()])"
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct ExportArgs {
    /// Checkpoint folder (or a run folder containing checkpoint/).
    pub checkpoint: PathBuf,
    /// Write an ONNX model to this file.
    #[arg(long, value_name = "FILE.onnx")]
    pub onnx: Option<PathBuf>,
    /// Write a PyTorch module, its weights and the spec into this new folder.
    #[arg(long, value_name = "DIR")]
    pub pytorch: Option<PathBuf>,
    /// Replace an ONNX file or export folder that c2f wrote before.
    #[arg(long)]
    pub force: bool,
}

/// Make a checkpoint from weights trained elsewhere: a `c2f export --pytorch` folder, after
/// fine-tuning in PyTorch.
///
/// Reads DIR/coarse2fine.json (the network and its normalisation) and the weights — by
/// default DIR/model.safetensors; --weights for a state_dict saved with
/// `safetensors.torch.save_file(net.state_dict(), path)` — checks every tensor's name and
/// shape against the network, and writes a checkpoint (momentum buffers zero). Continue
/// training it with `c2f train --init-from`.
///
/// Example:
///   c2f import torch/net2-16 --weights torch/net2-16/finetuned.safetensors --out imported/net2-16
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct ImportArgs {
    /// A folder written by `c2f export --pytorch`.
    pub dir: PathBuf,
    /// The weights (default: DIR/model.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output checkpoint folder (new).
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn cmd_import(a: ImportArgs) -> Result<()> {
    let _lock = OutputLock::acquire(&a.out)?;
    if a.out.exists() {
        bail!("{}: already exists; choose a new --out", a.out.display());
    }
    let mut inputs: Vec<&Path> = vec![&a.dir];
    inputs.extend(a.weights.as_deref());
    fsutil::check_output(&a.out, &NEW_CHECKPOINT, &inputs)?;
    if !a.dir.join(INFO).is_file() {
        bail!(
            "{}: not a `c2f export --pytorch` folder: no {INFO}",
            a.dir.display()
        );
    }
    let info: PytorchExport = fsutil::read_json(&a.dir.join(INFO))?;
    if info.format != PYTORCH_FORMAT || info.version != PYTORCH_VERSION {
        bail!(
            "{}: format {:?} version {} is not {PYTORCH_FORMAT:?} version {PYTORCH_VERSION}",
            a.dir.join(INFO).display(),
            info.format,
            info.version
        );
    }
    let path = a.weights.clone().unwrap_or_else(|| a.dir.join(WEIGHTS));
    let weights = WeightMap::load(&path)?;
    weights.check_against(&info.spec, &path)?;
    if let Some((name, _)) = weights
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        bail!(
            "{}: tensor {name:?} holds values that are not finite (NaN or infinite)",
            path.display()
        );
    }
    let mut meta = info.meta;
    // Trained elsewhere: what the old checkpoint measured no longer holds.
    meta.last_eval = None;
    let optimizer = WeightMap::zeros_for(&info.spec)?;
    let ckpt = Checkpoint {
        spec: info.spec,
        weights,
        optimizer,
        meta,
    };
    ckpt.save(&a.out)?;
    println!(
        "imported {} ({}) into {}",
        path.display(),
        ckpt.spec.name,
        a.out.display()
    );
    Ok(())
}

fn export_pytorch(dir: &Path, ckpt: &Checkpoint, source: &Path, force: bool) -> Result<()> {
    let _lock = OutputLock::acquire(dir)?;
    if fsutil::check_output(dir, &PYTORCH_EXPORT, &[source])? == OutputState::Ours && !force {
        bail!(
            "{}: already exists (pass --force to replace this export)",
            dir.display()
        );
    }
    let staged = StagedDir::new(dir)?;
    let module = export::pytorch_module(&ckpt.spec, &ckpt.meta.normalization)?;
    fsutil::write_bytes_atomic(&staged.path().join(MODULE), module.as_bytes())?;
    ckpt.weights.save(&staged.path().join(WEIGHTS), None)?;
    fsutil::write_json_atomic(
        &staged.path().join(INFO),
        &PytorchExport {
            format: PYTORCH_FORMAT.into(),
            version: PYTORCH_VERSION,
            spec: ckpt.spec.clone(),
            meta: ckpt.meta.clone(),
        },
    )?;
    staged.commit().context("writing the export folder")?;
    Ok(())
}

pub fn cmd_export(a: ExportArgs) -> Result<()> {
    if a.onnx.is_none() && a.pytorch.is_none() {
        bail!("nothing to export: give --onnx FILE.onnx and/or --pytorch DIR");
    }
    let dir = train::checkpoint_dir(&a.checkpoint);
    let ckpt = Checkpoint::load(&dir)?;
    let input = ckpt.spec.input.map(|i| (i.channels, i.height, i.width));
    if let Some(onnx) = &a.onnx {
        let _lock = OutputLock::acquire(onnx)?;
        check_onnx_output(onnx, &dir, a.force)?;
        export::write_onnx(onnx, &ckpt.spec, &ckpt.weights, &ckpt.meta.normalization)?;
        println!(
            "wrote {} ({} at {:?}, ONNX opset {}) from {}",
            onnx.display(),
            ckpt.spec.name,
            input.unwrap_or_default(),
            export::OPSET,
            dir.display()
        );
    }
    if let Some(py) = &a.pytorch {
        export_pytorch(py, &ckpt, &dir, a.force)?;
        println!(
            "wrote {}/{{{MODULE}, {WEIGHTS}, {INFO}}} ({} at {:?}) from {}",
            py.display(),
            ckpt.spec.name,
            input.unwrap_or_default(),
            dir.display()
        );
    }
    Ok(())
}

/// An ONNX output may be new, or with `force` an ONNX model c2f wrote; never a folder,
/// another file, or inside the checkpoint read.
fn check_onnx_output(onnx: &Path, checkpoint: &Path, force: bool) -> Result<()> {
    if fsutil::resolved(onnx).starts_with(fsutil::resolved(checkpoint)) {
        bail!(
            "{}: inside the checkpoint {} being exported; choose another file",
            onnx.display(),
            checkpoint.display()
        );
    }
    if onnx.is_dir() {
        bail!(
            "{}: is a folder; give a file name such as model.onnx",
            onnx.display()
        );
    }
    if onnx.exists() {
        if !export::is_own_onnx(onnx) {
            bail!(
                "{}: exists and is not an ONNX model written by c2f; c2f only ever replaces its own files: choose another file",
                onnx.display()
            );
        }
        if !force {
            bail!(
                "{}: already exists (pass --force to replace it)",
                onnx.display()
            );
        }
    }
    Ok(())
}
