//! SuperGlobal reranking (Shao et al., ICCV 2023): refine the top-M
//! descriptors with their neighbours, expand the query, rescore. Parameters
//! and steps follow `shared/reference/algorithms.md` §1:
//!
//! 1. R = the first stage's top M (its order is the initial ranking by X·q).
//! 2. Database side: each x_i in R is averaged with its K most similar other
//!    members of R, weighted β·s_ij (itself with weight 1; no renormalisation)
//!    → x̃_i; s1_i = q·x̃_i; R is re-sorted by s1.
//! 3. Query side: q̃ = element-wise max of the top 10 x̃ of that order (the
//!    query itself not included, as in the authors' code); final score
//!    (s1_i + q̃·x̃_i) / 2; R is sorted by it.
//! 4. Items below M keep their first-stage order and scores after R.
//!
//! Ties keep the earlier order (stable sorts). The M×M Gram product and the
//! neighbour averaging run on the kernels' CPU or GPU backend.

use std::cell::RefCell;

use rayon::prelude::*;
use squire_kernels::{Compute, KernelError};

/// SuperGlobal's parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SuperGlobalParams {
    /// Candidates refined (top-M); the rest keep their order.
    pub m: usize,
    /// Neighbours averaged into each candidate (K).
    pub k: usize,
    /// Weight of a neighbour per unit of similarity (β).
    pub beta: f32,
    /// Refined candidates whose element-wise max expands the query (the
    /// authors' code, `RerankwMDA.py`, takes K + 1; the CLI defaults to that).
    pub query_top: usize,
}

impl Default for SuperGlobalParams {
    /// The paper's values: M = 400, K = 9, β = 0.15, query expansion over the top K + 1 = 10.
    fn default() -> Self {
        SuperGlobalParams {
            m: 400,
            k: 9,
            beta: 0.15,
            query_top: 10,
        }
    }
}

/// One ranked item: a row of the database and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Row in the database matrix.
    pub row: usize,
    /// Score (after reranking: the final SuperGlobal score for the top M).
    pub score: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    squire_kernels::cpu::dot_f32(a, b)
}

