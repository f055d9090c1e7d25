//! `c2f report`: plots (PNG and SVG), an HTML and a Markdown report, and CSV curves from
//! run folders. Every number comes from the runs' events, through `coarse2fine::report`;
//! the plots are drawn by `plots`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use coarse2fine::events::What;
use coarse2fine::fsutil::{self, OutputLock, Ownership};
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
///   report.md, report.html      the verdict, the plots, the plans and their settings, and
///                               two tables: final accuracy, time to reach the baseline's
///                               final accuracy (and 99%, 95% of it) and speed-up; the
///                               accuracy dip at each growth
///   curves.csv                  every point of every curve
///   summary.json                the tables' numbers
/// --out must be new, empty, or a report folder made before; c2f never writes report files
/// into another folder.
///
/// Examples:
///   c2f report runs/exp1 --out docs/results/exp1-upscale
///   c2f report runs/exp2 runs/exp1 --out reports/filters --title "New filters"
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
    let runs = dirs
        .iter()
        .map(|d| report::load_run(d))
        .collect::<coarse2fine::Result<Vec<_>>>()?;
    let summary = report::summarize(&runs);
    if summary.curves.is_empty() {
        bail!("the runs have no events yet");
    }
    let title = a.title.clone().unwrap_or_else(|| default_title(&runs));
    plots::register_font(a.font.as_deref())?;
    let _lock = OutputLock::acquire(&a.out)?;
    let inputs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    fsutil::check_output(&a.out, &REPORT, &inputs)?;
    fsutil::create_dir_all(&a.out)?;
    for plot in PLOTS {
        write_plot(
            &a.out,
            plot.file(),
            &Figure::Curves(plot, &summary.curves, &title),
        )?;
    }
    let mats = matrices(&runs);
    if !mats.is_empty() {
        write_plot(&a.out, "confusion", &Figure::Confusion(&mats))?;
    }
    write_csv(&a.out, &summary)?;
    fsutil::write_json_atomic(
        &a.out.join("summary.json"),
        &serde_json::json!({ "format": SUMMARY_FORMAT, "rows": summary.rows, "dips": summary.dips }),
    )?;
    let doc = Document {
        title: &title,
        sources: dirs.iter().map(|d| d.display().to_string()).collect(),
        verdicts: verdicts(&summary),
        plans: runs
            .iter()
            .filter_map(|r| r.manifest.as_ref())
            .flat_map(|m| crate::run_cmd::describe_run(&m.plan))
            .collect(),
        tables: tables(&summary),
        confusion: !mats.is_empty(),
    };
    fsutil::write_bytes_atomic(&a.out.join("report.md"), doc.markdown().as_bytes())?;
    fsutil::write_bytes_atomic(&a.out.join("report.html"), doc.html().as_bytes())?;
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
    for v in &doc.verdicts {
        println!("{v}");
    }
    println!(
        "wrote {}/report.html, report.md, {} plots (PNG and SVG), curves.csv and summary.json",
        a.out.display(),
        PLOTS.len() + usize::from(doc.confusion)
    );
    Ok(())
}

/// The runs' plan names, each once.
fn default_title(runs: &[RunData]) -> String {
    let mut names: Vec<String> = runs
        .iter()
        .map(|r| r.label.split('/').next().unwrap_or(&r.label).to_string())
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

/// Draws `figure` into `NAME.svg` and `NAME.png` in `dir`, each through a temporary file
/// renamed into place, like every other output; a failed drawing leaves no temporary file.
fn write_plot(dir: &Path, name: &str, figure: &Figure<'_>) -> Result<()> {
    for ext in ["svg", "png"] {
        let dest = dir.join(format!("{name}.{ext}"));
        let tmp = dir.join(format!(".{name}.tmp.{ext}"));
        let drawn = if ext == "svg" {
            figure.draw(SVGBackend::new(&tmp, figure.size(960, 600)).into_drawing_area())
        } else {
            figure.draw(BitMapBackend::new(&tmp, figure.size(1280, 800)).into_drawing_area())
        };
        let placed = drawn.and_then(|()| std::fs::rename(&tmp, &dest).map_err(Into::into));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(dest.display().to_string()));
        }
    }
    Ok(())
}

/// A figure of the report.
enum Figure<'a> {
    Curves(Plot, &'a [report::Curve], &'a str),
    Confusion(&'a [Matrix<'a>]),
}

impl Figure<'_> {
    /// Pixel size for a plot of `w × h`: confusion matrices get a row of height `h` for
    /// every two.
    fn size(&self, w: u32, h: u32) -> (u32, u32) {
        match self {
            Figure::Curves(..) => (w, h),
            Figure::Confusion(m) => (w, h * m.len().div_ceil(2).max(1) as u32),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        match self {
            Figure::Curves(plot, curves, title) => plots::draw(root, *plot, curves, title),
            Figure::Confusion(m) => plots::draw_confusions(root, m),
        }
    }
}

