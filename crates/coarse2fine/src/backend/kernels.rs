//! CPU kernels of the native engine: matrix products on the `gemm` crate, and the
//! convolution, pooling and normalisation loops around them.
//!
//! The engine splits a batch into blocks of images and runs each block on one thread, so
//! these kernels are sequential and work on one block: feature maps laid out
//! `C × n × H × W` for the block's `n` images. In that layout a convolution over a run of
//! the block's images is one matrix product `[C_out × K] · [K × images·OH·OW]` whose
//! result lands in place in the next block, with no transposition.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Instruction sets the engine's own loops (unfolding, pooling, LRN, ReLU masks, the SGD
/// update) can be compiled for; one is chosen at start-up for the running CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// What every x86-64 CPU has (SSE2), or the target's baseline elsewhere.
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/CD/DQ/VL (x86-64-v4).
    Avx512,
}

impl Simd {
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// The environment variable that caps the instruction set of the engine's own loops, so
/// that a narrower CPU can be measured on a wider one: `avx512`, `avx2` or `baseline`.
/// It cannot widen what the CPU has. The matrix products follow the `gemm` crate's own
/// detection; a build without the `avx512` feature keeps them to AVX2.
pub const SIMD_ENV: &str = "C2F_SIMD";

/// The instruction set `C2F_SIMD` asks for, if it is set; an unknown value is an error.
pub fn simd_requested() -> Result<Option<Simd>, String> {
    let Ok(v) = std::env::var(SIMD_ENV) else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "avx512" => Ok(Some(Simd::Avx512)),
        "avx2" => Ok(Some(Simd::Avx2)),
        "baseline" | "scalar" | "sse2" => Ok(Some(Simd::Baseline)),
        other => Err(format!(
            "{SIMD_ENV}={other:?} is not an instruction set: use avx512, avx2 or baseline"
        )),
    }
}

fn arch() -> (Simd, pulp::Arch) {
    static ARCH: OnceLock<(Simd, pulp::Arch)> = OnceLock::new();
    *ARCH.get_or_init(|| {
        let cap = simd_requested().ok().flatten().unwrap_or(Simd::Avx512);
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            #[cfg(feature = "avx512")]
            if cap == Simd::Avx512
                && let Some(v4) = pulp::x86::V4::try_new()
            {
                return (Simd::Avx512, pulp::Arch::V4(v4));
            }
            if cap != Simd::Baseline
                && let Some(v3) = pulp::x86::V3::try_new()
            {
                return (Simd::Avx2, pulp::Arch::V3(v3));
            }
        }
        (Simd::Baseline, pulp::Arch::Scalar)
    })
}

/// A setting of one of the engine's switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMode {
    Off,
    On,
    /// On for the layers where the switch's own rule expects it to pay.
    Auto,
}

impl SwitchMode {
    pub fn name(self) -> &'static str {
        match self {
            SwitchMode::Off => "off",
            SwitchMode::On => "on",
            SwitchMode::Auto => "auto",
        }
    }
}

/// A switch of the engine read from an environment variable (`on` or `1`, `off` or `0`,
/// and `auto` where the switch has a rule), once per process.
pub(crate) struct Switch {
    name: &'static str,
    /// The mode when the variable is unset; `auto` is accepted only if it is `Auto`.
    default: SwitchMode,
    /// 0: not read yet, else 1 + the index of the mode in [`Switch::MODES`].
    mode: AtomicU8,
}

impl Switch {
    const MODES: [SwitchMode; 3] = [SwitchMode::Off, SwitchMode::On, SwitchMode::Auto];

    pub(crate) const fn new(name: &'static str, default: SwitchMode) -> Self {
        Self {
            name,
            default,
            mode: AtomicU8::new(0),
        }
    }

    /// The mode the variable asks for; an unknown value is an error.
    pub(crate) fn requested(&self) -> Result<SwitchMode, String> {
        let Ok(v) = std::env::var(self.name) else {
            return Ok(self.default);
        };
        let auto = self.default == SwitchMode::Auto;
        match v.trim().to_ascii_lowercase().as_str() {
            "on" | "1" => Ok(SwitchMode::On),
            "off" | "0" => Ok(SwitchMode::Off),
            "auto" if auto => Ok(SwitchMode::Auto),
            other if auto => Err(format!("{}={other:?}: use on, off or auto", self.name)),
            other => Err(format!("{}={other:?}: use on or off", self.name)),
        }
    }

    /// The mode of this process (an unknown value, refused at start-up, counts as the
    /// default).
    pub(crate) fn mode(&self) -> SwitchMode {
        match self.mode.load(Ordering::Relaxed) {
            0 => {
                let m = self.requested().unwrap_or(self.default);
                self.set(m);
                m
            }
            i => Self::MODES[usize::from(i - 1).min(2)],
        }
    }

    /// Whether a layer the switch can apply to runs with it: never (`off`), always (`on`),
    /// or where the switch's rule `pays` (`auto`).
    pub(crate) fn chooses(&self, pays: impl FnOnce() -> bool) -> bool {
        match self.mode() {
            SwitchMode::Off => false,
            SwitchMode::On => true,
            SwitchMode::Auto => pays(),
        }
    }

    fn set(&self, m: SwitchMode) {
        let i = Self::MODES.iter().position(|&x| x == m).unwrap_or(0);
        self.mode.store(i as u8 + 1, Ordering::Relaxed);
    }

    /// Turns the switch on for the nets built after it, whatever the environment says:
    /// the engine's tests run with it on.
    #[cfg(test)]
    pub(crate) fn force_on(&self) {
        self.set(SwitchMode::On);
    }
}

/// The instruction set the engine's own loops run with in this process.
pub fn simd() -> Simd {
    arch().0
}

/// Single-precision GFLOP/s of this thread running fused multiply-adds from registers, in
/// the instruction set chosen at start-up: the core's arithmetic ceiling as it runs now,
/// at the clock it really runs at (which a virtual machine may not report) and with the
/// width its units really execute (Zen 4 runs each AVX-512 operation as two halves). The
/// best of five bursts of a few milliseconds.
pub fn measured_peak_gflops() -> f64 {
    (0..5)
        .map(|_| dispatch(FmaBurst { rounds: 2_000_000 }))
        .fold(0.0, f64::max)
}

/// [`measured_peak_gflops`]'s burst: `rounds` times, one multiply-add on each of ten
/// independent accumulators — more chains than two units with a latency of four cycles
/// keep busy, and with the two operands few enough for AVX2's 16 registers.
struct FmaBurst {
    rounds: usize,
}