thread_local! {
    /// The gathered top-M descriptors of the last query on this thread.
    static GATHER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Their refined descriptors.
    static REFINED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Reranks `ranking` (best first; rows of `database`, an `n × dim` row-major
/// matrix of L2-normalised descriptors) for `query` (L2-normalised).
pub fn rerank(
    compute: &Compute,
    query: &[f32],
    database: &[f32],
    dim: usize,
    ranking: &[Ranked],
    params: &SuperGlobalParams,
) -> Result<Vec<Ranked>, KernelError> {
    if query.len() != dim {
        return Err(KernelError::Shape(format!(
            "SuperGlobal: the query has {} values, descriptors have {dim}",
            query.len()
        )));
    }
    let n = database.len() / dim.max(1);
    if let Some(bad) = ranking.iter().find(|r| r.row >= n) {
        return Err(KernelError::Shape(format!(
            "SuperGlobal: ranked row {} is outside the {n}-row database",
            bad.row
        )));
    }
    let m = params.m.min(ranking.len());
    if m == 0 {
        return Ok(ranking.to_vec());
    }
    let top = &ranking[..m];
    // Gathered on every core: the rows are scattered over the database and
    // usually not in cache, so this copy is latency-bound. Both buffers are
    // taken from per-thread slots and put back afterwards: a fresh 2 MB
    // buffer would cost its page faults on every query (a nested call on the
    // same thread finds the slots empty and allocates).
    let mut x = GATHER.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let mut refined = REFINED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    x.resize(m * dim, 0.0);
    x.par_chunks_mut(dim.max(1))
        .zip(top.par_iter())
        .for_each(|(dst, r)| {
            dst.copy_from_slice(&database[r.row * dim..(r.row + 1) * dim]);
        });
    let result = compute
        .refine_into(&x[..m * dim], dim, params.k, params.beta, &mut refined)
        .map(|()| {
            let xt = |i: usize| &refined[i * dim..(i + 1) * dim];
            // Database side: s1 = q·x̃, order R by it.
            let s1: Vec<f32> = (0..m).into_par_iter().map(|i| dot(query, xt(i))).collect();
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| s1[b].total_cmp(&s1[a]));
            // Query side: q̃ = element-wise max over the top x̃ of that order.
            let mut expanded = vec![f32::NEG_INFINITY; dim];
            for &i in order.iter().take(params.query_top.max(1)) {
                for (e, &v) in expanded.iter_mut().zip(xt(i)) {
                    *e = e.max(v);
                }
            }
            let fin: Vec<f32> = (0..m)
                .into_par_iter()
                .map(|i| (s1[i] + dot(&expanded, xt(i))) / 2.0)
                .collect();
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| fin[b].total_cmp(&fin[a]));
            let mut out: Vec<Ranked> = order
                .iter()
                .map(|&i| Ranked {
                    row: top[i].row,
                    score: fin[i],
                })
                .collect();
            out.extend_from_slice(&ranking[m..]);
            out
        });
    GATHER.with(|c| *c.borrow_mut() = x);
    REFINED.with(|c| *c.borrow_mut() = refined);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn a_hand_built_case() {
        // Query q = e0. Database (2-D, unit vectors):
        //   row 0: a = (0.8, 0.6)    q·a = 0.8   (first-stage rank 1)
        //   row 1: b = (0.6, -0.8)   q·b = 0.6   (rank 2)
        //   row 2: c = (0.6, -0.8)   q·c = 0.6   (rank 3, duplicate of b)
        // K = 1, β = 1: a's nearest other is b (s = 0, ties → lower index):
        //   ã = (a + 0·b) / 1 = a;   s1 = 0.8
        // b's nearest other is c (s = 1): b̃ = (b + c) / 2 = b; s1 = 0.6; c̃ = c.
        // Query side over the top 10: q̃ = max(a, b, c) = (0.8, 0.6).
        //   final(a) = (0.8 + q̃·a) / 2 = (0.8 + 1.0) / 2 = 0.9
        //   final(b) = (0.6 + q̃·b) / 2 = (0.6 + 0.0) / 2 = 0.3, same for c.
        let db = [0.8f32, 0.6, 0.6, -0.8, 0.6, -0.8];
        let ranking = [
            Ranked { row: 0, score: 0.8 },
            Ranked { row: 1, score: 0.6 },
            Ranked { row: 2, score: 0.6 },
        ];
        let p = SuperGlobalParams {
            m: 3,
            k: 1,
            beta: 1.0,
            query_top: 10,
        };
        let got = rerank(&Compute::cpu(), &[1.0, 0.0], &db, 2, &ranking, &p).unwrap();
        let rows: Vec<usize> = got.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![0, 1, 2]);
        for (g, want) in got.iter().zip([0.9f32, 0.3, 0.3]) {
            assert!((g.score - want).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn neighbours_lift_a_candidate_whose_cluster_matches_the_query() {
        // q = e0. The distractor d leads the first stage (q·d = 0.75) but its
        // near-duplicates d', d'' (s ≈ 0.85 with d) point away from q (q· ≈ 0.3);
        // the true match t (q·t = 0.70) has near-duplicates t', t'' that agree
        // with q. Refinement (K = 2, β = 0.5) drags d down to ≈ 0.55 and keeps
        // t at ≈ 0.69; query expansion over the top 2 then widens the gap.
        let q = unit(&[1.0, 0.0, 0.0]);
        let rows = [
            unit(&[0.75, 0.66, 0.0]),    // 0: d
            unit(&[0.70, -0.71, 0.0]),   // 1: t
            unit(&[0.69, -0.72, 0.05]),  // 2: t'
            unit(&[0.68, -0.72, -0.05]), // 3: t''
            unit(&[0.3, 0.95, 0.0]),     // 4: d'
            unit(&[0.3, 0.9, 0.3]),      // 5: d''
        ];
        let db: Vec<f32> = rows.concat();
        let mut ranking: Vec<Ranked> = (0..rows.len())
            .map(|r| Ranked {
                row: r,
                score: dot(&q, &rows[r]),
            })
            .collect();
        ranking.sort_by(|a, b| b.score.total_cmp(&a.score));
        assert_eq!(
            ranking.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 5, 4]
        );
        let p = SuperGlobalParams {
            m: 6,
            k: 2,
            beta: 0.5,
            query_top: 2,
        };
        let got = rerank(&Compute::cpu(), &q, &db, 3, &ranking, &p).unwrap();
        let order: Vec<usize> = got.iter().map(|r| r.row).collect();
        assert_eq!(&order[..3], &[1, 2, 3], "the t cluster leads: {got:?}");
        assert_eq!(order[3], 0, "d falls behind it: {got:?}");
    }

    #[test]
    fn items_below_m_keep_their_order_and_errors_are_clear() {
        let db: Vec<f32> = (0..20).flat_map(|i| unit(&[1.0, i as f32 * 0.1])).collect();
        let ranking: Vec<Ranked> = (0..10)
            .rev()
            .map(|r| Ranked {
                row: r,
                score: r as f32,
            })
            .collect();
        let p = SuperGlobalParams {
            m: 4,
            ..SuperGlobalParams::default()
        };
        let got = rerank(&Compute::cpu(), &unit(&[1.0, 0.3]), &db, 2, &ranking, &p).unwrap();
        assert_eq!(&got[4..], &ranking[4..]);
        let mut head: Vec<usize> = got[..4].iter().map(|r| r.row).collect();
        head.sort();
        assert_eq!(head, vec![6, 7, 8, 9]);
        assert!(rerank(&Compute::cpu(), &[1.0], &db, 2, &ranking, &p).is_err());
        let bad = [Ranked {
            row: 99,
            score: 0.0,
        }];
        assert!(rerank(&Compute::cpu(), &[1.0, 0.0], &db, 2, &bad, &p).is_err());
        assert!(rerank(&Compute::cpu(), &[1.0, 0.0], &db, 2, &[], &p)
            .unwrap()
            .is_empty());
    }
}
