//! The packed matrix product: `A · Bᵀ` with `B` prepacked in strips of
//! output columns (see [`PackedRows`]), `A` read in place, and register
//! tiles of rows × one strip: 6 × 16 with AVX2 + FMA ([`avx2`]), 12 × 32
//! with AVX-512 ([`avx512`]), the widest the CPU runs chosen at run time
//! ([`crate::cpu::simd_path`]).
//!
//! It serves two callers: dense layers of the CPU encoders (`B` is a weight
//! in PyTorch's `out × in` layout, packed once at load time, with bias,
//! residual and activation folded into the tiles) and the Gram matrix of
//! SuperGlobal's refinement (`B` = `A`, only the upper triangle computed).
//! Measured on a 2-core Zen 3 (GFLOP/s, twelve layers' products with
//! distinct weights, as in a ViT-B/32 forward pass at batch 32:
//! 1600×768×{768, 2304, 3072} and 1600×3072×768): 140–170 on both cores;
//! the machine's 6 × 16 tile peak with everything in L1 is 80–95 per core.

use rayon::prelude::*;

use super::isa::{simd_path, SimdPath};
use super::team::SharedMut;

/// Declares a tile family `$family` (the module's strip width `W`, tiles of
/// up to `$top` rows) and implements [`Tiles`] for it through a `dispatch`
/// that picks the module's `tile::<R, XS, E>` for `rows` (each R in `$top`,
/// `$r…`, then 1).
macro_rules! tile_family {
    ($(#[$doc:meta])* $family:ident, rows: [$top:literal $(, $r:literal)*]) => {
        $(#[$doc])*
        pub(super) struct $family;

        impl super::Tiles for $family {
            const STRIP: usize = W;
            const ROWS: usize = $top;

            unsafe fn rows_in_place<E: Fn(&mut [f32])>(rows: usize, t: &super::Tile, bias: Option<&[f32]>, accumulate: bool, dst: *mut f32, n: usize, epilogue: &E) {
                dispatch::<1, E>(rows, t, bias, accumulate, dst, n, epilogue)
            }

            unsafe fn rows_of_strip(rows: usize, t: &super::Tile, dst: *mut f32, n: usize) {
                dispatch::<W, _>(rows, t, None, false, dst, n, &|_: &mut [f32]| {})
            }
        }

        /// Runs `tile` for `rows` (1 to the family's tallest) rows.
        ///
        /// # Safety
        /// As `tile`.
        unsafe fn dispatch<const XS: usize, E: Fn(&mut [f32])>(rows: usize, t: &super::Tile, bias: Option<&[f32]>, accumulate: bool, dst: *mut f32, n: usize, epilogue: &E) {
            #[cfg(target_arch = "x86_64")]
            match rows {
                $top => tile::<$top, XS, E>(t, bias, accumulate, dst, n, epilogue),
                $($r => tile::<$r, XS, E>(t, bias, accumulate, dst, n, epilogue),)*
                _ => tile::<1, XS, E>(t, bias, accumulate, dst, n, epilogue),
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (rows, t, bias, accumulate, dst, n, epilogue);
                unreachable!("the packed kernel is only built for x86-64");
            }
        }
    };
}

mod avx2;
mod avx512;

/// Whether this CPU runs the packed kernel (x86-64 with AVX2 and FMA, and
/// [`crate::cpu::SIMD_ENV`] not set to `portable`).
pub fn packed_supported() -> bool {
    simd_path().is_some()
}

/// Depth of one block of [`PackedRows`]: a strip's block (16 or 32 KiB) is
/// what a tile streams from L2 while its rows' values sit in L1.
const DEPTH_BLOCK: usize = 256;

/// Output columns per column block of [`packed_product`]: 128 columns × 256
/// deep is a 128 KiB block of `B` that stays in L2 while every row group
/// passes over it.
const BLOCK_COLUMNS: usize = 128;

/// Most rows of `x` one task of [`packed_product`] multiplies.
const MAX_TASK_ROWS: usize = 480;

/// A register-tile kernel family: its strip width and tallest tile, and the
/// tile itself for rows read in place (`A`) or from a packed strip (Gram).
trait Tiles {
    /// Output columns per tile (a strip of `B`).
    const STRIP: usize;
    /// Most rows per tile.
    const ROWS: usize;

    /// One tile of `rows` (1..=`ROWS`) rows read in place (`XS` = 1).
    ///
    /// # Safety
    /// The CPU runs the family; the tile's bounds as in [`Tile`].
    unsafe fn rows_in_place<E: Fn(&mut [f32])>(
        rows: usize,
        t: &Tile,
        bias: Option<&[f32]>,
        accumulate: bool,
        dst: *mut f32,
        n: usize,
        epilogue: &E,
    );

    /// One tile whose rows come from a packed strip (`XS` = `STRIP`).
    ///
    /// # Safety
    /// As [`Tiles::rows_in_place`].
    unsafe fn rows_of_strip(rows: usize, t: &Tile, dst: *mut f32, n: usize);
}

/// A right-hand operand `B` (`n × k`, row-major) stored for
/// [`packed_product`]: depth blocks of 256, one after another; inside a
/// block, strip `s` (rows `w·s .. w·s + w` of `B`, `w` the path's strip
/// width, zero-padded past row `n`) as a `depth × w` run. A column block of
/// `B` is thus one contiguous run, which L2 holds without set conflicts
/// whatever `k` is.
pub struct PackedRows {
    data: Vec<f32>,
    n: usize,
    k: usize,
    path: SimdPath,
}

impl PackedRows {
    /// Packs `b` (`n × k`, row-major; a PyTorch linear weight is `out × in`)
    /// for the widest path this CPU runs. `None` when this CPU cannot run
    /// the packed kernel, or when `b` is shorter than `n × k`.
    pub fn new(b: &[f32], n: usize, k: usize) -> Option<Self> {
        Self::for_path(b, n, k, simd_path()?)
    }

    /// [`PackedRows::new`] for a chosen path (`None` if the CPU lacks it).
    pub fn for_path(b: &[f32], n: usize, k: usize, path: SimdPath) -> Option<Self> {
        if !path.supported() || b.len() < n * k {
            return None;
        }
        let mut data = Vec::new();
        pack_strips(b, n, k, DEPTH_BLOCK, strip_width(path), &mut data);
        Some(PackedRows { data, n, k, path })
    }

    /// Rows of `B` (the product's output columns).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Depth (columns of `B`).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// The kernel family the strips were packed for.
    pub fn path(&self) -> SimdPath {
        self.path
    }

    /// Strip `s` (of width `w`) over depths `k0 .. k0 + kl` (one depth block).
    fn strip(&self, s: usize, w: usize, k0: usize, kl: usize) -> &[f32] {
        let strips = self.n.div_ceil(w);
        &self.data[k0 * strips * w + s * kl * w..][..kl * w]
    }
}

/// Output columns per strip on `path`.
fn strip_width(path: SimdPath) -> usize {
    match path {
        SimdPath::Avx2 => avx2::Tiles16::STRIP,
        SimdPath::Avx512 => avx512::Tiles32::STRIP,
    }
}

/// Writes `b`'s strips of width `w` into `data` (resized) in depth blocks of
/// `kc` (`kc ≥ k`: one block, each strip a `k × w` run), in parallel.
fn pack_strips(b: &[f32], n: usize, k: usize, kc: usize, w: usize, data: &mut Vec<f32>) {
    let strips = n.div_ceil(w);
    data.clear();
    data.resize(strips * k * w, 0.0);
    for k0 in (0..k).step_by(kc.max(1)) {
        let kl = kc.min(k - k0);
        let block = &mut data[k0 * strips * w..(k0 + kl) * strips * w];
        block
            .par_chunks_mut(kl * w)
            .enumerate()
            .for_each(|(s, strip)| {
                let rows: Vec<&[f32]> = (0..w.min(n - s * w))
                    .map(|c| &b[(s * w + c) * k + k0..][..kl])
                    .collect();
                // Written in order (one or two 64-byte lines per depth step),
                // read as `w` sequential streams: row-by-row writes would touch
                // every line of the strip once per row, missing L1 each time.
                for (kk, line) in strip.chunks_exact_mut(w).enumerate() {
                    for (v, row) in line.iter_mut().zip(&rows) {
                        *v = row[kk];
                    }
                }
            });
    }
}

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
pub struct TileInit<'a> {
    /// Added to every row (length ≥ the output columns), or none.
    pub bias: Option<&'a [f32]>,
    /// Add the output's previous contents (a fused residual connection).
    pub accumulate: bool,
}

/// `dst (m × n) = epilogue(init + x (m × k) · Bᵀ)`, where `init` is the bias,
/// plus the old `dst` when accumulating; `epilogue` runs on each finished
/// tile row (at most one strip: 16 or 32 values, still in cache), e.g. an
/// activation. Multi-threaded, on the spinning thread team of
/// [`crate::cpu::team_for_each`]; the tiles are those `b` was packed for.
/// Panics if a slice is shorter than the shapes say.
///
/// The loop order is that of ONNX Runtime's MLAS SGEMM: tasks of (at most
/// 480 rows × 128 columns), handed out column block by column block; inside
/// one, for each depth block of 256, each group of rows of `x` (6 or 12) —
/// read in place, never copied, 6 or 12 KiB that stay in L1 — passes over
/// the strips of the column block, which stay in L2. Tiles after the first
/// depth block add to the output; the epilogue runs after the last.
pub fn packed_product<E: Fn(&mut [f32]) + Sync>(
    x: &[f32],
    m: usize,
    b: &PackedRows,
    init: TileInit<'_>,
    epilogue: &E,
    dst: &mut [f32],
) {
    let (k, n) = (b.k, b.n);
    assert!(
        x.len() >= m * k && dst.len() >= m * n,
        "packed_product: buffer sizes"
    );
    assert!(
        init.bias.is_none_or(|v| v.len() >= n),
        "packed_product: bias shorter than {n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    match b.path {
        SimdPath::Avx2 => product::<avx2::Tiles16, E>(x, m, b, init, epilogue, dst),
        SimdPath::Avx512 => product::<avx512::Tiles32, E>(x, m, b, init, epilogue, dst),
    }
}

/// Rows of the next tile when `left` rows remain: `ROWS` at a time, but
/// between one and two tiles' worth in two equal halves (not a full tile
/// and a thin one with too few accumulators to hide FMA latency).
fn tile_rows(left: usize, most: usize) -> usize {
    if left > most && left < 2 * most {
        left.div_ceil(2)
    } else {
        left.min(most)
    }
}

/// [`packed_product`] with the tiles of `T` (the path `b` was packed for).
fn product<T: Tiles, E: Fn(&mut [f32]) + Sync>(
    x: &[f32],
    m: usize,
    b: &PackedRows,
    init: TileInit<'_>,
    epilogue: &E,
    dst: &mut [f32],
) {
    let (k, n, w) = (b.k, b.n, T::STRIP);
    let out = SharedMut::new(dst.as_mut_ptr());
    let strips = n.div_ceil(w);
    let block_strips = (BLOCK_COLUMNS / w).max(1);
    let col_blocks = strips.div_ceil(block_strips);
    // About 12 tasks per thread (a thread that falls behind then costs the
    // region at most a small task: 1.03× over 4 at batch 32), split by
    // columns first; rows are split only when there are fewer column blocks,
    // and never below 48 rows a task (each row chunk reads all of its column
    // block of B again; splitting 50 rows measured 0.97×).
    let want = 12 * super::team_threads();
    let row_chunks = want.div_ceil(col_blocks).clamp(1, (m / 48).max(1));
    // At most 480 rows a task: the task's output block (480 × 128 values,
    // 240 KiB) then stays in L2 with the B block from one depth block to the
    // next (1.03× on the image tower at batch 32, up to 1.09× on a stack of
    // products with distinct weights, as in a model).
    let row_chunks = row_chunks.max(m.div_ceil(MAX_TASK_ROWS));
    let chunk = m.div_ceil(row_chunks).div_ceil(T::ROWS) * T::ROWS;
    let row_chunks = m.div_ceil(chunk);
    let no_epilogue = |_: &mut [f32]| {};
    super::team_for_each(row_chunks * col_blocks, |t| {
        // Column block major: the threads work on the same block of B at
        // the same time, in different rows, so it comes from memory once and
        // from the shared L3 after (1.08× on the image tower at batch 32
        // over row-chunk-major order, whose every task fetched its own).
        let (rc, cb) = (t % row_chunks, t / row_chunks);
        let (r_lo, r_hi) = (rc * chunk, ((rc + 1) * chunk).min(m));
        let (s_lo, s_hi) = (cb * block_strips, ((cb + 1) * block_strips).min(strips));
        let mut k0 = 0;
        loop {
            let kl = DEPTH_BLOCK.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kl >= k);
            let accumulate = !first || init.accumulate;
            let mut r0 = r_lo;
            while r0 < r_hi {
                let rows = tile_rows(r_hi - r0, T::ROWS);
                for s in s_lo..s_hi {
                    let cols = w.min(n - s * w);
                    let bias = if first {
                        init.bias.map(|v| &v[s * w..s * w + cols])
                    } else {
                        None
                    };
                    let spec = Tile {
                        x: x[r0 * k + k0..].as_ptr(),
                        x_row: k,
                        k: kl,
                        w: b.strip(s, w, k0, kl).as_ptr(),
                        cols,
                    };
                    let d = out.get().wrapping_add(r0 * n + s * w);
                    // SAFETY: the asserts of packed_product bound every access
                    // (rows r0..r0 + rows of x hold k0 + kl values each); the
                    // CPU runs T (b was packed for it); the block (rows
                    // r_lo..r_hi, strips s_lo..s_hi) is written by this task only.
                    unsafe {
                        if last {
                            T::rows_in_place(rows, &spec, bias, accumulate, d, n, epilogue)
                        } else {
                            T::rows_in_place(rows, &spec, bias, accumulate, d, n, &no_epilogue)
                        }
                    }
                }
                r0 += rows;
            }
            k0 += kl;
            if k0 >= k {
                break;
            }
        }
    });
}

