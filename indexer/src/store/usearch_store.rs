//! The default store: an embedded HNSW graph on usearch (inner-product
//! metric, f32 or f16 elements), saved as one file `<name>.usearch`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::{check_batch, check_query, Hit, SearchParams, StoreConfig, StoreKind, StoredPrecision, VectorStore};
use crate::error::{IndexError, Result};

fn err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store { backend: "usearch", message: e.to_string() }
}

/// HNSW on usearch. Keys are the collection's image ids.
pub struct UsearchStore {
    index: Index,
    dim: usize,
    /// Memory-mapped read-only (`view`).
    read_only: bool,
    /// Its configuration (the default search breadth comes from it).
    config: StoreConfig,
    /// The `ef` the index is currently set to; searches with another `ef`
    /// take the write lock to change it.
    current_ef: RwLock<usize>,
}

impl std::fmt::Debug for UsearchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsearchStore").field("dim", &self.dim).field("len", &self.index.size()).finish()
    }
}

fn options(config: &StoreConfig, dim: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: match config.precision {
            StoredPrecision::F32 => ScalarKind::F32,
            StoredPrecision::F16 => ScalarKind::F16,
        },
        connectivity: config.connectivity,
        expansion_add: config.expansion_add,
        expansion_search: config.search_breadth(0),
        multi: false,
    }
}

impl UsearchStore {
    /// An empty index for `dim`-long vectors.
    pub fn new(config: &StoreConfig, dim: usize) -> Result<Self> {
        let index = Index::new(&options(config, dim)).map_err(err)?;
        Ok(UsearchStore {
            index,
            dim,
            read_only: false,
            config: *config,
            current_ef: RwLock::new(config.search_breadth(0)),
        })
    }

    /// Memory-maps `<name>.usearch` in `dir` read-only (usearch's `view`):
    /// opening costs no copy and the pages are shared. The file must stay in
    /// place while the store lives (unlinking it is harmless on Unix).
    pub fn view(config: &StoreConfig, dim: usize, dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.usearch"));
        let s = path.to_str().ok_or_else(|| IndexError::InvalidRequest(format!("{} is not UTF-8", path.display())))?;
        let mut store = Self::new(config, dim)?;
        store.index.view(s).map_err(|e| IndexError::Corrupt { path: path.clone(), message: e.to_string() })?;
        if store.index.dimensions() != dim {
            return Err(IndexError::Corrupt { path, message: format!("{} dims, the manifest says {dim}", store.index.dimensions()) });
        }
        store.use_default_breadth();
        store.read_only = true;
        Ok(store)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(IndexError::InvalidRequest("this usearch index is a read-only view".into()));
        }
        Ok(())
    }

    /// Loads `<name>.usearch` from `bytes` (files of `dir`, already checksummed).
    pub fn open(config: &StoreConfig, dim: usize, dir: &Path, name: &str, bytes: &mut HashMap<String, Vec<u8>>) -> Result<Self> {
        let file = format!("{name}.usearch");
        let buf = bytes
            .remove(&file)
            .ok_or_else(|| IndexError::Corrupt { path: dir.join(&file), message: "missing".into() })?;
        let mut store = Self::new(config, dim)?;
        store
            .index
            .load_from_buffer(&buf)
            .map_err(|e| IndexError::Corrupt { path: dir.join(&file), message: e.to_string() })?;
        if store.index.dimensions() != dim {
            return Err(IndexError::Corrupt {
                path: dir.join(&file),
                message: format!("{} dims, the manifest says {dim}", store.index.dimensions()),
            });
        }
        store.use_default_breadth();
        Ok(store)
    }

    /// After a load: sets the index's search breadth to the default for the
    /// size it now has, so queries that name none need no change of it.
    fn use_default_breadth(&mut self) {
        let ef = self.config.search_breadth(self.index.size());
        self.index.change_expansion_search(ef);
        *self.current_ef.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = ef;
    }

    /// Bytes of memory the index uses (graph and vectors).
    pub fn memory_usage(&self) -> usize {
        self.index.memory_usage()
    }

    fn reserve(&self, extra: usize) -> Result<()> {
        let need = self.index.size() + extra;
        let threads = rayon::current_num_threads().max(1);
        if need > self.index.capacity() {
            let cap = need.max(self.index.capacity() * 3 / 2).max(64);
            self.index.reserve_capacity_and_threads(cap, threads).map_err(err)?;
        }
        Ok(())
    }
}

impl VectorStore for UsearchStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Usearch
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.index.size()
    }

    fn add(&mut self, keys: &[u64], vectors: &[f32]) -> Result<()> {
        self.writable()?;
        check_batch(keys, vectors, self.dim)?;
        for &k in keys {
            if self.index.contains(k) {
                self.index.remove(k).map_err(err)?;
            }
        }
        self.reserve(keys.len())?;
        let index = &self.index;
        keys.par_iter()
            .zip(vectors.par_chunks(self.dim))
            .try_for_each(|(&k, v)| index.add(k, v).map_err(err))
    }

    fn remove(&mut self, keys: &[u64]) -> Result<bool> {
        self.writable()?;
        for &k in keys {
            self.index.remove(k).map_err(err)?;
        }
        Ok(true)
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Hit>> {
        check_query(query, self.dim)?;
        if k == 0 || self.index.size() == 0 {
            return Ok(Vec::new());
        }
        let ef = params.ef.unwrap_or_else(|| self.config.search_breadth(self.index.size())).max(k);
        let matches = {
            let cur = self.current_ef.read().map_err(err)?;
            if *cur == ef {
                self.index.search(query, k).map_err(err)?
            } else {
                drop(cur);
                let mut cur = self.current_ef.write().map_err(err)?;
                self.index.change_expansion_search(ef);
                *cur = ef;
                self.index.search(query, k).map_err(err)?
            }
        };
        Ok(matches.keys.iter().zip(&matches.distances).map(|(&key, &d)| Hit { key, score: 1.0 - d }).collect())
    }

    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let file = format!("{name}.usearch");
        let path = dir.join(&file);
        let s = path.to_str().ok_or_else(|| IndexError::InvalidRequest(format!("{} is not UTF-8", path.display())))?;
        self.index.save(s).map_err(err)?;
        crate::fsio::sync_file(&path)?;
        Ok(vec![file])
    }
}
