//! Terminal progress bars for the library's progress reports.

use std::sync::Mutex;

use coarse2fine::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws one bar per phase on stderr; notes are printed above the bar. Hidden when stderr
/// is not a terminal, so logs stay clean, but notes are still printed.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            quiet,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Option<ProgressBar>) -> R) -> R {
        let mut guard = match self.bar.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl Progress for Bars {
    fn begin(&self, what: &str, total: u64) {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if self.quiet {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        self.with(|b| *b = Some(pb));
    }

    fn advance(&self, n: u64) {
        self.with(|b| {
            if let Some(pb) = b {
                pb.inc(n)
            }
        });
    }

    fn status(&self, msg: &str) {
        self.with(|b| {
            if let Some(pb) = b {
                pb.set_message(msg.to_string())
            }
        });
    }

    fn end(&self) {
        self.with(|b| {
            if let Some(pb) = b.take() {
                pb.finish_and_clear()
            }
        });
    }

    fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        self.with(|b| match b {
            Some(pb) if !pb.is_hidden() => pb.println(msg),
            _ => eprintln!("{msg}"),
        });
    }
}
