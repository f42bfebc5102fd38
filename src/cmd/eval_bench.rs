//! `squire eval t2i|cirr|circo|fashioniq|inquire-fullrank`: benchmarks run
//! through the whole pipeline on the engine's harness; this module maps
//! options and prints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_engine::benchmarks;
use squire_engine::harness::{
    report_json, run_benchmark, Benchmark, ListScorer, RunOptions, RunResult,
};
use squire_engine::pipeline::{ListEncoder, Pipeline, Rerankers, Stage};
use squire_indexer::{Collection, OpenOptions};
use squire_kernels::{Compute, DeviceChoice};
use squire_models::clip::LoadOptions;

/// Options every pipeline benchmark shares.
#[derive(Args)]
pub struct BenchmarkArgs {
    /// Collection directory (built over the benchmark's images); required
    /// except by `inquire-rerank` without --rescore or superglobal.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Reranking stages after the first stage, in order (none, superglobal,
    /// ebr, cotrr, pointwise); every stage is reported.
    #[arg(long, default_value = "none", value_delimiter = ',')]
    pub rerank: Vec<String>,
    /// Output folder: queries.jsonl (per query, appended as they finish: a
    /// rerun resumes), summary.{json,md}, metrics.png, run-<stage>.trec,
    /// qrels.txt [default: squire-eval/<benchmark>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Documents kept per query and stage in the log and the TREC runs.
    #[arg(long, default_value_t = 100)]
    pub keep: usize,
    /// Search the collection's HNSW index at this breadth instead of exact
    /// search (measures the system rather than the model).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Drop (and count) queries whose images are not in the collection instead of stopping.
    #[arg(long)]
    pub skip_missing: bool,
    /// Evaluate only the first N queries.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub stages: super::mllm::StageArgs,
    /// Compute backend for exact search and SuperGlobal: auto, cpu or gpu.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Print JSON (`metrics`: the last stage's; `per_stage`, `per_group`, `per_query`).
    #[arg(long)]
    pub json: bool,
    /// Keep logged queries whose MLLM stage fell back (no usable answer)
    /// instead of running them again on resume.
    #[arg(long)]
    pub accept_fallbacks: bool,
    /// Search only the images whose record passes EXPR (the grammar of
    /// `squire search --filter`); relevant images outside it count as
    /// misses. Not for inquire-rerank (its candidates are given).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Exit non-zero (after writing every output) when an MLLM stage fell
    /// back on more than this share of the queries (0.0: a run that kept
    /// the prior order anywhere is reported as incomplete and fails).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub max_fallback_share: f64,
}

/// A share in [0, 1].
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1")),
    }
}

/// After a run: how each MLLM stage's answers were read, on stderr, and an
/// error when a stage fell back on more than `max_share` of the queries.
fn check_fallbacks(result: &RunResult, max_share: f64) -> anyhow::Result<()> {
    let s = &result.summary;
    if result.retried > 0 {
        eprintln!(
            "retried: {} queries whose MLLM stage had fallen back in the earlier run",
            result.retried
        );
    }
    for (stage, classes) in &s.answers_read {
        let parts: Vec<String> = classes
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect();
        eprintln!(
            "{stage}: answers read as {} (of {} queries)",
            parts.join(", "),
            s.queries
        );
    }
    let worst = s.worst_fallback_share();
    if worst > max_share {
        let fell: Vec<String> = s
            .answers_read
            .keys()
            .filter(|st| s.fallbacks(st) > 0)
            .map(|st| format!("{st} on {} of {} queries", s.fallbacks(st), s.queries))
            .collect();
        anyhow::bail!(
            "incomplete evaluation: the prior order was kept where no usable answer came ({}), above --max-fallback-share {max_share}; \
             the outputs are written and say so; rerun to retry those queries, or pass --accept-fallbacks to keep them",
            fell.join(", ")
        );
    }
    Ok(())
}

impl BenchmarkArgs {
    /// The collection, opened for reading.
    pub fn collection(&self) -> anyhow::Result<Collection> {
        let Some(index) = &self.index else {
            anyhow::bail!("--index DIR is required: the collection built over the benchmark's images (`squire index IMAGES --index DIR`)");
        };
        Collection::open_with(index, OpenOptions { view: true })
            .with_context(|| format!("opening the collection in {}", index.display()))
    }
}

