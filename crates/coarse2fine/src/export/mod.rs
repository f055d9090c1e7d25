//! ONNX export: a checkpoint's network as a standard ONNX graph (opset 13), with the
//! input normalisation built in, so the model takes the same pixel values (0–255) as the
//! prepared shards hold.

mod pytorch;

use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

use crate::data::prepare::ChannelStats;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::net::spec::{Layer, Param, Shape, input_map, param_name};
use crate::net::{NetSpec, WeightMap};

pub use pytorch::{
    INFO, MODULE, PYTORCH_EXPORT, PytorchExport, WEIGHTS, checkpoint_from, export_pytorch,
    import_pytorch, read_export,
};

/// ONNX operator set of exported models.
pub const OPSET: i64 = 13;
/// ONNX IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 7;

/// Name of the graph's input: pixels N × C × H × W in 0–255.
pub const INPUT: &str = "pixels";
/// Name of the logits output (N × classes).
pub const LOGITS: &str = "logits";
/// Name of the class-probabilities output, present when the spec ends in softmax.
pub const PROBABILITIES: &str = "probabilities";

fn tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.iter().map(|&x| x as i64).collect();
    a
}

fn int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// A float tensor value with a symbolic batch dimension `N`.
fn value(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut batch = tensor_shape_proto::Dimension::new();
    batch.value = Some(tensor_shape_proto::dimension::Value::DimParam("N".into()));
    shape.dim.push(batch);
    for &d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(d as i64));
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = DataType::FLOAT as i32;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

/// The initializer of weight tensor `name`.
fn parameter(weights: &WeightMap, name: &str) -> Result<TensorProto> {
    let t = crate::grow::tensor(weights, name)?;
    Ok(tensor(name, &t.shape, &t.data))
}

/// The ONNX model of a bound spec with its weights and input normalisation.
pub fn onnx_model(spec: &NetSpec, weights: &WeightMap, norm: &ChannelStats) -> Result<ModelProto> {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    let input = spec
        .input
        .ok_or_else(|| Error::invalid("the network is not bound to an input size"))?;
    let summary = spec.summary()?;
    let c = input.channels;
    if norm.mean.len() != c || norm.std.len() != c {
        return Err(Error::invalid(format!(
            "normalisation has {} channels, the network {c}",
            norm.mean.len()
        )));
    }
    let mut g = GraphProto::new();
    g.name = spec.name.clone();
    g.input.push(value(INPUT, &[c, input.height, input.width]));

    // (x / 255 − mean) / std, as the data loader computes it.
    g.initializer.push(tensor("norm.scale", &[], &[255.0]));
    g.initializer
        .push(tensor("norm.mean", &[c, 1, 1], &norm.mean));
    g.initializer
        .push(tensor("norm.std", &[c, 1, 1], &norm.std));
    g.node.push(node(
        "Div",
        "norm_scale",
        &[INPUT, "norm.scale"],
        "x_unit",
        vec![],
    ));
    g.node.push(node(
        "Sub",
        "norm_mean",
        &["x_unit", "norm.mean"],
        "x_centred",
        vec![],
    ));
    g.node.push(node(
        "Div",
        "norm_std",
        &["x_centred", "norm.std"],
        "x0",
        vec![],
    ));

    let mut cur = "x0".to_string();
    let mut flat = false;
    let logit_layers = spec.logit_layers().len();
    for (i, layer) in spec.layers.iter().enumerate() {
        let out = if i + 1 == logit_layers {
            LOGITS.to_string()
        } else if i + 1 == spec.layers.len() {
            PROBABILITIES.to_string()
        } else {
            format!("x{}", i + 1)
        };
        let name = format!("layer{}", i + 1);
        let in_shape = if i == 0 {
            input_map(input)
        } else {
            summary[i - 1].output
        };
        onnx_layer(
            &mut g,
            (spec, weights),
            layer,
            &name,
            (&cur, in_shape),
            (&out, summary[i].output),
            &mut flat,
        )?;
        cur = out;
    }
    let classes = match summary.last().map(|s| s.output) {
        Some(Shape::Flat(k)) => k,
        other => {
            return Err(Error::invalid(format!(
                "the network ends in {other:?}, not in class scores"
            )));
        }
    };
    g.output.push(value(LOGITS, &[classes]));
    if spec.logit_layers().len() != spec.layers.len() {
        g.output.push(value(PROBABILITIES, &[classes]));
    }
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = "coarse2fine".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    m.opset_import.push(opset);
    m.graph = Some(g).into();
    Ok(m)
}

