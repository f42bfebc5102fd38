//! Precomputed embeddings in and out, in clip-retrieval's layout (the one
//! LAION's published embeddings use):
//!
//! ```text
//! EMB_DIR/img_emb/img_emb_0.npy        rows × dim, float16/32/64: the model's
//!                                      text-query vector (CLIP's only one)
//! EMB_DIR/metadata/metadata_0.parquet  the same rows: `image_path` (required),
//!                                      `caption`, `url` (kept when present)
//! EMB_DIR/<name>_emb/<name>_emb_0.npy  each further named vector of the model
//!                                      (the lite pack's `gem`), same rows
//! ```
//!
//! Shards `_0`, `_1`, … are read in numeric order and must agree row for row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;
use serde::Serialize;

use super::{path_id, Collection, ImageRecord};
use crate::error::{io, IndexError, Result};
use crate::npy;
use crate::store::VectorStore;

/// Rows per shard that [`Collection::export`] writes (clip-retrieval's
/// default is 1,000,000 too).
pub const EXPORT_SHARD_ROWS: usize = 1_000_000;

/// What [`Collection::import`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Shards read.
    pub shards: usize,
    /// Images added.
    pub added: usize,
    /// Rows whose image the collection already held (kept as they were).
    pub already_present: usize,
    /// Rows whose vectors were not unit length and were normalised.
    pub normalised: usize,
    /// Rows whose image file was found under the images folder (their size,
    /// time and pixel size recorded, so `squire index` will not embed them again).
    pub files_found: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

fn corrupt(path: &Path, message: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The shards of `dir/<folder>/<prefix>_N.<ext>`, by N.
fn shards(dir: &Path, folder: &str, prefix: &str, ext: &str) -> Result<BTreeMap<u64, PathBuf>> {
    let d = dir.join(folder);
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(&d).map_err(io(&d))?;
    for e in entries {
        let p = e.map_err(io(&d))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(n) = name
            .strip_prefix(&format!("{prefix}_"))
            .and_then(|r| r.strip_suffix(&format!(".{ext}")))
        else {
            continue;
        };
        if let Ok(n) = n.parse::<u64>() {
            out.insert(n, p);
        }
    }
    if out.is_empty() {
        return Err(IndexError::InvalidRequest(format!(
            "{}: no {prefix}_N.{ext} files",
            d.display()
        )));
    }
    Ok(out)
}

/// One metadata row.
struct Meta {
    image_path: String,
    caption: Option<String>,
    url: Option<String>,
}

fn read_metadata(path: &Path) -> Result<Vec<Meta>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| corrupt(path, format!("not a parquet file: {e}")))?;
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    if !columns.iter().any(|c| c == "image_path") {
        return Err(corrupt(
            path,
            format!("no `image_path` column (it has: {})", columns.join(", ")),
        ));
    }
    let text = |f: &Field| match f {
        Field::Str(s) => Some(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data()).ok().map(str::to_string),
        _ => None,
    };
    let mut out = Vec::new();
    for (i, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| corrupt(path, format!("row {i}: {e}")))?;
        let mut m = Meta {
            image_path: String::new(),
            caption: None,
            url: None,
        };
        let mut has_path = false;
        for (name, field) in row.get_column_iter() {
            match name.as_str() {
                "image_path" => {
                    m.image_path = text(field).ok_or_else(|| {
                        corrupt(path, format!("row {i}: `image_path` is not text ({field})"))
                    })?;
                    has_path = !m.image_path.is_empty();
                }
                "caption" => m.caption = text(field),
                "url" => m.url = text(field),
                _ => {}
            }
        }
        if !has_path {
            return Err(corrupt(path, format!("row {i}: `image_path` is empty")));
        }
        out.push(m);
    }
    Ok(out)
}

/// The relative, `/`-separated path a record keeps for `image_path`.
fn record_path(image_path: &str, root: Option<&Path>) -> String {
    let p = Path::new(image_path);
    let rel: PathBuf = match root {
        Some(r) if p.is_absolute() => {
            // `root` is canonical; the path may be spelled another way
            // (`/data/../data/x.jpg`, a symlinked folder).
            let candidates = [Some(lexical(p)), p.canonicalize().ok()];
            candidates
                .iter()
                .flatten()
                .find_map(|c| c.strip_prefix(r).ok().map(Path::to_path_buf))
                .unwrap_or_else(|| p.to_path_buf())
        }
        _ => p.to_path_buf(),
    };
    rel.to_string_lossy()
        .replace('\\', "/")
        .trim_start_matches("./")
        .to_string()
}

