//! The packed AVX2 + FMA matrix product: `A · Bᵀ` with `B` prepacked in
//! strips of 16 rows (see [`PackedRows`]), `A` read in place, and 6 × 16
//! register tiles.
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

use super::team::SharedMut;

/// Whether this CPU runs the packed kernel (x86-64 with AVX2 and FMA).
pub fn packed_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Columns per strip (two 8-lane registers).
const STRIP: usize = 16;

/// Depth of one block of [`PackedRows`]: a strip's block (16 KiB) is what a
/// tile streams from L2 while its rows' values sit in L1.
const DEPTH_BLOCK: usize = 256;

/// Strips per column block of [`packed_product`]: 8 strips × 256 deep is a
/// 128 KiB block of `B` that stays in L2 while every row group passes over it.
const BLOCK_STRIPS: usize = 8;

/// Most rows of `x` one task of [`packed_product`] multiplies.
const MAX_TASK_ROWS: usize = 480;

/// A right-hand operand `B` (`n × k`, row-major) stored for
/// [`packed_product`]: depth blocks of 256, one after another; inside a
/// block, strip `s` (rows `16s .. 16s + 16` of `B`, zero-padded past row
/// `n`) as a `depth × 16` run. A column block of `B` is thus one contiguous
/// run, which L2 holds without set conflicts whatever `k` is.
pub struct PackedRows {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedRows {
    /// Packs `b` (`n × k`, row-major; a PyTorch linear weight is `out × in`).
    /// `None` when this CPU cannot run the packed kernel, or when `b` is
    /// shorter than `n × k`.
    pub fn new(b: &[f32], n: usize, k: usize) -> Option<Self> {
        if !packed_supported() || b.len() < n * k {
            return None;
        }
        let mut data = Vec::new();
        pack_strips(b, n, k, DEPTH_BLOCK, &mut data);
        Some(PackedRows { data, n, k })
    }