/// Runs `bench` (built over `col`) with the options in `a`, prints the
/// table or JSON, and returns the run's outcomes and output folder.
pub fn run(
    a: &BenchmarkArgs,
    col: Collection,
    build: impl FnOnce(&Collection) -> anyhow::Result<Benchmark>,
) -> anyhow::Result<(RunResult, PathBuf)> {
    let stages = Stage::parse_list(&a.rerank)?;
    let mut bench = build(&col)?;
    if let Some(n) = a.limit {
        bench.queries.truncate(n);
    }
    anyhow::ensure!(
        !bench.queries.is_empty(),
        "{}: no query to evaluate ({} dropped)",
        bench.name,
        bench.dropped.len()
    );
    let options = a.stages.options()?;
    let mllm = a.stages.mllm.open()?;
    let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let pipeline = Pipeline::new(col, encoder, Compute::new(a.device)?, mllm, options)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("squire-eval").join(&bench.name));
    let opts = RunOptions {
        stages,
        keep: a.keep,
        ef: a.ef,
        whiten: false,
        sqaf: a.stages.sqaf.sqaf,
        out: out.clone(),
        accept_fallbacks: a.accept_fallbacks,
        filter: match a.filter.as_deref() {
            Some(f) => Some(
                squire_indexer::Filter::parse(f).map_err(|e| anyhow::anyhow!("--filter: {e}"))?,
            ),
            None => None,
        },
    };
    let bar = super::progress_bar(a.json);
    bar.set_message(bench.name.clone());
    let t0 = std::time::Instant::now();
    let result = run_benchmark(&pipeline, &bench, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let col = pipeline.collection();
    let fiq = bench.name.starts_with("fashioniq");
    print_run(
        a.json,
        &result,
        &out,
        secs,
        &format!(
            "{} images, model {}",
            col.records().len(),
            col.manifest().model
        ),
        |v| {
            v["images"] = json!(col.records().len());
            v["model"] = json!(col.manifest().model);
            if fiq {
                let last = result.summary.stages.last().cloned().unwrap_or_default();
                v["category_average"] = json!(benchmarks::group_average(&result.summary, &last));
            }
        },
    )?;
    if !bench.dropped.is_empty() {
        let sample: Vec<String> = bench
            .dropped
            .iter()
            .take(5)
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        eprintln!(
            "warning: {} queries dropped: {}{}",
            bench.dropped.len(),
            sample.join("; "),
            if bench.dropped.len() > 5 { "; …" } else { "" }
        );
    }
    Ok((result, out))
}

