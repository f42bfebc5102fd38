//! INQUIRE (Vendrow et al., NeurIPS 2024 D&B): the query lists
//! `inquire_queries_{val,test}.csv` (an unnamed index column, then
//! `query_id, query_text, supercategory, category, iconic_group`).

use std::path::Path;

use serde::Deserialize;

use crate::eval::EvalError;

/// One INQUIRE query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Query {
    /// Query id (annotations and the Rerank files refer to it).
    pub query_id: u64,
    /// The natural-language query.
    pub query_text: String,
    /// Appearance, Behavior, Context or Species.
    pub supercategory: String,
    /// Finer category.
    pub category: String,
    /// Taxonomic group (Birds, Mammals, …).
    pub iconic_group: String,
}

/// Reads an INQUIRE query CSV; the error for a bad row names its line.
pub fn load_queries(path: &Path) -> Result<Vec<Query>, EvalError> {
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::Reader::from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| EvalError::Format {
            path: path.to_path_buf(),
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    for need in [
        "query_id",
        "query_text",
        "supercategory",
        "category",
        "iconic_group",
    ] {
        if !headers.iter().any(|h| h == need) {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                line: 1,
                message: format!(
                    "no `{need}` column (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let mut out = Vec::new();
    for row in reader.deserialize::<Query>() {
        let q = row.map_err(|e| EvalError::Format {
            path: path.to_path_buf(),
            line: e.position().map(|p| p.line() as usize).unwrap_or(0),
            message: e.to_string(),
        })?;
        out.push(q);
    }
    Ok(out)
}

/// One relevant image of an INQUIRE query (a row of the annotations CSV).
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The query.
    pub query_id: u64,
    /// The image's iNat24 id, when the file has the column.
    pub image_id: Option<String>,
    /// The image's path (relative to the iNat24 root).
    pub image_path: String,
    /// 0-based record index in the file (for error messages).
    pub line: usize,
}

/// Reads an annotations CSV with at least `query_id` and `image_path`
/// columns (`image_id` is kept when present); the error for a bad row names its line.
pub fn load_annotations(path: &Path) -> Result<Vec<Annotation>, EvalError> {
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::Reader::from_reader(file);
    let bad = |line: usize, message: String| EvalError::Format {
        path: path.to_path_buf(),
        line,
        message,
    };
    let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (qi, pi) = match (col("query_id"), col("image_path")) {
        (Some(q), Some(p)) => (q, p),
        _ => {
            return Err(bad(
                1,
                format!(
                    "needs `query_id` and `image_path` columns (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    let ii = col("image_id");
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| bad(line, e.to_string()))?;
        let query_id = row
            .get(qi)
            .unwrap_or("")
            .trim()
            .parse::<u64>()
            .map_err(|_| {
                bad(
                    line,
                    format!("query_id {:?} is not a number", row.get(qi).unwrap_or("")),
                )
            })?;
        let image_path = row.get(pi).unwrap_or("").trim().to_string();
        if image_path.is_empty() {
            return Err(bad(line, "empty image_path".into()));
        }
        out.push(Annotation {
            query_id,
            image_id: ii.and_then(|j| row.get(j)).map(|s| s.trim().to_string()),
            image_path,
            line: i,
        });
    }
    Ok(out)
}
