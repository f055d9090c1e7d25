//! Direct convolutions for undilated windows: no unfolded input.
//!
//! An unfolded 3×3 convolution writes every input value 9 times and the matrix product
//! packs it again; with 16 filters each unfolded value then feeds only 32 FLOPs, so at
//! ResNet widths the memory traffic costs as much as the arithmetic. Here the input is
//! copied once into a zero-padded buffer and each kernel offset is a shifted read of it.
//!
//! The padded buffer of a channel holds a run of images one after the other, with rows
//! `wp = W + P` apart and images `H + P` rows apart: the `P` zero columns at the start of
//! a row are also the right padding of the row before, and the `P` zero rows above an
//! image the bottom padding of the one before. Output `(oy, ox)` of image `n` is then at
//! flat position `o = (n·(H + P) + oy)·wp + ox`, and reads the input at
//! `o + ky·wp + kx` for every kernel offset: one contiguous run of positions covers all
//! images of the run, and positions with `ox ≥ OW` or `oy ≥ OH` are computed and dropped.
//! Positions go `S` at a time (two vector registers) for `FB` filters at once, so each
//! vector of input read feeds `FB` fused multiply-adds from registers. Where the output
//! rows are whole vectors, the two vectors are row pieces instead and only valid
//! positions are computed, written straight into the output ([`row_strips`]).
//!
//! On maps of at most 4×4 outputs the padding positions would be a third or more of the
//! work, so there the outputs are computed position by position instead, the filters in
//! vector lanes and the input value a broadcast ([`Layout::Positions`]); so are those of
//! a strided convolution, whose output `(oy, ox)` reads the same buffer from
//! `(n·(H + P) + s·oy)·wp + s·ox`, except where the own loops run AVX2 and its output
//! rows are whole vectors: there its padded rows are stored split into their `s` column
//! phases ([`Layout::Split`]), so that the inputs of consecutive outputs are consecutive
//! again and the strips run as at stride 1.
//! A strided convolution's weight gradient visits the positions one by one, the same way
//! for every map. Its input gradient is no plain convolution: each input position's phase
//! (`(i + P) mod s`) picks its kernel offsets, so it runs position by position with the
//! positions grouped by phase ([`input_gradient_by_phases`]).
//!
//! The input gradient of such a convolution is the same operation on the output gradient,
//! with padding `k − 1 − P` and the kernels transposed and turned by 180°
//! ([`pack_transposed`]). The weight gradient reads the same padded buffer, with the
//! output gradient laid out position by position ([`weight_gradient`]). Every output is a
//! sum in a fixed order, with fused multiply-adds, so results depend neither on the thread count nor on
//! the instruction set (the tile sizes only choose which sums are computed together, and
//! which products with padding zeros are skipped, which for finite values change no bit).

use super::kernels::{self, Epilogue, Simd, SwitchMode, Window};

/// The environment variable that chooses where direct convolutions run: `auto`, the
/// default, on the windows [`applies`] accepts and [`pays`] expects to be faster; `on`
/// on every window [`applies`] accepts; `off` nowhere (every convolution unfolded).
pub const DIRECT_ENV: &str = "C2F_DIRECT";

/// The mode `C2F_DIRECT` asks for; an unknown value is an error.
pub fn direct_requested() -> Result<SwitchMode, String> {
    SWITCH.requested()
}

static SWITCH: kernels::Switch = kernels::Switch::new(DIRECT_ENV, SwitchMode::Auto);

/// Turns direct convolutions on for the nets built after it, whatever the environment
/// says: the engine's tests run with them on.
#[cfg(test)]
pub(crate) fn force_on() {
    SWITCH.force_on();
}

/// Whether a convolution runs directly: on a CPU with fused multiply-adds (AVX2 or
/// AVX-512: without them `mul_add` is a library call), no dilation, a kernel wider than
/// one (a 1×1 one is a plain product already), and padding below the kernel's width (so
/// the padded rows can share their zeros, and the input gradient is a direct convolution
/// too); under `C2F_DIRECT=auto`, also where it [`pays`]. A strided one runs its output
/// position by position, or, where the own loops run AVX2 and its output rows are whole
/// vectors, as strips over split rows ([`Layout::Split`]), and its weight gradient
/// directly; its input gradient, which is no plain convolution, runs by phases
/// ([`input_gradient_by_phases`]).
pub(crate) fn applies(g: &Window, filters: usize) -> bool {
    possible(g) && SWITCH.chooses(|| pays(g, filters))
}

/// Whether a direct convolution can compute the window at all, whatever the switch says.
pub(crate) fn possible(g: &Window) -> bool {
    g.dilation == 1 && g.kernel > 1 && g.pad < g.kernel && kernels::simd() != Simd::Baseline
}

/// Most filters of a convolution that `auto` runs directly.
const AUTO_MAX_FILTERS: usize = 64;

/// Where direct convolutions were measured at least as fast as unfolded ones (docs/
/// performance.md): with the weight gradient direct too, every bench net with up to 64
/// filters a layer, on maps from 2×2 to 32×32 (the unfolded product is thin there, and
/// unfolding writes every input value `k²` times). Wider layers were not measured
/// without Winograd taking them, so they stay unfolded.
fn pays(_g: &Window, filters: usize) -> bool {
    filters <= AUTO_MAX_FILTERS
}

/// Filters per wide packed block and output positions per strip, for the running CPU: as
/// many accumulators as leave registers for the input and the broadcast weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    fb: usize,
    strip: usize,
}

fn tile() -> Tile {
    match kernels::simd() {
        Simd::Avx512 => Tile { fb: 8, strip: 32 },
        _ => Tile { fb: 6, strip: 16 },
    }
}

/// Whether the input gradient is a direct convolution too: at stride 1, where it is the
/// convolution of the output gradient with the turned kernels ([`transposed_window`]);
/// otherwise it runs by phases ([`input_gradient_by_phases`]).
pub(crate) fn input_gradient_is_direct(g: &Window) -> bool {
    g.stride == 1
}

/// The backward pass's window: the output gradient (`filters` channels, `OH × OW`) in,
/// the input gradient (`C` channels, `H × W`) out.
pub(crate) fn transposed_window(g: &Window, filters: usize) -> Window {
    Window {
        channels: filters,
        h: g.oh,
        w: g.ow,
        oh: g.h,
        ow: g.w,
        pad: g.kernel - 1 - g.pad,
        ..*g
    }
}

/// How a window's outputs are computed. `Strips`: positions in vector lanes, a run of
/// padded rows at a time (the module docs), which also computes the positions in the
/// padding columns and rows — on a 4×4 map with padding 1, 25 for 16 outputs; on 2×2, 9
/// for 4. `Positions`: the output positions one by one with the filters in vector lanes
/// and the input value a broadcast, so only valid positions are computed; it needs more
/// loads per multiply-add, so it is used where the strips would waste most, and for
/// strided windows that [`layout`] gives no `Split`. `Split`: strips for a strided
/// window, each padded row stored as its `s` column phases one after the other
/// ([`pad_split`]), so that the inputs of consecutive outputs of a row are consecutive
/// values again; only for rows of whole vectors ([`row_strips`]), as positions between
/// the rows would be `s²` times as many as the outputs, and only where the own loops run
/// AVX2 (measured, [`layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Strips,
    Positions,
    Split,
}

/// Largest output map (positions) computed position by position: measured faster on
/// ResNet-8's 4×4 and 2×2 stages and bn-cnn's 4×4 layer, slower on 8×8 maps
/// (docs/performance.md).
const POSITIONS_MAX_PLANE: usize = 16;

/// `Split` where it was measured faster (docs/performance.md): on AVX2 the ResNet-20
/// blocks that hold its strided 16 → 32 and 32 → 64 layers ran 1.16 and 1.10 × as fast
/// as with `Positions` (1.5 and 0.75 ms less); on AVX-512, whose positions put 16 filters
/// in a vector, the 16 → 32 one 0.90 × (0.77 ms more).
fn layout(g: &Window) -> Layout {
    if g.out_plane() <= POSITIONS_MAX_PLANE {
        Layout::Positions
    } else if g.stride == 1 {
        Layout::Strips
    } else if kernels::simd() == Simd::Avx2 && g.ow.is_multiple_of(lanes()) {
        Layout::Split
    } else {
        Layout::Positions
    }
}

/// Values of a vector of the running CPU's instruction set (a strip is two).
fn lanes() -> usize {
    tile().strip / 2
}

/// The blocks of `outputs` outputs (filters, or channels for an input gradient) that
/// packed weights hold, `(first output, width)`, the last one padded with zero outputs
/// where it reaches past them: one block of [`grad_width`] for positions; for strips,
/// [`strip_blocks`].
fn packed_blocks(layout: Layout, outputs: usize) -> Vec<(usize, usize)> {
    match layout {
        Layout::Strips | Layout::Split => strip_blocks(outputs),
        Layout::Positions => vec![(0, grad_width(outputs))],
    }
}

/// Outputs of a strip's narrow block: a third fewer accumulators than AVX2's 6, half of
/// AVX-512's 8.
const NARROW: usize = 4;

/// Blocks of `fb` outputs, and where the rest would leave a wide block mostly empty, one
/// or two of [`NARROW`]: 16 filters on AVX2 run as 6 + 6 + 4 and 32 as 6 × 4 + 4 + 4
/// rather than in blocks of 6 whose last is a third or two thirds padding (measured on
/// ResNet-20's first two stages, docs/performance.md).
fn strip_blocks(outputs: usize) -> Vec<(usize, usize)> {
    blocks_of(outputs, tile().fb)
}

/// [`strip_blocks`] for wide blocks of `fb`.
fn blocks_of(outputs: usize, fb: usize) -> Vec<(usize, usize)> {
    let (mut wide, rest) = (outputs / fb, outputs % fb);
    let narrow = match rest {
        0 => 0,
        // A wide block and a short rest as two narrow ones.
        r if wide > 0 && 2 * NARROW >= fb + r => {
            wide -= 1;
            2
        }
        r if r <= NARROW => 1,
        _ => {
            wide += 1;
            0
        }
    };
    let widths = std::iter::repeat_n(fb, wide).chain(std::iter::repeat_n(NARROW, narrow));
    let mut first = 0;
    widths
        .map(|w| {
            first += w;
            (first - w, w)
        })
        .collect()
}

