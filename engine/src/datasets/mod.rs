//! Loaders for the published annotation files of the composed,
//! natural-language and landmark retrieval benchmarks, read as distributed
//! (no conversion step): CIRR, CIRCO, INQUIRE's query lists and the
//! Revisited Oxford/Paris ground-truth pickles. Each loader
//! parses every record and names the file and record of the first bad one.

pub mod circo;
pub mod cirr;
pub mod inquire;
pub mod inquire_rerank;
pub mod revisitop;

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::eval::EvalError;

/// Reads a JSON file holding an array of records of type `T`; `id_of` gives a
/// record's own id for error messages.
pub(crate) fn read_json_records<T: DeserializeOwned>(
    path: &Path,
    id_of: impl Fn(&serde_json::Value) -> String,
) -> Result<Vec<T>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let values: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| EvalError::Format {
            path: path.to_path_buf(),
            line: e.line(),
            message: format!("not a JSON array of records: {e}"),
        })?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let what = id_of(&v);
            serde_json::from_value(v).map_err(|e| EvalError::Record {
                path: path.to_path_buf(),
                record: i,
                what,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
