//! Experiment plans: a TOML description of an incremental training run (stages, growth
//! between them, optimizer-state and learning-rate policies) and of its from-scratch
//! baseline, validated into [`RunPlan`]s before anything is trained.
//!
//! A plan may list `[[variant]]`s: each is a patch over the plan (tables merge key by key,
//! `stage.N` addresses the N-th stage, other values replace), and each variant is one run,
//! addressable by its index for cluster array jobs. See docs/runs.md for the format.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;
use crate::data::prepare::DatasetManifest;
use crate::error::{Error, Result};
use crate::grow::{self, GrowOp};
use crate::hyper::{Hyper, StopAt};
use crate::lr::LrPolicy;
use crate::net::spec::InputShape;
use crate::net::weights::Init;
use crate::net::{NetSpec, WeightMap, presets};

/// How the learning rate runs across stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Every stage has its own rate and policy, restarted at its first iteration.
    #[default]
    PerStage,
    /// One policy over the iterations of all stages, as if they were one run.
    Global,
}

/// What the grown net's optimizer starts from at a stage transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MomentumState {
    /// The momentum buffers, moved by the growth operators like the weights.
    #[default]
    Keep,
    /// Zeros.
    Reset,
}

/// What the baseline's budget matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// The incremental run's training plus growth seconds. Not reproducible: how many
    /// iterations fit depends on the machine's speed and load.
    Time,
    /// The incremental run's training images (the default: the same numbers on every
    /// rerun).
    #[default]
    Images,
}

/// `[baseline]`: the final stage's network trained from scratch at the final size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// Run it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Same number of images (default) or same training time as the incremental run.
    #[serde(default)]
    pub budget: Budget,
    /// Base learning rate (default: the plan's).
    pub lr: Option<f32>,
    /// Learning-rate policy (default: the plan's).
    pub lr_policy: Option<String>,
    /// Batch size (default: the final stage's).
    pub batch: Option<usize>,
    /// Evaluation interval in iterations (default: the plan's).
    pub eval_every: Option<u64>,
    /// Augmentation of its training images (default: the plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
}

impl Default for BaselineSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            budget: Budget::Images,
            lr: None,
            lr_policy: None,
            batch: None,
            eval_every: None,
            augment: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[frontier]`: the plan run at several budgets and seeds, and the baseline's learning
/// rate chosen by a sweep on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontierSpec {
    /// Factors applied to every stage's length (and so to the baseline's): with
    /// `epochs = 1`, budgets of that many epochs.
    pub budgets: Vec<f64>,
    /// Seeds; each budget runs once per seed.
    #[serde(default = "one_seed")]
    pub seeds: Vec<u64>,
    /// Base learning rates to try for the baseline (empty: the plan's rate). Each is run at
    /// `sweep_budget` with the first seed, and the one with the best final validation
    /// top-1 is the baseline's rate at every budget.
    #[serde(default)]
    pub baseline_lrs: Vec<f32>,
    /// The budget factor of the sweep (default: the middle one of `budgets`).
    pub sweep_budget: Option<f64>,
}

fn one_seed() -> Vec<u64> {
    vec![0]
}

/// A run's place on a frontier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrontierPoint {
    /// The factor applied to every stage's length.
    pub budget: f64,
    /// The seed.
    pub seed: u64,
}

/// One `[[stage]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Input side; must be a prepared size.
    pub size: usize,
    /// First stage only: a preset name or a `.toml`/`.json` spec file.
    pub net: Option<String>,
    /// Later stages: growth operators applied to the previous stage's trained net, in order
    /// (an empty list continues the same net).
    pub grow: Option<Vec<GrowOp>>,
    /// Budget: iterations…
    pub iterations: Option<u64>,
    /// …or epochs of the training split…
    pub epochs: Option<f64>,
    /// …or seconds of training…
    pub seconds: Option<f64>,
    /// …or this fraction of the plan's `epochs` (the curve's whole budget).
    pub share: Option<f64>,
    /// Leave this stage early when its validation accuracy gains less per second than the
    /// next size is expected to give (its budget is then the cap, and what it leaves
    /// unused goes to the next stage). Needs a validation split.
    pub auto: Option<bool>,
    /// Base learning rate (default: the plan's; not with `schedule = "global"`).
    pub lr: Option<f32>,
    /// Learning-rate policy (default: the plan's; not with `schedule = "global"`).
    pub lr_policy: Option<String>,
    /// Batch size (default: the plan's).
    pub batch: Option<usize>,
    /// Evaluation interval in iterations (default: the plan's).
    pub eval_every: Option<u64>,
    /// Later stages: optimizer state after growth (default keep).
    pub momentum_state: Option<MomentumState>,
    /// Later stages: linear learning-rate warm-up over this many iterations.
    pub warmup: Option<u64>,
    /// Augmentation of its training images (default: the plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// Later stages: after growth, re-estimate the batch norms' running statistics on this
    /// many training images at the new size (default 0: keep the grown ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalibrate: Option<u64>,
}