/// `X Xᵀ` (`m × m`) into `out` with the packed kernel of the widest path:
/// `scratch` receives `X` packed once, which serves as both operands (a
/// strip read with a row step of its width is a tile's left operand too);
/// only blocks on and above the diagonal are multiplied, the rest mirrored.
/// Requires [`packed_supported`].
pub(crate) fn gram_packed(x: &[f32], m: usize, k: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
    let path = simd_path().expect("gram_packed: the packed kernel runs on this CPU");
    match path {
        SimdPath::Avx2 => gram_with::<avx2::Tiles16>(x, m, k, out, scratch),
        SimdPath::Avx512 => gram_with::<avx512::Tiles32>(x, m, k, out, scratch),
    }
}

/// [`gram_packed`] with the tiles of `T`.
fn gram_with<T: Tiles>(x: &[f32], m: usize, k: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert!(
        x.len() >= m * k && out.len() >= m * m,
        "gram_packed: buffer sizes"
    );
    let w = T::STRIP;
    pack_strips(x, m, k, k.max(1), w, scratch);
    let packed = &scratch[..];
    let strips = m.div_ceil(w);
    let ptr = SharedMut::new(out.as_mut_ptr());
    // Strip a multiplies with strips a.. (its rows' blocks on and above the
    // diagonal): the first strips carry the most work, so rayon's splitting
    // pairs heavy tasks with light ones.
    (0..strips).into_par_iter().for_each(|a| {
        let rows = w.min(m - a * w);
        let left = &packed[a * k * w..(a + 1) * k * w];
        for bs in a..strips {
            let cols = w.min(m - bs * w);
            let right = &packed[bs * k * w..(bs + 1) * k * w];
            let mut r = 0;
            while r < rows {
                let tr = tile_rows(rows - r, T::ROWS);
                let spec = Tile {
                    x: left[r..].as_ptr(),
                    x_row: 1,
                    k,
                    w: right.as_ptr(),
                    cols,
                };
                // SAFETY: `left[r..]` holds k steps of w values (r + tr ≤ w);
                // the block (rows of strip a, columns of strip bs) is written
                // by this task only, inside out (m × m); the CPU runs T.
                unsafe { T::rows_of_strip(tr, &spec, ptr.get().add((a * w + r) * m + bs * w), m) };
                r += tr;
            }
        }
    });
    // Mirror: below the diagonal blocks, row i takes column i of the rows above.
    out[..m * m]
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(i, row)| {
            let upto = (i / w) * w;
            for (j, v) in row[..upto].iter_mut().enumerate() {
                // SAFETY: (j, i) with j < upto ≤ i lies in a block above the
                // diagonal, which this pass only reads; this task writes row i only.
                *v = unsafe { *ptr.get().add(j * m + i) };
            }
        });
}