impl pulp::WithSimd for FmaBurst {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f64 {
        let x = simd.splat_f32s(std::hint::black_box(0.999_999));
        let y = simd.splat_f32s(std::hint::black_box(1e-7));
        let mut acc = [[simd.splat_f32s(1.0); 5]; 2];
        let start = std::time::Instant::now();
        for _ in 0..self.rounds {
            for half in acc.iter_mut() {
                for a in half.iter_mut() {
                    *a = simd.mul_add_f32s(*a, x, y);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(&acc);
        (self.rounds * 10 * S::F32_LANES * 2) as f64 / secs.max(1e-9) / 1e9
    }
}

/// The instruction set of the matrix products: `gemm` picks its widest kernels for the
/// CPU, AVX-512 only when built with the `avx512` feature.
pub fn gemm_simd() -> Simd {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}

/// Calls `$f`, an `#[inline(always)]` function, from a copy compiled for the instruction
/// set chosen at start-up: its loops are vectorised for the running CPU while the binary
/// still runs on any x86-64. The arguments are written with their types because each copy
/// is a function of its own; a closure handed to `pulp` would do without them, but its
/// body is compiled out of line, for the baseline. Element-wise loops give the same bits
/// on every instruction set, as the compiler neither reorders floating-point sums nor
/// fuses multiplications and additions.
///
/// Two forms: `vectorized!(name_in(a: A, b: B))` is the call, for a loop inside a longer
/// function, and
///
/// ```text
/// vectorized! {
///     /// What `name` does.
///     pub(crate) fn name = name_in(a: A, b: B);
/// }
/// ```
///
/// defines `name`, with `name_in`'s signature, as that call.
macro_rules! vectorized {
    ($(#[$m:meta])* $vis:vis fn $name:ident = $f:ident($($arg:ident: $ty:ty),* $(,)?)
        $(-> $ret:ty)?;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $crate::backend::kernels::vectorized!($f($($arg: $ty),*) $(-> $ret)?)
        }
    };
    ($f:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            use $crate::backend::kernels::Simd;
            #[target_feature(enable = "popcnt,avx,avx2,bmi1,bmi2,fma,lzcnt,\
                avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
            #[allow(clippy::too_many_arguments)]
            fn v4($($arg: $ty),*) $(-> $ret)? {
                $f($($arg),*)
            }
            #[target_feature(enable = "popcnt,avx,avx2,bmi1,bmi2,fma,lzcnt")]
            #[allow(clippy::too_many_arguments)]
            fn v3($($arg: $ty),*) $(-> $ret)? {
                $f($($arg),*)
            }
            #[allow(unsafe_code)]
            match $crate::backend::kernels::simd() {
                // SAFETY: `simd()` picks an instruction set only after detecting it.
                Simd::Avx512 => unsafe { v4($($arg),*) },
                // SAFETY: as above.
                Simd::Avx2 => unsafe { v3($($arg),*) },
                Simd::Baseline => $f($($arg),*),
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        {
            $f($($arg),*)
        }
    }};
}
pub(crate) use vectorized;

/// Runs `op.with_simd` inlined into a function compiled for the instruction set chosen
/// at start-up, with `pulp`'s vector types for that set: for kernels written with explicit
/// vector registers.
#[inline(always)]
pub(crate) fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    arch().1.dispatch(op)
}

/// Partial sums of [`sum`]: value `i` goes to partial sum `i mod SUM_LANES`, and the
/// partials are added pairwise in a fixed order, so the result is the same whatever vector
/// width the loop was compiled for, and no single chain of dependent additions sets the
/// pace.
const SUM_LANES: usize = 16;

vectorized! {
    /// `Σ xs` in `f32`.
    pub(crate) fn sum = sum_in(xs: &[f32]) -> f32;
}

#[inline(always)]
fn sum_in(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; SUM_LANES];
    let (whole, tail) = xs.as_chunks::<SUM_LANES>();
    for c in whole {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    add_lanes(acc)
}

vectorized! {
    /// Replaces each value `v` of `xs` by `e^(v − shift)` ([`exp`]) and returns their sum
    /// (partial sums as in [`sum`]): a softmax's numerators and denominator in one pass.
    pub(crate) fn exp_sum = exp_sum_in(xs: &mut [f32], shift: f32) -> f32;
}

#[inline(always)]
fn exp_sum_in(xs: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; SUM_LANES];
    let (whole, tail) = xs.as_chunks_mut::<SUM_LANES>();
    for c in whole {
        for (a, v) in acc.iter_mut().zip(c) {
            *v = exp(*v - shift);
            *a += *v;
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *v = exp(*v - shift);
        *a += *v;
    }
    add_lanes(acc)
}

/// `e^x` in `f32` within 2 units in the last place (Cephes' `expf`: `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`, then the exponent bits), written in
/// plain arithmetic so that a loop of it vectorises: the standard library's `exp` is a
/// call per value, which in a 1000-class softmax took a fifth of a small net's training
/// step. Fused multiply-adds and `floor` are exact IEEE operations, so the bits are the
/// same on every instruction set. Below `−87.34` (where `e^x` is no longer a normal
/// number) the result is 0, above `88.72` infinite, and NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first with few enough bits that `n · LN2_HI` is exact;
    // the coefficients are Cephes' rounded to `f32`.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_66,
        0.5,
    ] {
        p = p.mul_add(r, c);
    }
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2ⁿ from its exponent bits; n lies in −126..=128 wherever the result is used, and
    // 2¹²⁸ (past the largest exponent) is applied as 2 · 2¹²⁷.
    let scale = f32::from_bits(((n.clamp(-126.0, 127.0) as i32 + 127) as u32) << 23);
    let y = (e * if n > 127.0 { 2.0 } else { 1.0 }) * scale;
    if x < -87.336_55 {
        0.0
    } else if x > 88.722_84 {
        f32::INFINITY
    } else {
        y
    }
}

/// The total of partial sums (a power of two of them), added pairwise in a fixed order.
#[inline(always)]
pub(crate) fn add_lanes<T: Copy + std::ops::AddAssign, const N: usize>(mut acc: [T; N]) -> T {
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            let v = acc[i + n];
            acc[i] += v;
        }
    }
    acc[0]
}

/// A strided view of a `rows × cols` matrix starting at `data[0]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows × cols`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows of `cols` values, `rs` apart.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix, without copying.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }

    /// The transpose of this view.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// The destination of a product: `rows × cols`, stored with strides `rs`, `cs`.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatMut<'a> {
    /// Row-major `rows × cols`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows of `cols` values, `rs` apart.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// A `rows × cols` matrix stored column-major (its transpose is row-major).
    #[cfg(test)]
    pub fn columns(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
}

