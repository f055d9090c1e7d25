//! The numbers of a report, computed from run folders' `events.jsonl`: curves, the time
//! each curve needs to reach the baseline's final accuracy (and 95% and 99% of it), the
//! speed-up, and the accuracy dip at each growth. Plotting and formatting are the CLI's.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::CheckpointMeta;
use crate::error::{Error, Result};
use crate::events::{CurveKind, Event, What, read_events};
use crate::metrics::Confusion;
use crate::run::{EVENTS_FILE, RUN_FILE, RunManifest, collect_events, final_confusions, stage_dir};
use crate::train::CHECKPOINT_DIR;

/// One run folder, loaded.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The folder.
    pub dir: PathBuf,
    /// Its plan label (`plan` or `plan/variant`).
    pub label: String,
    /// Its events.
    pub events: Vec<Event>,
    /// Confusion matrices of the final incremental net and the baseline, where finished.
    pub confusions: Vec<(CurveKind, Confusion)>,
    /// Class names by label (from the run's first checkpoint; numbers if it has none yet).
    pub classes: Vec<String>,
    /// The validated plan it ran.
    pub manifest: Option<RunManifest>,
}

/// Finds run folders: each path is a run folder (it has `run.json`) or a folder whose
/// immediate subfolders are; the result is sorted by path within each argument, and a
/// folder named twice (under any spelling) is listed once.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        let mut found: Vec<PathBuf> = if p.join(RUN_FILE).is_file() {
            vec![p.clone()]
        } else {
            std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|d| d.join(RUN_FILE).is_file())
                .collect()
        };
        if found.is_empty() {
            return Err(Error::format(
                p,
                format!("neither a run folder nor a folder of run folders (no {RUN_FILE})"),
            ));
        }
        found.sort();
        out.extend(
            found
                .into_iter()
                .filter(|d| seen.insert(crate::fsutil::resolved(d))),
        );
    }
    Ok(out)
}

/// Loads a run folder's events: `events.jsonl` of a finished run, else the events its
/// parts have logged so far.
pub fn load_run(dir: &Path) -> Result<RunData> {
    let m = RunManifest::load(dir)?;
    let path = dir.join(EVENTS_FILE);
    let events = if path.is_file() {
        read_events(&path)?
    } else {
        collect_events(dir, &m.plan)?
    };
    if events.is_empty() {
        return Err(Error::format(dir, "the run has no events yet"));
    }
    let confusions = final_confusions(dir, &m.plan);
    let classes = crate::fsutil::read_json::<CheckpointMeta>(
        &stage_dir(dir, 0).join(CHECKPOINT_DIR).join("meta.json"),
    )
    .map(|meta| meta.classes)
    .unwrap_or_else(|_| {
        let k = confusions.first().map_or(0, |(_, c)| c.rows.len());
        (0..k).map(|i| i.to_string()).collect()
    });
    Ok(RunData {
        dir: dir.to_path_buf(),
        label: m.plan.label(),
        events,
        confusions,
        classes,
        manifest: Some(m),
    })
}

/// One curve: a run's incremental or baseline part.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// Run label.
    pub run: String,
    /// Which part.
    pub kind: CurveKind,
    /// Evaluations, in order.
    pub evals: Vec<Event>,
    /// Training-loss events, in order.
    pub trains: Vec<Event>,
    /// Growths.
    pub growths: Vec<Event>,
}

impl Curve {
    /// `run (incremental)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.run, self.kind.name())
    }

    /// The last evaluation.
    pub fn last(&self) -> Option<&Event> {
        self.evals.last()
    }

    /// Time of the first evaluation at or above `target`.
    pub fn time_to(&self, target: f64) -> Option<f64> {
        self.evals
            .iter()
            // Accuracies are counts over the test split; the slack only absorbs the rounding
            // of `fraction × final`.
            .find(|p| p.top1().is_some_and(|a| a >= target - 1e-9))
            .map(|p| p.clock.time_s)
    }
}

