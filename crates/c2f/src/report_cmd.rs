//! `c2f report`: plots (PNG and SVG), an HTML and a Markdown report, and CSV curves from
//! run folders. Every number comes from the runs' events, through `coarse2fine::report`;
//! the plots are drawn by `plots`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use coarse2fine::events::What;
use coarse2fine::fsutil::{self, OutputLock, Ownership, StagedFiles};
use coarse2fine::report::{self, RunData, Summary};
use plotters::prelude::*;

use crate::plots::{self, Matrix, PLOTS, Plot};

/// Plot and tabulate run folders: did incremental training pay off?
///
/// Reads each RUN folder's events (or every run folder inside a DIR, e.g. the variants of
/// one plan; a run still in progress is reported as far as it got) and writes into --out:
///   accuracy_vs_time.png/.svg   test top-1 vs training time (growth included, evaluation
///                               not), incremental and baseline curves, growths marked,
///                               zoomed to the range where the curves differ
///   accuracy_vs_time_full.*     the same on the full 0–100% range
///   loss_vs_time.png/.svg       training loss vs training time
///   accuracy_vs_images.png/.svg test top-1 vs training images seen
///   confusion.png/.svg          confusion matrices of the final nets (finished runs)
///   frontier.png/.svg           runs of a plan with a [frontier]: final top-1 vs training
///                               time per budget, the mean over seeds with their range
///   report.md, report.html      a first line that says whether it paid off and by how
///                               much; the verdict, the plots, the plans and their settings,
///                               and tables: the frontiers (speed-up at equal accuracy,
///                               difference at equal time) and the learning-rate sweep;
///                               final accuracy, time to reach the baseline's final
///                               accuracy (and 99%, 95% of it) and speed-up; the accuracy
///                               dip at each growth; automatic growth decisions
///   curves.csv                  every point of every curve
///   summary.json                the tables' numbers
/// --out must be new, empty, or a report folder made before; c2f never writes report files
/// into another folder.
///
/// Examples:
///   c2f report runs/exp1 --out docs/results/exp1-upscale
///   c2f report runs/exp2 runs/exp1 --out reports/filters --title "New filters"
///   c2f report runs/payoff --out docs/results/payoff
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct ReportArgs {
    /// Run folders, or folders of run folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder: new, empty, or an earlier report's (its report files are replaced).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Title of the report and plots (default: the runs' names).
    #[arg(long)]
    pub title: Option<String>,
    /// TrueType font for the plots' text (default: DejaVu Sans or Arial where installed).
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// Also write TensorBoard event files, one per curve, under DIR/<run>/<curve>/
    /// (step: training images seen): tensorboard --logdir DIR.
    #[cfg(feature = "tensorboard")]
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
}

/// A report folder: `c2f report` writes its own file names into it and leaves other
/// files alone, so only an earlier report's folder (or an empty one) is written into.
const REPORT: Ownership = Ownership {
    what: "report folder",
    marked: |dir| {
        (dir.join("report.md").is_file() && dir.join("summary.json").is_file())
            || std::fs::read_dir(dir).is_ok_and(|entries| {
                // A report cut short: only files the report writes (or their temporary names).
                entries.flatten().all(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with('.') || is_report_file(&name)
                })
            })
    },
    entry: None,
};

/// Whether `name` is a file `c2f report` writes.
fn is_report_file(name: &str) -> bool {
    const FILES: [&str; 4] = ["report.md", "report.html", "summary.json", "curves.csv"];
    FILES.contains(&name)
        || name.rsplit_once('.').is_some_and(|(stem, ext)| {
            matches!(ext, "png" | "svg")
                && (stem == "confusion" || PLOTS.iter().any(|p| p.file() == stem))
        })
}

/// `format` of `summary.json`.
const SUMMARY_FORMAT: &str = "coarse2fine-report";

