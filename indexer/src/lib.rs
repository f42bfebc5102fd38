//! Squire's indexer: scans image folders, embeds them in batches, and keeps a
//! crash-safe, incremental collection behind the `VectorStore` trait.
//!
//! Depends on `squire-models` (encoders) and `squire-kernels`. Its contents
//! arrive with the indexer issue; until then this crate exports nothing.
