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
    /// Its name (`plan` or `plan/variant`, with budget and seed on a frontier).
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
        label: m.plan.run_name(),
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
    /// The reference's top-1 at this curve's end time (its last evaluation at or before
    /// it, or up to 1% after: see [`EQUAL_TIME`]), to compare at equal time.
    pub reference_at_end: Option<f64>,
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
    /// Seconds after the growth until top-1, past its lowest point, was back at `before`
    /// (None: never in the stage).
    pub recovered_after_s: Option<f64>,
    /// Relative error of the preservation check.
    pub rel: f64,
    /// Top-1 agreement of the check.
    pub top1_agreement: f64,
    /// Seconds in the operators.
    pub seconds: f64,
}

/// An automatic decision to leave a stage (an `auto` stage), and its reason.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    /// Curve label.
    pub curve: String,
    /// Stage left.
    pub stage: usize,
    /// Its input side.
    pub size: usize,
    /// Iterations of the curve when decided.
    pub iter: u64,
    /// Training plus growth seconds when decided.
    pub time_s: f64,
    /// What was decided.
    pub decision: String,
    /// The numbers behind it.
    pub reason: String,
}

impl DecisionRow {
    /// The row of `e`, if it is a decision of `run`.
    fn of(run: &RunData, e: &Event) -> Option<Self> {
        let What::Decision { decision, reason } = &e.what else {
            return None;
        };
        let place = e.place?;
        Some(DecisionRow {
            curve: format!("{} ({})", run.label, place.curve.name()),
            stage: place.stage,
            size: place.size,
            iter: e.iter,
            time_s: e.clock.time_s,
            decision: decision.clone(),
            reason: reason.clone(),
        })
    }
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
    /// Automatic decisions, in run order.
    pub decisions: Vec<DecisionRow>,
}

/// A reference evaluation up to this factor past a curve's end counts as at its end: a
/// baseline with the same time budget stops at its first step past that time, so its final
/// evaluation lands a step (well under 1%) after the incremental curve's.
pub const EQUAL_TIME: f64 = 1.01;

/// Fractions of the reference accuracy in the table.
pub const FRACTIONS: [f64; 3] = [1.0, 0.99, 0.95];

/// The baseline `c` is compared with: its own run's; for a run without one (a plan variant
/// that shares another's baseline), the baseline at the same frontier budget and seed; else
/// the first baseline among `curves`.
fn reference_of<'a>(c: &Curve, curves: &'a [Curve], runs: &[RunData]) -> Option<&'a Curve> {
    let baselines = || curves.iter().filter(|b| b.kind == CurveKind::Baseline);
    let point = |run: &str| {
        let r = runs.iter().find(|r| r.label == run)?;
        r.manifest.as_ref()?.plan.point
    };
    baselines()
        .find(|b| b.run == c.run)
        .or_else(|| {
            let p = point(&c.run)?;
            baselines().find(|b| point(&b.run) == Some(p))
        })
        .or_else(|| baselines().next())
}

