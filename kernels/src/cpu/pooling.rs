//! GeM, Regional-GeM and Scale-GeM on the CPU: rayon over maps and channels.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::types::{rows_of, FeatureMaps, GemParams, RegionalGemParams, ScaleGemMode};

/// GeM pooling of every channel of every map: `n × c` values.
pub fn gem(maps: FeatureMaps<'_>, params: GemParams) -> Result<Vec<f32>> {
    params.check()?;
    let hw = maps.h * maps.w;
    let (p, inv_p, eps) = (params.p, 1.0 / params.p, params.eps);
    Ok(maps
        .data
        .par_chunks(hw)
        .map(|plane| {
            let sum: f32 = plane.iter().map(|&x| x.max(eps).powf(p)).sum();
            (sum / hw as f32).powf(inv_p)
        })
        .collect())
}

/// Index `i` (may be outside `0..len`) reflected into `0..len` without
/// repeating the edge, as often as needed.
#[inline]
pub(crate) fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

/// Regional-GeM: every map transformed in place of a copy, same shape.
pub fn regional_gem(maps: FeatureMaps<'_>, params: RegionalGemParams) -> Result<Vec<f32>> {
    params.check()?;
    let (h, w) = (maps.h, maps.w);
    let hw = h * w;
    let pad = (params.size / 2) as isize;
    let (p, inv_p, mix) = (params.p, 1.0 / params.p, params.mix);
    let area = (params.size * params.size) as f32;
    let mut out = vec![0f32; maps.data.len()];
    out.par_chunks_mut(hw)
        .zip(maps.data.par_chunks(hw))
        .for_each(|(dst, plane)| {
            // x^p once per value, then window sums over the reflected indices.
            let pow: Vec<f32> = plane.iter().map(|&x| x.max(0.0).powf(p)).collect();
            let rows: Vec<Vec<usize>> = (0..h as isize)
                .map(|y| (y - pad..=y + pad).map(|i| reflect(i, h)).collect())
                .collect();
            let cols: Vec<Vec<usize>> = (0..w as isize)
                .map(|x| (x - pad..=x + pad).map(|i| reflect(i, w)).collect())
                .collect();
            for y in 0..h {
                for x in 0..w {
                    let mut s = 0f32;
                    for &ry in &rows[y] {
                        for &rx in &cols[x] {
                            s += pow[ry * w + rx];
                        }
                    }
                    let lp = (s / area).powf(inv_p);
                    dst[y * w + x] = mix * lp + (1.0 - mix) * plane[y * w + x];
                }
            }
        });
    Ok(out)
}

/// Scale-GeM over one `n × dim` descriptor matrix per scale: `n × dim`.
pub fn scale_gem(scales: &[&[f32]], dim: usize, mode: ScaleGemMode) -> Result<Vec<f32>> {
    let n = check_scales(scales, dim)?;
    let mut out = vec![0f32; n * dim];
    match mode {
        ScaleGemMode::Max => {
            out.par_chunks_mut(dim).enumerate().for_each(|(i, dst)| {
                dst.fill(f32::NEG_INFINITY);
                for s in scales {
                    let v = &s[i * dim..(i + 1) * dim];
                    let inv = inv_norm(v);
                    for (d, &x) in dst.iter_mut().zip(v) {
                        *d = d.max(x * inv);
                    }
                }
                l2_normalize(dst);
            });
        }
        ScaleGemMode::Power(p) => {
            if !(p.is_finite() && p > 0.0) {
                return Err(KernelError::Parameter(format!(
                    "Scale-GeM power must be > 0, got {p}"
                )));
            }
            let gamma = scales
                .iter()
                .flat_map(|s| s.iter())
                .copied()
                .fold(f32::INFINITY, f32::min);
            let count = scales.len() as f32;
            out.par_chunks_mut(dim).enumerate().for_each(|(i, dst)| {
                for (j, d) in dst.iter_mut().enumerate() {
                    let sum: f32 = scales
                        .iter()
                        .map(|s| (s[i * dim + j] - gamma).powf(p))
                        .sum();
                    *d = (sum / count).powf(1.0 / p) + gamma;
                }
                l2_normalize(dst);
            });
        }
    }
    Ok(out)
}

/// Checks the per-scale matrices agree; returns rows per scale.
pub(crate) fn check_scales(scales: &[&[f32]], dim: usize) -> Result<usize> {
    let first = scales
        .first()
        .ok_or_else(|| KernelError::Shape("Scale-GeM needs at least one scale".into()))?;
    let n = rows_of(first, dim, "Scale-GeM scale 0")?;
    for (i, s) in scales.iter().enumerate() {
        if s.len() != first.len() {
            return Err(KernelError::Shape(format!(
                "Scale-GeM: scale {i} has {} values, scale 0 has {}",
                s.len(),
                first.len()
            )));
        }
    }
    Ok(n)
}

