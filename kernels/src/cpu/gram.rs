//! The M×M Gram matrix of a candidate list and SuperGlobal's database-side
//! neighbour refinement.

use rayon::prelude::*;

use super::team::SharedMut;
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

/// [`gram`] into `out` (resized to `m × m`), with `scratch` for the packed
/// input (AVX2 + FMA CPUs; the bands of a `gemm` product elsewhere): a caller
/// that keeps both across queries saves fresh pages on every call.
pub fn gram_into(x: &[f32], dim: usize, out: &mut Vec<f32>, scratch: &mut Vec<f32>) -> Result<()> {
    let m = rows_of(x, dim, "Gram matrix input")?;
    out.clear();
    out.resize(m * m, 0.0);
    if m == 0 {
        return Ok(());
    }
    if super::packed::packed_supported() {
        super::packed::gram_packed(x, m, dim, out, scratch);
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
    let bands: Vec<(usize, usize)> = (0..m.div_ceil(GRAM_TILE))
        .map(|b| (b * GRAM_TILE, ((b + 1) * GRAM_TILE).min(m)))
        .collect();
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
        super::matmul::a_bt(
            band,
            &x[*r0 * dim..*r1 * dim],
            &x[*r0 * dim..],
            *r1 - *r0,
            m - *r0,
            dim,
            false,
        );
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
        return Err(KernelError::Parameter(format!(
            "refinement beta must be finite, got {beta}"
        )));
    }
    if k > 64 {
        return Err(KernelError::Parameter(format!(
            "refinement uses at most 64 neighbours, got K = {k} (M = {m})"
        )));
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
        // Once k are held, a chunk of 8 scores all strictly below the k-th
        // is skipped with one branch-free test (NaNs and ties take the exact
        // path, so the order is still `better`'s).
        let mut best: Vec<Scored> = Vec::with_capacity(k + 1);
        let mut floor = f32::NEG_INFINITY;
        for (c, chunk) in row.chunks(8).enumerate() {
            if best.len() == k && chunk.iter().fold(true, |all, &v| all & (v < floor)) {
                continue;
            }
            for (o, &s) in chunk.iter().enumerate() {
                let j = c * 8 + o;
                if j == i {
                    continue;
                }
                let cand = Scored { row: j, score: s };
                if best.len() == k && better(&cand, &best[k - 1]) != std::cmp::Ordering::Less {
                    continue;
                }
                let at = best.partition_point(|b| better(b, &cand) == std::cmp::Ordering::Less);
                best.insert(at, cand);
                best.truncate(k);
                if best.len() == k {
                    floor = best[k - 1].score;
                }
            }
        }
        return best;
    }
    let mut others: Vec<Scored> = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(j, &s)| Scored { row: j, score: s })
        .collect();
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
pub fn refine_into(
    x: &[f32],
    s: &[f32],
    dim: usize,
    k: usize,
    beta: f32,
    out: &mut Vec<f32>,
) -> Result<()> {
    let m = rows_of(x, dim, "refinement input")?;
    if s.len() != m * m {
        return Err(KernelError::Shape(format!(
            "Gram matrix has {} values for {m} rows",
            s.len()
        )));
    }
    check_refine(m, k, beta)?;
    out.resize(m * dim, 0.0);
    if m == 0 || dim == 0 {
        return Ok(());
    }
    let lists: Vec<Vec<(usize, f32)>> = (0..m)
        .into_par_iter()
        .map(|i| {
            neighbours(&s[i * m..(i + 1) * m], i, k)
                .into_iter()
                .map(|nb| (nb.row, beta * nb.score))
                .collect()
        })
        .collect();
    // Column blocks: a block of every row (m × REFINE_COLS values) stays in
    // L2 while each row sums its neighbours' slices, instead of K scattered
    // whole rows per row streaming from L3.
    let blocks = dim.div_ceil(REFINE_COLS);
    let dst = SharedMut::new(out.as_mut_ptr());
    (0..blocks).into_par_iter().for_each(|b| {
        let (c0, c1) = (b * REFINE_COLS, ((b + 1) * REFINE_COLS).min(dim));
        for (i, list) in lists.iter().enumerate() {
            // SAFETY: row i's columns c0..c1 lie inside `out` (m × dim) and
            // belong to this block's task alone.
            let row =
                unsafe { std::slice::from_raw_parts_mut(dst.get().add(i * dim + c0), c1 - c0) };
            let inv = 1.0 / list.iter().fold(1.0f32, |t, &(_, w)| t + w);
            neighbour_sum(row, x, dim, i * dim + c0, c0, list, inv);
        }
    });
    Ok(())
}

