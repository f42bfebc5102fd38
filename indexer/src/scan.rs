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
    /// The relative path's bytes as the OS gave them, when they are not
    /// UTF-8 (`rel` then shows each stray byte as `\xHH`).
    pub os_bytes: Option<Vec<u8>>,
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
    /// Symbolic links to folders, not followed (relative paths, sorted): a
    /// link can make a loop or index a folder twice.
    pub symlinked_folders: Vec<String>,
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
    relative_exact(root, path).0
}

/// The `/`-separated relative path, and the OS's bytes when they are not
/// UTF-8 (the string then writes each byte that is not UTF-8 as `\xHH`, so
/// two such names never give the same string).
fn relative_exact(root: &Path, path: &Path) -> (String, Option<Vec<u8>>) {
    let Ok(rel) = path.strip_prefix(root) else {
        return (path.display().to_string(), None);
    };
    let parts: Vec<&std::ffi::OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    if let Some(names) = parts
        .iter()
        .map(|p| p.to_str())
        .collect::<Option<Vec<&str>>>()
    {
        return (names.join("/"), None);
    }
    let shown = parts
        .iter()
        .map(|p| escape_os(p))
        .collect::<Vec<_>>()
        .join("/");
    (shown, Some(os_bytes(rel)))
}

#[cfg(unix)]
fn os_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().as_bytes().to_vec()
}

/// A name with each byte that is not part of valid UTF-8 written `\xHH`.
fn escape_os(name: &std::ffi::OsStr) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::new();
        for chunk in name.as_bytes().utf8_chunks() {
            out.push_str(chunk.valid());
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        name.to_string_lossy().into_owned()
    }
}

/// The path of a file relative to the indexed folder from what a record
/// keeps: the OS bytes when the name is not UTF-8, else the `/`-separated string.
pub fn relative_path(rel: &str, os_bytes_hex: Option<&str>) -> PathBuf {
    #[cfg(unix)]
    if let Some(bytes) = os_bytes_hex.and_then(from_hex) {
        use std::os::unix::ffi::OsStrExt;
        return PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
    }
    let _ = os_bytes_hex;
    rel.split('/').collect()
}

/// A file's modification time in nanoseconds since the Unix epoch (0 when
/// the platform gives none): what a record keeps to notice a changed file.
pub fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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
            if ft.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                out.symlinked_folders.push(relative(root, &path));
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
            let mtime_ns = mtime_ns(&meta);
            let (rel, os_bytes) = relative_exact(root, &path);
            out.found.push(Found {
                rel,
                abs: path,
                size: meta.len(),
                mtime_ns,
                os_bytes,
            });
        }
    }
    out.found.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.unreadable.sort();
    out.symlinked_folders.sort();
    Ok(out)
}
