//! Terminal progress bars for the library's progress reports.

use std::sync::Mutex;

use coarse2fine::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws one bar per phase on stderr, under an overall bar for jobs of several phases;
/// notes are printed above the bars. Hidden when stderr is not a terminal, so logs stay
/// clean, but notes are still printed.
pub struct Bars {
    multi: MultiProgress,
    bar: Mutex<Option<ProgressBar>>,
    overall: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        Self {
            multi,
            bar: Mutex::new(None),
            overall: Mutex::new(None),
            quiet,
        }
    }

    fn style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }
}

impl Progress for Bars {
    fn begin(&self, what: &str, total: u64) {
        let pb = self.multi.add(ProgressBar::new(total));
        pb.set_style(Self::style(
            "{prefix:>16} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}  {msg}",
        ));
        pb.set_prefix(what.to_string());
        if let Some(old) = lock(&self.bar).replace(pb) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(pb) = lock(&self.bar).as_ref() {
            pb.inc(n)
        }
    }

    fn status(&self, msg: &str) {
        if let Some(pb) = lock(&self.bar).as_ref() {
            pb.set_message(msg.to_string())
        }
    }

    fn end(&self) {
        if let Some(pb) = lock(&self.bar).take() {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
    }

    fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.multi.println(msg);
        }
    }

    fn overall(&self, done: u64, total: u64, what: &str) {
        let mut guard = lock(&self.overall);
        let pb = guard.get_or_insert_with(|| {
            let pb = self.multi.insert(0, ProgressBar::new(total));
            pb.set_style(Self::style(
                "{prefix:>16} [{bar:30}] {pos}/{len} parts {elapsed_precise}  {msg}",
            ));
            pb.set_prefix("overall");
            pb
        });
        pb.set_length(total);
        pb.set_position(done);
        pb.set_message(what.to_string());
        if done >= total {
            pb.finish_and_clear();
            self.multi.remove(pb);
            *guard = None;
        }
    }
}

/// Seconds as a person reads them: three significant digits below 10 s (so 0.04 s does not
/// print as 0.0), one decimal above.
pub fn seconds(s: f64) -> String {
    if s < 10.0 {
        let digits = format!("{s:.3}");
        let trimmed = digits.trim_end_matches('0');
        if trimmed.ends_with('.') {
            format!("{trimmed}0s")
        } else {
            format!("{trimmed}s")
        }
    } else {
        format!("{s:.1}s")
    }
}

/// Accuracy per class and the confusion matrix as text: one row per true class, one
/// column per predicted class.
pub fn confusion_table(classes: &[String], c: &coarse2fine::metrics::Confusion) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("per class (top-1):\n");
    let width = classes
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    for ((name, acc), row) in classes.iter().zip(c.per_class()).zip(&c.rows) {
        let acc = acc.map_or("–".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let _ = writeln!(
            out,
            "  {name:<width$}  {acc:>7}  of {}",
            row.iter().sum::<u64>()
        );
    }
    out += "confusion (rows: true class, columns: predicted, in class order):\n";
    let cell = c
        .rows
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(3);
    for (name, row) in classes.iter().zip(&c.rows) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>cell$}")).collect();
        let _ = writeln!(out, "  {name:<width$}  {}", cells.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_times_keep_their_digits() {
        assert_eq!(seconds(0.04), "0.04s");
        assert_eq!(seconds(0.0), "0.0s");
        assert_eq!(seconds(1.5), "1.5s");
        assert_eq!(seconds(0.1234), "0.123s");
        assert_eq!(seconds(12.34), "12.3s");
    }
}