/// Values of packed weights of `rows` rows: through the last block's padding.
fn packed_len(blocks: &[(usize, usize)], rows: usize) -> usize {
    blocks.last().map_or(0, |&(first, w)| (first + w) * rows)
}

/// For each output, where its values lie in the packed weights: `at(o, r)`, that of row
/// `r`.
fn packed_places(blocks: &[(usize, usize)], rows: usize) -> impl Fn(usize, usize) -> usize {
    let owner: Vec<(usize, usize)> = blocks
        .iter()
        .flat_map(|&b| std::iter::repeat_n(b, b.1))
        .collect();
    move |o, r| {
        let (first, w) = owner[o];
        first * rows + r * w + o - first
    }
}

/// Packs `wt` (`filters × C·k·k`, row-major) for `convolve` over `g`: in blocks of
/// filters ([`packed_blocks`]), `[block][c·k·k + ky·k + kx][f]`, the block's width of
/// values a row; zero for filters past the last.
pub(crate) fn pack(wt: &[f32], filters: usize, g: &Window, out: &mut Vec<f32>) {
    pack_in(layout(g), wt, filters, g, out);
}

fn pack_in(layout: Layout, wt: &[f32], filters: usize, g: &Window, out: &mut Vec<f32>) {
    let rows = g.col_rows();
    let blocks = packed_blocks(layout, filters);
    out.clear();
    out.resize(packed_len(&blocks, rows), 0.0);
    let at = packed_places(&blocks, rows);
    for (f, wf) in wt.chunks_exact(rows).take(filters).enumerate() {
        for (r, &v) in wf.iter().enumerate() {
            out[at(f, r)] = v;
        }
    }
}

/// Packs the kernels of the input gradient: for the transposed window (channels =
/// `filters`, filters = `C`), kernel `(c, f)` is kernel `(f, c)` of `wt` turned by 180°,
/// laid out as [`pack`] lays out a forward window's.
pub(crate) fn pack_transposed(wt: &[f32], filters: usize, g: &Window, out: &mut Vec<f32>) {
    pack_transposed_in(layout(&transposed_window(g, filters)), wt, filters, g, out);
}

fn pack_transposed_in(layout: Layout, wt: &[f32], filters: usize, g: &Window, out: &mut Vec<f32>) {
    let (k, c_in) = (g.kernel, g.channels);
    let taps = k * k;
    let rows = filters * taps;
    let blocks = packed_blocks(layout, c_in);
    out.clear();
    out.resize(packed_len(&blocks, rows), 0.0);
    let at = packed_places(&blocks, rows);
    for (f, wf) in wt.chunks_exact(c_in * taps).take(filters).enumerate() {
        for (c, kernel) in wf.chunks_exact(taps).enumerate() {
            for (t, &v) in kernel.iter().enumerate() {
                out[at(c, f * taps + (taps - 1 - t))] = v;
            }
        }
    }
}

/// Distance between rows of the padded buffer.
fn pitch(g: &Window) -> usize {
    g.w + g.pad
}

/// Where kernel offset `t = ky·k + kx` reads the padded buffer, relative to its output.
fn kernel_offsets(g: &Window) -> Vec<usize> {
    let (wp, k) = (pitch(g), g.kernel);
    (0..k * k).map(|t| (t / k) * wp + t % k).collect()
}

/// Where output row `oy` of image `n` of a run reads the padded buffer from; output `ox`
/// of the row reads `stride · ox` further on.
fn row_start(g: &Window, n: usize, oy: usize) -> usize {
    (n * (g.h + g.pad) + oy * g.stride) * pitch(g)
}

/// Output positions of a run of `count` images, rounded up to whole strips.
fn positions(g: &Window, count: usize) -> usize {
    (count * (g.h + g.pad) * pitch(g)).next_multiple_of(tile().strip)
}

/// Values of one channel's padded buffer for `count` images: the positions, plus what
/// the last strip reads past them.
fn channel_len(g: &Window, count: usize) -> usize {
    positions(g, count) + (g.kernel + g.pad) * pitch(g) + g.kernel
}

/// A column phase's values in a [`Layout::Split`] row: the padded row's columns, both
/// paddings included, `s` to a phase (the right padding cannot be the next row's left
/// one, as the columns of a phase are not the row's last).
fn phase_len(g: &Window) -> usize {
    (g.w + 2 * g.pad).div_ceil(g.stride)
}

/// Values of one channel's [`Layout::Split`] buffer for `count` images: image `n`'s
/// padded row `r` (its top padding first) is row `n·(H + P) + r`, `s` phases long. The
/// last output row of the last image reads at most `s·(OH − 1) + k ≤ H + 2P` rows from
/// its image's first, so `P` rows past the images are enough.
fn split_len(g: &Window, count: usize) -> usize {
    (count * (g.h + g.pad) + g.pad) * row_len(Layout::Split, g)
}

/// Values between one padded row and the next in `layout`'s padded buffer.
fn row_len(layout: Layout, g: &Window) -> usize {
    match layout {
        Layout::Split => g.stride * phase_len(g),
        _ => pitch(g),
    }
}

/// [`channel_len`] for `layout`'s padded buffer.
fn channel_len_in(layout: Layout, g: &Window, count: usize) -> usize {
    match layout {
        Layout::Split => split_len(g, count),
        _ => channel_len(g, count),
    }
}

/// Images of a block handled at once, so that the padded run stays near the core's L2
/// cache (`budget` values).
pub(crate) fn images_per_run(g: &Window, budget: usize) -> usize {
    images_per_run_in(layout(g), g, budget)
}

fn images_per_run_in(layout: Layout, g: &Window, budget: usize) -> usize {
    let per_image = g.channels * (g.h + g.pad) * row_len(layout, g);
    (budget / per_image.max(1)).clamp(1, g.images.max(1))
}

/// Where [`row_strips`] reads a run's padded input: output row `oy` of image `n` from
/// `n · image + oy · row`, the row's output `ox` `ox` further, and kernel offset `t`
/// `offsets[t]` further than its output.
struct Rows {
    image: usize,
    row: usize,
    offsets: Vec<usize>,
}

impl Rows {
    fn of(layout: Layout, g: &Window) -> Rows {
        let (k, s, len) = (g.kernel, g.stride, row_len(layout, g));
        let offsets = if layout == Layout::Split {
            // Column `j` of a padded row is value `j / s` of phase `j mod s`; output `ox`
            // reads value `ox + kx / s`, inside the phase as `s·(OW − 1) + kx ≤ W + 2P − 1`.
            let q = phase_len(g);
            (0..k * k)
                .map(|t| (t / k) * len + (t % k % s) * q + t % k / s)
                .collect()
        } else {
            kernel_offsets(g)
        };
        Rows {
            image: (g.h + g.pad) * len,
            row: s * len,
            offsets,
        }
    }
}

/// Scratch values a run needs: the padded input, and the staged outputs (of one block of
/// filters for strips, unused by [`row_strips`] and so by split rows; of every filter
/// for positions).
pub(crate) fn scratch_len(g: &Window, filters: usize, run: usize) -> (usize, usize) {
    scratch_len_in(layout(g), g, filters, run)
}

fn scratch_len_in(layout: Layout, g: &Window, filters: usize, run: usize) -> (usize, usize) {
    let stage = match layout {
        Layout::Strips => tile().fb * positions(g, run),
        Layout::Positions => run * g.out_plane() * grad_width(filters),
        Layout::Split => 0,
    };
    (g.channels * channel_len_in(layout, g, run), stage)
}

/// Scratch of one block's direct convolutions.
pub(crate) struct RunScratch<'a> {
    pub padded: &'a mut Vec<f32>,
    pub stage: &'a mut Vec<f32>,
}

/// `y = W ⊛ x` for one block (`C × images × H × W` in, `filters × images × OH × OW`
/// out, overwritten), from weights packed by [`pack`] (or [`pack_transposed`] with
/// [`transposed_window`] for an input gradient), `budget` padded values at a time; `out`
/// applied to each run's outputs as they are written.
pub(crate) fn convolve(
    g: &Window,
    filters: usize,
    packed: &[f32],
    (x, y): (&[f32], &mut [f32]),
    budget: usize,
    s: RunScratch<'_>,
    out: Option<&Epilogue<'_>>,
) {
    convolve_in(layout(g), g, filters, packed, (x, y), budget, s, out);
}

#[allow(clippy::too_many_arguments)]
fn convolve_in(
    layout: Layout,
    g: &Window,
    filters: usize,
    packed: &[f32],
    (x, y): (&[f32], &mut [f32]),
    budget: usize,
    s: RunScratch<'_>,
    out: Option<&Epilogue<'_>>,
) {
    let run = images_per_run_in(layout, g, budget);
    let (pn, sn) = scratch_len_in(layout, g, filters, run);
    if s.padded.len() < pn {
        s.padded.resize(pn, 0.0);
    }
    if s.stage.len() < sn {
        s.stage.resize(sn, 0.0);
    }
    let op = Convolve {
        layout,
        g,
        filters,
        packed,
        x,
        y,
        run,
        s,
        out,
    };
    kernels::dispatch(op);
}

/// [`convolve`]'s loops, as a [`pulp::WithSimd`] operation: its `with_simd` is inlined
/// into the function compiled for the CPU's instruction set, so the multiply-adds are
/// fused and vectorised (a closure may be left out of line, compiled for the baseline,
/// where `mul_add` is a library call).
struct Convolve<'a, 'b> {
    layout: Layout,
    g: &'a Window,
    filters: usize,
    packed: &'a [f32],
    x: &'a [f32],
    y: &'a mut [f32],
    run: usize,
    s: RunScratch<'b>,
    out: Option<&'a Epilogue<'a>>,
}