/// `dst ← (accumulate ? dst : 0) + a · b`. `parallel` lets the product use all of
/// rayon's threads; the engine passes `false` inside work that is already split across
/// threads.
///
/// # Panics
/// If the shapes do not agree or a view reaches past its slice: callers derive all
/// shapes from one validated spec, so a mismatch is a bug, not bad input.
#[allow(unsafe_code)]
pub(crate) fn matmul(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.rows == m && dst.cols == n,
        "matmul: shapes differ"
    );
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst.rs + (n - 1) * dst.cs < dst.data.len();
    assert!(
        dst_fits && a.fits() && b.fits(),
        "matmul: view out of bounds"
    );
    // Distinct positions of `dst` must not overlap, or the product would race with itself.
    // A stride along a dimension of length 1 is never used, so only the others count.
    assert!(
        distinct_positions(m, n, dst.rs, dst.cs),
        "matmul: destination overlaps itself"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index the product touches: `dst` holds the
    // `m × n` result at non-overlapping positions and each operand view lies inside its
    // slice. `dst` is a unique borrow, so it cannot alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether `i·rs + j·cs` differs for every `i < m`, `j < n`.
fn distinct_positions(m: usize, n: usize, rs: usize, cs: usize) -> bool {
    match (m <= 1, n <= 1) {
        (true, true) => true,
        (true, false) => cs >= 1,
        (false, true) => rs >= 1,
        (false, false) => rs != cs && (rs >= n * cs || cs >= m * rs),
    }
}

/// Geometry of a convolution or pooling window over one block of `C × n × H × W` maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub channels: usize,
    /// Images in the block.
    pub images: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub dilation: usize,
}

impl Window {
    /// Rows of the unfolded input: one per (channel, ky, kx).
    pub fn col_rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Output positions per image.
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Without padding, and with every window inside the map, no position needs a check.
    fn inside(&self) -> bool {
        let span = (self.kernel - 1) * self.dilation;
        self.pad == 0
            && (self.oh.max(1) - 1) * self.stride + span < self.h
            && (self.ow.max(1) - 1) * self.stride + span < self.w
    }

    /// Input row (or column) read by output `o` at kernel offset `k`, if inside the map.
    fn source(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(self.pad)
            .filter(|&i| i < size)
    }
}

/// `dst[c·dst_stride + r] = src[r·src_stride + c]` for `r < rows`, `c < cols`: a matrix
/// moved between a row-major and a column-major layout, each with its own stride (the
/// direct convolutions' filter-major maps and their position-major copies). Element by
/// element every value is a load and a store of its own, which cost a direct weight
/// gradient of 16 filters as much as a third of its time; whole 8 × 8 tiles instead go
/// through AVX registers (8 loads, 24 shuffles and 8 stores for 64 values). The edges go
/// element by element, writing `dst` in order.
pub(crate) fn transpose(
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: &mut [f32],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() >= (rows - 1) * src_stride + cols && dst.len() >= (cols - 1) * dst_stride + rows,
        "transpose: a {rows} × {cols} matrix does not fit its buffers"
    );
    let tiled = cfg!(target_arch = "x86_64") && simd() != Simd::Baseline;
    let (r8, c8) = if tiled {
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    if r8 > 0 && c8 > 0 {
        #[allow(unsafe_code)]
        // SAFETY: `simd()` chooses AVX2 or AVX-512, which both include AVX, only after
        // detecting them.
        unsafe {
            transpose_tiles(src, src_stride, (r8, c8), dst, dst_stride)
        };
    }
    for c in 0..cols {
        let first = if c < c8 { r8 } else { 0 };
        for r in first..rows {
            dst[c * dst_stride + r] = src[r * src_stride + c];
        }
    }
}

/// [`transpose`]'s whole 8 × 8 tiles (`rows` and `cols` multiples of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[allow(unsafe_code)]
fn transpose_tiles(
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: &mut [f32],
    dst_stride: usize,
) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    for r in (0..rows).step_by(8) {
        for c in (0..cols).step_by(8) {
            let mut x = [_mm256_setzero_ps(); 8];
            for (i, xi) in x.iter_mut().enumerate() {
                let from = &src[(r + i) * src_stride + c..][..8];
                // SAFETY: `from` holds the 8 values read.
                *xi = unsafe { _mm256_loadu_ps(from.as_ptr()) };
            }
            for (j, v) in transpose8(x).into_iter().enumerate() {
                let to = &mut dst[(c + j) * dst_stride + r..][..8];
                // SAFETY: `to` holds the 8 values written.
                unsafe { _mm256_storeu_ps(to.as_mut_ptr(), v) };
            }
        }
    }
}

/// Rows of an 8 × 8 matrix in, its columns out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn transpose8(x: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::{
        _mm256_permute2f128_ps as lanes, _mm256_shuffle_ps as pick, _mm256_unpackhi_ps as hi,
        _mm256_unpacklo_ps as lo,
    };
    // Pairs of rows interleaved, then pairs of pairs: each 128-bit half then holds four
    // values of one column (columns j and j + 4 in a register's two halves), and the
    // halves are regrouped.
    let t = [
        lo(x[0], x[1]),
        hi(x[0], x[1]),
        lo(x[2], x[3]),
        hi(x[2], x[3]),
        lo(x[4], x[5]),
        hi(x[4], x[5]),
        lo(x[6], x[7]),
        hi(x[6], x[7]),
    ];
    let u = [
        pick::<0x44>(t[0], t[2]),
        pick::<0xEE>(t[0], t[2]),
        pick::<0x44>(t[1], t[3]),
        pick::<0xEE>(t[1], t[3]),
        pick::<0x44>(t[4], t[6]),
        pick::<0xEE>(t[4], t[6]),
        pick::<0x44>(t[5], t[7]),
        pick::<0xEE>(t[5], t[7]),
    ];
    [
        lanes::<0x20>(u[0], u[4]),
        lanes::<0x20>(u[1], u[5]),
        lanes::<0x20>(u[2], u[6]),
        lanes::<0x20>(u[3], u[7]),
        lanes::<0x31>(u[0], u[4]),
        lanes::<0x31>(u[1], u[5]),
        lanes::<0x31>(u[2], u[6]),
        lanes::<0x31>(u[3], u[7]),
    ]
}

