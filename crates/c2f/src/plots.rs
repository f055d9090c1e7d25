//! The report's plots: curves against time or images, and confusion matrices.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use coarse2fine::events::{CurveKind, Event, What};
use coarse2fine::metrics::Confusion;
use coarse2fine::report::Curve;
use plotters::coord::Shift;
use plotters::prelude::*;

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Makes a TrueType font the plots' "sans-serif": `explicit`, or the first one installed.
pub fn register_font(explicit: Option<&Path>) -> Result<()> {
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

/// A curve's line with its legend entry: solid for the incremental curve, thinner and
/// dashed for the baseline.
fn line<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'_, DB, CT>,
    pts: &[(f64, f64)],
    kind: CurveKind,
    col: RGBColor,
    label: String,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let baseline = kind == CurveKind::Baseline;
    let style = col.stroke_width(if baseline { 2 } else { 3 });
    let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 22, y)], style);
    let pts = pts.to_vec();
    if baseline {
        chart
            .draw_series(DashedLineSeries::new(pts, 8, 5, style))?
            .label(label)
            .legend(legend);
    } else {
        chart
            .draw_series(LineSeries::new(pts, style))?
            .label(label)
            .legend(legend);
    }
    Ok(())
}

/// A plot of every curve.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Plot {
    /// Top-1 against time, zoomed to where the curves differ.
    AccuracyVsTime,
    /// Top-1 against time on the full 0–100% range.
    AccuracyVsTimeFull,
    /// Training loss against time.
    LossVsTime,
    /// Top-1 against training images.
    AccuracyVsImages,
}

/// Every plot a report draws.
pub const PLOTS: [Plot; 4] = [
    Plot::AccuracyVsTime,
    Plot::AccuracyVsTimeFull,
    Plot::LossVsTime,
    Plot::AccuracyVsImages,
];

impl Plot {
    /// File name without extension.
    pub fn file(self) -> &'static str {
        match self {
            Plot::AccuracyVsTime => "accuracy_vs_time",
            Plot::AccuracyVsTimeFull => "accuracy_vs_time_full",
            Plot::LossVsTime => "loss_vs_time",
            Plot::AccuracyVsImages => "accuracy_vs_images",
        }
    }

    fn points(self, c: &Curve) -> Vec<(f64, f64)> {
        let acc = |x: fn(&Event) -> f64| -> Vec<(f64, f64)> {
            c.evals
                .iter()
                .filter_map(|e| Some((x(e), 100.0 * e.top1()?)))
                .collect()
        };
        match self {
            Plot::AccuracyVsTime | Plot::AccuracyVsTimeFull => acc(|e| e.clock.time_s),
            Plot::AccuracyVsImages => acc(|e| e.images as f64 / 1000.0),
            Plot::LossVsTime => c
                .trains
                .iter()
                .filter_map(|e| match e.what {
                    What::Train { loss, .. } => Some((e.clock.time_s, loss)),
                    _ => None,
                })
                .collect(),
        }
    }

    fn axes(self) -> (&'static str, &'static str) {
        let time = "training time, s (growth included, evaluation not)";
        match self {
            Plot::AccuracyVsTime => (time, "test top-1, % (zoomed)"),
            Plot::AccuracyVsTimeFull => (time, "test top-1, %"),
            Plot::LossVsTime => (time, "training loss"),
            Plot::AccuracyVsImages => ("training images seen, thousands", "test top-1, %"),
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Plot::AccuracyVsTime => "accuracy vs time",
            Plot::AccuracyVsTimeFull => "accuracy vs time, full range",
            Plot::LossVsTime => "loss vs time",
            Plot::AccuracyVsImages => "accuracy vs images",
        }
    }

    /// The y range: the full 0–100% for the full-range plot; for the other accuracy plots
    /// the informative range, from just below the lowest accuracy any curve still has once
    /// it is a fifth of the way through (its early climb from chance is left to the
    /// full-range plot) to just above the best; for the loss, all of it.
    fn y_range(self, curves: &[Curve], all: &[(f64, f64)]) -> (f64, f64) {
        let finite = || all.iter().map(|p| p.1).filter(|v| v.is_finite());
        let hi = finite().fold(f64::NEG_INFINITY, f64::max);
        let lo = finite().fold(f64::INFINITY, f64::min);
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        match self {
            Plot::AccuracyVsTimeFull => (0.0, 100.0),
            Plot::LossVsTime => {
                let pad = ((hi - lo) * 0.05).max(1e-3);
                ((lo - pad).max(0.0), hi + pad)
            }
            Plot::AccuracyVsTime | Plot::AccuracyVsImages => {
                let late = curves
                    .iter()
                    .filter_map(|c| {
                        let pts = self.points(c);
                        pts[pts.len() / 5..].iter().map(|p| p.1).reduce(f64::min)
                    })
                    .fold(hi, f64::min);
                let pad = ((hi - late) * 0.08).max(0.5);
                ((late - pad).max(0.0), (hi + pad).min(100.0))
            }
        }
    }
}

