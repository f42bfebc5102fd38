//! Text-to-image evaluation on the generic query-TSV format (`query_id`,
//! `caption`, `relevant_image`; the image path is relative to the indexed
//! folder), as used for Flickr8k-1k: Recall@1/5/10, MRR and nDCG@10 with one
//! relevant image per query.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use squire_indexer::{Collection, SearchParams};
use squire_models::TextEncoder;

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
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let mut lines = text.lines().enumerate();
    let bad = |line: usize, message: String| EvalError::Format { path: path.to_path_buf(), line, message };
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).ok_or_else(|| bad(1, format!("header lacks column `{name}` (has {cols:?})")));
    let (qi, ci, ri) = (col("query_id")?, col("caption")?, col("relevant_image")?);
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let get = |j: usize, name: &str| f.get(j).map(|s| s.trim().to_string()).ok_or_else(|| bad(i + 1, format!("missing `{name}`")));
        out.push(TextQuery { id: get(qi, "query_id")?, caption: get(ci, "caption")?, relevant: get(ri, "relevant_image")? });
    }
    Ok(out)
}

/// Text-to-image metrics, averaged over the evaluated queries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct T2iMetrics {
    /// Share of queries whose relevant image is ranked first.
    #[serde(rename = "R@1")]
    pub r1: f64,
    /// … in the top 5.
    #[serde(rename = "R@5")]
    pub r5: f64,
    /// … in the top 10.
    #[serde(rename = "R@10")]
    pub r10: f64,
    /// Mean reciprocal rank over the full ranking.
    #[serde(rename = "MRR")]
    pub mrr: f64,
    /// nDCG@10 with one relevant image (gain 1/log2(rank + 1) within the top 10).
    #[serde(rename = "nDCG@10")]
    pub ndcg10: f64,
}

/// Metrics from the 1-based rank of each query's relevant image.
pub fn t2i_metrics(ranks: &[usize]) -> T2iMetrics {
    let n = ranks.len().max(1) as f64;
    let within = |k: usize| ranks.iter().filter(|&&r| r >= 1 && r <= k).count() as f64 / n;
    T2iMetrics {
        r1: within(1),
        r5: within(5),
        r10: within(10),
        mrr: ranks.iter().map(|&r| if r >= 1 { 1.0 / r as f64 } else { 0.0 }).sum::<f64>() / n,
        ndcg10: ranks.iter().map(|&r| if (1..=10).contains(&r) { 1.0 / ((r + 1) as f64).log2() } else { 0.0 }).sum::<f64>() / n,
    }
}

/// One evaluated query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// The query id.
    pub query_id: String,
    /// 1-based rank of the relevant image (0: not within the ranking depth).
    pub rank: usize,
}

/// The outcome of a text-to-image evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct T2iReport {
    /// Metrics over the evaluated queries.
    pub metrics: T2iMetrics,
    /// Queries evaluated.
    pub queries: usize,
    /// Queries dropped because their relevant image is not in the collection (ids).
    pub dropped: Vec<String>,
    /// Per-query ranks.
    pub per_query: Vec<QueryResult>,
}

/// Ranks the collection (to depth `k`, default all of it) for every caption
/// and scores the relevant image's rank; one beyond `k` counts as not retrieved.
/// With `ann` the collection's HNSW store ranks (system quality); without, exact
/// search does (model quality).
pub fn evaluate_t2i(
    col: &Collection,
    encoder: &dyn TextEncoder,
    queries: &[TextQuery],
    k: Option<usize>,
    batch: usize,
    ann: Option<SearchParams>,
) -> Result<T2iReport, EvalError> {
    let row_of: HashMap<&str, usize> = col.records().iter().enumerate().map(|(i, r)| (r.path.as_str(), i)).collect();
    let vector = &col.manifest().text_query_vector;
    let n = k.unwrap_or(usize::MAX).min(col.records().len());
    let mut dropped = Vec::new();
    let mut per_query = Vec::new();
    let kept: Vec<&TextQuery> = queries
        .iter()
        .filter(|q| {
            let ok = row_of.contains_key(q.relevant.as_str());
            if !ok {
                dropped.push(q.id.clone());
            }
            ok
        })
        .collect();
    for chunk in kept.chunks(batch.max(1)) {
        let caps: Vec<&str> = chunk.iter().map(|q| q.caption.as_str()).collect();
        let emb = encoder.embed_texts(&caps).map_err(|e| EvalError::Backend(e.to_string()))?;
        let d = emb.len() / chunk.len().max(1);
        for (q, v) in chunk.iter().zip(emb.chunks(d.max(1))) {
            let hits = match &ann {
                Some(params) => col.search(vector, v, n, params),
                None => col.search_exact(vector, v, n),
            }.map_err(|e| EvalError::Backend(e.to_string()))?;
            let target = row_of[q.relevant.as_str()];
            let rank = hits.iter().position(|h| h.row == target).map(|p| p + 1).unwrap_or(0);
            per_query.push(QueryResult { query_id: q.id.clone(), rank });
        }
    }
    let ranks: Vec<usize> = per_query.iter().map(|q| q.rank).collect();
    Ok(T2iReport { metrics: t2i_metrics(&ranks), queries: per_query.len(), dropped, per_query })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_hand_computed_ranks() {
        // Ranks 1, 3, 12 and never retrieved (0).
        let m = t2i_metrics(&[1, 3, 12, 0]);
        assert_eq!(m.r1, 0.25);
        assert_eq!(m.r5, 0.5);
        assert_eq!(m.r10, 0.5);
        assert!((m.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 12.0) / 4.0).abs() < 1e-12);
        assert!((m.ndcg10 - (1.0 + 0.5) / 4.0).abs() < 1e-12); // 1/log2(2) + 1/log2(4)
    }

    #[test]
    fn tsv_errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("squire-tsv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("q.tsv");
        std::fs::write(&p, "query_id\tcaption\n1\ta dog\n").expect("write");
        let e = read_query_tsv(&p).expect_err("missing column");
        assert!(e.to_string().contains("q.tsv:1") && e.to_string().contains("relevant_image"), "{e}");
        std::fs::write(&p, "query_id\tcaption\trelevant_image\n1\ta dog\n").expect("write");
        let e = read_query_tsv(&p).expect_err("short line");
        assert!(e.to_string().contains("q.tsv:2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
