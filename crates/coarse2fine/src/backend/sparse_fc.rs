//! A fully connected layer's forward product summed over each image's nonzero inputs
//! only. Its input usually follows a ReLU, which leaves about half the values at zero;
//! the dense product multiplies them all, so skipping them saves about as large a share
//! of the multiply-adds.
//!
//! The weights are packed by tiles of outputs (`inputs` rows of a tile's outputs each),
//! each image's nonzero inputs marked in a bit mask, a word of 64 inputs at a time, and
//! every tile of every image summed in vector registers: a broadcast input times a row of
//! the tile, added to the accumulators. The inputs go by words, one word's rows of a tile
//! over all of a task's images at a time, so that those rows stay in the first-level
//! cache. Each output is `Σ x_k·W_ok` over the image's nonzero inputs in input order, then
//! the bias, so the bits do not depend on the thread count. A skipped zero input
//! contributes nothing even where its weight is infinite or NaN, where the dense product
//! gives NaN. The sums are the same bits on every instruction set; the engine takes this
//! product where its dense products run AVX2, as with AVX-512 the dense one is faster.

use rayon::prelude::*;

use super::kernels::{self, Simd};

/// Outputs of a wide tile: 12 AVX2 accumulators (6 with AVX-512), which leave the 16
/// registers room for two broadcast inputs and a row of weights; its rows for one word of
/// inputs, 24 KiB, stay in the first-level cache.
const WIDE: usize = 96;

/// Outputs of the narrow tiles that cover what the wide ones leave.
const NARROW: usize = 32;

/// Inputs a mask word covers.
const WORD: usize = 64;

/// Densest input (the share of nonzero values) the sparse product takes; a denser one
/// goes to the dense product, which runs nearer the machine's peak. About where the two
/// take as long: net-3's classifier, about half its inputs nonzero, took 0.83 × the
/// dense product's time (0.85 against 1.03 ms a batch on one Zen 5 core with AVX2).
pub(crate) const MAX_DENSITY: f64 = 0.6;

/// Most bytes of weights the sparse product packs (a copy of the layer's, packed anew
/// each call into a buffer kept between calls); a larger layer, such as the full-size
/// AlexNet's first classifier layer (151 MiB), keeps the dense product, which packs block
/// by block.
const MAX_PACKED_BYTES: usize = 32 << 20;

/// Buffers of [`forward`], kept between calls.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// For each image, its inputs' nonzero bits, [`WORD`] inputs a word.
    masks: Vec<u64>,
    /// The weights by tiles: for each, `inputs` rows of its (padded) outputs.
    packed: Vec<f32>,
}

/// A tile: its first output and its width in outputs.
type Tile = (usize, usize);

/// `y = x · Wᵀ + b` (`n × outputs`, row-major; `w` is `outputs × inputs`), then a ReLU if
/// `relu`, where at most [`MAX_DENSITY`] of `x` is nonzero and the dense product would
/// run AVX2 kernels; returns whether it did (if not, `y` is untouched).
pub(crate) fn forward(
    y: &mut [f32],
    x: &[f32],
    (w, bias, relu): (&[f32], &[f32], bool),
    (n, inputs, outputs): (usize, usize, usize),
    s: &mut Scratch,
) -> bool {
    // Not with AVX-512: there the dense product's multiply-adds take their broadcast
    // operand from memory, and this one, bound by a load of weights per multiply-add,
    // came out slower (net-3's inference took 4–7 % longer on one Zen 5 core). The
    // choice follows the products' instruction set, not `C2F_SIMD`, which caps the
    // engine's own loops and must leave the bits as they are (this product's are the same
    // on every set).
    if kernels::gemm_simd() != Simd::Avx2 || !packs_within(inputs, outputs) || n == 0 {
        return false;
    }
    if !sparse_enough(x, inputs, s) {
        return false;
    }
    product(y, x, (w, bias, relu), (inputs, outputs), s);
    true
}

/// Whether a layer has weights and its packed copy takes at most [`MAX_PACKED_BYTES`].
fn packs_within(inputs: usize, outputs: usize) -> bool {
    let padded = tiles(outputs).last().map_or(0, |&(o0, width)| o0 + width);
    inputs > 0 && outputs > 0 && padded.saturating_mul(inputs).saturating_mul(4) <= MAX_PACKED_BYTES
}