/// What a convolution does to its sums on the way out: adds its bias (one per output
/// channel), then the other branch of a residual block if given (inference folds that
/// block's last batch norm into the convolution), then a ReLU if asked. Applied to each
/// run of images as it is written, while its values are in cache, so that no pass over
/// the whole map follows the convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// The residual branch, laid out as the output.
    pub add: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies itself to `y[at..at + len]`, output channel `c`'s sums.
    #[inline(always)]
    pub(crate) fn finish(&self, c: usize, y: &mut [f32], at: usize, len: usize) {
        let y = &mut y[at..][..len];
        let z = self.add.map(|z| &z[at..][..len]);
        match self.relu {
            true => out_rows::<true>(y, z, self.bias[c]),
            false => out_rows::<false>(y, z, self.bias[c]),
        }
    }

    /// [`Epilogue::finish`] for images `first..first + count` of every output channel
    /// of a block of `images` maps of `plane` values (channel-major).
    #[inline(always)]
    pub(crate) fn finish_images(
        &self,
        (images, plane): (usize, usize),
        (first, count): (usize, usize),
        y: &mut [f32],
    ) {
        for c in 0..self.bias.len() {
            self.finish(c, y, (c * images + first) * plane, count * plane);
        }
    }
}

/// `y ← (y + b) + z`, then a ReLU if `RELU`.
#[inline(always)]
fn out_rows<const RELU: bool>(y: &mut [f32], z: Option<&[f32]>, b: f32) {
    let out = |t: f32| if RELU { t.max(0.0) } else { t };
    match z {
        None => y.iter_mut().for_each(|o| *o = out(*o + b)),
        Some(z) => y
            .iter_mut()
            .zip(z)
            .for_each(|(o, &r)| *o = out((*o + b) + r)),
    }
}

/// Copies a run of a map row (`src` as long as `dst`). Runs are as short as the map is
/// wide (7 values at 8×8), where a `memcpy` call costs more than the copy, so short runs
/// move in fixed-size pieces the compiler inlines: 16 values (one AVX-512 register), then
/// 8, 4 and singles.
#[inline(always)]
pub(crate) fn copy_run(dst: &mut [f32], src: &[f32]) {
    if dst.len() > 64 {
        dst.copy_from_slice(src);
        return;
    }
    let (dst, src) = copy_pieces::<16>(dst, src);
    let (dst, src) = copy_pieces::<8>(dst, src);
    let (dst, src) = copy_pieces::<4>(dst, src);
    for (a, b) in dst.iter_mut().zip(src) {
        *a = *b;
    }
}

/// Copies the whole pieces of `N` values of two runs of equal length, as arrays (a
/// fixed-size move each rather than a `memcpy` call); returns the tails.
#[inline(always)]
fn copy_pieces<'a, 'b, const N: usize>(
    dst: &'a mut [f32],
    src: &'b [f32],
) -> (&'a mut [f32], &'b [f32]) {
    let (d, dst_rest) = dst.as_chunks_mut::<N>();
    let (s, src_rest) = src.as_chunks::<N>();
    for (a, b) in d.iter_mut().zip(s) {
        *a = *b;
    }
    (dst_rest, src_rest)
}

impl Window {
    /// Values of one zero-padded input plane, the scratch [`im2col`] and [`col2im`] need.
    pub fn padded_plane(&self) -> usize {
        if self.pad == 0 {
            0
        } else {
            (self.h + 2 * self.pad) * (self.w + 2 * self.pad)
        }
    }
}

vectorized! {
    /// Unfolds images `first..first + count` of the block `x` into `col`
    /// (`C·k·k × count·OH·OW`). `padded` is scratch of [`Window::padded_plane`] values.
    ///
    /// Each input plane is first copied into a zero-padded plane (when the window pads), so
    /// that every read is inside it: the copies of a row of output positions then need no
    /// bounds logic, which at 8–16 pixel widths is most of the cost.
    pub(crate) fn im2col = im2col_in(
        g: &Window,
        x: &[f32],
        first: usize,
        count: usize,
        col: &mut [f32],
        padded: &mut [f32],
    );
}