/// A plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Name of the experiment (names the runs).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Prepared data folder (from `c2f prepare`), relative to the working directory.
    pub data: PathBuf,
    /// Seed of weights, data order, dropout and growth noise.
    #[serde(default)]
    pub seed: u64,
    /// CPU threads (the command line's `--threads` wins).
    pub threads: Option<usize>,
    /// Default batch size.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Default base learning rate.
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// Default learning-rate policy: `fixed`, `step:GAMMA:STEP`, `inv:GAMMA:POWER`.
    #[serde(default = "default_policy")]
    pub lr_policy: String,
    /// Momentum μ.
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    /// Weight decay λ.
    #[serde(default = "default_decay")]
    pub weight_decay: f32,
    /// Per-stage or one global learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Default evaluation interval in iterations.
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Initialisation of fresh nets (the first stage and the baseline).
    #[serde(default = "default_init")]
    pub init: String,
    /// Augmentation of training images for every part (`none`, or e.g. `crop:4,flip`);
    /// stages and the baseline may set their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// Label smoothing ε of the training loss of every part (default 0).
    #[serde(default, skip_serializing_if = "crate::hyper::is_zero")]
    pub label_smoothing: f32,
    /// The incremental curve's whole budget, in epochs of the training split, which stages
    /// divide among them with `share`.
    pub epochs: Option<f64>,
    /// The baseline.
    #[serde(default)]
    pub baseline: BaselineSpec,
    /// Budgets and seeds to run the plan at, and the baseline's learning-rate sweep.
    pub frontier: Option<FrontierSpec>,
    /// Stages, in order.
    #[serde(rename = "stage")]
    pub stages: Vec<StageSpec>,
    /// Variants (patches over the plan); each is one run.
    #[serde(default, rename = "variant", skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<toml::Table>,
}

fn default_batch() -> usize {
    128
}
fn default_lr() -> f32 {
    0.01
}
fn default_policy() -> String {
    "fixed".into()
}
fn default_momentum() -> f32 {
    0.9
}
fn default_decay() -> f32 {
    5e-4
}
fn default_eval_every() -> u64 {
    200
}
fn default_init() -> String {
    "kaiming".into()
}

/// A stage's budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageBudget {
    /// Train this many iterations.
    Iterations(u64),
    /// Train until the run's training seconds reach this many more.
    Seconds(f64),
}

/// One validated stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    /// Input side.
    pub size: usize,
    /// Growth operators from the previous stage (empty for the first).
    pub grow: Vec<GrowOp>,
    /// The net this stage trains, bound to `size` (derived from the previous by `grow`).
    pub spec: NetSpec,
    /// Budget.
    pub budget: StageBudget,
    /// Hyper-parameters (the seed is this stage's data-order and dropout seed).
    pub hyper: Hyper,
    /// Evaluation interval.
    pub eval_every: u64,
    /// Optimizer state after growth.
    pub momentum_state: MomentumState,
    /// Warm-up iterations.
    pub warmup: u64,
    /// Leave early by the validation rule (see [`StageSpec::auto`]).
    #[serde(default)]
    pub auto: bool,
    /// Training images the batch norms are recalibrated on after growth (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recalibrate: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The validated baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselinePlan {
    /// Budget kind.
    pub budget: Budget,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Evaluation interval.
    pub eval_every: u64,
}

/// One run of a plan, validated: everything needed to train, nothing left to check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// Plan name.
    pub plan: String,
    /// Variant name (`None` for a plan without variants).
    pub variant: Option<String>,
    /// Index among the plan's runs.
    pub index: usize,
    /// What the plan shows.
    pub description: String,
    /// Prepared data folder.
    pub data: PathBuf,
    /// Seed.
    pub seed: u64,
    /// Threads the plan asks for.
    pub threads: Option<usize>,
    /// Learning-rate schedule mode.
    pub schedule: Schedule,
    /// Weight initialisation of fresh nets.
    pub init: Init,
    /// Stages.
    pub stages: Vec<StagePlan>,
    /// Baseline, if enabled.
    pub baseline: Option<BaselinePlan>,
    /// The run's budget and seed, in a plan with a `[frontier]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<FrontierPoint>,
    /// A run of the baseline's learning-rate sweep: the baseline alone, at this rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<f32>,
    /// Rates the baseline's is chosen from by the sweep runs (empty: the plan's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_lrs: Vec<f32>,
    /// The sweep's budget factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_budget: Option<f64>,
    /// Index of the first run of this run's variant (where its sweep runs are).
    #[serde(default)]
    pub variant_first: usize,
}

/// What one index of a plan's runs is.
struct Role {
    variant: usize,
    /// The index of the variant's first run.
    first: usize,
    point: Option<FrontierPoint>,
    sweep: Option<f32>,
}

