//! `squire eval`: benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use squire_engine::eval::{evaluate_t2i, read_query_tsv};
use squire_indexer::{Collection, OpenOptions, SearchParams};
use squire_models::clip::LoadOptions;

/// Evaluations.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Text-to-image retrieval on a query TSV (query_id, caption, relevant_image).
    ///
    /// Ranks the whole collection for every caption and reports Recall@1/5/10,
    /// MRR and nDCG@10. Queries whose relevant image is not in the collection
    /// are dropped, counted and listed, never silently ignored.
    T2i(T2iArgs),
}

/// Arguments of `squire eval t2i`.
#[derive(Args)]
pub struct T2iArgs {
    /// Collection directory.
    #[arg(long)]
    index: PathBuf,
    /// Query TSV; relevant_image is relative to the indexed folder.
    #[arg(long)]
    queries: PathBuf,
    /// Ranking depth: a relevant image below rank k counts as not retrieved
    /// (R@n for n > k and MRR then only see the top k). Default: the whole collection.
    #[arg(long, short)]
    k: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Rank with the collection's HNSW store (at this `ef`) instead of exact
    /// search: measures the system rather than the model. Needs --k.
    #[arg(long, requires = "k")]
    ef: Option<usize>,
    /// Print JSON (metrics under `metrics`, ranks under `per_query`).
    #[arg(long)]
    json: bool,
}

/// Runs an `eval` subcommand.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::T2i(a) => t2i(a),
    }
}

fn t2i(a: T2iArgs) -> anyhow::Result<()> {
    let col = Collection::open_with(&a.index, OpenOptions { view: true }).with_context(|| format!("opening {}", a.index.display()))?;
    let queries = read_query_tsv(&a.queries)?;
    let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let t0 = std::time::Instant::now();
    let report = evaluate_t2i(&col, encoder.as_ref(), &queries, a.k, a.batch, a.ef.map(|ef| SearchParams { ef: Some(ef) }))?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = serde_json::json!(secs);
        v["model"] = serde_json::json!(col.manifest().model);
        v["images"] = serde_json::json!(col.records().len());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let m = &report.metrics;
        println!("t2i on {} ({} queries, {} images, model {})", a.queries.display(), report.queries, col.records().len(), col.manifest().model);
        println!("| R@1 | R@5 | R@10 | MRR | nDCG@10 |");
        println!("|---|---|---|---|---|");
        println!("| {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |", m.r1, m.r5, m.r10, m.mrr, m.ndcg10);
        println!("({secs:.1} s)");
    }
    if !report.dropped.is_empty() {
        eprintln!("warning: {} queries dropped: their relevant image is not in the collection (ids: {})", report.dropped.len(), report.dropped.iter().take(20).cloned().collect::<Vec<_>>().join(", "));
    }
    Ok(())
}
