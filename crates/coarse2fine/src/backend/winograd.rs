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

use super::kernels::{self, Mat, MatMut, SwitchMode, Window};

/// The environment variable that turns Winograd convolutions on (`on`; `off`, the
/// default, keeps every convolution unfolded). They are off by default because they are
/// slower than the unfolded convolution as they stand (docs/performance.md).
pub const WINOGRAD_ENV: &str = "C2F_WINOGRAD";

/// Whether `C2F_WINOGRAD` turns Winograd convolutions on; an unknown value is an error.
pub fn winograd_requested() -> Result<bool, String> {
    SWITCH.requested().map(|m| m == SwitchMode::On)
}

/// Positions of a 4×4 tile.
pub(crate) const XI: usize = 16;

/// Fewest input channels and filters for a Winograd convolution: with fewer, the 16
/// products are too small to run near the machine's speed.
const MIN_CHANNELS: usize = 16;

static SWITCH: kernels::Switch = kernels::Switch::new(WINOGRAD_ENV, SwitchMode::Off);

fn enabled() -> bool {
    SWITCH.mode() == SwitchMode::On
}

/// Turns Winograd convolutions on for the nets built after it, whatever the environment
/// says: the engine's tests run with them on.
#[cfg(test)]
pub(crate) fn force_on() {
    SWITCH.force_on();
}

/// Whether a convolution runs as Winograd F(2×2, 3×3): a 3×3 window, stride 1, no
/// dilation, and enough channels and filters.
pub(crate) fn applies(g: &Window, filters: usize) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.dilation == 1
        && g.channels >= MIN_CHANNELS
        && filters >= MIN_CHANNELS
        && enabled()
}

/// Tiles per image: rows, columns.
pub(crate) fn tiles(g: &Window) -> (usize, usize) {
    (g.oh.div_ceil(2), g.ow.div_ceil(2))
}

