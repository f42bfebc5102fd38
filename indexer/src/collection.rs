//! A collection: the images of one folder, their metadata and their named
//! vectors, stored crash-safely in an index directory.
//!
//! Layout of an index directory:
//!
//! ```text
//! manifest.json              format version, model id, vector names and sizes, the store
//!                            configuration, the current generation and the size and
//!                            SHA-256 of each of its files
//! gen-<N>/records.json       one ImageRecord per image, in row order
//! gen-<N>/<name>.f32         the named vectors, rows × dim little-endian f32 (source of truth)
//! gen-<N>/<name>.keys        the image id of each row, little-endian u64
//! gen-<N>/<name>.usearch     the HNSW graph (usearch store), or
//! gen-<N>/<name>.hnsw.*      the HNSW graph (hnsw_rs store)
//! ```
//!
//! Contract: `manifest.json` is replaced only by an atomic rename, after the
//! generation it names has been written, fsynced and renamed into place, so a
//! reader (or a process killed at any point) always sees one complete,
//! checksummed generation. Directories that no manifest refers to (older
//! generations, `*.tmp` leftovers) are removed at the next save.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use squire_models::registry::VectorLayout;
use squire_models::{image_io, ImageEncoder};

mod import;
pub use import::{ImportReport, EXPORT_SHARD_ROWS};

use crate::error::{io, IndexError, Result};
use crate::filter::Filter;
use crate::fsio::{sync_dir, write_synced};
use crate::scan::{scan, Found};
use crate::store::{
    new_store, open_store, ExactStore, SearchParams, StoreConfig, StoreKind, VectorStore,
};

/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 2;

/// Metadata of one indexed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Stable id: the first 8 bytes of SHA-256 of the relative path.
    pub id: u64,
    /// Path relative to the indexed folder, `/`-separated.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Width in pixels (after EXIF orientation).
    pub width: u32,
    /// Height in pixels (after EXIF orientation).
    pub height: u32,
    /// EXIF capture time (`DateTimeOriginal`, else `DateTime`), seconds since
    /// 1970-01-01 as written by the camera (no zone); absent when the file has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exif_taken: Option<i64>,
    /// EXIF camera make and model, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// The relative path's bytes (hex) when the OS name is not UTF-8; `path`
    /// then shows each stray byte as `\xHH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_path: Option<String>,
    /// Came from `squire import` (precomputed embeddings), not from
    /// embedding the file: `squire index` never drops it for being absent
    /// from the folder (its file may live elsewhere, or nowhere).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
    /// A caption kept from imported metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// A URL kept from imported metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ImageRecord {
    /// When the photo was taken: the EXIF capture time, else the file's
    /// modification time (seconds since 1970-01-01).
    pub fn taken(&self) -> i64 {
        self.exif_taken
            .unwrap_or((self.mtime_ns / 1_000_000_000) as i64)
    }

    /// The file's path relative to the indexed folder, exactly as the OS
    /// names it (non-UTF-8 names included): join it to the folder.
    pub fn relative_path(&self) -> PathBuf {
        crate::scan::relative_path(&self.path, self.os_path.as_deref())
    }

    /// The folder part of [`ImageRecord::path`] (`""` at the top level).
    pub fn folder(&self) -> &str {
        self.path.rsplit_once('/').map(|(f, _)| f).unwrap_or("")
    }
}

/// Logs each unreadable folder or file (the report lists them too).
fn report_unreadable(scanned: &crate::scan::Scanned) {
    for (path, reason) in &scanned.unreadable {
        tracing::debug!(%path, %reason, "cannot read; skipped (what it held before is kept)");
    }
}

/// A file of the current generation, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The model the vectors come from (a name such as `lite`, or a directory).
    pub model: String,
    /// Named vectors and their lengths.
    pub vectors: BTreeMap<String, usize>,
    /// The vector text queries search.
    pub text_query_vector: String,
    /// The vector image queries search.
    pub image_query_vector: String,
    /// The indexed folder (absolute, as given at creation).
    pub images_root: PathBuf,
    /// How the vectors are stored and searched.
    pub store: StoreConfig,
    /// Current generation.
    pub generation: u64,
    /// Number of images.
    pub images: usize,
    /// Files of the current generation (relative to the index directory).
    pub files: BTreeMap<String, FileSum>,
}