pub fn cmd_report(a: ReportArgs) -> Result<()> {
    let dirs = report::find_runs(&a.runs)?;
    let all = dirs
        .iter()
        .map(|d| report::load_run(d))
        .collect::<coarse2fine::Result<Vec<_>>>()?;
    let fronts = report::frontiers(&all);
    let pays = report::payoffs(&fronts);
    // Curves are drawn for one seed of each budget (a frontier's every run would be a
    // tangle); sweep runs appear in their own table.
    let runs = curve_runs(&all);
    let summary = report::summarize(&runs);
    if summary.curves.is_empty() {
        bail!("the runs have no events yet");
    }
    let title = a.title.clone().unwrap_or_else(|| default_title(&all));
    plots::register_font(a.font.as_deref())?;
    let _lock = OutputLock::acquire(&a.out)?;
    let inputs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    fsutil::check_output(&a.out, &REPORT, &inputs)?;
    fsutil::create_dir_all(&a.out)?;
    // All or nothing: a failed write (a full disk) leaves an earlier report as it was.
    let mut files = StagedFiles::new(&a.out);
    for plot in PLOTS {
        let figure = Figure::Curves(plot, &summary.curves, &title);
        write_plot(&mut files, plot.file(), &figure)?;
    }
    if !fronts.is_empty() {
        write_plot(&mut files, "frontier", &Figure::Frontier(&fronts, &title))?;
    }
    let mats = matrices(&runs);
    if !mats.is_empty() {
        write_plot(&mut files, "confusion", &Figure::Confusion(&mats))?;
    }
    write_csv(&mut files, &summary)?;
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "format": SUMMARY_FORMAT, "rows": summary.rows, "dips": summary.dips,
        "decisions": summary.decisions,
        "frontiers": fronts, "payoffs": pays,
    }))?;
    files.write_bytes("summary.json", format!("{json}\n").as_bytes())?;
    let mut verdict: Vec<String> = pays.iter().map(payoff_verdict).collect();
    if pays.is_empty() {
        verdict.extend(verdicts(&summary));
    }
    let doc = Document {
        title: &title,
        headline: headline(&pays, &summary),
        sources: dirs.iter().map(|d| d.display().to_string()).collect(),
        verdicts: verdict,
        plans: plans(&all),
        tables: tables(&summary),
        decisions: decision_table(&summary),
        frontier: (!pays.is_empty()).then(|| frontier_table(&pays)),
        sweep: sweep_table(&all),
        confusion: !mats.is_empty(),
    };
    files.write_bytes("report.md", doc.render(Format::Markdown).as_bytes())?;
    files.write_bytes("report.html", doc.render(Format::Html).as_bytes())?;
    files.commit()?;
    #[cfg(feature = "tensorboard")]
    if let Some(tb) = &a.tensorboard {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let files = crate::tensorboard::write(tb, &summary.curves, start)?;
        println!(
            "wrote {} TensorBoard event file(s) under {}",
            files.len(),
            tb.display()
        );
    }
    println!("{}: {}", doc.title, doc.headline);
    for v in &doc.verdicts {
        println!("{v}");
    }
    println!(
        "wrote {}/report.html, report.md, {} plots (PNG and SVG), curves.csv and summary.json",
        a.out.display(),
        PLOTS.len() + usize::from(doc.confusion) + usize::from(!fronts.is_empty())
    );
    Ok(())
}

/// The runs whose curves are drawn: all but sweep runs, and of a frontier's runs those of
/// its first seed.
fn curve_runs(runs: &[RunData]) -> Vec<RunData> {
    let first_seed = |r: &RunData| {
        let plan = r.manifest.as_ref().map(|m| &m.plan);
        let seed = plan.and_then(|p| p.point).map(|p| p.seed);
        let lowest = runs
            .iter()
            .filter_map(|o| o.manifest.as_ref()?.plan.point.map(|p| p.seed))
            .min();
        plan.is_none_or(|p| p.sweep.is_none()) && (seed.is_none() || seed == lowest)
    };
    runs.iter().filter(|r| first_seed(r)).cloned().collect()
}