impl pulp::WithSimd for Convolve<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Convolve {
            layout,
            g,
            filters,
            packed,
            x,
            y,
            run,
            s,
            out,
        } = self;
        let blocks = packed_blocks(layout, filters);
        let rows = Rows::of(layout, g);
        for first in (0..g.images).step_by(run) {
            let count = run.min(g.images - first);
            match layout {
                Layout::Split => pad_split(g, x, first, count, s.padded),
                _ => pad_run(g, x, first, count, s.padded),
            }
            if layout == Layout::Positions {
                let stage = &mut s.stage[..];
                by_positions(simd, (g, filters, count), s.padded, packed, stage);
                unstage_positions(g, filters, (first, count), stage, y);
                if let Some(out) = out {
                    out.finish_images((g.images, g.out_plane()), (first, count), y);
                }
                continue;
            }
            let cs = channel_len_in(layout, g, count);
            for &block in &blocks {
                let w = &packed[block.0 * g.col_rows()..][..block.1 * g.col_rows()];
                let run = (g, count, cs);
                // `layout` chose `Split` for rows of whole vectors of this instruction set.
                debug_assert!(layout != Layout::Split || g.ow % S::F32_LANES == 0);
                if g.ow % S::F32_LANES == 0 {
                    let to = (filters, block.0, first);
                    let x = (&s.padded[..], &rows);
                    match block.1 {
                        8 => row_strips::<S, 8>(simd, run, x, w, to, y),
                        6 => row_strips::<S, 6>(simd, run, x, w, to, y),
                        NARROW => row_strips::<S, NARROW>(simd, run, x, w, to, y),
                        _ => unreachable!("blocks are 8, 6 or {NARROW} filters wide"),
                    }
                    finish_block(g, (filters, block), (first, count), y, out);
                    continue;
                }
                let stage = &mut s.stage[..];
                match block.1 {
                    8 => strips::<S, 8>(simd, run, s.padded, w, stage),
                    6 => strips::<S, 6>(simd, run, s.padded, w, stage),
                    NARROW => strips::<S, NARROW>(simd, run, s.padded, w, stage),
                    _ => unreachable!("blocks are 8, 6 or {NARROW} filters wide"),
                }
                unstage(g, (filters, block), (first, count), stage, y, out);
            }
        }
    }
}

/// Copies images `first..first + count` of `x` into [`Layout::Split`]'s padded buffer
/// ([`split_len`]): padded column `j` of a row at `(j mod s)·q + j / s` in it.
#[inline(always)]
fn pad_split(g: &Window, x: &[f32], first: usize, count: usize, padded: &mut [f32]) {
    let (s, q, plane, cs) = (g.stride, phase_len(g), g.h * g.w, split_len(g, count));
    let len = row_len(Layout::Split, g);
    let padded = &mut padded[..g.channels * cs];
    padded.fill(0.0);
    for (c, dst) in padded.chunks_exact_mut(cs).enumerate() {
        for n in 0..count {
            let src = &x[(c * g.images + first + n) * plane..][..plane];
            let top = n * (g.h + g.pad) + g.pad;
            for (iy, line) in src.chunks_exact(g.w.max(1)).enumerate() {
                let row = &mut dst[(top + iy) * len..][..len];
                match s {
                    2 => split_row::<2>(line, row, q, g.pad),
                    _ => split_row_any(line, row, (s, q), g.pad),
                }
            }
        }
    }
}

/// Copies one input row into its padded row's `S` phases in `row` (`q` values each):
/// input `ix` is padded column `P + ix`. The stride a constant, so that the copy is
/// vector shuffles rather than a division per value.
#[inline(always)]
fn split_row<const S: usize>(line: &[f32], row: &mut [f32], q: usize, pad: usize) {
    let (whole, rest) = line.as_chunks::<S>();
    for r in 0..S {
        let j = pad + r;
        let to = &mut row[(j % S) * q + j / S..][..whole.len()];
        for (t, c) in to.iter_mut().zip(whole) {
            *t = c[r];
        }
    }
    for (r, &v) in rest.iter().enumerate() {
        let j = pad + whole.len() * S + r;
        row[(j % S) * q + j / S] = v;
    }
}

/// [`split_row`] for any stride `s`.
fn split_row_any(line: &[f32], row: &mut [f32], (s, q): (usize, usize), pad: usize) {
    for (ix, &v) in line.iter().enumerate() {
        let j = pad + ix;
        row[(j % s) * q + j / s] = v;
    }
}

/// Copies images `first..first + count` of `x` into the padded layout (module docs).
#[inline(always)]
fn pad_run(g: &Window, x: &[f32], first: usize, count: usize, padded: &mut [f32]) {
    let (wp, plane, cs) = (pitch(g), g.h * g.w, channel_len(g, count));
    let padded = &mut padded[..g.channels * cs];
    padded.fill(0.0);
    for (c, dst) in padded.chunks_exact_mut(cs).enumerate() {
        for n in 0..count {
            let src = &x[(c * g.images + first + n) * plane..][..plane];
            let top = (n * (g.h + g.pad) + g.pad) * wp + g.pad;
            for (iy, line) in src.chunks_exact(g.w.max(1)).enumerate() {
                kernels::copy_run(&mut dst[top + iy * wp..][..g.w], line);
            }
        }
    }
}

/// Every strip of positions of a run for one block of `FB` filters, into `stage`
/// (`FB × positions`): two vectors of `S` per strip.
#[inline(always)]
fn strips<S: pulp::Simd, const FB: usize>(
    simd: S,
    (g, count, cs): (&Window, usize, usize),
    padded: &[f32],
    w: &[f32],
    stage: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let offsets = kernel_offsets(g);
    let n = positions(g, count);
    for at in (0..n).step_by(2 * lanes) {
        let acc = strip::<S, FB>(simd, (g.channels, cs), (&padded[at..], lanes), w, &offsets);
        for (f, a) in acc.iter().enumerate() {
            let values: &[f32] = pulp::bytemuck::cast_slice(a);
            stage[f * n + at..][..2 * lanes].copy_from_slice(values);
        }
    }
}

/// Every valid output of a run for one block of `FB` filters, written straight into `y`
/// (`to`: the filters, the block's first, the run's first image). For maps whose rows
/// are whole vectors (`ow` a multiple of the lanes): a strip is two such row pieces, so
/// no output in a padding gap is computed (a ninth of the work at 16×16 with a pad of 1)
/// and none is staged.
#[inline(always)]
fn row_strips<S: pulp::Simd, const FB: usize>(
    simd: S,
    (g, count, cs): (&Window, usize, usize),
    (padded, rows): (&[f32], &Rows),
    w: &[f32],
    (filters, f0, first): (usize, usize, usize),
    y: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let offsets = &rows.offsets;
    let (per_row, plane) = (g.ow / lanes, g.out_plane());
    let vectors = count * g.oh * per_row;
    let at = |v: usize| {
        let row = v / per_row;
        (row / g.oh) * rows.image + (row % g.oh) * rows.row + (v % per_row) * lanes
    };
    let valid = FB.min(filters - f0);
    for v in (0..vectors).step_by(2) {
        // An odd last vector is both halves of the strip, stored twice in one place.
        let v1 = (v + 1).min(vectors - 1);
        let x = (&padded[at(v)..], at(v1) - at(v));
        let acc = strip::<S, FB>(simd, (g.channels, cs), x, w, offsets);
        for (f, a) in acc.iter().enumerate().take(valid) {
            let dst = &mut y[((f0 + f) * g.images + first) * plane..][..count * plane];
            let values: &[f32] = pulp::bytemuck::cast_slice(a);
            dst[v1 * lanes..][..lanes].copy_from_slice(&values[lanes..]);
            dst[v * lanes..][..lanes].copy_from_slice(&values[..lanes]);
        }
    }
}

/// Two vectors of outputs of `FB` filters, the second `gap` positions after the first:
/// the sum over channels and kernel offsets, in `2 × FB` vector registers.
#[inline(always)]
fn strip<S: pulp::Simd, const FB: usize>(
    simd: S,
    (channels, cs): (usize, usize),
    (x, gap): (&[f32], usize),
    w: &[f32],
    offsets: &[usize],
) -> [[S::f32s; 2]; FB] {
    let lanes = S::F32_LANES;
    let mut acc = [[simd.splat_f32s(0.0); 2]; FB];
    let taps = offsets.len();
    for c in 0..channels {
        let xc = &x[c * cs..];
        let wc = &w[c * taps * FB..][..taps * FB];
        for (&off, wt) in offsets.iter().zip(wc.chunks_exact(FB)) {
            let v0 = load::<S>(&xc[off..off + lanes]);
            let v1 = load::<S>(&xc[off + gap..off + gap + lanes]);
            for (a, &wf) in acc.iter_mut().zip(wt) {
                let wv = simd.splat_f32s(wf);
                a[0] = simd.mul_add_f32s(wv, v0, a[0]);
                a[1] = simd.mul_add_f32s(wv, v1, a[1]);
            }
        }
    }
    acc
}

/// One vector of `S` from the start of `x`, which holds exactly its lanes.
#[inline(always)]
fn load<S: pulp::Simd>(x: &[f32]) -> S::f32s {
    pulp::bytemuck::pod_read_unaligned(pulp::bytemuck::cast_slice(x))
}

/// Copies one block of filters' (`(first filter, width)`) valid outputs from `stage` into
/// `y`, through `out`.
#[inline(always)]
fn unstage(
    g: &Window,
    (filters, block): (usize, (usize, usize)),
    (first, count): (usize, usize),
    stage: &[f32],
    y: &mut [f32],
    out: Option<&Epilogue<'_>>,
) {
    let (wp, n) = (pitch(g), positions(g, count));
    let plane = g.out_plane();
    for f in 0..block.1.min(filters - block.0) {
        let (from, c) = (&stage[f * n..][..n], block.0 + f);
        for i in 0..count {
            let dst = &mut y[(c * g.images + first + i) * plane..][..plane];
            let base = i * (g.h + g.pad) * wp;
            for (oy, line) in dst.chunks_exact_mut(g.ow.max(1)).enumerate() {
                kernels::copy_run(line, &from[base + oy * wp..][..g.ow]);
            }
        }
    }
    finish_block(g, (filters, block), (first, count), y, out);
}

