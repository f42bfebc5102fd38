//! Squire's indexer: scans image folders, embeds them in batches, and keeps a
//! crash-safe, incremental collection whose vectors are searched through the
//! [`VectorStore`] trait.
//!
//! Depends on `squire-models` (encoders). This first version stores vectors
//! for exact search ([`ExactStore`]); HNSW stores (usearch, hnsw_rs) plug in
//! behind the same trait.

pub mod collection;
pub mod error;
pub mod scan;
pub mod store;

pub use collection::{Collection, ImageRecord, IndexOptions, IndexReport, Manifest};
pub use error::{IndexError, Result};
pub use store::{ExactStore, Hit, VectorStore};