/// Each plan label's settings once (its first run's), with the budgets and seeds it ran at.
fn plans(runs: &[RunData]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for m in runs.iter().filter_map(|r| r.manifest.as_ref()) {
        let p = &m.plan;
        if p.sweep.is_some() || seen.contains(&p.label()) {
            continue;
        }
        seen.push(p.label());
        out.extend(crate::run_cmd::describe_run(p));
        let points: Vec<String> = runs
            .iter()
            .filter_map(|r| r.manifest.as_ref().map(|m| &m.plan))
            .filter(|q| q.label() == p.label() && q.sweep.is_none())
            .filter_map(|q| q.point.map(|pt| format!("b{} s{}", pt.budget, pt.seed)))
            .collect();
        if !points.is_empty() {
            out.push(format!(
                "    run at budget × and seed: {} (lengths above are those of budget × {})",
                points.join(", "),
                p.point.map_or(1.0, |pt| pt.budget)
            ));
        }
    }
    out
}

/// One sentence per frontier: did starting coarse pay off, and by how much?
fn payoff_verdict(p: &report::Payoff) -> String {
    let deltas: Vec<String> = p
        .equal_time
        .iter()
        .filter_map(|e| Some(format!("b{}: {:+.2}", e.budget, e.difference?)))
        .collect();
    let at_equal = match deltas.is_empty() {
        true => "no incremental budget falls within the from-scratch frontier's times, so none is compared at equal time".to_string(),
        false => format!(
            "at equal training time the incremental run ended {} points of test top-1 from the from-scratch frontier",
            deltas.join(", ")
        ),
    };
    let seeds = format!(
        "mean of {} seed{}",
        p.seeds,
        if p.seeds == 1 { "" } else { "s" }
    );
    let speedups: Vec<String> = p
        .speedups
        .iter()
        .map(|s| format!("b{}: {}", s.budget, speedup_text(s)))
        .collect();
    match (p.pays_from, p.min_speedup) {
        (Some(b), Some(x)) => format!(
            "Paid off: {} reached the from-scratch net's final test top-1 sooner at every budget ≥ {b}, by {x:.2}× at least ({seeds}; speed-ups {}); {at_equal}.",
            p.label,
            speedups.join(", ")
        ),
        _ => format!(
            "Did not pay off: {} did not reach the from-scratch net's final test top-1 sooner at every budget from some budget on ({seeds}; speed-ups {}); {at_equal}.",
            p.label,
            speedups.join(", ")
        ),
    }
}

/// A speed-up, `never`, or why it was not compared.
fn speedup_text(s: &report::SpeedUp) -> String {
    match (s.speedup, s.beyond) {
        (Some(x), _) => format!("{x:.2}×"),
        (None, true) => "not compared (past the incremental frontier's end)".into(),
        (None, false) => "never".into(),
    }
}

