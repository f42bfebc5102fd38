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
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let mut reader = csv::Reader::from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| EvalError::Format { path: path.to_path_buf(), line: 1, message: e.to_string() })?
        .clone();
    for need in ["query_id", "query_text", "supercategory", "category", "iconic_group"] {
        if !headers.iter().any(|h| h == need) {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                line: 1,
                message: format!("no `{need}` column (columns: {})", headers.iter().collect::<Vec<_>>().join(", ")),
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