#[inline(always)]
fn im2col_in(
    g: &Window,
    x: &[f32],
    first: usize,
    count: usize,
    col: &mut [f32],
    padded: &mut [f32],
) {
    let plane = g.h * g.w;
    let wp = g.w + 2 * g.pad;
    let (p, cols) = (g.out_plane(), count * g.out_plane());
    for c in 0..g.channels {
        for n in 0..count {
            let src = &x[(c * g.images + first + n) * plane..][..plane];
            let src: &[f32] = if g.pad == 0 {
                src
            } else {
                let padded = &mut padded[..g.padded_plane()];
                padded.fill(0.0);
                for (iy, line) in src.chunks_exact(g.w).enumerate() {
                    padded[(iy + g.pad) * wp + g.pad..][..g.w].copy_from_slice(line);
                }
                padded
            };
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let r = (c * g.kernel + ky) * g.kernel + kx;
                    let out = &mut col[r * cols + n * p..][..p];
                    let off = ky * g.dilation * wp + kx * g.dilation;
                    for (oy, o) in out.chunks_exact_mut(g.ow).enumerate() {
                        let start = off + oy * g.stride * wp;
                        match g.stride {
                            1 => copy_run(o, &src[start..start + g.ow]),
                            2 => every_second(o, &src[start..]),
                            s => {
                                debug_assert!(src.len() > start + (g.ow - 1) * s);
                                o.iter_mut()
                                    .zip(src[start..].iter().step_by(s))
                                    .for_each(|(v, &x)| *v = x)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst[i] = src[2i]`: in pairs, which the compiler turns into shuffles of whole
/// vectors (a read at a variable stride stays one value at a time), then the last.
#[inline(always)]
fn every_second(dst: &mut [f32], src: &[f32]) {
    let Some((last, head)) = dst.split_last_mut() else {
        return;
    };
    let pairs = src[..2 * head.len()].as_chunks::<2>().0;
    head.iter_mut().zip(pairs).for_each(|(v, p)| *v = p[0]);
    *last = src[2 * head.len()];
}

vectorized! {
    /// Folds `col` (`C·k·k × count·OH·OW`) back into images `first..first + count` of the
    /// block `dx`, overwriting them and summing overlaps: the adjoint of [`im2col`], with the
    /// same scratch.
    pub(crate) fn col2im = col2im_in(
        g: &Window,
        col: &[f32],
        first: usize,
        count: usize,
        dx: &mut [f32],
        padded: &mut [f32],
    );
}

#[inline(always)]
fn col2im_in(
    g: &Window,
    col: &[f32],
    first: usize,
    count: usize,
    dx: &mut [f32],
    padded: &mut [f32],
) {
    let plane = g.h * g.w;
    let wp = g.w + 2 * g.pad;
    let (p, cols) = (g.out_plane(), count * g.out_plane());
    for c in 0..g.channels {
        for n in 0..count {
            let dst = &mut dx[(c * g.images + first + n) * plane..][..plane];
            let acc: &mut [f32] = if g.pad == 0 {
                &mut *dst
            } else {
                &mut padded[..g.padded_plane()]
            };
            acc.fill(0.0);
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    let r = (c * g.kernel + ky) * g.kernel + kx;
                    let src = &col[r * cols + n * p..][..p];
                    let off = ky * g.dilation * wp + kx * g.dilation;
                    for (oy, s) in src.chunks_exact(g.ow).enumerate() {
                        let start = off + oy * g.stride * wp;
                        if g.stride == 1 {
                            for (a, v) in acc[start..start + g.ow].iter_mut().zip(s) {
                                *a += v;
                            }
                        } else {
                            for (ox, v) in s.iter().enumerate() {
                                acc[start + ox * g.stride] += v;
                            }
                        }
                    }
                }
            }
            if g.pad > 0 {
                for (iy, line) in dst.chunks_exact_mut(g.w).enumerate() {
                    line.copy_from_slice(&padded[(iy + g.pad) * wp + g.pad..][..g.w]);
                }
            }
        }
    }
}

vectorized! {
    /// Max pooling of the block `x` into `y`; `arg` receives the in-plane index of each
    /// maximum for the backward pass. The first maximum wins ties.
    pub(crate) fn max_pool = max_pool_in(g: &Window, x: &[f32], y: &mut [f32], arg: &mut [u32]);
}

#[inline(always)]
fn max_pool_in(g: &Window, x: &[f32], y: &mut [f32], arg: &mut [u32]) {
    let (plane, out) = (g.h * g.w, g.out_plane());
    let planes = g.channels * g.images;
    let inside = g.inside();
    for (p, (yp, ap)) in y[..planes * out]
        .chunks_exact_mut(out)
        .zip(arg[..planes * out].chunks_exact_mut(out))
        .enumerate()
    {
        let src = &x[p * plane..][..plane];
        if inside && g.kernel == 2 && g.stride == 2 && g.dilation == 1 {
            pool_2x2(g, src, yp, ap);
            continue;
        }
        if inside {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let base = oy * g.stride * g.w + ox * g.stride;
                    let (mut best, mut at) = (src[base], base);
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            let j = base + (ky * g.w + kx) * g.dilation;
                            let v = src[j];
                            // Selects, not branches: where the maximum lies is random, and
                            // mispredicted branches cost more than the comparisons.
                            let more = v > best;
                            at = if more { j } else { at };
                            best = if more { v } else { best };
                        }
                    }
                    yp[oy * g.ow + ox] = best;
                    ap[oy * g.ow + ox] = at as u32;
                }
            }
            continue;
        }
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut best = f32::NEG_INFINITY;
                let mut at = None;
                for ky in 0..g.kernel {
                    let Some(iy) = g.source(oy, ky, g.h) else {
                        continue;
                    };
                    for kx in 0..g.kernel {
                        let Some(ix) = g.source(ox, kx, g.w) else {
                            continue;
                        };
                        let v = src[iy * g.w + ix];
                        if at.is_none() || v > best {
                            best = v;
                            at = Some(iy * g.w + ix);
                        }
                    }
                }
                // The spec rules out windows with no input position.
                yp[oy * g.ow + ox] = best;
                ap[oy * g.ow + ox] = at.unwrap_or(0) as u32;
            }
        }
    }
}

/// The common 2×2 / stride 2 pool: the maximum of each pair, then of the two pairs, with
/// selects, so each output is two short dependency chains instead of one of four.
#[inline(always)]
fn pool_2x2(g: &Window, src: &[f32], y: &mut [f32], arg: &mut [u32]) {
    for oy in 0..g.oh {
        let top = 2 * oy * g.w;
        let (r0, r1) = (&src[top..][..g.w], &src[top + g.w..][..g.w]);
        let (yo, ao) = (&mut y[oy * g.ow..][..g.ow], &mut arg[oy * g.ow..][..g.ow]);
        for ox in 0..g.ow {
            let (a, b) = (r0[2 * ox], r0[2 * ox + 1]);
            let (c, d) = (r1[2 * ox], r1[2 * ox + 1]);
            let (m0, i0) = if b > a { (b, 1) } else { (a, 0) };
            let (m1, i1) = if d > c { (d, g.w + 1) } else { (c, g.w) };
            let (m, i) = if m1 > m0 { (m1, i1) } else { (m0, i0) };
            yo[ox] = m;
            ao[ox] = (top + 2 * ox + i) as u32;
        }
    }
}

vectorized! {
    /// Gradient of [`max_pool`]: each output's gradient goes to its maximum's position.
    pub(crate) fn max_pool_backward = max_pool_backward_in(
        g: &Window,
        dy: &[f32],
        arg: &[u32],
        dx: &mut [f32],
    );
}

#[inline(always)]
fn max_pool_backward_in(g: &Window, dy: &[f32], arg: &[u32], dx: &mut [f32]) {
    let (plane, out) = (g.h * g.w, g.out_plane());
    let planes = g.channels * g.images;
    for (p, dxp) in dx[..planes * plane].chunks_exact_mut(plane).enumerate() {
        dxp.fill(0.0);
        for (d, &a) in dy[p * out..][..out].iter().zip(&arg[p * out..][..out]) {
            dxp[a as usize] += d;
        }
    }
}

vectorized! {
    /// Average pooling of the block `x` into `y`: each window's sum over its input positions
    /// divided by `kernel²`, so padded cells count as zeros.
    pub(crate) fn avg_pool = avg_pool_in(g: &Window, x: &[f32], y: &mut [f32]);
}

#[inline(always)]
fn avg_pool_in(g: &Window, x: &[f32], y: &mut [f32]) {
    let (plane, out) = (g.h * g.w, g.out_plane());
    if let Some(rows) = halving_rows(g) {
        avg_2x2(rows, g.ow, g.w, x, &mut y[..rows * g.ow]);
        return;
    }
    let scale = 1.0 / (g.kernel * g.kernel) as f32;
    for (p, yp) in y[..g.channels * g.images * out]
        .chunks_exact_mut(out)
        .enumerate()
    {
        let src = &x[p * plane..][..plane];
        if g.inside() && is_2x2(g) {
            avg_2x2(g.oh, g.ow, g.w, src, yp);
            continue;
        }
        if g.inside() {
            // The same sums in the same order as below, without the bounds logic.
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let base = oy * g.stride * g.w + ox * g.stride;
                    let mut sum = 0.0;
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            sum += src[base + (ky * g.w + kx) * g.dilation];
                        }
                    }
                    yp[oy * g.ow + ox] = sum * scale;
                }
            }
            continue;
        }
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut sum = 0.0;
                for iy in (0..g.kernel).filter_map(|ky| g.source(oy, ky, g.h)) {
                    for ix in (0..g.kernel).filter_map(|kx| g.source(ox, kx, g.w)) {
                        sum += src[iy * g.w + ix];
                    }
                }
                yp[oy * g.ow + ox] = sum * scale;
            }
        }
    }
}

vectorized! {
    /// Gradient of [`avg_pool`]: each output's gradient, over `kernel²`, to every input
    /// position of its window.
    pub(crate) fn avg_pool_backward = avg_pool_backward_in(g: &Window, dy: &[f32], dx: &mut [f32]);
}

#[inline(always)]
fn avg_pool_backward_in(g: &Window, dy: &[f32], dx: &mut [f32]) {
    let (plane, out) = (g.h * g.w, g.out_plane());
    if let Some(rows) = halving_rows(g) {
        avg_2x2_backward(rows, g.ow, g.w, &dy[..rows * g.ow], dx);
        return;
    }
    let scale = 1.0 / (g.kernel * g.kernel) as f32;
    for (p, dxp) in dx[..g.channels * g.images * plane]
        .chunks_exact_mut(plane)
        .enumerate()
    {
        dxp.fill(0.0);
        let dyp = &dy[p * out..][..out];
        if g.inside() && is_2x2(g) {
            avg_2x2_backward(g.oh, g.ow, g.w, dyp, dxp);
            continue;
        }
        if g.inside() {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = dyp[oy * g.ow + ox] * scale;
                    let base = oy * g.stride * g.w + ox * g.stride;
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            dxp[base + (ky * g.w + kx) * g.dilation] += d;
                        }
                    }
                }
            }
            continue;
        }
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let d = dyp[oy * g.ow + ox] * scale;
                for iy in (0..g.kernel).filter_map(|ky| g.source(oy, ky, g.h)) {
                    for ix in (0..g.kernel).filter_map(|kx| g.source(ox, kx, g.w)) {
                        dxp[iy * g.w + ix] += d;
                    }
                }
            }
        }
    }
}

/// A 2×2 window with stride 2, undilated.
fn is_2x2(g: &Window) -> bool {
    g.kernel == 2 && g.stride == 2 && g.dilation == 1
}

/// Where a 2×2 / stride 2 pool without padding halves the maps exactly, the block's
/// planes one after the other are one map of `planes × OH` output rows, each read from
/// two input rows: that many rows, so each plane's few rows cost no loop of their own.
fn halving_rows(g: &Window) -> Option<usize> {
    let halves = g.pad == 0 && g.h == 2 * g.oh && g.w == 2 * g.ow && g.ow > 0;
    (is_2x2(g) && halves).then_some(g.channels * g.images * g.oh)
}

/// `rows` output rows of `ow` averages of 2×2 windows, the input rows `w` apart: the
/// general path's sums in its order (row by row, left to right; a window of four −0 gives
/// −0 where the general path, starting from +0, gives +0).
#[inline(always)]
fn avg_2x2(rows: usize, ow: usize, w: usize, x: &[f32], y: &mut [f32]) {
    for (r, yr) in y.chunks_exact_mut(ow.max(1)).take(rows).enumerate() {
        let (r0, r1) = (&x[2 * r * w..][..2 * ow], &x[(2 * r + 1) * w..][..2 * ow]);
        for ((o, a), b) in yr
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = (a[0] + a[1] + b[0] + b[1]) * 0.25;
        }
    }
}

/// Gradient of [`avg_2x2`]: a quarter of each output's gradient to its four inputs, which
/// no other window reads; positions no window reads (an odd last row or column) are left
/// as they are.
#[inline(always)]
fn avg_2x2_backward(rows: usize, ow: usize, w: usize, dy: &[f32], dx: &mut [f32]) {
    for (r, dr) in dy.chunks_exact(ow.max(1)).take(rows).enumerate() {
        let (top, bottom) = dx[2 * r * w..].split_at_mut(w);
        for ((&d, t), b) in dr
            .iter()
            .zip(top.chunks_exact_mut(2))
            .zip(bottom.chunks_exact_mut(2))
        {
            let q = d * 0.25;
            t.copy_from_slice(&[q, q]);
            b.copy_from_slice(&[q, q]);
        }
    }
}

/// Global average pooling: the mean of each `plane`-value map of `x` into one value of `y`.
pub(crate) fn global_avg_pool(plane: usize, x: &[f32], y: &mut [f32]) {
    let scale = 1.0 / plane as f32;
    for (o, xp) in y.iter_mut().zip(x.chunks_exact(plane)) {
        *o = xp.iter().sum::<f32>() * scale;
    }
}

/// Gradient of [`global_avg_pool`]: each map's gradient spread evenly over its positions.
pub(crate) fn global_avg_pool_backward(plane: usize, dy: &[f32], dx: &mut [f32]) {
    let scale = 1.0 / plane as f32;
    for (&d, dxp) in dy.iter().zip(dx.chunks_exact_mut(plane)) {
        dxp.fill(d * scale);
    }
}

/// Cross-channel local response normalisation of a block, as in Caffe:
/// `y = x · s^−β` with `s = k + α/size · Σ x²` over `size` neighbouring channels (zero
/// beyond the ends). `plane` is the block's values per channel (images × H × W).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LrnParams {
    pub channels: usize,
    pub plane: usize,
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

impl LrnParams {
    /// Channels `lo..hi` summed for output channel `c`.
    fn window(&self, c: usize) -> (usize, usize) {
        let half = (self.size - 1) / 2;
        (c.saturating_sub(half), (c + half + 1).min(self.channels))
    }
}

vectorized! {
    /// [`LrnParams`] forward; `s` receives `s` and `scale` receives `s^−β` for the backward
    /// pass.
    pub(crate) fn lrn = lrn_in(
        p: &LrnParams,
        x: &[f32],
        y: &mut [f32],
        s: &mut [f32],
        scale: &mut [f32],
    );
}

#[inline(always)]
fn lrn_in(p: &LrnParams, x: &[f32], y: &mut [f32], s: &mut [f32], scale: &mut [f32]) {
    let n = p.channels * p.plane;
    let a = p.alpha / p.size as f32;
    for (c, ((yc, sc), pc)) in y[..n]
        .chunks_exact_mut(p.plane)
        .zip(s[..n].chunks_exact_mut(p.plane))
        .zip(scale[..n].chunks_exact_mut(p.plane))
        .enumerate()
    {
        sc.fill(0.0);
        let (lo, hi) = p.window(c);
        for r in lo..hi {
            for (acc, v) in sc.iter_mut().zip(&x[r * p.plane..][..p.plane]) {
                *acc += v * v;
            }
        }
        let xc = &x[c * p.plane..][..p.plane];
        if p.beta == 0.75 {
            // AlexNet's β: s^−¾ = 1 / (√s · ⁴√s), two square roots the CPU vectorises,
            // instead of a `powf` call per value.
            for i in 0..p.plane {
                sc[i] = p.k + a * sc[i];
                let r = sc[i].sqrt();
                pc[i] = 1.0 / (r * r.sqrt());
                yc[i] = xc[i] * pc[i];
            }
        } else {
            for i in 0..p.plane {
                sc[i] = p.k + a * sc[i];
                pc[i] = sc[i].powf(-p.beta);
                yc[i] = xc[i] * pc[i];
            }
        }
    }
}

vectorized! {
    /// Gradient of [`lrn`]:
    /// `dx_c = dy_c·s_c^−β − 2αβ/size · x_c · Σ_{j: c ∈ window(j)} dy_j·y_j / s_j`.
    /// `tmp` is scratch of the same size as `x`.
    pub(crate) fn lrn_backward = lrn_backward_in(
        p: &LrnParams,
        x: &[f32],
        y: &[f32],
        s: &[f32],
        scale: &[f32],
        dy: &[f32],
        tmp: &mut [f32],
        dx: &mut [f32],
    );
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lrn_backward_in(
    p: &LrnParams,
    x: &[f32],
    y: &[f32],
    s: &[f32],
    scale: &[f32],
    dy: &[f32],
    tmp: &mut [f32],
    dx: &mut [f32],
) {
    let n = p.channels * p.plane;
    for (i, t) in tmp[..n].iter_mut().enumerate() {
        *t = dy[i] * y[i] / s[i];
    }
    let coef = 2.0 * p.alpha * p.beta / p.size as f32;
    for (c, dxc) in dx[..n].chunks_exact_mut(p.plane).enumerate() {
        // Sizes are odd, so windows are symmetric: c is in window(j) exactly when j is in
        // window(c).
        let (lo, hi) = p.window(c);
        dxc.fill(0.0);
        for j in lo..hi {
            for (d, t) in dxc.iter_mut().zip(&tmp[j * p.plane..][..p.plane]) {
                *d += t;
            }
        }
        let o = c * p.plane;
        for (i, d) in dxc.iter_mut().enumerate() {
            *d = dy[o + i] * scale[o + i] - coef * x[o + i] * *d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    #[test]
    fn destinations_of_one_row_or_column_are_not_overlaps() {
        // A 1 × n row stored row-major has rs = n·… and cs = 1, but a 1-wide matrix
        // (a layer with one output) has rs = cs = 1: legal, it has one column.
        assert!(distinct_positions(4, 1, 1, 1));
        assert!(distinct_positions(1, 4, 1, 1));
        assert!(distinct_positions(1, 1, 0, 0));
        assert!(distinct_positions(3, 4, 4, 1));
        assert!(distinct_positions(3, 4, 1, 3));
        assert!(!distinct_positions(3, 4, 1, 1));
        assert!(!distinct_positions(3, 4, 2, 1));
        let mut out = vec![0.0f32; 3];
        let a = [1.0, 2.0, 3.0];
        matmul(
            MatMut::rows(&mut out, 3, 1),
            Mat::rows(&a, 3, 1),
            Mat::rows(&[2.0], 1, 1),
            false,
            false,
        );
        assert_eq!(out, [2.0, 4.0, 6.0]);
    }

    #[test]
    fn matmul_matches_naive_for_every_stride_layout() {
        let (m, k, n) = (7, 13, 5);
        let a = rand_vec(m * k, 1);
        let b = rand_vec(k * n, 2);
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
            }
        }
        // Transposed copies, read back through transposed views.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for (av, bv) in [
            (Mat::rows(&a, m, k), Mat::rows(&b, k, n)),
            (Mat::transposed(&at, m, k), Mat::rows(&b, k, n)),
            (Mat::rows(&a, m, k), Mat::transposed(&bt, k, n)),
            (Mat::transposed(&at, m, k), Mat::transposed(&bt, k, n)),
        ] {
            for parallel in [false, true] {
                let mut got = vec![1f32; m * n];
                matmul(MatMut::rows(&mut got, m, n), av, bv, false, parallel);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{g} vs {w}");
                }
                matmul(MatMut::rows(&mut got, m, n), av, bv, true, parallel);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 2.0 * w).abs() < 1e-5, "{g} vs {}", 2.0 * w);
                }
                // Column-major destination, and a strided one (rows 9 apart).
                let mut cm = vec![0f32; m * n];
                matmul(MatMut::columns(&mut cm, m, n), av, bv, false, parallel);
                let mut st = vec![0f32; (m - 1) * 9 + n];
                matmul(MatMut::strided(&mut st, m, n, 9), av, bv, false, parallel);
                for i in 0..m {
                    for j in 0..n {
                        assert!((cm[j * m + i] - want[i * n + j]).abs() < 1e-5);
                        assert!((st[i * 9 + j] - want[i * n + j]).abs() < 1e-5);
                    }
                }
            }
        }
    }

    /// Every value lands at its transposed place, and nothing between the rows moves.
    #[test]
    fn transpose_moves_every_value_once() {
        // Whole tiles, edges of every width, and strides wider than the matrix.
        for (rows, cols, ss, ds) in [
            (16, 24, 24, 16),
            (19, 13, 21, 20),
            (8, 5, 9, 8),
            (3, 40, 40, 3),
        ] {
            let src: Vec<f32> = (0..(rows - 1) * ss + cols).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; (cols - 1) * ds + rows];
            transpose(&src, ss, (rows, cols), &mut dst, ds);
            for c in 0..cols {
                for r in 0..rows {
                    assert_eq!(
                        dst[c * ds + r],
                        src[r * ss + c],
                        "{rows}×{cols}: ({r}, {c})"
                    );
                }
                let gap = &dst[(c * ds + rows).min(dst.len())..((c + 1) * ds).min(dst.len())];
                assert!(
                    gap.iter().all(|&v| v == -1.0),
                    "{rows}×{cols}: wrote past a row"
                );
            }
        }
    }

    /// `col2im` is the adjoint of `im2col`: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for any x, c,
    /// which checks both at once for every window geometry; and `im2col` against direct
    /// indexing, on a run of images inside a block.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for (h, k, s, pad, d) in [
            (7, 3, 1, 1, 1),
            (8, 2, 2, 0, 1),
            (9, 3, 2, 2, 2),
            (5, 5, 1, 2, 1),
            (6, 1, 3, 0, 1),
            (7, 1, 2, 0, 1),
            (10, 3, 2, 1, 1),
        ] {
            let oh = crate::net::spec::window_out(h, k, s, pad, d, false).expect("fits");
            let (images, first, count) = (4, 1, 2);
            let g = Window {
                channels: 3,
                images,
                h,
                w: h,
                oh,
                ow: oh,
                kernel: k,
                stride: s,
                pad,
                dilation: d,
            };
            let cols = count * oh * oh;
            let x = rand_vec(3 * images * h * h, 3);
            let c = rand_vec(g.col_rows() * cols, 4);
            let mut col = vec![9f32; c.len()];
            let mut padded = vec![5f32; g.padded_plane()];
            im2col(&g, &x, first, count, &mut col, &mut padded);
            let mut back = vec![7f32; x.len()];
            col2im(&g, &c, first, count, &mut back, &mut padded);
            let in_run = |i: usize| (first..first + count).contains(&((i / (h * h)) % images));
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x
                .iter()
                .zip(&back)
                .enumerate()
                .filter(|(i, _)| in_run(*i))
                .map(|(_, (a, b))| f64::from(a * b))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-3,
                "{h} {k} {s} {pad} {d}: {lhs} vs {rhs}"
            );
            // Images outside the run are left alone.
            assert!(back.iter().enumerate().all(|(i, &v)| in_run(i) || v == 7.0));
            for r in 0..g.col_rows() {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                for n in 0..count {
                    for oy in 0..oh {
                        for ox in 0..oh {
                            let iy = (oy * s + ky * d) as isize - pad as isize;
                            let ix = (ox * s + kx * d) as isize - pad as isize;
                            let want = if iy < 0 || ix < 0 || iy >= h as isize || ix >= h as isize {
                                0.0
                            } else {
                                x[((ci * images + first + n) * h + iy as usize) * h + ix as usize]
                            };
                            assert_eq!(col[r * cols + (n * oh + oy) * oh + ox], want);
                        }
                    }
                }
            }
        }
    }

    /// Every run length a map row can have, through each size of piece and the `memcpy`
    /// above 64 values.
    #[test]
    fn copy_run_copies_every_length_exactly() {
        let src = rand_vec(70, 8);
        for len in 0..=src.len() {
            let mut dst = vec![f32::NAN; len + 1];
            copy_run(&mut dst[..len], &src[..len]);
            assert_eq!(dst[..len], src[..len], "length {len}");
            assert!(dst[len].is_nan(), "length {len} wrote past its run");
        }
    }

    /// The lane sums against `f64` sums, over lengths with and without a tail; and the
    /// fixed order: the same bits as adding the 16 lanes' sequential sums pairwise.
    #[test]
    fn sum_matches_f64_and_adds_in_its_fixed_order() {
        for len in [0, 1, 15, 16, 17, 100, 1000, 4099] {
            let x = rand_vec(len, len as u64 + 1);
            let want: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let got = sum(&x);
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{len}"
            );
            let mut lanes = [0.0f32; SUM_LANES];
            for (i, v) in x.iter().enumerate() {
                lanes[i % SUM_LANES] += v;
            }
            let mut width = SUM_LANES;
            while width > 1 {
                width /= 2;
                for i in 0..width {
                    lanes[i] += lanes[i + width];
                }
            }
            assert_eq!(got.to_bits(), lanes[0].to_bits(), "{len}");
        }
    }

    /// The vectorisable `exp` against `f64`'s over its whole finite range: within 2 units in
    /// the last place, exact at 0, and the limits and NaN as documented.
    #[test]
    fn exp_is_within_two_ulps_of_the_true_value() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = (0, 0.0);
        for i in 0..=2_000_000 {
            let x = -87.33f32 + (88.72 + 87.33) * i as f32 / 2e6;
            let want = f64::from(x).exp() as f32;
            let d = ulps(exp(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulps at {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    /// `exp_sum` writes each shifted exponential, whole chunks and tail alike, and sums them
    /// like `f64` does to within rounding.
    #[test]
    fn exp_sum_writes_the_exponentials_and_their_sum() {
        for len in [0, 5, 16, 1000] {
            let xs = rand_vec(len, 40 + len as u64);
            let mut got = xs.clone();
            let sum = exp_sum(&mut got, 0.75);
            for (g, x) in got.iter().zip(&xs) {
                assert_eq!(g.to_bits(), exp(x - 0.75).to_bits(), "{len}");
            }
            let want: f64 = xs.iter().map(|&x| (f64::from(x) - 0.75).exp()).sum();
            assert!(
                (f64::from(sum) - want).abs() <= 1e-5 * want.max(1.0),
                "{len}"
            );
        }
    }

    /// Average pooling's window-inside path against the sums written out, bit for bit,
    /// and its gradient against the adjoint identity ⟨pool x, d⟩ = ⟨x, pool* d⟩.
    #[test]
    fn avg_pool_inside_windows_sum_like_the_general_path() {
        for (h, k, s, d) in [(8, 2, 2, 1), (9, 2, 2, 1), (9, 3, 1, 2), (7, 3, 2, 1)] {
            let oh = crate::net::spec::window_out(h, k, s, 0, d, false).expect("fits");
            let g = Window {
                channels: 2,
                images: 3,
                h,
                w: h,
                oh,
                ow: oh,
                kernel: k,
                stride: s,
                pad: 0,
                dilation: d,
            };
            assert!(g.inside());
            let planes = g.channels * g.images;
            let x = rand_vec(planes * h * h, 11);
            let mut y = vec![0.0; planes * oh * oh];
            avg_pool(&g, &x, &mut y);
            let scale = 1.0 / (k * k) as f32;
            for p in 0..planes {
                for oy in 0..oh {
                    for ox in 0..oh {
                        let mut sum = 0.0f32;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy * s + ky * d, ox * s + kx * d);
                                sum += x[p * h * h + iy * h + ix];
                            }
                        }
                        assert_eq!(
                            y[p * oh * oh + oy * oh + ox].to_bits(),
                            (sum * scale).to_bits()
                        );
                    }
                }
            }
            let dy = rand_vec(y.len(), 12);
            let mut dx = vec![7.0; x.len()];
            avg_pool_backward(&g, &dy, &mut dx);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| f64::from(a * b)).sum();
            assert!((lhs - rhs).abs() < 1e-4, "{h} {k} {s} {d}: {lhs} vs {rhs}");
        }
    }
}
