//! Durable file writes: write, fsync, and (for directories) fsync the entry.

use std::fs;
use std::path::Path;

use crate::error::{io, Result};

/// Writes `bytes` to `path` and fsyncs the file.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(io(path))?;
    sync_file(path)
}

/// Fsyncs a file written by someone else (a store backend).
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Fsyncs a directory so that renames inside it are durable (best effort).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