/// One tile's operands: `x` points at the tile's first row value, row `r`
/// at depth step `kk` being `x[r·x_row + kk·XS]` (`XS` a const parameter of
/// the kernel: 1 for rows read in place, the strip width for a packed
/// strip); `w` is a strip (`k × width`); `cols` ≤ width output columns.
struct Tile {
    x: *const f32,
    x_row: usize,
    k: usize,
    w: *const f32,
    cols: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|d| x[i * k + d] * b[j * k + d]).sum();
            }
        }
        out
    }

    #[test]
    fn product_matches_naive_for_ragged_shapes_on_every_path() {
        // Values are multiples of 1/8 with small numerators: every sum is exact.
        let shapes = [
            (1, 1, 1),
            (5, 17, 3),
            (7, 48, 40),
            (13, 33, 5),
            (25, 31, 9),
            (50, 40, 64),
            (97, 33, 64),
            (130, 16, 600),
            (200, 40, 1300),
            (1000, 33, 300),
            (37, 70, 257),
        ];
        for path in SimdPath::all_supported() {
            for (m, n, k) in shapes {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                    .collect();
                let b: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
                    .collect();
                let bias: Vec<f32> = (0..n).map(|i| i as f32 / 4.0).collect();
                let p = PackedRows::for_path(&b, n, k, path).unwrap();
                assert_eq!(p.path(), path);
                let want = naive(&x, &b, m, n, k);
                let mut dst = vec![0.5f32; m * n];
                packed_product(
                    &x,
                    m,
                    &p,
                    TileInit {
                        bias: Some(&bias),
                        accumulate: true,
                    },
                    &|r| r.iter_mut().for_each(|v| *v *= 2.0),
                    &mut dst,
                );
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(
                            dst[i * n + j],
                            2.0 * (0.5 + bias[j] + want[i * n + j]),
                            "{path:?} {m}×{n}×{k} ({i},{j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_gives_bit_identical_products_on_inexact_values() {
        // Random values: rounding happens, so equality means the same
        // additions in the same order per value on both paths.
        let paths = SimdPath::all_supported();
        for (m, n, k) in [(50, 768, 768), (13, 70, 600), (1, 33, 300), (64, 2304, 100)] {
            let x = crate::cpu::test_values(1, m * k, -1.0, 1.0);
            let b = crate::cpu::test_values(2, n * k, -1.0, 1.0);
            let bias = crate::cpu::test_values(3, n, -1.0, 1.0);
            let outs: Vec<Vec<f32>> = paths
                .iter()
                .map(|&path| {
                    let p = PackedRows::for_path(&b, n, k, path).unwrap();
                    let mut dst = crate::cpu::test_values(4, m * n, -1.0, 1.0);
                    packed_product(
                        &x,
                        m,
                        &p,
                        TileInit {
                            bias: Some(&bias),
                            accumulate: true,
                        },
                        &|_| {},
                        &mut dst,
                    );
                    dst
                })
                .collect();
            let (want, old) = (
                naive(&x, &b, m, n, k),
                crate::cpu::test_values(4, m * n, -1.0, 1.0),
            );
            for (path, out) in paths.iter().zip(&outs) {
                for (i, (&o, (&w, &d))) in out.iter().zip(want.iter().zip(&old)).enumerate() {
                    let expect = bias[i % n] + w + d;
                    assert!(
                        (o - expect).abs() <= 1e-4 * (1.0 + expect.abs()) * (k as f32).sqrt(),
                        "{path:?} {m}×{n}×{k} value {i}: {o} vs {expect}"
                    );
                }
            }
            for (i, o) in outs.iter().enumerate().skip(1) {
                assert!(
                    o.iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?} vs {:?} at {m}×{n}×{k}",
                    paths[i],
                    paths[0]
                );
            }
        }
    }

    #[test]
    fn packed_gram_matches_naive_and_is_symmetric() {
        if !packed_supported() {
            return;
        }
        for (m, k) in [
            (1, 3),
            (15, 8),
            (16, 8),
            (17, 5),
            (33, 7),
            (100, 33),
            (300, 9),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 23) as f32 - 11.0) / 8.0)
                .collect();
            let mut out = vec![f32::NAN; m * m];
            let mut scratch = Vec::new();
            gram_packed(&x, m, k, &mut out, &mut scratch);
            assert_eq!(out, naive(&x, &x, m, m, k), "m {m} k {k}");
        }
    }
}