/// Splits runs into curves (incremental first, then baseline, per run).
pub fn curves(runs: &[RunData]) -> Vec<Curve> {
    let mut out = Vec::new();
    for r in runs {
        for kind in [CurveKind::Incremental, CurveKind::Baseline] {
            let mine = || r.events.iter().filter(move |e| e.curve() == Some(kind));
            let of = |f: fn(&What) -> bool| mine().filter(|e| f(&e.what)).cloned().collect();
            let c = Curve {
                run: r.label.clone(),
                kind,
                evals: of(|w| matches!(w, What::Eval { .. })),
                trains: of(|w| matches!(w, What::Train { .. })),
                growths: of(|w| matches!(w, What::Growth { .. })),
            };
            if !c.evals.is_empty() || !c.trains.is_empty() {
                out.push(c);
            }
        }
    }
    out
}

/// Time to reach a fraction of the reference accuracy, and the speed-up over the reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reach {
    /// Fraction of the reference's final top-1 (1.0, 0.99, 0.95).
    pub fraction: f64,
    /// The accuracy that is.
    pub target: f64,
    /// Seconds (training plus growth) to the first evaluation at or above it.
    pub time_s: Option<f64>,
    /// The reference's time to it divided by this curve's.
    pub speedup: Option<f64>,
}

/// A row of the summary table.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// Curve label.
    pub curve: String,
    /// The baseline compared with.
    pub reference: Option<String>,
    /// Final top-1.
    pub final_top1: Option<f64>,
    /// Final top-5.
    pub final_top5: Option<f64>,
    /// Training plus growth seconds at the end.
    pub time_s: f64,
    /// Training images at the end.
    pub images: u64,
    /// Reach of 100%, 99% and 95% of the reference's final accuracy.
    pub reach: Vec<Reach>,
    /// Seconds in growth operators.
    pub grow_s: f64,
    /// Seconds in evaluation and growth checks.
    pub eval_s: f64,
    /// Wall-clock seconds at the end.
    pub wall_s: f64,
}

/// The accuracy dip at one growth.
#[derive(Debug, Clone, Serialize)]
pub struct DipRow {
    /// Curve label.
    pub curve: String,
    /// Stage the growth starts.
    pub stage: usize,
    /// Sizes.
    pub from_size: usize,
    /// Size after.
    pub size: usize,
    /// Operators.
    pub ops: Vec<String>,
    /// Top-1 at the last evaluation before the growth.
    pub before: Option<f64>,
    /// Top-1 at the first evaluation after it (on real images at the new size).
    pub after: Option<f64>,
    /// Lowest top-1 in the new stage.
    pub lowest: Option<f64>,
    /// Seconds after the growth until top-1 was back at `before` (None: never in the stage).
    pub recovered_after_s: Option<f64>,
    /// Relative error of the preservation check.
    pub rel: f64,
    /// Top-1 agreement of the check.
    pub top1_agreement: f64,
    /// Seconds in the operators.
    pub seconds: f64,
}

/// Everything a report shows, computed from events.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The curves.
    pub curves: Vec<Curve>,
    /// One row per curve.
    pub rows: Vec<SummaryRow>,
    /// One row per growth.
    pub dips: Vec<DipRow>,
}

/// Fractions of the reference accuracy in the table.
pub const FRACTIONS: [f64; 3] = [1.0, 0.99, 0.95];