/// The nodes of `layer` (named `name` where it has no name of its own), reading the value
/// `cur` of shape `in_shape` and writing `out`, of shape `out_shape`. `flat` tells whether
/// the maps have been flattened yet.
fn onnx_layer(
    g: &mut GraphProto,
    (spec, weights): (&NetSpec, &WeightMap),
    layer: &Layer,
    name: &str,
    (cur, in_shape): (&str, Shape),
    (out, out_shape): (&str, Shape),
    flat: &mut bool,
) -> Result<()> {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    match layer {
        Layer::Conv(cv) => {
            let (w, b) = initializers(g, weights, &cv.name)?;
            g.node.push(node(
                "Conv",
                &cv.name,
                &[cur, &w, &b],
                out,
                vec![
                    ints("kernel_shape", &[cv.kernel, cv.kernel]),
                    ints("strides", &[cv.stride, cv.stride]),
                    ints("pads", &[cv.padding; 4]),
                    ints("dilations", &[cv.dilation, cv.dilation]),
                ],
            ));
        }
        Layer::Relu => g.node.push(node("Relu", name, &[cur], out, vec![])),
        Layer::MaxPool(p) => g.node.push(node(
            "MaxPool",
            name,
            &[cur],
            out,
            vec![
                ints("kernel_shape", &[p.kernel, p.kernel]),
                ints("strides", &[p.stride(), p.stride()]),
                ints("pads", &[p.padding; 4]),
                ints("dilations", &[p.dilation, p.dilation]),
                int("ceil_mode", i64::from(p.ceil_mode)),
            ],
        )),
        Layer::AvgPool(p) if avg_pool_as_conv(p) => {
            let Shape::Map { c: channels, .. } = out_shape else {
                return Err(Error::invalid(format!("{name}: pooling after fc")));
            };
            let k = format!("{name}.kernel");
            let taps = channels * p.kernel * p.kernel;
            let value = 1.0 / (p.kernel * p.kernel) as f32;
            g.initializer.push(tensor(
                &k,
                &[channels, 1, p.kernel, p.kernel],
                &vec![value; taps],
            ));
            g.node.push(node(
                "Conv",
                name,
                &[cur, &k],
                out,
                vec![
                    ints("kernel_shape", &[p.kernel, p.kernel]),
                    ints("strides", &[p.stride(), p.stride()]),
                    ints("pads", &[p.padding; 4]),
                    ints("dilations", &[p.dilation, p.dilation]),
                    int("group", channels as i64),
                ],
            ));
        }
        Layer::AvgPool(p) => g.node.push(node(
            "AveragePool",
            name,
            &[cur],
            out,
            vec![
                ints("kernel_shape", &[p.kernel, p.kernel]),
                ints("strides", &[p.stride(), p.stride()]),
                ints("pads", &[p.padding; 4]),
                int("count_include_pad", 1),
            ],
        )),
        Layer::GlobalAvgPool => g
            .node
            .push(node("GlobalAveragePool", name, &[cur], out, vec![])),
        Layer::BatchNorm(b) => {
            let names = [
                Param::Weight,
                Param::Bias,
                Param::RunningMean,
                Param::RunningVar,
            ]
            .map(|p| param_name(&b.name, p));
            for n in &names {
                g.initializer.push(parameter(weights, n)?);
            }
            let mut inputs = vec![cur];
            inputs.extend(names.iter().map(String::as_str));
            g.node.push(node(
                "BatchNormalization",
                &b.name,
                &inputs,
                out,
                vec![float("epsilon", b.eps), float("momentum", 1.0 - b.momentum)],
            ));
        }
        Layer::Lrn(l) => {
            // ONNX's window is [c − ⌊(n−1)/2⌋, c + ⌈(n−1)/2⌉], ours symmetric: the same
            // for the odd sizes that specs allow.
            g.node.push(node(
                "LRN",
                name,
                &[cur],
                out,
                vec![
                    int("size", l.size as i64),
                    float("alpha", l.alpha),
                    float("beta", l.beta),
                    float("bias", l.k),
                ],
            ));
        }
        // Inference: dropout is the identity.
        Layer::Dropout(_) => g.node.push(node("Identity", name, &[cur], out, vec![])),
        Layer::Fc(f) => {
            let src = if *flat {
                cur.to_string()
            } else {
                let flat_name = format!("{cur}_flat");
                g.node.push(node(
                    "Flatten",
                    &format!("{name}_flatten"),
                    &[cur],
                    &flat_name,
                    vec![int("axis", 1)],
                ));
                *flat = true;
                flat_name
            };
            let (w, b) = initializers(g, weights, &f.name)?;
            g.node.push(node(
                "Gemm",
                &f.name,
                &[&src, &w, &b],
                out,
                vec![int("transB", 1)],
            ));
        }
        Layer::Residual(r) => {
            let body = onnx_branch(
                g,
                spec,
                weights,
                &r.body,
                in_shape,
                cur,
                &format!("{name}_body"),
            )?;
            let shortcut = onnx_branch(
                g,
                spec,
                weights,
                &r.shortcut,
                in_shape,
                cur,
                &format!("{name}_shortcut"),
            )?;
            g.node
                .push(node("Add", name, &[&body, &shortcut], out, vec![]));
        }
        Layer::Softmax => g
            .node
            .push(node("Softmax", name, &[cur], out, vec![int("axis", 1)])),
    }
    Ok(())
}

