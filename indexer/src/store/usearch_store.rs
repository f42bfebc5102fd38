//! The default store: an embedded HNSW graph on usearch (inner-product
//! metric, f32 or f16 elements), saved as `<name>.usearch`, with the keys
//! the graph cannot reach in `<name>.unlinked`.
//!
//! **Why some keys are unlinked.** HNSW keeps each node's out-links short by
//! a pruning heuristic: a neighbour is dropped from a list when it is closer
//! to a kept neighbour than to the list's owner. When every list that held a
//! node drops it, nothing links to the node any more and no search reaches
//! it, at any `ef`. Measured here on 20,000 clustered 64-d vectors (M 16,
//! ef_construction 128): 1 to 3 such nodes inserting one by one, 3 inserting
//! in parallel, 8 in batches of 500 (the graph differs with the insertion
//! order; the loss does not come from a race). So after each batch the store
//! checks the keys whose in-links may have gone (the new ones, every key
//! that left the base-level list of a node near a new one: those lists are
//! read before and after the batch; and after a removal, what the removed
//! nodes linked to) and keeps those a search with their own
//! vector does not return in a short list, searched exactly on every query.
//! That list is a few per ten thousand keys.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::{
    check_batch, check_query, Hit, SearchParams, StoreConfig, StoreKind, StoredPrecision,
    VectorStore,
};
use crate::error::{IndexError, Result};

fn err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store {
        backend: "usearch",
        message: e.to_string(),
    }
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
    /// Keys the graph does not reach, with their vectors (as stored), searched exactly.
    unlinked: Unlinked,
    /// The mapped `.usearch` file a read-only view points into; declared
    /// after `index` so that the index is dropped first.
    _map: Option<memmap2::Mmap>,
}

/// Keys a graph search does not return for their own vector, and those
/// vectors (`keys.len() × dim`), scored exactly on every query.
#[derive(Debug, Default)]
struct Unlinked {
    keys: Vec<u64>,
    vectors: Vec<f32>,
}

/// The header of `<name>.unlinked`: magic, then the version (u32 LE); then
/// the key count (u64 LE) and the keys (u64 LE each).
const UNLINKED_MAGIC: &[u8; 4] = b"SQUL";
const UNLINKED_VERSION: u32 = 1;

/// How many results a key's own-vector search may return before it counts
/// as unreachable (near-duplicates may rank before it).
const SELF_CHECK_K: usize = 10;
/// How many of each new vector's nearest nodes have their neighbour lists
/// compared before and after a batch.
const NEIGHBOURHOOD_K: usize = 32;