/// Applies `out` to one block of filters' outputs of a run in `y`: on the run as a whole,
/// as rows of a small map are too short to vectorise.
#[inline(always)]
fn finish_block(
    g: &Window,
    (filters, (f0, width)): (usize, (usize, usize)),
    (first, count): (usize, usize),
    y: &mut [f32],
    out: Option<&Epilogue<'_>>,
) {
    let plane = g.out_plane();
    if let Some(out) = out {
        for c in f0..filters.min(f0 + width) {
            out.finish(c, y, (c * g.images + first) * plane, count * plane);
        }
    }
}

/// Every output of a run position by position ([`Layout::Positions`]) into `stage`
/// ([`grad_width`] values a position, positions in order): tiles of `R` positions for
/// `NB` vectors of filters. The shapes were measured on one Zen 4 core (docs/
/// performance.md): filling AVX-512's 32 registers with 24 accumulators runs well with
/// four vectors of filters, but with three, two or one (8, 12 or 24 positions) the
/// compiler spills and the tile runs at 60 % of the speed of a smaller one, so those
/// keep 18, 16 and 16. On AVX2's 16 registers, 12 accumulators and 10 for one vector.
/// Vectors of filters wholly past the last one (AVX2, at most 8 filters) are skipped.
#[inline(always)]
fn by_positions<S: pulp::Simd>(
    simd: S,
    (g, filters, count): (&Window, usize, usize),
    padded: &[f32],
    w: &[f32],
    stage: &mut [f32],
) {
    let make = |r: usize| PositionRun::new(g, (filters, count), r, (padded, w));
    tiles_of_positions(simd, filters, make, stage);
}

/// [`by_positions`]' loop over the vectors of `outputs` outputs, each tile shape's run
/// made by `make` (given the tile's positions).
#[inline(always)]
fn tiles_of_positions<'a, S: pulp::Simd>(
    simd: S,
    outputs: usize,
    make: impl Fn(usize) -> PositionRun<'a>,
    stage: &mut [f32],
) {
    let wide = S::F32_LANES >= 16;
    let vectors = outputs.div_ceil(S::F32_LANES);
    let mut v = 0;
    while v < vectors {
        let (nb, r) = match (wide, vectors - v) {
            (true, 4..) => (4, 6),
            (true, 3) => (3, 6),
            (true, 2) => (2, 8),
            (true, _) => (1, 16),
            (false, 2..) => (2, 6),
            (false, _) => (1, 10),
        };
        let run = make(r);
        v += match (nb, r) {
            (4, 6) => position_tiles::<S, 4, 6>(simd, &run, v, stage),
            (3, 6) => position_tiles::<S, 3, 6>(simd, &run, v, stage),
            (2, 8) => position_tiles::<S, 2, 8>(simd, &run, v, stage),
            (1, 16) => position_tiles::<S, 1, 16>(simd, &run, v, stage),
            (2, 6) => position_tiles::<S, 2, 6>(simd, &run, v, stage),
            _ => position_tiles::<S, 1, 10>(simd, &run, v, stage),
        };
    }
}

/// A run as [`position_tiles`] reads it: the valid output positions grouped into tiles
/// that read the same kernel offsets, so that the offsets falling wholly in the padding
/// are skipped. On a 4×4 map with padding 1 a third of a 3×3 kernel's reads are padding,
/// on 2×2 over half. With finite weights and inputs, skipping them leaves every sum the
/// same bits, since the accumulator starts at +0 and a product with a padding zero adds
/// ±0 (an infinite weight times a padding zero was NaN, which is no longer computed).
struct PositionRun<'a> {
    channels: usize,
    /// Values of one channel of the padded input.
    cs: usize,
    /// Values of a row of the packed weights and of a position in the stage.
    fw: usize,
    /// Number of kernel offsets (rows of packed weights per channel).
    taps: usize,
    /// Each position's place in the padded input, tile by tile, and where it goes in the
    /// stage (its index in the run's positions in order).
    bases: Vec<usize>,
    slots: Vec<usize>,
    /// Positions a tile.
    tile: usize,
    /// Per tile: its first position in `bases`, its positions, and its range in `reads`.
    tiles: Vec<(usize, usize, std::ops::Range<usize>)>,
    /// Kernel offsets `(t, offset in the padded input)` read by some position of a tile,
    /// in increasing `t`.
    reads: Vec<(usize, usize)>,
    x: &'a [f32],
    w: &'a [f32],
}

impl<'a> PositionRun<'a> {
    /// Orders the positions of `count` images by the kernel rows and columns they read
    /// inside the image, then cuts them into tiles of `r` positions; a tile reads the
    /// offsets in the bounding box of its positions' ones (outside a position's own, it
    /// reads padding zeros).
    fn new(
        g: &Window,
        (filters, count): (usize, usize),
        r: usize,
        (x, w): (&'a [f32], &'a [f32]),
    ) -> Self {
        let inside = |o: usize, size: usize| {
            let lo = g.pad.saturating_sub(o * g.stride).min(g.kernel);
            let hi = (size + g.pad).saturating_sub(o * g.stride).min(g.kernel);
            (lo, hi.max(lo))
        };
        // (kernel rows inside, kernel columns inside, place in the stage, in the input)
        type Visit = ((usize, usize), (usize, usize), usize, usize);
        // Every image has the same kinds of positions: one image's are sorted, and each
        // kind then takes its positions image by image, as sorting the whole run would.
        let plane = g.out_plane();
        let mut one: Vec<Visit> = (0..plane)
            .map(|p| (inside(p / g.ow, g.h), inside(p % g.ow, g.w), p, 0))
            .collect();
        one.sort_unstable();
        let mut order: Vec<Visit> = Vec::with_capacity(count * plane);
        for kind in one.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            for n in 0..count {
                order.extend(kind.iter().map(|&(ys, xs, p, _)| {
                    let base = row_start(g, n, p / g.ow) + (p % g.ow) * g.stride;
                    (ys, xs, n * plane + p, base)
                }));
            }
        }
        let (k, wp) = (g.kernel, pitch(g));
        let mut tiles = Vec::with_capacity(order.len().div_ceil(r));
        let mut reads = Vec::new();
        for (i, tile) in order.chunks(r.max(1)).enumerate() {
            let span = |range: fn(&Visit) -> (usize, usize)| {
                let lo = tile.iter().map(|p| range(p).0).min().unwrap_or(0);
                (lo, tile.iter().map(|p| range(p).1).max().unwrap_or(0))
            };
            let ((y0, y1), (x0, x1)) = (span(|p| p.0), span(|p| p.1));
            let from = reads.len();
            for ky in y0..y1 {
                reads.extend((x0..x1).map(|kx| (ky * k + kx, ky * wp + kx)));
            }
            tiles.push((i * r, tile.len(), from..reads.len()));
        }
        PositionRun {
            channels: g.channels,
            cs: channel_len(g, count),
            fw: grad_width(filters),
            taps: k * k,
            tile: r,
            bases: order.iter().map(|p| p.3).collect(),
            slots: order.iter().map(|p| p.2).collect(),
            tiles,
            reads,
            x,
            w,
        }
    }

    /// The input gradient of the strided window `g` as a run: the positions are those of
    /// the input (`count` images), read from the output gradient `dy` padded as window
    /// `gd` ([`phase_window`]). Input row `iy` receives kernel row `ky = iy + P − s·oy`
    /// from output row `oy`: with `oy₀ = ⌊(iy + P)/s⌋` and `ky₀ = iy + P − s·oy₀` (the
    /// row's phase), kernel rows `ky₀ + j·s` from rows `oy₀ − j`; likewise the columns.
    /// Positions of one phase read the same offsets (out of the map, the padding's zeros),
    /// so tiles never mix phases.
    fn phases(
        g: &Window,
        (filters, count): (usize, usize),
        r: usize,
        (x, w): (&'a [f32], &'a [f32]),
    ) -> Self {
        let gd = phase_window(g, filters);
        let (k, s, wp, reach) = (g.kernel, g.stride, pitch(&gd), gd.pad);
        let phase = |i: usize| ((i + g.pad) / s, (i + g.pad) % s);
        // (row phase, column phase, place in the stage, in the padded gradient)
        let mut order: Vec<(usize, usize, usize, usize)> = Vec::new();
        for n in 0..count {
            for iy in 0..g.h {
                let (oy, py) = phase(iy);
                let row = (n * (gd.h + gd.pad) + oy) * wp;
                for ix in 0..g.w {
                    let (ox, px) = phase(ix);
                    order.push((py, px, (n * g.h + iy) * g.w + ix, row + ox));
                }
            }
        }
        order.sort_unstable();
        let (mut tiles, mut reads) = (Vec::new(), Vec::new());
        let mut at = 0;
        for group in order.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (py, px) = (group[0].0, group[0].1);
            let from = reads.len();
            for (j, ky) in (py..k).step_by(s).enumerate() {
                for (i, kx) in (px..k).step_by(s).enumerate() {
                    reads.push((ky * k + kx, (reach - j) * wp + reach - i));
                }
            }
            for t in (0..group.len()).step_by(r.max(1)) {
                let len = r.min(group.len() - t);
                tiles.push((at + t, len, from..reads.len()));
            }
            at += group.len();
        }
        PositionRun {
            channels: filters,
            cs: channel_len(&gd, count),
            fw: grad_width(g.channels),
            taps: k * k,
            tile: r,
            bases: order.iter().map(|p| p.3).collect(),
            slots: order.iter().map(|p| p.2).collect(),
            tiles,
            reads,
            x,
            w,
        }
    }
}

