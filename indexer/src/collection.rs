//! A collection: the images of one folder, their metadata and their named
//! vectors, stored crash-safely in an index directory.
//!
//! Layout of an index directory:
//!
//! ```text
//! manifest.json        format version, model id, vector names and sizes, the
//!                      current generation and the size and SHA-256 of each of its files
//! gen-<N>/records.json one ImageRecord per image, in row order
//! gen-<N>/<name>.f32   the named vectors, rows × dim little-endian f32
//! ```
//!
//! Contract: `manifest.json` is replaced only by an atomic rename, after the
//! generation it names has been written, fsynced and renamed into place, so a
//! reader (or a process killed at any point) always sees one complete,
//! checksummed generation. Directories that no manifest refers to (older
//! generations, `*.tmp` leftovers) are removed at the next save.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use squire_models::{image_io, ImageEncoder};

use crate::error::{io, IndexError, Result};
use crate::scan::{scan, Found};
use crate::store::{ExactStore, Hit, VectorStore};

/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 1;

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
    /// Images between checkpoints (a killed run loses at most this many).
    pub checkpoint_every: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions { batch: 32, checkpoint_every: 256 }
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
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds spent reading, decoding and preprocessing.
    pub decode_seconds: f64,
    /// Seconds spent in the model.
    pub model_seconds: f64,
}

