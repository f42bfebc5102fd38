//! The AVX2 + FMA tiles of the packed product: up to 6 rows × 16 columns
//! (12 accumulators in two 8-lane registers per row).

use super::Tile;

/// Columns per strip (two 8-lane registers).
const W: usize = 16;

tile_family!(
    /// The AVX2 tile family (6 × 16).
    Tiles16,
    rows: [6, 5, 4, 3, 2]
);

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
unsafe fn tile<const R: usize, const XS: usize, E: Fn(&mut [f32])>(
    t: &Tile,
    bias: Option<&[f32]>,
    accumulate: bool,
    dst: *mut f32,
    n: usize,
    epilogue: &E,
) {
    use std::arch::x86_64::*;
    let full = t.cols == W;
    let mut b16 = [0f32; W];
    if let Some(b) = bias {
        b16[..t.cols].copy_from_slice(&b[..t.cols]);
    }
    let (b0, b1) = (
        _mm256_loadu_ps(b16.as_ptr()),
        _mm256_loadu_ps(b16.as_ptr().add(8)),
    );
    let mut acc = [[b0, b1]; R];
    let lda = t.x_row;
    let mut wp = t.w;
    // Rows 0–2 from `a0`, rows 3–5 from `a3` (only formed, never read, when R ≤ 3).
    let mut a0 = t.x;
    let mut a3 = t.x.wrapping_add(3 * lda);
    let row = |a0: *const f32, a3: *const f32, r: usize| {
        if r < 3 {
            a0.wrapping_add(r * lda)
        } else {
            a3.wrapping_add((r - 3) * lda)
        }
    };
    let mut left = t.k;
    while left >= 4 {
        for u in 0..4 {
            let w0 = _mm256_loadu_ps(wp.add(W * u));
            let w1 = _mm256_loadu_ps(wp.add(W * u + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*row(a0, a3, r).add(u * XS));
                a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                a[1] = _mm256_fmadd_ps(v, w1, a[1]);
            }
        }
        wp = wp.add(4 * W);
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
        wp = wp.add(W);
        a0 = a0.wrapping_add(XS);
        a3 = a3.wrapping_add(XS);
        left -= 1;
    }
    if accumulate {
        for (r, a) in acc.iter_mut().enumerate() {
            let mut row = [0f32; W];
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
            let mut row = [0f32; W];
            _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
            std::ptr::copy_nonoverlapping(row.as_ptr(), p, t.cols);
        }
        epilogue(std::slice::from_raw_parts_mut(p, t.cols));
    }
}
