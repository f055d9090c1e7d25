//! Small synthetic image sets with learnable structure, written in real source formats, for
//! tests and examples that must not depend on a download.

use std::path::Path;

use rand::{Rng, SeedableRng};

use super::idx::encode_idx;
use crate::error::{Error, Result};

/// Images of `classes` (≤ 4) classes, `side × side` grey: faint noise plus a bright square in
/// the quadrant of the class, so a small net learns them in a few dozen steps.
pub fn quadrant_images(n: usize, side: usize, classes: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let half = side / 2;
    let mut pixels = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % classes.clamp(1, 4)) as u8;
        let (qy, qx) = (usize::from(label / 2) * half, usize::from(label % 2) * half);
        for y in 0..side {
            for x in 0..side {
                let inside = y >= qy && y < qy + half && x >= qx && x < qx + half;
                pixels.push(if inside {
                    rng.random_range(160..=255)
                } else {
                    rng.random_range(0..=60)
                });
            }
        }
        labels.push(label);
    }
    (pixels, labels)
}

/// Writes a quadrant data set as MNIST-layout IDX files into `dir`.
pub fn write_quadrant_idx(
    dir: &Path,
    n_train: usize,
    n_test: usize,
    side: usize,
    seed: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (prefix, n, s) in [
        ("train", n_train, seed),
        ("t10k", n_test, seed.wrapping_add(1)),
    ] {
        let (px, lab) = quadrant_images(n, side, 4, s);
        let img = dir.join(format!("{prefix}-images-idx3-ubyte"));
        std::fs::write(&img, encode_idx(&[n, side, side], &px)).map_err(|e| Error::io(&img, e))?;
        let l = dir.join(format!("{prefix}-labels-idx1-ubyte"));
        std::fs::write(&l, encode_idx(&[n], &lab)).map_err(|e| Error::io(&l, e))?;
    }
    Ok(())
}