    /// Rows of `B` (the product's output columns).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Depth (columns of `B`).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Strip `s` over depths `k0 .. k0 + kl` (one depth block).
    fn strip(&self, s: usize, k0: usize, kl: usize) -> &[f32] {
        let strips = self.n.div_ceil(STRIP);
        &self.data[k0 * strips * STRIP + s * kl * STRIP..][..kl * STRIP]
    }
}

/// Writes `b`'s strips into `data` (resized) in depth blocks of `kc`
/// (`kc ≥ k`: one block, each strip a `k × 16` run), in parallel.
fn pack_strips(b: &[f32], n: usize, k: usize, kc: usize, data: &mut Vec<f32>) {
    let strips = n.div_ceil(STRIP);
    data.clear();
    data.resize(strips * k * STRIP, 0.0);
    for k0 in (0..k).step_by(kc.max(1)) {
        let kl = kc.min(k - k0);
        let block = &mut data[k0 * strips * STRIP..(k0 + kl) * strips * STRIP];
        block.par_chunks_mut(kl * STRIP).enumerate().for_each(|(s, strip)| {
            let rows: Vec<&[f32]> = (0..STRIP.min(n - s * STRIP)).map(|c| &b[(s * STRIP + c) * k + k0..][..kl]).collect();
            // Written in order (one 64-byte line per depth step), read as 16
            // sequential streams: row-by-row writes would touch every line of the
            // strip once per row, missing L1 each time.
            for (kk, line) in strip.chunks_exact_mut(STRIP).enumerate() {
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
/// tile row (at most 16 values, still in cache), e.g. an activation.
/// Multi-threaded, on the spinning thread team of
/// [`crate::cpu::team_for_each`]. Panics if a slice is shorter than the
/// shapes say.
///
/// The loop order is that of ONNX Runtime's MLAS SGEMM: tasks of (at most
/// 480 rows × 128 columns), handed out column block by column block; inside
/// one, for each depth block of 256, each group of 6 rows of `x` — read in
/// place, never copied, 6 KiB that stay in L1 — passes over the 8 strips of
/// the column block, which stay in L2. Tiles after the first depth block
/// add to the output; the epilogue runs after the last.
pub fn packed_product<E: Fn(&mut [f32]) + Sync>(x: &[f32], m: usize, b: &PackedRows, init: TileInit<'_>, epilogue: &E, dst: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    assert!(x.len() >= m * k && dst.len() >= m * n, "packed_product: buffer sizes");
    assert!(init.bias.is_none_or(|v| v.len() >= n), "packed_product: bias shorter than {n}");
    if m == 0 || n == 0 {
        return;
    }
    let out = SharedMut::new(dst.as_mut_ptr());
    let strips = n.div_ceil(STRIP);
    let col_blocks = strips.div_ceil(BLOCK_STRIPS);
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
    let chunk = m.div_ceil(row_chunks).div_ceil(6) * 6;
    let row_chunks = m.div_ceil(chunk);
    let no_epilogue = |_: &mut [f32]| {};
    super::team_for_each(row_chunks * col_blocks, |t| {
        // Column block major: the threads work on the same block of B at
        // the same time, in different rows, so it comes from memory once and
        // from the shared L3 after (1.08× on the image tower at batch 32
        // over row-chunk-major order, whose every task fetched its own).
        let (rc, cb) = (t % row_chunks, t / row_chunks);
        let (r_lo, r_hi) = (rc * chunk, ((rc + 1) * chunk).min(m));
        let (s_lo, s_hi) = (cb * BLOCK_STRIPS, ((cb + 1) * BLOCK_STRIPS).min(strips));
        let mut k0 = 0;
        loop {
            let kl = DEPTH_BLOCK.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kl >= k);
            let accumulate = !first || init.accumulate;
            let mut r0 = r_lo;
            while r0 < r_hi {
                // 7–11 rows left: two tiles of 4–6 rows, not 6 and a
                // 1–5-row tile with too few accumulators to hide FMA latency.
                let left = r_hi - r0;
                let rows = if left > 6 && left < 12 { left.div_ceil(2) } else { left.min(6) };
                for s in s_lo..s_hi {
                    let cols = STRIP.min(n - s * STRIP);
                    let bias = if first { init.bias.map(|v| &v[s * STRIP..s * STRIP + cols]) } else { None };
                    let spec = Tile { x: x[r0 * k + k0..].as_ptr(), x_row: k, k: kl, w: b.strip(s, k0, kl).as_ptr(), cols };
                    let d = out.get().wrapping_add(r0 * n + s * STRIP);
                    // SAFETY: the asserts above bound every access (rows
                    // r0..r0 + rows of x hold k0 + kl values each); the CPU
                    // runs the kernel (a PackedRows exists); the block (rows
                    // r_lo..r_hi, strips s_lo..s_hi) is written by this task only.
                    unsafe {
                        if last {
                            tile_dispatch::<1, E>(rows, &spec, bias, accumulate, d, n, epilogue)
                        } else {
                            tile_dispatch::<1, _>(rows, &spec, bias, accumulate, d, n, &no_epilogue)
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

/// `X Xᵀ` (`m × m`) into `out` with the packed kernel: `scratch` receives
/// `X` packed once, which serves as both operands (a strip of 16 rows read
/// with a row step of 16 is a tile's left operand too); only blocks on and
/// above the diagonal are multiplied, the rest mirrored. Requires
/// [`packed_supported`].
pub(crate) fn gram_packed(x: &[f32], m: usize, k: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert!(packed_supported() && x.len() >= m * k && out.len() >= m * m, "gram_packed: buffer sizes");
    pack_strips(x, m, k, k.max(1), scratch);
    let packed = &scratch[..];
    let strips = m.div_ceil(STRIP);
    let ptr = SharedMut::new(out.as_mut_ptr());
    let no_epilogue = |_: &mut [f32]| {};
    // Strip a multiplies with strips a.. (its rows' blocks on and above the
    // diagonal): the first strips carry the most work, so rayon's splitting
    // pairs heavy tasks with light ones.
    (0..strips).into_par_iter().for_each(|a| {
        let rows = STRIP.min(m - a * STRIP);
        let left = &packed[a * k * STRIP..(a + 1) * k * STRIP];
        for bs in a..strips {
            let cols = STRIP.min(m - bs * STRIP);
            let right = &packed[bs * k * STRIP..(bs + 1) * k * STRIP];
            let mut r = 0;
            while r < rows {
                let tr = (rows - r).min(6);
                let spec = Tile { x: left[r..].as_ptr(), x_row: 1, k, w: right.as_ptr(), cols };
                // SAFETY: `left[r..]` holds k steps of 16 values (r + tr ≤ 16);
                // the block (rows of strip a, columns of strip bs) is written
                // by this task only, inside out (m × m).
                unsafe { tile_dispatch::<STRIP, _>(tr, &spec, None, false, ptr.get().add((a * STRIP + r) * m + bs * STRIP), m, &no_epilogue) };
                r += tr;
            }
        }
    });
    // Mirror: below the diagonal blocks, row i takes column i of the rows above.
    out[..m * m].par_chunks_mut(m).enumerate().for_each(|(i, row)| {
        let upto = (i / STRIP) * STRIP;
        for (j, v) in row[..upto].iter_mut().enumerate() {
            // SAFETY: (j, i) with j < upto ≤ i lies in a block above the
            // diagonal, which this pass only reads; this task writes row i only.
            *v = unsafe { *ptr.get().add(j * m + i) };
        }
    });
}

/// One tile's operands: `x` points at the tile's first row value, row `r`
/// at depth step `kk` being `x[r·x_row + kk·XS]` (`XS` a const parameter of
/// the kernel: 1 for rows read in place, 16 for a packed strip); `w` is a
/// strip (`k × 16`); `cols` ≤ 16 output columns.
struct Tile {
    x: *const f32,
    x_row: usize,
    k: usize,
    w: *const f32,
    cols: usize,
}

/// Runs [`tile`] for `rows` (1..=6) rows.
///
/// # Safety
/// As [`tile`].
unsafe fn tile_dispatch<const XS: usize, E: Fn(&mut [f32])>(rows: usize, t: &Tile, bias: Option<&[f32]>, accumulate: bool, dst: *mut f32, n: usize, epilogue: &E) {
    #[cfg(target_arch = "x86_64")]
    match rows {
        6 => tile::<6, XS, E>(t, bias, accumulate, dst, n, epilogue),
        5 => tile::<5, XS, E>(t, bias, accumulate, dst, n, epilogue),
        4 => tile::<4, XS, E>(t, bias, accumulate, dst, n, epilogue),
        3 => tile::<3, XS, E>(t, bias, accumulate, dst, n, epilogue),
        2 => tile::<2, XS, E>(t, bias, accumulate, dst, n, epilogue),
        _ => tile::<1, XS, E>(t, bias, accumulate, dst, n, epilogue),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, t, bias, accumulate, dst, n, epilogue);
        unreachable!("the packed kernel is only built for x86-64");
    }
}

/// One `R × cols` output tile over the whole depth: row `r` of the output
/// (at `dst + r·n`) gets `bias + Σ_kk x[r·x_row + kk·XS] · w[kk·16 + c]`, plus
/// its old value (added last) when `accumulate` is set.
///
/// The depth loop is unrolled by 4 and addresses the rows from two base
/// pointers (rows 0–2 and 3–5, plus 1× or 2× the row stride), so no chain of
/// pointer additions stands between the loads (the same shape as MLAS's
/// FMA3 kernel; 1.10× on the ViT-B/32 image tower over the rolled loop).
///
/// # Safety
/// The CPU has AVX2 and FMA; `t.x` covers `R` rows of `k` steps, `t.w`
/// `k × 16` values, `dst` `R` rows of `cols` values `n` apart, `bias` (if
/// any) `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const XS: usize, E: Fn(&mut [f32])>(t: &Tile, bias: Option<&[f32]>, accumulate: bool, dst: *mut f32, n: usize, epilogue: &E) {
    use std::arch::x86_64::*;
    let full = t.cols == STRIP;
    let mut b16 = [0f32; STRIP];
    if let Some(b) = bias {
        b16[..t.cols].copy_from_slice(&b[..t.cols]);
    }
    let (b0, b1) = (_mm256_loadu_ps(b16.as_ptr()), _mm256_loadu_ps(b16.as_ptr().add(8)));
    let mut acc = [[b0, b1]; R];
    let lda = t.x_row;
    let mut wp = t.w;
    // Rows 0–2 from `a0`, rows 3–5 from `a3` (only formed, never read, when R ≤ 3).
    let mut a0 = t.x;
    let mut a3 = t.x.wrapping_add(3 * lda);
    let row = |a0: *const f32, a3: *const f32, r: usize| if r < 3 { a0.wrapping_add(r * lda) } else { a3.wrapping_add((r - 3) * lda) };
    let mut left = t.k;
    while left >= 4 {
        for u in 0..4 {
            let w0 = _mm256_loadu_ps(wp.add(STRIP * u));
            let w1 = _mm256_loadu_ps(wp.add(STRIP * u + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*row(a0, a3, r).add(u * XS));
                a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                a[1] = _mm256_fmadd_ps(v, w1, a[1]);
            }
        }
        wp = wp.add(4 * STRIP);
        a0 = a0.wrapping_add(4 * XS);
        a3 = a3.wrapping_add(4 * XS);
        left -= 4;
    }
    while left > 0 {
        let w0 = _mm256_loadu_ps(wp);
        let w1 = _mm256_loadu_ps(wp.add(8));
        for (r, a) in acc.iter_mut().enumerate() {
            let v = _mm256_broadcast_ss(&*row(a0, a3, r));
            a[0] = _mm256_fmadd_ps(v, w0, a[0]);
            a[1] = _mm256_fmadd_ps(v, w1, a[1]);
        }
        wp = wp.add(STRIP);
        a0 = a0.wrapping_add(XS);
        a3 = a3.wrapping_add(XS);
        left -= 1;
    }
    if accumulate {
        for (r, a) in acc.iter_mut().enumerate() {
            let mut row = [0f32; STRIP];
            let src = if full {
                dst.add(r * n) as *const f32
            } else {
                std::ptr::copy_nonoverlapping(dst.add(r * n), row.as_mut_ptr(), t.cols);
                row.as_ptr()
            };
            a[0] = _mm256_add_ps(a[0], _mm256_loadu_ps(src));
            a[1] = _mm256_add_ps(a[1], _mm256_loadu_ps(src.add(8)));
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let p = dst.add(r * n);
        if full {
            _mm256_storeu_ps(p, a[0]);
            _mm256_storeu_ps(p.add(8), a[1]);
        } else {
            let mut row = [0f32; STRIP];
            _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
            std::ptr::copy_nonoverlapping(row.as_ptr(), p, t.cols);
        }
        epilogue(std::slice::from_raw_parts_mut(p, t.cols));
    }
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
    fn product_matches_naive_for_ragged_shapes() {
        if !packed_supported() {
            return;
        }
        // Values are multiples of 1/8 with small numerators: every sum is exact.
        for (m, n, k) in [(1, 1, 1), (5, 17, 3), (7, 48, 40), (50, 40, 64), (97, 33, 64), (130, 16, 600), (200, 40, 1300), (1000, 33, 300)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let b: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 / 4.0).collect();
            let p = PackedRows::new(&b, n, k).unwrap();
            let want = naive(&x, &b, m, n, k);
            let mut dst = vec![0.5f32; m * n];
            packed_product(&x, m, &p, TileInit { bias: Some(&bias), accumulate: true }, &|r| r.iter_mut().for_each(|v| *v *= 2.0), &mut dst);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(dst[i * n + j], 2.0 * (0.5 + bias[j] + want[i * n + j]), "{m}×{n}×{k} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn packed_gram_matches_naive_and_is_symmetric() {
        if !packed_supported() {
            return;
        }
        for (m, k) in [(1, 3), (15, 8), (16, 8), (17, 5), (100, 33), (300, 9)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 23) as f32 - 11.0) / 8.0).collect();
            let mut out = vec![f32::NAN; m * m];
            let mut scratch = Vec::new();
            gram_packed(&x, m, k, &mut out, &mut scratch);
            assert_eq!(out, naive(&x, &x, m, m, k), "m {m} k {k}");
        }
    }
}