/// The output gradient of the strided window `g` as the input of its phases' run
/// ([`PositionRun::phases`]): `filters` channels of `OH × OW`, padded by as many rows and
/// columns as a phase reads back from its first (`⌈k/s⌉`), at least one (an input row's
/// first output row can lie one past the map).
fn phase_window(g: &Window, filters: usize) -> Window {
    Window {
        pad: g.kernel.div_ceil(g.stride).max(1),
        ..transposed_window(g, filters)
    }
}

/// Packs `wt` (`filters × C·k·k`) for [`input_gradient_by_phases`]: row `f·k² + t` holds
/// kernel offset `t` of filter `f` for every channel, [`grad_width`] values a row.
pub(crate) fn pack_phases(wt: &[f32], filters: usize, g: &Window, out: &mut Vec<f32>) {
    let (taps, c_in, fw) = (g.kernel * g.kernel, g.channels, grad_width(g.channels));
    out.clear();
    out.resize(filters * taps * fw, 0.0);
    for (f, wf) in wt.chunks_exact(c_in * taps).take(filters).enumerate() {
        for (c, kernel) in wf.chunks_exact(taps).enumerate() {
            for (t, &v) in kernel.iter().enumerate() {
                out[(f * taps + t) * fw + c] = v;
            }
        }
    }
}

/// The input gradient of a strided window (`dx`, `C × images × H × W`, overwritten) from
/// its output gradient `dy`, with weights packed by [`pack_phases`]: each input position
/// the sum over filters and the kernel offsets of its phase ([`PositionRun::phases`]),
/// the channels in vector lanes, `budget` padded values at a time. No unfolded matrix and
/// no folding back: every input position is computed once, as a fixed-order sum.
pub(crate) fn input_gradient_by_phases(
    g: &Window,
    filters: usize,
    packed: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    budget: usize,
    s: RunScratch<'_>,
) {
    let gd = phase_window(g, filters);
    let run = images_per_run_in(Layout::Positions, &gd, budget);
    let (pn, sn) = (
        filters * channel_len(&gd, run),
        run * g.h * g.w * grad_width(g.channels),
    );
    if s.padded.len() < pn {
        s.padded.resize(pn, 0.0);
    }
    if s.stage.len() < sn {
        s.stage.resize(sn, 0.0);
    }
    kernels::dispatch(Phases {
        g,
        filters,
        packed,
        dy,
        dx,
        run,
        s,
    });
}

/// [`input_gradient_by_phases`]' loops as a [`pulp::WithSimd`] operation (see
/// [`Convolve`]).
struct Phases<'a, 'b> {
    g: &'a Window,
    filters: usize,
    packed: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    run: usize,
    s: RunScratch<'b>,
}

impl pulp::WithSimd for Phases<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Phases {
            g,
            filters,
            packed,
            dy,
            dx,
            run,
            s,
        } = self;
        // Its outputs (`OH × OW` of it) are the input positions, as [`unstage_positions`]
        // writes them.
        let gd = phase_window(g, filters);
        for first in (0..g.images).step_by(run) {
            let count = run.min(g.images - first);
            pad_run(&gd, dy, first, count, s.padded);
            let (padded, stage) = (&s.padded[..], &mut s.stage[..]);
            let make = |r: usize| PositionRun::phases(g, (filters, count), r, (padded, packed));
            tiles_of_positions(simd, g.channels, make, stage);
            unstage_positions(&gd, g.channels, (first, count), stage, dx);
        }
    }
}

/// The outputs of filter vectors `v..v + NB` at every position, `R` positions at a time
/// (a last short tile repeats its last position, whose copies are not stored); returns
/// `NB`. Each output is the sum over channels and kernel offsets in order, as in [`strip`]
/// less products with padding zeros, so for finite values the two layouts give the same
/// bits.
#[inline(always)]
#[allow(unsafe_code)]
fn position_tiles<S: pulp::Simd, const NB: usize, const R: usize>(
    simd: S,
    run: &PositionRun<'_>,
    v: usize,
    stage: &mut [f32],
) -> usize {
    let (lanes, fw, taps) = (S::F32_LANES, run.fw, run.taps);
    let Some(&last) = run.bases.iter().max() else {
        return NB;
    };
    // No reads at all (every window in the padding of an empty map): the tiles sum nothing
    // and store zeros.
    let reach = run.reads.iter().map(|r| r.1).max().unwrap_or(0);
    // Every read below is at `c·cs + base + offset` with `c < channels`.
    let end = (run.channels.max(1) - 1) * run.cs + last + reach;
    assert!(end < run.x.len(), "direct convolution: input run too short");
    assert_eq!(
        run.tile, R,
        "direct convolution: tiles cut for another kernel"
    );
    for (p0, len, reads) in &run.tiles {
        let (p0, len, reads) = (*p0, *len, &run.reads[reads.clone()]);
        let tile: [usize; R] = std::array::from_fn(|i| run.bases[p0 + i.min(len - 1)]);
        let mut acc = [[simd.splat_f32s(0.0); NB]; R];
        for c in 0..run.channels {
            let xc = c * run.cs;
            let wc = &run.w[c * taps * fw..][..taps * fw];
            for &(t, off) in reads {
                let wr = &wc[t * fw + v * lanes..][..NB * lanes];
                let wv: [S::f32s; NB] =
                    std::array::from_fn(|b| load::<S>(&wr[b * lanes..][..lanes]));
                for (ai, &base) in acc.iter_mut().zip(&tile) {
                    // SAFETY: `xc + base + off <= end < x.len()`, checked above.
                    let xv = simd.splat_f32s(unsafe { *run.x.get_unchecked(xc + base + off) });
                    for (a, &wb) in ai.iter_mut().zip(&wv) {
                        *a = simd.mul_add_f32s(wb, xv, *a);
                    }
                }
            }
        }
        for (ai, &slot) in acc.iter().zip(&run.slots[p0..p0 + len]) {
            let at = slot * fw + v * lanes;
            let values: &[f32] = pulp::bytemuck::cast_slice(ai.as_slice());
            stage[at..][..NB * lanes].copy_from_slice(values);
        }
    }
    NB
}

/// Copies a run's outputs from the position-major `stage` into `y`: the run's valid
/// positions are consecutive in each filter's map.
#[inline(always)]
fn unstage_positions(
    g: &Window,
    filters: usize,
    (first, count): (usize, usize),
    stage: &[f32],
    y: &mut [f32],
) {
    let (out, fw) = (g.out_plane(), grad_width(filters));
    let dst = &mut y[first * out..];
    kernels::transpose(stage, fw, (count * out, filters), dst, g.images * out);
}

/// Values of a position's row of the position-major output gradient: the filters rounded
/// up to 16, whole vectors on AVX2 and AVX-512 alike.
fn grad_width(filters: usize) -> usize {
    filters.next_multiple_of(16)
}

/// Images of a block whose padded input and position-major output gradient fit in
/// `budget` values.
fn grad_images_per_run(g: &Window, filters: usize, budget: usize) -> usize {
    let per_image = g.channels * (g.h + g.pad) * pitch(g) + g.out_plane() * grad_width(filters);
    (budget / per_image.max(1)).clamp(1, g.images.max(1))
}

/// Scratch of one block's direct weight gradients.
pub(crate) struct GradScratch<'a> {
    pub padded: &'a mut Vec<f32>,
    /// The output gradient of a run, position-major ([`grad_width`] values a position).
    pub dyt: &'a mut Vec<f32>,
    /// The gradient being summed, `C·k·k` rows of [`grad_width`] values.
    pub acc: &'a mut Vec<f32>,
}

/// The weight gradient of one block, transposed: `dwt` (`C·k·k × filters`, overwritten)
/// gets `Σ dy[f](o) · x[c](o + offset)` over the output positions `o` of every image,
/// for each channel `c`, kernel offset and filter `f` — the unfolded product
/// `unfold(x) · dyᵀ` without the unfolded matrix. Each row's filters are one vector
/// register, the input value a broadcast, and every sum runs over the positions in
/// order with fused multiply-adds, so the result depends neither on the thread count nor
/// on the instruction set (the tile only chooses which rows are summed together, and which
/// products with padding zeros are skipped, which for finite values change no bit).
pub(crate) fn weight_gradient(
    g: &Window,
    filters: usize,
    x: &[f32],
    dy: &[f32],
    dwt: &mut [f32],
    budget: usize,
    mut s: GradScratch<'_>,
) {
    let (fw, rows) = (grad_width(filters), g.col_rows());
    let run = grad_images_per_run(g, filters, budget);
    let at_least = |v: &mut Vec<f32>, n: usize| {
        if v.len() < n {
            v.resize(n, 0.0);
        }
    };
    at_least(s.padded, g.channels * channel_len(g, run));
    at_least(s.dyt, run * g.out_plane() * fw);
    at_least(s.acc, rows * fw);
    s.acc[..rows * fw].fill(0.0);
    let op = WeightGradient {
        g,
        filters,
        x,
        dy,
        run,
        s: &mut s,
    };
    kernels::dispatch(op);
    for (dst, src) in dwt.chunks_exact_mut(filters).zip(s.acc.chunks_exact(fw)) {
        dst.copy_from_slice(&src[..filters]);
    }
}

/// [`weight_gradient`]'s loops as a [`pulp::WithSimd`] operation (see [`Convolve`]).
struct WeightGradient<'a, 'b, 'c> {
    g: &'a Window,
    filters: usize,
    x: &'a [f32],
    dy: &'a [f32],
    run: usize,
    s: &'c mut GradScratch<'b>,
}