/// Marks `x`'s nonzero inputs in `s` (images of `inputs` values) and says whether at most
/// [`MAX_DENSITY`] of them are.
fn sparse_enough(x: &[f32], inputs: usize, s: &mut Scratch) -> bool {
    let words = inputs.div_ceil(WORD);
    s.masks.resize(x.len() / inputs * words, 0);
    s.masks
        .par_chunks_mut(words)
        .zip(x.par_chunks(inputs))
        .for_each(|(m, x)| mark_nonzero(x, m));
    let nonzero: u64 = s.masks.iter().map(|m| u64::from(m.count_ones())).sum();
    nonzero as f64 <= MAX_DENSITY * x.len() as f64
}

/// [`forward`]'s product, with `x`'s nonzero inputs marked in `s`.
fn product(
    y: &mut [f32],
    x: &[f32],
    (w, bias, relu): (&[f32], &[f32], bool),
    (inputs, outputs): (usize, usize),
    s: &mut Scratch,
) {
    let (n, words) = (x.len() / inputs, inputs.div_ceil(WORD));
    let tiles = tiles(outputs);
    pack(w, (inputs, outputs), &tiles, &mut s.packed);
    // A task a thread: each task reads every tile's weights, so fewer images a task would
    // read them more often (tasks of 16 cost net-3's inference at two threads 8 %).
    let per_task = n.div_ceil(rayon::current_num_threads()).max(1);
    let (masks, packed) = (&s.masks[..], &s.packed[..]);
    y.par_chunks_mut(per_task * outputs)
        .zip(x.par_chunks(per_task * inputs))
        .zip(masks.par_chunks(per_task * words))
        .for_each(|((y, x), masks)| {
            kernels::dispatch(Sums {
                tiles: &tiles,
                packed,
                x: (x, masks),
                out: (y, bias, relu),
            });
        });
}

/// Wide tiles of [`WIDE`] outputs, then narrow ones of [`NARROW`] over the rest.
fn tiles(outputs: usize) -> Vec<Tile> {
    let wide = outputs / WIDE;
    let narrow = (outputs - wide * WIDE).div_ceil(NARROW);
    (0..wide)
        .map(|t| (t * WIDE, WIDE))
        .chain((0..narrow).map(|t| (wide * WIDE + t * NARROW, NARROW)))
        .collect()
}

/// Packs `w` by `tiles`: tile `(o0, width)` holds, from `o0 × inputs` on, `inputs` rows
/// of `width` weights (its outputs; zeros past the last output).
fn pack(w: &[f32], (inputs, outputs): (usize, usize), tiles: &[Tile], packed: &mut Vec<f32>) {
    let padded = tiles.last().map_or(0, |&(o0, width)| o0 + width);
    packed.resize(padded * inputs, 0.0);
    let mut rest = &mut packed[..];
    let mut parts = Vec::with_capacity(tiles.len());
    for &(o0, width) in tiles {
        let (part, tail) = rest.split_at_mut(width * inputs);
        parts.push((o0, width, part));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(o0, width, part)| {
        let valid = width.min(outputs - o0);
        if valid < width {
            part.fill(0.0);
        }
        kernels::transpose(&w[o0 * inputs..], inputs, (valid, inputs), part, width);
    });
}

/// [`forward`]'s sums over one task's images, as a [`pulp::WithSimd`] operation, so that
/// the multiply-adds are compiled for the running CPU.
struct Sums<'a, 'y> {
    tiles: &'a [Tile],
    packed: &'a [f32],
    /// The task's images and their nonzero masks.
    x: (&'a [f32], &'a [u64]),
    /// The task's rows of `y`, the bias and whether a ReLU follows.
    out: (&'y mut [f32], &'a [f32], bool),
}

impl pulp::WithSimd for Sums<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Sums {
            tiles,
            packed,
            x: (x, masks),
            out: (y, bias, relu),
        } = self;
        let (lanes, outputs) = (S::F32_LANES, bias.len());
        let images = y.len() / outputs;
        let inputs = x.len() / images.max(1);
        let words = masks.len() / images.max(1);
        let mut partial = vec![simd.splat_f32s(0.0); images * WIDE / lanes];
        for &(o0, width) in tiles {
            let tile = &packed[o0 * inputs..][..inputs * width];
            let bias = &bias[o0..];
            for b in 0..words {
                let rows = &tile[b * WORD * width..(((b + 1) * WORD).min(inputs) * width)];
                for i in 0..images {
                    let nz = (masks[i * words + b], &x[i * inputs + b * WORD..]);
                    let acc = &mut partial[i * WIDE / lanes..][..width / lanes];
                    let last = (b + 1 == words).then(|| {
                        (
                            &mut y[i * outputs + o0..][..width.min(outputs - o0)],
                            bias,
                            relu,
                        )
                    });
                    match width / lanes {
                        // AVX2, AVX-512 (the products' choice, whatever the loops
                        // are capped to) and the baseline's single lanes.
                        12 => tile_sums::<S, 12>(simd, rows, nz, (acc, b == 0), last),
                        4 => tile_sums::<S, 4>(simd, rows, nz, (acc, b == 0), last),
                        6 => tile_sums::<S, 6>(simd, rows, nz, (acc, b == 0), last),
                        2 => tile_sums::<S, 2>(simd, rows, nz, (acc, b == 0), last),
                        96 => tile_sums::<S, 96>(simd, rows, nz, (acc, b == 0), last),
                        32 => tile_sums::<S, 32>(simd, rows, nz, (acc, b == 0), last),
                        v => unreachable!("no tile of {v} vectors"),
                    }
                }
            }
        }
    }
}

