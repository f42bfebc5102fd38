//! Vector storage and search behind one trait, so that exact search, embedded
//! HNSW indexes (usearch, hnsw_rs) and, later, a distributed engine are
//! interchangeable.
//!
//! Every store keys its vectors by the collection's stable 64-bit image id,
//! scores by inner product (cosine for the L2-normalised vectors Squire
//! stores), and persists itself into a directory as named files that the
//! collection checksums.

mod exact;
mod hnsw;
mod usearch_store;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use exact::ExactStore;
pub use hnsw::HnswRsStore;
pub use usearch_store::UsearchStore;

use crate::error::Result;

/// One search result: the key of the stored vector and its similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Key of the vector (the collection's image id).
    pub key: u64,
    /// Inner product with the query (cosine for normalised vectors).
    pub score: f32,
}

/// Per-query search settings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchParams {
    /// HNSW search breadth (`ef`); `None` uses the store's default.
    /// Larger is slower and finds more of the true neighbours.
    pub ef: Option<usize>,
}

/// Which implementation holds a collection's searchable vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Embedded HNSW on usearch (the default).
    #[default]
    Usearch,
    /// Embedded HNSW on hnsw_rs.
    HnswRs,
    /// Brute force over the stored vectors: exact, for small collections.
    Exact,
}

impl StoreKind {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Usearch => "usearch",
            StoreKind::HnswRs => "hnsw_rs",
            StoreKind::Exact => "exact",
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "usearch" => Ok(StoreKind::Usearch),
            "hnsw_rs" | "hnsw-rs" | "hnsw" => Ok(StoreKind::HnswRs),
            "exact" => Ok(StoreKind::Exact),
            _ => Err(format!(
                "unknown store `{s}` (expected usearch, hnsw_rs or exact)"
            )),
        }
    }
}

/// Element type an HNSW store keeps its vectors in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoredPrecision {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats: half the memory, same recall in practice (usearch only).
    F16,
}

/// How a collection's stores are built and searched; recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Implementation.
    pub kind: StoreKind,
    /// Element type of the stored vectors.
    #[serde(default)]
    pub precision: StoredPrecision,
    /// HNSW links per node (`M`).
    pub connectivity: usize,
    /// HNSW build breadth (`ef_construction`).
    pub expansion_add: usize,
    /// Default search breadth (`ef`), overridable per query; `None` (the
    /// default): chosen by the store's size, see [`Self::search_breadth`].
    pub expansion_search: Option<usize>,
}

impl Default for StoreConfig {
    /// usearch, f32, M = 16, ef_construction = 128, ef by size: recall@10 vs
    /// exact measured by `squire bench query` (see README).
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Usearch,
            precision: StoredPrecision::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: None,
        }
    }
}

/// Stores of at least this many vectors search with [`LARGE_STORE_EF`] by
/// default, smaller ones with [`SMALL_STORE_EF`].
pub const LARGE_STORE_VECTORS: usize = 200_000;
/// Default `ef` below [`LARGE_STORE_VECTORS`]: recall@10 0.993 at 100,000
/// vectors (M 16, ef_construction 128; README, "Vector search").
pub const SMALL_STORE_EF: usize = 128;
/// Default `ef` from [`LARGE_STORE_VECTORS`] on: recall@10 0.985 at 1,000,000
/// vectors, where 128 gives 0.965.
pub const LARGE_STORE_EF: usize = 256;

impl StoreConfig {
    /// The search breadth a query that names none uses on a store of `len`
    /// vectors: the configured one, or else [`SMALL_STORE_EF`] below
    /// [`LARGE_STORE_VECTORS`] and [`LARGE_STORE_EF`] from there (recall
    /// falls as a graph grows; at 200,000 vectors 128 still gave 0.988 and
    /// 256 gave 0.996).
    pub fn search_breadth(&self, len: usize) -> usize {
        self.expansion_search
            .unwrap_or(if len >= LARGE_STORE_VECTORS {
                LARGE_STORE_EF
            } else {
                SMALL_STORE_EF
            })
    }