impl pulp::WithSimd for WeightGradient<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let WeightGradient {
            g,
            filters,
            x,
            dy,
            run,
            s,
        } = self;
        let (fw, k, rows) = (grad_width(filters), g.kernel, g.col_rows());
        let taps = k * k;
        let kernel = kernel_offsets(g);
        // A 3×3 kernel's rows come in threes (one kernel row of a channel), read at
        // consecutive offsets from one address; other kernels' rows go one by one. Either
        // way ordered by kernel row, so that a group of rows of one kernel row skips the
        // positions whose window row lies in the padding.
        let width = if k == 3 { 3 } else { 1 };
        let mut heads: Vec<usize> = (0..rows).step_by(width).collect();
        heads.sort_by_key(|&r| ((r % taps) / k, r));
        let wide = S::F32_LANES >= 16;
        for first in (0..g.images).step_by(run) {
            let count = run.min(g.images - first);
            pad_run(g, x, first, count, s.padded);
            to_positions(g, filters, dy, (first, count), &mut s.dyt[..], fw);
            let cs = channel_len(g, count);
            let offsets: Vec<usize> = (0..rows)
                .map(|r| (r / taps) * cs + kernel[r % taps])
                .collect();
            let run = GradRun {
                g,
                count,
                fw,
                x: &s.padded[..],
                dyt: &s.dyt[..],
                offsets: &offsets,
            };
            // Vectors of filters wholly past the last one (AVX2, at most 8 filters) are
            // zero and never read back: skipped.
            for group in (0..filters).step_by(S::F32_LANES) {
                let mut i = 0;
                while i < heads.len() {
                    let (h, acc) = (&heads[i..], &mut s.acc[..]);
                    // Rows summed at once: one accumulator register of filters each,
                    // leaving registers for the output gradient's vector and the broadcast
                    // input value. Measured on one Zen 4 core: six threes on AVX-512 ran
                    // as fast as eight on 8×8 maps and 11–25 % faster on 4×4 and 2×2 ones
                    // (eight spill); four on AVX2.
                    i += match (width, h.len()) {
                        (3, 6..) if wide => grad_rows::<S, 6, 3>(simd, &run, h, group, acc),
                        (3, 4..) if !wide => grad_rows::<S, 4, 3>(simd, &run, h, group, acc),
                        (3, 3..) => grad_rows::<S, 3, 3>(simd, &run, h, group, acc),
                        (3, _) => grad_rows::<S, 1, 3>(simd, &run, h, group, acc),
                        (_, 8..) => grad_rows::<S, 8, 1>(simd, &run, h, group, acc),
                        (_, 4..) => grad_rows::<S, 4, 1>(simd, &run, h, group, acc),
                        _ => grad_rows::<S, 1, 1>(simd, &run, h, group, acc),
                    };
                }
            }
        }
    }
}

/// Images `first..first + count` of a block's output gradient `dy` (`filters × images ×
/// OH × OW`) position by position: `fw` values a position, zero past the last filter.
#[inline(always)]
fn to_positions(
    g: &Window,
    filters: usize,
    dy: &[f32],
    (first, count): (usize, usize),
    dyt: &mut [f32],
    fw: usize,
) {
    let (out, n) = (g.out_plane(), count * g.out_plane());
    let dyt = &mut dyt[..n * fw];
    let src = &dy[first * out..];
    kernels::transpose(src, g.images * out, (filters, n), dyt, fw);
    if filters < fw {
        for to in dyt.chunks_exact_mut(fw) {
            to[filters..].fill(0.0);
        }
    }
}

/// One run of a block as [`grad_rows`] reads it: the padded input and the position-major
/// output gradient of `count` images, and each gradient row's offset in the input.
struct GradRun<'a> {
    g: &'a Window,
    count: usize,
    fw: usize,
    x: &'a [f32],
    dyt: &'a [f32],
    offsets: &'a [usize],
}

impl GradRun<'_> {
    /// The output rows whose window reads kernel row `ky` inside the image: with the
    /// others that kernel row reads only padding zeros, whose products leave every sum the
    /// same bits, so they are skipped.
    fn rows_inside(&self, ky: usize) -> std::ops::Range<usize> {
        let g = self.g;
        let lo = g.pad.saturating_sub(ky).div_ceil(g.stride);
        let hi = (g.h + g.pad).saturating_sub(ky).div_ceil(g.stride);
        lo.min(g.oh)..hi.min(g.oh)
    }
}

