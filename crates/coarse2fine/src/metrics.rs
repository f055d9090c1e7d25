//! What an evaluation measured: accuracy and loss, and the confusion matrix behind them.

use serde::{Deserialize, Serialize};

/// An evaluation's figures, stored with checkpoints and finished parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1].
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Counts of (true class, predicted class) pairs: `rows[t][p]` images of class `t` were
/// predicted as class `p` (the top-scoring class, ties to the lower index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// One row per true class.
    pub rows: Vec<Vec<u64>>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            rows: vec![vec![0; classes]; classes],
        }
    }

    /// Counts one image of class `label` predicted as `predicted`; labels outside the
    /// matrix are not counted.
    pub fn add(&mut self, label: usize, predicted: usize) {
        if let Some(c) = self.rows.get_mut(label).and_then(|r| r.get_mut(predicted)) {
            *c += 1;
        }
    }

    /// Adds another matrix of the same size.
    pub fn merge(&mut self, other: &Confusion) {
        for (r, o) in self.rows.iter_mut().zip(&other.rows) {
            for (c, v) in r.iter_mut().zip(o) {
                *c += v;
            }
        }
    }

    /// Accuracy of each class (recall): the diagonal over the row sums; `None` for a class
    /// with no images.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n: u64 = r.iter().sum();
                (n > 0).then(|| r[i] as f64 / n as f64)
            })
            .collect()
    }

    /// Images counted.
    pub fn total(&self) -> u64 {
        self.rows.iter().flatten().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_accuracy_is_the_diagonal_over_rows() {
        let mut c = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 1), (1, 1), (1, 1), (0, 0), (2, 9)] {
            c.add(t, p);
        }
        assert_eq!(c.total(), 5);
        let mut d = Confusion::new(3);
        d.add(2, 2);
        c.merge(&d);
        assert_eq!(c.per_class(), vec![Some(2.0 / 3.0), Some(1.0), Some(1.0)]);
        assert_eq!(Confusion::new(2).per_class(), vec![None, None]);
    }
}
