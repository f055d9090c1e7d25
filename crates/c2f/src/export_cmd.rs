//! `c2f export`: a checkpoint's network for other tools.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::export;

/// Export a checkpoint's network: ONNX (opset 13) for inference anywhere.
///
/// The ONNX graph takes `pixels`, float32 N×C×H×W with values 0–255 at the checkpoint's
/// input size, normalises them as training did (the checkpoint's per-channel mean and
/// std), and outputs `logits` (N×classes) and, when the net ends in softmax,
/// `probabilities`. Dropout is left out (inference). The batch size is free.
///
/// Example:
///   c2f export runs/net2-16/checkpoint --onnx net2-16.onnx
///   python3 -c "import onnxruntime as ort; s = ort.InferenceSession('net2-16.onnx'); print([i.shape for i in s.get_inputs()])"
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// Checkpoint folder (or a run folder containing checkpoint/).
    pub checkpoint: PathBuf,
    /// Write an ONNX model to this file.
    #[arg(long, value_name = "FILE.onnx")]
    pub onnx: Option<PathBuf>,
}

pub fn cmd_export(a: ExportArgs) -> Result<()> {
    let Some(onnx) = &a.onnx else {
        bail!("nothing to export: give --onnx FILE.onnx");
    };
    let dir = crate::checkpoint_dir(&a.checkpoint);
    let ckpt = Checkpoint::load(&dir)?;
    export::write_onnx(onnx, &ckpt.spec, &ckpt.weights, &ckpt.meta.normalization)?;
    let input = ckpt.spec.input.map(|i| (i.channels, i.height, i.width));
    println!(
        "wrote {} ({} at {:?}, ONNX opset {}) from {}",
        onnx.display(),
        ckpt.spec.name,
        input.unwrap_or_default(),
        export::OPSET,
        dir.display()
    );
    Ok(())
}
