//! CPU similarity and top-k: rayon over blocks of database rows.
//!
//! Two paths, chosen by the number of queries:
//! - **streaming** (fewer than [`GEMM_MIN_QUERIES`] queries): each row is read
//!   once and dotted with every query while it is in L1 (explicit AVX2/FMA,
//!   F16C for f16 rows); memory-bandwidth bound.
//! - **blocked** (more queries): a block of rows (converted to f32 once if
//!   stored as f16) is multiplied with up to 256 queries at a time by the
//!   `gemm` crate's cache-blocked kernels; compute bound.
//!
//! Both keep each query's best candidates with a running floor, so the top-k
//! costs O(rows) comparisons plus O(k log k) per block.

use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;

use super::simd::{dot_f16, dot_f32};
use crate::types::{better, Scored};

/// Database rows per parallel block.
const BLOCK_ROWS: usize = 2048;
/// Queries multiplied together against a block.
const QUERY_CHUNK: usize = 256;
/// From this many queries on, blocks are scored with matrix products.
pub const GEMM_MIN_QUERIES: usize = 8;

/// Database rows as stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowsRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl RowsRef<'_> {
    fn len_values(&self) -> usize {
        match self {
            RowsRef::F32(v) => v.len(),
            RowsRef::F16(v) => v.len(),
        }
    }
}

/// Keeps the best `k` of `list` (any order).
fn keep_best(list: &mut Vec<Scored>, k: usize) {
    if list.len() > k {
        list.select_nth_unstable_by(k - 1, better);
        list.truncate(k);
    }
}

/// A query's running candidates: appends while above the floor, trims to `k`
/// when it holds `2k`.
struct Candidates {
    list: Vec<Scored>,
    floor: f32,
    k: usize,
}

impl Candidates {
    fn new(k: usize) -> Self {
        Candidates { list: Vec::with_capacity(2 * k), floor: f32::NEG_INFINITY, k }
    }

    #[inline]
    fn offer(&mut self, row: usize, score: f32) {
        if score >= self.floor {
            self.list.push(Scored { row, score });
            if self.list.len() >= 2 * self.k {
                keep_best(&mut self.list, self.k);
                self.floor = self.list.iter().map(|x| x.score).fold(f32::INFINITY, f32::min);
            }
        }
    }

    fn finish(mut self) -> Vec<Scored> {
        keep_best(&mut self.list, self.k);
        self.list
    }
}

/// Exact top-`k` rows of `base` (`n × dim`, row-major) by inner product for
/// each query in `queries` (`q × dim`), best first, ties by ascending row.
pub fn inner_product_topk(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<Vec<Scored>> {
    topk_rows(RowsRef::F32(base), dim, None, queries, k)
}

/// Top-`k` of `rows` for every query; scores are multiplied by `inv_norms[row]`
/// when given (cosine with pre-normalised queries).
pub(crate) fn topk_rows(rows: RowsRef<'_>, dim: usize, inv_norms: Option<&[f32]>, queries: &[f32], k: usize) -> Vec<Vec<Scored>> {
    if dim == 0 {
        return Vec::new();
    }
    let nq = queries.len() / dim;
    if k == 0 || nq == 0 {
        return vec![Vec::new(); nq];
    }
    let n = rows.len_values() / dim;
    let blocks = n.div_ceil(BLOCK_ROWS);
    let partial: Vec<Vec<Vec<Scored>>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * BLOCK_ROWS, ((b + 1) * BLOCK_ROWS).min(n));
            let mut best: Vec<Candidates> = (0..nq).map(|_| Candidates::new(k)).collect();
            if nq < GEMM_MIN_QUERIES {
                stream_block(rows, dim, lo, hi, inv_norms, queries, |q, row, s| best[q].offer(row, s));
            } else {
                gemm_block(rows, dim, lo, hi, inv_norms, queries, |q, row, s| best[q].offer(row, s));
            }
            best.into_iter().map(Candidates::finish).collect()
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

/// Every score: `q × n`, row-major by query.
pub(crate) fn scores_rows(rows: RowsRef<'_>, dim: usize, inv_norms: Option<&[f32]>, queries: &[f32]) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let nq = queries.len() / dim;
    let n = rows.len_values() / dim;
    let blocks = n.div_ceil(BLOCK_ROWS);
    let parts: Vec<(usize, Vec<f32>)> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * BLOCK_ROWS, ((b + 1) * BLOCK_ROWS).min(n));
            let width = hi - lo;
            let mut out = vec![0f32; nq * width];
            let sink = |q: usize, row: usize, s: f32| out[q * width + row - lo] = s;
            if nq < GEMM_MIN_QUERIES {
                stream_block(rows, dim, lo, hi, inv_norms, queries, sink);
            } else {
                gemm_block(rows, dim, lo, hi, inv_norms, queries, sink);
            }
            (lo, out)
        })
        .collect();
    let mut all = vec![0f32; nq * n];
    for (lo, part) in parts {
        let width = part.len() / nq.max(1);
        for q in 0..nq {
            all[q * n + lo..q * n + lo + width].copy_from_slice(&part[q * width..(q + 1) * width]);
        }
    }
    all
}

