//! INQUIRE-Rerank as published (Hugging Face `datasets` parquet shards): one
//! row per (query, candidate image) with `image` (a struct of `bytes` and
//! `path`), `query`, `relevant`, `clip_score`, `inat24_image_id`,
//! `inat24_file_name`, `supercategory`, `category`, `iconic_group` and
//! further metadata columns (ignored). Read with the parquet crate's row API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};

use crate::eval::EvalError;

/// One candidate of one query.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The encoded image (JPEG as published).
    pub image: Vec<u8>,
    /// `inat24_image_id` (as text), the candidate's id in runs and qrels.
    pub id: String,
    /// `inat24_file_name`.
    pub file_name: String,
    /// Annotated relevant.
    pub relevant: bool,
    /// The published first stage's score (CLIP ViT-H-14-378).
    pub clip_score: f64,
}

/// One query with its candidates in file order.
#[derive(Debug, Clone)]
pub struct RerankQuery {
    /// The query text.
    pub query: String,
    /// Appearance, Behavior, Context or Species.
    pub supercategory: String,
    /// Finer category.
    pub category: String,
    /// Its candidates.
    pub candidates: Vec<Candidate>,
}

fn field<'a>(row: &'a Row, name: &str) -> Option<&'a Field> {
    row.get_column_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| f)
}

fn text(f: Option<&Field>) -> Option<String> {
    match f? {
        Field::Str(s) => Some(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data()).ok().map(str::to_string),
        Field::Long(v) => Some(v.to_string()),
        Field::Int(v) => Some(v.to_string()),
        Field::ULong(v) => Some(v.to_string()),
        _ => None,
    }
}

fn number(f: Option<&Field>) -> Option<f64> {
    match f? {
        Field::Double(v) => Some(*v),
        Field::Float(v) => Some(*v as f64),
        Field::Long(v) => Some(*v as f64),
        Field::Int(v) => Some(*v as f64),
        Field::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Reads one or more shards; queries keep the order of their first row.
/// A missing column or an unreadable cell is an error naming the file and row.
pub fn load(shards: &[PathBuf]) -> Result<Vec<RerankQuery>, EvalError> {
    let mut order: Vec<String> = Vec::new();
    let mut by_query: BTreeMap<String, RerankQuery> = BTreeMap::new();
    for path in shards {
        let bad = |row: usize, message: String| EvalError::Record {
            path: path.clone(),
            record: row,
            what: String::new(),
            message,
        };
        let reader =
            SerializedFileReader::try_from(path.as_path()).map_err(|e| EvalError::Format {
                path: path.clone(),
                line: 0,
                message: format!("not a parquet file: {e}"),
            })?;
        for (i, row) in reader.into_iter().enumerate() {
            let row = row.map_err(|e| bad(i, e.to_string()))?;
            let get_text = |name: &str| {
                text(field(&row, name)).ok_or_else(|| bad(i, format!("no text column `{name}`")))
            };
            let image = match field(&row, "image") {
                Some(Field::Group(g)) => match field(g, "bytes") {
                    Some(Field::Bytes(b)) => b.data().to_vec(),
                    _ => return Err(bad(i, "`image.bytes` is missing or not binary".into())),
                },
                Some(Field::Bytes(b)) => b.data().to_vec(),
                _ => {
                    return Err(bad(
                        i,
                        "no `image` column (a struct of bytes and path)".into(),
                    ))
                }
            };
            let query = get_text("query")?;
            let relevant = number(field(&row, "relevant"))
                .ok_or_else(|| bad(i, "no `relevant` column".into()))?
                > 0.0;
            let clip_score = number(field(&row, "clip_score"))
                .ok_or_else(|| bad(i, "no numeric `clip_score` column".into()))?;
            let candidate = Candidate {
                image,
                id: get_text("inat24_image_id")?,
                file_name: get_text("inat24_file_name")?,
                relevant,
                clip_score,
            };
            if !by_query.contains_key(&query) {
                order.push(query.clone());
                by_query.insert(
                    query.clone(),
                    RerankQuery {
                        query: query.clone(),
                        supercategory: get_text("supercategory")?,
                        category: get_text("category")?,
                        candidates: Vec::new(),
                    },
                );
            }
            if let Some(q) = by_query.get_mut(&query) {
                q.candidates.push(candidate);
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|q| by_query.remove(&q))
        .collect())
}

/// The `*.parquet` files of `path` (a file, or a folder searched recursively), sorted.
pub fn shards(path: &Path) -> Result<Vec<PathBuf>, EvalError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| EvalError::Io {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(EvalError::Format {
            path: path.to_path_buf(),
            line: 0,
            message: "no .parquet files here".into(),
        });
    }
    Ok(out)
}