/// Adds one image's products over one word of inputs to `acc` (`V` vectors of outputs,
/// taken as zero on the first word): `mask` marks the word's nonzero inputs, `x` starts at
/// its first, `rows` holds the tile's rows for them. In input order, two inputs a pass:
/// each multiply-add loads its weights, and a pass over one input adds the mask's
/// bookkeeping and a broadcast to every `V` of them. After the last word, `last` takes the
/// sums plus the bias, through a ReLU if asked.
#[inline(always)]
fn tile_sums<S: pulp::Simd, const V: usize>(
    simd: S,
    rows: &[f32],
    (mut mask, x): (u64, &[f32]),
    (acc, first): (&mut [S::f32s], bool),
    last: Option<(&mut [f32], &[f32], bool)>,
) {
    let lanes = S::F32_LANES;
    let row = |k: usize| -> &[f32] { &rows[k * V * lanes..][..V * lanes] };
    let at = |row: &[f32], j: usize| -> S::f32s {
        pulp::bytemuck::pod_read_unaligned(pulp::bytemuck::cast_slice(&row[j * lanes..][..lanes]))
    };
    let mut sums: [S::f32s; V] = match first {
        true => [simd.splat_f32s(0.0); V],
        false => std::array::from_fn(|j| acc[j]),
    };
    while mask != 0 {
        let k0 = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        if mask == 0 {
            let (r, xv) = (row(k0), simd.splat_f32s(x[k0]));
            for (j, a) in sums.iter_mut().enumerate() {
                *a = simd.mul_add_f32s(xv, at(r, j), *a);
            }
            break;
        }
        let k1 = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let (r0, r1) = (row(k0), row(k1));
        let (x0, x1) = (simd.splat_f32s(x[k0]), simd.splat_f32s(x[k1]));
        for (j, a) in sums.iter_mut().enumerate() {
            *a = simd.mul_add_f32s(x1, at(r1, j), simd.mul_add_f32s(x0, at(r0, j), *a));
        }
    }
    match last {
        None => acc[..V].copy_from_slice(&sums),
        Some((y, bias, relu)) => finish(&sums, y, (bias, relu)),
    }
}

/// Writes a tile's sums plus the bias, through a ReLU if `relu`, into `row` (as many of
/// the tile's outputs as it holds).
#[inline(always)]
fn finish<V: pulp::bytemuck::Pod>(sums: &[V], row: &mut [f32], (bias, relu): (&[f32], bool)) {
    let sums: &[f32] = pulp::bytemuck::cast_slice(sums);
    for ((y, &s), &b) in row.iter_mut().zip(sums).zip(bias) {
        let v = s + b;
        *y = if relu { v.max(0.0) } else { v };
    }
}

kernels::vectorized! {
    /// Sets bit `k mod 64` of `masks[k / 64]` where `x[k]` is not zero (NaN counts).
    fn mark_nonzero = mark_nonzero_in(x: &[f32], masks: &mut [u64]);
}

