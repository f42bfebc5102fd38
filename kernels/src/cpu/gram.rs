//! The M×M Gram matrix of a candidate list and SuperGlobal's database-side
//! neighbour refinement.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::types::{better, rows_of, Scored};

/// Rows per band of the Gram matrix: each band is multiplied with the rows
/// from its own first row on (the rest mirrored), about (T + 1) / 2T of the
/// full product.
const GRAM_TILE: usize = 128;

/// `X Xᵀ` for `X` = `m × dim` (row-major): `m × m`.
pub fn gram(x: &[f32], dim: usize) -> Result<Vec<f32>> {
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    gram_into(x, dim, &mut out, &mut scratch)?;
    Ok(out)
}

/// [`gram`] into `out` (resized to `m × m`), with `scratch` for the bands:
/// a caller that keeps both across queries saves fresh pages on every call.
pub fn gram_into(x: &[f32], dim: usize, out: &mut Vec<f32>, scratch: &mut Vec<f32>) -> Result<()> {
    let m = rows_of(x, dim, "Gram matrix input")?;
    out.clear();
    out.resize(m * m, 0.0);
    if m == 0 {
        return Ok(());
    }
    if m <= GRAM_TILE {
        super::matmul::a_bt(out, x, x, m, m, dim, false);
        return Ok(());
    }
    // Row bands of GRAM_TILE rows, each multiplied with every row from its
    // own first row on (the upper triangle and the diagonal block) in one
    // product, into disjoint parts of `scratch`; the bands' sizes fall with
    // their index, so rayon's halving pairs a large band with a small one.
    let bands: Vec<(usize, usize)> = (0..m.div_ceil(GRAM_TILE)).map(|b| (b * GRAM_TILE, ((b + 1) * GRAM_TILE).min(m))).collect();
    let total: usize = bands.iter().map(|&(r0, r1)| (r1 - r0) * (m - r0)).sum();
    scratch.resize(total, 0.0);
    let mut parts = Vec::with_capacity(bands.len());
    let mut rest: &mut [f32] = &mut scratch[..total];
    for &(r0, r1) in &bands {
        let (part, tail) = rest.split_at_mut((r1 - r0) * (m - r0));
        parts.push((r0, r1, part));
        rest = tail;
    }
    parts.par_iter_mut().for_each(|(r0, r1, band)| {
        super::matmul::a_bt(band, &x[*r0 * dim..*r1 * dim], &x[*r0 * dim..], *r1 - *r0, m - *r0, dim, false);
    });
    for (r0, _, band) in parts {
        let w = m - r0;
        for (di, row) in band.chunks_exact(w).enumerate() {
            let i = r0 + di;
            out[i * m + r0..(i + 1) * m].copy_from_slice(row);
            for (dj, &v) in row.iter().enumerate().skip(di + 1) {
                out[(r0 + dj) * m + i] = v;
            }
        }
    }
    Ok(())
}

/// Checks the refinement parameters.
pub(crate) fn check_refine(m: usize, k: usize, beta: f32) -> Result<()> {
    if !beta.is_finite() {
        return Err(KernelError::Parameter(format!("refinement beta must be finite, got {beta}")));
    }
    if k > 64 {
        return Err(KernelError::Parameter(format!("refinement uses at most 64 neighbours, got K = {k} (M = {m})")));
    }
    Ok(())
}

/// The `k` best other rows of row `i` of the Gram matrix (ties by index).
pub(crate) fn neighbours(row: &[f32], i: usize, k: usize) -> Vec<Scored> {
    let k = k.min(row.len().saturating_sub(1));
    if k == 0 {
        return Vec::new();
    }
    if k <= 32 {
        // A sorted list of the k best so far: most scores lose to the k-th
        // at once, so this is one comparison per score (SuperGlobal's K = 9).
        let mut best: Vec<Scored> = Vec::with_capacity(k + 1);
        for (j, &s) in row.iter().enumerate() {
            if j == i {
                continue;
            }
            let c = Scored { row: j, score: s };
            if best.len() == k && better(&c, &best[k - 1]) != std::cmp::Ordering::Less {
                continue;
            }
            let at = best.partition_point(|b| better(b, &c) == std::cmp::Ordering::Less);
            best.insert(at, c);
            best.truncate(k);
        }
        return best;
    }
    let mut others: Vec<Scored> =
        row.iter().enumerate().filter(|&(j, _)| j != i).map(|(j, &s)| Scored { row: j, score: s }).collect();
    others.select_nth_unstable_by(k - 1, better);
    others.truncate(k);
    others.sort_by(better);
    others
}

