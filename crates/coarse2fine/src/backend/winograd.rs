//! Winograd F(2×2, 3×3) convolutions: each 2×2 tile of output from a 4×4 tile of input
//! with 16 multiplications per (filter, channel) instead of 36, so the matrix products of a
//! 3×3 convolution shrink 2.25×.
//!
//! With `d` a 4×4 input tile and `g` a 3×3 filter (Lavin & Gray, 2016):
//! `V = Bᵀ d B`, `U = G g Gᵀ`, `M = U ⊙ V` summed over channels, `Y = Aᵀ M A`.
//! Summing over channels is, for each of the 16 positions `ξ` of the 4×4 tile, a matrix
//! product `M[ξ] (K × tiles) = U[ξ] (K × C) · V[ξ] (C × tiles)`. The backward pass uses
//! the adjoints of the same linear maps: `dM = A dY Aᵀ`, `dU[ξ] = dM[ξ] · V[ξ]ᵀ`,
//! `dV[ξ] = U[ξ]ᵀ · dM[ξ]`, `dd = B dV Bᵀ` (summed where tiles overlap), `dg = Gᵀ dU G`.
//!
//! Works on the engine's block layout (`C × images × H × W`) a run of images at a time,
//! like the unfolded convolution it replaces; tiles past the output's edge read zeros and
//! their outputs are dropped.

use super::kernels::{self, Mat, MatMut, Simd, SwitchMode, Window};

/// The environment variable that chooses where Winograd convolutions run: `auto`, the
/// default, on the windows [`applies`] accepts and [`pays`] expects to be faster; `on`
/// on every window [`applies`] accepts; `off` nowhere.
pub const WINOGRAD_ENV: &str = "C2F_WINOGRAD";

/// The mode `C2F_WINOGRAD` asks for; an unknown value is an error.
pub fn winograd_requested() -> Result<SwitchMode, String> {
    SWITCH.requested()
}

/// Positions of a 4×4 tile.
pub(crate) const XI: usize = 16;

/// Fewest input channels and filters for a Winograd convolution: with fewer, the 16
/// products are too small to run near the machine's speed.
const MIN_CHANNELS: usize = 16;

static SWITCH: kernels::Switch = kernels::Switch::new(WINOGRAD_ENV, SwitchMode::Auto);

/// Turns Winograd convolutions on for the nets built after it, whatever the environment
/// says: the engine's tests run with them on.
#[cfg(test)]
pub(crate) fn force_on() {
    SWITCH.force_on();
}

/// Whether a convolution runs as Winograd F(2×2, 3×3): a 3×3 window, stride 1, no
/// dilation, and enough channels and filters; under `C2F_WINOGRAD=auto`, also where it
/// [`pays`].
pub(crate) fn applies(g: &Window, filters: usize) -> bool {
    possible(g, filters) && SWITCH.chooses(|| pays(g, filters))
}

/// Whether a convolution's forward pass runs as Winograd: where [`applies`] holds, and
/// under `auto` also where [`pays_forward`] expects the forward pass alone to be faster
/// on the matrix products' instruction set. Its backward pass then runs as
/// [`applies`] says, so a convolution whose backward runs as Winograd always runs
/// forward as Winograd too, and the backward can reuse the forward's transformed filters.
pub(crate) fn applies_forward(g: &Window, filters: usize) -> bool {
    let products = kernels::gemm_simd();
    possible(g, filters)
        && SWITCH.chooses(|| pays(g, filters) || pays_forward(g, filters, products))
}

/// Whether Winograd F(2×2, 3×3) can compute a convolution at all, whatever the switch
/// says.
pub(crate) fn possible(g: &Window, filters: usize) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.dilation == 1
        && g.channels >= MIN_CHANNELS
        && filters >= MIN_CHANNELS
}

/// Fewest output rows and columns, and fewest channels and filters, of a convolution
/// that `auto` runs as Winograd.
const AUTO_MIN_SIDE: usize = 8;
const AUTO_MIN_CHANNELS: usize = 64;

/// Where Winograd convolutions were measured faster than the unfolded and direct ones
/// (docs/performance.md): outputs at least 8 × 8, so that an image has at least 16 tiles
/// and the transforms run on whole vectors of them, and at least 64 input channels and
/// filters, so that the 16 products are wide enough to outweigh the transforms. Slower or
/// no faster were 4 × 4 and 2 × 2 maps (ResNet-8's later stages), and 16–48 channels
/// (alexnet-s4; alexnet-s3's last three layers; ResNet-20's first two stages, whose
/// second the direct convolution runs 1.2× faster backward since its weight gradient
/// transposes the output gradient in registers).
fn pays(g: &Window, filters: usize) -> bool {
    wide_enough(g, filters, AUTO_MIN_CHANNELS)
}