impl RunPlan {
    /// `plan` or `plan/variant`: the name of the runs that make one curve of a report (the
    /// budgets and seeds of a frontier share it).
    pub fn label(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{v}", self.plan),
            None => self.plan.clone(),
        }
    }

    /// The run's own name: its label, with its budget and seed on a frontier, or the rate
    /// of a sweep run (`exp/a b2 s1`, `exp/a sweep lr0.01`).
    pub fn run_name(&self) -> String {
        match (self.sweep, self.point) {
            (Some(lr), _) => format!("{} sweep lr{lr}", self.label()),
            (None, Some(p)) => format!("{} b{} s{}", self.label(), p.budget, p.seed),
            (None, None) => self.label(),
        }
    }

    /// Folder name of this run inside an output folder.
    pub fn folder(&self) -> String {
        let base = self.variant.clone().unwrap_or_else(|| self.plan.clone());
        match (self.sweep, self.point) {
            (Some(lr), _) => format!("{:02}-{base}-sweep-lr{lr}", self.index),
            (None, Some(p)) => format!("{:02}-{base}-b{}-s{}", self.index, p.budget, p.seed),
            (None, None) if self.variant.is_some() => format!("{:02}-{base}", self.index),
            (None, None) => base,
        }
    }

    /// Folder names of this run's sweep runs, with their rates (the runs with the same
    /// plan and variant and `sweep` set); see [`PlanFile`].
    pub fn sweep_folders(&self, first_index: usize) -> Vec<(f32, String)> {
        self.baseline_lrs
            .iter()
            .enumerate()
            .map(|(i, &lr)| {
                let mut r = self.clone();
                r.index = first_index + i;
                r.sweep = Some(lr);
                (lr, r.folder())
            })
            .collect()
    }

    /// Training images of the incremental curve as planned (all stages in iterations).
    pub fn planned_images(&self) -> Option<u64> {
        self.stages
            .iter()
            .map(|s| match s.budget {
                StageBudget::Iterations(n) => Some(n * s.hyper.batch_size as u64),
                StageBudget::Seconds(_) => None,
            })
            .sum()
    }
}

/// Line and column (1-based) of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            Error::format(path, format!("line {line}, column {col}: {msg}"))
        }
        None => Error::format(path, msg),
    }
}

/// Applies `patch` over `base`: tables merge key by key; a table of numbered keys over an
/// array patches the numbered elements (1-based); anything else replaces.
fn merge(base: &mut toml::Value, patch: &toml::Value, at: &str) -> Result<()> {
    match (base, patch) {
        (toml::Value::Table(b), toml::Value::Table(p)) => {
            for (k, v) in p {
                let here = format!("{at}.{k}");
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v, &here)?,
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(())
        }
        (toml::Value::Array(b), toml::Value::Table(p)) => {
            for (k, v) in p {
                let n = k.parse::<usize>().ok().filter(|n| *n >= 1 && *n <= b.len());
                let Some(n) = n else {
                    return Err(Error::invalid(format!(
                        "{at}.{k}: there are {} entries; number them 1 to {}",
                        b.len(),
                        b.len()
                    )));
                };
                merge(&mut b[n - 1], v, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (b, p) => {
            *b = p.clone();
            Ok(())
        }
    }
}

/// A parsed plan file and the runs it defines.
#[derive(Debug, Clone)]
pub struct PlanFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The plan without variants applied.
    pub plan: Plan,
    raw: toml::Table,
    /// Sweep runs of each variant (none for a variant without a baseline).
    sweeps: Vec<usize>,
}

impl PlanFile {
    /// Reads and parses `path` (syntax and keys; nothing is resolved yet).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses plan text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let plan: Plan = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let raw: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let mut file = Self {
            path: path.to_path_buf(),
            plan,
            raw,
            sweeps: Vec::new(),
        };
        let rates = file
            .plan
            .frontier
            .as_ref()
            .map_or(0, |f| f.baseline_lrs.len());
        file.sweeps = (0..file.plan.variants.len().max(1))
            .map(|v| match file.variant(v) {
                Ok((p, _)) if !p.baseline.enabled => 0,
                _ => rates,
            })
            .collect();
        Ok(file)
    }

    /// Number of runs: per variant (or for the plan), one per budget and seed of a
    /// `[frontier]` plus one per swept baseline rate (if the variant has a baseline), or one.
    pub fn run_count(&self) -> usize {
        (0..self.sweeps.len()).map(|v| self.runs_of(v)).sum()
    }

    fn runs_of(&self, variant: usize) -> usize {
        match &self.plan.frontier {
            Some(f) => self.sweeps[variant] + (f.budgets.len() * f.seeds.len()).max(1),
            None => 1,
        }
    }

    /// What run `index` is: its variant's index and first run, and its budget, seed and
    /// sweep rate.
    fn role(&self, index: usize) -> Result<Role> {
        if index >= self.run_count() {
            return Err(Error::invalid(format!(
                "{}: the plan has {} run(s) (indices 0 to {}), not {index}",
                self.path.display(),
                self.run_count(),
                self.run_count() - 1
            )));
        }
        let (mut v, mut first) = (0, 0);
        while index >= first + self.runs_of(v) {
            first += self.runs_of(v);
            v += 1;
        }
        let r = index - first;
        let mut role = Role {
            variant: v,
            first,
            point: None,
            sweep: None,
        };
        let Some(f) = &self.plan.frontier else {
            return Ok(role);
        };
        let nseeds = f.seeds.len().max(1);
        let seed = |i: usize| f.seeds.get(i).copied().unwrap_or(0);
        if r < self.sweeps[v] {
            let budget = f.sweep_budget.unwrap_or_else(|| middle(&f.budgets));
            role.point = Some(FrontierPoint {
                budget,
                seed: seed(0),
            });
            role.sweep = f.baseline_lrs.get(r).copied();
            return Ok(role);
        }
        let m = r - self.sweeps[v];
        role.point = Some(FrontierPoint {
            budget: f.budgets.get(m / nseeds).copied().unwrap_or(1.0),
            seed: seed(m % nseeds),
        });
        Ok(role)
    }

    /// The plan of variant `index`, with its patch applied, unvalidated.
    fn variant(&self, index: usize) -> Result<(Plan, Option<String>)> {
        if self.plan.variants.is_empty() {
            return Ok((self.plan.clone(), None));
        }
        let patch = self.plan.variants.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "{}: the plan has {} variants, not {index}",
                self.path.display(),
                self.plan.variants.len(),
            ))
        })?;
        let where_ = format!("{}: variant {index}", self.path.display());
        let name = match patch.get("name") {
            Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(Error::invalid(format!(
                    "{where_}: every [[variant]] needs name = \"…\""
                )));
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::invalid(format!(
                "{where_} ({name:?}): use letters, digits, '-', '_' and '.' in names (they name folders)"
            )));
        }
        if patch.contains_key("frontier") {
            return Err(Error::invalid(format!(
                "{where_} ({name}): [frontier] applies to every variant; set it at the top level"
            )));
        }
        if patch.contains_key("variant") {
            return Err(Error::invalid(format!(
                "{where_} ({name}): a variant cannot hold [[variant]]s of its own; list every variant at the top level"
            )));
        }
        let mut patch = patch.clone();
        patch.remove("name");
        let mut base = toml::Value::Table(self.raw.clone());
        if let toml::Value::Table(t) = &mut base {
            t.remove("variant");
        }
        merge(&mut base, &toml::Value::Table(patch), "")
            .map_err(|e| Error::invalid(format!("{where_} ({name}): {e}")))?;
        let plan: Plan = base.try_into().map_err(|e: toml::de::Error| {
            Error::invalid(format!(
                "{where_} ({name}): {}",
                e.message().replace('\n', " ")
            ))
        })?;
        Ok((plan, Some(name)))
    }

    /// Validates run `index` against the prepared data: budgets, sizes that chain, growth
    /// operators that fit the nets (applied to zero weights), learning-rate policies.
    /// `data` overrides the plan's data folder.
    pub fn resolve(&self, index: usize, data: Option<&Path>) -> Result<RunPlan> {
        let Role {
            variant: v,
            first,
            point,
            sweep,
        } = self.role(index)?;
        let (mut plan, variant) = self.variant(v)?;
        let what = match &variant {
            Some(name) => format!("{}: variant {v} ({name})", self.path.display()),
            None => self.path.display().to_string(),
        };
        let err = |e: Error| Error::invalid(format!("{what}: {}", strip_kind(&e)));
        if let Some(p) = point {
            scale(&mut plan, p).map_err(err)?;
        }
        let mut run = resolve(&plan, variant, index, data).map_err(err)?;
        run.point = point;
        run.sweep = sweep;
        run.variant_first = first;
        if let (Some(f), Some(_)) = (&self.plan.frontier, &run.baseline) {
            run.baseline_lrs = f.baseline_lrs.clone();
            run.sweep_budget = Some(f.sweep_budget.unwrap_or_else(|| middle(&f.budgets)));
        }
        check_frontier(&run).map_err(err)?;
        Ok(run)
    }

    /// All runs, validated.
    pub fn resolve_all(&self, data: Option<&Path>) -> Result<Vec<RunPlan>> {
        (0..self.run_count())
            .map(|i| self.resolve(i, data))
            .collect()
    }
}

