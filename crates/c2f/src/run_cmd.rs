//! `c2f run`: an experiment plan, stage by stage, then its baseline.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use coarse2fine::backend::{self, BackendKind, Compute};
use coarse2fine::grow::GrowOp;
use coarse2fine::plan::{Budget, MomentumState, PlanFile, RunPlan, Schedule, StageBudget};
use coarse2fine::progress::Progress;
use coarse2fine::run::{self, RunOptions};

use crate::ui::Bars;

/// Run an incremental-training experiment plan and its from-scratch baseline.
///
/// PLAN is a TOML file (see plans/ and docs/runs.md): the prepared data, a list of
/// [[stage]]s (input size, network or growth operators from the previous stage, budget in
/// iterations, epochs or seconds, learning rate) and a [baseline] — the final stage's
/// network trained from scratch at the final size for the same training time (or images).
/// The whole plan is validated against the data before anything trains.
///
/// The run folder gets run.json, one folder per stage (checkpoints, metrics, the grown start
/// and its preservation check) and events.jsonl (every train, eval and growth event on one
/// clock). Interrupt it (Ctrl-C, kill) and run the same command again: finished stages are
/// kept, the current one continues from its last checkpoint.
///
/// If a part's loss diverges (NaN), it stops and keeps its last checkpoint whose next step
/// had a finite loss; continue it with a lower learning rate with --retry-lr LR (recorded
/// in the part's event log; the plan is unchanged).
///
/// A plan with [[variant]]s defines one run per variant, in folders OUT/NN-NAME. Without
/// --index they run one after another; --index N runs only the N-th (from 0), for cluster
/// array jobs, e.g. Slurm: c2f run plan.toml --out runs/x --index $SLURM_ARRAY_TASK_ID.
///
/// Examples:
///   c2f run plans/exp1-upscale.toml --out runs/exp1
///   c2f report runs/exp1 --out docs/results/exp1-upscale
///   c2f run plans/exp2-new-filters.toml --list
///   c2f run plans/exp2-new-filters.toml --out runs/exp2 --index 3
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct RunArgs {
    /// Plan file (.toml).
    pub plan: PathBuf,
    /// Output folder: the run folder, or the parent of the variants' run folders.
    #[arg(long, short, required_unless_present_any = ["list", "check"])]
    pub out: Option<PathBuf>,
    /// Run only the N-th run of the plan (0-based; see --list).
    #[arg(long, value_name = "N")]
    pub index: Option<usize>,
    /// Use this prepared data folder instead of the plan's.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// List the plan's runs with their indices and stages, then stop.
    #[arg(long)]
    pub list: bool,
    /// Validate the plan against the data and stop.
    #[arg(long)]
    pub check: bool,
    /// Save a checkpoint every N iterations (default: at every evaluation).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Real test images used by each growth check.
    #[arg(long, default_value_t = 500)]
    pub check_images: usize,
    /// Compute backend: cpu (the native engine), flex (burn's CPU backend, the reference),
    /// libtorch-cuda[:N] and libtorch (feature libtorch), cuda[:N] (feature cuda), wgpu
    /// (feature wgpu); see docs/gpu.md.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Continue the stage (or baseline) in progress from its last checkpoint with this
    /// base learning rate, e.g. after its loss became NaN.
    #[arg(long, value_name = "LR", allow_hyphen_values = true)]
    pub retry_lr: Option<f32>,
    /// With --retry-lr: also replace that part's learning-rate policy (fixed,
    /// step:GAMMA:STEPSIZE or inv:GAMMA:POWER).
    #[arg(long, value_name = "POLICY", requires = "retry_lr")]
    pub retry_lr_policy: Option<String>,
}

fn describe_budget(b: StageBudget) -> String {
    match b {
        StageBudget::Iterations(n) => format!("{n} iterations"),
        StageBudget::Seconds(s) => format!("{s} s"),
    }
}

