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
