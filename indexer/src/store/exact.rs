//! Brute-force search over a dense matrix: exact, for small collections and
//! for measuring the recall of approximate stores. The collection also keeps
//! one per named vector as the source its HNSW indexes are built from.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::{check_batch, check_query, top_k, Hit, SearchParams, StoreKind, VectorStore};
use crate::error::{IndexError, Result};

/// The matrix of an [`ExactStore`]: in the heap, or the `<name>.f32` file
/// memory-mapped read-only (pages are read on first touch and shared with
/// the OS cache; a change copies the matrix into the heap first).
#[derive(Debug, Clone)]
enum Rows {
    Owned(Vec<f32>),
    Mapped(Arc<memmap2::Mmap>),
}

impl Default for Rows {
    fn default() -> Self {
        Rows::Owned(Vec::new())
    }
}

impl Rows {
    fn as_slice(&self) -> &[f32] {
        match self {
            Rows::Owned(v) => v,
            // SAFETY: `map` checked that the mapping is 4-byte aligned (it is
            // page-aligned) and a whole number of f32s; the host is
            // little-endian, as the file is; the file is never written in
            // place (a save writes a new generation), and the map lives as
            // long as the slice's borrow of `self`.
            Rows::Mapped(m) => unsafe {
                std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), m.len() / 4)
            },
        }
    }

    fn to_mut(&mut self) -> &mut Vec<f32> {
        if let Rows::Mapped(_) = self {
            *self = Rows::Owned(self.as_slice().to_vec());
        }
        match self {
            Rows::Owned(v) => v,
            Rows::Mapped(_) => unreachable!("converted above"),
        }
    }
}

/// Row-major `len × dim` vectors with one key per row.
#[derive(Debug, Clone, Default)]
pub struct ExactStore {
    dim: usize,
    keys: Vec<u64>,
    data: Rows,
    /// The keys as a set, so that an `add` checks for replacements in O(batch).
    present: HashSet<u64>,
}

fn corrupt(dir: &Path, file: &str, message: String) -> IndexError {
    IndexError::Corrupt {
        path: dir.join(file),
        message,
    }
}