    /// The brute-force configuration.
    pub fn exact() -> Self {
        StoreConfig {
            kind: StoreKind::Exact,
            ..StoreConfig::default()
        }
    }
}

/// A set of equal-length vectors, keyed by `u64`, searchable by inner product.
///
/// Contract: `search` returns at most `k` hits in descending score (ties in
/// any order) for a query of length [`Self::dim`]; `add` of an existing key
/// replaces its vector; `save` writes files that [`open_store`] reads back
/// into an equal store.
pub trait VectorStore: Send + Sync {
    /// Implementation.
    fn kind(&self) -> StoreKind;
    /// Length of every vector.
    fn dim(&self) -> usize;
    /// Number of stored vectors.
    fn len(&self) -> usize;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds `keys.len()` vectors (`vectors` is `keys.len() × dim`, row-major).
    fn add(&mut self, keys: &[u64], vectors: &[f32]) -> Result<()>;
    /// Removes vectors by key; returns `false` (changing nothing) where the
    /// implementation cannot delete, and the caller must rebuild instead.
    fn remove(&mut self, keys: &[u64]) -> Result<bool>;
    /// The `k` most similar vectors to `query`.
    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Hit>>;
    /// Writes the store into `dir` as files whose names start with `name`;
    /// returns their file names (relative to `dir`).
    fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>>;
}

/// An empty store of `config`'s kind for `dim`-long vectors.
pub fn new_store(config: &StoreConfig, dim: usize) -> Result<Box<dyn VectorStore>> {
    Ok(match config.kind {
        StoreKind::Usearch => Box::new(UsearchStore::new(config, dim)?),
        StoreKind::HnswRs => Box::new(HnswRsStore::new(config, dim)),
        StoreKind::Exact => Box::new(ExactStore::new(dim)),
    })
}

/// Reads back a store that [`VectorStore::save`] wrote into `dir` under `name`.
/// `bytes` holds the already read (and checksummed) files, by file name.
/// With `view`, stores that can (usearch) memory-map their file read-only
/// instead of copying it: pages are shared with the OS cache and with other
/// processes serving the same collection; `add` and `remove` then fail.
pub fn open_store(
    config: &StoreConfig,
    dim: usize,
    dir: &Path,
    name: &str,
    bytes: &mut std::collections::HashMap<String, Vec<u8>>,
    view: bool,
) -> Result<Box<dyn VectorStore>> {
    Ok(match config.kind {
        StoreKind::Usearch if view => {
            bytes.remove(&format!("{name}.usearch"));
            Box::new(UsearchStore::view(config, dim, dir, name)?)
        }
        StoreKind::Usearch => Box::new(UsearchStore::open(config, dim, dir, name, bytes)?),
        StoreKind::HnswRs => Box::new(HnswRsStore::open(config, dim, dir, name)?),
        StoreKind::Exact => Box::new(ExactStore::open(dim, dir, name, bytes)?),
    })
}

/// Checks that `vectors` holds `keys.len()` vectors of `dim` values.
pub(crate) fn check_batch(keys: &[u64], vectors: &[f32], dim: usize) -> Result<()> {
    if vectors.len() != keys.len() * dim {
        return Err(crate::error::IndexError::InvalidRequest(format!(
            "{} values for {} vectors of {dim} dims",
            vectors.len(),
            keys.len()
        )));
    }
    Ok(())
}

/// Checks that a query has `dim` values.
pub(crate) fn check_query(query: &[f32], dim: usize) -> Result<()> {
    if query.len() != dim {
        return Err(crate::error::IndexError::InvalidRequest(format!(
            "query has {} dims, the store {dim}",
            query.len()
        )));
    }
    Ok(())
}

/// Orders hits by descending score, then ascending key, and keeps `k`.
pub(crate) fn top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key));
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, by_score);
    }
    hits.truncate(k);
    hits.sort_by(by_score);
    hits
}

#[cfg(test)]
mod tests;