/// Fewest channels and filters of a convolution that `auto` runs forward as Winograd
/// where the matrix products run AVX2.
const AUTO_MIN_CHANNELS_FORWARD_AVX2: usize = 32;

/// Where the forward pass alone was measured faster as Winograd than direct
/// (docs/performance.md): with AVX2 products, from 32 channels and filters on maps of at
/// least 8 × 8 — ResNet-20's second stage 1.19 × faster, alexnet-s3's last three layers
/// (15 × 15) 1.3–1.4 ×, small32's last (8 × 8) 1.2 × — while ResNet-20's first stage
/// (16 channels) ran 1.12 × slower. With AVX-512 the direct convolution's wider vectors
/// keep it ahead (ResNet-20's second stage 1.3 × slower as Winograd), so the forward rule
/// is the backward's there.
fn pays_forward(g: &Window, filters: usize, products: Simd) -> bool {
    products == Simd::Avx2 && wide_enough(g, filters, AUTO_MIN_CHANNELS_FORWARD_AVX2)
}

fn wide_enough(g: &Window, filters: usize, channels: usize) -> bool {
    g.oh >= AUTO_MIN_SIDE && g.ow >= AUTO_MIN_SIDE && g.channels.min(filters) >= channels
}

/// Tiles per image: rows, columns.
pub(crate) fn tiles(g: &Window) -> (usize, usize) {
    (g.oh.div_ceil(2), g.ow.div_ceil(2))
}

/// Scratch values of one image plane's transforms: eight phase planes of `(TH + 1) × TW`
/// values and one padded row ([`Phases`]).
pub(crate) fn padded_plane(g: &Window) -> usize {
    let (th, tw) = tiles(g);
    8 * (th + 1) * tw + 2 * tw + 2
}

/// Images of a block handled at once, so that the transformed tiles of a run
/// (`16 × max(C, K) × tiles`) stay near the core's L2 cache like an unfolded run.
pub(crate) fn images_per_run(g: &Window, filters: usize, budget: usize) -> usize {
    let (th, tw) = tiles(g);
    (budget / (XI * g.channels.max(filters) * th * tw).max(1)).max(1)
}

/// Scratch values one run needs for the transformed input (or its gradient) and the
/// products (or their gradient).
pub(crate) fn run_values(g: &Window, filters: usize, run: usize) -> (usize, usize) {
    let (th, tw) = tiles(g);
    let p = run * th * tw;
    (XI * g.channels * p, XI * filters * p)
}

// The three 1-D maps and their adjoints, applied along rows and then columns.
#[inline(always)]
fn bt(x: [f32; 4]) -> [f32; 4] {
    [x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3]]
}

#[inline(always)]
fn b(x: [f32; 4]) -> [f32; 4] {
    [x[0], x[1] - x[2] + x[3], x[1] + x[2] - x[0], -x[3]]
}

#[inline(always)]
fn at(x: [f32; 4]) -> [f32; 2] {
    [x[0] + x[1] + x[2], x[1] - x[2] - x[3]]
}

#[inline(always)]
fn a(y: [f32; 2]) -> [f32; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], -y[1]]
}

#[inline(always)]
fn gm(x: [f32; 3]) -> [f32; 4] {
    let (s, d) = (0.5 * (x[0] + x[2]), 0.5 * x[1]);
    [x[0], s + d, s - d, x[2]]
}

#[inline(always)]
fn gt(u: [f32; 4]) -> [f32; 3] {
    let (s, d) = (0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]));
    [u[0] + s, d, s + u[3]]
}

/// Runs `$body` with `$q` the first tile (or filter) and `$l` a constant lane count, over
/// `0..$n`: runs of 16, then 8, 4 and single ones.
macro_rules! by_lanes {
    ($n:expr, |$q:ident, $l:ident| $body:expr) => {{
        let mut $q = 0;
        while $q + 16 <= $n {
            {
                const $l: usize = 16;
                $body;
            }
            $q += 16;
        }
        while $q + 8 <= $n {
            {
                const $l: usize = 8;
                $body;
            }
            $q += 8;
        }
        while $q + 4 <= $n {
            {
                const $l: usize = 4;
                $body;
            }
            $q += 4;
        }
        while $q < $n {
            {
                const $l: usize = 1;
                $body;
            }
            $q += 1;
        }
    }};
}

/// `U[ξ] (K × C) = G g Gᵀ` of every filter of `wt` (`K × C × 3 × 3`) into `u`
/// (`16 × K × C`).
pub(crate) fn transform_filters(wt: &[f32], filters: usize, channels: usize, u: &mut [f32]) {
    let kc = filters * channels;
    by_lanes!(kc, |q, L| filter_tiles::<L>(wt, u, kc, q));
}