/// The plan of run `r` as lines of text: its stages, growth and baseline with their
/// settings (printed by --list, and the plan section of reports).
pub fn describe_run(r: &RunPlan) -> Vec<String> {
    let mut out = vec![format!(
        "[{}] {} (data {}, seed {})",
        r.index,
        r.run_name(),
        r.data.display(),
        r.seed
    )];
    if r.schedule == Schedule::Global {
        out.push("    one learning-rate schedule across all stages".into());
    }
    for (k, s) in r.stages.iter().enumerate() {
        let h = &s.hyper;
        out.push(format!(
            "    stage {}: {}×{}, {} ({} parameters), {}, lr {} {}, batch {}, momentum {}, weight decay {}{}{}{}",
            k + 1,
            s.size,
            s.size,
            s.spec.name,
            s.spec.num_params().unwrap_or(0),
            describe_budget(s.budget),
            h.base_lr,
            h.lr_policy,
            h.batch_size,
            h.momentum,
            h.weight_decay,
            if k > 0 && s.momentum_state == MomentumState::Reset {
                ", momentum reset"
            } else {
                ""
            },
            if s.warmup > 0 {
                format!(", warm-up {} iterations", s.warmup)
            } else {
                String::new()
            },
            augmented(&h.augment)
        ));
        if s.auto {
            out.push(
                "      auto: leaves early when the next size is expected to pay more per second"
                    .into(),
            );
        }
        if k > 0 {
            let ops: Vec<String> = s.grow.iter().map(GrowOp::describe).collect();
            out.push(format!(
                "      grown by: {}",
                if ops.is_empty() {
                    "nothing (same net)".to_string()
                } else {
                    ops.join(", ")
                }
            ));
            if s.recalibrate > 0 {
                out.push(format!(
                    "      batch norms recalibrated on {} training images",
                    s.recalibrate
                ));
            }
        }
    }
    let lr = |b: &coarse2fine::plan::BaselinePlan| match (r.sweep, r.baseline_lrs.is_empty()) {
        (Some(lr), _) => format!("lr {lr} (this run is one of the sweep's)"),
        (None, false) => format!("lr chosen from {:?} by the sweep", r.baseline_lrs),
        (None, true) => format!("lr {}", b.hyper.base_lr),
    };
    out.push(match &r.baseline {
        Some(b) => format!(
            "    baseline{}: the final net from scratch, same {}, {} {}, batch {}{}",
            if r.sweep.is_some() { " alone" } else { "" },
            match b.budget {
                Budget::Time => "training time",
                Budget::Images => "number of images",
            },
            lr(b),
            b.hyper.lr_policy,
            b.hyper.batch_size,
            augmented(&b.hyper.augment)
        ),
        None => "    baseline: none".into(),
    });
    out
}

/// `, augmented crop:4,flip`, or nothing without augmentation.
fn augmented(a: &coarse2fine::data::augment::Augment) -> String {
    if a.is_none() {
        String::new()
    } else {
        format!(", augmented {a}")
    }
}

pub fn cmd_run(a: RunArgs, cli_threads: bool, bars: &Bars) -> Result<()> {
    let file = PlanFile::load(&a.plan)?;
    // Every run is validated up front, so a bad variant fails before hours of training.
    let runs = file.resolve_all(a.data.as_deref())?;
    if a.list || a.check {
        for r in &runs {
            for line in describe_run(r) {
                println!("{line}");
            }
        }
        if a.check {
            println!("{}: valid ({} run(s))", a.plan.display(), runs.len());
        }
        return Ok(());
    }
    let selected: Vec<&RunPlan> = match a.index {
        Some(i) => match runs.get(i) {
            Some(r) => vec![r],
            None => bail!(
                "--index {i}: {} has {} run(s), indices 0 to {}",
                a.plan.display(),
                runs.len(),
                runs.len() - 1
            ),
        },
        None => runs.iter().collect(),
    };
    let Some(out) = a.out else {
        bail!("give --out");
    };
    if !cli_threads {
        let planned = runs.first().and_then(|r| r.threads);
        backend::set_threads(planned.unwrap_or_else(backend::default_threads))?;
    }
    let compute = Compute::new(a.backend.parse::<BackendKind>()?)?;
    let opts = RunOptions {
        checkpoint_every: a.checkpoint_every.unwrap_or(0),
        check_images: a.check_images,
        stop: Some(crate::stop_flag()?),
        retry: match a.retry_lr {
            Some(base_lr) => Some(run::Retry {
                base_lr,
                lr_policy: a.retry_lr_policy.as_deref().map(str::parse).transpose()?,
            }),
            None => None,
        },
    };
    let single = file.run_count() == 1;
    for r in selected {
        let dir = if single {
            out.clone()
        } else {
            out.join(r.folder())
        };
        run_one(&dir, r, &opts, &compute, bars)?;
    }
    Ok(())
}

fn run_one(
    dir: &Path,
    r: &RunPlan,
    opts: &RunOptions,
    compute: &Compute,
    bars: &Bars,
) -> Result<()> {
    bars.note(&format!(
        "running {} into {} on {} with {} thread(s)",
        r.label(),
        dir.display(),
        compute.kind(),
        backend::threads()
    ));
    let o = run::execute(dir, r, opts, compute, bars).map_err(|e| {
        crate::with_hint(
            e,
            "run the same command again to continue",
            "to continue from it, run the same command with --retry-lr and a lower learning rate",
        )
    })?;
    let pct = |e: Option<coarse2fine::checkpoint::EvalSummary>| {
        e.map_or("-".to_string(), |e| format!("{:.2}%", 100.0 * e.top1))
    };
    println!(
        "{}: incremental top-1 {} after {} of training and growth{}; events in {}",
        r.label(),
        pct(o.incremental),
        crate::ui::seconds(o.incremental_time),
        if r.baseline.is_some() {
            format!(
                ", baseline top-1 {} after {}",
                pct(o.baseline),
                crate::ui::seconds(o.baseline_time)
            )
        } else {
            String::new()
        },
        dir.join(run::EVENTS_FILE).display()
    );
    Ok(())
}