/// `row = (x[own..] + Σ w_j x_j[c0..]) · inv` over the row's length, in
/// chunks of 32 columns held in registers across the neighbours (one pass
/// over each neighbour slice, one store); the same additions in the same
/// order per value on every CPU, 8 lanes wide where AVX2 is present.
fn neighbour_sum(
    row: &mut [f32],
    x: &[f32],
    dim: usize,
    own: usize,
    c0: usize,
    list: &[(usize, f32)],
    inv: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if super::packed_supported() {
        // SAFETY: the CPU has AVX2 (and FMA, unused: no contraction happens).
        unsafe { neighbour_sum_avx2(row, x, dim, own, c0, list, inv) };
        return;
    }
    neighbour_sum_portable(row, x, dim, own, c0, list, inv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn neighbour_sum_avx2(
    row: &mut [f32],
    x: &[f32],
    dim: usize,
    own: usize,
    c0: usize,
    list: &[(usize, f32)],
    inv: f32,
) {
    neighbour_sum_portable(row, x, dim, own, c0, list, inv)
}

#[inline(always)]
fn neighbour_sum_portable(
    row: &mut [f32],
    x: &[f32],
    dim: usize,
    own: usize,
    c0: usize,
    list: &[(usize, f32)],
    inv: f32,
) {
    const CHUNK: usize = 32;
    let len = row.len();
    let mut c = 0;
    while c < len {
        let w = CHUNK.min(len - c);
        let mut acc = [0f32; CHUNK];
        acc[..w].copy_from_slice(&x[own + c..own + c + w]);
        if w == CHUNK {
            for &(j, wt) in list {
                let src: &[f32; CHUNK] = x[j * dim + c0 + c..j * dim + c0 + c + CHUNK]
                    .try_into()
                    .expect("chunk length");
                for l in 0..CHUNK {
                    acc[l] += wt * src[l];
                }
            }
        } else {
            for &(j, wt) in list {
                for (a, &v) in acc[..w]
                    .iter_mut()
                    .zip(&x[j * dim + c0 + c..j * dim + c0 + c + w])
                {
                    *a += wt * v;
                }
            }
        }
        for (d, a) in row[c..c + w].iter_mut().zip(&acc[..w]) {
            *d = a * inv;
        }
        c += w;
    }
}

/// Columns per block of the refinement's neighbour sums.
const REFINE_COLS: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_is_the_pairwise_dot_products() {
        let dim = 5;
        let x: Vec<f32> = (0..7 * dim)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
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
        let y: Vec<f32> = (0..m * d)
            .map(|i| ((i * 31 % 23) as f32 - 11.0) / 8.0)
            .collect();
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
        let want = [
            (1.0 + 0.18) / 1.3,
            0.24 / 1.3,
            0.6 / 1.4,
            (0.8 + 0.4) / 1.4,
            0.24 / 1.4,
            (1.0 + 0.32) / 1.4,
        ];
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
                let mut all: Vec<Scored> = row
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(j, &s)| Scored { row: j, score: s })
                    .collect();
                all.sort_by(better);
                all.truncate(k);
                assert_eq!(
                    got,
                    all.iter().map(|s| s.row).collect::<Vec<_>>(),
                    "k = {k}, i = {i}"
                );
            }
        }
    }
}