/// Values of the zero-padded input plane the tiles read: `(2·TH + 2) × (2·TW + 2)`.
pub(crate) fn padded_plane(g: &Window) -> usize {
    let (th, tw) = tiles(g);
    (2 * th + 2) * (2 * tw + 2)
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

/// `f` along each row of `x`, then along each column of the result.
#[inline(always)]
fn two_d<const N: usize, const M: usize>(
    x: [[f32; N]; N],
    f: impl Fn([f32; N]) -> [f32; M],
) -> [[f32; M]; M] {
    let mut rows = [[0.0; M]; N];
    for i in 0..N {
        rows[i] = f(x[i]);
    }
    let mut out = [[0.0; M]; M];
    for j in 0..M {
        let col = f(std::array::from_fn(|i| rows[i][j]));
        for i in 0..M {
            out[i][j] = col[i];
        }
    }
    out
}

/// `U[ξ] (K × C) = G g Gᵀ` of every filter of `wt` (`K × C × 3 × 3`) into `u`
/// (`16 × K × C`).
pub(crate) fn transform_filters(wt: &[f32], filters: usize, channels: usize, u: &mut [f32]) {
    let kc = filters * channels;
    for (f, g) in wt[..kc * 9].chunks_exact(9).enumerate() {
        let t = two_d(
            [[g[0], g[1], g[2]], [g[3], g[4], g[5]], [g[6], g[7], g[8]]],
            gm,
        );
        for (xi, v) in t.iter().flatten().enumerate() {
            u[xi * kc + f] = *v;
        }
    }
}

/// `dg = Gᵀ dU G` of `du` (`16 × K × C`) into the transposed weight gradient `dwt`
/// (`C·9 × K`, the layout the engine sums blocks in).
pub(crate) fn filter_gradient(du: &[f32], filters: usize, channels: usize, dwt: &mut [f32]) {
    let kc = filters * channels;
    for f in 0..kc {
        let d: [[f32; 4]; 4] =
            std::array::from_fn(|i| std::array::from_fn(|j| du[(4 * i + j) * kc + f]));
        let g = two_d(d, gt);
        let (k, c) = (f / channels, f % channels);
        for (j, v) in g.iter().flatten().enumerate() {
            dwt[(c * 9 + j) * filters + k] = *v;
        }
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
        padded: &mut [f32],
    );
}

/// The input tiles of images `first..first + count` of the block `x`, transformed:
/// `v` (`16 × C × P`, `P` = count · tiles). `padded` holds [`padded_plane`] values.
#[inline(always)]
fn transform_input_in(
    g: &Window,
    x: &[f32],
    first: usize,
    count: usize,
    v: &mut [f32],
    padded: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (plane, wp, t) = (g.h * g.w, 2 * tw + 2, th * tw);
    let cp = g.channels * count * t;
    let padded = &mut padded[..padded_plane(g)];
    padded.fill(0.0);
    for c in 0..g.channels {
        for n in 0..count {
            let src = &x[(c * g.images + first + n) * plane..][..plane];
            for (iy, line) in src.chunks_exact(g.w).enumerate() {
                padded[(iy + g.pad) * wp + g.pad..][..g.w].copy_from_slice(line);
            }
            let col0 = (c * count + n) * t;
            for ty in 0..th {
                for tx in 0..tw {
                    let o = 2 * ty * wp + 2 * tx;
                    let d: [[f32; 4]; 4] =
                        std::array::from_fn(|i| std::array::from_fn(|j| padded[o + i * wp + j]));
                    let tile = two_d(d, bt);
                    let col = col0 + ty * tw + tx;
                    for (xi, val) in tile.iter().flatten().enumerate() {
                        v[xi * cp + col] = *val;
                    }
                }
            }
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
) {
    let (th, tw) = tiles(g);
    let (p, t) = (g.out_plane(), th * tw);
    let kp = filters * count * t;
    for k in 0..filters {
        for n in 0..count {
            let dst = &mut y[(k * g.images + first + n) * p..][..p];
            let col0 = (k * count + n) * t;
            for ty in 0..th {
                for tx in 0..tw {
                    let col = col0 + ty * tw + tx;
                    let mm: [[f32; 4]; 4] =
                        std::array::from_fn(|i| std::array::from_fn(|j| m[(4 * i + j) * kp + col]));
                    let out = two_d(mm, at);
                    for (i, row) in out.iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            let (oy, ox) = (2 * ty + i, 2 * tx + j);
                            if oy < g.oh && ox < g.ow {
                                dst[oy * g.ow + ox] = *val;
                            }
                        }
                    }
                }
            }
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
) {
    let (th, tw) = tiles(g);
    let (p, t) = (g.out_plane(), th * tw);
    let kp = filters * count * t;
    for k in 0..filters {
        for n in 0..count {
            let src = &dy[(k * g.images + first + n) * p..][..p];
            let col0 = (k * count + n) * t;
            for ty in 0..th {
                for tx in 0..tw {
                    let at_ = |i: usize, j: usize| {
                        let (oy, ox) = (2 * ty + i, 2 * tx + j);
                        if oy < g.oh && ox < g.ow {
                            src[oy * g.ow + ox]
                        } else {
                            0.0
                        }
                    };
                    let d = [[at_(0, 0), at_(0, 1)], [at_(1, 0), at_(1, 1)]];
                    let tile = two_d(d, a);
                    let col = col0 + ty * tw + tx;
                    for (xi, val) in tile.iter().flatten().enumerate() {
                        dm[xi * kp + col] = *val;
                    }
                }
            }
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
        padded: &mut [f32],
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
    padded: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (plane, wp, t) = (g.h * g.w, 2 * tw + 2, th * tw);
    let cp = g.channels * count * t;
    let acc = &mut padded[..padded_plane(g)];
    for c in 0..g.channels {
        for n in 0..count {
            acc.fill(0.0);
            let col0 = (c * count + n) * t;
            for ty in 0..th {
                for tx in 0..tw {
                    let col = col0 + ty * tw + tx;
                    let d: [[f32; 4]; 4] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| dv[(4 * i + j) * cp + col])
                    });
                    let tile = two_d(d, b);
                    let o = 2 * ty * wp + 2 * tx;
                    for (i, row) in tile.iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            acc[o + i * wp + j] += val;
                        }
                    }
                }
            }
            let dst = &mut dx[(c * g.images + first + n) * plane..][..plane];
            for (iy, line) in dst.chunks_exact_mut(g.w).enumerate() {
                line.copy_from_slice(&acc[(iy + g.pad) * wp + g.pad..][..g.w]);
            }
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
    transform_output(g, filters, s.m, first, count, y);
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
    transform_output_gradient(g, filters, dy, first, count, s.m);
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
}
