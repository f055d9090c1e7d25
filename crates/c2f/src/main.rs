//! `c2f`: the coarse2fine command line.
//!
//! Each verb parses its flags into a request, which the library validates (opening inputs,
//! binding the network to the data, checking the output folder) before anything runs, so a
//! bad value fails before any work is done; then it runs the request and prints the result.

mod bench_cmd;
mod bench_epoch;
mod bench_machine;
mod export_cmd;
mod grow_cmd;
mod nets_cmd;
mod plots;
mod prepare_cmd;
mod report_cmd;
mod run_cmd;
#[cfg(feature = "tensorboard")]
mod tensorboard;
mod train_cmd;
mod ui;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use coarse2fine::backend;

use crate::ui::Bars;

#[derive(Parser, Debug)]
#[command(
    name = "c2f",
    version,
    about = "Incremental coarse-to-fine CNN training: tiny images first, then grow the net",
    long_about = "coarse2fine trains convolutional networks coarse to fine: prepare a labelled image set \
at a ladder of resolutions, train a small net on 8×8 images, grow it to larger inputs and keep training.\n\n\
Typical session:\n  c2f prepare /usr/share/datasets/fashion-mnist --out data/fmnist --sizes 8,16,32 --pad-pow2\n  \
c2f train --data data/fmnist --size 16 --net net-2 --epochs 2 --out runs/net2-16\n  \
c2f eval runs/net2-16/checkpoint\n\n\
An experiment (stages, growth, baseline) from a plan, and its report:\n  \
c2f run plans/exp1-upscale.toml --out runs/exp1\n  \
c2f report runs/exp1 --out reports/exp1"
)]
struct Cli {
    /// CPU threads for training and data preparation (default: all cores). The paper ran on one.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// No progress bars or notes; results only.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Prepare(prepare_cmd::PrepareArgs),
    Train(train_cmd::TrainArgs),
    Eval(train_cmd::EvalArgs),
    Predict(train_cmd::PredictArgs),
    Grow(grow_cmd::GrowArgs),
    Verify(grow_cmd::VerifyArgs),
    Run(run_cmd::RunArgs),
    Report(report_cmd::ReportArgs),
    Export(export_cmd::ExportArgs),
    Import(export_cmd::ImportArgs),
    Nets(nets_cmd::NetsArgs),
    Bench(bench_cmd::BenchArgs),
}

/// mimalloc keeps freed memory for reuse where the system allocator hands large blocks
/// back to the kernel, which then zeroes fresh pages on every training step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = matches!(
                e.downcast_ref::<coarse2fine::Error>(),
                Some(coarse2fine::Error::Interrupted(_))
            );
            // One line, whatever the causes' messages hold.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{}{msg}", if interrupted { "" } else { "error: " });
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    let cli_threads = cli.threads.is_some();
    backend::simd_requested().map_err(anyhow::Error::msg)?;
    backend::winograd_requested().map_err(anyhow::Error::msg)?;
    backend::direct_requested().map_err(anyhow::Error::msg)?;
    // `run` takes its count from the plan when none is given.
    match cli.threads {
        Some(n) => backend::set_threads(n)?,
        None if !matches!(cli.cmd, Command::Run(_)) => {
            backend::set_threads(backend::default_threads())?
        }
        None => {}
    }
    let bars = Bars::new(cli.quiet);
    match cli.cmd {
        Command::Prepare(a) => prepare_cmd::cmd_prepare(a, &bars),
        Command::Train(a) => train_cmd::cmd_train(a, &bars),
        Command::Eval(a) => train_cmd::cmd_eval(a),
        Command::Predict(a) => train_cmd::cmd_predict(a),
        Command::Grow(a) => {
            let m = matches
                .subcommand_matches("grow")
                .context("grow arguments")?;
            grow_cmd::cmd_grow(a, m, &bars)
        }
        Command::Verify(a) => grow_cmd::cmd_verify(a),
        Command::Run(a) => run_cmd::cmd_run(a, cli_threads, &bars),
        Command::Report(a) => report_cmd::cmd_report(a),
        Command::Export(a) => export_cmd::cmd_export(a),
        Command::Import(a) => export_cmd::cmd_import(a),
        Command::Nets(a) => nets_cmd::cmd_nets(a),
        Command::Bench(a) => bench_cmd::cmd_bench(a),
    }
}

/// Adds how to go on to an interruption's or a divergence's message.
pub(crate) fn with_hint(
    e: coarse2fine::Error,
    interrupted: &str,
    diverged: &str,
) -> coarse2fine::Error {
    match e {
        coarse2fine::Error::Interrupted(m) => {
            coarse2fine::Error::Interrupted(format!("{m}; {interrupted}"))
        }
        coarse2fine::Error::Diverged(m) => coarse2fine::Error::Diverged(format!("{m}; {diverged}")),
        other => other,
    }
}

/// A flag raised by the first Ctrl-C (or SIGTERM); a second one ends the process at once.
pub(crate) fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!(
            "stopping after this step and saving a checkpoint (Ctrl-C again to quit at once)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}