/// `p` with `.` and `..` resolved by name.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Collection {
    /// Adds the precomputed embeddings in `emb_dir` (clip-retrieval's layout,
    /// see the module docs) for this collection's model. Each vector is
    /// checked (shape, finite, non-zero) and normalised when it is not unit
    /// length. `images_root` is where the images live (their `image_path` is
    /// taken relative to it); files found there get their size, time and
    /// pixel size recorded. Rows whose image the collection holds already are
    /// kept as they were. `progress(done, total)` counts shards.
    pub fn import(
        &mut self,
        emb_dir: &Path,
        images_root: Option<&Path>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ImportReport> {
        self.lock_for_writing()?;
        let start = Instant::now();
        let text_name = self.manifest.text_query_vector.clone();
        let names: Vec<String> = self.vectors.keys().cloned().collect();
        let folder = |name: &str| {
            if *name == text_name {
                ("img_emb".to_string(), "img_emb".to_string())
            } else {
                (format!("{name}_emb"), format!("{name}_emb"))
            }
        };
        let meta_shards = shards(emb_dir, "metadata", "metadata", "parquet")?;
        let mut vec_shards = BTreeMap::new();
        for name in &names {
            let (f, p) = folder(name);
            let s = shards(emb_dir, &f, &p, "npy")?;
            if s.keys().ne(meta_shards.keys()) {
                return Err(IndexError::InvalidRequest(format!(
                    "{}: shards {:?} do not match metadata's {:?}",
                    emb_dir.join(&f).display(),
                    s.keys().collect::<Vec<_>>(),
                    meta_shards.keys().collect::<Vec<_>>()
                )));
            }
            vec_shards.insert(name.clone(), s);
        }
        let mut report = ImportReport::default();
        let total = meta_shards.len();
        progress(0, total);
        let mut since_save = 0;
        for (done, (n, meta_path)) in meta_shards.iter().enumerate() {
            let meta = read_metadata(meta_path)?;
            // Each named vector of this shard, checked and normalised.
            let mut vectors: Vec<(String, Vec<f32>, usize)> = Vec::new();
            for name in &names {
                let path = &vec_shards[name][n];
                let arr = npy::read(path)?;
                let (rows, dim) = arr.matrix(path)?;
                if rows != meta.len() {
                    return Err(corrupt(
                        path,
                        format!(
                            "{rows} rows, but {} has {}",
                            meta_path.display(),
                            meta.len()
                        ),
                    ));
                }
                let want = self.manifest.vectors.get(name).copied().unwrap_or(0);
                if want != 0 && want != dim {
                    return Err(corrupt(
                        path,
                        format!("{dim}-dim vectors; the collection's `{name}` has {want}"),
                    ));
                }
                if let Some(k) = squire_models::registry::known(&self.manifest.model) {
                    if name == &text_name && k.dim != dim {
                        return Err(corrupt(
                            path,
                            format!("{dim}-dim vectors; model `{}` makes {}", k.name, k.dim),
                        ));
                    }
                }
                let mut data = arr.data;
                for (r, v) in data.chunks_mut(dim.max(1)).enumerate() {
                    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                        return Err(corrupt(
                            path,
                            format!(
                                "row {r} has a value that is not finite ({} at column {j})",
                                v[j]
                            ),
                        ));
                    }
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if norm == 0.0 {
                        return Err(corrupt(path, format!("row {r} is all zeros")));
                    }
                    if (norm - 1.0).abs() > 1e-3 {
                        v.iter_mut().for_each(|x| *x /= norm);
                        if name == &text_name {
                            report.normalised += 1;
                        }
                    }
                }
                vectors.push((name.clone(), data, dim));
            }
            // The rows to add: new images only.
            let mut keep = Vec::new();
            let mut recs = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (i, m) in meta.iter().enumerate() {
                let path = record_path(&m.image_path, images_root);
                let id = path_id(&path);
                if self.rows.contains_key(&id) || !seen.insert(id) {
                    report.already_present += 1;
                    continue;
                }
                let mut rec = ImageRecord {
                    id,
                    path,
                    size: 0,
                    mtime_ns: 0,
                    sha256: String::new(),
                    width: 0,
                    height: 0,
                    exif_taken: None,
                    camera: None,
                    os_path: None,
                    imported: true,
                    caption: m.caption.clone(),
                    url: m.url.clone(),
                };
                if let Some(root) = images_root {
                    let file = root.join(rec.relative_path());
                    if let Ok(meta) = std::fs::metadata(&file) {
                        report.files_found += 1;
                        rec.size = meta.len();
                        rec.mtime_ns = crate::scan::mtime_ns(&meta);
                        if let Ok((w, h)) = image::image_dimensions(&file) {
                            (rec.width, rec.height) = (w, h);
                        }
                    }
                }
                keep.push(i);
                recs.push(rec);
            }
            if !recs.is_empty() {
                let names_ref: Vec<&str> = vectors.iter().map(|(n, _, _)| n.as_str()).collect();
                let picked: Vec<Vec<f32>> = vectors
                    .iter()
                    .map(|(_, data, dim)| {
                        keep.iter()
                            .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
                            .collect()
                    })
                    .collect();
                report.added += recs.len();
                since_save += recs.len();
                self.append(recs, &names_ref, picked)?;
                for (name, _, dim) in &vectors {
                    self.manifest.vectors.insert(name.clone(), *dim);
                }
            }
            report.shards += 1;
            progress(done + 1, total);
            // Checkpoint as indexing does: a killed import resumes (rows already in are skipped).
            if since_save >= self.records.len() / 4 && done + 1 < total {
                self.save()?;
                since_save = 0;
            }
        }
        if since_save > 0 || self.manifest.generation == 0 {
            self.save()?;
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Writes the collection in clip-retrieval's layout (see the module
    /// docs) under `out`, `shard_rows` rows per shard: every named vector
    /// as float32 and `metadata_N.parquet` with `image_path` (the record's
    /// path), `caption`, `url` and `id` (16 hex digits). `import` reads it back.
    pub fn export(&self, out: &Path, shard_rows: usize) -> Result<usize> {
        let shard_rows = shard_rows.max(1);
        let text_name = &self.manifest.text_query_vector;
        let n = self.records.len();
        let shards = n.div_ceil(shard_rows).max(1);
        for (name, nv) in &self.vectors {
            let folder = if name == text_name {
                "img_emb".to_string()
            } else {
                format!("{name}_emb")
            };
            let d = out.join(&folder);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
            let dim = nv.raw.dim();
            for s in 0..shards {
                let (a, b) = (s * shard_rows, ((s + 1) * shard_rows).min(n));
                let data = &nv.raw.data()[a * dim..b * dim];
                let p = d.join(format!("{folder}_{s}.npy"));
                crate::fsio::write_synced(&p, &npy::encode(data, b - a, dim, false))?;
            }
        }
        let d = out.join("metadata");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        for s in 0..shards {
            let (a, b) = (s * shard_rows, ((s + 1) * shard_rows).min(n));
            let p = d.join(format!("metadata_{s}.parquet"));
            write_metadata(&p, &self.records[a..b])?;
        }
        Ok(shards)
    }
}

fn write_metadata(path: &Path, recs: &[ImageRecord]) -> Result<()> {
    let perr = |e: parquet::errors::ParquetError| corrupt(path, format!("writing parquet: {e}"));
    let text_col = |name: &str, rep: Repetition| {
        Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
            .with_repetition(rep)
            .with_logical_type(Some(LogicalType::String))
            .build()
            .map(Arc::new)
    };
    let fields = vec![
        text_col("image_path", Repetition::REQUIRED).map_err(perr)?,
        text_col("caption", Repetition::OPTIONAL).map_err(perr)?,
        text_col("url", Repetition::OPTIONAL).map_err(perr)?,
        text_col("id", Repetition::REQUIRED).map_err(perr)?,
    ];
    let schema = Arc::new(
        Type::group_type_builder("schema")
            .with_fields(fields)
            .build()
            .map_err(perr)?,
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).map_err(io(path))?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(perr)?;
    let mut rg = w.next_row_group().map_err(perr)?;
    let optional = |get: &dyn Fn(&ImageRecord) -> Option<&String>| -> (Vec<ByteArray>, Vec<i16>) {
        let values = recs
            .iter()
            .filter_map(|r| get(r).map(|s| ByteArray::from(s.as_str())))
            .collect();
        let defs = recs.iter().map(|r| i16::from(get(r).is_some())).collect();
        (values, defs)
    };
    let columns: Vec<(Vec<ByteArray>, Option<Vec<i16>>)> = vec![
        (
            recs.iter()
                .map(|r| ByteArray::from(r.path.as_str()))
                .collect(),
            None,
        ),
        {
            let (v, d) = optional(&|r| r.caption.as_ref());
            (v, Some(d))
        },
        {
            let (v, d) = optional(&|r| r.url.as_ref());
            (v, Some(d))
        },
        (
            recs.iter()
                .map(|r| ByteArray::from(format!("{:016x}", r.id).as_str()))
                .collect(),
            None,
        ),
    ];
    let mut columns = columns.into_iter();
    while let Some(mut col) = rg.next_column().map_err(perr)? {
        let (values, defs) = columns
            .next()
            .ok_or_else(|| corrupt(path, "schema and columns disagree"))?;
        col.typed::<ByteArrayType>()
            .write_batch(&values, defs.as_deref(), None)
            .map_err(perr)?;
        col.close().map_err(perr)?;
    }
    rg.close().map_err(perr)?;
    w.close().map_err(perr)?;
    crate::fsio::sync_file(path)
}
