//! Recursive discovery of image files.

use std::path::{Path, PathBuf};

use crate::error::{io, Result};

/// File extensions indexed (lower-case).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// A file found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Path relative to the scanned root, with `/` separators.
    pub rel: String,
    /// Absolute path.
    pub abs: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

/// What [`scan`] found: the image files, and the entries it could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Image files, sorted by relative path.
    pub found: Vec<Found>,
    /// Folders and files that could not be listed or inspected (relative
    /// path, `/`-separated, and the OS's reason), sorted by path. Nothing
    /// under them is found, so records there must not be taken as deleted.
    pub unreadable: Vec<(String, String)>,
}

impl Scanned {
    /// Whether the relative path `rel` lies in (or is) an entry that could not be read.
    pub fn under_unreadable(&self, rel: &str) -> bool {
        self.unreadable.iter().any(|(u, _)| {
            u.is_empty()
                || rel == u
                || rel
                    .strip_prefix(u.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|_| path.display().to_string())
}

/// Every image file under `root`, sorted by relative path. Hidden entries
/// (names starting with `.`) and symlinked directories are skipped. A folder
/// or file that cannot be read is listed in [`Scanned::unreadable`] and the
/// scan goes on; only an unreadable `root` is an error.
pub fn scan(root: &Path) -> Result<Scanned> {
    let mut out = Scanned::default();
    std::fs::read_dir(root).map_err(io(root))?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.unreadable.push((relative(root, &dir), e.to_string()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.unreadable.push((relative(root, &dir), e.to_string()));
                    break;
                }
            };
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let ft = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    out.unreadable.push((relative(root, &path), e.to_string()));
                    continue;
                }
            };
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    out.unreadable.push((relative(root, &path), e.to_string()));
                    continue;
                }
            };
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.found.push(Found {
                rel: relative(root, &path),
                abs: path,
                size: meta.len(),
                mtime_ns,
            });
        }
    }
    out.found.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.unreadable.sort();
    Ok(out)
}
