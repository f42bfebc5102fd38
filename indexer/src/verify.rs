//! Whole-collection integrity check: every file of the current generation
//! streamed through SHA-256 and compared with `manifest.json`. Opening a
//! collection for reading checks sizes only (it maps the vectors rather
//! than reading them); this is the check that reads every byte.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::collection::{ImageRecord, Manifest};
use crate::error::{io, IndexError, Result};

/// A file that failed verification.
#[derive(Debug, Clone, Serialize)]
pub struct FileProblem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong: missing, size or checksum.
    pub problem: String,
    /// What the file holds (which vectors of how many images, and the first of them).
    pub holds: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Files checked.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// The generation checked.
    pub generation: u64,
    /// Files that are missing or differ from the manifest; empty when all is well.
    pub problems: Vec<FileProblem>,
}

/// Reads every file of the collection in `dir` and checks its size and
/// SHA-256 against the manifest. `progress(bytes_done, bytes_total)` is
/// called as files are read. An unreadable manifest is an error; damaged
/// files are reported, not errors.
pub fn verify(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
    let mpath = dir.join("manifest.json");
    let text = fs::read_to_string(&mpath).map_err(io(&mpath))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| IndexError::Corrupt {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    let gen = format!("gen-{}", manifest.generation);
    // The records name the images a damaged vector file holds (when they are intact themselves).
    let records: Option<Vec<ImageRecord>> = fs::read(dir.join(&gen).join("records.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let total: u64 = manifest.files.values().map(|f| f.size).sum();
    let mut report = VerifyReport {
        generation: manifest.generation,
        ..VerifyReport::default()
    };
    let mut buf = vec![0u8; 1 << 20];
    for (rel, sum) in &manifest.files {
        let path = dir.join(rel);
        let name = rel.strip_prefix(&format!("{gen}/")).unwrap_or(rel);
        let problem = match fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".to_string()),
            Err(e) => return Err(IndexError::Io { path, source: e }),
            Ok(mut f) => {
                let mut hasher = Sha256::new();
                let mut len = 0u64;
                loop {
                    let n = f.read(&mut buf).map_err(io(&path))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    len += n as u64;
                    progress(report.bytes + len, total);
                }
                report.bytes += len;
                if len != sum.size {
                    Some(format!("{len} bytes, the manifest says {}", sum.size))
                } else if format!("{:x}", hasher.finalize()) != sum.sha256 {
                    Some(
                        "checksum differs from the manifest (the file was changed or damaged)"
                            .to_string(),
                    )
                } else {
                    None
                }
            }
        };
        report.files += 1;
        if let Some(problem) = problem {
            report.problems.push(FileProblem {
                path,
                problem,
                holds: holds(name, records.as_deref()),
            });
        }
    }
    Ok(report)
}

/// What the generation's file `name` holds, in words.
fn holds(name: &str, records: Option<&[ImageRecord]>) -> String {
    let images = match records {
        Some(r) => {
            let first: Vec<&str> = r.iter().take(3).map(|r| r.path.as_str()).collect();
            let more = if r.len() > 3 { ", …" } else { "" };
            format!("{} images ({}{more})", r.len(), first.join(", "))
        }
        None => "every image (the records are unreadable too)".to_string(),
    };
    let (vector, kind) = match name.split_once('.') {
        Some((v, k)) => (v, k),
        None => (name, ""),
    };
    match kind {
        _ if name == "records.json" => format!("the records (paths, sizes, checksums) of {images}"),
        "f32" => format!("the `{vector}` vectors of {images}"),
        "keys" => format!("the ids of the `{vector}` vectors of {images}"),
        "usearch" | "hnsw.graph" | "hnsw.data" => {
            format!("the `{vector}` HNSW index (rebuildable from `{vector}.f32`)")
        }
        "unlinked" => format!("the keys the `{vector}` HNSW graph does not reach"),
        _ => "a file of the collection".to_string(),
    }
}