/// The frontiers' comparison, budget by budget.
fn frontier_table(pays: &[report::Payoff]) -> Vec<Vec<String>> {
    let mut t = vec![
        [
            "plan",
            "budget",
            "from scratch: s",
            "its final top-1 %",
            "incremental reaches it after s",
            "speed-up",
            "incremental: s",
            "its final top-1 %",
            "from scratch at that time %",
            "difference, points",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in pays {
        for (s, e) in p.speedups.iter().zip(&p.equal_time) {
            let reach = match s.reached {
                Some((t, exact)) => format!("{}{}", if exact { "" } else { "≤ " }, s3(t)),
                None if s.beyond => "not by its largest budget".into(),
                None => "never".into(),
            };
            t.push(vec![
                p.label.clone(),
                s.budget.to_string(),
                s3(s.time_s),
                format!("{:.2}", 100.0 * s.top1),
                reach,
                if s.beyond {
                    "not compared".into()
                } else {
                    ratio(s.speedup)
                },
                s3(e.time_s),
                format!("{:.2}", 100.0 * e.top1),
                pct(e.baseline_top1),
                e.difference.map_or("–".into(), |d| format!("{d:+.2}")),
            ]);
        }
    }
    t
}

/// The baseline's learning-rate sweep: every rate tried, and the one chosen.
fn sweep_table(runs: &[RunData]) -> Option<Vec<Vec<String>>> {
    let record = runs
        .iter()
        .find_map(|r| coarse2fine::run::sweep_record(&r.dir))?;
    let mut t = vec![
        ["rate", "validation top-1 %", "test top-1 %", "chosen"]
            .map(String::from)
            .to_vec(),
    ];
    for e in &record.tried {
        t.push(vec![
            e.lr.to_string(),
            format!("{:.2}", 100.0 * e.val_top1),
            pct(e.test_top1),
            if e.lr == record.chosen {
                "✓".into()
            } else {
                String::new()
            },
        ]);
    }
    Some(t)
}

/// The runs' plan names, each once.
fn default_title(runs: &[RunData]) -> String {
    let mut names: Vec<String> = runs
        .iter()
        .filter_map(|r| r.manifest.as_ref().map(|m| m.plan.plan.clone()))
        .collect();
    names.dedup();
    names.join(", ")
}

/// The final nets' confusion matrices of every finished run.
fn matrices(runs: &[RunData]) -> Vec<Matrix<'_>> {
    runs.iter()
        .flat_map(|r| {
            r.confusions.iter().map(move |(kind, c)| Matrix {
                title: format!("{} ({})", r.label, kind.name()),
                classes: &r.classes,
                confusion: c,
            })
        })
        .collect()
}

/// Draws `figure` into `NAME.svg` and `NAME.png`, staged with the report's other files.
fn write_plot(files: &mut StagedFiles, name: &str, figure: &Figure<'_>) -> Result<()> {
    for ext in ["svg", "png"] {
        let dest = format!("{name}.{ext}");
        let tmp = files.path_for(&dest)?;
        let drawn = if ext == "svg" {
            figure.draw(SVGBackend::new(&tmp, figure.size(960, 600)).into_drawing_area())
        } else {
            figure.draw(BitMapBackend::new(&tmp, figure.size(1280, 800)).into_drawing_area())
        };
        drawn.with_context(|| tmp.with_file_name(&dest).display().to_string())?;
    }
    Ok(())
}

/// A figure of the report.
enum Figure<'a> {
    Curves(Plot, &'a [report::Curve], &'a str),
    Frontier(&'a [report::Frontier], &'a str),
    Confusion(&'a [Matrix<'a>]),
}

impl Figure<'_> {
    /// Pixel size for a plot of `w × h`: confusion matrices get a row of height `h` for
    /// every two.
    fn size(&self, w: u32, h: u32) -> (u32, u32) {
        match self {
            Figure::Curves(..) | Figure::Frontier(..) => (w, h),
            Figure::Confusion(m) => (w, h * m.len().div_ceil(2).max(1) as u32),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        match self {
            Figure::Curves(plot, curves, title) => plots::draw(root, *plot, curves, title),
            Figure::Frontier(f, title) => plots::draw_frontiers(root, f, title),
            Figure::Confusion(m) => plots::draw_confusions(root, m),
        }
    }
}

/// `curves.csv`: every point of every curve.
fn write_csv(files: &mut StagedFiles, summary: &Summary) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "run", "curve", "kind", "stage", "size", "iter", "images", "time_s", "wall_s", "top1",
        "top5", "loss",
    ])?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for c in &summary.curves {
        for (kind, pts) in [("eval", &c.evals), ("train", &c.trains)] {
            for p in pts.iter() {
                let (top1, top5, loss) = match p.what {
                    What::Eval {
                        top1, top5, loss, ..
                    } => (Some(top1), Some(top5), loss),
                    What::Train { loss, .. } => (None, None, loss),
                    _ => continue,
                };
                let place = p.place.map_or((0, 0), |pl| (pl.stage, pl.size));
                w.write_record([
                    c.run.clone(),
                    c.kind.name().into(),
                    kind.into(),
                    place.0.to_string(),
                    place.1.to_string(),
                    p.iter.to_string(),
                    p.images.to_string(),
                    format!("{:.3}", p.clock.time_s),
                    format!("{:.3}", p.clock.wall_s),
                    opt(top1),
                    opt(top5),
                    format!("{loss}"),
                ])?;
            }
        }
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("CSV: {e}"))?;
    files.write_bytes("curves.csv", &bytes)?;
    Ok(())
}