#[inline(always)]
fn mark_nonzero_in(x: &[f32], masks: &mut [u64]) {
    for (m, x) in masks.iter_mut().zip(x.chunks(WORD)) {
        *m = x
            .iter()
            .enumerate()
            .fold(0, |m, (k, &v)| m | (u64::from(v != 0.0) << k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{check_fc, on_threads};

    /// Values like a ReLU's outputs: `zeros` in 1000 of them zero, the rest positive.
    fn relu_like(len: usize, zeros: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match (i * 2_654_435_761) % 1000 {
                h if h < zeros => 0.0,
                h => (h % 97) as f32 * 0.03 + 0.01,
            })
            .collect()
    }

    /// The sparse product on a pool of `threads`, whatever the dense one would run:
    /// whether the input was sparse enough, and `y` (all NaN if not).
    fn run(
        threads: usize,
        x: &[f32],
        (w, b, relu): (&[f32], &[f32], bool),
        (n, inputs, outputs): (usize, usize, usize),
    ) -> (bool, Vec<f32>) {
        let mut y = vec![f32::NAN; n * outputs];
        let s = &mut Scratch::default();
        let took = on_threads(threads, || {
            let took = sparse_enough(x, inputs, s);
            if took {
                product(&mut y, x, (w, b, relu), (inputs, outputs), s);
            }
            took
        });
        (took, y)
    }

    #[test]
    fn the_sparse_product_is_the_sum_over_every_input() {
        // Partial words (60, 130, 200 inputs), narrow and padded tiles (7, 33, 97, 1000
        // outputs), tasks of fewer images than a task holds.
        for (n, inputs, outputs) in [
            (5, 60, 7),
            (17, 64, 96),
            (9, 130, 97),
            (40, 300, 1000),
            (3, 200, 33),
        ] {
            let x = relu_like(n * inputs, 500);
            let w: Vec<f32> = (0..outputs * inputs)
                .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let b: Vec<f32> = (0..outputs).map(|o| (o % 5) as f32 - 2.0).collect();
            for relu in [true, false] {
                let (took, y) = run(1, &x, (&w, &b, relu), (n, inputs, outputs));
                assert!(took, "half the inputs are zero");
                check_fc(&y, &x, (&w, &b, relu), (n, inputs, outputs));
                let (_, y3) = run(3, &x, (&w, &b, relu), (n, inputs, outputs));
                let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&y3), "the same bits at 1 and 3 threads");
            }
        }
    }

    /// The running instruction set's sums against one lane at a time: the same bits, so
    /// capping the engine's loops (`C2F_SIMD`) changes none.
    #[test]
    fn the_sums_are_the_same_bits_on_every_instruction_set() {
        use pulp::WithSimd;
        let (n, inputs, outputs) = (6, 150, 200);
        let x = relu_like(n * inputs, 450);
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let b: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.01).collect();
        let (took, wide) = run(1, &x, (&w, &b, true), (n, inputs, outputs));
        assert!(took);
        let s = &mut Scratch::default();
        assert!(sparse_enough(&x, inputs, s));
        let tiles = tiles(outputs);
        pack(&w, (inputs, outputs), &tiles, &mut s.packed);
        let mut one_lane = vec![f32::NAN; n * outputs];
        Sums {
            tiles: &tiles,
            packed: &s.packed,
            x: (&x, &s.masks),
            out: (&mut one_lane, &b, true),
        }
        .with_simd(pulp::Scalar);
        let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide), bits(&one_lane));
    }

    #[test]
    fn large_layers_keep_the_dense_product() {
        assert!(packs_within(512, 1000), "net-3's classifier, 2 MiB packed");
        assert!(packs_within(8192, 1000), "32 MiB packed, the bound");
        assert!(!packs_within(8500, 1000), "33.2 MiB packed");
        assert!(!packs_within(9216, 4096), "the full-size AlexNet's fc6");
        assert!(!packs_within(0, 10) && !packs_within(10, 0), "no weights");
    }

    #[test]
    fn a_dense_input_is_left_to_the_dense_product() {
        let (n, inputs, outputs) = (8, 100, 20);
        let x = relu_like(n * inputs, 300);
        let (w, b) = (vec![0.5; outputs * inputs], vec![0.0; outputs]);
        let (took, y) = run(1, &x, (&w, &b, true), (n, inputs, outputs));
        assert!(!took, "70 % nonzero is denser than {MAX_DENSITY}");
        assert!(y.iter().all(|v| v.is_nan()), "y untouched");
    }

    #[test]
    fn a_nan_input_is_not_skipped() {
        let (n, inputs, outputs) = (2, 70, 9);
        let mut x = relu_like(n * inputs, 600);
        x[inputs + 65] = f32::NAN;
        let (w, b) = (vec![0.5; outputs * inputs], vec![0.0; outputs]);
        let (took, y) = run(1, &x, (&w, &b, false), (n, inputs, outputs));
        if took {
            assert!(
                y[..outputs].iter().all(|v| v.is_finite()),
                "the first image is clean"
            );
            assert!(
                y[outputs..].iter().all(|v| v.is_nan()),
                "the second carries the NaN"
            );
        }
    }
}
