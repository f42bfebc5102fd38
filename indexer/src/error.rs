//! The error type of the indexer crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading or searching a collection.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A collection file is corrupt (bad JSON, wrong size, checksum mismatch).
    #[error("collection file {path} is corrupt: {message}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The collection was built with another model (or another version of the format).
    #[error("{0}")]
    Incompatible(String),
    /// A request that cannot be served (unknown vector name, wrong query size, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// Another process holds the collection's writer lock (`writer.lock`).
    #[error("collection {} is being written by {}; wait for it to finish (readers need not wait)", .dir.display(), .pid.map_or_else(|| "another process".to_string(), |p| format!("pid {p}")))]
    Busy {
        /// The collection directory.
        dir: PathBuf,
        /// The writer's process id, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// The collection was changed on disk after this handle opened it, so
    /// writing from the handle would lose that change.
    #[error("collection {} changed since it was opened (generation {opened} → {now}); open it again to write", .dir.display())]
    Stale {
        /// The collection directory.
        dir: PathBuf,
        /// The generation this handle read.
        opened: u64,
        /// The generation on disk now.
        now: u64,
    },
    /// A vector store backend (usearch, hnsw_rs, ...) failed.
    #[error("vector store {backend}: {message}")]
    Store {
        /// The backend that failed.
        backend: &'static str,
        /// What it reported.
        message: String,
    },
    /// An encoder failed.
    #[error(transparent)]
    Model(#[from] squire_models::ModelError),
    /// A compute kernel (CPU or GPU backend) failed.
    #[error(transparent)]
    Kernel(#[from] squire_kernels::KernelError),
}

/// Result alias for the indexer crate.
pub type Result<T> = std::result::Result<T, IndexError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IndexError {
    let path = path.into();
    move |source| IndexError::Io { path, source }
}