/// Computes the summary of `runs`. Each curve is compared with its own run's baseline, or,
/// in a run without one, with the first baseline among `runs`.
pub fn summarize(runs: &[RunData]) -> Summary {
    let curves = curves(runs);
    let first_baseline = curves.iter().find(|c| c.kind == CurveKind::Baseline);
    let totals = |run: &RunData, kind: CurveKind| -> (f64, f64, f64) {
        run.events
            .iter()
            .filter(|e| e.curve() == Some(kind))
            .map(|e| e.clock)
            .fold((0.0, 0.0, 0.0), |acc, c| {
                (
                    acc.0.max(c.grow_s),
                    acc.1.max(c.eval_s),
                    acc.2.max(c.wall_s),
                )
            })
    };
    let mut rows = Vec::new();
    for c in &curves {
        let reference = curves
            .iter()
            .find(|b| b.kind == CurveKind::Baseline && b.run == c.run)
            .or(first_baseline);
        let ref_final = reference.and_then(|b| b.last()).and_then(Event::top1);
        let reach = match (reference, ref_final) {
            (Some(b), Some(fin)) => FRACTIONS
                .iter()
                .map(|&f| {
                    let target = f * fin;
                    let t = c.time_to(target);
                    let tb = b.time_to(target);
                    Reach {
                        fraction: f,
                        target,
                        time_s: t,
                        speedup: match (t, tb) {
                            (Some(t), Some(tb)) if t > 0.0 => Some(tb / t),
                            _ => None,
                        },
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let run = runs.iter().find(|r| r.label == c.run);
        let (grow_s, eval_s, wall_s) = run.map_or((0.0, 0.0, 0.0), |r| totals(r, c.kind));
        let end = c
            .evals
            .iter()
            .chain(&c.trains)
            .fold((0.0f64, 0u64), |a, p| {
                (a.0.max(p.clock.time_s), a.1.max(p.images))
            });
        rows.push(SummaryRow {
            curve: c.label(),
            reference: reference.map(Curve::label),
            final_top1: c.last().and_then(Event::top1),
            final_top5: c.last().and_then(|p| match p.what {
                What::Eval { top5, .. } => Some(top5),
                _ => None,
            }),
            time_s: end.0,
            images: end.1,
            reach,
            grow_s,
            eval_s,
            wall_s,
        });
    }
    let dips = curves
        .iter()
        .flat_map(|c| c.growths.iter().filter_map(move |g| dip(c, g)))
        .collect();
    Summary { curves, rows, dips }
}

/// The dip of curve `c` at growth `g`.
fn dip(c: &Curve, g: &Event) -> Option<DipRow> {
    let What::Growth {
        from_size,
        ops,
        rel,
        top1_agreement,
        seconds,
        ..
    } = &g.what
    else {
        return None;
    };
    let place = g.place?;
    let stage_of = |e: &Event| e.place.map_or(0, |p| p.stage);
    let before = c
        .evals
        .iter()
        .rfind(|p| stage_of(p) < place.stage)
        .and_then(Event::top1);
    let stage: Vec<(f64, f64)> = c
        .evals
        .iter()
        .filter(|p| stage_of(p) == place.stage)
        .filter_map(|p| Some((p.top1()?, p.clock.time_s)))
        .collect();
    Some(DipRow {
        curve: c.label(),
        stage: place.stage,
        from_size: *from_size,
        size: place.size,
        ops: ops.clone(),
        before,
        after: stage.first().map(|p| p.0),
        lowest: stage.iter().map(|p| p.0).reduce(f64::min),
        recovered_after_s: before.and_then(|b| {
            stage
                .iter()
                .find(|p| p.0 >= b)
                .map(|p| p.1 - g.clock.time_s)
        }),
        rel: *rel,
        top1_agreement: *top1_agreement,
        seconds: *seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::events::Place;

    fn clock(time_s: f64) -> Clock {
        Clock::new(time_s, 0.0, 0.0, time_s)
    }

    fn at(curve: CurveKind, stage: usize) -> Option<Place> {
        Some(Place {
            curve,
            stage,
            size: 8 * stage,
        })
    }

    fn eval(curve: CurveKind, stage: usize, t: f64, top1: f64) -> Event {
        Event {
            what: What::Eval {
                top1,
                top5: 1.0,
                loss: 1.0 - top1,
            },
            place: at(curve, stage),
            iter: (t * 10.0) as u64,
            images: (t * 1000.0) as u64,
            epoch: None,
            clock: clock(t),
        }
    }

    /// A synthetic run with known crossings: the baseline ends at 0.80 after 100 s and
    /// first reaches 0.76 (95%) at 60 s, 0.792 (99%) at 90 s, 0.80 at 100 s; the
    /// incremental curve reaches them at 20 s, 40 s and 50 s, with a growth at 30 s whose dip
    /// (0.78 → 0.70) is recovered 10 s later.
    fn synthetic() -> RunData {
        use CurveKind::{Baseline as B, Incremental as I};
        let mut events = vec![
            eval(I, 1, 0.0, 0.10),
            eval(I, 1, 10.0, 0.50),
            eval(I, 1, 20.0, 0.77),
            eval(I, 1, 30.0, 0.78),
            Event {
                what: What::Growth {
                    from_size: 8,
                    ops: vec!["upscale exact".into()],
                    exact: true,
                    rel: 1e-7,
                    top1_agreement: 1.0,
                    seconds: 0.5,
                },
                place: at(I, 2),
                iter: 300,
                images: 30000,
                epoch: None,
                clock: Clock::new(29.5, 0.5, 0.0, 30.5),
            },
            eval(I, 2, 30.0, 0.70),
            eval(I, 2, 40.0, 0.795),
            eval(I, 2, 50.0, 0.81),
            eval(I, 2, 60.0, 0.83),
        ];
        for (t, a) in [
            (0.0, 0.10),
            (30.0, 0.60),
            (60.0, 0.76),
            (90.0, 0.795),
            (100.0, 0.80),
        ] {
            events.push(eval(B, 1, t, a));
        }
        RunData {
            dir: PathBuf::from("synthetic"),
            label: "exp".into(),
            events,
            confusions: Vec::new(),
            classes: Vec::new(),
            manifest: None,
        }
    }

    #[test]
    fn table_has_the_known_crossing_times_speedups_and_dip() {
        let s = summarize(&[synthetic()]);
        assert_eq!(s.curves.len(), 2);
        let inc = &s.rows[0];
        assert_eq!(inc.curve, "exp (incremental)");
        assert_eq!(inc.reference.as_deref(), Some("exp (baseline)"));
        assert_eq!(inc.final_top1, Some(0.83));
        let times: Vec<Option<f64>> = inc.reach.iter().map(|r| r.time_s).collect();
        assert_eq!(times, vec![Some(50.0), Some(40.0), Some(20.0)]);
        let speedups: Vec<Option<f64>> = inc.reach.iter().map(|r| r.speedup).collect();
        assert_eq!(speedups, vec![Some(2.0), Some(90.0 / 40.0), Some(3.0)]);
        let base = &s.rows[1];
        let btimes: Vec<Option<f64>> = base.reach.iter().map(|r| r.time_s).collect();
        assert_eq!(btimes, vec![Some(100.0), Some(90.0), Some(60.0)]);
        assert!(base.reach.iter().all(|r| r.speedup == Some(1.0)));
        assert_eq!(inc.grow_s, 0.5);
        assert_eq!(inc.time_s, 60.0);

        assert_eq!(s.dips.len(), 1);
        let d = &s.dips[0];
        assert_eq!(
            (d.before, d.after, d.lowest),
            (Some(0.78), Some(0.70), Some(0.70))
        );
        assert_eq!(d.recovered_after_s, Some(10.0));
    }

    #[test]
    fn a_curve_that_never_reaches_the_target_has_no_time_and_no_speedup() {
        let mut r = synthetic();
        r.events
            .retain(|e| !(e.is_eval() && e.place == at(CurveKind::Incremental, 2)));
        let s = summarize(&[r]);
        let inc = &s.rows[0];
        assert_eq!(inc.reach[0].time_s, None);
        assert_eq!(inc.reach[0].speedup, None);
        assert_eq!(inc.reach[2].time_s, Some(20.0));
        assert_eq!(s.dips[0].after, None);
        assert_eq!(s.dips[0].recovered_after_s, None);
    }

    #[test]
    fn runs_without_a_baseline_use_the_first_one() {
        let a = synthetic();
        let mut b = synthetic();
        b.label = "other".into();
        b.events
            .retain(|e| e.curve() == Some(CurveKind::Incremental));
        let s = summarize(&[a, b]);
        let other = s
            .rows
            .iter()
            .find(|r| r.curve == "other (incremental)")
            .expect("row");
        assert_eq!(other.reference.as_deref(), Some("exp (baseline)"));
        assert_eq!(other.reach[0].speedup, Some(2.0));
    }
}