/// Prints a run: JSON (`report_json` plus `out`, `resumed`, `seconds` and
/// what `extra` adds) or the Markdown table with `what` and the files written.
fn print_run(
    json_out: bool,
    result: &RunResult,
    out: &std::path::Path,
    secs: f64,
    what: &str,
    extra: impl FnOnce(&mut serde_json::Value),
) -> anyhow::Result<()> {
    if json_out {
        let mut v = report_json(&result.summary, &result.outcomes);
        v["out"] = json!(out.display().to_string());
        v["resumed"] = json!(result.resumed);
        v["retried"] = json!(result.retried);
        v["seconds"] = json!(secs);
        extra(&mut v);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if result.resumed > 0 {
            println!(
                "(resumed: {} queries from an earlier run in {})",
                result.resumed,
                out.display()
            );
        }
        println!("{}", result.summary.markdown());
        println!("{what}; {secs:.1} s");
        println!(
            "written: {}",
            result
                .files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Arguments of `squire eval t2i`.
#[derive(Args)]
pub struct T2iArgs {
    /// Query TSV (query_id, caption, relevant_image relative to the indexed folder).
    #[arg(long)]
    queries: PathBuf,
    /// Ranking depth: a relevant image below rank k counts as not retrieved [default: the whole collection].
    #[arg(long, short)]
    k: Option<usize>,
    #[command(flatten)]
    common: BenchmarkArgs,
}

/// Runs `squire eval t2i`.
pub fn t2i(a: T2iArgs) -> anyhow::Result<()> {
    let col = a.common.collection()?;
    let (result, _) = run(&a.common, col, |col| {
        Ok(benchmarks::t2i(col, &a.queries, a.k)?)
    })?;
    check_fallbacks(&result, a.common.max_fallback_share)?;
    Ok(())
}

/// Arguments of `squire eval cirr` and `eval circo`.
#[derive(Args)]
pub struct ComposedArgs {
    /// The dataset root (CIRR: captions/ and image_splits/; CIRCO: val.json, test.json).
    #[arg(long)]
    data: PathBuf,
    /// Split: CIRR val or test1; CIRCO val or test. A test split writes the official submission files.
    #[arg(long, default_value = "val")]
    split: String,
    #[command(flatten)]
    common: BenchmarkArgs,
}

/// Runs `squire eval cirr` or `eval circo`.
pub fn composed(a: ComposedArgs, which: &str) -> anyhow::Result<()> {
    let col = a.common.collection()?;
    let (result, out) = run(&a.common, col, |col| {
        Ok(match which {
            "cirr" => benchmarks::cirr(col, &a.data, &a.split, a.common.skip_missing)?,
            _ => benchmarks::circo(col, &a.data, &a.split, a.common.skip_missing)?,
        })
    })?;
    if result.summary.metric_names.is_empty() {
        let mut files = Vec::new();
        for stage in &result.summary.stages {
            files.extend(benchmarks::write_submissions(
                &result.summary.benchmark,
                &result.outcomes,
                stage,
                &out,
            )?);
        }
        eprintln!(
            "submission files: {}",
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    check_fallbacks(&result, a.common.max_fallback_share)
}

/// Arguments of `squire eval fashioniq`.
#[derive(Args)]
pub struct FashionIqArgs {
    /// The dataset root (captions/cap.<category>.<split>.json).
    #[arg(long)]
    data: PathBuf,
    /// Categories, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "dress,shirt,toptee")]
    categories: Vec<String>,
    /// Split.
    #[arg(long, default_value = "val")]
    split: String,
    #[command(flatten)]
    common: BenchmarkArgs,
}

/// Runs `squire eval fashioniq`.
pub fn fashioniq(a: FashionIqArgs) -> anyhow::Result<()> {
    let col = a.common.collection()?;
    let (result, _) = run(&a.common, col, |col| {
        Ok(benchmarks::fashioniq(
            col,
            &a.data,
            &a.categories,
            &a.split,
            a.common.skip_missing,
        )?)
    })?;
    if !a.common.json {
        let last = result.summary.stages.last().cloned().unwrap_or_default();
        let avg = benchmarks::group_average(&result.summary, &last);
        println!(
            "average over categories ({last}): {}",
            avg.iter()
                .map(|(k, v)| format!("{k} {:.2}", v * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    check_fallbacks(&result, a.common.max_fallback_share)
}

/// Arguments of `squire eval inquire-fullrank`.
#[derive(Args)]
pub struct InquireArgs {
    /// The query CSV (inquire_queries_val.csv or _test.csv).
    #[arg(long)]
    queries: PathBuf,
    /// The annotations CSV (query_id, image_path[, image_id]: one row per relevant image).
    #[arg(long)]
    annotations: PathBuf,
    #[command(flatten)]
    common: BenchmarkArgs,
}

/// Runs `squire eval inquire-fullrank`.
pub fn inquire_fullrank(a: InquireArgs) -> anyhow::Result<()> {
    let col = a.common.collection()?;
    let (result, _) = run(&a.common, col, |col| {
        Ok(benchmarks::inquire_fullrank(
            col,
            &a.queries,
            &a.annotations,
            a.common.skip_missing,
        )?)
    })?;
    check_fallbacks(&result, a.common.max_fallback_share)?;
    Ok(())
}

/// Arguments of `squire eval inquire-rerank`.
#[derive(Args)]
pub struct InquireRerankArgs {
    /// The published parquet shards: a file or a folder (searched recursively).
    #[arg(long)]
    data: PathBuf,
    /// Re-score the candidates with the collection's encoder before reranking
    /// (default: order by the file's own `clip_score`, the published first stage).
    #[arg(long)]
    rescore: bool,
    #[command(flatten)]
    common: BenchmarkArgs,
}

/// Runs `squire eval inquire-rerank`.
pub fn inquire_rerank(a: InquireRerankArgs) -> anyhow::Result<()> {
    use squire_engine::datasets::inquire_rerank;
    let stages = Stage::parse_list(&a.common.rerank)?;
    anyhow::ensure!(
        a.common.filter.is_none(),
        "--filter: inquire-rerank reranks the published candidate lists, it searches no collection"
    );
    let shards = inquire_rerank::shards(&a.data)?;
    let mut queries = inquire_rerank::load(&shards)?;
    if let Some(n) = a.common.limit {
        queries.truncate(n);
    }
    anyhow::ensure!(!queries.is_empty(), "{}: no queries", a.data.display());
    // The candidates' images are in the parquet: a collection (for its
    // encoder) is needed only to re-score them or to refine with SuperGlobal.
    let needs_encoder = a.rescore || stages.contains(&Stage::SuperGlobal);
    if !needs_encoder && a.common.index.is_some() {
        eprintln!("note: --index is not used (the published first stage is kept; pass --rescore to re-score with the collection's encoder)");
    }
    let scorer = if needs_encoder {
        let col = a.common.collection().context(if a.rescore {
            "--rescore"
        } else {
            "--rerank superglobal"
        })?;
        let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
        Some((
            col.manifest().model.clone(),
            col.manifest().text_query_vector.clone(),
            encoder,
        ))
    } else {
        None
    };
    let options = a.common.stages.options()?;
    let mllm = a.common.stages.mllm.open()?;
    let rerankers = Rerankers::new(Compute::new(a.common.device)?, mllm, options)?;
    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("squire-eval").join("inquire-rerank"));
    let opts = RunOptions {
        stages,
        keep: a.common.keep,
        ef: None,
        whiten: false,
        sqaf: false,
        out: out.clone(),
        accept_fallbacks: a.common.accept_fallbacks,
        filter: None,
    };
    let describe = json!({"shards": shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "queries": queries.len()});
    let bar = super::progress_bar(a.common.json);
    bar.set_message("inquire-rerank");
    let t0 = std::time::Instant::now();
    let encoder = scorer.as_ref().map(|(model, vector, enc)| ListScorer {
        model,
        encoder: ListEncoder {
            encoder: enc.as_ref(),
            vector,
        },
    });
    let result = squire_engine::harness::run_inquire_rerank(
        &rerankers,
        encoder,
        &queries,
        describe,
        a.rescore,
        &opts,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let candidates = queries.iter().map(|q| q.candidates.len()).sum::<usize>();
    print_run(
        a.common.json,
        &result,
        &out,
        secs,
        &format!("{} queries, {candidates} candidates", queries.len()),
        |v| v["candidates"] = json!(candidates),
    )?;
    check_fallbacks(&result, a.common.max_fallback_share)
}
