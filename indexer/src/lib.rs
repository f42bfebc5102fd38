//! Squire's indexer: scans image folders, embeds them in batches, and keeps a
//! crash-safe, incremental collection whose vectors are searched through the
//! [`VectorStore`] trait: usearch HNSW by default, hnsw_rs HNSW as the
//! alternative, exact brute force for small collections and recall checks.
//!
//! Depends on `squire-models` (encoders) only.

pub mod collection;
pub mod error;
mod fsio;
pub mod scan;
pub mod store;

pub use collection::{Collection, ImageRecord, IndexOptions, IndexReport, Manifest, OpenOptions, RowHit};
pub use error::{IndexError, Result};
pub use store::{ExactStore, Hit, SearchParams, StoreConfig, StoreKind, StoredPrecision, VectorStore};