/// The middle budget of a frontier (the sweep's default).
fn middle(budgets: &[f64]) -> f64 {
    budgets.get(budgets.len() / 2).copied().unwrap_or(1.0)
}

/// Applies a frontier point to a plan: every stage's length (and the whole budget) times
/// the budget factor, and the seed.
fn scale(plan: &mut Plan, p: FrontierPoint) -> Result<()> {
    if !(p.budget.is_finite() && p.budget > 0.0) {
        return Err(Error::invalid(format!(
            "[frontier] budget {} must be a positive number",
            p.budget
        )));
    }
    plan.seed = p.seed;
    plan.epochs = plan.epochs.map(|e| e * p.budget);
    for st in &mut plan.stages {
        st.iterations = st
            .iterations
            .map(|n| ((n as f64 * p.budget).round() as u64).max(1));
        st.epochs = st.epochs.map(|e| e * p.budget);
        st.seconds = st.seconds.map(|sec| sec * p.budget);
    }
    Ok(())
}

/// What a frontier needs: a sweep has a baseline on the incremental run's images, and the
/// data a validation split to choose by.
fn check_frontier(run: &RunPlan) -> Result<()> {
    if run.baseline_lrs.is_empty() {
        return Ok(());
    }
    match &run.baseline {
        Some(b) if b.budget == Budget::Images && run.planned_images().is_some() => {}
        _ => {
            return Err(Error::invalid(
                "[frontier] baseline_lrs: the sweep needs a baseline with budget = \"images\" and stages with budgets in iterations, epochs or shares",
            ));
        }
    }
    if let Some(bad) = run
        .baseline_lrs
        .iter()
        .find(|lr| !(lr.is_finite() && **lr > 0.0))
    {
        return Err(Error::invalid(format!(
            "[frontier] baseline_lrs: {bad} must be a positive number"
        )));
    }
    let manifest = DatasetManifest::load(&run.data)?;
    if !manifest.splits.contains_key("val") {
        return Err(Error::invalid(format!(
            "[frontier] baseline_lrs: the sweep chooses on a validation split, and {} has none (prepare it with --val-images N)",
            run.data.display()
        )));
    }
    Ok(())
}