/// `G g Gᵀ` of filters `q .. q + L`.
#[inline(always)]
fn filter_tiles<const L: usize>(wt: &[f32], u: &mut [f32], kc: usize, q: usize) {
    let mut x = [[[0.0; L]; 3]; 3];
    for l in 0..L {
        let g = &wt[(q + l) * 9..][..9];
        for (i, row) in x.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                v[l] = g[3 * i + j];
            }
        }
    }
    for (i, row) in two_d(&x, gm).iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            st(u, (4 * i + j) * kc + q, v);
        }
    }
}

/// `dg = Gᵀ dU G` of `du` (`16 × K × C`) into the transposed weight gradient `dwt`
/// (`C·9 × K`, the layout the engine sums blocks in).
pub(crate) fn filter_gradient(du: &[f32], filters: usize, channels: usize, dwt: &mut [f32]) {
    let kc = filters * channels;
    by_lanes!(kc, |q, L| filter_gradient_tiles::<L>(
        du,
        (filters, channels),
        q,
        dwt
    ));
}

/// `Gᵀ dU G` of filter-channel pairs `q .. q + L` (`q = k·C + c`).
#[inline(always)]
fn filter_gradient_tiles<const L: usize>(
    du: &[f32],
    (filters, channels): (usize, usize),
    q: usize,
    dwt: &mut [f32],
) {
    let kc = filters * channels;
    let mut x = [[[0.0; L]; 4]; 4];
    for (i, row) in x.iter_mut().enumerate() {
        *row = ld4(du, 4 * i * kc + q, kc);
    }
    let g = two_d(&x, gt);
    for l in 0..L {
        let (k, c) = ((q + l) / channels, (q + l) % channels);
        for (i, row) in g.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                dwt[(c * 9 + 3 * i + j) * filters + k] = v[l];
            }
        }
    }
}

// The tile transforms run over an image's tiles `L` at a time, each of a tile's 16 (or 4)
// values one array of `L` lanes: the loops over lanes compile to vector operations.
// Tile `q = ty·TW + tx` reads the zero-padded input at rows `2ty + i` and columns
// `2tx + j` (`i, j < 4`), so the input is kept as phase planes ([`Phases`]): plane
// `(a, b, s)` holds the values at rows `2r + a` and columns `2(t + s) + b`, `TW` columns a
// row; value `(i, j)` of tile `q` is then at `q + (i / 2)·TW` of plane
// `(i mod 2, j mod 2, j / 2)`, and the same offset for every tile makes the reads of `L`
// consecutive tiles one contiguous run. The output side has four planes, `(i, j)` for
// `i, j < 2`, with value `(i, j)` of tile `q` at `q`.

type Lanes<const L: usize> = [f32; L];

#[inline(always)]
fn ld<const L: usize>(s: &[f32], at: usize) -> Lanes<L> {
    let mut a = [0.0; L];
    a.copy_from_slice(&s[at..at + L]);
    a
}

#[inline(always)]
fn st<const L: usize>(s: &mut [f32], at: usize, a: &Lanes<L>) {
    s[at..at + L].copy_from_slice(a);
}

#[inline(always)]
fn add_to<const L: usize>(s: &mut [f32], at: usize, a: &Lanes<L>) {
    for (d, v) in s[at..at + L].iter_mut().zip(a) {
        *d += v;
    }
}

/// `f` applied lane by lane to `N` arrays (one tile value each).
#[inline(always)]
fn lanes<const L: usize, const N: usize, const M: usize>(
    x: &[Lanes<L>; N],
    f: impl Fn([f32; N]) -> [f32; M],
) -> [Lanes<L>; M] {
    let mut out = [[0.0; L]; M];
    for l in 0..L {
        let mut v = [0.0; N];
        for (v, x) in v.iter_mut().zip(x) {
            *v = x[l];
        }
        for (o, y) in out.iter_mut().zip(f(v)) {
            o[l] = y;
        }
    }
    out
}

/// `f` along each row of the tile `x`, then along each column of the result, lane by
/// lane (`x[i][j]` holds value `(i, j)` of `L` tiles).
#[inline(always)]
fn two_d<const L: usize, const N: usize, const M: usize>(
    x: &[[Lanes<L>; N]; N],
    f: impl Fn([f32; N]) -> [f32; M] + Copy,
) -> [[Lanes<L>; M]; M] {
    let mut columns = [[[0.0; L]; N]; M];
    for (i, row) in x.iter().enumerate() {
        for (j, v) in lanes(row, f).into_iter().enumerate() {
            columns[j][i] = v;
        }
    }
    let mut out = [[[0.0; L]; M]; M];
    for (j, column) in columns.iter().enumerate() {
        for (i, v) in lanes(column, f).into_iter().enumerate() {
            out[i][j] = v;
        }
    }
    out
}

