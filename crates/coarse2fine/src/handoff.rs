//! A run's last stage continued outside coarse2fine — in PyTorch, on many processes or
//! machines (`examples/pytorch/ddp_continue.py`) — and brought back: the weights become the
//! run's hand-off checkpoint and the curve continues the run's incremental curve, so that
//! reports show the whole of it.
//!
//! ```text
//! RUN/incremental/handoff/checkpoint/     the imported weights (momentum zero)
//! RUN/incremental/handoff/metrics.jsonl   the continuation's events, placed on the curve
//! ```

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::events::{CurveKind, Event, Place, What, read_events};
use crate::export;
use crate::fsutil::{self, OutputLock, StagedDir};
use crate::run::{EVENTS_FILE, RunManifest, handoff_dir, incremental_end, stage_dir, write_events};
use crate::train::{CHECKPOINT_DIR, METRICS_FILE};

/// What an import into a run added.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The hand-off folder written.
    pub dir: PathBuf,
    /// Iterations trained outside.
    pub iterations: u64,
    /// Events placed on the curve.
    pub events: usize,
    /// Test top-1 of the continuation's last evaluation.
    pub top1: Option<f64>,
}

/// Imports the export folder `export` — which must have been written from `run`'s last
/// stage's checkpoint — with the weights `weights` and the continuation's log `curve`
/// (events in `c2f train`'s format, counted from the hand-off) into the finished run `run`.
pub fn import_into_run(export: &Path, weights: &Path, curve: &Path, run: &Path) -> Result<Handoff> {
    let _lock = OutputLock::acquire(run)?;
    let manifest = RunManifest::load(run)?;
    let plan = &manifest.plan;
    let dest = handoff_dir(run);
    if dest.exists() {
        return Err(Error::format(
            &dest,
            "already holds a hand-off; remove that folder to import another",
        ));
    }
    let Some((iter0, images0, clock0)) = incremental_end(run, plan) else {
        return Err(Error::format(
            run,
            "the run's incremental curve has not finished; finish it before continuing it elsewhere",
        ));
    };
    let mut ckpt = export::read_export(export, weights)?;
    let last = stage_dir(run, plan.stages.len() - 1).join(CHECKPOINT_DIR);
    same_origin(&ckpt, &Checkpoint::load(&last)?, export, &last)?;
    let place = Place {
        curve: CurveKind::Incremental,
        stage: plan.stages.len() + 1,
        size: ckpt.meta.size,
    };
    let local = read_events(curve)?;
    check_curve(&local, curve)?;
    let placed: Vec<Event> = local
        .iter()
        .map(|e| placed(e, place, iter0, images0, clock0))
        .collect();
    // Like a stage's checkpoint: its own iterations and images, the curve's clock.
    let end = local.last().map_or((0, 0), |e| (e.iter, e.images));
    ckpt.meta.iteration = end.0;
    ckpt.meta.images_seen = end.1;
    ckpt.meta
        .set_clock(placed.last().map_or(clock0, |e| e.clock));
    ckpt.meta.backend = "pytorch".into();
    // The continuation (examples/pytorch/ddp_continue.py) does not augment.
    ckpt.meta.hyper.augment = Default::default();
    let staged = StagedDir::new(&dest)?;
    ckpt.save(&staged.path().join(CHECKPOINT_DIR))?;
    fsutil::write_jsonl_atomic(&staged.path().join(METRICS_FILE), &placed)?;
    staged.commit()?;
    // A finished run's log is rewritten with the continuation; an unfinished one's
    // (baseline still going) is written when the run finishes, and will include it.
    if run.join(EVENTS_FILE).is_file() {
        write_events(run, plan)?;
    }
    Ok(Handoff {
        dir: dest,
        iterations: end.0,
        events: placed.len(),
        top1: local.iter().rev().find_map(Event::top1),
    })
}

/// The export must continue the run's last stage: same net, same place on the curve.
fn same_origin(ckpt: &Checkpoint, last: &Checkpoint, export: &Path, dir: &Path) -> Result<()> {
    let (a, b) = (&ckpt.meta, &last.meta);
    if ckpt.spec != last.spec || a.iteration != b.iteration || a.images_seen != b.images_seen {
        return Err(Error::format(
            export,
            format!(
                "was not exported from the run's last checkpoint {} ({} at iteration {} here, {} at iteration {} there)",
                dir.display(),
                ckpt.spec.name,
                a.iteration,
                last.spec.name,
                b.iteration
            ),
        ));
    }
    Ok(())
}

/// A continuation's log: `c2f train`-style train and eval events (no place on a run), in
/// order, with at least one evaluation.
fn check_curve(events: &[Event], path: &Path) -> Result<()> {
    let bad = |msg: String| Err(Error::format(path, msg));
    let mut prev = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let line = i + 1;
        if e.place.is_some() {
            return bad(format!("line {line}: an event already placed on a run"));
        }
        if !matches!(e.what, What::Train { .. } | What::Eval { .. }) {
            return bad(format!(
                "line {line}: only train and eval events can be imported"
            ));
        }
        if e.iter < prev.0 || e.images < prev.1 {
            return bad(format!("line {line}: iterations or images go backwards"));
        }
        prev = (e.iter, e.images);
    }
    if !events.iter().any(Event::is_eval) {
        return bad("holds no evaluation".into());
    }
    Ok(())
}

/// `e`, counted from the hand-off, placed after the incremental curve's end.
fn placed(e: &Event, place: Place, iter0: u64, images0: u64, c0: Clock) -> Event {
    let c = e.clock;
    Event {
        what: e.what.clone(),
        place: Some(place),
        iter: iter0 + e.iter,
        images: images0 + e.images,
        epoch: None,
        clock: Clock::new(
            c0.train_s + c.train_s,
            c0.grow_s,
            c0.eval_s + c.eval_s,
            c0.wall_s + c.wall_s,
        ),
    }
}