/// Scores rows `lo..hi` against every query one row at a time.
fn stream_block(
    rows: RowsRef<'_>,
    dim: usize,
    lo: usize,
    hi: usize,
    inv_norms: Option<&[f32]>,
    queries: &[f32],
    mut sink: impl FnMut(usize, usize, f32),
) {
    for r in lo..hi {
        let scale = inv_norms.map_or(1.0, |n| n[r]);
        for (q, qv) in queries.chunks_exact(dim).enumerate() {
            let s = match rows {
                RowsRef::F32(v) => dot_f32(&v[r * dim..(r + 1) * dim], qv),
                RowsRef::F16(v) => dot_f16(&v[r * dim..(r + 1) * dim], qv),
            };
            sink(q, r, s * scale);
        }
    }
}

/// Scores rows `lo..hi` against the queries with matrix products.
fn gemm_block(
    rows: RowsRef<'_>,
    dim: usize,
    lo: usize,
    hi: usize,
    inv_norms: Option<&[f32]>,
    queries: &[f32],
    mut sink: impl FnMut(usize, usize, f32),
) {
    let width = hi - lo;
    let converted;
    let block: &[f32] = match rows {
        RowsRef::F32(v) => &v[lo * dim..hi * dim],
        RowsRef::F16(v) => {
            let mut buf = vec![0f32; width * dim];
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&v[lo * dim..hi * dim], &mut buf);
            converted = buf;
            &converted
        }
    };
    let nq = queries.len() / dim;
    let mut scores = vec![0f32; QUERY_CHUNK.min(nq) * width];
    for (c, qs) in queries.chunks(QUERY_CHUNK * dim).enumerate() {
        let m = qs.len() / dim;
        // SAFETY: dst is m × width (row stride width), lhs m × dim (row stride
        // dim), rhs is the block read as dim × width (column j = row j, stride dim).
        unsafe {
            gemm::gemm(
                m,
                width,
                dim,
                scores.as_mut_ptr(),
                1,
                width as isize,
                false,
                qs.as_ptr(),
                1,
                dim as isize,
                block.as_ptr(),
                dim as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for i in 0..m {
            let row_scores = &scores[i * width..(i + 1) * width];
            match inv_norms {
                None => row_scores.iter().enumerate().for_each(|(j, &s)| sink(c * QUERY_CHUNK + i, lo + j, s)),
                Some(n) => row_scores
                    .iter()
                    .zip(&n[lo..hi])
                    .enumerate()
                    .for_each(|(j, (&s, &inv))| sink(c * QUERY_CHUNK + i, lo + j, s * inv)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn naive(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<Vec<Scored>> {
        queries
            .chunks(dim)
            .map(|qv| {
                let mut all: Vec<Scored> = base
                    .chunks(dim)
                    .enumerate()
                    .map(|(r, v)| Scored { row: r, score: v.iter().zip(qv).map(|(a, b)| a * b).sum() })
                    .collect();
                all.sort_by(better);
                all.truncate(k);
                all
            })
            .collect()
    }

    #[test]
    fn both_paths_match_a_naive_scan() {
        let (n, dim, k) = (9000, 24, 7);
        let base = rnd(12345, n * dim);
        for nq in [1usize, 3, 300] {
            let queries = rnd(nq as u64, nq * dim);
            let got = inner_product_topk(&base, &queries, dim, k);
            let want = naive(&base, &queries, dim, k);
            assert_eq!(got.len(), nq);
            for (q, (h, w)) in got.iter().zip(&want).enumerate() {
                let have: Vec<usize> = h.iter().map(|x| x.row).collect();
                let expect: Vec<usize> = w.iter().map(|x| x.row).collect();
                assert_eq!(have, expect, "{nq} queries, query {q}");
                for (a, b) in h.iter().zip(w) {
                    assert!((a.score - b.score).abs() < 1e-4);
                }
            }
        }
        let queries = rnd(9, 3 * dim);
        assert!(inner_product_topk(&base, &queries, dim, 0).iter().all(|h| h.is_empty()));
        assert_eq!(inner_product_topk(&base[..5 * dim], &queries[..dim], dim, 10)[0].len(), 5);
    }

    #[test]
    fn ties_break_by_row_and_scores_cover_every_row() {
        // Every row equal: the top-k is rows 0..k in order, on both paths.
        let dim = 8;
        let base = vec![0.25f32; 5000 * dim];
        for nq in [1usize, 20] {
            let queries = vec![1.0f32; nq * dim];
            for hits in inner_product_topk(&base, &queries, dim, 1000) {
                assert_eq!(hits.len(), 1000);
                assert!(hits.iter().enumerate().all(|(i, h)| h.row == i && h.score == 2.0));
            }
            let all = scores_rows(RowsRef::F32(&base), dim, None, &queries);
            assert_eq!(all.len(), nq * 5000);
            assert!(all.iter().all(|&s| s == 2.0));
        }
    }
}