/// The nodes of a residual block's branch, named after `prefix`, reading `cur`; returns
/// the name of the branch's output (`cur` itself for an empty shortcut).
fn onnx_branch(
    g: &mut GraphProto,
    spec: &NetSpec,
    weights: &WeightMap,
    layers: &[Layer],
    mut shape: Shape,
    cur: &str,
    prefix: &str,
) -> Result<String> {
    let rows = spec.rows(layers, shape, "")?;
    let mut cur = cur.to_string();
    for (j, (l, row)) in layers.iter().zip(&rows).enumerate() {
        let name = format!("{prefix}{}", j + 1);
        let out = format!("{name}_out");
        let mut flat = false;
        onnx_layer(
            g,
            (spec, weights),
            l,
            &name,
            (&cur, shape),
            (&out, row.output),
            &mut flat,
        )?;
        cur = out;
        shape = row.output;
    }
    Ok(cur)
}

/// Writes the ONNX model of `spec` to `path` (atomically).
pub fn write_onnx(
    path: &Path,
    spec: &NetSpec,
    weights: &WeightMap,
    norm: &ChannelStats,
) -> Result<()> {
    let model = onnx_model(spec, weights, norm)?;
    let bytes = model
        .write_to_bytes()
        .map_err(|e| Error::format(path, format!("encoding ONNX: {e}")))?;
    fsutil::write_bytes_atomic(path, &bytes)
}

/// An average pool that PyTorch's and ONNX's pooling cannot express (a dilation, or padding
/// over half the window) runs as a convolution of each channel with a constant kernel.
fn avg_pool_as_conv(p: &crate::net::Pool) -> bool {
    p.dilation != 1 || 2 * p.padding > p.kernel
}

/// Adds layer `name`'s weight and bias to the graph's initializers; returns their names.
fn initializers(g: &mut GraphProto, weights: &WeightMap, name: &str) -> Result<(String, String)> {
    let (w, b) = (
        param_name(name, Param::Weight),
        param_name(name, Param::Bias),
    );
    g.initializer.push(parameter(weights, &w)?);
    g.initializer.push(parameter(weights, &b)?);
    Ok((w, b))
}

/// Checks an ONNX output before writing: it may be new, or with `force` an ONNX model
/// c2f wrote; never a folder, another file, or a file inside the checkpoint exported.
pub fn check_onnx_output(onnx: &Path, checkpoint: &Path, force: bool) -> Result<()> {
    if fsutil::resolved(onnx).starts_with(fsutil::resolved(checkpoint)) {
        return Err(Error::format(
            onnx,
            format!(
                "inside the checkpoint {} being exported; choose another file",
                checkpoint.display()
            ),
        ));
    }
    if onnx.is_dir() {
        return Err(Error::format(
            onnx,
            "is a folder; give a file name such as model.onnx",
        ));
    }
    if onnx.exists() && !is_own_onnx(onnx) {
        return Err(Error::format(
            onnx,
            "exists and is not an ONNX model written by c2f; c2f only ever replaces its own files: choose another file",
        ));
    }
    if onnx.exists() && !force {
        return Err(Error::format(
            onnx,
            "already exists (pass --force to replace it)",
        ));
    }
    Ok(())
}

/// Whether `path` is an ONNX model that coarse2fine wrote (its producer name), the only
/// kind of file `c2f export --onnx --force` replaces.
pub fn is_own_onnx(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| ModelProto::parse_from_bytes(&b).ok())
        .is_some_and(|m| m.producer_name == "coarse2fine")
}