/// The text of a report, rendered as Markdown or HTML.
struct Document<'a> {
    title: &'a str,
    /// Did it pay off, and by how much: the report's first line.
    headline: String,
    sources: Vec<String>,
    verdicts: Vec<String>,
    plans: Vec<String>,
    tables: (Vec<Vec<String>>, Vec<Vec<String>>),
    decisions: Vec<Vec<String>>,
    frontier: Option<Vec<Vec<String>>>,
    sweep: Option<Vec<Vec<String>>>,
    confusion: bool,
}

const TIME_NOTE: &str = "Time is training plus growth seconds; evaluation and checkpoint writing are left out. Times to reach an accuracy are those of the first evaluation at or above it. The first plot is zoomed to the accuracies where the curves differ; the second shows the full range.";

const FRONTIER_NOTE: &str = "Each point is one budget: the mean over its seeds of the training time and the final test top-1 (bars: lowest to highest seed). A speed-up is the from-scratch run's time divided by the time at which the incremental frontier (linear in log time between its points) first reaches the from-scratch run's final top-1; \"≤\" marks a top-1 already reached at the smallest incremental budget. The difference at equal time compares each incremental point with the from-scratch frontier at the same time.";

const AUTO_NOTE: &str = "Each `auto` stage left its size when the validation top-1 gained per step fell below what the next size is expected to give for its cost per step (from FLOPs). In the curves shown, a stage without a row here ran its whole budget.";

/// A part of a report.
enum Block {
    Heading(String),
    Text(String),
    List(Vec<String>),
    Image(&'static str, &'static str, bool),
    Table(Vec<Vec<String>>),
    Pre(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Markdown,
    Html,
}

impl Document<'_> {
    fn blocks(&self) -> Vec<Block> {
        use Block::*;
        let mut b = vec![
            Text(format!("Runs: {}", self.sources.join(", "))),
            List(self.verdicts.clone()),
        ];
        if let Some(t) = &self.frontier {
            b.push(Heading("Frontiers: accuracy against training time".into()));
            b.push(Image("frontier", "frontier", false));
            b.push(Text(FRONTIER_NOTE.into()));
            b.push(Table(t.clone()));
        }
        if let Some(t) = &self.sweep {
            b.push(Heading("The from-scratch baseline's learning rate".into()));
            b.push(Text("Chosen by the final top-1 on the validation split (held out from the training images); the test split is reported.".into()));
            b.push(Table(t.clone()));
        }
        b.push(Heading("Curves".into()));
        b.push(Image("accuracy_vs_time", "accuracy vs time", false));
        b.push(Image(
            "accuracy_vs_time_full",
            "accuracy vs time, full range",
            true,
        ));
        b.push(Text(TIME_NOTE.into()));
        b.push(Table(self.tables.0.clone()));
        if self.tables.1.len() > 1 {
            b.push(Heading("Growth steps".into()));
            b.push(Table(self.tables.1.clone()));
        }
        if self.decisions.len() > 1 {
            b.push(Heading("Automatic growth decisions".into()));
            b.push(Text(AUTO_NOTE.into()));
            b.push(Table(self.decisions.clone()));
        }
        b.push(Heading("Plans".into()));
        b.push(Pre(self.plans.join("\n")));
        b.push(Image("loss_vs_time", "loss vs time", false));
        b.push(Image("accuracy_vs_images", "accuracy vs images", false));
        if self.confusion {
            b.push(Heading("Confusion of the final nets".into()));
            b.push(Text(
                "Rows: true class; columns: predicted class; shade: share of the row.".into(),
            ));
            b.push(Image("confusion", "confusion matrices", false));
        }
        b.push(Text(
            "Every point: curves.csv; the tables' numbers: summary.json.".into(),
        ));
        b
    }