/// Four consecutive rows of tile values, `stride` apart in `s`, from `at`.
#[inline(always)]
fn ld4<const L: usize>(s: &[f32], at: usize, stride: usize) -> [Lanes<L>; 4] {
    [
        ld(s, at),
        ld(s, at + stride),
        ld(s, at + 2 * stride),
        ld(s, at + 3 * stride),
    ]
}

/// An image plane's eight phase planes, `(TH + 1) × TW` values each, and a row of the
/// zero-padded plane (`2·TW + 2` values) they are filled from and read back through.
struct Phases<'a> {
    planes: &'a mut [f32],
    row: &'a mut [f32],
    len: usize,
    tw: usize,
}

impl<'a> Phases<'a> {
    /// Phase planes over `scratch` (at least [`padded_plane`] values), all zero.
    #[inline(always)]
    fn new(scratch: &'a mut [f32], th: usize, tw: usize) -> Self {
        let len = (th + 1) * tw;
        let (planes, rest) = scratch.split_at_mut(8 * len);
        let row = &mut rest[..2 * tw + 2];
        planes.fill(0.0);
        row.fill(0.0);
        Phases {
            planes,
            row,
            len,
            tw,
        }
    }

    #[inline(always)]
    fn plane(&self, k: usize) -> &[f32] {
        &self.planes[k * self.len..][..self.len]
    }

    #[inline(always)]
    fn plane_mut(&mut self, k: usize) -> &mut [f32] {
        &mut self.planes[k * self.len..][..self.len]
    }

    /// Input-side plane `(a, b, s)`.
    #[inline(always)]
    fn input(a: usize, b: usize, s: usize) -> usize {
        4 * a + 2 * b + s
    }

    /// Row `r'` (`TW` values) of the four planes `(a, ·, ·)`, in the order `(b, s)` =
    /// `(0, 0), (0, 1), (1, 0), (1, 1)`.
    #[inline(always)]
    fn rows_mut(planes: &mut [f32], len: usize, a: usize, at: usize, tw: usize) -> [&mut [f32]; 4] {
        let quad = &mut planes[4 * a * len..][..4 * len];
        let (p0, rest) = quad.split_at_mut(len);
        let (p1, rest) = rest.split_at_mut(len);
        let (p2, p3) = rest.split_at_mut(len);
        [p0, p1, p2, p3].map(|p| &mut p[at..at + tw])
    }

    /// Row `r` of the padded plane, `line` from column `col` on (zero elsewhere, as
    /// every call writes the same columns), into the planes `(r mod 2, ·, ·)`.
    #[inline(always)]
    fn put_input_row(&mut self, r: usize, col: usize, line: &[f32]) {
        let tw = self.tw;
        self.row[col..col + line.len()].copy_from_slice(line);
        let [e0, e1, o0, o1] = Self::rows_mut(self.planes, self.len, r % 2, (r / 2) * tw, tw);
        for (s, (even, odd)) in [(e0, o0), (e1, o1)].into_iter().enumerate() {
            let pairs = self.row[2 * s..2 * s + 2 * tw].as_chunks::<2>().0;
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                *e = pair[0];
                *o = pair[1];
            }
        }
    }

    /// Row `r` of the padded plane, from column `col` on, into `line`: the values of
    /// planes `(r mod 2, ·, 0)` plus those of `(r mod 2, ·, 1)`, one column to the right.
    #[inline(always)]
    fn get_input_row(&mut self, r: usize, col: usize, line: &mut [f32]) {
        let tw = self.tw;
        let [e0, e1, o0, o1] = Self::rows_mut(self.planes, self.len, r % 2, (r / 2) * tw, tw);
        let row = &mut *self.row;
        row.fill(0.0);
        let pairs = row[..2 * tw].as_chunks_mut::<2>().0;
        for (pair, (e, o)) in pairs.iter_mut().zip(e0.iter().zip(o0.iter())) {
            *pair = [*e, *o];
        }
        let pairs = row[2..2 * tw + 2].as_chunks_mut::<2>().0;
        for (pair, (e, o)) in pairs.iter_mut().zip(e1.iter().zip(o1.iter())) {
            pair[0] += e;
            pair[1] += o;
        }
        line.copy_from_slice(&row[col..col + line.len()]);
    }
}

kernels::vectorized! {
    /// [`transform_input_in`] compiled for the running CPU.
    fn transform_input = transform_input_in(
        g: &Window,
        x: &[f32],
        first: usize,
        count: usize,
        v: &mut [f32],
        scratch: &mut [f32],
    );
}