/// The message of an error without its "invalid input: " style prefix.
fn strip_kind(e: &Error) -> String {
    match e {
        Error::Invalid(m) => m.clone(),
        other => other.to_string(),
    }
}

fn parse_policy(s: &str, key: &str) -> Result<LrPolicy> {
    s.parse::<LrPolicy>()
        .map_err(|e| Error::invalid(format!("{key}: {}", strip_kind(&e))))
}

/// `e` with `at` (e.g. "stage 2") in front.
fn at(at: &str, e: Error) -> Error {
    Error::invalid(format!("{at}: {}", strip_kind(&e)))
}

fn resolve(
    plan: &Plan,
    variant: Option<String>,
    index: usize,
    data: Option<&Path>,
) -> Result<RunPlan> {
    let data = data.map_or_else(|| plan.data.clone(), Path::to_path_buf);
    if plan.stages.is_empty() {
        return Err(Error::invalid("the plan has no [[stage]]"));
    }
    if plan.eval_every == 0 {
        return Err(Error::invalid("eval_every must be at least 1"));
    }
    if plan.threads == Some(0) {
        return Err(Error::invalid("threads must be at least 1"));
    }
    let init: Init = plan
        .init
        .parse()
        .map_err(|e: Error| Error::invalid(format!("init: {}", strip_kind(&e))))?;
    if let Some(a) = &plan.augment {
        a.parse::<Augment>()
            .map_err(|e: Error| Error::invalid(format!("augment: {}", strip_kind(&e))))?;
    }
    let ctx = Context {
        plan,
        policy: parse_policy(&plan.lr_policy, "lr_policy")?,
        manifest: DatasetManifest::load(&data)?,
        data: &data,
    };
    let mut stages: Vec<StagePlan> = Vec::new();
    for (k, s) in plan.stages.iter().enumerate() {
        let where_ = format!("stage {}", k + 1);
        let stage = ctx.stage(k, s, stages.last()).map_err(|e| at(&where_, e))?;
        stages.push(stage);
    }
    let baseline = match (plan.baseline.enabled, stages.last()) {
        (true, Some(last)) => Some(ctx.baseline(last).map_err(|e| at("baseline", e))?),
        _ => None,
    };
    Ok(RunPlan {
        plan: plan.name.clone(),
        variant,
        index,
        description: plan.description.clone(),
        data,
        seed: plan.seed,
        threads: plan.threads,
        schedule: plan.schedule,
        init,
        stages,
        baseline,
        point: None,
        sweep: None,
        baseline_lrs: Vec::new(),
        sweep_budget: None,
        variant_first: 0,
    })
}

/// What resolving a plan's stages needs besides the stages themselves.
struct Context<'a> {
    plan: &'a Plan,
    /// The plan's default learning-rate policy.
    policy: LrPolicy,
    manifest: DatasetManifest,
    data: &'a Path,
}