/// SuperGlobal's database-side refinement of `x` (`m × dim`, L2-normalised
/// candidate descriptors) given their Gram matrix `s` (`m × m`): each row
/// becomes `x̃_i = (x_i + Σ_j β s_ij x_j) / (1 + Σ_j β s_ij)` over its `k`
/// most similar other rows (ties by index). Self always comes first with
/// weight 1, as in SuperGlobal's code where the nearest neighbour of a
/// normalised descriptor is itself; no renormalisation.
pub fn refine(x: &[f32], s: &[f32], dim: usize, k: usize, beta: f32) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    refine_into(x, s, dim, k, beta, &mut out)?;
    Ok(out)
}

/// [`refine`] into `out` (resized to `m × dim`), so a caller can keep one
/// buffer across queries.
pub fn refine_into(x: &[f32], s: &[f32], dim: usize, k: usize, beta: f32, out: &mut Vec<f32>) -> Result<()> {
    let m = rows_of(x, dim, "refinement input")?;
    if s.len() != m * m {
        return Err(KernelError::Shape(format!("Gram matrix has {} values for {m} rows", s.len())));
    }
    check_refine(m, k, beta)?;
    out.resize(m * dim, 0.0);
    out.par_chunks_mut(dim.max(1)).enumerate().for_each(|(i, dst)| {
        dst.copy_from_slice(&x[i * dim..(i + 1) * dim]);
        let mut total = 1.0f32;
        for nb in neighbours(&s[i * m..(i + 1) * m], i, k) {
            let w = beta * nb.score;
            total += w;
            for (d, &v) in dst.iter_mut().zip(&x[nb.row * dim..(nb.row + 1) * dim]) {
                *d += w * v;
            }
        }
        let inv = 1.0 / total;
        dst.iter_mut().for_each(|d| *d *= inv);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_is_the_pairwise_dot_products() {
        let dim = 5;
        let x: Vec<f32> = (0..7 * dim).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let g = gram(&x, dim).unwrap();
        for i in 0..7 {
            for j in 0..7 {
                let want: f32 = (0..dim).map(|d| x[i * dim + d] * x[j * dim + d]).sum();
                assert_eq!(g[i * 7 + j], want);
            }
        }
        assert!(gram(&x[..6], dim).is_err());
        // Past one tile, the mirrored upper triangle equals the full product.
        let (m, d) = (300, 9);
        let y: Vec<f32> = (0..m * d).map(|i| ((i * 31 % 23) as f32 - 11.0) / 8.0).collect();
        let g = gram(&y, d).unwrap();
        for i in 0..m {
            for j in 0..m {
                let want: f32 = (0..d).map(|k| y[i * d + k] * y[j * d + k]).sum();
                assert_eq!(g[i * m + j], want, "({i}, {j})");
            }
        }
    }

    #[test]
    fn refinement_on_a_hand_built_case() {
        // Three unit vectors in 2-D: a = (1,0), b = (0.6,0.8), c = (0,1).
        // s_ab = 0.6, s_ac = 0, s_bc = 0.8. With K = 1, β = 0.5:
        // a's neighbour is b: (a + 0.3 b) / 1.3; b's is c: (b + 0.4 c) / 1.4;
        // c's is b: (c + 0.4 b) / 1.4.
        let x = [1.0f32, 0.0, 0.6, 0.8, 0.0, 1.0];
        let s = gram(&x, 2).unwrap();
        let r = refine(&x, &s, 2, 1, 0.5).unwrap();
        let want = [(1.0 + 0.18) / 1.3, 0.24 / 1.3, 0.6 / 1.4, (0.8 + 0.4) / 1.4, 0.24 / 1.4, (1.0 + 0.32) / 1.4];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
        // K = 0 leaves the descriptors unchanged; K larger than M − 1 uses all.
        assert_eq!(refine(&x, &s, 2, 0, 0.5).unwrap(), x.to_vec());
        assert_eq!(refine(&x, &s, 2, 10, 0.5).unwrap().len(), 6);
        // Ties: two identical others pick the lower index.
        let y = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0];
        let nb = neighbours(&gram(&y, 2).unwrap()[0..3], 0, 1);
        assert_eq!(nb[0].row, 1);
    }

    #[test]
    fn bounded_insertion_agrees_with_a_full_sort() {
        // Many tied scores; k on both sides of the insertion path's limit.
        let row: Vec<f32> = (0..500).map(|j| ((j * 7919 % 97) as f32) / 8.0).collect();
        for k in [1usize, 5, 9, 32, 33, 100, 499, 600] {
            for i in [0usize, 250, 499] {
                let got: Vec<usize> = neighbours(&row, i, k).iter().map(|s| s.row).collect();
                let mut all: Vec<Scored> =
                    row.iter().enumerate().filter(|&(j, _)| j != i).map(|(j, &s)| Scored { row: j, score: s }).collect();
                all.sort_by(better);
                all.truncate(k);
                assert_eq!(got, all.iter().map(|s| s.row).collect::<Vec<_>>(), "k = {k}, i = {i}");
            }
        }
    }
}