/// Computes the summary of `runs`, each curve compared with [`reference_of`] it.
pub fn summarize(runs: &[RunData]) -> Summary {
    let curves = curves(runs);
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
        let reference = reference_of(c, &curves, runs);
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
        let reference_at_end = reference.and_then(|b| {
            b.evals
                .iter()
                .rfind(|e| e.clock.time_s <= end.0 * EQUAL_TIME + 1e-9)
                .and_then(Event::top1)
        });
        rows.push(SummaryRow {
            curve: c.label(),
            reference: reference.map(Curve::label),
            reference_at_end,
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
    let decisions = runs
        .iter()
        .flat_map(|r| r.events.iter().filter_map(|e| DecisionRow::of(r, e)))
        .collect();
    Summary {
        curves,
        rows,
        dips,
        decisions,
    }
}

/// Mean, lowest and highest of one measure over a frontier point's seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Self {
        Self {
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One budget of a frontier: where the runs of that budget ended, over their seeds.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetPoint {
    /// Budget factor.
    pub budget: f64,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Training (plus growth) seconds at the end.
    pub time_s: Spread,
    /// Final test top-1.
    pub top1: Spread,
}

/// The runs of one plan (or variant) and curve at every budget: accuracy against time.
#[derive(Debug, Clone, Serialize)]
pub struct Frontier {
    /// `plan` or `plan/variant`.
    pub label: String,
    /// Incremental or baseline.
    pub kind: CurveKind,
    /// By budget.
    pub points: Vec<BudgetPoint>,
}

impl Frontier {
    /// `label (kind)`.
    pub fn name(&self) -> String {
        format!("{} ({})", self.label, self.kind.name())
    }

    /// Mean (time, top-1) by budget, in time order.
    fn means(&self) -> Vec<(f64, f64)> {
        let mut m: Vec<(f64, f64)> = self
            .points
            .iter()
            .map(|p| (p.time_s.mean, p.top1.mean))
            .collect();
        m.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }

    /// The time at which the frontier (mean points, linear in log time between them) first
    /// reaches `target`, and whether that is exact (`false`: already at the smallest
    /// budget, so the time is an upper bound).
    pub fn time_to(&self, target: f64) -> Option<(f64, bool)> {
        let m = self.means();
        let first = m.first()?;
        if first.1 >= target {
            return Some((first.0, false));
        }
        m.windows(2).find(|w| w[1].1 >= target).map(|w| {
            let ((t0, a0), (t1, a1)) = (w[0], w[1]);
            let f = (target - a0) / (a1 - a0);
            ((t0.ln() + f * (t1.ln() - t0.ln())).exp(), true)
        })
    }

    /// The frontier's top-1 at time `t` (linear in log time between its points), within
    /// the times it covers.
    pub fn top1_at(&self, t: f64) -> Option<f64> {
        let m = self.means();
        m.windows(2)
            .find(|w| w[0].0 <= t && t <= w[1].0)
            .map(|w| {
                let ((t0, a0), (t1, a1)) = (w[0], w[1]);
                let f = if t1 > t0 {
                    (t.ln() - t0.ln()) / (t1.ln() - t0.ln())
                } else {
                    0.0
                };
                a0 + f * (a1 - a0)
            })
            .or_else(|| m.iter().find(|p| p.0 == t).map(|p| p.1))
    }
}

/// The frontiers of `runs` (those run at frontier budgets; sweep runs left out), one per
/// plan label and curve.
pub fn frontiers(runs: &[RunData]) -> Vec<Frontier> {
    // (label, kind, budget) → (seed, end time, final top-1) of each run.
    type Samples = Vec<(u64, f64, f64)>;
    let mut groups: Vec<(String, CurveKind, f64, Samples)> = Vec::new();
    for r in runs {
        let Some(plan) = r.manifest.as_ref().map(|m| &m.plan) else {
            continue;
        };
        let (Some(point), None) = (plan.point, plan.sweep) else {
            continue;
        };
        for kind in [CurveKind::Incremental, CurveKind::Baseline] {
            let end = r
                .events
                .iter()
                .rev()
                .find(|e| e.is_eval() && e.curve() == Some(kind));
            let Some((end, top1)) = end.and_then(|e| Some((e, e.top1()?))) else {
                continue;
            };
            let key = (plan.label(), kind, point.budget);
            let sample = (point.seed, end.clock.time_s, top1);
            match groups
                .iter_mut()
                .find(|g| (&g.0, g.1, g.2) == (&key.0, key.1, key.2))
            {
                Some(g) => g.3.push(sample),
                None => groups.push((key.0, key.1, key.2, vec![sample])),
            }
        }
    }
    let mut out: Vec<Frontier> = Vec::new();
    for (label, kind, budget, samples) in groups {
        let times: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let accs: Vec<f64> = samples.iter().map(|s| s.2).collect();
        let point = BudgetPoint {
            budget,
            seeds: samples.iter().map(|s| s.0).collect(),
            time_s: Spread::of(&times),
            top1: Spread::of(&accs),
        };
        match out.iter_mut().find(|f| f.label == label && f.kind == kind) {
            Some(f) => f.points.push(point),
            None => out.push(Frontier {
                label,
                kind,
                points: vec![point],
            }),
        }
    }
    for f in &mut out {
        f.points.sort_by(|a, b| a.budget.total_cmp(&b.budget));
    }
    out
}

/// The comparison of an incremental frontier with its baseline frontier.
#[derive(Debug, Clone, Serialize)]
pub struct Payoff {
    /// `plan` or `plan/variant`.
    pub label: String,
    /// The baseline frontier compared with.
    pub baseline: String,
    /// Seeds per budget (the fewest).
    pub seeds: usize,
    /// Per baseline budget: how soon the incremental frontier reached its final top-1.
    pub speedups: Vec<SpeedUp>,
    /// Per incremental budget: the baseline frontier at the same time.
    pub equal_time: Vec<EqualTime>,
    /// The smallest baseline budget from which every larger one that can be compared (not
    /// `beyond`) is reached sooner, if any.
    pub pays_from: Option<f64>,
    /// The smallest speed-up over the budgets from `pays_from` on.
    pub min_speedup: Option<f64>,
}

/// A baseline budget's point, and when the incremental frontier reached its top-1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpeedUp {
    /// Budget factor.
    pub budget: f64,
    /// The baseline's mean time.
    pub time_s: f64,
    /// The baseline's mean final top-1.
    pub top1: f64,
    /// When the incremental frontier reached it, and whether exactly (`false`: already at
    /// its smallest budget, an upper bound).
    pub reached: Option<(f64, bool)>,
    /// The baseline's time over that.
    pub speedup: Option<f64>,
    /// Not reached, but the incremental frontier ends before the baseline's time, so a
    /// larger incremental budget might still reach it sooner: not compared.
    pub beyond: bool,
}

/// An incremental budget's point, and the baseline frontier at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EqualTime {
    /// Budget factor.
    pub budget: f64,
    /// The incremental run's mean time.
    pub time_s: f64,
    /// Its mean final top-1.
    pub top1: f64,
    /// The baseline frontier's top-1 at that time, within the times it covers.
    pub baseline_top1: Option<f64>,
    /// The difference in points of top-1.
    pub difference: Option<f64>,
}

/// Compares each incremental frontier with the baseline frontier of the same label (or,
/// for a plan variant run without a baseline, the first baseline frontier).
pub fn payoffs(frontiers: &[Frontier]) -> Vec<Payoff> {
    frontiers
        .iter()
        .filter(|f| f.kind == CurveKind::Incremental)
        .filter_map(|inc| {
            // Its own plan's baseline, or (a variant that shares it) the first one.
            let baselines = || frontiers.iter().filter(|b| b.kind == CurveKind::Baseline);
            let base = baselines()
                .find(|b| b.label == inc.label)
                .or_else(|| baselines().next())?;
            let speedups: Vec<_> = base
                .points
                .iter()
                .map(|b| {
                    let reached = inc.time_to(b.top1.mean);
                    let ends = inc.means().last().map_or(0.0, |m| m.0);
                    SpeedUp {
                        budget: b.budget,
                        time_s: b.time_s.mean,
                        top1: b.top1.mean,
                        reached,
                        speedup: reached.map(|(t, _)| b.time_s.mean / t.max(1e-9)),
                        beyond: reached.is_none() && ends < b.time_s.mean,
                    }
                })
                .collect();
            let equal_time = inc
                .points
                .iter()
                .map(|i| {
                    let at = base.top1_at(i.time_s.mean);
                    EqualTime {
                        budget: i.budget,
                        time_s: i.time_s.mean,
                        top1: i.top1.mean,
                        baseline_top1: at,
                        difference: at.map(|a| 100.0 * (i.top1.mean - a)),
                    }
                })
                .collect();
            let compared = |k: usize| speedups[k..].iter().filter(|s| !s.beyond);
            let from = (0..speedups.len()).find(|&k| {
                compared(k).next().is_some()
                    && compared(k).all(|s| s.speedup.is_some_and(|x| x >= 1.0))
            });
            let seeds = inc
                .points
                .iter()
                .chain(&base.points)
                .map(|p| p.seeds.len())
                .min()
                .unwrap_or(0);
            Some(Payoff {
                label: inc.label.clone(),
                baseline: base.label.clone(),
                seeds,
                pays_from: from.map(|k| speedups[k].budget),
                min_speedup: from.and_then(|k| {
                    speedups[k..]
                        .iter()
                        .filter_map(|s| s.speedup)
                        .reduce(f64::min)
                }),
                speedups,
                equal_time,
            })
        })
        .collect()
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
    // A growth that keeps the function dips, if at all, once training moves the new
    // weights: recovery counts from the lowest point, not from the first evaluation.
    let low = stage
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .map_or(0, |(i, _)| i);
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
            stage[low..]
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
                val_top1: None,
                val_loss: None,
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
        assert!(s.decisions.is_empty());
    }

    #[test]
    fn automatic_decisions_are_listed_with_their_reasons() {
        let mut r = synthetic();
        r.events.insert(
            3,
            Event {
                what: What::Decision {
                    decision: "leave this stage at iteration 290".into(),
                    reason: "gains 0.01 points per step".into(),
                },
                place: at(CurveKind::Incremental, 1),
                iter: 290,
                images: 29000,
                epoch: None,
                clock: clock(29.0),
            },
        );
        let s = summarize(&[r]);
        assert_eq!(s.decisions.len(), 1);
        let d = &s.decisions[0];
        assert_eq!(d.curve, "exp (incremental)");
        assert_eq!((d.stage, d.iter, d.time_s), (1, 290, 29.0));
        assert_eq!(d.reason, "gains 0.01 points per step");
    }

    #[test]
    fn a_baseline_that_stops_a_step_past_the_same_time_budget_is_compared_at_its_end() {
        let mut r = synthetic();
        // The incremental curve ends at 60 s; the baseline's final evaluation at 60.3 s.
        r.events
            .retain(|e| !(e.curve() == Some(CurveKind::Baseline) && e.clock.time_s > 59.0));
        r.events.push(eval(CurveKind::Baseline, 1, 60.3, 0.79));
        let s = summarize(&[r.clone()]);
        assert_eq!(s.rows[0].reference_at_end, Some(0.79));
        // Further past it, the evaluation before the end is the one at equal time.
        r.events.pop();
        r.events.push(eval(CurveKind::Baseline, 1, 61.0, 0.79));
        let s = summarize(&[r]);
        assert_eq!(s.rows[0].reference_at_end, Some(0.60));
    }

    #[test]
    fn a_dip_that_comes_after_the_first_evaluation_is_recovered_from_its_lowest_point() {
        let mut r = synthetic();
        // Just after the growth (30 s) top-1 is still 0.78; it falls to 0.70 at 35 s and
        // is back at 0.78 at 45 s.
        r.events
            .retain(|e| !(e.is_eval() && e.place == at(CurveKind::Incremental, 2)));
        for (t, a) in [(30.0, 0.78), (35.0, 0.70), (40.0, 0.75), (45.0, 0.785)] {
            r.events.push(eval(CurveKind::Incremental, 2, t, a));
        }
        let s = summarize(&[r]);
        let d = &s.dips[0];
        assert_eq!((d.after, d.lowest), (Some(0.78), Some(0.70)));
        assert_eq!(d.recovered_after_s, Some(15.0));
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

    /// A manifest placing a run at a frontier point (only `point` matters here).
    fn at_point(budget: f64, seed: u64) -> RunManifest {
        let plan = serde_json::json!({
            "plan": "p", "variant": null, "index": 0, "description": "", "data": "d",
            "seed": seed, "threads": null, "schedule": "per-stage", "init": "kaiming",
            "stages": [], "baseline": null, "point": { "budget": budget, "seed": seed },
            "variant_first": 0
        });
        RunManifest {
            format: crate::run::RUN_FORMAT.into(),
            version: 2,
            plan: serde_json::from_value(plan).expect("plan"),
        }
    }

    #[test]
    fn a_variant_without_a_baseline_uses_the_one_at_its_budget_and_seed() {
        let mut runs = Vec::new();
        for (label, budget, top) in [("a b1", 1.0, 0.70), ("a b2", 2.0, 0.80)] {
            let mut r = synthetic();
            r.label = label.into();
            r.manifest = Some(at_point(budget, 1));
            for e in r
                .events
                .iter_mut()
                .filter(|e| e.curve() == Some(CurveKind::Baseline))
            {
                if let What::Eval { top1, .. } = &mut e.what {
                    *top1 = top1.min(top);
                }
            }
            runs.push(r);
        }
        let mut shared = runs[1].clone();
        shared.label = "b b2".into();
        shared
            .events
            .retain(|e| e.curve() == Some(CurveKind::Incremental));
        runs.push(shared);
        let s = summarize(&runs);
        let row = s.rows.iter().find(|r| r.curve == "b b2 (incremental)");
        assert_eq!(
            row.and_then(|r| r.reference.as_deref()),
            Some("a b2 (baseline)"),
            "not the first baseline (a b1) but the one at the same budget"
        );
    }
    fn front(kind: CurveKind, pts: &[(f64, f64, f64)]) -> Frontier {
        Frontier {
            label: "p".into(),
            kind,
            points: pts
                .iter()
                .map(|&(budget, t, a)| BudgetPoint {
                    budget,
                    seeds: vec![1, 2],
                    time_s: Spread {
                        mean: t,
                        min: t * 0.9,
                        max: t * 1.1,
                    },
                    top1: Spread {
                        mean: a,
                        min: a - 0.01,
                        max: a + 0.01,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn frontiers_interpolate_in_log_time_and_give_speedups() {
        // From scratch: 0.80 at 10 s, 0.86 at 20 s, 0.90 at 40 s. Incremental: 0.82 at
        // 5 s, 0.88 at 10 s, 0.905 at 20 s.
        let base = front(
            CurveKind::Baseline,
            &[(1.0, 10.0, 0.80), (2.0, 20.0, 0.86), (4.0, 40.0, 0.90)],
        );
        let inc = front(
            CurveKind::Incremental,
            &[(1.0, 5.0, 0.82), (2.0, 10.0, 0.88), (4.0, 20.0, 0.905)],
        );
        // 0.86 lies two thirds of the way from 0.82 to 0.88: 5 · 2^(2/3) s.
        let (t, exact) = inc.time_to(0.86).expect("reached");
        assert!(
            exact && (t - 5.0 * 2f64.powf(2.0 / 3.0)).abs() < 1e-9,
            "{t}"
        );
        // 0.80 is below the first point: an upper bound.
        assert_eq!(inc.time_to(0.80), Some((5.0, false)));
        assert_eq!(inc.time_to(0.95), None);
        // The baseline at 15 s, interpolated in log time between 10 and 20 s.
        let at = base.top1_at(15.0).expect("covered");
        let f = (15f64.ln() - 10f64.ln()) / (20f64.ln() - 10f64.ln());
        assert!((at - (0.80 + f * 0.06)).abs() < 1e-12);
        assert_eq!(base.top1_at(5.0), None, "outside the baseline's times");
        let p = &payoffs(&[inc, base])[0];
        // Speed-ups: 10 s / ≤ 5 s, and 20 s / 5·2^(2/3) s.
        assert_eq!(p.speedups[0].speedup, Some(2.0));
        assert!((p.speedups[1].speedup.expect("x") - 4.0 / 2f64.powf(2.0 / 3.0)).abs() < 1e-9);
        assert_eq!(p.pays_from, Some(1.0));
        assert!(p.min_speedup.is_some_and(|x| x > 1.5));
        // Equal time: the incremental point at 10 s against the baseline's 0.80 there.
        let e = p.equal_time[1];
        assert_eq!((e.budget, e.time_s), (2.0, 10.0));
        assert!((e.difference.expect("compared") - 8.0).abs() < 1e-9);
        assert_eq!(p.seeds, 2);
    }

    #[test]
    fn a_slower_incremental_frontier_does_not_pay_off() {
        let base = front(CurveKind::Baseline, &[(1.0, 10.0, 0.85), (2.0, 20.0, 0.88)]);
        let inc = front(
            CurveKind::Incremental,
            &[(1.0, 10.0, 0.84), (2.0, 20.0, 0.87)],
        );
        let p = &payoffs(&[base, inc])[0];
        assert_eq!(p.pays_from, None);
        assert_eq!(p.speedups[1].speedup, None, "0.88 is never reached");
        assert!(
            p.equal_time
                .iter()
                .all(|e| e.difference.is_some_and(|d| d < 0.0))
        );
    }

    #[test]
    fn a_baseline_point_past_the_incremental_frontier_is_not_compared() {
        // The incremental frontier ends at 20 s below 0.90; the baseline reaches 0.90 only
        // at 40 s, so whether the incremental plan would get there sooner is not known.
        let base = front(
            CurveKind::Baseline,
            &[(1.0, 10.0, 0.80), (2.0, 20.0, 0.86), (4.0, 40.0, 0.90)],
        );
        let inc = front(
            CurveKind::Incremental,
            &[(1.0, 5.0, 0.82), (2.0, 10.0, 0.88), (4.0, 20.0, 0.89)],
        );
        let p = &payoffs(&[base.clone(), inc])[0];
        assert!(p.speedups[2].beyond && p.speedups[2].speedup.is_none());
        assert!(!p.speedups[1].beyond);
        assert_eq!(p.pays_from, Some(1.0), "the last point is not a failure");
        // Past its time it is a failure: the same top-1 at 45 s.
        let slow = front(
            CurveKind::Incremental,
            &[(1.0, 5.0, 0.82), (4.0, 45.0, 0.89)],
        );
        let q = &payoffs(&[base, slow])[0];
        assert!(!q.speedups[2].beyond);
        assert_eq!(q.pays_from, None);
    }
}