/// 1/‖v‖, or 0 for a zero vector.
#[inline]
pub(crate) fn inv_norm(v: &[f32]) -> f32 {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        1.0 / n
    } else {
        0.0
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let inv = inv_norm(v);
    v.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    //! Each module against a direct, obviously-correct implementation.
    use super::*;

    fn rnd(seed: u64, n: usize) -> Vec<f32> {
        crate::cpu::test_values(seed, n, -0.5, 1.5)
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn gem_matches_the_formula_and_its_limits() {
        let (n, c, h, w) = (2, 3, 4, 5);
        let data = rnd(1, n * c * h * w);
        let maps = FeatureMaps::new(&data, n, c, h, w).unwrap();
        let got = gem(maps, GemParams { p: 3.0, eps: 1e-6 }).unwrap();
        for i in 0..n * c {
            let plane = &data[i * h * w..(i + 1) * h * w];
            let mut s = 0f64;
            for &x in plane {
                s += (x.max(1e-6) as f64).powi(3);
            }
            let want = (s / (h * w) as f64).powf(1.0 / 3.0) as f32;
            assert!((got[i] - want).abs() < 1e-5, "{} vs {want}", got[i]);
        }
        // p = 1 on positive maps is the average; large p tends to the max.
        let pos: Vec<f32> = data.iter().map(|x| x.abs() + 0.01).collect();
        let maps = FeatureMaps::new(&pos, n, c, h, w).unwrap();
        let avg = gem(maps, GemParams { p: 1.0, eps: 1e-8 }).unwrap();
        let big = gem(maps, GemParams { p: 60.0, eps: 1e-8 }).unwrap();
        for i in 0..n * c {
            let plane = &pos[i * h * w..(i + 1) * h * w];
            let mean = plane.iter().sum::<f32>() / plane.len() as f32;
            let max = plane.iter().copied().fold(0.0, f32::max);
            assert!((avg[i] - mean).abs() < 1e-5);
            assert!(big[i] <= max * 1.0001 && big[i] > max * 0.9);
        }
        // All-negative input: every value is clamped to eps.
        let neg = vec![-1.0f32; 12];
        let got = gem(
            FeatureMaps::new(&neg, 1, 1, 3, 4).unwrap(),
            GemParams { p: 4.6, eps: 1e-8 },
        )
        .unwrap();
        assert!((got[0] - 1e-8).abs() < 1e-12);
        assert!(gem(maps, GemParams { p: 0.0, eps: 1e-6 }).is_err());
    }

    #[test]
    fn reflection_follows_reflection_pad() {
        // ReflectionPad2d(2) of [a b c d] is [c b | a b c d | c b].
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect(-2, 1), 0);
        assert_eq!(
            (-2..4).map(|i| reflect(i, 2)).collect::<Vec<_>>(),
            vec![0, 1, 0, 1, 0, 1]
        );
    }

    #[test]
    fn regional_gem_matches_a_padded_direct_loop() {
        let (n, c, h, w) = (1, 2, 6, 7);
        let data = rnd(2, n * c * h * w);
        let params = RegionalGemParams::SUPERGLOBAL;
        let got = regional_gem(FeatureMaps::new(&data, n, c, h, w).unwrap(), params).unwrap();
        // Build the padded map explicitly, then pool it.
        let pad = 2usize;
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        for ch in 0..c {
            let plane = &data[ch * h * w..(ch + 1) * h * w];
            let mut padded = vec![0f64; ph * pw];
            for y in 0..ph {
                for x in 0..pw {
                    let sy = (y as isize - pad as isize).unsigned_abs();
                    let sy = if sy >= h { 2 * (h - 1) - sy } else { sy };
                    let sx = (x as isize - pad as isize).unsigned_abs();
                    let sx = if sx >= w { 2 * (w - 1) - sx } else { sx };
                    padded[y * pw + x] = plane[sy * w + sx].max(0.0) as f64;
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let mut s = 0f64;
                    for dy in 0..5 {
                        for dx in 0..5 {
                            s += padded[(y + dy) * pw + x + dx].powf(2.5);
                        }
                    }
                    let want = 0.5 * (s / 25.0).powf(1.0 / 2.5) + 0.5 * plane[y * w + x] as f64;
                    let have = got[ch * h * w + y * w + x] as f64;
                    assert!(
                        (have - want).abs() < 1e-5,
                        "({ch},{y},{x}): {have} vs {want}"
                    );
                }
            }
        }
        // A constant non-negative map is a fixed point.
        let flat = vec![0.7f32; 9];
        let out = regional_gem(FeatureMaps::new(&flat, 1, 1, 3, 3).unwrap(), params).unwrap();
        close(&out, &flat, 1e-6);
    }

    #[test]
    fn scale_gem_max_and_power() {
        let dim = 6;
        let a = rnd(3, 2 * dim);
        let b = rnd(4, 2 * dim);
        let got = scale_gem(&[&a, &b], dim, ScaleGemMode::Max).unwrap();
        for i in 0..2 {
            let na = inv_norm(&a[i * dim..(i + 1) * dim]);
            let nb = inv_norm(&b[i * dim..(i + 1) * dim]);
            let mut want: Vec<f32> = (0..dim)
                .map(|j| (a[i * dim + j] * na).max(b[i * dim + j] * nb))
                .collect();
            l2_normalize(&mut want);
            close(&got[i * dim..(i + 1) * dim], &want, 1e-6);
        }
        // One scale: Max is just L2 normalisation.
        let one = scale_gem(&[&a], dim, ScaleGemMode::Max).unwrap();
        let mut want = a[..dim].to_vec();
        l2_normalize(&mut want);
        close(&one[..dim], &want, 1e-6);
        // Power with identical scales returns the (normalised) input.
        let same = scale_gem(&[&a, &a, &a], dim, ScaleGemMode::Power(10.0)).unwrap();
        close(&same[..dim], &want, 1e-4);
        assert!(scale_gem(&[&a, &b[..dim]], dim, ScaleGemMode::Max).is_err());
        assert!(scale_gem(&[], dim, ScaleGemMode::Max).is_err());
    }
}
