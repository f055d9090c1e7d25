//! `c2f report`: plots (PNG and SVG), an HTML and a Markdown report, and CSV curves from
//! run folders. Every number comes from the runs' `events.jsonl`, through
//! `coarse2fine::report`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use coarse2fine::fsutil;
use coarse2fine::report::{self, Curve, Summary};
use coarse2fine::run::CurveKind;
use plotters::prelude::*;

/// Plot and tabulate run folders: did incremental training pay off?
///
/// Reads each RUN folder's events.jsonl (or every run folder inside a DIR, e.g. the variants
/// of one plan) and writes into --out:
///   accuracy_vs_time.png/.svg   test top-1 vs training time (growth included, evaluation
///                               not), incremental and baseline curves, growths marked
///   loss_vs_time.png/.svg       training loss vs training time
///   accuracy_vs_images.png/.svg test top-1 vs training images seen
///   report.md, report.html      the plots and two tables: final accuracy, time to reach
///                               the baseline's final accuracy (and 99%, 95% of it) and
///                               speed-up; the accuracy dip at each growth
///   curves.csv                  every point of every curve
///   summary.json                the tables' numbers
///
/// Examples:
///   c2f report runs/exp1 --out docs/results/exp1-upscale
///   c2f report runs/exp2 runs/exp1 --out reports/filters --title "New filters"
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportArgs {
    /// Run folders, or folders of run folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder (created; files in it are replaced).
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

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

fn register_font(explicit: Option<&Path>) -> Result<()> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context(
                "no font found for the plots' text: install DejaVu Sans (Debian/Ubuntu: apt-get install fonts-dejavu-core) or give --font FILE.ttf",
            )?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    for style in [FontStyle::Normal, FontStyle::Bold] {
        plotters::style::register_font("sans-serif", style, bytes).map_err(|_| {
            anyhow::anyhow!("{}: not a TrueType font plotters can read", path.display())
        })?;
    }
    Ok(())
}

/// Colour of curve `i` (baselines are also dashed).
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

#[derive(Clone, Copy)]
enum Plot {
    AccuracyVsTime,
    LossVsTime,
    AccuracyVsImages,
}

impl Plot {
    fn file(self) -> &'static str {
        match self {
            Plot::AccuracyVsTime => "accuracy_vs_time",
            Plot::LossVsTime => "loss_vs_time",
            Plot::AccuracyVsImages => "accuracy_vs_images",
        }
    }

    fn points(self, c: &Curve) -> Vec<(f64, f64)> {
        match self {
            Plot::AccuracyVsTime => c.evals.iter().map(|p| (p.time_s, 100.0 * p.top1)).collect(),
            Plot::LossVsTime => c.trains.iter().map(|p| (p.time_s, p.loss)).collect(),
            Plot::AccuracyVsImages => c
                .evals
                .iter()
                .map(|p| (p.images as f64 / 1000.0, 100.0 * p.top1))
                .collect(),
        }
    }

    fn axes(self) -> (&'static str, &'static str) {
        match self {
            Plot::AccuracyVsTime => (
                "training time, s (growth included, evaluation not)",
                "test top-1, %",
            ),
            Plot::LossVsTime => (
                "training time, s (growth included, evaluation not)",
                "training loss",
            ),
            Plot::AccuracyVsImages => ("training images seen, thousands", "test top-1, %"),
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Plot::AccuracyVsTime => "accuracy vs time",
            Plot::LossVsTime => "loss vs time",
            Plot::AccuracyVsImages => "accuracy vs images",
        }
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    plot: Plot,
    curves: &[Curve],
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plotting: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| plot.points(c)).collect();
    if all.is_empty() {
        bail!("no points to plot");
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-6) * 1.02;
    let (mut y_min, mut y_max) = all
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(0.5);
    let (y0, y1) = match plot {
        Plot::LossVsTime => ((y_min - pad).max(0.0), y_max + pad),
        _ => ((y_min - pad).max(0.0), (y_max + pad).min(100.0)),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: {}", plot.caption()), ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, y0..y1)
        .map_err(err)?;
    let (xd, yd) = plot.axes();
    chart
        .configure_mesh()
        .x_desc(xd)
        .y_desc(yd)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let col = colour(i);
        let pts = plot.points(c);
        let baseline = c.kind == CurveKind::Baseline;
        let style = if baseline {
            col.stroke_width(2)
        } else {
            col.stroke_width(3)
        };
        if baseline {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(err)?
                .label(c.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
                .label(c.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
        if !matches!(plot, Plot::LossVsTime) {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, col.filled())))
                .map_err(err)?;
        }
        // Stage changes: a thin vertical line at each growth, labelled with the new size.
        if !matches!(plot, Plot::AccuracyVsImages) {
            for g in &c.growths {
                chart
                    .draw_series(LineSeries::new(
                        vec![(g.time_s, y0), (g.time_s, y1)],
                        col.mix(0.35).stroke_width(1),
                    ))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("→{}×{}", g.size, g.size),
                        (g.time_s, y1 - (y1 - y0) * 0.04),
                        ("sans-serif", 13).into_font().color(&col),
                    )))
                    .map_err(err)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .position(match plot {
            Plot::LossVsTime => SeriesLabelPosition::UpperRight,
            _ => SeriesLabelPosition::LowerRight,
        })
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("not reached".into(), |v| format!("{v:.1}"))
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
            format!("{:.1}", r.time_s),
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
        row.push(format!("{:.2}", r.grow_s));
        row.push(format!("{:.1}", r.eval_s));
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
            format!("{:.3}", d.seconds),
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

