//! The alternative embedded store: an HNSW graph on hnsw_rs (dot-product
//! distance over normalised vectors), saved as `<name>.hnsw.graph` and
//! `<name>.hnsw.data`. hnsw_rs cannot delete, so [`VectorStore::remove`]
//! reports `false` and the collection rebuilds the graph from its vectors.

use std::collections::HashSet;
use std::path::Path;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{DistDot, Hnsw};

use super::{check_batch, check_query, Hit, SearchParams, StoreConfig, StoreKind, VectorStore};
use crate::error::{IndexError, Result};

/// Most layers hnsw_rs supports.
const MAX_LAYERS: usize = 16;

/// HNSW on hnsw_rs. Keys are the collection's image ids.
pub struct HnswRsStore {
    graph: Hnsw<'static, f32, DistDot>,
    keys: HashSet<u64>,
    dim: usize,
    /// Its configuration (the default search breadth comes from it).
    config: StoreConfig,
}

impl std::fmt::Debug for HnswRsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswRsStore")
            .field("dim", &self.dim)
            .field("len", &self.keys.len())
            .finish()
    }
}

/// hnsw_rs exits the process for more than 256 links; stay well inside.
fn connectivity(config: &StoreConfig) -> usize {
    config.connectivity.clamp(2, 255)
}

impl HnswRsStore {
    /// An empty graph for `dim`-long vectors.
    pub fn new(config: &StoreConfig, dim: usize) -> Self {
        let graph = Hnsw::new(
            connectivity(config),
            10_000,
            MAX_LAYERS,
            config.expansion_add.max(1),
            DistDot,
        );
        HnswRsStore {
            graph,
            keys: HashSet::new(),
            dim,
            config: *config,
        }
    }

    /// Reloads the graph saved under `name` in `dir` (files already checksummed).
    pub fn open(config: &StoreConfig, dim: usize, dir: &Path, name: &str) -> Result<Self> {
        if !dir.join(format!("{name}.hnsw.graph")).is_file() {
            return Ok(Self::new(config, dim));
        }
        let corrupt = |message: String| IndexError::Corrupt {
            path: dir.join(format!("{name}.hnsw.graph")),
            message,
        };
        // hnsw_rs ties the loaded graph's lifetime to its loader; the loader is
        // a small struct (a path and options), so it is leaked to give the
        // graph a 'static lifetime. The graph's data is copied into memory.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, name)));
        let graph: Hnsw<'static, f32, DistDot> = io
            .load_hnsw::<f32, DistDot>()
            .map_err(|e| corrupt(e.to_string()))?;
        let keys: HashSet<u64> = graph
            .get_point_indexation()
            .into_iter()
            .map(|p| p.get_origin_id() as u64)
            .collect();
        Ok(HnswRsStore {
            graph,
            keys,
            dim,
            config: *config,
        })
    }
}

impl VectorStore for HnswRsStore {
    fn kind(&self) -> StoreKind {
        StoreKind::HnswRs
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn add(&mut self, keys: &[u64], vectors: &[f32]) -> Result<()> {
        check_batch(keys, vectors, self.dim)?;
        if let Some(k) = keys.iter().find(|k| self.keys.contains(k)) {
            return Err(IndexError::InvalidRequest(format!(
                "hnsw_rs cannot replace the vector of key {k}; rebuild the store"
            )));
        }
        let items: Vec<(&[f32], usize)> = vectors
            .chunks_exact(self.dim)
            .zip(keys)
            .map(|(v, &k)| (v, k as usize))
            .collect();
        self.graph.parallel_insert_slice(&items);
        self.keys.extend(keys);
        Ok(())
    }

    fn remove(&mut self, keys: &[u64]) -> Result<bool> {
        Ok(!keys.iter().any(|k| self.keys.contains(k)))
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Hit>> {
        check_query(query, self.dim)?;
        if k == 0 || self.keys.is_empty() {
            return Ok(Vec::new());
        }
        let ef = params
            .ef
            .unwrap_or_else(|| self.config.search_breadth(self.keys.len()))
            .max(k);
        let found = self.graph.search(query, k, ef);
        Ok(found
            .iter()
            .map(|n| Hit {
                key: n.d_id as u64,
                score: 1.0 - n.distance,
            })
            .collect())
    }

    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let err = |e: String| IndexError::Store {
            backend: "hnsw_rs",
            message: e,
        };
        if self.keys.is_empty() {
            // hnsw_rs cannot dump an empty graph; an absent file reads back as empty.
            return Ok(Vec::new());
        }
        for ext in ["hnsw.graph", "hnsw.data"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.{ext}")));
        }
        let base = self
            .graph
            .file_dump(dir, name)
            .map_err(|e| err(e.to_string()))?;
        if base != name {
            return Err(err(format!("wrote {base}.hnsw.* instead of {name}.hnsw.*")));
        }
        let files = vec![format!("{name}.hnsw.graph"), format!("{name}.hnsw.data")];
        for f in &files {
            crate::fsio::sync_file(&dir.join(f))?;
        }
        Ok(files)
    }
}