    fn render(&self, f: Format) -> String {
        let md = f == Format::Markdown;
        let mut out = if md {
            format!("# {}: {}\n\n", self.title, self.headline)
        } else {
            let t = html_escape(&format!("{}: {}", self.title, self.headline));
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}img.small{{max-width:60%}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style></head><body>\n<h1>{t}</h1>\n"
            )
        };
        for block in self.blocks() {
            out += &match (block, md) {
                (Block::Heading(h), true) => format!("## {h}\n\n"),
                (Block::Heading(h), false) => format!("<h2>{}</h2>\n", html_escape(&h)),
                (Block::Text(t), true) => format!("{t}\n\n"),
                (Block::Text(t), false) => format!("<p>{}</p>\n", html_escape(&t)),
                (Block::List(l), true) => {
                    l.iter().map(|v| format!("- {v}\n")).collect::<String>() + "\n"
                }
                (Block::List(l), false) => format!(
                    "<ul>{}</ul>\n",
                    l.iter()
                        .map(|v| format!("<li>{}</li>", html_escape(v)))
                        .collect::<String>()
                ),
                (Block::Image(file, alt, _), true) => format!("![{alt}]({file}.png)\n\n"),
                (Block::Image(file, alt, small), false) => format!(
                    "<img{} src=\"{file}.svg\" alt=\"{alt}\">\n",
                    if small { " class=\"small\"" } else { "" }
                ),
                (Block::Table(t), true) => markdown_table(&t) + "\n",
                (Block::Table(t), false) => html_table(&t),
                (Block::Pre(p), true) => format!("```text\n{p}\n```\n\n"),
                (Block::Pre(p), false) => format!("<pre>{}</pre>\n", html_escape(&p)),
            };
        }
        if !md {
            out += "</body></html>\n";
        }
        out
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

/// Seconds with the digits that matter: 0.042, 3.14, 123.4.
fn s3(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.1}")
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("not reached".into(), s3)
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}×"))
}

/// The two tables as Markdown (also embedded in the HTML as preformatted text would lose
/// the table, so the HTML gets its own).
fn tables(s: &Summary) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut main = vec![vec![
        "curve".into(),
        "final top-1 %".into(),
        "time s".into(),
        "images".into(),
        "baseline's final top-1 %".into(),
        "time to 100% of it s".into(),
        "speed-up".into(),
        "to 99% s".into(),
        "speed-up".into(),
        "to 95% s".into(),
        "speed-up".into(),
        "growing s".into(),
        "evaluating s".into(),
    ]];
    for r in &s.rows {
        let mut row = vec![
            r.curve.clone(),
            pct(r.final_top1),
            s3(r.time_s),
            r.images.to_string(),
            pct(r.reach.first().map(|x| x.target)),
        ];
        for x in &r.reach {
            row.push(secs(x.time_s));
            row.push(ratio(x.speedup));
        }
        while row.len() < 11 {
            row.push("–".into());
        }
        row.push(s3(r.grow_s));
        row.push(s3(r.eval_s));
        main.push(row);
    }
    let mut dips = vec![vec![
        "curve".into(),
        "stage".into(),
        "growth".into(),
        "check: rel. error".into(),
        "check: top-1 agreement %".into(),
        "top-1 before %".into(),
        "just after %".into(),
        "lowest %".into(),
        "back to before after s".into(),
        "growing s".into(),
    ]];
    for d in &s.dips {
        dips.push(vec![
            d.curve.clone(),
            d.stage.to_string(),
            format!("{}→{}: {}", d.from_size, d.size, d.ops.join(", ")),
            format!("{:.1e}", d.rel),
            format!("{:.2}", 100.0 * d.top1_agreement),
            pct(d.before),
            pct(d.after),
            pct(d.lowest),
            secs(d.recovered_after_s),
            s3(d.seconds),
        ]);
    }
    (main, dips)
}

/// One row per automatic decision, with the header.
fn decision_table(s: &Summary) -> Vec<Vec<String>> {
    let header = [
        "curve",
        "stage",
        "size",
        "iteration",
        "time s",
        "decision",
        "reason",
    ];
    let mut t = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for d in &s.decisions {
        t.push(vec![
            d.curve.clone(),
            d.stage.to_string(),
            format!("{0}×{0}", d.size),
            d.iter.to_string(),
            s3(d.time_s),
            d.decision.clone(),
            d.reason.clone(),
        ]);
    }
    t
}

