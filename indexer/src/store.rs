//! Vector storage and search behind one trait, so that exact search, embedded
//! HNSW indexes and a distributed engine are interchangeable.

use rayon::prelude::*;

/// One search result: the row of the stored vector and its similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row in the store (the collection maps rows to images).
    pub row: usize,
    /// Inner product with the query (cosine for normalised vectors).
    pub score: f32,
}

/// A set of equal-length vectors searchable by inner product.
///
/// Contract: `search` returns at most `k` hits in descending score, ties broken
/// by ascending row, and never fails for a query of length [`Self::dim`].
pub trait VectorStore: Send + Sync {
    /// Length of every vector.
    fn dim(&self) -> usize;
    /// Number of stored vectors.
    fn len(&self) -> usize;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` most similar rows to `query`.
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit>;
}

/// Brute-force search over a dense row-major matrix: exact, for small
/// collections and for measuring the recall of approximate stores.
#[derive(Debug, Clone)]
pub struct ExactStore {
    dim: usize,
    data: Vec<f32>,
}

impl ExactStore {
    /// Wraps `data` (`n × dim`, row-major).
    pub fn new(dim: usize, data: Vec<f32>) -> Self {
        debug_assert!(dim == 0 || data.len() % dim == 0);
        ExactStore { dim, data }
    }

    /// Gives back the row-major matrix.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The stored vector of `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.dim..(row + 1) * self.dim]
    }
}

impl VectorStore for ExactStore {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        if self.dim == 0 {
            0
        } else {
            self.data.len() / self.dim
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        if query.len() != self.dim || k == 0 || self.dim == 0 {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = self
            .data
            .par_chunks(self.dim)
            .enumerate()
            .map(|(row, v)| Hit { row, score: v.iter().zip(query).map(|(a, b)| a * b).sum() })
            .collect();
        let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row));
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, by_score);
            hits.truncate(k);
        }
        hits.sort_by(by_score);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_search_orders_by_score_then_row() {
        let s = ExactStore::new(2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.6, 0.8]);
        let hits = s.search(&[1.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(s.search(&[1.0], 3).is_empty());
        assert_eq!(s.search(&[0.0, 1.0], 10).len(), 4);
    }
}
