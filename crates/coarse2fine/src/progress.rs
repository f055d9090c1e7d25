//! Progress reporting without a terminal dependency: the library reports, the CLI draws.

/// Receives progress of long operations. All methods default to doing nothing.
pub trait Progress: Sync {
    /// A phase named `what` with `total` units of work begins.
    fn begin(&self, _what: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// Replaces the status text (e.g. current loss and throughput).
    fn status(&self, _msg: &str) {}
    /// The current phase is over.
    fn end(&self) {}
    /// A line worth showing the user (warnings, summaries).
    fn note(&self, _msg: &str) {}
    /// Position in a job of several phases (e.g. the stages of a run): `done` of `total`
    /// finished, `what` is under way.
    fn overall(&self, _done: u64, _total: u64, _what: &str) {}
}

/// Discards all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