/// Draws `plot` of `curves` into `root`.
pub fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: Plot,
    curves: &[Curve],
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| plot.points(c)).collect();
    if all.is_empty() {
        bail!("no points to plot");
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-6) * 1.02;
    let (y0, y1) = plot.y_range(curves, &all);
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
        // Points below a zoomed range sit on its lower edge, so lines leave it downwards.
        let pts: Vec<(f64, f64)> = plot
            .points(c)
            .into_iter()
            .map(|(x, y)| (x, y.max(y0)))
            .collect();
        line(&mut chart, &pts, c.kind, col, c.label()).map_err(err)?;
        if plot != Plot::LossVsTime {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, col.filled())))
                .map_err(err)?;
        }
        // Stage changes: a thin vertical line at each growth, labelled with the new size.
        if plot != Plot::AccuracyVsImages {
            for g in &c.growths {
                let (t, size) = (g.clock.time_s, g.place.map_or(0, |p| p.size));
                chart
                    .draw_series(LineSeries::new(
                        vec![(t, y0), (t, y1)],
                        col.mix(0.35).stroke_width(1),
                    ))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("→{size}×{size}"),
                        (t, y1 - (y1 - y0) * 0.04),
                        ("sans-serif", 13).into_font().color(&col),
                    )))
                    .map_err(err)?;
            }
        }
    }
    legend(
        &mut chart,
        match plot {
            Plot::LossVsTime => SeriesLabelPosition::UpperRight,
            _ => SeriesLabelPosition::LowerRight,
        },
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// One confusion matrix to draw, with its title.
pub struct Matrix<'a> {
    /// Panel title (run and curve).
    pub title: String,
    /// Class names.
    pub classes: &'a [String],
    /// Counts.
    pub confusion: &'a Confusion,
}

/// Draws confusion matrices side by side, two per row: each cell's shade is the share of
/// its true class (row) predicted as that column, with the count written in it when the
/// classes are few enough to read.
pub fn draw_confusions<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    mats: &[Matrix<'_>],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let rows = mats.len().div_ceil(2).max(1);
    let panels = root.split_evenly((rows, 2));
    for (m, area) in mats.iter().zip(panels) {
        let k = m.confusion.rows.len();
        let mut chart = ChartBuilder::on(&area)
            .caption(&m.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(90)
            .build_cartesian_2d(0..k, 0..k)
            .map_err(err)?;
        let name = |i: &usize| m.classes.get(*i).cloned().unwrap_or_else(|| i.to_string());
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&|i| if k <= 12 { name(i) } else { i.to_string() })
            .y_label_formatter(&|i| name(&(k - 1).saturating_sub(*i)))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (t, row) in m.confusion.rows.iter().enumerate() {
            let n = row.iter().sum::<u64>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / n;
                let shade = (255.0 * (1.0 - share)) as u8;
                let y = (k - 1).saturating_sub(t);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(p, y), (p + 1, y + 1)],
                        RGBColor(shade, shade, 255).filled(),
                    )))
                    .map_err(err)?;
                if k <= 20 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            count.to_string(),
                            (p, y + 1),
                            ("sans-serif", 10).into_font().color(&ink),
                        )))
                        .map_err(err)?;
                }
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws frontiers: final test top-1 against training time (log scale), one point per
/// budget at the mean over its seeds, bars from the lowest to the highest seed; the
/// incremental frontier solid, the baseline's dashed, one colour per plan.
pub fn draw_frontiers<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    fronts: &[coarse2fine::report::Frontier],
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let points = || fronts.iter().flat_map(|f| &f.points);
    let (t0, t1) = points().fold((f64::INFINITY, 0f64), |(a, b), p| {
        (a.min(p.time_s.min), b.max(p.time_s.max))
    });
    let (a0, a1) = points().fold((f64::INFINITY, 0f64), |(a, b), p| {
        (a.min(p.top1.min), b.max(p.top1.max))
    });
    if !t0.is_finite() || t1 <= 0.0 {
        bail!("no frontier points to plot");
    }
    let pad = ((a1 - a0) * 100.0 * 0.1).max(0.3);
    let (y0, y1) = ((100.0 * a0 - pad).max(0.0), (100.0 * a1 + pad).min(100.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: final accuracy against time"),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(60)
        .build_cartesian_2d((t0 * 0.8..t1 * 1.25).log_scale(), y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training time, s (log scale; growth included, evaluation not)")
        .x_label_formatter(&|v| {
            let digits = if *v >= 10.0 { 0 } else { 2 };
            format!("{v:.digits$}")
        })
        .y_desc("final test top-1, % (mean over seeds; bars: lowest to highest)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    let mut labels: Vec<&str> = Vec::new();
    for f in fronts {
        if !labels.contains(&f.label.as_str()) {
            labels.push(&f.label);
        }
        let col = colour(labels.iter().position(|l| *l == f.label).unwrap_or(0));
        let mean: Vec<(f64, f64)> = f
            .points
            .iter()
            .map(|p| (p.time_s.mean, 100.0 * p.top1.mean))
            .collect();
        line(&mut chart, &mean, f.kind, col, f.name()).map_err(err)?;
        for p in &f.points {
            let (t, a) = (p.time_s.mean, 100.0 * p.top1.mean);
            let bars = [
                vec![(t, 100.0 * p.top1.min), (t, 100.0 * p.top1.max)],
                vec![(p.time_s.min, a), (p.time_s.max, a)],
            ];
            for bar in bars {
                chart
                    .draw_series(LineSeries::new(bar, col.stroke_width(1)))
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(Circle::new((t, a), 4, col.filled())))
                .map_err(err)?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A plotting error, as ours.
fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// Draws the series' legend in a framed box at `pos`.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, pos: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .position(pos)
        .draw()
        .map_err(err)
}