/// An open collection.
#[derive(Debug)]
pub struct Collection {
    dir: PathBuf,
    manifest: Manifest,
    records: Vec<ImageRecord>,
    stores: BTreeMap<String, ExactStore>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn path_id(rel: &str) -> u64 {
    let d = Sha256::digest(rel.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(io(path))?;
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

impl Collection {
    /// Opens the collection in `dir`, verifying every file of its current generation.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = fs::read_to_string(&mpath).map_err(io(&mpath))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| IndexError::Corrupt { path: mpath.clone(), message: e.to_string() })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(IndexError::Incompatible(format!(
                "{}: format version {} (this Squire reads {FORMAT_VERSION})",
                mpath.display(),
                manifest.format_version
            )));
        }
        let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
        for (rel, sum) in &manifest.files {
            let p = dir.join(rel);
            let bytes = fs::read(&p).map_err(io(&p))?;
            if bytes.len() as u64 != sum.size || sha256_hex(&bytes) != sum.sha256 {
                return Err(IndexError::Corrupt { path: p, message: "size or checksum differs from manifest.json".into() });
            }
            contents.insert(rel.clone(), bytes);
        }
        let gen = format!("gen-{}", manifest.generation);
        let rec_rel = format!("{gen}/records.json");
        let rec_bytes = contents.remove(&rec_rel).ok_or_else(|| IndexError::Corrupt {
            path: mpath.clone(),
            message: format!("{rec_rel} is not listed"),
        })?;
        let records: Vec<ImageRecord> = serde_json::from_slice(&rec_bytes)
            .map_err(|e| IndexError::Corrupt { path: dir.join(&rec_rel), message: e.to_string() })?;
        let mut stores = BTreeMap::new();
        for (name, &dim) in &manifest.vectors {
            let rel = format!("{gen}/{name}.f32");
            let bytes = contents.remove(&rel).ok_or_else(|| IndexError::Corrupt { path: mpath.clone(), message: format!("{rel} is not listed") })?;
            if bytes.len() != records.len() * dim * 4 {
                return Err(IndexError::Corrupt {
                    path: dir.join(&rel),
                    message: format!("{} bytes for {} images × {dim} dims", bytes.len(), records.len()),
                });
            }
            let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            stores.insert(name.clone(), ExactStore::new(dim, data));
        }
        Ok(Collection { dir: dir.to_path_buf(), manifest, records, stores })
    }

    /// Opens `dir` if it holds a collection (which must come from `model`),
    /// else creates an empty one for `model` and `encoder`'s vectors.
    pub fn open_or_create(dir: &Path, model: &str, encoder: &dyn ImageEncoder, images_root: &Path) -> Result<Self> {
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
        fs::create_dir_all(dir).map_err(io(dir))?;
        let names = encoder.vector_names();
        // Vector sizes are learned from the first batch; record the names now.
        let vectors = names.iter().map(|n| (n.to_string(), 0usize)).collect();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            model: model.to_string(),
            vectors,
            text_query_vector: encoder.text_query_vector().to_string(),
            image_query_vector: encoder.image_query_vector().to_string(),
            images_root: images_root.to_path_buf(),
            generation: 0,
            images: 0,
            files: BTreeMap::new(),
        };
        let stores = names.iter().map(|n| (n.to_string(), ExactStore::new(0, Vec::new()))).collect();
        Ok(Collection { dir: dir.to_path_buf(), manifest, records: Vec::new(), stores })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Image records in row order.
    pub fn records(&self) -> &[ImageRecord] {
        &self.records
    }

    /// The store of a named vector.
    pub fn store(&self, name: &str) -> Result<&ExactStore> {
        self.stores.get(name).ok_or_else(|| {
            IndexError::InvalidRequest(format!(
                "the collection has no vector `{name}` (it has {})",
                self.stores.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Searches a named vector.
    pub fn search(&self, vector: &str, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let store = self.store(vector)?;
        if query.len() != store.dim() {
            return Err(IndexError::InvalidRequest(format!(
                "query has {} dims but vector `{vector}` has {}",
                query.len(),
                store.dim()
            )));
        }
        Ok(store.search(query, k))
    }

    /// Writes the current state as a new generation and switches the manifest to it.
    fn save(&mut self) -> Result<()> {
        let next = self.manifest.generation + 1;
        let gen = format!("gen-{next}");
        let tmp = self.dir.join(format!("{gen}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut files = BTreeMap::new();
        let recs = serde_json::to_vec(&self.records).map_err(|e| IndexError::InvalidRequest(e.to_string()))?;
        write_synced(&tmp.join("records.json"), &recs)?;
        files.insert(format!("{gen}/records.json"), FileSum { size: recs.len() as u64, sha256: sha256_hex(&recs) });
        for (name, store) in &self.stores {
            let mut bytes = Vec::with_capacity(store.len() * store.dim() * 4);
            for r in 0..store.len() {
                for v in store.row(r) {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            write_synced(&tmp.join(format!("{name}.f32")), &bytes)?;
            files.insert(format!("{gen}/{name}.f32"), FileSum { size: bytes.len() as u64, sha256: sha256_hex(&bytes) });
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
        for (name, store) in &self.stores {
            m.vectors.insert(name.clone(), store.dim());
        }
        let text = serde_json::to_vec_pretty(&m).map_err(|e| IndexError::InvalidRequest(e.to_string()))?;
        let mtmp = self.dir.join("manifest.json.tmp");
        write_synced(&mtmp, &text)?;
        fs::rename(&mtmp, self.dir.join("manifest.json")).map_err(io(self.dir.join("manifest.json")))?;
        sync_dir(&self.dir);
        self.manifest = m;
        // Garbage-collect what the manifest no longer refers to.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("gen-") && name != gen {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Brings the collection up to date with `root`: embeds new and changed
    /// images, drops records of deleted files, keeps the rest. Checkpoints
    /// every `opts.checkpoint_every` images, so a killed run resumes where it
    /// stopped. `progress(done, total)` is called after each batch.
    pub fn index(
        &mut self,
        root: &Path,
        encoder: &dyn ImageEncoder,
        opts: IndexOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<IndexReport> {
        let start = Instant::now();
        let names = encoder.vector_names();
        let known: Vec<String> = self.stores.keys().cloned().collect();
        let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        if known != sorted {
            return Err(IndexError::Incompatible(format!(
                "the collection stores vectors {known:?}, the encoder produces {names:?}"
            )));
        }
        let found = scan(root)?;
        let by_path: HashMap<&str, &Found> = found.iter().map(|f| (f.rel.as_str(), f)).collect();
        let mut report = IndexReport::default();
        // Keep unchanged rows, drop deleted and changed ones.
        let mut keep_rows = Vec::new();
        let mut changed = std::collections::HashSet::new();
        for (row, r) in self.records.iter().enumerate() {
            match by_path.get(r.path.as_str()) {
                Some(f) if f.size == r.size && f.mtime_ns == r.mtime_ns => keep_rows.push(row),
                Some(_) => {
                    changed.insert(r.path.clone());
                }
                None => report.removed += 1,
            }
        }
        report.unchanged = keep_rows.len();
        let had = self.records.len();
        if keep_rows.len() != had {
            self.records = keep_rows.iter().map(|&i| self.records[i].clone()).collect();
            for store in self.stores.values_mut() {
                let dim = store.dim();
                let data: Vec<f32> = keep_rows.iter().flat_map(|&i| store.row(i).to_vec()).collect();
                *store = ExactStore::new(dim, data);
            }
        }
        let present: std::collections::HashSet<&str> = self.records.iter().map(|r| r.path.as_str()).collect();
        let todo: Vec<&Found> = found.iter().filter(|f| !present.contains(f.rel.as_str())).collect();
        if report.removed > 0 || keep_rows.len() != had {
            self.save()?;
        }
        let total = todo.len();
        progress(0, total);
        let size = encoder.input_size();
        let plane = 3 * size * size;
        let mut since_checkpoint = 0;
        for (bi, chunk) in todo.chunks(opts.batch.max(1)).enumerate() {
            let t0 = Instant::now();
            let decoded: Vec<std::result::Result<(ImageRecord, Vec<f32>), String>> = chunk
                .par_iter()
                .map(|f| {
                    let bytes = fs::read(&f.abs).map_err(|e| format!("cannot read: {e}"))?;
                    let img = image_io::decode_rgb(&bytes, &f.abs).map_err(|e| e.to_string())?;
                    let mut px = vec![0f32; plane];
                    encoder.preprocess_into(&img, &mut px).map_err(|e| e.to_string())?;
                    let rec = ImageRecord {
                        id: path_id(&f.rel),
                        path: f.rel.clone(),
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                        sha256: sha256_hex(&bytes),
                        width: img.width(),
                        height: img.height(),
                    };
                    Ok((rec, px))
                })
                .collect();
            let mut recs = Vec::new();
            let mut pixels = Vec::with_capacity(chunk.len() * plane);
            for (f, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok((r, px)) => {
                        recs.push(r);
                        pixels.extend(px);
                    }
                    Err(reason) => {
                        tracing::warn!(file = %f.rel, %reason, "skipped");
                        report.skipped.push((f.rel.clone(), reason));
                    }
                }
            }
            report.decode_seconds += t0.elapsed().as_secs_f64();
            if !recs.is_empty() {
                let t1 = Instant::now();
                let vectors = encoder.embed_named(&pixels, recs.len())?;
                report.model_seconds += t1.elapsed().as_secs_f64();
                for (name, v) in names.iter().zip(vectors) {
                    let store = self.stores.get_mut(*name).ok_or_else(|| IndexError::InvalidRequest(format!("unknown vector {name}")))?;
                    let dim = v.len() / recs.len();
                    if store.dim() != 0 && store.dim() != dim {
                        return Err(IndexError::Incompatible(format!("vector `{name}` has {} dims in the collection, {dim} from the model", store.dim())));
                    }
                    let mut data = std::mem::replace(store, ExactStore::new(0, Vec::new())).into_data();
                    data.extend(v);
                    *store = ExactStore::new(dim, data);
                }
                for r in recs {
                    if changed.contains(&r.path) {
                        report.updated += 1;
                    } else {
                        report.added += 1;
                    }
                    self.records.push(r);
                }
                since_checkpoint += chunk.len();
            }
            progress(((bi + 1) * opts.batch.max(1)).min(total), total);
            if since_checkpoint >= opts.checkpoint_every {
                self.save()?;
                since_checkpoint = 0;
            }
        }
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