/// `curves.csv`: every point of every curve.
fn write_csv(dir: &Path, summary: &Summary) -> Result<()> {
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
                    What::Eval { top1, top5, loss } => (Some(top1), Some(top5), loss),
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
    fsutil::write_bytes_atomic(&dir.join("curves.csv"), &bytes)?;
    Ok(())
}

/// The text of a report, rendered as Markdown or HTML.
struct Document<'a> {
    title: &'a str,
    sources: Vec<String>,
    verdicts: Vec<String>,
    plans: Vec<String>,
    tables: (Vec<Vec<String>>, Vec<Vec<String>>),
    confusion: bool,
}

const TIME_NOTE: &str = "Time is training plus growth seconds; evaluation and checkpoint writing are left out. Times to reach an accuracy are those of the first evaluation at or above it. The first plot is zoomed to the accuracies where the curves differ; the second shows the full range.";

impl Document<'_> {
    fn markdown(&self) -> String {
        let mut md = format!("# {}\n\nRuns: {}\n\n", self.title, self.sources.join(", "));
        for v in &self.verdicts {
            md += &format!("- {v}\n");
        }
        md += "\n![accuracy vs time](accuracy_vs_time.png)\n\n";
        md += "![accuracy vs time, full range](accuracy_vs_time_full.png)\n\n";
        md += &format!("{TIME_NOTE}\n\n## Curves\n\n");
        md += &markdown_table(&self.tables.0);
        if self.tables.1.len() > 1 {
            md += "\n## Growth steps\n\n";
            md += &markdown_table(&self.tables.1);
        }
        md += "\n## Plans\n\n```text\n";
        md += &self.plans.join("\n");
        md += "\n```\n\n![loss vs time](loss_vs_time.png)\n\n![accuracy vs images](accuracy_vs_images.png)\n\n";
        if self.confusion {
            md += "## Confusion of the final nets\n\nRows: true class; columns: predicted class; shade: share of the row.\n\n![confusion matrices](confusion.png)\n\n";
        }
        md + "Every point: `curves.csv`; the tables' numbers: `summary.json`.\n"
    }

    fn html(&self) -> String {
        let t = html_escape(self.title);
        let mut h = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}img.small{{max-width:60%}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style></head><body>\n<h1>{t}</h1>\n<p>Runs: {}</p>\n<ul>{}</ul>\n",
            html_escape(&self.sources.join(", ")),
            self.verdicts
                .iter()
                .map(|v| format!("<li>{}</li>", html_escape(v)))
                .collect::<String>(),
        );
        h += "<img src=\"accuracy_vs_time.svg\" alt=\"accuracy vs time\">\n";
        h += "<img class=\"small\" src=\"accuracy_vs_time_full.svg\" alt=\"accuracy vs time, full range\">\n";
        h += &format!("<p>{}</p>\n<h2>Curves</h2>\n", html_escape(TIME_NOTE));
        h += &html_table(&self.tables.0);
        if self.tables.1.len() > 1 {
            h += "<h2>Growth steps</h2>\n";
            h += &html_table(&self.tables.1);
        }
        h += &format!(
            "<h2>Plans</h2>\n<pre>{}</pre>\n",
            html_escape(&self.plans.join("\n"))
        );
        h += "<img src=\"loss_vs_time.svg\" alt=\"loss vs time\">\n<img src=\"accuracy_vs_images.svg\" alt=\"accuracy vs images\">\n";
        if self.confusion {
            h += "<h2>Confusion of the final nets</h2>\n<p>Rows: true class; columns: predicted class; shade: share of the row.</p>\n<img src=\"confusion.svg\" alt=\"confusion matrices\">\n";
        }
        h + "<p>Every point: <a href=\"curves.csv\">curves.csv</a>; the tables' numbers: <a href=\"summary.json\">summary.json</a>.</p>\n</body></html>\n"
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
            Some(match (full.time_s, full.speedup) {
                (Some(t), Some(x)) => format!(
                    "{} reached {}'s final top-1 ({:.2}%) after {} s: speed-up {x:.2}× (it ended at {}%).",
                    r.curve,
                    reference,
                    100.0 * full.target,
                    s3(t),
                    pct(r.final_top1)
                ),
                _ => format!(
                    "{} did not reach {}'s final top-1 ({:.2}%); it ended at {}%.",
                    r.curve,
                    reference,
                    100.0 * full.target,
                    pct(r.final_top1)
                ),
            })
        })
        .collect()
}
