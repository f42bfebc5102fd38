//! The evaluation errors, and the generic text-to-image query-TSV format
//! (`query_id`, `caption`, `relevant_image`; the image path is relative to
//! the indexed folder) used for Flickr8k-1k. The benchmarks themselves are in
//! [`crate::benchmarks`], run by [`crate::harness`].

use std::path::{Path, PathBuf};

/// Errors of the evaluation harness; each names the file and record at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The queries file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A malformed line or header.
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A malformed record of a JSON annotation file.
    #[error("{path}: record {record}{what}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 0-based index of the record in the file.
        record: usize,
        /// The record's own id, where it has one (" (pairid 12060)").
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A failure in the model or the collection.
    #[error("{0}")]
    Backend(String),
}

/// One text query with its relevant image.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// The query's id.
    pub id: String,
    /// The caption.
    pub caption: String,
    /// Path of the relevant image relative to the indexed folder.
    pub relevant: String,
}

/// Reads a query TSV with the header `query_id<TAB>caption<TAB>relevant_image`.
pub fn read_query_tsv(path: &Path) -> Result<Vec<TextQuery>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines().enumerate();
    let bad = |line: usize, message: String| EvalError::Format {
        path: path.to_path_buf(),
        line,
        message,
    };
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(1, format!("header lacks column `{name}` (has {cols:?})")))
    };
    let (qi, ci, ri) = (col("query_id")?, col("caption")?, col("relevant_image")?);
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let get = |j: usize, name: &str| {
            f.get(j)
                .map(|s| s.trim().to_string())
                .ok_or_else(|| bad(i + 1, format!("missing `{name}`")))
        };
        out.push(TextQuery {
            id: get(qi, "query_id")?,
            caption: get(ci, "caption")?,
            relevant: get(ri, "relevant_image")?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("squire-tsv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("q.tsv");
        std::fs::write(&p, "query_id\tcaption\n1\ta dog\n").expect("write");
        let e = read_query_tsv(&p).expect_err("missing column");
        assert!(
            e.to_string().contains("q.tsv:1") && e.to_string().contains("relevant_image"),
            "{e}"
        );
        std::fs::write(&p, "query_id\tcaption\trelevant_image\n1\ta dog\n").expect("write");
        let e = read_query_tsv(&p).expect_err("short line");
        assert!(e.to_string().contains("q.tsv:2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