const PLOTS: [Plot; 3] = [
    Plot::AccuracyVsTime,
    Plot::LossVsTime,
    Plot::AccuracyVsImages,
];

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
    let title = a.title.clone().unwrap_or_else(|| {
        let mut names: Vec<String> = runs
            .iter()
            .map(|r| r.label.split('/').next().unwrap_or(&r.label).to_string())
            .collect();
        names.dedup();
        names.join(", ")
    });
    register_font(a.font.as_deref())?;
    coarse2fine::fsutil::create_dir_all(&a.out)?;

    // Plots are drawn into a temporary file and renamed, like every other output.
    for plot in PLOTS {
        for ext in ["svg", "png"] {
            let dest = a.out.join(format!("{}.{ext}", plot.file()));
            let tmp = a.out.join(format!(".{}.tmp.{ext}", plot.file()));
            if ext == "svg" {
                draw(
                    SVGBackend::new(&tmp, (960, 600)).into_drawing_area(),
                    plot,
                    &summary.curves,
                    &title,
                )?;
            } else {
                draw(
                    BitMapBackend::new(&tmp, (1280, 800)).into_drawing_area(),
                    plot,
                    &summary.curves,
                    &title,
                )?;
            }
            std::fs::rename(&tmp, &dest).with_context(|| dest.display().to_string())?;
        }
    }

    // CSV of every point.
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "run", "curve", "kind", "stage", "size", "iter", "images", "time_s", "wall_s", "top1",
        "top5", "loss",
    ])?;
    for c in &summary.curves {
        for (kind, pts) in [("eval", &c.evals), ("train", &c.trains)] {
            for p in pts.iter() {
                let opt = |v: f64| {
                    if v.is_nan() {
                        String::new()
                    } else {
                        format!("{v}")
                    }
                };
                w.write_record([
                    c.run.clone(),
                    c.kind.name().into(),
                    kind.into(),
                    p.stage.to_string(),
                    p.size.to_string(),
                    p.iter.to_string(),
                    p.images.to_string(),
                    format!("{:.3}", p.time_s),
                    format!("{:.3}", p.wall_s),
                    opt(p.top1),
                    opt(p.top5),
                    format!("{}", p.loss),
                ])?;
            }
        }
    }
    let csv_bytes = w.into_inner().map_err(|e| anyhow::anyhow!("CSV: {e}"))?;
    fsutil::write_bytes_atomic(&a.out.join("curves.csv"), &csv_bytes)?;
    fsutil::write_json_atomic(
        &a.out.join("summary.json"),
        &serde_json::json!({ "rows": summary.rows, "dips": summary.dips }),
    )?;

    let (main, dips) = tables(&summary);
    let sources: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let verdict = verdicts(&summary);
    let mut md = format!("# {title}\n\nRuns: {}\n\n", sources.join(", "));
    md += &verdict
        .iter()
        .map(|v| format!("- {v}\n"))
        .collect::<String>();
    md += "\n![accuracy vs time](accuracy_vs_time.png)\n\n";
    md += "Time is training plus growth seconds; evaluation and checkpoint writing are left out. Times to reach an accuracy are those of the first evaluation at or above it.\n\n";
    md += "## Curves\n\n";
    md += &markdown_table(&main);
    if !summary.dips.is_empty() {
        md += "\n## Growth steps\n\n";
        md += &markdown_table(&dips);
    }
    md += "\n![loss vs time](loss_vs_time.png)\n\n![accuracy vs images](accuracy_vs_images.png)\n\nEvery point: `curves.csv`; the tables' numbers: `summary.json`.\n";
    fsutil::write_bytes_atomic(&a.out.join("report.md"), md.as_bytes())?;

    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>\n<h1>{t}</h1>\n<p>Runs: {}</p>\n<ul>{}</ul>\n",
        html_escape(&sources.join(", ")),
        verdict
            .iter()
            .map(|v| format!("<li>{}</li>", html_escape(v)))
            .collect::<String>(),
        t = html_escape(&title)
    );
    html += "<img src=\"accuracy_vs_time.svg\" alt=\"accuracy vs time\">\n<p>Time is training plus growth seconds; evaluation and checkpoint writing are left out. Times to reach an accuracy are those of the first evaluation at or above it.</p>\n<h2>Curves</h2>\n";
    html += &html_table(&main);
    if !summary.dips.is_empty() {
        html += "<h2>Growth steps</h2>\n";
        html += &html_table(&dips);
    }
    html += "<img src=\"loss_vs_time.svg\" alt=\"loss vs time\">\n<img src=\"accuracy_vs_images.svg\" alt=\"accuracy vs images\">\n<p>Every point: <a href=\"curves.csv\">curves.csv</a>; the tables' numbers: <a href=\"summary.json\">summary.json</a>.</p>\n</body></html>\n";
    fsutil::write_bytes_atomic(&a.out.join("report.html"), html.as_bytes())?;

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
    for v in &verdict {
        println!("{v}");
    }
    println!(
        "wrote {}/report.html, report.md, 3 plots (PNG and SVG), curves.csv and summary.json",
        a.out.display()
    );
    Ok(())
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
                    "{} reached {}'s final top-1 ({:.2}%) after {t:.1} s: speed-up {x:.2}× (it ended at {}%).",
                    r.curve,
                    reference,
                    100.0 * full.target,
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