/// Options of [`Collection::index`].
#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Images between checkpoints, at least; since a checkpoint rewrites the
    /// whole collection, the interval grows to a quarter of the collection's
    /// size so that checkpoints cost a bounded share of the run. A killed run
    /// loses at most one interval.
    pub checkpoint_every: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            batch: 32,
            checkpoint_every: 256,
        }
    }
}

/// One result of [`Collection::search`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowHit {
    /// Row of the image in [`Collection::records`].
    pub row: usize,
    /// Similarity to the query (inner product of normalised vectors).
    pub score: f32,
}

/// The stored vectors of one name: the exact matrix (source of truth, row
/// order = record order) and, unless the store is exact, its HNSW index.
struct NamedVectors {
    raw: ExactStore,
    ann: Option<Box<dyn VectorStore>>,
}

impl std::fmt::Debug for NamedVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedVectors")
            .field("raw", &(self.raw.len(), self.raw.dim()))
            .field("ann", &self.ann.as_ref().map(|a| (a.kind(), a.len())))
            .finish()
    }
}

/// What an indexing run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    /// Images embedded for the first time.
    pub added: usize,
    /// Images re-embedded because their file changed.
    pub updated: usize,
    /// Records removed because their file is gone.
    pub removed: usize,
    /// Images kept without re-embedding.
    pub unchanged: usize,
    /// Files skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Folders and files that could not be read (relative path, reason):
    /// nothing in them was added, and what they held before is kept.
    pub unreadable: Vec<(String, String)>,
    /// Symbolic links to folders, not followed (relative paths).
    pub symlinked_folders: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds the model waited for decoded pixels (reading, decoding and
    /// preprocessing run one batch ahead, overlapping the model).
    pub decode_seconds: f64,
    /// CPU seconds spent reading, hashing, decoding and preprocessing, summed over images.
    pub decode_cpu_seconds: f64,
    /// Seconds spent in the model.
    pub model_seconds: f64,
}

/// One decoded image (or why it was skipped) and the seconds it took.
struct Decoded {
    result: std::result::Result<(ImageRecord, Vec<f32>), String>,
    seconds: f64,
}

