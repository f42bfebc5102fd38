//! Squire's indexer: scans image folders, embeds them in batches, and keeps a
//! crash-safe, incremental collection whose vectors are searched through the
//! [`VectorStore`] trait: usearch HNSW by default, hnsw_rs HNSW as the
//! alternative, exact brute force for small collections and recall checks.
//! One process writes a collection at a time (its writer lock); any number
//! read it meanwhile.
//!
//! Depends on `squire-models` (encoders) only.

pub mod collection;
pub mod error;
pub mod filter;
mod fsio;
mod lock;
pub mod npy;
pub mod scan;
pub mod store;
pub mod verify;

pub use collection::{
    Collection, ImageRecord, ImportReport, IndexOptions, IndexReport, Manifest, OpenOptions,
    RowHit, EXPORT_SHARD_ROWS, FILTER_EXACT_MAX,
};
pub use error::{IndexError, Result};
pub use filter::{Filter, FilterError};
pub use lock::WRITER_LOCK;
pub use store::{
    ExactStore, Hit, SearchParams, StoreConfig, StoreKind, StoredPrecision, VectorStore,
};
pub use verify::{verify, FileProblem, VerifyReport};