/// Adds the run's terms to `NB` groups of `R` consecutive rows of the gradient, the groups
/// starting at `heads[..NB]`, for the filters `group..group + lanes`; returns `NB`. Row
/// `head + i` reads the input at `offsets[head] + i` (checked): a 3×3 kernel's rows in
/// threes of one address, or any rows one by one with `R = 1`. The accumulators are nested
/// arrays of at most 8, which the compiler keeps in registers (a flat array of 24 was
/// left in memory).
#[inline(always)]
#[allow(unsafe_code)]
fn grad_rows<S: pulp::Simd, const NB: usize, const R: usize>(
    simd: S,
    run: &GradRun<'_>,
    heads: &[usize],
    group: usize,
    acc: &mut [f32],
) -> usize {
    let (g, fw, lanes) = (run.g, run.fw, S::F32_LANES);
    let (st, ow) = (g.stride, g.ow);
    let heads: [usize; NB] = std::array::from_fn(|b| heads[b]);
    let starts: [usize; NB] = heads.map(|h| run.offsets[h]);
    let consecutive = heads
        .iter()
        .all(|&h| (0..R).all(|i| run.offsets[h + i] == run.offsets[h] + i));
    assert!(consecutive, "direct weight gradient: rows not consecutive");
    let last = row_start(g, run.count.max(1) - 1, g.oh.max(1) - 1) + (ow.max(1) - 1) * st + 1;
    let reach = starts.iter().max().map_or(0, |&o| o + R - 1 + last);
    // Every read below is at `start + i + base + ox` with `base + ox < last`, `i < R`.
    assert!(
        reach <= run.x.len(),
        "direct weight gradient: input run too short"
    );
    let (k, taps) = (g.kernel, g.kernel * g.kernel);
    let ky = (heads[0] % taps) / k;
    let rows = match heads.iter().all(|&h| (h % taps) / k == ky) {
        true => run.rows_inside(ky),
        false => 0..g.oh,
    };
    let at = |b: usize, i: usize| (heads[b] + i) * fw + group;
    let mut a: [[S::f32s; R]; NB] =
        std::array::from_fn(|b| std::array::from_fn(|i| load::<S>(&acc[at(b, i)..][..lanes])));
    for n in 0..run.count {
        for oy in rows.clone() {
            let base = row_start(g, n, oy);
            let ds = &run.dyt[(n * g.oh + oy) * ow * fw..][..ow * fw];
            for ox in 0..ow {
                let d = load::<S>(&ds[ox * fw + group..][..lanes]);
                let at = base + ox * st;
                for (ab, &start) in a.iter_mut().zip(&starts) {
                    for (i, ai) in ab.iter_mut().enumerate() {
                        // SAFETY: `start + i + at < reach <= x.len()`, checked above.
                        let v = unsafe { *run.x.get_unchecked(start + at + i) };
                        *ai = simd.mul_add_f32s(simd.splat_f32s(v), d, *ai);
                    }
                }
            }
        }
    }
    for (b, ab) in a.iter().enumerate() {
        for (i, ai) in ab.iter().enumerate() {
            let values: &[f32] = pulp::bytemuck::cast_slice(std::slice::from_ref(ai));
            acc[at(b, i)..][..lanes].copy_from_slice(values);
        }
    }
    NB
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernels::{Mat, MatMut, col2im, im2col, matmul};
    use crate::backend::max_abs_err;

    fn window(c: usize, images: usize, h: usize, w: usize, k: usize, pad: usize) -> Window {
        Window {
            channels: c,
            images,
            h,
            w,
            oh: h + 2 * pad + 1 - k,
            ow: w + 2 * pad + 1 - k,
            kernel: k,
            stride: 1,
            pad,
            dilation: 1,
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The unfolded convolution and its input gradient, the engine's reference path.
    fn unfolded(
        g: &Window,
        filters: usize,
        wt: &[f32],
        x: &[f32],
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (k, cols) = (g.col_rows(), g.images * g.out_plane());
        let mut col = vec![0.0; k * cols];
        let mut padded = vec![0.0; g.padded_plane().max(1)];
        im2col(g, x, 0, g.images, &mut col, &mut padded);
        let mut y = vec![0.0; filters * cols];
        let w = Mat::rows(wt, filters, k);
        matmul(
            MatMut::rows(&mut y, filters, cols),
            w,
            Mat::rows(&col, k, cols),
            false,
            false,
        );
        let mut dcol = vec![0.0; k * cols];
        let wt_t = Mat::transposed(wt, k, filters);
        matmul(
            MatMut::rows(&mut dcol, k, cols),
            wt_t,
            Mat::rows(dy, filters, cols),
            false,
            false,
        );
        let mut dx = vec![0.0; x.len()];
        col2im(g, &dcol, 0, g.images, &mut dx, &mut padded);
        (y, dx)
    }

    #[test]
    fn direct_convolution_and_its_input_gradient_match_the_unfolded_ones() {
        // Channels, images, height, width, kernel, padding, filters; small budgets force
        // runs of one image and several.
        let cases = [
            (1, 1, 5, 5, 3, 1, 1, 1 << 17),
            (3, 4, 8, 8, 3, 1, 16, 1 << 17),
            (16, 3, 7, 9, 3, 1, 13, 200),
            (5, 2, 6, 6, 2, 0, 9, 1 << 17),
            (4, 5, 9, 5, 5, 2, 7, 300),
            (2, 2, 6, 7, 3, 0, 3, 1 << 17),
            (2, 3, 4, 4, 5, 4, 10, 1 << 17),
            (17, 2, 3, 3, 3, 1, 33, 1 << 17),
            // Rows of whole vectors (8 or 16 lanes), odd and even counts of them per run.
            (3, 3, 5, 16, 3, 1, 10, 1 << 17),
            (2, 1, 3, 8, 3, 1, 9, 1 << 17),
            (4, 2, 3, 32, 3, 1, 17, 500),
            (3, 2, 6, 18, 3, 0, 5, 1 << 17),
            (2, 3, 4, 16, 5, 2, 7, 300),
        ];
        for (i, &(c, images, h, w, k, pad, filters, budget)) in cases.iter().enumerate() {
            let g = window(c, images, h, w, k, pad);
            let wt = values(filters * g.col_rows(), 1 + i as u64);
            let x = values(c * images * h * w, 100 + i as u64);
            let dy = values(filters * images * g.out_plane(), 200 + i as u64);
            let (want_y, want_dx) = unfolded(&g, filters, &wt, &x, &dy);
            let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
            let mut y = vec![f32::NAN; want_y.len()];
            pack(&wt, filters, &g, &mut packed);
            let s = RunScratch {
                padded: &mut padded,
                stage: &mut stage,
            };
            convolve(&g, filters, &packed, (&x, &mut y), budget, s, None);
            let gt = transposed_window(&g, filters);
            let mut dx = vec![f32::NAN; x.len()];
            pack_transposed(&wt, filters, &g, &mut packed);
            let s = RunScratch {
                padded: &mut padded,
                stage: &mut stage,
            };
            convolve(&gt, c, &packed, (&dy, &mut dx), budget, s, None);
            let (ey, edx) = (max_abs_err(&y, &want_y), max_abs_err(&dx, &want_dx));
            assert!(
                ey < 1e-5 && edx < 1e-5,
                "case {i}: output off by {ey}, input gradient by {edx}"
            );
        }
    }

    /// Blocks of filters cover every filter once, in order, with less padding than a
    /// narrow block; the shapes the engine's nets use split as documented.
    #[test]
    fn strip_blocks_cover_the_filters_with_little_padding() {
        for fb in [6, 8] {
            for outputs in 1..70 {
                let blocks = blocks_of(outputs, fb);
                let mut next = 0;
                for &(first, w) in &blocks {
                    assert_eq!(first, next, "{outputs} outputs by {fb}: {blocks:?}");
                    assert!(w == fb || w == NARROW, "{outputs} by {fb}: {blocks:?}");
                    next += w;
                }
                assert!(
                    next >= outputs && next - outputs < NARROW,
                    "{outputs} by {fb}: {blocks:?}"
                );
            }
        }
        let widths = |o, fb| blocks_of(o, fb).iter().map(|b| b.1).collect::<Vec<_>>();
        assert_eq!(widths(16, 6), [6, 6, 4]);
        assert_eq!(widths(32, 6), [6, 6, 6, 6, 4, 4]);
        assert_eq!(
            widths(64, 6),
            [6; 10].iter().copied().chain([4]).collect::<Vec<_>>()
        );
        assert_eq!(widths(16, 8), [8, 8]);
        assert_eq!(widths(12, 8), [8, 4]);
        assert_eq!(widths(3, 6), [4]);
    }

    /// The epilogue (bias, the other branch, ReLU) on every way a run's outputs are
    /// written: staged strips, row pieces (16 wide for AVX-512, 8 for AVX2) and
    /// positions, over runs of one image and several.
    #[test]
    fn direct_convolution_applies_its_epilogue() {
        let cases = [
            (3, 3, 7, 7, 3, 1, 10, 1 << 17),
            (4, 3, 5, 16, 3, 1, 13, 1 << 17),
            (2, 3, 6, 8, 3, 1, 9, 300),
            (5, 2, 4, 4, 3, 1, 11, 1 << 17),
        ];
        for (i, &(c, images, h, w, k, pad, filters, budget)) in cases.iter().enumerate() {
            let g = window(c, images, h, w, k, pad);
            let wt = values(filters * g.col_rows(), 800 + i as u64);
            let x = values(c * images * h * w, 900 + i as u64);
            let dy = vec![0.0; filters * images * g.out_plane()];
            let (want, _) = unfolded(&g, filters, &wt, &x, &dy);
            let bias = values(filters, 1000 + i as u64);
            let other = values(want.len(), 1100 + i as u64);
            let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
            let mut y = vec![f32::NAN; want.len()];
            pack(&wt, filters, &g, &mut packed);
            let s = RunScratch {
                padded: &mut padded,
                stage: &mut stage,
            };
            let out = Epilogue {
                bias: &bias,
                add: Some(&other),
                relu: true,
            };
            convolve(&g, filters, &packed, (&x, &mut y), budget, s, Some(&out));
            let per_filter = images * g.out_plane();
            let want: Vec<f32> = want
                .iter()
                .zip(&other)
                .enumerate()
                .map(|(j, (v, z))| (v + bias[j / per_filter] + z).max(0.0))
                .collect();
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            let e = max_abs_err(&y, &want);
            assert!(e < 1e-5, "case {i}: off by {e}");
        }
    }

    /// The positions of a run in the order of sorting all of them by the kernel rows and
    /// columns they read inside the image and then by place (what [`PositionRun::new`]
    /// builds from one image's order), with the right place in the input.
    #[test]
    fn positions_are_ordered_as_the_whole_run_sorted() {
        for (hw, k, pad, stride, count) in [
            ((4, 4), 3, 1, 1, 3),
            ((2, 3), 3, 1, 1, 2),
            ((7, 6), 3, 1, 2, 3),
            ((5, 5), 2, 0, 2, 1),
            ((9, 9), 5, 2, 3, 2),
        ] {
            let g = strided(2, count, hw, k, pad, stride);
            let run = PositionRun::new(&g, (4, count), 5, (&[], &[]));
            let inside = |o: usize, size: usize| {
                let lo = pad.saturating_sub(o * stride).min(k);
                (lo, (size + pad).saturating_sub(o * stride).min(k).max(lo))
            };
            let mut want: Vec<_> = (0..count * g.out_plane())
                .map(|slot| {
                    let (row, ox) = (slot / g.ow, slot % g.ow);
                    let (n, oy) = (row / g.oh, row % g.oh);
                    let base = (n * (g.h + pad) + oy * stride) * (g.w + pad) + ox * stride;
                    (inside(oy, g.h), inside(ox, g.w), slot, base)
                })
                .collect();
            want.sort_unstable();
            let slots: Vec<usize> = want.iter().map(|p| p.2).collect();
            let bases: Vec<usize> = want.iter().map(|p| p.3).collect();
            assert_eq!(run.slots, slots, "{hw:?} k {k} stride {stride}");
            assert_eq!(run.bases, bases, "{hw:?} k {k} stride {stride}");
        }
    }

    /// A window of stride `stride`, as [`window`] makes them.
    fn strided(
        c: usize,
        images: usize,
        hw: (usize, usize),
        k: usize,
        pad: usize,
        stride: usize,
    ) -> Window {
        let (h, w) = hw;
        Window {
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
            stride,
            ..window(c, images, h, w, k, pad)
        }
    }

    /// [`input_gradient_by_phases`] of `dy` with fresh scratch; unwritten values are NaN.
    fn by_phases(g: &Window, filters: usize, wt: &[f32], dy: &[f32], budget: usize) -> Vec<f32> {
        let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
        let mut dx = vec![f32::NAN; g.channels * g.images * g.h * g.w];
        pack_phases(wt, filters, g, &mut packed);
        let s = RunScratch {
            padded: &mut padded,
            stage: &mut stage,
        };
        input_gradient_by_phases(g, filters, &packed, dy, &mut dx, budget, s);
        dx
    }

    #[test]
    fn strided_convolution_and_its_gradients_match_the_unfolded_ones() {
        // Channels, images, height, width, kernel, padding, stride, filters, budget:
        // ResNet's 3×3 stride-2 layers (even and odd maps), strides 2 and 3 with kernels 2
        // to 5, runs of one image and several.
        let cases = [
            (16, 3, 8, 8, 3, 1, 2, 32, 1 << 17),
            (32, 2, 4, 4, 3, 1, 2, 64, 1 << 17),
            (3, 4, 9, 7, 3, 1, 2, 20, 200),
            (5, 2, 8, 8, 2, 0, 2, 9, 1 << 17),
            (4, 3, 11, 10, 5, 2, 3, 7, 300),
            (2, 2, 6, 6, 3, 0, 3, 17, 1 << 17),
        ];
        for (i, &(c, images, h, w, k, pad, stride, filters, budget)) in cases.iter().enumerate() {
            let g = strided(c, images, (h, w), k, pad, stride);
            let wt = values(filters * g.col_rows(), 800 + i as u64);
            let x = values(c * images * h * w, 900 + i as u64);
            let dy = values(filters * images * g.out_plane(), 1000 + i as u64);
            let (want_y, want_dx) = unfolded(&g, filters, &wt, &x, &dy);
            let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
            let mut y = vec![f32::NAN; want_y.len()];
            pack(&wt, filters, &g, &mut packed);
            let s = RunScratch {
                padded: &mut padded,
                stage: &mut stage,
            };
            convolve(&g, filters, &packed, (&x, &mut y), budget, s, None);
            let dx = by_phases(&g, filters, &wt, &dy, budget);
            assert!(
                dx.iter().all(|v| v.is_finite()),
                "case {i}: input gradient not written"
            );
            let edx = max_abs_err(&dx, &want_dx);
            assert!(edx < 1e-5, "case {i}: input gradient off by {edx}");
            let want_dw = unfolded_weight_gradient(&g, filters, &x, &dy);
            let mut dwt = vec![f32::NAN; want_dw.len()];
            let (mut dyt, mut acc) = (Vec::new(), Vec::new());
            let s = GradScratch {
                padded: &mut padded,
                dyt: &mut dyt,
                acc: &mut acc,
            };
            weight_gradient(&g, filters, &x, &dy, &mut dwt, budget, s);
            let scale = (images * g.out_plane()) as f32;
            let (ey, edw) = (max_abs_err(&y, &want_y), max_abs_err(&dwt, &want_dw));
            assert!(ey < 1e-5, "case {i}: output off by {ey}");
            assert!(
                edw <= 1e-7 * scale,
                "case {i}: weight gradient off by {edw}"
            );
            assert!(
                !input_gradient_is_direct(&g),
                "case {i}: no direct input gradient"
            );
        }
    }

    /// The convolution of `x` by `wt` (`filters × C·k·k`) over `g` in `layout`, from
    /// fresh buffers; outputs never written stay NaN.
    fn convolve_as(
        layout: Layout,
        g: &Window,
        (filters, wt): (usize, &[f32]),
        x: &[f32],
        budget: usize,
    ) -> Vec<f32> {
        let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
        let mut y = vec![f32::NAN; filters * g.images * g.out_plane()];
        pack_in(layout, wt, filters, g, &mut packed);
        let s = RunScratch {
            padded: &mut padded,
            stage: &mut stage,
        };
        convolve_in(layout, g, filters, &packed, (x, &mut y), budget, s, None);
        y
    }

    /// Both layouts on windows where either could be chosen: the same bits, forward and
    /// input gradient (each output is the same sum in the same order).
    #[test]
    fn positions_and_strips_give_the_same_bits() {
        // Channels, images, height, width, kernel, padding, filters, budget: maps of 2×2 to
        // 8×8 and 4×16, filters below, at and past vectors of 8 and 16, tiles with a short
        // remainder.
        let cases = [
            (64, 5, 2, 2, 3, 1, 64, 1 << 17),
            (32, 3, 4, 4, 3, 1, 32, 1 << 17),
            (16, 4, 8, 8, 3, 1, 16, 3000),
            (8, 3, 4, 16, 3, 1, 12, 1 << 17),
            (3, 2, 4, 4, 3, 1, 7, 1 << 17),
            (5, 3, 3, 5, 2, 0, 40, 200),
            (9, 2, 6, 6, 5, 2, 50, 1 << 17),
        ];
        for (i, &(c, images, h, w, k, pad, filters, budget)) in cases.iter().enumerate() {
            let g = window(c, images, h, w, k, pad);
            let gt = transposed_window(&g, filters);
            let wt = values(filters * g.col_rows(), 500 + i as u64);
            let x = values(c * images * h * w, 600 + i as u64);
            let dy = values(filters * images * g.out_plane(), 700 + i as u64);
            let run = |layout: Layout| {
                let y = convolve_as(layout, &g, (filters, &wt), &x, budget);
                let (mut padded, mut stage, mut packed) = (Vec::new(), Vec::new(), Vec::new());
                let mut dx = vec![f32::NAN; x.len()];
                pack_transposed_in(layout, &wt, filters, &g, &mut packed);
                let s = RunScratch {
                    padded: &mut padded,
                    stage: &mut stage,
                };
                convolve_in(layout, &gt, c, &packed, (&dy, &mut dx), budget, s, None);
                (y, dx)
            };
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let ((ys, dxs), (yp, dxp)) = (run(Layout::Strips), run(Layout::Positions));
            assert!(
                ys.iter().all(|v| v.is_finite()),
                "case {i}: output not written"
            );
            assert!(
                dxs.iter().all(|v| v.is_finite()),
                "case {i}: gradient not written"
            );
            assert_eq!(bits(&ys), bits(&yp), "case {i}: outputs differ");
            assert_eq!(bits(&dxs), bits(&dxp), "case {i}: input gradients differ");
        }
    }

    #[test]
    fn split_rows_and_positions_give_strided_windows_the_same_bits() {
        // Channels, images, height, width, kernel, stride, padding, filters, budget: output
        // rows of 16 (one or two vectors) and 8 (one of AVX2; skipped where the vectors are
        // AVX-512's), odd and even inputs, kernels past the stride, runs of one image, a
        // short last run (5 images in runs of 2), an odd number of vectors (a strip that
        // repeats its last).
        let cases = [
            (16, 3, 32, 32, 3, 2, 1, 32, 1 << 17),
            (5, 4, 16, 16, 3, 2, 1, 13, 1 << 17),
            (3, 3, 33, 31, 3, 2, 1, 7, 1 << 17),
            (4, 5, 34, 30, 4, 2, 2, 6, 3000),
            (2, 2, 24, 48, 5, 3, 2, 9, 1 << 17),
            (3, 3, 32, 32, 2, 2, 0, 16, 1 << 17),
            (7, 4, 16, 16, 3, 2, 1, 17, 200),
            (2, 5, 32, 32, 3, 2, 1, 8, 5000),
            (3, 3, 33, 15, 3, 2, 1, 7, 1 << 17),
        ];
        let mut split = 0;
        for (i, &(c, images, h, w, k, s, pad, filters, budget)) in cases.iter().enumerate() {
            let g = Window {
                stride: s,
                oh: (h + 2 * pad - k) / s + 1,
                ow: (w + 2 * pad - k) / s + 1,
                ..window(c, images, h, w, k, pad)
            };
            if !g.ow.is_multiple_of(lanes()) {
                continue;
            }
            split += 1;
            let wt = values(filters * g.col_rows(), 800 + i as u64);
            let x = values(c * images * h * w, 900 + i as u64);
            let ys = convolve_as(Layout::Split, &g, (filters, &wt), &x, budget);
            let yp = convolve_as(Layout::Positions, &g, (filters, &wt), &x, budget);
            assert!(
                ys.iter().all(|v| v.is_finite()),
                "case {i}: output not written"
            );
            let dy = vec![0.0; ys.len()];
            let (reference, _) = unfolded(&g, filters, &wt, &x, &dy);
            let err = max_abs_err(&ys, &reference);
            assert!(
                err < 1e-5,
                "case {i}: split rows off the unfolded output by {err}"
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ys), bits(&yp), "case {i}: outputs differ");
        }
        assert!(split >= 6, "only {split} cases ran as split rows");
    }

    #[test]
    fn strided_windows_run_as_split_rows_on_avx2_where_their_rows_are_whole_vectors() {
        let strided = |h: usize| Window {
            stride: 2,
            oh: h / 2,
            ow: h / 2,
            ..window(16, 4, h, h, 3, 1)
        };
        let avx2 = kernels::simd() == Simd::Avx2;
        // ResNet-20's two strided layers: rows of 16 and 8 outputs.
        let split = if avx2 {
            Layout::Split
        } else {
            Layout::Positions
        };
        assert_eq!(layout(&strided(32)), split);
        assert_eq!(layout(&strided(16)), split);
        // Rows of a vector and a half, and maps of at most 16 outputs, stay positions.
        assert_eq!(layout(&strided(24)), Layout::Positions);
        assert_eq!(layout(&strided(8)), Layout::Positions);
        assert_eq!(layout(&window(16, 4, 16, 16, 3, 1)), Layout::Strips);
    }

    /// The unfolded weight gradient `unfold(x) · dyᵀ` (`C·k·k × filters`).
    fn unfolded_weight_gradient(g: &Window, filters: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (k, cols) = (g.col_rows(), g.images * g.out_plane());
        let mut col = vec![0.0; k * cols];
        let mut padded = vec![0.0; g.padded_plane().max(1)];
        im2col(g, x, 0, g.images, &mut col, &mut padded);
        let mut dwt = vec![0.0; k * filters];
        matmul(
            MatMut::rows(&mut dwt, k, filters),
            Mat::rows(&col, k, cols),
            Mat::transposed(dy, cols, filters),
            false,
            false,
        );
        dwt
    }

    #[test]
    fn direct_weight_gradient_matches_the_unfolded_one() {
        // Channels, images, height, width, kernel, padding, filters, budget: filters below,
        // at and past one vector of 16, row counts that leave every tile size a remainder,
        // and budgets of one image per run and several.
        let cases = [
            (1, 1, 5, 5, 3, 1, 1, 1 << 17),
            (16, 3, 32, 32, 3, 1, 16, 1 << 17),
            (16, 5, 12, 10, 3, 1, 16, 3000),
            (3, 4, 8, 8, 3, 1, 20, 1 << 17),
            (5, 2, 6, 6, 2, 0, 9, 1 << 17),
            (4, 5, 9, 5, 5, 2, 7, 300),
            (2, 3, 4, 4, 5, 4, 33, 1 << 17),
            (17, 2, 7, 9, 3, 1, 13, 200),
        ];
        for (i, &(c, images, h, w, k, pad, filters, budget)) in cases.iter().enumerate() {
            let g = window(c, images, h, w, k, pad);
            let x = values(c * images * h * w, 300 + i as u64);
            let dy = values(filters * images * g.out_plane(), 400 + i as u64);
            let want = unfolded_weight_gradient(&g, filters, &x, &dy);
            let mut dwt = vec![f32::NAN; want.len()];
            let (mut padded, mut dyt, mut acc) = (Vec::new(), Vec::new(), Vec::new());
            let s = GradScratch {
                padded: &mut padded,
                dyt: &mut dyt,
                acc: &mut acc,
            };
            weight_gradient(&g, filters, &x, &dy, &mut dwt, budget, s);
            // Sums of up to 3 072 terms below 1/4 in `f32`, in another order: measured 3e-5 at
            // most, against errors of order 1 from a wrong offset or filter.
            let scale = (images * g.out_plane()) as f32;
            let err = max_abs_err(&dwt, &want);
            assert!(err <= 1e-7 * scale, "case {i}: off by {err}");
        }
    }

    #[test]
    fn dilated_and_pointwise_windows_stay_unfolded() {
        let g = window(4, 1, 8, 8, 3, 1);
        assert!(!applies(&Window { dilation: 2, ..g }, 8));
        assert!(!applies(&window(4, 1, 8, 8, 1, 0), 8));
        assert!(!applies(&Window { pad: 3, ..g }, 8));
    }

    /// `auto`'s rule on the shapes it was measured on: ResNet-20's first stage, tiny16's
    /// convolution, ResNet-8's three stages (16 filters at 8×8 to 64 at 2×2), net-4's
    /// 6×6 and alexnet-s5's 8×8 layers run directly; 128 filters and more stay unfolded.
    #[test]
    fn auto_runs_directly_up_to_64_filters() {
        assert!(pays(&window(16, 8, 32, 32, 3, 1), 16));
        assert!(pays(&window(3, 8, 16, 16, 4, 0), 6));
        assert!(pays(&window(16, 8, 8, 8, 3, 1), 16));
        assert!(pays(&window(64, 8, 2, 2, 3, 1), 64));
        assert!(pays(&window(6, 8, 6, 6, 3, 1), 16));
        assert!(!pays(&window(64, 8, 32, 32, 3, 1), 128));
    }
}