/// The u64 little-endian keys of a `.keys` file.
fn decode_keys(dir: &Path, file: &str, bytes: &[u8]) -> Result<Vec<u64>> {
    if bytes.len() % 8 != 0 {
        return Err(corrupt(
            dir,
            file,
            format!("{} bytes: not a whole number of u64 keys", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

impl ExactStore {
    /// An empty store of `dim`-long vectors.
    pub fn new(dim: usize) -> Self {
        ExactStore {
            dim,
            keys: Vec::new(),
            data: Rows::default(),
            present: HashSet::new(),
        }
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
        Ok(ExactStore {
            dim,
            keys,
            data: Rows::Owned(data),
            present,
        })
    }

    /// Memory-maps `<name>.f32` in `dir` read-only, with the keys from the
    /// bytes of `<name>.keys` (in `bytes`): opening reads no vector, and
    /// checks the file's size against the keys.
    pub fn map(
        dim: usize,
        dir: &Path,
        name: &str,
        bytes: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Self> {
        let (vf, kf) = (format!("{name}.f32"), format!("{name}.keys"));
        let k = bytes
            .remove(&kf)
            .ok_or_else(|| corrupt(dir, &kf, "missing".into()))?;
        let keys = decode_keys(dir, &kf, &k)?;
        let path = dir.join(&vf);
        let file = std::fs::File::open(&path).map_err(crate::error::io(&path))?;
        let want = keys.len() * dim * 4;
        let len = file.metadata().map_err(crate::error::io(&path))?.len();
        if len != want as u64 {
            return Err(corrupt(
                dir,
                &vf,
                format!("{len} bytes for {} keys × {dim} dims", keys.len()),
            ));
        }
        let present = keys.iter().copied().collect();
        if want == 0 || cfg!(target_endian = "big") {
            let mut b = HashMap::from([
                (vf, std::fs::read(&path).map_err(crate::error::io(&path))?),
                (kf, k),
            ]);
            return Self::open(dim, dir, name, &mut b);
        }
        // SAFETY: a read-only map of a file that is never modified in place
        // (collections write new generations); see `Rows::as_slice`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(crate::error::io(&path))?;
        if map.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0 {
            return Err(corrupt(
                dir,
                &vf,
                "the mapping is not aligned for f32".into(),
            ));
        }
        Ok(ExactStore {
            dim,
            keys,
            data: Rows::Mapped(Arc::new(map)),
            present,
        })
    }

    /// Whether the matrix is a memory map of its file (not copied into the heap).
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Rows::Mapped(_))
    }

    /// Reads `<name>.f32` and `<name>.keys` from `bytes` (files of `dir`).
    pub fn open(
        dim: usize,
        dir: &Path,
        name: &str,
        bytes: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Self> {
        let (vf, kf) = (format!("{name}.f32"), format!("{name}.keys"));
        let v = bytes
            .remove(&vf)
            .ok_or_else(|| corrupt(dir, &vf, "missing".into()))?;
        let k = bytes
            .remove(&kf)
            .ok_or_else(|| corrupt(dir, &kf, "missing".into()))?;
        if k.len() % 8 != 0 || v.len() != k.len() / 8 * dim * 4 {
            return Err(corrupt(
                dir,
                &vf,
                format!("{} bytes for {} keys × {dim} dims", v.len(), k.len() / 8),
            ));
        }
        let keys = decode_keys(dir, &kf, &k)?;
        let data = v
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let present = keys.iter().copied().collect();
        Ok(ExactStore {
            dim,
            keys,
            data: Rows::Owned(data),
            present,
        })
    }

    /// The vector in row `row` (rows are in insertion order).
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data.as_slice()[row * self.dim..(row + 1) * self.dim]
    }

    /// Keys in row order.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// The row-major matrix.
    pub fn data(&self) -> &[f32] {
        self.data.as_slice()
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
        Ok(
            squire_kernels::cpu::inner_product_topk(self.data.as_slice(), queries, self.dim, k)
                .into_iter()
                .map(|hits| {
                    hits.into_iter()
                        .map(|s| Hit {
                            key: self.keys[s.row],
                            score: s.score,
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// Keeps the rows whose key is in `keep`, in their order.
    pub fn retain(&mut self, keep: &HashSet<u64>) {
        let dim = self.dim;
        if self.keys.iter().all(|k| keep.contains(k)) {
            return;
        }
        let data = self.data.to_mut();
        let mut w = 0;
        for r in 0..self.keys.len() {
            if keep.contains(&self.keys[r]) {
                if w != r {
                    self.keys[w] = self.keys[r];
                    data.copy_within(r * dim..(r + 1) * dim, w * dim);
                }
                w += 1;
            }
        }
        self.keys.truncate(w);
        data.truncate(w * dim);
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
            let keep: HashSet<u64> = self
                .keys
                .iter()
                .copied()
                .filter(|k| !new.contains(k))
                .collect();
            self.retain(&keep);
        }
        self.keys.extend_from_slice(keys);
        self.present.extend(keys);
        self.data.to_mut().extend_from_slice(vectors);
        Ok(())
    }

    fn remove(&mut self, keys: &[u64]) -> Result<bool> {
        let gone: HashSet<u64> = keys.iter().copied().collect();
        let keep: HashSet<u64> = self
            .keys
            .iter()
            .copied()
            .filter(|k| !gone.contains(k))
            .collect();
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
            .as_slice()
            .par_chunks(self.dim)
            .zip(self.keys.par_iter())
            .map(|(v, &key)| Hit {
                key,
                score: v.iter().zip(query).map(|(a, b)| a * b).sum(),
            })
            .collect();
        Ok(top_k(hits, k))
    }

    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let (vf, kf) = (format!("{name}.f32"), format!("{name}.keys"));
        let data = self.data.as_slice();
        let mut v = Vec::with_capacity(data.len() * 4);
        for x in data {
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
