//! `c2f nets`: the preset networks, or one network layer by layer.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::net::NetSpec;
use coarse2fine::net::presets::{self, PRESETS};
use coarse2fine::net::spec::{InputShape, Layer, Shape};
use coarse2fine::train;

/// List the preset networks, or show one network's layers.
///
/// Without --show, prints every preset with its parameter count and forward FLOPs per image
/// at its native size (or at --size). With --show, prints the layer table of a preset, a spec
/// file, or a checkpoint.
///
/// Examples:
///   c2f nets
///   c2f nets --size 32 --classes 10 --channels 1
///   c2f nets --show net-4 --size 16
///   c2f nets --show runs/net2-16/checkpoint
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct NetsArgs {
    /// A preset, spec file or checkpoint folder to show layer by layer.
    #[arg(long)]
    pub show: Option<String>,
    /// Input size (default: each preset's native size).
    #[arg(long)]
    pub size: Option<usize>,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
}

fn print_layers(spec: &NetSpec) -> Result<()> {
    let input = spec.input.context("network is not bound to an input")?;
    println!(
        "{}: input {}×{}×{}, {} classes",
        spec.name,
        input.channels,
        input.height,
        input.width,
        spec.classes.unwrap_or(0)
    );
    println!(
        "{:<6} {:<34} {:>14} {:>12} {:>12}",
        "#", "layer", "output", "params", "MFLOP"
    );
    let input_map = coarse2fine::net::spec::input_map(input);
    print_rows(spec, &spec.layers, input_map, "")?;
    println!(
        "{:<6} {:<34} {:>14} {:>12} {:>12.3}",
        "",
        "total",
        "",
        spec.num_params()?,
        spec.flops()? as f64 / 1e6
    );
    Ok(())
}

/// One row per layer of `layers`, numbered after `prefix`; a residual block's layers follow
/// it, indented, body first (`4.1`, `4.2`, …) and then the shortcut (`4.s1`, …).
fn print_rows(spec: &NetSpec, layers: &[Layer], shape: Shape, prefix: &str) -> Result<()> {
    let rows = spec.rows(layers, shape, "")?;
    let mut input = shape;
    for (i, (l, r)) in layers.iter().zip(&rows).enumerate() {
        let number = format!("{prefix}{}", i + 1);
        let indent = if prefix.is_empty() { "" } else { "  " };
        println!(
            "{:<6} {:<34} {:>14} {:>12} {:>12.3}",
            number,
            format!("{indent}{}", r.layer),
            r.output.to_string(),
            r.params,
            r.flops as f64 / 1e6
        );
        if let Layer::Residual(block) = l {
            print_rows(spec, &block.body, input, &format!("{number}."))?;
            print_rows(spec, &block.shortcut, input, &format!("{number}.s"))?;
        }
        input = r.output;
    }
    Ok(())
}

pub fn cmd_nets(a: NetsArgs) -> Result<()> {
    let input = |side: usize| InputShape::square(a.channels, side);
    if let Some(what) = &a.show {
        let p = Path::new(what);
        let spec = if p.is_dir() {
            Checkpoint::load(&train::checkpoint_dir(p))?.spec
        } else {
            let spec = presets::resolve(what)?;
            let side = a
                .size
                .or_else(|| {
                    PRESETS
                        .iter()
                        .find(|pr| pr.name == what)
                        .map(|pr| pr.native_size)
                })
                .or(spec.input.map(|i| i.height))
                .context("give --size for a spec file without an input size")?;
            spec.bind(
                spec.input.unwrap_or(input(side)),
                spec.classes.unwrap_or(a.classes),
            )?
        };
        return print_layers(&spec);
    }
    println!(
        "{:<12} {:>6} {:>12} {:>12}  about",
        "preset", "input", "params", "MFLOP/img"
    );
    for p in PRESETS {
        let side = a.size.unwrap_or(p.native_size);
        let spec = presets::preset(p.name).context("preset table out of sync")?;
        match spec.bind(input(side), a.classes) {
            Ok(b) => println!(
                "{:<12} {:>6} {:>12} {:>12.3}  {}",
                p.name,
                format!("{side}"),
                b.num_params()?,
                b.flops()? as f64 / 1e6,
                p.about
            ),
            Err(e) => println!(
                "{:<12} {:>6} {:>12} {:>12}  does not fit: {e}",
                p.name, side, "-", "-"
            ),
        }
    }
    Ok(())
}