fn markdown_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out += &format!("| {} |\n", r.join(" | "));
        if i == 0 {
            out += &format!("|{}\n", "---|".repeat(r.len()));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_table(rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>\n");
    for (i, r) in rows.iter().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        out += "<tr>";
        for c in r {
            let _ = write!(out, "<{tag}>{}</{tag}>", html_escape(c));
        }
        out += "</tr>\n";
    }
    out + "</table>\n"
}

/// One sentence per incremental curve that has a baseline: did it pay off?
fn verdicts(s: &Summary) -> Vec<String> {
    s.rows
        .iter()
        .filter(|r| r.curve.ends_with("(incremental)"))
        .filter_map(|r| {
            let reference = r.reference.as_ref()?;
            let full = r.reach.first()?;
            let equal = match (r.final_top1, r.reference_at_end) {
                (Some(a), Some(b)) => format!(
                    "; at its end ({} s) {reference} stood at {:.2}%, {:+.2} points",
                    s3(r.time_s),
                    100.0 * b,
                    100.0 * (a - b)
                ),
                _ => String::new(),
            };
            Some(match (full.time_s, full.speedup) {
                (Some(t), Some(x)) => format!(
                    "{} reached {}'s final top-1 ({:.2}%) after {} s: speed-up {x:.2}× (it ended at {}%{equal}).",
                    r.curve,
                    reference,
                    100.0 * full.target,
                    s3(t),
                    pct(r.final_top1)
                ),
                _ => format!(
                    "{} did not reach {}'s final top-1 ({:.2}%); it ended at {}%{equal}.",
                    r.curve,
                    reference,
                    100.0 * full.target,
                    pct(r.final_top1)
                ),
            })
        })
        .collect()
}

/// The report's first line: did it pay off, and by how much — from the first frontier, or
/// else from the first incremental curve with a baseline.
fn headline(pays: &[report::Payoff], s: &Summary) -> String {
    if let Some(p) = pays.first() {
        let deltas: Vec<f64> = p.equal_time.iter().filter_map(|e| e.difference).collect();
        let delta = match deltas.is_empty() {
            true => String::new(),
            false => format!(
                ", {:+.2} points at equal time",
                deltas.iter().sum::<f64>() / deltas.len() as f64
            ),
        };
        let seeds = format!("{} seed{}", p.seeds, if p.seeds == 1 { "" } else { "s" });
        let past: Vec<String> = p
            .speedups
            .iter()
            .filter(|s| s.beyond)
            .map(|s| format!("b{}", s.budget))
            .collect();
        let past = match past.is_empty() {
            true => String::new(),
            false => format!(
                "; from-scratch {} past the incremental frontier, not compared",
                past.join(", ")
            ),
        };
        return match (p.pays_from, p.min_speedup) {
            (Some(b), Some(x)) => format!(
                "paid off, ≥ {x:.2}× sooner to the from-scratch top-1 for budgets ≥ {b}{delta} ({seeds}{past})"
            ),
            _ => format!("did not pay off{delta} ({seeds}{past})"),
        };
    }
    let Some(r) = s
        .rows
        .iter()
        .find(|r| r.curve.ends_with("(incremental)") && r.reference.is_some())
    else {
        return "no baseline to compare with".into();
    };
    let delta = match (r.final_top1, r.reference_at_end) {
        (Some(a), Some(b)) => format!(", {:+.2} points at equal time", 100.0 * (a - b)),
        _ => String::new(),
    };
    match r.reach.first().and_then(|x| x.speedup) {
        Some(x) if x > 1.0 => {
            format!("paid off, {x:.2}× sooner to the from-scratch final top-1{delta} (1 seed)")
        }
        Some(x) => format!(
            "did not pay off, {x:.2}× the from-scratch time to its final top-1{delta} (1 seed)"
        ),
        None => {
            format!("did not pay off: never reached the from-scratch final top-1{delta} (1 seed)")
        }
    }
}
