//! The AVX-512 tiles of the packed product: up to 12 rows × 32 columns (24
//! accumulators in two 16-lane registers per row, of the 32 registers
//! AVX-512 has), with masked loads and stores at the right edge.
//!
//! Each output value is the same chain of fused multiply-adds in the same
//! depth order as in the AVX2 tiles (bias first, the old output added
//! last), so both paths give bit-identical products.

use super::Tile;

/// Columns per strip (two 16-lane registers).
const W: usize = 32;

tile_family!(
    /// The AVX-512 tile family (12 × 32).
    Tiles32,
    rows: [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
);

/// The lane masks of a row's two registers for `cols` (≤ 32) columns.
#[inline(always)]
fn masks(cols: usize) -> (u16, u16) {
    let lo = if cols >= 16 {
        u16::MAX
    } else {
        (1u16 << cols) - 1
    };
    let hi = if cols >= 32 {
        u16::MAX
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    (lo, hi)
}

/// One `R × cols` output tile over the whole depth: row `r` of the output
/// (at `dst + r·n`) gets `bias + Σ_kk x[r·x_row + kk·XS] · w[kk·32 + c]`, plus
/// its old value (added last) when `accumulate` is set.
///
/// The depth loop is unrolled by 4 and addresses the rows from four base
/// pointers (rows 0–2, 3–5, 6–8 and 9–11, plus 1× or 2× the row stride), so
/// every broadcast is one load with a constant displacement.
///
/// # Safety
/// The CPU has AVX-512 F; `t.x` covers `R` rows of `k` steps, `t.w`
/// `k × 32` values, `dst` `R` rows of `cols` values `n` apart, `bias` (if
/// any) `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const XS: usize, E: Fn(&mut [f32])>(
    t: &Tile,
    bias: Option<&[f32]>,
    accumulate: bool,
    dst: *mut f32,
    n: usize,
    epilogue: &E,
) {
    use std::arch::x86_64::*;
    let (m0, m1) = masks(t.cols);
    let (b0, b1) = match bias {
        // Masked-off lanes are neither read nor faulted on.
        Some(b) => (
            _mm512_maskz_loadu_ps(m0, b.as_ptr()),
            _mm512_maskz_loadu_ps(m1, b.as_ptr().wrapping_add(16)),
        ),
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    let mut acc = [[b0, b1]; R];
    let lda = t.x_row;
    let mut wp = t.w;
    // Rows 3g .. 3g + 2 from base g (bases past R are formed, never read).
    let mut base = [
        t.x,
        t.x.wrapping_add(3 * lda),
        t.x.wrapping_add(6 * lda),
        t.x.wrapping_add(9 * lda),
    ];
    let row = |base: &[*const f32; 4], r: usize| base[r / 3].wrapping_add((r % 3) * lda);
    let mut left = t.k;
    while left >= 4 {
        for u in 0..4 {
            let w0 = _mm512_loadu_ps(wp.add(W * u));
            let w1 = _mm512_loadu_ps(wp.add(W * u + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm512_set1_ps(*row(&base, r).add(u * XS));
                a[0] = _mm512_fmadd_ps(v, w0, a[0]);
                a[1] = _mm512_fmadd_ps(v, w1, a[1]);
            }
        }
        wp = wp.add(4 * W);
        for b in base.iter_mut() {
            *b = b.wrapping_add(4 * XS);
        }
        left -= 4;
    }
    while left > 0 {
        let w0 = _mm512_loadu_ps(wp);
        let w1 = _mm512_loadu_ps(wp.add(16));
        for (r, a) in acc.iter_mut().enumerate() {
            let v = _mm512_set1_ps(*row(&base, r));
            a[0] = _mm512_fmadd_ps(v, w0, a[0]);
            a[1] = _mm512_fmadd_ps(v, w1, a[1]);
        }
        wp = wp.add(W);
        for b in base.iter_mut() {
            *b = b.wrapping_add(XS);
        }
        left -= 1;
    }
    for (r, a) in acc.iter_mut().enumerate() {
        let p = dst.add(r * n);
        if accumulate {
            a[0] = _mm512_add_ps(a[0], _mm512_maskz_loadu_ps(m0, p));
            a[1] = _mm512_add_ps(a[1], _mm512_maskz_loadu_ps(m1, p.wrapping_add(16)));
        }
        _mm512_mask_storeu_ps(p, m0, a[0]);
        _mm512_mask_storeu_ps(p.wrapping_add(16), m1, a[1]);
        epilogue(std::slice::from_raw_parts_mut(p, t.cols));
    }
}