/// Gives the calling thread the lowest scheduling priority (Linux threads have
/// their own nice value); elsewhere a no-op.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread's nice value.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Reads, hashes, decodes and preprocesses one file.
fn decode_one(f: &Found, encoder: &dyn ImageEncoder, plane: usize) -> Decoded {
    let t = Instant::now();
    let result = (|| {
        let bytes = fs::read(&f.abs).map_err(|e| format!("cannot read: {e}"))?;
        let img = image_io::decode_rgb(&bytes, &f.abs).map_err(|e| e.to_string())?;
        let facts = image_io::photo_facts(&bytes);
        let mut px = vec![0f32; plane];
        encoder
            .preprocess_into(&img, &mut px)
            .map_err(|e| e.to_string())?;
        let rec = ImageRecord {
            id: path_id(&f.rel),
            path: f.rel.clone(),
            size: f.size,
            mtime_ns: f.mtime_ns,
            sha256: sha256_hex(&bytes),
            width: img.width(),
            height: img.height(),
            exif_taken: facts.taken,
            camera: facts.camera,
            os_path: f.os_bytes.as_deref().map(crate::scan::to_hex),
            imported: false,
            caption: None,
            url: None,
        };
        Ok((rec, px))
    })();
    Decoded {
        result,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Up to this many matching images, a filtered search scores every match
/// exactly (about 50 ms for 100,000 × 512 on one core) rather than asking the ANN.
pub const FILTER_EXACT_MAX: usize = 100_000;

/// An open collection.
#[derive(Debug)]
pub struct Collection {
    dir: PathBuf,
    manifest: Manifest,
    records: Vec<ImageRecord>,
    rows: HashMap<u64, usize>,
    vectors: BTreeMap<String, NamedVectors>,
    read_only: bool,
    /// The writer lock, taken by the first change through this handle and
    /// held until it is dropped.
    writer: Option<crate::lock::WriterLock>,
}

/// The first entry of `dir` that a collection's interrupted first save
/// cannot have left (`writer.lock`, `manifest.json.tmp`, `gen-N.tmp/`, or a
/// `gen-N/` holding `records.json`), if any: a new collection is not made
/// over someone else's files, whose `gen-*` folders it would then remove.
fn foreign_entry(dir: &Path) -> Result<Option<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IndexError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let generation = |n: &str| {
        n.strip_prefix("gen-")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name == crate::lock::WRITER_LOCK
            || name == "manifest.json.tmp"
            || name.strip_suffix(".tmp").is_some_and(generation)
            || (generation(&name) && e.path().join("records.json").is_file());
        if !ours {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Whether a reader (view) reads a generation's file whole (and checks its
/// checksum) rather than mapping it: the records and the small key lists.
fn read_when_viewing(name: &str) -> bool {
    name == "records.json" || name.ends_with(".keys") || name.ends_with(".unlinked")
}

/// The generation `manifest.json` in `dir` names now (`None`: no readable manifest).
fn generation_on_disk(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .get("generation")?
        .as_u64()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn path_id(rel: &str) -> u64 {
    let d = Sha256::digest(rel.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn json_err(e: serde_json::Error) -> IndexError {
    IndexError::InvalidRequest(e.to_string())
}

/// Builds an HNSW index of `config`'s kind over `raw` (None for exact stores).
fn build_ann(config: &StoreConfig, raw: &ExactStore) -> Result<Option<Box<dyn VectorStore>>> {
    if config.kind == StoreKind::Exact || raw.dim() == 0 {
        return Ok(None);
    }
    let mut ann = new_store(config, raw.dim())?;
    ann.add(raw.keys(), raw.data())?;
    Ok(Some(ann))
}

/// How [`Collection::open_with`] opens a collection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Read-only, for serving and searching: the vector files and usearch
    /// HNSW files are memory-mapped rather than read (pages load on first
    /// touch), their sizes checked but not their checksums (that is
    /// [`crate::verify()`]'s job); indexing is refused.
    pub view: bool,
}

impl Collection {
    /// Opens the collection in `dir` for reading and writing, verifying every
    /// file of its current generation.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, OpenOptions::default())
    }

    /// Opens the collection in `dir` as `opts` says, verifying every file of
    /// its current generation. A writer may commit meanwhile and remove the
    /// generation being read: the open then starts again on the new one, so
    /// a reader gets the old or the new state, never an error.
    pub fn open_with(dir: &Path, opts: OpenOptions) -> Result<Self> {
        let mut attempts = 0;
        loop {
            let before = generation_on_disk(dir);
            match Self::open_generation(dir, opts) {
                // Whatever failed, the generation read is gone: read the new one.
                Err(_) if attempts < 8 && generation_on_disk(dir) != before => {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Takes the writer lock (once per handle) and checks that no other
    /// writer committed since this handle read the collection.
    fn lock_for_writing(&mut self) -> Result<()> {
        self.writable()?;
        if self.writer.is_none() {
            let lock = crate::lock::WriterLock::acquire(&self.dir)?;
            let now = generation_on_disk(&self.dir).unwrap_or(0);
            if now != self.manifest.generation {
                return Err(IndexError::Stale {
                    dir: self.dir.clone(),
                    opened: self.manifest.generation,
                    now,
                });
            }
            self.writer = Some(lock);
        }
        Ok(())
    }

    /// One attempt of [`Self::open_with`].
    fn open_generation(dir: &Path, opts: OpenOptions) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = fs::read_to_string(&mpath).map_err(io(&mpath))?;
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("format_version").and_then(|x| x.as_u64()));
        if version.is_some_and(|v| v != FORMAT_VERSION as u64) {
            return Err(IndexError::Incompatible(format!(
                "{}: format version {} (this Squire reads {FORMAT_VERSION}); re-index into a new --index directory",
                mpath.display(),
                version.unwrap_or_default()
            )));
        }
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| IndexError::Corrupt {
            path: mpath.clone(),
            message: e.to_string(),
        })?;
        let gen = format!("gen-{}", manifest.generation);
        let gen_dir = dir.join(&gen);
        // A writer reads and verifies every file. A reader (view) checks
        // every file's size, reads the records, keys and unlinked lists, and
        // maps the vectors and HNSW files: checksums are `verify`'s job.
        // The bytes read are keyed by their name inside the generation.
        let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
        for (rel, sum) in &manifest.files {
            let p = dir.join(rel);
            let name = rel
                .strip_prefix(&format!("{gen}/"))
                .unwrap_or(rel)
                .to_string();
            if opts.view && !read_when_viewing(&name) {
                let len = fs::metadata(&p).map_err(io(&p))?.len();
                if len != sum.size {
                    return Err(IndexError::Corrupt {
                        path: p,
                        message: format!(
                            "{len} bytes, manifest.json says {} (run `squire verify`)",
                            sum.size
                        ),
                    });
                }
                continue;
            }
            let bytes = fs::read(&p).map_err(io(&p))?;
            if bytes.len() as u64 != sum.size || sha256_hex(&bytes) != sum.sha256 {
                return Err(IndexError::Corrupt {
                    path: p,
                    message: "size or checksum differs from manifest.json".into(),
                });
            }
            contents.insert(name, bytes);
        }
        let rec_bytes = contents
            .remove("records.json")
            .ok_or_else(|| IndexError::Corrupt {
                path: mpath.clone(),
                message: format!("{gen}/records.json is not listed"),
            })?;
        let records: Vec<ImageRecord> =
            serde_json::from_slice(&rec_bytes).map_err(|e| IndexError::Corrupt {
                path: gen_dir.join("records.json"),
                message: e.to_string(),
            })?;
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        let mut vectors = BTreeMap::new();
        for (name, &dim) in &manifest.vectors {
            let raw = if opts.view {
                ExactStore::map(dim, &gen_dir, name, &mut contents)?
            } else {
                ExactStore::open(dim, &gen_dir, name, &mut contents)?
            };
            if raw.keys() != ids.as_slice() {
                return Err(IndexError::Corrupt {
                    path: gen_dir.join(format!("{name}.keys")),
                    message: format!(
                        "{} rows that do not match the {} records",
                        raw.len(),
                        records.len()
                    ),
                });
            }
            let ann = if manifest.store.kind == StoreKind::Exact || dim == 0 {
                None
            } else {
                let ann = open_store(
                    &manifest.store,
                    dim,
                    &gen_dir,
                    name,
                    &mut contents,
                    opts.view,
                )?;
                if ann.len() == raw.len() {
                    Some(ann)
                } else {
                    tracing::warn!(vector = %name, "HNSW index holds {} of {} vectors; rebuilding it", ann.len(), raw.len());
                    build_ann(&manifest.store, &raw)?
                }
            };
            vectors.insert(name.clone(), NamedVectors { raw, ann });
        }
        let rows = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Ok(Collection {
            dir: dir.to_path_buf(),
            manifest,
            records,
            rows,
            vectors,
            read_only: opts.view,
            writer: None,
        })
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(IndexError::InvalidRequest(format!(
                "the collection in {} was opened read-only (view); open it with Collection::open to change it",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Opens `dir` if it holds a collection (which must come from `model`),
    /// else creates an empty one for `model` and `encoder`'s vectors, stored as
    /// `store` says. `store` is ignored for an existing collection (see
    /// [`Self::change_store`]).
    pub fn open_or_create(
        dir: &Path,
        model: &str,
        encoder: &dyn ImageEncoder,
        images_root: &Path,
        store: StoreConfig,
    ) -> Result<Self> {
        let layout = VectorLayout {
            names: encoder.vector_names(),
            text_query: encoder.text_query_vector(),
            image_query: encoder.image_query_vector(),
        };
        Self::open_or_create_with_layout(dir, model, &layout, images_root, store)
    }

    /// Like [`Collection::open_or_create`] for a model known only by its
    /// vector layout (no weights loaded: for importing embeddings).
    pub fn open_or_create_with_layout(
        dir: &Path,
        model: &str,
        layout: &VectorLayout,
        images_root: &Path,
        store: StoreConfig,
    ) -> Result<Self> {
        if dir.join("manifest.json").is_file() {
            let c = Self::open(dir)?;
            if c.manifest.model != model {
                return Err(IndexError::Incompatible(format!(
                    "the collection in {} was built with model `{}`; it cannot take vectors from `{model}` \
                     (use --model {} or a new --index directory)",
                    dir.display(),
                    c.manifest.model,
                    c.manifest.model
                )));
            }
            return Ok(c);
        }
        if let Some(other) = foreign_entry(dir)? {
            return Err(IndexError::InvalidRequest(format!(
                "{} holds no collection (no manifest.json) but is not empty ({} is there); \
                 a new collection needs an empty or new directory, and nothing in this one was changed",
                dir.display(),
                other
            )));
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let names = &layout.names;
        // Vector sizes are learned from the first batch; record the names now.
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            model: model.to_string(),
            vectors: names.iter().map(|n| (n.to_string(), 0usize)).collect(),
            text_query_vector: layout.text_query.to_string(),
            image_query_vector: layout.image_query.to_string(),
            images_root: images_root.to_path_buf(),
            store,
            generation: 0,
            images: 0,
            files: BTreeMap::new(),
        };
        let vectors = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    NamedVectors {
                        raw: ExactStore::new(0),
                        ann: None,
                    },
                )
            })
            .collect();
        Ok(Collection {
            dir: dir.to_path_buf(),
            manifest,
            records: Vec::new(),
            rows: HashMap::new(),
            vectors,
            read_only: false,
            writer: None,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Image records in row order.
    pub fn records(&self) -> &[ImageRecord] {
        &self.records
    }

    /// The row of the image with id `key`.
    pub fn row_of(&self, key: u64) -> Option<usize> {
        self.rows.get(&key).copied()
    }

    fn named(&self, name: &str) -> Result<&NamedVectors> {
        self.vectors.get(name).ok_or_else(|| {
            IndexError::InvalidRequest(format!(
                "the collection has no vector `{name}` (it has {})",
                self.vectors.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The exact vectors of a name, in row order.
    pub fn vectors(&self, name: &str) -> Result<&ExactStore> {
        Ok(&self.named(name)?.raw)
    }

    /// Searches a named vector with its configured store (HNSW by default).
    pub fn search(
        &self,
        vector: &str,
        query: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<RowHit>> {
        let nv = self.named(vector)?;
        match &nv.ann {
            Some(ann) => self.to_rows(vector, query, ann.search(query, k, params)),
            None => self.search_exact(vector, query, k),
        }
    }

    /// Searches a named vector by brute force (exact, whatever the store).
    pub fn search_exact(&self, vector: &str, query: &[f32], k: usize) -> Result<Vec<RowHit>> {
        let nv = self.named(vector)?;
        self.to_rows(
            vector,
            query,
            nv.raw.search(query, k, &SearchParams::default()),
        )
    }

    /// Exact search on a kernel backend: the CPU backend scans the stored
    /// matrix in place; a GPU backend uploads it first (one upload per call:
    /// long-lived servers should keep a [`squire_kernels::Database`]).
    pub fn search_exact_on(
        &self,
        compute: &squire_kernels::Compute,
        vector: &str,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<RowHit>> {
        if !compute.is_gpu() {
            return self.search_exact(vector, query, k);
        }
        let nv = self.named(vector)?;
        let raw = &nv.raw;
        let hits = if raw.len() == 0 || k == 0 || query.len() != raw.dim() {
            Vec::new()
        } else {
            let db = compute.upload(raw.data(), raw.dim(), squire_kernels::Precision::F32)?;
            let mut all = compute.top_k(&db, query, k, squire_kernels::Metric::InnerProduct)?;
            all.pop()
                .unwrap_or_default()
                .into_iter()
                .map(|s| crate::store::Hit {
                    key: raw.keys()[s.row],
                    score: s.score,
                })
                .collect()
        };
        self.to_rows(vector, query, Ok(hits))
    }

    /// Rows whose record passes `filter`, in row order.
    pub fn matching_rows(&self, filter: &Filter) -> Vec<usize> {
        self.records
            .iter()
            .enumerate()
            .filter(|(_, r)| filter.matches(r))
            .map(|(i, _)| i)
            .collect()
    }

    /// The `k` images that pass `filter` with the highest similarity to
    /// `query`: never fewer than `k` when `k` match. When few images match
    /// (up to [`FILTER_EXACT_MAX`], or `exact`), they are scored exactly;
    /// otherwise the ANN is searched ever deeper (at least twice as deep as
    /// the share of matches implies) until `k` of its hits match, falling
    /// back to scoring every match exactly.
    pub fn search_filtered(
        &self,
        vector: &str,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        filter: &Filter,
        exact: bool,
    ) -> Result<Vec<RowHit>> {
        let exact_max = if exact { usize::MAX } else { FILTER_EXACT_MAX };
        self.search_filtered_with(vector, query, k, params, filter, exact_max)
    }

    /// [`Collection::search_filtered`] with the number of matches up to
    /// which they are scored exactly rather than through the ANN.
    pub fn search_filtered_with(
        &self,
        vector: &str,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        filter: &Filter,
        exact_max: usize,
    ) -> Result<Vec<RowHit>> {
        let nv = self.named(vector)?;
        self.to_rows(vector, query, Ok(Vec::new()))?;
        let rows = self.matching_rows(filter);
        if k == 0 || rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.records.len();
        if let (Some(ann), false) = (&nv.ann, rows.len() <= exact_max) {
            let pass: HashSet<usize> = rows.iter().copied().collect();
            let mut depth = (k.saturating_mul(2).saturating_mul(n) / rows.len())
                .max(k * 2)
                .min(n);
            loop {
                let ef = params.ef.map(|e| e.max(depth));
                let hits = self.to_rows(
                    vector,
                    query,
                    ann.search(query, depth, &SearchParams { ef }),
                )?;
                let kept: Vec<RowHit> = hits
                    .into_iter()
                    .filter(|h| pass.contains(&h.row))
                    .take(k)
                    .collect();
                if kept.len() >= k.min(rows.len()) {
                    return Ok(kept);
                }
                // Deeper than this, scoring the matches exactly is cheaper.
                if depth >= n || depth >= 65_536 {
                    break;
                }
                depth = depth.saturating_mul(4).min(n);
            }
        }
        let raw = &nv.raw;
        let mut scored: Vec<RowHit> = rows
            .par_iter()
            .map(|&row| RowHit {
                row,
                score: squire_kernels::cpu::dot_f32(raw.row(row), query),
            })
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
        scored.truncate(k);
        Ok(scored)
    }

    fn to_rows(
        &self,
        vector: &str,
        query: &[f32],
        hits: Result<Vec<crate::store::Hit>>,
    ) -> Result<Vec<RowHit>> {
        let dim = self.manifest.vectors.get(vector).copied().unwrap_or(0);
        if query.len() != dim && !self.records.is_empty() {
            return Err(IndexError::InvalidRequest(format!(
                "query has {} dims but vector `{vector}` has {dim}",
                query.len()
            )));
        }
        Ok(hits?
            .into_iter()
            .filter_map(|h| {
                self.rows.get(&h.key).map(|&row| RowHit {
                    row,
                    score: h.score,
                })
            })
            .collect())
    }

    /// Rebuilds the searchable stores with another configuration (for
    /// example hnsw_rs instead of usearch, or another `M`) and saves.
    pub fn change_store(&mut self, store: StoreConfig) -> Result<()> {
        if store == self.manifest.store {
            return Ok(());
        }
        self.lock_for_writing()?;
        for nv in self.vectors.values_mut() {
            nv.ann = build_ann(&store, &nv.raw)?;
        }
        self.manifest.store = store;
        self.save()
    }

    /// Writes the current state as a new generation and switches the manifest to it.
    fn save(&mut self) -> Result<()> {
        let next = self.manifest.generation + 1;
        let tmp = self.dir.join(format!("gen-{next}.tmp"));
        let result = self.save_generation(next, &tmp);
        if result.is_err() {
            // A failed write (a full disk, say) leaves nothing behind: the
            // manifest still names the previous generation.
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(self.dir.join("manifest.json.tmp"));
            let _ = fs::remove_dir_all(self.dir.join(format!("gen-{next}")));
        }
        result
    }

    fn save_generation(&mut self, next: u64, tmp: &Path) -> Result<()> {
        let gen = format!("gen-{next}");
        let tmp = tmp.to_path_buf();
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let recs = serde_json::to_vec(&self.records).map_err(json_err)?;
        write_synced(&tmp.join("records.json"), &recs)?;
        let mut names = vec!["records.json".to_string()];
        for (name, nv) in &self.vectors {
            names.extend(nv.raw.save(&tmp, name)?);
            if let Some(ann) = &nv.ann {
                names.extend(ann.save(&tmp, name)?);
            }
        }
        let mut files = BTreeMap::new();
        for n in names {
            let p = tmp.join(&n);
            let bytes = fs::read(&p).map_err(io(&p))?;
            files.insert(
                format!("{gen}/{n}"),
                FileSum {
                    size: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                },
            );
        }
        sync_dir(&tmp);
        let final_dir = self.dir.join(&gen);
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&self.dir);
        let mut m = self.manifest.clone();
        m.generation = next;
        m.images = self.records.len();
        m.files = files;
        for (name, nv) in &self.vectors {
            m.vectors.insert(name.clone(), nv.raw.dim());
        }
        let text = serde_json::to_vec_pretty(&m).map_err(json_err)?;
        let mtmp = self.dir.join("manifest.json.tmp");
        write_synced(&mtmp, &text)?;
        fs::rename(&mtmp, self.dir.join("manifest.json"))
            .map_err(io(self.dir.join("manifest.json")))?;
        sync_dir(&self.dir);
        self.manifest = m;
        self.collect_garbage();
        Ok(())
    }

    /// Removes what the manifest does not refer to: older generations and
    /// leftovers of an interrupted save (`gen-*.tmp`, `manifest.json.tmp`).
    fn collect_garbage(&self) {
        let current = format!("gen-{}", self.manifest.generation);
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("gen-") && name != current {
                    let _ = fs::remove_dir_all(e.path());
                } else if name == "manifest.json.tmp" {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Drops the records (and vectors) whose id is in `gone`.
    fn remove_ids(&mut self, gone: &HashSet<u64>) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        self.records.retain(|r| !gone.contains(&r.id));
        let keep: HashSet<u64> = self.records.iter().map(|r| r.id).collect();
        let gone_keys: Vec<u64> = gone.iter().copied().collect();
        for nv in self.vectors.values_mut() {
            nv.raw.retain(&keep);
            let removed = match &mut nv.ann {
                Some(ann) => ann.remove(&gone_keys)?,
                None => true,
            };
            if !removed {
                nv.ann = build_ann(&self.manifest.store, &nv.raw)?;
            }
        }
        self.rows = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        Ok(())
    }

    /// Appends embedded images: `vectors[i]` holds `recs.len()` rows of vector `names[i]`.
    fn append(
        &mut self,
        recs: Vec<ImageRecord>,
        names: &[&str],
        vectors: Vec<Vec<f32>>,
    ) -> Result<()> {
        let keys: Vec<u64> = recs.iter().map(|r| r.id).collect();
        for (name, v) in names.iter().zip(vectors) {
            let store = &self.manifest.store;
            let nv = self
                .vectors
                .get_mut(*name)
                .ok_or_else(|| IndexError::InvalidRequest(format!("unknown vector {name}")))?;
            let dim = v.len() / keys.len().max(1);
            if nv.raw.dim() == 0 && nv.raw.is_empty() {
                nv.raw = ExactStore::new(dim);
            }
            if nv.raw.dim() != dim {
                return Err(IndexError::Incompatible(format!(
                    "vector `{name}` has {} dims in the collection, {dim} from the model",
                    nv.raw.dim()
                )));
            }
            if nv.ann.is_none() && store.kind != StoreKind::Exact {
                nv.ann = Some(new_store(store, dim)?);
            }
            if let Some(ann) = &mut nv.ann {
                ann.add(&keys, &v)?;
            }
            nv.raw.add(&keys, &v)?;
        }
        for r in recs {
            self.rows.insert(r.id, self.records.len());
            self.records.push(r);
        }
        Ok(())
    }

    /// Brings the collection up to date with `root`: embeds new and changed
    /// images, drops records of deleted files, keeps the rest. Checkpoints
    /// as [`IndexOptions::checkpoint_every`] says, so a killed run resumes
    /// where it stopped. `progress(done, total)` is called after each batch.
    pub fn index(
        &mut self,
        root: &Path,
        encoder: &dyn ImageEncoder,
        opts: IndexOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<IndexReport> {
        self.lock_for_writing()?;
        let start = Instant::now();
        let names = encoder.vector_names();
        let known: Vec<String> = self.vectors.keys().cloned().collect();
        let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        if known != sorted {
            return Err(IndexError::Incompatible(format!(
                "the collection stores vectors {known:?}, the encoder produces {names:?}"
            )));
        }
        if self.manifest.generation > 0 {
            self.collect_garbage();
        }
        let scanned = scan(root)?;
        report_unreadable(&scanned);
        let found = &scanned.found;
        let by_path: HashMap<&str, &Found> = found.iter().map(|f| (f.rel.as_str(), f)).collect();
        let mut report = IndexReport {
            unreadable: scanned.unreadable.clone(),
            symlinked_folders: scanned.symlinked_folders.clone(),
            ..IndexReport::default()
        };
        // Drop records of deleted and changed files (not of files in folders
        // that could not be read this time: they are kept as they were).
        let mut gone = HashSet::new();
        let mut changed = HashSet::new();
        for r in &self.records {
            match by_path.get(r.path.as_str()) {
                Some(f) if f.size == r.size && f.mtime_ns == r.mtime_ns => {}
                Some(_) => {
                    changed.insert(r.path.clone());
                    gone.insert(r.id);
                }
                None if scanned.under_unreadable(&r.path) || r.imported => {}
                None => {
                    report.removed += 1;
                    gone.insert(r.id);
                }
            }
        }
        report.unchanged = self.records.len() - gone.len();
        if !gone.is_empty() {
            self.remove_ids(&gone)?;
            self.save()?;
        }
        let present: HashSet<&str> = self.records.iter().map(|r| r.path.as_str()).collect();
        let todo: Vec<&Found> = found
            .iter()
            .filter(|f| !present.contains(f.rel.as_str()))
            .collect();
        let total = todo.len();
        progress(0, total);
        let size = encoder.input_size();
        let plane = 3 * size * size;
        let mut since_checkpoint = 0;
        let mut done = 0;
        let batch = opts.batch.max(1);
        // Decode one batch ahead on a producer thread with its own pool of
        // low-priority threads: decoding fills the cores the model leaves idle
        // instead of holding up the model's fork-join steps (sharing rayon's
        // global pool made indexing ~25% slower). `decode_seconds` is the time
        // the model loop waits for pixels, `decode_cpu_seconds` the work done.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("squire-decode-{i}"))
            .start_handler(|_| lower_thread_priority())
            .build()
            .map_err(|e| {
                IndexError::InvalidRequest(format!("cannot start decoding threads: {e}"))
            })?;
        let pool = &pool;
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Decoded>)>(1);
            let todo = &todo;
            scope.spawn(move || {
                for (i, chunk) in todo.chunks(batch).enumerate() {
                    let decoded: Vec<Decoded> = pool.install(|| {
                        chunk
                            .par_iter()
                            .map(|f| decode_one(f, encoder, plane))
                            .collect()
                    });
                    if tx.send((i, decoded)).is_err() {
                        break;
                    }
                }
            });
            loop {
                let t0 = Instant::now();
                let Ok((i, decoded)) = rx.recv() else { break };
                report.decode_seconds += t0.elapsed().as_secs_f64();
                let chunk = &todo[i * batch..((i + 1) * batch).min(todo.len())];
                let mut recs: Vec<ImageRecord> = Vec::new();
                let mut pixels = Vec::with_capacity(chunk.len() * plane);
                for (f, d) in chunk.iter().zip(decoded) {
                    report.decode_cpu_seconds += d.seconds;
                    let d = d.result.and_then(|(r, px)| match self.rows.get(&r.id) {
                        Some(&row) => Err(format!(
                            "its id collides with that of {}",
                            self.records[row].path
                        )),
                        None if recs.iter().any(|o| o.id == r.id) => {
                            Err("its id collides with another file's".to_string())
                        }
                        None => Ok((r, px)),
                    });
                    match d {
                        Ok((r, px)) => {
                            recs.push(r);
                            pixels.extend(px);
                        }
                        Err(reason) => {
                            // Listed in the run's report (the CLI prints it once, at the end).
                            tracing::debug!(file = %f.rel, %reason, "skipped");
                            report.skipped.push((f.rel.clone(), reason));
                        }
                    }
                }
                if !recs.is_empty() {
                    let t1 = Instant::now();
                    let vectors = encoder.embed_named(&pixels, recs.len())?;
                    report.model_seconds += t1.elapsed().as_secs_f64();
                    for r in &recs {
                        if changed.contains(&r.path) {
                            report.updated += 1;
                        } else {
                            report.added += 1;
                        }
                    }
                    since_checkpoint += recs.len();
                    self.append(recs, &names, vectors)?;
                }
                done += chunk.len();
                progress(done, total);
                if since_checkpoint >= opts.checkpoint_every.max(self.records.len() / 4) {
                    self.save()?;
                    since_checkpoint = 0;
                }
            }
            Ok(())
        })?;
        if since_checkpoint > 0 || self.manifest.generation == 0 {
            self.save()?;
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The directory of this collection.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
