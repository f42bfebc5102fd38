//! The M×M Gram matrix of a candidate list and SuperGlobal's database-side
//! neighbour refinement.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::types::{better, rows_of, Scored};

/// Rows per tile of the Gram matrix: only tiles on or above the diagonal are
/// multiplied (the rest mirrored), about (T + 1) / 2T of the full product.
const GRAM_TILE: usize = 128;

/// `X Xᵀ` for `X` = `m × dim` (row-major): `m × m`.
pub fn gram(x: &[f32], dim: usize) -> Result<Vec<f32>> {
    let m = rows_of(x, dim, "Gram matrix input")?;
    let mut out = vec![0f32; m * m];
    if m == 0 {
        return Ok(out);
    }
    if m <= GRAM_TILE {
        super::matmul::a_bt(&mut out, x, x, m, m, dim, false);
        return Ok(out);
    }
    let tiles = m.div_ceil(GRAM_TILE);
    let pairs: Vec<(usize, usize)> = (0..tiles).flat_map(|i| (i..tiles).map(move |j| (i, j))).collect();
    let blocks: Vec<(usize, usize, Vec<f32>)> = pairs
        .par_iter()
        .map(|&(i, j)| {
            let (r0, r1) = (i * GRAM_TILE, ((i + 1) * GRAM_TILE).min(m));
            let (c0, c1) = (j * GRAM_TILE, ((j + 1) * GRAM_TILE).min(m));
            let mut b = vec![0f32; (r1 - r0) * (c1 - c0)];
            super::matmul::a_bt(&mut b, &x[r0 * dim..r1 * dim], &x[c0 * dim..c1 * dim], r1 - r0, c1 - c0, dim, false);
            (r0, c0, b)
        })
        .collect();
    for (r0, c0, b) in blocks {
        let w = b.len() / (GRAM_TILE.min(m - r0));
        for (di, row) in b.chunks_exact(w).enumerate() {
            out[(r0 + di) * m + c0..(r0 + di) * m + c0 + w].copy_from_slice(row);
            for (dj, &v) in row.iter().enumerate() {
                out[(c0 + dj) * m + r0 + di] = v;
            }
        }
    }
    Ok(out)
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
    let mut others: Vec<Scored> =
        row.iter().enumerate().filter(|&(j, _)| j != i).map(|(j, &s)| Scored { row: j, score: s }).collect();
    let k = k.min(others.len());
    if k == 0 {
        return Vec::new();
    }
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
    let m = rows_of(x, dim, "refinement input")?;
    if s.len() != m * m {
        return Err(KernelError::Shape(format!("Gram matrix has {} values for {m} rows", s.len())));
    }
    check_refine(m, k, beta)?;
    let mut out = vec![0f32; m * dim];
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
    Ok(out)
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
}