/// The input tiles of images `first..first + count` of the block `x`, transformed:
/// `v` (`16 × C × P`, `P` = count · tiles). `scratch` holds [`padded_plane`] values.
#[inline(always)]
fn transform_input_in(
    g: &Window,
    x: &[f32],
    first: usize,
    count: usize,
    v: &mut [f32],
    scratch: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (plane, t) = (g.h * g.w, th * tw);
    let cp = g.channels * count * t;
    let mut d = Phases::new(scratch, th, tw);
    for c in 0..g.channels {
        for n in 0..count {
            let src = &x[(c * g.images + first + n) * plane..][..plane];
            for (iy, line) in src.chunks_exact(g.w.max(1)).enumerate() {
                d.put_input_row(iy + g.pad, g.pad, line);
            }
            let col = (c * count + n) * t;
            by_lanes!(t, |q, L| input_tiles::<L>(&d, q, v, cp, col + q));
        }
    }
}

/// `V = Bᵀ d B` of tiles `q .. q + L` into column `col` of the 16 rows of `v`.
#[inline(always)]
fn input_tiles<const L: usize>(d: &Phases<'_>, q: usize, v: &mut [f32], cp: usize, col: usize) {
    let mut x = [[[0.0; L]; 4]; 4];
    for (i, row) in x.iter_mut().enumerate() {
        let (a, at) = (i % 2, q + (i / 2) * d.tw);
        *row = [
            ld(d.plane(Phases::input(a, 0, 0)), at),
            ld(d.plane(Phases::input(a, 1, 0)), at),
            ld(d.plane(Phases::input(a, 0, 1)), at),
            ld(d.plane(Phases::input(a, 1, 1)), at),
        ];
    }
    for (i, row) in two_d(&x, bt).iter().enumerate() {
        for (j, o) in row.iter().enumerate() {
            st(v, (4 * i + j) * cp + col, o);
        }
    }
}

kernels::vectorized! {
    /// [`transform_output_in`] compiled for the running CPU.
    fn transform_output = transform_output_in(
        g: &Window,
        filters: usize,
        m: &[f32],
        first: usize,
        count: usize,
        y: &mut [f32],
        scratch: &mut [f32],
    );
}

