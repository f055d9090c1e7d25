//! `c2f export` and `c2f import`: a checkpoint's network for other tools, and back.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::export;
use coarse2fine::fsutil::OutputLock;
use coarse2fine::handoff;
use coarse2fine::train;

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
/// --into RUN brings back a plan run's last stage continued elsewhere (e.g. under torchrun
/// with examples/pytorch/ddp_continue.py): DIR must be the export of RUN's last stage
/// checkpoint and --curve the continuation's train and eval events (`c2f train`'s format,
/// counted from the hand-off). The checkpoint goes to RUN/incremental/handoff/ and the
/// events continue RUN's incremental curve, so `c2f report RUN` shows the whole curve.
///
/// Examples:
///   c2f import torch/net2-16 --weights torch/net2-16/finetuned.safetensors --out imported/net2-16
///   c2f import handoff --weights handoff/ddp/weights.safetensors --curve handoff/ddp/curve.jsonl --into runs/exp1
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct ImportArgs {
    /// A folder written by `c2f export --pytorch`.
    pub dir: PathBuf,
    /// The weights (default: DIR/model.safetensors; required with --into).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output checkpoint folder (new).
    #[arg(long, short, required_unless_present = "into", conflicts_with = "into")]
    pub out: Option<PathBuf>,
    /// A finished plan run whose last stage DIR continues; needs --curve and --weights.
    #[arg(long, value_name = "RUN", requires_all = ["curve", "weights"])]
    pub into: Option<PathBuf>,
    /// The continuation's events (JSON lines), with --into.
    #[arg(long, value_name = "FILE.jsonl", requires = "into")]
    pub curve: Option<PathBuf>,
}

pub fn cmd_import(a: ImportArgs) -> Result<()> {
    if let (Some(run), Some(curve)) = (&a.into, &a.curve) {
        let Some(weights) = a.weights else {
            bail!("--into needs --weights: the continuation's weights");
        };
        let h = handoff::import_into_run(&a.dir, &weights, curve, run)?;
        let top1 = h.top1.map_or_else(String::new, |t| {
            format!(", last test top-1 {:.2}%", 100.0 * t)
        });
        println!(
            "imported {} and {} ({} iterations, {} events{top1}) into {}",
            weights.display(),
            curve.display(),
            h.iterations,
            h.events,
            h.dir.display()
        );
        return Ok(());
    }
    let Some(out) = &a.out else {
        bail!("give --out CHECKPOINT, or --into RUN with --curve FILE");
    };
    let (ckpt, path) = export::import_pytorch(&a.dir, a.weights.as_deref(), out)?;
    println!(
        "imported {} ({}) into {}",
        path.display(),
        ckpt.spec.name,
        out.display()
    );
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
        export::check_onnx_output(onnx, &dir, a.force)?;
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
        export::export_pytorch(py, &ckpt, &dir, a.force)?;
        println!(
            "wrote {}/{{{}, {}, {}}} ({} at {:?}) from {}",
            py.display(),
            export::MODULE,
            export::WEIGHTS,
            export::INFO,
            ckpt.spec.name,
            input.unwrap_or_default(),
            dir.display()
        );
    }
    Ok(())
}