/// The `__init__` and `forward` lines of `layer` (layer `i + 1`, or of a block's branch),
/// reading maps of `shape` and giving `out_shape`; `flat` tells whether the maps have been
/// flattened yet.
fn torch_layer(
    spec: &NetSpec,
    (layer, i): (&Layer, usize),
    (shape, out_shape): (Shape, Shape),
    flat: &mut bool,
    init: &mut String,
    forward: &mut String,
) -> Result<()> {
    // Long by design: one arm per layer type, each reading beside the others; split, the
    // cases of one layer would be scattered over several functions.
    match layer {
        Layer::Conv(c) => {
            let Shape::Map { c: cin, .. } = shape else {
                return Err(Error::invalid(format!("layer {}: conv after fc", i + 1)));
            };
            *init += &format!(
                "        self.{} = nn.Conv2d({cin}, {}, {}, stride={}, padding={}, dilation={})\n",
                c.name, c.filters, c.kernel, c.stride, c.padding, c.dilation
            );
            *forward += &format!("        x = self.{}(x)\n", c.name);
        }
        Layer::Relu => *forward += "        x = F.relu(x)\n",
        Layer::MaxPool(p) => {
            *forward += &format!(
                "        x = F.max_pool2d(x, {}, stride={}, padding={}, dilation={}, ceil_mode={})\n",
                p.kernel,
                p.stride(),
                p.padding,
                p.dilation,
                if p.ceil_mode { "True" } else { "False" }
            )
        }
        Layer::AvgPool(p) if avg_pool_as_conv(p) => {
            let Shape::Map { c: cin, .. } = shape else {
                return Err(Error::invalid(format!("layer {}: pooling after fc", i + 1)));
            };
            *forward += &format!(
                "        x = F.conv2d(x, x.new_full(({cin}, 1, {k}, {k}), 1.0 / {kk}), stride={}, padding={}, dilation={}, groups={cin})\n",
                p.stride(),
                p.padding,
                p.dilation,
                k = p.kernel,
                kk = p.kernel * p.kernel,
            )
        }
        Layer::AvgPool(p) => {
            *forward += &format!(
                "        x = F.avg_pool2d(x, {}, stride={}, padding={})\n",
                p.kernel,
                p.stride(),
                p.padding
            )
        }
        Layer::GlobalAvgPool => *forward += "        x = x.mean((2, 3), keepdim=True)\n",
        Layer::BatchNorm(b) => {
            let Shape::Map { c: cin, .. } = shape else {
                return Err(Error::invalid(format!(
                    "layer {}: batch norm after fc",
                    i + 1
                )));
            };
            *init += &format!(
                "        self.{} = BatchNorm({cin}, eps={:?}, momentum={:?})\n",
                b.name, b.eps, b.momentum
            );
            *forward += &format!("        x = self.{}(x)\n", b.name);
        }
        Layer::Lrn(l) => {
            *forward += &format!(
                "        x = F.local_response_norm(x, {}, alpha={:?}, beta={:?}, k={:?})\n",
                l.size, l.alpha, l.beta, l.k
            )
        }
        Layer::Dropout(d) => {
            *forward += &format!("        x = F.dropout(x, {:?}, self.training)\n", d.p)
        }
        Layer::Fc(f) => {
            if !*flat {
                *forward += "        x = torch.flatten(x, 1)\n";
                *flat = true;
            }
            let outputs = match out_shape {
                Shape::Flat(n) => n,
                Shape::Map { .. } => {
                    return Err(Error::invalid(format!(
                        "layer {}: fc without a flat output",
                        i + 1
                    )));
                }
            };
            *init += &format!(
                "        self.{} = nn.Linear({}, {outputs})\n",
                f.name,
                shape.numel()
            );
            *forward += &format!("        x = self.{}(x)\n", f.name);
        }
        // Python has no block scope: the shortcut's value is kept in `shortcut`, and a
        // projection swaps it with the body's output to run on the block's input.
        Layer::Residual(r) => {
            *forward += "        shortcut = x\n";
            torch_branch(spec, &r.body, shape, init, forward)?;
            if !r.shortcut.is_empty() {
                *forward += "        x, shortcut = shortcut, x\n";
                torch_branch(spec, &r.shortcut, shape, init, forward)?;
            }
            *forward += "        x = x + shortcut\n";
        }
        Layer::Softmax => *forward += "        x = F.softmax(x, 1)\n",
    }
    Ok(())
}