/// `Y = Aᵀ M A` of the products `m` (`16 × K × P`) into images `first..first + count` of
/// the block `y` (`K × images × OH × OW`), dropping outputs past the edge.
#[inline(always)]
fn transform_output_in(
    g: &Window,
    filters: usize,
    m: &[f32],
    first: usize,
    count: usize,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (p, t) = (g.out_plane(), th * tw);
    let kp = filters * count * t;
    let staged = &mut scratch[..4 * t];
    for k in 0..filters {
        for n in 0..count {
            let col = (k * count + n) * t;
            by_lanes!(t, |q, L| output_tiles::<L>(m, kp, col + q, staged, t, q));
            let dst = &mut y[(k * g.images + first + n) * p..][..p];
            for (oy, line) in dst.chunks_exact_mut(g.ow.max(1)).enumerate() {
                let row = (oy / 2) * tw;
                for j in 0..2.min(line.len()) {
                    let src = &staged[(2 * (oy % 2) + j) * t + row..][..tw];
                    for (pair, s) in line[j..].chunks_mut(2).zip(src) {
                        pair[0] = *s;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` of tiles `q .. q + L`, read from column `col` of the 16 rows of `m`,
/// into the four output planes of `staged` (`t` values each).
#[inline(always)]
fn output_tiles<const L: usize>(
    m: &[f32],
    kp: usize,
    col: usize,
    staged: &mut [f32],
    t: usize,
    q: usize,
) {
    let mut x = [[[0.0; L]; 4]; 4];
    for (i, row) in x.iter_mut().enumerate() {
        *row = ld4(m, 4 * i * kp + col, kp);
    }
    for (i, row) in two_d(&x, at).iter().enumerate() {
        for (j, o) in row.iter().enumerate() {
            st(staged, (2 * i + j) * t + q, o);
        }
    }
}

kernels::vectorized! {
    /// [`transform_output_gradient_in`] compiled for the running CPU.
    fn transform_output_gradient = transform_output_gradient_in(
        g: &Window,
        filters: usize,
        dy: &[f32],
        first: usize,
        count: usize,
        dm: &mut [f32],
        scratch: &mut [f32],
    );
}

/// `dM = A dY Aᵀ`: the output gradient of images `first..first + count` of the block `dy`
/// as tile gradients `dm` (`16 × K × P`); outputs past the edge count as zero.
#[inline(always)]
fn transform_output_gradient_in(
    g: &Window,
    filters: usize,
    dy: &[f32],
    first: usize,
    count: usize,
    dm: &mut [f32],
    scratch: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (p, t) = (g.out_plane(), th * tw);
    let kp = filters * count * t;
    let staged = &mut scratch[..4 * t];
    // Only the image's own positions are rewritten below; those past the edge stay zero.
    staged.fill(0.0);
    for k in 0..filters {
        for n in 0..count {
            let src = &dy[(k * g.images + first + n) * p..][..p];
            for (oy, line) in src.chunks_exact(g.ow.max(1)).enumerate() {
                let row = (oy / 2) * tw;
                for j in 0..2.min(line.len()) {
                    let dst = &mut staged[(2 * (oy % 2) + j) * t + row..][..tw];
                    for (d, pair) in dst.iter_mut().zip(line[j..].chunks(2)) {
                        *d = pair[0];
                    }
                }
            }
            let col = (k * count + n) * t;
            by_lanes!(t, |q, L| output_gradient_tiles::<L>(
                staged,
                t,
                q,
                dm,
                kp,
                col + q
            ));
        }
    }
}

/// `dM = A dY Aᵀ` of tiles `q .. q + L`, from the four output planes of `staged`, into
/// column `col` of the 16 rows of `dm`.
#[inline(always)]
fn output_gradient_tiles<const L: usize>(
    staged: &[f32],
    t: usize,
    q: usize,
    dm: &mut [f32],
    kp: usize,
    col: usize,
) {
    let mut x = [[[0.0; L]; 2]; 2];
    for (i, row) in x.iter_mut().enumerate() {
        *row = [ld(staged, 2 * i * t + q), ld(staged, (2 * i + 1) * t + q)];
    }
    for (i, row) in two_d(&x, a).iter().enumerate() {
        for (j, o) in row.iter().enumerate() {
            st(dm, (4 * i + j) * kp + col, o);
        }
    }
}

kernels::vectorized! {
    /// [`transform_input_gradient_in`] compiled for the running CPU.
    fn transform_input_gradient = transform_input_gradient_in(
        g: &Window,
        dv: &[f32],
        first: usize,
        count: usize,
        dx: &mut [f32],
        scratch: &mut [f32],
    );
}

/// `dd = B dV Bᵀ` of the tile gradients `dv` (`16 × C × P`), summed where tiles overlap,
/// into images `first..first + count` of the block `dx`, overwriting them.
#[inline(always)]
fn transform_input_gradient_in(
    g: &Window,
    dv: &[f32],
    first: usize,
    count: usize,
    dx: &mut [f32],
    scratch: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (plane, t) = (g.h * g.w, th * tw);
    let cp = g.channels * count * t;
    let mut acc = Phases::new(scratch, th, tw);
    for c in 0..g.channels {
        for n in 0..count {
            acc.planes.fill(0.0);
            let col = (c * count + n) * t;
            by_lanes!(t, |q, L| input_gradient_tiles::<L>(
                dv,
                cp,
                col + q,
                &mut acc,
                q
            ));
            let dst = &mut dx[(c * g.images + first + n) * plane..][..plane];
            for (iy, line) in dst.chunks_exact_mut(g.w.max(1)).enumerate() {
                acc.get_input_row(iy + g.pad, g.pad, line);
            }
        }
    }
}

/// `dd = B dV Bᵀ` of tiles `q .. q + L`, read from column `col` of the 16 rows of `dv`,
/// added into the phase planes `acc`: the values tiles share are added one after the
/// other, never by two lanes at once.
#[inline(always)]
fn input_gradient_tiles<const L: usize>(
    dv: &[f32],
    cp: usize,
    col: usize,
    acc: &mut Phases<'_>,
    q: usize,
) {
    let mut x = [[[0.0; L]; 4]; 4];
    for (i, row) in x.iter_mut().enumerate() {
        *row = ld4(dv, 4 * i * cp + col, cp);
    }
    let tw = acc.tw;
    for (i, row) in two_d(&x, b).iter().enumerate() {
        for (j, o) in row.iter().enumerate() {
            let plane = acc.plane_mut(Phases::input(i % 2, j % 2, j / 2));
            add_to(plane, q + (i / 2) * tw, o);
        }
    }
}

/// Scratch of one block: transformed input `v`, products `m`, input-tile gradients `dv`,
/// filter-tile gradients `du` (`16 × K × C`), and a padded plane.
pub(crate) struct RunScratch<'a> {
    pub v: &'a mut [f32],
    pub m: &'a mut [f32],
    pub dv: &'a mut [f32],
    pub du: &'a mut [f32],
    pub padded: &'a mut [f32],
}

/// Forward pass of images `first..first + count` of a block: `y = conv(x)` without bias,
/// with `u` the transformed filters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_run(
    g: &Window,
    filters: usize,
    u: &[f32],
    x: &[f32],
    first: usize,
    count: usize,
    y: &mut [f32],
    s: &mut RunScratch<'_>,
) {
    let (th, tw) = tiles(g);
    let (c, p) = (g.channels, count * th * tw);
    transform_input(g, x, first, count, s.v, s.padded);
    for xi in 0..XI {
        kernels::matmul(
            MatMut::rows(&mut s.m[xi * filters * p..][..filters * p], filters, p),
            Mat::rows(&u[xi * filters * c..][..filters * c], filters, c),
            Mat::rows(&s.v[xi * c * p..][..c * p], c, p),
            false,
            false,
        );
    }
    transform_output(g, filters, s.m, first, count, y, s.padded);
}

/// Backward pass of images `first..first + count` of a block: adds the filter-tile
/// gradients to `s.du` (overwrites them when `accumulate` is false) and, with `dx`, writes
/// the input gradient of those images.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_run(
    g: &Window,
    filters: usize,
    u: &[f32],
    x: &[f32],
    dy: &[f32],
    first: usize,
    count: usize,
    dx: Option<&mut [f32]>,
    accumulate: bool,
    s: &mut RunScratch<'_>,
) {
    let (th, tw) = tiles(g);
    let (c, p) = (g.channels, count * th * tw);
    transform_input(g, x, first, count, s.v, s.padded);
    transform_output_gradient(g, filters, dy, first, count, s.m, s.padded);
    for xi in 0..XI {
        let dm = Mat::rows(&s.m[xi * filters * p..][..filters * p], filters, p);
        kernels::matmul(
            MatMut::rows(&mut s.du[xi * filters * c..][..filters * c], filters, c),
            dm,
            Mat::rows(&s.v[xi * c * p..][..c * p], c, p).t(),
            accumulate,
            false,
        );
        if dx.is_some() {
            kernels::matmul(
                MatMut::rows(&mut s.dv[xi * c * p..][..c * p], c, p),
                Mat::rows(&u[xi * filters * c..][..filters * c], filters, c).t(),
                dm,
                false,
                false,
            );
        }
    }
    if let Some(dx) = dx {
        transform_input_gradient(g, s.dv, first, count, dx, s.padded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    /// Direct 3×3 convolution of a block (`C × images × H × W`) and its gradients for the
    /// output gradient `dy`, in f64: `(y, dx, dw)` with `dw` laid out like the weights.
    fn direct(g: &Window, k: usize, w: &[f32], x: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let mut y = vec![0.0f64; k * g.images * g.out_plane()];
        let (mut dx, mut dw) = (vec![0.0f64; x.len()], vec![0.0f64; w.len()]);
        for f in 0..k {
            for n in 0..g.images {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let o = ((f * g.images + n) * g.oh + oy) * g.ow + ox;
                        for c in 0..g.channels {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (
                                        (oy + ky).wrapping_sub(g.pad),
                                        (ox + kx).wrapping_sub(g.pad),
                                    );
                                    if iy >= g.h || ix >= g.w {
                                        continue;
                                    }
                                    let xi = ((c * g.images + n) * g.h + iy) * g.w + ix;
                                    let wi = ((f * g.channels + c) * 3 + ky) * 3 + kx;
                                    y[o] += f64::from(w[wi]) * f64::from(x[xi]);
                                    dx[xi] += f64::from(w[wi]) * f64::from(dy[o]);
                                    dw[wi] += f64::from(x[xi]) * f64::from(dy[o]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn max_err(got: impl Iterator<Item = f32>, want: &[f64]) -> f64 {
        got.zip(want)
            .map(|(a, b)| (f64::from(a) - b).abs())
            .map(|d| if d.is_nan() { f64::INFINITY } else { d })
            .fold(0.0, f64::max)
    }

    fn geometry(images: usize, channels: usize, h: usize, w: usize, pad: usize) -> Window {
        Window {
            channels,
            images,
            h,
            w,
            oh: h + 2 * pad - 2,
            ow: w + 2 * pad - 2,
            kernel: 3,
            stride: 1,
            pad,
            dilation: 1,
        }
    }

    struct Bufs {
        v: Vec<f32>,
        m: Vec<f32>,
        dv: Vec<f32>,
        du: Vec<f32>,
        padded: Vec<f32>,
    }

    impl Bufs {
        fn new(g: &Window, k: usize) -> Self {
            let (vn, mn) = run_values(g, k, g.images);
            Bufs {
                v: vec![0.0; vn],
                m: vec![0.0; mn],
                dv: vec![0.0; vn],
                du: vec![0.0; XI * k * g.channels],
                padded: vec![0.0; padded_plane(g)],
            }
        }
        fn scratch(&mut self) -> RunScratch<'_> {
            RunScratch {
                v: &mut self.v,
                m: &mut self.m,
                dv: &mut self.dv,
                du: &mut self.du,
                padded: &mut self.padded,
            }
        }
    }

    /// Forward and backward passes equal the direct convolution and its gradients, in
    /// runs of any length, for even and odd outputs (edge tiles), with and without padding.
    #[test]
    fn winograd_matches_the_direct_convolution_and_its_gradients() {
        let cases = [
            (3, 4, 8, 8, 1, 5, 2),
            (2, 3, 7, 9, 1, 2, 1),
            (2, 2, 6, 5, 0, 3, 2),
            (1, 16, 4, 4, 1, 16, 1),
            (3, 2, 3, 3, 0, 2, 3),
            // Longer rows of tiles, of even and odd outputs.
            (2, 3, 16, 17, 1, 2, 1),
            (1, 2, 20, 18, 0, 3, 1),
        ];
        for (images, c, h, w, pad, k, run) in cases {
            let g = geometry(images, c, h, w, pad);
            let (wt, x) = (rand_vec(k * c * 9, 1), rand_vec(c * images * h * w, 2));
            let dy = rand_vec(k * images * g.out_plane(), 3);
            let mut u = vec![0.0; XI * k * c];
            transform_filters(&wt, k, c, &mut u);
            let mut y = vec![0.0; dy.len()];
            let mut dx = vec![f32::NAN; x.len()];
            let mut b = Bufs::new(&g, k);
            for first in (0..images).step_by(run) {
                let count = run.min(images - first);
                forward_run(&g, k, &u, &x, first, count, &mut y, &mut b.scratch());
                backward_run(
                    &g,
                    k,
                    &u,
                    &x,
                    &dy,
                    first,
                    count,
                    Some(&mut dx),
                    first > 0,
                    &mut b.scratch(),
                );
            }
            let mut dwt = vec![0.0; c * 9 * k];
            filter_gradient(&b.du, k, c, &mut dwt);
            let dw = (0..k * c * 9).map(|i| dwt[(i % (c * 9)) * k + i / (c * 9)]);
            let [want_y, want_dx, want_dw] = direct(&g, k, &wt, &x, &dy);
            let case = format!("{images}×{c}×{h}×{w} pad {pad}, {k} filters, runs of {run}");
            let errs = [
                max_err(y.into_iter(), &want_y),
                max_err(dx.into_iter(), &want_dx),
                max_err(dw, &want_dw),
            ];
            assert!(
                errs.iter().all(|e| *e < 1e-4),
                "{case}: max errors y, dx, dw {errs:?}"
            );
        }
    }

    /// `auto`'s rule on the shapes it was measured on: ResNet-20's third stage and
    /// cifar32's wide convolutions run as Winograd; ResNet-20's first and second stages,
    /// alexnet-s3's and alexnet-s4's convolutions and the 4 × 4 maps of ResNet-8 and
    /// bn-cnn do not.
    #[test]
    fn auto_runs_winograd_on_wide_layers_of_large_maps() {
        assert!(pays(&geometry(8, 64, 8, 8, 1), 64));
        assert!(pays(&geometry(8, 64, 16, 16, 1), 128));
        assert!(pays(&geometry(8, 128, 8, 8, 1), 256));
        assert!(!pays(&geometry(8, 32, 16, 16, 1), 32));
        assert!(!pays(&geometry(8, 48, 15, 15, 1), 32));
        assert!(!pays(&geometry(8, 16, 32, 32, 1), 16));
        assert!(!pays(&geometry(8, 24, 15, 15, 1), 24));
        assert!(!pays(&geometry(8, 32, 4, 4, 1), 64));
        assert!(!pays(&geometry(8, 32, 4, 4, 1), 32));
    }

    /// `auto`'s forward rule where the products run AVX2: ResNet-20's second stage,
    /// alexnet-s3's last three layers and small32's last run forward as Winograd too;
    /// ResNet-20's first stage and 4 × 4 maps do not. With AVX-512 (or no vector) products
    /// the forward rule adds nothing to the backward's.
    #[test]
    fn auto_runs_the_forward_pass_as_winograd_from_32_channels_with_avx2_products() {
        let stage2 = geometry(8, 32, 16, 16, 1);
        assert!(pays_forward(&stage2, 32, Simd::Avx2));
        assert!(pays_forward(&geometry(8, 32, 15, 15, 1), 48, Simd::Avx2));
        assert!(pays_forward(&geometry(8, 48, 15, 15, 1), 32, Simd::Avx2));
        assert!(pays_forward(&geometry(8, 32, 8, 8, 1), 48, Simd::Avx2));
        assert!(!pays_forward(&geometry(8, 16, 32, 32, 1), 16, Simd::Avx2));
        assert!(!pays_forward(&geometry(8, 24, 15, 15, 1), 24, Simd::Avx2));
        assert!(!pays_forward(&geometry(8, 32, 4, 4, 1), 64, Simd::Avx2));
        for products in [Simd::Avx512, Simd::Baseline] {
            assert!(!pays_forward(&stage2, 32, products));
            assert!(!pays_forward(&geometry(8, 64, 8, 8, 1), 64, products));
        }
    }
}
