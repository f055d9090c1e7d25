//! The matrix-product measurements behind the native engine's design (docs/performance.md,
//! "What was tried"): the `gemm` crate alone, one thread, on the products of small32's
//! conv2 (12→32 channels, 3×3, 32×32 maps, batch 128) unfolded over the whole batch or over
//! runs of fewer images, and on a 1024³ product for the core's ceiling.
//!
//!   cargo run -p coarse2fine --example gemm_shapes
#![allow(unsafe_code)]

use std::time::Instant;

/// `dst (m × n) = a (m × k) · b (k × n)`, each with its own row and column strides.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (drs, dcs): (usize, usize),
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
) {
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(last(drs, dcs, m, n) < dst.len());
    assert!(last(ars, acs, m, k) < a.len() && last(brs, bcs, k, n) < b.len());
    // SAFETY: the asserts bound every index of the three views; `dst` is a unique borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs as isize,
            drs as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// GFLOP/s of `reps` calls of `f`, each `flops` floating-point operations.
fn rate(flops: f64, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let (filters, k, plane, batch) = (32usize, 12 * 9, 32 * 32, 128usize);
    println!("small32 conv2 products over runs of images (GFLOP/s, one thread):");
    println!(
        "images per run | forward y = W·cols | dW = dy·colsᵀ | dWᵀ = cols·dyᵀ | dcols = Wᵀ·dy"
    );
    for images in [128usize, 32, 8, 1] {
        let cols = images * plane;
        let reps = batch / images;
        let w = vec![0.5f32; filters * k];
        let col = vec![0.25f32; k * cols];
        let mut y = vec![0.1f32; filters * cols];
        let mut dw = vec![0f32; filters * k];
        let mut dcol = vec![0f32; k * cols];
        let flops = 2.0 * (filters * k * cols) as f64;
        let fwd = rate(flops, reps, || {
            product(
                (filters, cols, k),
                &mut y,
                (cols, 1),
                &w,
                (k, 1),
                &col,
                (cols, 1),
            )
        });
        let dw_rows = rate(flops, reps, || {
            product(
                (filters, k, cols),
                &mut dw,
                (k, 1),
                &y,
                (cols, 1),
                &col,
                (1, cols),
            )
        });
        let dw_t = rate(flops, reps, || {
            product(
                (k, filters, cols),
                &mut dw,
                (filters, 1),
                &col,
                (cols, 1),
                &y,
                (1, cols),
            )
        });
        let back = rate(flops, reps, || {
            product(
                (k, cols, filters),
                &mut dcol,
                (cols, 1),
                &w,
                (1, k),
                &y,
                (cols, 1),
            )
        });
        println!("{images:>14} | {fwd:>18.1} | {dw_rows:>13.1} | {dw_t:>14.1} | {back:>13.1}");
    }
    let n = 1024;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let square = rate(2.0 * (n * n * n) as f64, 3, || {
        product((n, n, n), &mut c, (n, 1), &a, (n, 1), &b, (n, 1))
    });
    println!("1024 × 1024 × 1024: {square:.1} GFLOP/s");
}
