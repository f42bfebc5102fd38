//! Brute-force search over a dense matrix: exact, for small collections and
//! for measuring the recall of approximate stores. The collection also keeps
//! one per named vector as the source its HNSW indexes are built from.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;

use super::{check_batch, check_query, top_k, Hit, SearchParams, StoreKind, VectorStore};
use crate::error::{IndexError, Result};

/// Row-major `len × dim` vectors with one key per row.
#[derive(Debug, Clone, Default)]
pub struct ExactStore {
    dim: usize,
    keys: Vec<u64>,
    data: Vec<f32>,
    /// The keys as a set, so that an `add` checks for replacements in O(batch).
    present: HashSet<u64>,
}

fn corrupt(dir: &Path, file: &str, message: String) -> IndexError {
    IndexError::Corrupt { path: dir.join(file), message }
}

impl ExactStore {
    /// An empty store of `dim`-long vectors.
    pub fn new(dim: usize) -> Self {
        ExactStore { dim, keys: Vec::new(), data: Vec::new(), present: HashSet::new() }
    }

    /// Wraps `data` (`keys.len() × dim`, row-major).
    pub fn from_rows(dim: usize, keys: Vec<u64>, data: Vec<f32>) -> Result<Self> {
        if data.len() != keys.len() * dim {
            return Err(IndexError::InvalidRequest(format!(
                "{} values for {} keys × {dim} dims",
                data.len(),
                keys.len()
            )));
        }
        let present = keys.iter().copied().collect();
        Ok(ExactStore { dim, keys, data, present })
    }

    /// Reads `<name>.f32` and `<name>.keys` from `bytes` (files of `dir`).
    pub fn open(dim: usize, dir: &Path, name: &str, bytes: &mut HashMap<String, Vec<u8>>) -> Result<Self> {
        let (vf, kf) = (format!("{name}.f32"), format!("{name}.keys"));
        let v = bytes.remove(&vf).ok_or_else(|| corrupt(dir, &vf, "missing".into()))?;
        let k = bytes.remove(&kf).ok_or_else(|| corrupt(dir, &kf, "missing".into()))?;
        if k.len() % 8 != 0 || v.len() != k.len() / 8 * dim * 4 {
            return Err(corrupt(dir, &vf, format!("{} bytes for {} keys × {dim} dims", v.len(), k.len() / 8)));
        }
        let keys: Vec<u64> = k.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        let data = v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let present = keys.iter().copied().collect();
        Ok(ExactStore { dim, keys, data, present })
    }

    /// The vector in row `row` (rows are in insertion order).
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.dim..(row + 1) * self.dim]
    }

    /// Keys in row order.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// The row-major matrix.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Exact top-`k` for many queries at once (`queries` is `q × dim`):
    /// blocked matrix products, much faster than `q` single searches.
    pub fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        if self.dim == 0 || queries.len() % self.dim != 0 {
            return Err(IndexError::InvalidRequest(format!(
                "{} query values are not a whole number of {}-dim vectors",
                queries.len(),
                self.dim
            )));
        }
        Ok(squire_kernels::cpu::inner_product_topk(&self.data, queries, self.dim, k)
            .into_iter()
            .map(|hits| hits.into_iter().map(|s| Hit { key: self.keys[s.row], score: s.score }).collect())
            .collect())
    }

    /// Keeps the rows whose key is in `keep`, in their order.
    pub fn retain(&mut self, keep: &HashSet<u64>) {
        let dim = self.dim;
        let mut w = 0;
        for r in 0..self.keys.len() {
            if keep.contains(&self.keys[r]) {
                if w != r {
                    self.keys[w] = self.keys[r];
                    self.data.copy_within(r * dim..(r + 1) * dim, w * dim);
                }
                w += 1;
            }
        }
        self.keys.truncate(w);
        self.data.truncate(w * dim);
        self.present = self.keys.iter().copied().collect();
    }
}

impl VectorStore for ExactStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Exact
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn add(&mut self, keys: &[u64], vectors: &[f32]) -> Result<()> {
        check_batch(keys, vectors, self.dim)?;
        if keys.iter().any(|k| self.present.contains(k)) {
            let new: HashSet<u64> = keys.iter().copied().collect();
            let keep: HashSet<u64> = self.keys.iter().copied().filter(|k| !new.contains(k)).collect();
            self.retain(&keep);
        }
        self.keys.extend_from_slice(keys);
        self.present.extend(keys);
        self.data.extend_from_slice(vectors);
        Ok(())
    }

    fn remove(&mut self, keys: &[u64]) -> Result<bool> {
        let gone: HashSet<u64> = keys.iter().copied().collect();
        let keep: HashSet<u64> = self.keys.iter().copied().filter(|k| !gone.contains(k)).collect();
        self.retain(&keep);
        Ok(true)
    }

    fn search(&self, query: &[f32], k: usize, _params: &SearchParams) -> Result<Vec<Hit>> {
        check_query(query, self.dim)?;
        if k == 0 || self.dim == 0 {
            return Ok(Vec::new());
        }
        let hits: Vec<Hit> = self
            .data
            .par_chunks(self.dim)
            .zip(self.keys.par_iter())
            .map(|(v, &key)| Hit { key, score: v.iter().zip(query).map(|(a, b)| a * b).sum() })
            .collect();
        Ok(top_k(hits, k))
    }

    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let (vf, kf) = (format!("{name}.f32"), format!("{name}.keys"));
        let mut v = Vec::with_capacity(self.data.len() * 4);
        for x in &self.data {
            v.extend_from_slice(&x.to_le_bytes());
        }
        let mut k = Vec::with_capacity(self.keys.len() * 8);
        for x in &self.keys {
            k.extend_from_slice(&x.to_le_bytes());
        }
        crate::fsio::write_synced(&dir.join(&vf), &v)?;
        crate::fsio::write_synced(&dir.join(&kf), &k)?;
        Ok(vec![vf, kf])
    }
}
