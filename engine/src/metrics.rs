//! Ranking metrics as the benchmarks' reference code defines them, over a
//! ranked list of document ids (best first) and the set of relevant ids.
//!
//! - Recall@k (CIRR, FashionIQ, text-to-image): 1 when any relevant document
//!   is in the top k, else 0.
//! - AP@k (INQUIRE, CIRCO): Σ_{i ≤ k, rel_i} precision@i / min(total relevant, k),
//!   0 when nothing is relevant. INQUIRE-Rerank uses k = the list length and
//!   "total" = the positives present in the list.
//! - nDCG@k (binary gains): Σ_{i ≤ k, rel_i} 1/log2(i + 1) over the ideal
//!   ordering of min(total relevant, k) positives; relevant documents never
//!   retrieved count as missing.
//! - Reciprocal rank: 1 / rank of the first relevant document within the top k, 0 if none.
//!
//! Ties are the caller's business: the metrics score the order given
//! ([`order_by_score`] sorts stably, so tied documents keep their input order).

use std::collections::HashSet;
use std::hash::Hash;

/// 1-based rank of the first relevant document within the top `k` (`None`: none).
pub fn first_relevant<T: Eq + Hash>(
    ranked: &[T],
    relevant: &HashSet<T>,
    k: usize,
) -> Option<usize> {
    ranked
        .iter()
        .take(k)
        .position(|d| relevant.contains(d))
        .map(|p| p + 1)
}

/// Recall@k: 1 when a relevant document is in the top `k`, else 0.
pub fn recall_at<T: Eq + Hash>(ranked: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    f64::from(u8::from(first_relevant(ranked, relevant, k).is_some()))
}

/// AP@k normalised by min(`total_relevant`, k); 0 when `total_relevant` is 0.
pub fn average_precision_at<T: Eq + Hash>(
    ranked: &[T],
    relevant: &HashSet<T>,
    k: usize,
    total_relevant: usize,
) -> f64 {
    let norm = total_relevant.min(k);
    if norm == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, d) in ranked.iter().take(k).enumerate() {
        if relevant.contains(d) {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / norm as f64
}

/// nDCG@k with binary gains; the ideal list holds min(`total_relevant`, k) positives.
pub fn ndcg_at<T: Eq + Hash>(
    ranked: &[T],
    relevant: &HashSet<T>,
    k: usize,
    total_relevant: usize,
) -> f64 {
    let ideal: f64 = (0..total_relevant.min(k))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    if ideal == 0.0 {
        return 0.0;
    }
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, d)| relevant.contains(*d))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    dcg / ideal
}

/// Reciprocal rank of the first relevant document within the top `k`.
pub fn reciprocal_rank<T: Eq + Hash>(ranked: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    first_relevant(ranked, relevant, k).map_or(0.0, |r| 1.0 / r as f64)
}

/// Indices of `scores` from best to worst; equal scores keep their input order.
pub fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> HashSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn average_precision_on_hand_computed_cases() {
        // Relevant at ranks 1 and 3 of 5, two positives: (1/1 + 2/3) / 2.
        let ranked = [10, 11, 12, 13, 14];
        let rel = set(&[10, 12]);
        assert!(
            (average_precision_at(&ranked, &rel, 5, 2) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12
        );
        // Three positives in the dataset, one never retrieved: the same sum over 3.
        let rel3 = set(&[10, 12, 99]);
        assert!(
            (average_precision_at(&ranked, &rel3, 5, 3) - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12
        );
        // AP@2 normalises by min(3, 2) = 2 and sees only rank 1.
        assert!((average_precision_at(&ranked, &rel3, 2, 3) - 0.5).abs() < 1e-12);
        // No positives at all: 0, never NaN.
        assert_eq!(average_precision_at(&ranked, &set(&[]), 5, 0), 0.0);
        // Fewer results than k: the missing tail counts as not relevant.
        assert!((average_precision_at(&[12], &rel, 50, 2) - 0.5).abs() < 1e-12);
        // Positives never retrieved.
        assert_eq!(average_precision_at(&ranked, &set(&[77]), 5, 1), 0.0);
    }

    #[test]
    fn ndcg_recall_and_rr_on_hand_computed_cases() {
        let ranked = [10, 11, 12, 13];
        let rel = set(&[11, 13]);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at(&ranked, &rel, 4, 2) - dcg / ideal).abs() < 1e-12);
        // A third positive never retrieved lowers nDCG (the ideal list is longer).
        let ideal3 = ideal + 0.5;
        assert!((ndcg_at(&ranked, &rel, 4, 3) - dcg / ideal3).abs() < 1e-12);
        assert_eq!(ndcg_at(&ranked, &set(&[]), 4, 0), 0.0);
        assert_eq!(recall_at(&ranked, &rel, 1), 0.0);
        assert_eq!(recall_at(&ranked, &rel, 2), 1.0);
        assert_eq!(
            recall_at(&ranked[..1], &rel, 50),
            0.0,
            "fewer results than k"
        );
        assert_eq!(reciprocal_rank(&ranked, &rel, 10), 0.5);
        assert_eq!(reciprocal_rank(&ranked, &rel, 1), 0.0, "outside the top k");
        assert_eq!(first_relevant(&ranked, &rel, 10), Some(2));
    }

    #[test]
    fn ties_keep_their_input_order() {
        let order = order_by_score(&[0.5, 0.9, 0.5, 0.9, 0.1]);
        assert_eq!(order, [1, 3, 0, 2, 4]);
        // A relevant document tied with an irrelevant one earlier in the input ranks after it.
        let ranked: Vec<u32> = order.iter().map(|&i| i as u32).collect();
        assert_eq!(first_relevant(&ranked, &set(&[3]), 10), Some(2));
    }
}
