//! CPU backend: cache-blocked matrix products (the `gemm` crate's AVX2/FMA
//! kernels) and rayon over blocks of the database.

use gemm::Parallelism;
use rayon::prelude::*;

/// Database rows per block: one block's scores for a query chunk stay in L2.
const BLOCK_ROWS: usize = 4096;
/// Queries scored together against a block.
const QUERY_CHUNK: usize = 256;

/// One scored row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Row in the database.
    pub row: usize,
    /// Inner product with the query.
    pub score: f32,
}

fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.row.cmp(&b.row))
}

/// Keeps the best `k` of `list` (descending score, then ascending row).
fn keep_best(list: &mut Vec<Scored>, k: usize) {
    if list.len() > k {
        list.select_nth_unstable_by(k - 1, better);
        list.truncate(k);
    }
}

/// Exact top-`k` rows of `base` (`n × dim`, row-major) by inner product for
/// each query in `queries` (`q × dim`), best first, ties by ascending row.
/// Blocks of the database are scored in parallel with a matrix product, so
/// the database is read once per 256 queries rather than once per query.
pub fn inner_product_topk(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<Vec<Scored>> {
    if dim == 0 || k == 0 {
        return vec![Vec::new(); if dim == 0 { 0 } else { queries.len() / dim }];
    }
    let nq = queries.len() / dim;
    let partial: Vec<Vec<Vec<Scored>>> = base
        .par_chunks(BLOCK_ROWS * dim)
        .enumerate()
        .map(|(b, block)| {
            let rows = block.len() / dim;
            let mut best = vec![Vec::with_capacity(2 * k); nq];
            let mut scores = vec![0f32; QUERY_CHUNK.min(nq) * rows];
            for (c, qs) in queries.chunks(QUERY_CHUNK * dim).enumerate() {
                let m = qs.len() / dim;
                // SAFETY: dst is m × rows (row stride rows), lhs m × dim (row stride dim),
                // rhs is the block read as dim × rows (column j = block row j, stride dim).
                unsafe {
                    gemm::gemm(
                        m, rows, dim, scores.as_mut_ptr(), 1, rows as isize, false,
                        qs.as_ptr(), 1, dim as isize, block.as_ptr(), dim as isize, 1,
                        0.0, 1.0, false, false, false, Parallelism::None,
                    );
                }
                for i in 0..m {
                    let list = &mut best[c * QUERY_CHUNK + i];
                    let row_scores = &scores[i * rows..(i + 1) * rows];
                    let mut floor = f32::NEG_INFINITY;
                    for (j, &s) in row_scores.iter().enumerate() {
                        if s >= floor {
                            list.push(Scored { row: b * BLOCK_ROWS + j, score: s });
                            if list.len() >= 2 * k {
                                keep_best(list, k);
                                floor = list.iter().map(|x| x.score).fold(f32::INFINITY, f32::min);
                            }
                        }
                    }
                    keep_best(list, k);
                }
            }
            best
        })
        .collect();
    (0..nq)
        .map(|q| {
            let mut all: Vec<Scored> = partial.iter().flat_map(|p| p[q].iter().copied()).collect();
            keep_best(&mut all, k);
            all.sort_by(better);
            all
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_scan() {
        let (n, dim, nq, k) = (9000, 24, 300, 7);
        let mut s = 12345u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let base: Vec<f32> = (0..n * dim).map(|_| rnd()).collect();
        let queries: Vec<f32> = (0..nq * dim).map(|_| rnd()).collect();
        let got = inner_product_topk(&base, &queries, dim, k);
        assert_eq!(got.len(), nq);
        for (q, hits) in got.iter().enumerate() {
            let qv = &queries[q * dim..(q + 1) * dim];
            let mut all: Vec<Scored> = (0..n)
                .map(|r| Scored { row: r, score: base[r * dim..(r + 1) * dim].iter().zip(qv).map(|(a, b)| a * b).sum() })
                .collect();
            all.sort_by(better);
            let want: Vec<usize> = all[..k].iter().map(|x| x.row).collect();
            let have: Vec<usize> = hits.iter().map(|x| x.row).collect();
            assert_eq!(have, want, "query {q}");
            for (h, w) in hits.iter().zip(&all) {
                assert!((h.score - w.score).abs() < 1e-4);
            }
        }
        assert!(inner_product_topk(&base, &queries, dim, 0).iter().all(|h| h.is_empty()));
        assert_eq!(inner_product_topk(&base[..5 * dim], &queries[..dim], dim, 10)[0].len(), 5);
    }
}