/// The lines of a residual block's branch, reading maps of `shape`.
fn torch_branch(
    spec: &NetSpec,
    layers: &[Layer],
    mut shape: Shape,
    init: &mut String,
    forward: &mut String,
) -> Result<()> {
    let rows = spec.rows(layers, shape, "")?;
    for (j, (l, row)) in layers.iter().zip(&rows).enumerate() {
        torch_layer(spec, (l, j), (shape, row.output), &mut false, init, forward)?;
        shape = row.output;
    }
    Ok(())
}

/// Python source of a self-contained PyTorch module for `spec`: `Net()` has the spec's
/// layers as attributes named like the weights (so `state_dict()` keys are the weight map's
/// names), takes pixels 0–255 and normalises them with `norm` as training did, and returns
/// logits; `load(path)` builds it and loads a safetensors file.
pub fn pytorch_module(spec: &NetSpec, norm: &ChannelStats) -> Result<String> {
    // Long by design: most of it is the module's Python source, one template.
    let input = spec
        .input
        .ok_or_else(|| Error::invalid("the network is not bound to an input size"))?;
    let summary = spec.summary()?;
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut init = String::new();
    let mut forward = String::new();
    // Input shape of each layer: the input, then the previous layer's output.
    let mut shape = Shape::Map {
        c: input.channels,
        h: input.height,
        w: input.width,
    };
    let mut flat = false;
    for (i, layer) in spec.logit_layers().iter().enumerate() {
        let out_shape = summary[i].output;
        torch_layer(
            spec,
            (layer, i),
            (shape, out_shape),
            &mut flat,
            &mut init,
            &mut forward,
        )?;
        shape = summary[i].output;
    }
    Ok(format!(
        r#""""{name}: a network exported by coarse2fine {version}.

    import model
    net = model.load("model.safetensors")   # or model.Net() for fresh weights
    logits = net(pixels)                    # pixels: float N×{c}×{h}×{w}, values 0–255

The layer attributes are named like the weights, so net.state_dict() has the safetensors
file's keys; after fine-tuning, `safetensors.torch.save_file(net.state_dict(), path)` writes
a file that `c2f import` reads back. Inputs are normalised inside, as in training.
"""

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = ({c}, {h}, {w})
MEAN = [{mean}]
STD = [{std}]


class BatchNorm(nn.Module):
    """BatchNorm2d without its num_batches_tracked counter, so that state_dict() holds
    exactly the weight file's tensors."""

    def __init__(self, channels, eps, momentum):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, -1, 1, 1), persistent=False)
{init}
    def forward(self, pixels):
        """pixels: N×{c}×{h}×{w}, 0–255 → logits: N×classes."""
        x = (pixels / 255.0 - self.mean) / self.std
{forward}        return x


def load(path="model.safetensors", device="cpu"):
    """Net() with the weights of a safetensors file."""
    from safetensors.torch import load_file

    net = Net().to(device)
    net.load_state_dict(load_file(path, device=device))
    return net.eval()
"#,
        name = spec.name,
        version = env!("CARGO_PKG_VERSION"),
        c = input.channels,
        h = input.height,
        w = input.width,
        mean = list(&norm.mean),
        std = list(&norm.std),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::presets::preset;
    use crate::net::spec::InputShape;
    use crate::net::weights::Init;

    fn stats() -> ChannelStats {
        ChannelStats {
            mean: vec![0.5],
            std: vec![0.25],
        }
    }

    #[test]
    fn graph_has_every_layer_and_weight() -> Result<()> {
        let spec = preset("alexnet-s3")
            .ok_or_else(|| Error::invalid("preset"))?
            .bind(InputShape::square(1, 8), 10)?;
        let w = WeightMap::init(&spec, Init::Kaiming, 1)?;
        let m = onnx_model(&spec, &w, &stats())?;
        assert_eq!(m.opset_import[0].version, OPSET);
        let g = m.graph.as_ref().ok_or_else(|| Error::invalid("no graph"))?;
        // Every weight tensor, with its shape, plus the three normalisation constants.
        assert_eq!(g.initializer.len(), w.len() + 3);
        for (name, t) in w.iter() {
            let init = g
                .initializer
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| Error::invalid(format!("{name} missing")))?;
            let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
            assert_eq!(dims, t.shape, "{name}");
            assert_eq!(init.raw_data.len(), 4 * t.numel());
        }
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        for op in [
            "Conv", "Relu", "LRN", "MaxPool", "Identity", "Flatten", "Gemm", "Softmax",
        ] {
            assert!(ops.contains(&op), "{op} missing from {ops:?}");
        }
        let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, [LOGITS, PROBABILITIES]);
        Ok(())
    }
}
