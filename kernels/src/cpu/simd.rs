//! Dot products over f32 and f16 rows: AVX-512 or AVX2/FMA (+F16C) as
//! [`simd_path`] chooses, checked once at run time; portable code with
//! independent lanes (which the compiler vectorises) elsewhere.

use half::f16;

use super::isa::{simd_path, SimdPath};

/// `a · b` for equal-length slices.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_on(simd_path(), a, b)
}

/// [`dot_f32`] on a given path (`None`: portable code). Tests and
/// benchmarks compare the paths with this; the path must be supported.
#[inline]
pub fn dot_f32_on(path: Option<SimdPath>, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match path.filter(|p| p.supported()) {
        // SAFETY: the CPU runs the path (checked by `supported`).
        Some(SimdPath::Avx512) => return unsafe { x86::dot_f32_avx512(a, b) },
        // SAFETY: as above.
        Some(SimdPath::Avx2) => return unsafe { x86::dot_f32(a, b) },
        None => {}
    }
    let _ = path;
    portable_dot(a.iter().copied(), b)
}

/// `a · b` where `a` is stored as f16 (converted exactly to f32).
#[inline]
pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    dot_f16_on(simd_path(), a, b)
}

/// [`dot_f16`] on a given path (`None`: portable code).
#[inline]
pub fn dot_f16_on(path: Option<SimdPath>, a: &[f16], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match path.filter(|p| p.supported()) {
        // SAFETY: the CPU runs the path, F16C included (checked by `supported`).
        Some(SimdPath::Avx512) => return unsafe { x86::dot_f16_avx512(a, b) },
        // SAFETY: as above.
        Some(SimdPath::Avx2) => return unsafe { x86::dot_f16(a, b) },
        None => {}
    }
    let _ = path;
    portable_dot(a.iter().map(|x| x.to_f32()), b)
}

/// Calls `offer(j, scores[j])` for every `scores[j] >= floor`, in order;
/// `offer` returns the (never lower) floor to use from then on. With AVX2,
/// 16 scores are compared at once and skipped together when all are below.
#[inline]
pub fn scan_at_least(scores: &[f32], floor: f32, mut offer: impl FnMut(usize, f32) -> f32) {
    let mut floor = floor;
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            while start + 16 <= scores.len() {
                // SAFETY: AVX2 is present (checked above); 16 values are in bounds.
                let any = unsafe { x86::any_at_least16(scores.as_ptr().add(start), floor) };
                if any {
                    for (j, &s) in scores[start..start + 16].iter().enumerate() {
                        if s >= floor {
                            floor = offer(start + j, s);
                        }
                    }
                }
                start += 16;
            }
        }
    }
    for (j, &s) in scores.iter().enumerate().skip(start) {
        if s >= floor {
            floor = offer(j, s);
        }
    }
}

fn portable_dot(a: impl Iterator<Item = f32>, b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (x, y)) in a.zip(b).enumerate() {
        acc[i % 8] += x * y;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Whether any of the 16 floats at `p` is ≥ `floor`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn any_at_least16(p: *const f32, floor: f32) -> bool {
        let f = _mm256_set1_ps(floor);
        let a = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_loadu_ps(p), f);
        let b = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_loadu_ps(p.add(8)), f);
        _mm256_movemask_ps(_mm256_or_ps(a, b)) != 0
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, s) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * l));
                let y = _mm256_loadu_ps(pb.add(i + 8 * l));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, s) in acc.iter_mut().enumerate() {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i + 8 * l) as *const __m128i));
                let y = _mm256_loadu_ps(pb.add(i + 8 * l));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i) as *const __m128i));
            acc[0] = _mm256_fmadd_ps(x, _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += f16::from_bits(*pa.add(i)).to_f32() * *pb.add(i);
            i += 1;
        }
        s
    }

    /// Mask of the first `n` (< 16) lanes.
    #[inline]
    fn tail_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (l, s) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(pa.add(i + 16 * l));
                let y = _mm512_loadu_ps(pb.add(i + 16 * l));
                *s = _mm512_fmadd_ps(x, y, *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i)),
                _mm512_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f16_avx512(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (l, s) in acc.iter_mut().enumerate() {
                let x = _mm512_cvtph_ps(_mm256_loadu_si256(pa.add(i + 16 * l) as *const __m256i));
                let y = _mm512_loadu_ps(pb.add(i + 16 * l));
                *s = _mm512_fmadd_ps(x, y, *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            let x = _mm512_cvtph_ps(_mm256_loadu_si256(pa.add(i) as *const __m256i));
            acc[0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, pa.add(i) as *const i16));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_visits_exactly_the_scores_at_or_above_a_rising_floor() {
        let scores: Vec<f32> = (0..103).map(|i| ((i * 37) % 101) as f32).collect();
        let mut seen = Vec::new();
        // The floor rises to each offered value: only new maxima (and ties) pass.
        scan_at_least(&scores, 50.0, |j, s| {
            seen.push(j);
            s
        });
        let mut want = Vec::new();
        let mut floor = 50.0;
        for (j, &s) in scores.iter().enumerate() {
            if s >= floor {
                want.push(j);
                floor = s;
            }
        }
        assert_eq!(seen, want);
        assert!(!seen.is_empty());
    }

    #[test]
    fn every_path_matches_a_naive_dot_on_ragged_lengths() {
        let paths: Vec<Option<SimdPath>> = std::iter::once(None)
            .chain(SimdPath::all_supported().into_iter().map(Some))
            .collect();
        for path in paths {
            for n in [
                0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 512, 769,
            ] {
                // Values exact in f32 with exact products and sums, so every
                // summation order gives the same answer.
                let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
                let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
                let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                assert_eq!(dot_f32_on(path, &a, &b), want, "{path:?}, n = {n}");
                let h: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
                assert_eq!(dot_f16_on(path, &h, &b), want, "{path:?}, n = {n}");
            }
        }
    }
}