impl std::fmt::Debug for UsearchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsearchStore")
            .field("dim", &self.dim)
            .field("len", &self.index.size())
            .finish()
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
            unlinked: Unlinked::default(),
            _map: None,
        })
    }

    /// The keys the graph does not reach (searched exactly), in no order.
    pub fn unlinked_keys(&self) -> &[u64] {
        &self.unlinked.keys
    }

    /// Reads `<name>.unlinked` (absent in collections written before it
    /// existed: then no key is known to be unlinked) and fetches the
    /// vectors of its keys from the index.
    fn load_unlinked(&mut self, path: &Path, bytes: Option<&[u8]>) -> Result<()> {
        let Some(b) = bytes else { return Ok(()) };
        let corrupt = |m: String| IndexError::Corrupt {
            path: path.to_path_buf(),
            message: m,
        };
        if b.len() < 16 || &b[..4] != UNLINKED_MAGIC {
            return Err(corrupt("not an unlinked-keys file (bad header)".into()));
        }
        let version = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if version != UNLINKED_VERSION {
            return Err(corrupt(format!(
                "version {version}, this build reads {UNLINKED_VERSION}"
            )));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[8..16]);
        let n = u64::from_le_bytes(n) as usize;
        if b.len() != 16 + 8 * n {
            return Err(corrupt(format!("{} bytes for {n} keys", b.len())));
        }
        let keys: Vec<u64> = b[16..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let mut vectors = vec![0f32; keys.len() * self.dim];
        for (k, v) in keys.iter().zip(vectors.chunks_mut(self.dim.max(1))) {
            if self.index.get(*k, v).map_err(err)? == 0 {
                return Err(corrupt(format!("key {k:016x} is not in the index")));
            }
        }
        self.unlinked = Unlinked { keys, vectors };
        Ok(())
    }

    /// Whether a search with `key`'s own vector `v` returns it.
    fn reaches(&self, key: u64, v: &[f32]) -> Result<bool> {
        let k = SELF_CHECK_K.min(self.index.size());
        Ok(self.index.search(v, k).map_err(err)?.keys.contains(&key))
    }

    /// Before adding `vectors` to a non-empty index: the base-level
    /// neighbour lists of the nodes that will most likely receive the new
    /// nodes' back-links (each new vector's nearest [`NEIGHBOURHOOD_K`]).
    fn lists_before(&self, vectors: &[f32]) -> Result<HashMap<u64, Vec<u64>>> {
        if self.index.size() == 0 {
            return Ok(HashMap::new());
        }
        let k = NEIGHBOURHOOD_K.min(self.index.size());
        let near: Vec<Vec<u64>> = vectors
            .par_chunks(self.dim)
            .map(|v| self.index.search(v, k).map(|m| m.keys).map_err(err))
            .collect::<Result<_>>()?;
        let nodes: std::collections::HashSet<u64> = near.into_iter().flatten().collect();
        Ok(nodes
            .into_iter()
            .map(|x| (x, self.index.neighbors(x, 0).collect()))
            .collect())
    }

    /// After adding `keys` (with `vectors`) or removing keys: checks the new
    /// keys, every key a neighbour list of `before` lost and the `suspects`
    /// (what removed nodes linked to), and records the ones a search with
    /// their own vector no longer returns.
    fn check_links(
        &mut self,
        keys: &[u64],
        vectors: &[f32],
        before: HashMap<u64, Vec<u64>>,
        suspects: Vec<u64>,
    ) -> Result<()> {
        let dim = self.dim;
        let ef = *self
            .current_ef
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.index
            .change_expansion_search(self.config.search_breadth(self.index.size()).max(ef));
        let index = &self.index;
        // Each key to check, with its vector when known.
        let mut check: HashMap<u64, Vec<f32>> = keys
            .iter()
            .zip(vectors.chunks(dim))
            .map(|(&k, v)| (k, v.to_vec()))
            .collect();
        for (x, list) in before {
            let now: std::collections::HashSet<u64> = index.neighbors(x, 0).collect();
            // Removed nodes stay in the lists under usearch's free key: only live keys count.
            for y in list
                .into_iter()
                .filter(|y| !now.contains(y) && index.contains(*y))
            {
                check.entry(y).or_default();
            }
        }
        for y in suspects.into_iter().filter(|y| index.contains(*y)) {
            check.entry(y).or_default();
        }
        for (k, v) in self
            .unlinked
            .keys
            .iter()
            .zip(self.unlinked.vectors.chunks(dim))
        {
            check.insert(*k, v.to_vec());
        }
        let check: Vec<(u64, Vec<f32>)> = check.into_iter().collect();
        let mut lost: Vec<(u64, Vec<f32>)> = check
            .into_par_iter()
            .map(|(k, mut v)| -> Result<Option<(u64, Vec<f32>)>> {
                if v.is_empty() {
                    v = vec![0f32; dim];
                    if index.get(k, &mut v).map_err(err)? == 0 {
                        return Ok(None);
                    }
                }
                Ok(if self.reaches(k, &v)? {
                    None
                } else {
                    Some((k, v))
                })
            })
            .filter_map(|r| r.transpose())
            .collect::<Result<_>>()?;
        lost.sort_by_key(|(k, _)| *k);
        self.unlinked = Unlinked {
            keys: lost.iter().map(|(k, _)| *k).collect(),
            vectors: lost.into_iter().flat_map(|(_, v)| v).collect(),
        };
        self.index.change_expansion_search(ef);
        Ok(())
    }

    /// Drops `keys` from the unlinked list.
    fn forget_unlinked(&mut self, keys: &[u64]) {
        if self.unlinked.keys.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u64> = keys.iter().copied().collect();
        let dim = self.dim;
        let kept: Vec<(u64, &[f32])> = self
            .unlinked
            .keys
            .iter()
            .copied()
            .zip(self.unlinked.vectors.chunks(dim))
            .filter(|(k, _)| !gone.contains(k))
            .collect();
        let unlinked = Unlinked {
            keys: kept.iter().map(|(k, _)| *k).collect(),
            vectors: kept.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
        };
        self.unlinked = unlinked;
    }

    /// Memory-maps `<name>.usearch` in `dir` read-only (usearch's `view`):
    /// opening costs no copy and the pages are shared. The file must stay in
    /// place while the store lives (unlinking it is harmless on Unix).
    pub fn view(config: &StoreConfig, dim: usize, dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.usearch"));
        let file = std::fs::File::open(&path).map_err(crate::error::io(&path))?;
        // SAFETY: committed generations are never written again (a commit
        // makes a new one), so the mapped bytes do not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(crate::error::io(&path))?;
        let mut store = Self::new(config, dim)?;
        // usearch's own `view(path)` closes its descriptor twice (the second
        // time descriptor 0, which another thread may have reused), so the
        // map is made here and handed over as a buffer that outlives the index.
        // SAFETY: `map` is moved into the store, whose `index` is dropped first.
        unsafe { store.index.view_from_buffer(&map) }.map_err(|e| IndexError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        store._map = Some(map);
        if store.index.dimensions() != dim {
            return Err(IndexError::Corrupt {
                path,
                message: format!("{} dims, the manifest says {dim}", store.index.dimensions()),
            });
        }
        let unlinked = dir.join(format!("{name}.unlinked"));
        let bytes = match std::fs::read(&unlinked) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(IndexError::Io {
                    path: unlinked,
                    source: e,
                })
            }
        };
        store.load_unlinked(&unlinked, bytes.as_deref())?;
        store.use_default_breadth();
        store.read_only = true;
        Ok(store)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(IndexError::InvalidRequest(
                "this usearch index is a read-only view".into(),
            ));
        }
        Ok(())
    }

    /// Loads `<name>.usearch` from `bytes` (files of `dir`, already checksummed).
    pub fn open(
        config: &StoreConfig,
        dim: usize,
        dir: &Path,
        name: &str,
        bytes: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Self> {
        let file = format!("{name}.usearch");
        let buf = bytes.remove(&file).ok_or_else(|| IndexError::Corrupt {
            path: dir.join(&file),
            message: "missing".into(),
        })?;
        let mut store = Self::new(config, dim)?;
        store
            .index
            .load_from_buffer(&buf)
            .map_err(|e| IndexError::Corrupt {
                path: dir.join(&file),
                message: e.to_string(),
            })?;
        if store.index.dimensions() != dim {
            return Err(IndexError::Corrupt {
                path: dir.join(&file),
                message: format!("{} dims, the manifest says {dim}", store.index.dimensions()),
            });
        }
        let unlinked = format!("{name}.unlinked");
        store.load_unlinked(&dir.join(&unlinked), bytes.remove(&unlinked).as_deref())?;
        store.use_default_breadth();
        Ok(store)
    }

    /// After a load: sets the index's search breadth to the default for the
    /// size it now has, so queries that name none need no change of it.
    fn use_default_breadth(&mut self) {
        let ef = self.config.search_breadth(self.index.size());
        self.index.change_expansion_search(ef);
        *self
            .current_ef
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ef;
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
            self.index
                .reserve_capacity_and_threads(cap, threads)
                .map_err(err)?;
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
        // Replaced keys are removed first; what they linked to is checked with the rest.
        let mut suspects = Vec::new();
        for &k in keys {
            if self.index.contains(k) {
                suspects.extend(self.index.neighbors(k, 0));
                self.index.remove(k).map_err(err)?;
            }
        }
        self.reserve(keys.len())?;
        self.forget_unlinked(keys);
        let before = self.lists_before(vectors)?;
        let index = &self.index;
        keys.par_iter()
            .zip(vectors.par_chunks(self.dim))
            .try_for_each(|(&k, v)| index.add(k, v).map_err(err))?;
        self.check_links(keys, vectors, before, suspects)
    }

    fn remove(&mut self, keys: &[u64]) -> Result<bool> {
        self.writable()?;
        // A removed node no longer leads a search anywhere: the nodes it
        // linked to may have had no other way in.
        let suspects: Vec<u64> = keys
            .iter()
            .filter(|k| self.index.contains(**k))
            .flat_map(|&k| self.index.neighbors(k, 0).collect::<Vec<u64>>())
            .collect();
        for &k in keys {
            self.index.remove(k).map_err(err)?;
        }
        self.forget_unlinked(keys);
        self.check_links(&[], &[], HashMap::new(), suspects)?;
        Ok(true)
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Hit>> {
        check_query(query, self.dim)?;
        if k == 0 || self.index.size() == 0 {
            return Ok(Vec::new());
        }
        let ef = params
            .ef
            .unwrap_or_else(|| self.config.search_breadth(self.index.size()))
            .max(k);
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
        let mut hits: Vec<Hit> = matches
            .keys
            .iter()
            .zip(&matches.distances)
            .map(|(&key, &d)| Hit {
                key,
                score: 1.0 - d,
            })
            .collect();
        if !self.unlinked.keys.is_empty() {
            let dim = self.dim;
            // A key may be reachable again by this query's breadth: listed once.
            let unlinked = self
                .unlinked
                .keys
                .iter()
                .zip(self.unlinked.vectors.chunks(dim))
                .filter(|(key, _)| !matches.keys.contains(key));
            hits.extend(unlinked.map(|(&key, v)| Hit {
                key,
                score: v.iter().zip(query).map(|(a, b)| a * b).sum(),
            }));
            hits = super::top_k(hits, k);
        }
        Ok(hits)
    }

    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let file = format!("{name}.usearch");
        let path = dir.join(&file);
        // Serialized in memory and written here, so that a full disk or a
        // failed write is reported with the file's path and the OS error
        // (usearch's own `save` says only "Failed to serialize into stream").
        let mut buf = vec![0u8; self.index.serialized_length()];
        self.index.save_to_buffer(&mut buf).map_err(err)?;
        crate::fsio::write_synced(&path, &buf)?;
        drop(buf);
        let unlinked = format!("{name}.unlinked");
        let upath = dir.join(&unlinked);
        let mut b = Vec::with_capacity(16 + 8 * self.unlinked.keys.len());
        b.extend_from_slice(UNLINKED_MAGIC);
        b.extend_from_slice(&UNLINKED_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.unlinked.keys.len() as u64).to_le_bytes());
        self.unlinked
            .keys
            .iter()
            .for_each(|k| b.extend_from_slice(&k.to_le_bytes()));
        std::fs::write(&upath, &b).map_err(|e| IndexError::Io {
            path: upath.clone(),
            source: e,
        })?;
        crate::fsio::sync_file(&upath)?;
        Ok(vec![file, unlinked])
    }
}