impl Context<'_> {
    fn classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Hyper-parameters from the plan's defaults and a part's own values, validated.
    fn hyper(
        &self,
        (batch, lr): (Option<usize>, Option<f32>),
        policy: Option<&String>,
        augment: Option<&String>,
        seed: u64,
    ) -> Result<Hyper> {
        let h = Hyper {
            batch_size: batch.unwrap_or(self.plan.batch),
            base_lr: lr.unwrap_or(self.plan.lr),
            lr_policy: match policy {
                Some(p) => parse_policy(p, "lr_policy")?,
                None => self.policy.clone(),
            },
            momentum: self.plan.momentum,
            weight_decay: self.plan.weight_decay,
            seed,
            augment: match augment.or(self.plan.augment.as_ref()) {
                Some(a) => a.parse()?,
                None => Augment::default(),
            },
            label_smoothing: self.plan.label_smoothing,
        };
        h.validate()?;
        Ok(h)
    }

    /// Stage `k` (0-based) of the plan, after the already resolved `prev`.
    fn stage(&self, k: usize, s: &StageSpec, prev: Option<&StagePlan>) -> Result<StagePlan> {
        if !self.manifest.sizes.contains(&s.size) {
            return Err(Error::invalid(format!(
                "size {} is not prepared in {} (sizes {:?}; run `c2f prepare` with --sizes)",
                s.size,
                self.data.display(),
                self.manifest.sizes
            )));
        }
        if self.plan.schedule == Schedule::Global && (s.lr.is_some() || s.lr_policy.is_some()) {
            return Err(Error::invalid(
                "with schedule = \"global\" the plan's lr and lr_policy apply to all stages; remove the stage's",
            ));
        }
        let seed = self.plan.seed.wrapping_add(k as u64);
        let hyper = self.hyper(
            (s.batch, s.lr),
            s.lr_policy.as_ref(),
            s.augment.as_ref(),
            seed,
        )?;
        hyper.augment.fits(s.size)?;
        let budget = self.budget(s, hyper.batch_size)?;
        if hyper.lr_policy.needs_total() && matches!(budget, StageBudget::Seconds(_)) {
            return Err(Error::invalid(format!(
                "lr_policy {} runs over a budget in iterations; give iterations, epochs or share instead of seconds",
                hyper.lr_policy
            )));
        }
        if s.auto == Some(true) {
            if k + 1 == self.plan.stages.len() {
                return Err(Error::invalid(
                    "auto leaves a stage for the next one; the last stage has none",
                ));
            }
            if !self.manifest.splits.contains_key("val") {
                return Err(Error::invalid(format!(
                    "auto decides on a validation split, and {} has none (prepare it with --val-images N)",
                    self.data.display()
                )));
            }
        }
        let (spec, grow) = match prev {
            None => (self.first_net(s)?, Vec::new()),
            Some(p) => self.grown_net(k, s, p)?,
        };
        crate::resources::training_estimate(&spec, hyper.batch_size)?.check(&format!(
            "training {:?} at {}×{} with batch {}",
            spec.name, s.size, s.size, hyper.batch_size
        ))?;
        Ok(StagePlan {
            size: s.size,
            grow,
            spec,
            budget,
            hyper,
            eval_every: s.eval_every.unwrap_or(self.plan.eval_every).max(1),
            momentum_state: s.momentum_state.unwrap_or_default(),
            warmup: s.warmup.unwrap_or(0),
            auto: s.auto.unwrap_or(false),
            recalibrate: s.recalibrate.unwrap_or(0),
        })
    }

    /// A stage's budget: exactly one of iterations, epochs, seconds or a share of the
    /// plan's epochs.
    fn budget(&self, s: &StageSpec, batch: usize) -> Result<StageBudget> {
        let n_train = self.manifest.splits.get("train").copied().unwrap_or(0);
        if let Some(share) = s.share {
            let total = self.plan.epochs.ok_or_else(|| {
                Error::invalid("share needs the plan's epochs = … (the curve's whole budget)")
            })?;
            if [
                s.iterations.is_some(),
                s.epochs.is_some(),
                s.seconds.is_some(),
            ]
            .contains(&true)
            {
                return Err(Error::invalid(
                    "give only one of iterations, epochs, seconds or share",
                ));
            }
            if !(share > 0.0 && share <= 1.0) {
                return Err(Error::invalid(format!("share {share} must lie in (0, 1]")));
            }
            return match StopAt::from_counts(None, Some(share * total), n_train, batch)? {
                StopAt::Iterations(n) => Ok(StageBudget::Iterations(n)),
                StopAt::TrainSeconds(sec) => Ok(StageBudget::Seconds(sec)),
            };
        }
        match (s.iterations, s.epochs, s.seconds) {
            (None, None, Some(sec)) => {
                StopAt::TrainSeconds(sec).validate()?;
                Ok(StageBudget::Seconds(sec))
            }
            (i, e, None) if i.is_some() || e.is_some() => {
                match StopAt::from_counts(i, e, n_train, batch)? {
                    StopAt::Iterations(n) => Ok(StageBudget::Iterations(n)),
                    StopAt::TrainSeconds(sec) => Ok(StageBudget::Seconds(sec)),
                }
            }
            (None, None, None) => Err(Error::invalid("give one of iterations, epochs or seconds")),
            _ => Err(Error::invalid(
                "give only one of iterations, epochs or seconds",
            )),
        }
    }

    /// The first stage's net, bound to its size.
    fn first_net(&self, s: &StageSpec) -> Result<NetSpec> {
        if s.grow.is_some() {
            return Err(Error::invalid(
                "the first stage has nothing to grow from; give net = \"…\" only",
            ));
        }
        if s.momentum_state.is_some() || s.warmup.is_some() || s.recalibrate.is_some() {
            return Err(Error::invalid(
                "momentum_state, warmup and recalibrate describe a transition; the first stage has none",
            ));
        }
        let name = s.net.as_deref().ok_or_else(|| {
            Error::invalid("the first stage needs net = \"PRESET\" or a spec file")
        })?;
        let input = InputShape::square(self.manifest.channels, s.size);
        presets::resolve(name)
            .and_then(|n| n.bind(input, self.classes()))
            .map_err(|e| Error::invalid(format!("net {name:?}: {}", strip_kind(&e))))
    }

    /// A later stage's net: the previous one grown by the stage's operators, which are
    /// applied to zero weights to check that they fit. Sizes are checked first, from the
    /// operators alone (only an upscale changes the input side), so growth is applied only
    /// once it is known to end at the stage's size.
    fn grown_net(
        &self,
        k: usize,
        s: &StageSpec,
        prev: &StagePlan,
    ) -> Result<(NetSpec, Vec<GrowOp>)> {
        if let Some(n) = &s.net {
            return Err(Error::invalid(format!(
                "net = {n:?}: later stages grow from the previous one; use grow = [ … ]"
            )));
        }
        let ops = s.grow.clone().ok_or_else(|| {
            Error::invalid(format!(
                "give grow = [ … ] (the operators from stage {k}'s net; [] keeps it)"
            ))
        })?;
        let upscales = ops
            .iter()
            .filter(|o| matches!(o, GrowOp::Upscale { .. }))
            .count();
        let grown_side = u32::try_from(upscales)
            .ok()
            .and_then(|n| 1usize.checked_shl(n))
            .and_then(|f| prev.size.checked_mul(f));
        if grown_side != Some(s.size) {
            return Err(Error::invalid(format!(
                "size {} does not follow from stage {k}'s size {} and its {upscales} upscale(s); each upscale doubles the side",
                s.size, prev.size
            )));
        }
        let mut spec = prev.spec.clone();
        let mut zeros = WeightMap::zeros_for(&spec)?;
        for (j, op) in ops.iter().enumerate() {
            let (s2, w2, _) = grow::apply(&spec, &zeros, None, op, 0).map_err(|e| {
                Error::invalid(format!(
                    "grow[{}] ({}): {}",
                    j + 1,
                    op.describe(),
                    strip_kind(&e)
                ))
            })?;
            spec = s2;
            zeros = w2;
        }
        Ok((spec, ops))
    }

    /// The baseline: the final stage's net from scratch.
    fn baseline(&self, last: &StagePlan) -> Result<BaselinePlan> {
        let b = &self.plan.baseline;
        let seed = self.plan.seed.wrapping_add(1000);
        let batch = Some(b.batch.unwrap_or(last.hyper.batch_size));
        let hyper = self.hyper(
            (batch, b.lr),
            b.lr_policy.as_ref(),
            b.augment.as_ref(),
            seed,
        )?;
        hyper.augment.fits(last.size)?;
        crate::resources::training_estimate(&last.spec, hyper.batch_size)?.check(&format!(
            "training {:?} at {}×{} with batch {}",
            last.spec.name, last.size, last.size, hyper.batch_size
        ))?;
        Ok(BaselinePlan {
            budget: b.budget,
            hyper,
            eval_every: b.eval_every.unwrap_or(self.plan.eval_every).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prepare::{PrepareConfig, prepare};
    use crate::data::synthetic::write_quadrant_idx;
    use crate::progress::Silent;

    /// A prepared 4-class fixture at sizes 8 and 16.
    fn data(root: &Path) -> Result<PathBuf> {
        write_quadrant_idx(&root.join("src"), 64, 16, 16, 3)?;
        let cfg = PrepareConfig {
            sizes: vec![8, 16],
            ..Default::default()
        };
        prepare(&root.join("src"), &root.join("data"), &cfg, &Silent)?;
        Ok(root.join("data"))
    }

    const GOOD: &str = r#"
name = "t"
data = "DATA"
eval_every = 10

[[stage]]
size = 8
net = "net-4"
iterations = 20

[[stage]]
size = 16
grow = [{ op = "upscale" }, { op = "widen", layer = "conv2", add = 4, init = "flip-h" }]
epochs = 1
warmup = 5
momentum_state = "reset"

[[variant]]
name = "a"

[[variant]]
name = "b"
seed = 7
stage.2.grow = [{ op = "upscale", mode = "paper", sigma = 0.1 }]
baseline.enabled = false
"#;

    fn parse(text: &str, data: &Path) -> Result<PlanFile> {
        PlanFile::parse(
            Path::new("plan.toml"),
            &text.replace("DATA", &data.display().to_string()),
        )
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("should be rejected, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_plan_resolves_with_variants_applied() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let d = data(tmp.path())?;
        let f = parse(GOOD, &d)?;
        assert_eq!(f.run_count(), 2);
        let runs = f.resolve_all(None)?;
        let (a, b) = (&runs[0], &runs[1]);
        assert_eq!(a.label(), "t/a");
        assert_eq!(a.folder(), "00-a");
        assert_eq!(a.stages[1].spec.input.map(|i| i.height), Some(16));
        // 64 training images, batch 128: one epoch is one iteration.
        assert_eq!(a.stages[1].budget, StageBudget::Iterations(1));
        assert_eq!(a.stages[1].momentum_state, MomentumState::Reset);
        assert_eq!(a.stages[1].warmup, 5);
        assert!(a.baseline.is_some());
        assert_eq!(a.stages[0].hyper.seed, 0);
        assert_eq!(b.stages[0].hyper.seed, 7);
        assert_eq!(b.stages[1].grow.len(), 1);
        assert!(matches!(
            b.stages[1].grow[0],
            GrowOp::Upscale {
                mode: grow::UpscaleMode::Paper,
                ..
            }
        ));
        assert!(b.baseline.is_none());
        Ok(())
    }

    #[test]
    fn invalid_plans_are_rejected_naming_the_key_or_line() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let d = data(tmp.path())?;
        // An unknown key: the message names it and its line.
        let m = message(parse(&GOOD.replace("warmup = 5", "warmpu = 5"), &d));
        assert!(m.contains("line 15") && m.contains("warmpu"), "{m}");
        // Sizes that do not chain with the growth.
        let m = message(parse(&GOOD.replace("size = 16", "size = 8"), &d)?.resolve(0, None));
        assert!(
            m.contains("stage 2") && m.contains("size 8 does not follow"),
            "{m}"
        );
        // Growth that does not fit the net.
        let m = message(
            parse(&GOOD.replace("layer = \"conv2\"", "layer = \"conv9\""), &d)?.resolve(0, None),
        );
        assert!(m.contains("stage 2: grow[2]") && m.contains("conv9"), "{m}");
        // A size the data does not have.
        let m = message(
            parse(
                &GOOD.replace("size = 16", "size = 32").replace(
                    "{ op = \"upscale\" },",
                    "{ op = \"upscale\" }, { op = \"upscale\" },",
                ),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("stage 2: size 32 is not prepared"), "{m}");
        // A bad key inside a variant's patch names the variant.
        let m = message(parse(&GOOD.replace("seed = 7", "sede = 7"), &d)?.resolve(1, None));
        assert!(m.contains("variant 1 (b)") && m.contains("sede"), "{m}");
        // A patch addressing a stage that does not exist.
        let m = message(parse(&GOOD.replace("stage.2.grow", "stage.3.grow"), &d)?.resolve(1, None));
        assert!(m.contains("stage.3"), "{m}");
        // Two budgets, or none.
        let m = message(
            parse(
                &GOOD.replace("iterations = 20", "iterations = 20\nseconds = 3"),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("stage 1: give only one of"), "{m}");
        // A global schedule with a stage's own rate.
        let m = message(
            parse(
                &GOOD
                    .replace("eval_every = 10", "eval_every = 10\nschedule = \"global\"")
                    .replace("warmup = 5", "warmup = 5\nlr = 0.1"),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("stage 2") && m.contains("global"), "{m}");
        // A growth on the first stage, a net on a later one.
        let m = message(
            parse(
                &GOOD.replace("net = \"net-4\"", "net = \"net-4\"\ngrow = []"),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("stage 1"), "{m}");
        let m = message(
            parse(
                &GOOD.replace("epochs = 1", "epochs = 1\nnet = \"net-3\""),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("stage 2: net"), "{m}");
        // A bad learning-rate policy and an index out of range.
        let m = message(
            parse(
                &GOOD.replace("eval_every = 10", "eval_every = 10\nlr_policy = \"step:x\""),
                &d,
            )?
            .resolve(0, None),
        );
        assert!(m.contains("lr_policy"), "{m}");
        let m = message(parse(GOOD, &d)?.resolve(2, None));
        assert!(m.contains("indices 0 to 1"), "{m}");
        Ok(())
    }
    #[test]
    fn a_frontier_enumerates_sweeps_then_budgets_and_seeds() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        write_quadrant_idx(&tmp.path().join("src"), 64, 16, 16, 3)?;
        let cfg = PrepareConfig {
            sizes: vec![8, 16],
            val_images: 8,
            ..Default::default()
        };
        prepare(
            &tmp.path().join("src"),
            &tmp.path().join("data"),
            &cfg,
            &Silent,
        )?;
        let text = format!(
            "name = \"f\"\ndata = \"{}\"\nbatch = 8\nepochs = 2\nlr_policy = \"cosine\"\n[[stage]]\nsize = 8\nnet = \"net-1\"\nshare = 0.5\nauto = true\n[[stage]]\nsize = 16\ngrow = [{{ op = \"upscale\", mode = \"resize\" }}]\nshare = 0.5\n[baseline]\nbudget = \"images\"\n[frontier]\nbudgets = [1, 2]\nseeds = [4, 5]\nbaseline_lrs = [0.01, 0.02, 0.05]\n",
            tmp.path().join("data").display()
        );
        let f = PlanFile::parse(Path::new("f.toml"), &text)?;
        assert_eq!(f.run_count(), 3 + 4);
        let runs = f.resolve_all(None)?;
        let names: Vec<String> = runs.iter().map(RunPlan::run_name).collect();
        assert_eq!(
            names,
            [
                "f sweep lr0.01",
                "f sweep lr0.02",
                "f sweep lr0.05",
                "f b1 s4",
                "f b1 s5",
                "f b2 s4",
                "f b2 s5"
            ]
        );
        // 56 training images (8 held out), batch 8: 7 iterations per epoch; a share of 0.5
        // of 2 epochs is 7 iterations, twice that at budget 2; the sweep runs at the middle
        // budget (2).
        assert_eq!(runs[3].stages[0].budget, StageBudget::Iterations(7));
        assert_eq!(runs[5].stages[0].budget, StageBudget::Iterations(14));
        assert_eq!(runs[0].stages[0].budget, StageBudget::Iterations(14));
        assert_eq!((runs[4].seed, runs[4].stages[1].hyper.seed), (5, 6));
        assert!(runs[3].stages[0].auto);
        assert_eq!(
            runs[6].sweep_folders(0)[1],
            (0.02, "01-f-sweep-lr0.02".to_string())
        );
        assert_eq!(runs[6].folder(), "06-f-b2-s5");
        assert_eq!(runs[6].planned_images(), Some(2 * 14 * 8));
        // auto on the last stage, or without a validation split, is refused.
        let last = text.replace(
            "share = 0.5\n[baseline]",
            "share = 0.5\nauto = true\n[baseline]",
        );
        let m = message(PlanFile::parse(Path::new("f.toml"), &last)?.resolve(3, None));
        assert!(m.contains("stage 2") && m.contains("last stage"), "{m}");
        Ok(())
    }
}
