//! The collection's writer lock: `writer.lock` in the collection directory,
//! held with an exclusive `flock` by the one process that changes the
//! collection, with that process's id written in it for the error message
//! of the next would-be writer. The kernel drops the lock when the process
//! exits, however it exits, so a killed writer never leaves a stale lock.
//! Readers take no lock: committed generations are immutable and the
//! manifest is replaced atomically.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{io, IndexError, Result};

/// The lock file's name inside a collection directory.
pub const WRITER_LOCK: &str = "writer.lock";

/// A held writer lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: fs::File,
}

impl WriterLock {
    /// Takes the writer lock of `dir` without waiting: [`IndexError::Busy`]
    /// (naming the holder's pid) when another handle holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(WRITER_LOCK);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if let Err(e) = try_lock(&file) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(IndexError::Busy {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(IndexError::Io { path, source: e });
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io(&path))?;
        Ok(WriterLock { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &fs::File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere, std's lock (Rust 1.89 or later there).
#[cfg(not(unix))]
fn try_lock(file: &fs::File) -> std::io::Result<()> {
    file.try_lock().map_err(|e| match e {
        fs::TryLockError::WouldBlock => std::io::ErrorKind::WouldBlock.into(),
        fs::TryLockError::Error(e) => e,
    })
}
