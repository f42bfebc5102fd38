//! `squire bench rerank-sim`: the MLLM rerankers' logic and cost against a
//! **simulated** MLLM that knows the ground truth (engine's `simulate`), on a
//! real first stage. Not a measurement of any model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use serde_json::json;
use squire_engine::cotrr::{CotrrInput, CotrrOptions, CotrrReranker};
use squire_engine::ebr::{EbrOptions, GridReranker};
use squire_engine::eval::read_query_tsv;
use squire_engine::grid::GridOptions;
use squire_engine::pointwise::{PointwiseOptions, PointwiseReranker};
use squire_engine::rerank::{ListReranker, RerankQuery};
use squire_engine::simulate::SimulatedMllm;
use squire_indexer::{Collection, OpenOptions};
use squire_models::clip::LoadOptions;
use squire_models::image_io;

/// Arguments of `squire bench rerank-sim`.
#[derive(Args)]
pub struct RerankSimArgs {
    /// Collection directory (e.g. Flickr8k-1k indexed with the lite pack).
    #[arg(long)]
    index: PathBuf,
    /// Query TSV (query_id, caption, relevant_image), e.g. queries-dev.tsv.
    #[arg(long)]
    queries: PathBuf,
    /// Queries used (the first N whose relevant image is in the collection).
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Candidates every reranker reorders (the first stage's top D).
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// Probabilities that the simulated MLLM answers right, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,1.0")]
    p: Vec<f64>,
    /// Grid cell side for EBR and CoTRR's grid input.
    #[arg(long, default_value_t = 336)]
    cell: u32,
    /// Seed of the simulated answers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    r1: f64,
    r5: f64,
    mrr: f64,
    calls: f64,
    images: f64,
}

impl Tally {
    fn add_rank(&mut self, rank: usize) {
        if rank > 0 {
            self.r1 += f64::from(u8::from(rank == 1));
            self.r5 += f64::from(u8::from(rank <= 5));
            self.mrr += 1.0 / rank as f64;
        }
    }
    fn json(&self, n: usize) -> serde_json::Value {
        let n = n.max(1) as f64;
        json!({"r1": self.r1 / n, "r5": self.r5 / n, "mrr": self.mrr / n,
               "calls_per_query": self.calls / n, "images_per_query": self.images / n})
    }
}

/// Runs `squire bench rerank-sim`.
pub fn run(a: RerankSimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.depth >= 2, "--depth must be at least 2");
    for p in &a.p {
        anyhow::ensure!(
            (0.0..=1.0).contains(p),
            "--p {p}: expected a probability in [0, 1]"
        );
    }
    let col = Collection::open_with(&a.index, OpenOptions { view: true })
        .with_context(|| format!("opening {}", a.index.display()))?;
    let encoder = super::super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let row_of: HashMap<&str, usize> = col
        .records()
        .iter()
        .enumerate()
        .map(|(i, r)| (r.path.as_str(), i))
        .collect();
    let queries: Vec<_> = read_query_tsv(&a.queries)?
        .into_iter()
        .filter(|q| row_of.contains_key(q.relevant.as_str()))
        .take(a.limit)
        .collect();
    anyhow::ensure!(
        !queries.is_empty(),
        "no query in {} has its relevant image in the collection",
        a.queries.display()
    );
    // First stage: exact text-to-image search to the depth.
    let t = Instant::now();
    let vector = &col.manifest().text_query_vector;
    let mut firsts = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(64) {
        let caps: Vec<&str> = chunk.iter().map(|q| q.caption.as_str()).collect();
        let emb = encoder.embed_texts(&caps)?;
        let d = emb.len() / chunk.len();
        for v in emb.chunks(d) {
            firsts.push(
                col.search_exact(vector, v, a.depth)?
                    .iter()
                    .map(|h| h.row)
                    .collect::<Vec<_>>(),
            );
        }
    }
    let first_stage_s = t.elapsed().as_secs_f64();
    // Candidate images, decoded once and shrunk to at most 384 px.
    let mut rows: Vec<usize> = firsts.iter().flatten().copied().collect();
    rows.sort_unstable();
    rows.dedup();
    let root = &col.manifest().images_root;
    let images: HashMap<usize, Arc<image::RgbImage>> = rows
        .par_iter()
        .map(|&r| {
            let path = root.join(col.records()[r].relative_path());
            let img =
                image_io::load_rgb(&path).with_context(|| format!("loading {}", path.display()))?;
            let (w, h) = img.dimensions();
            let s = (384.0 / w.max(h) as f64).min(1.0);
            let img = image::imageops::resize(
                &img,
                ((w as f64 * s) as u32).max(1),
                ((h as f64 * s) as u32).max(1),
                image::imageops::FilterType::Triangle,
            );
            Ok((r, Arc::new(img)))
        })
        .collect::<anyhow::Result<_>>()?;
    let grid = GridOptions {
        cell: a.cell,
        ..GridOptions::default()
    };
    let rerankers: Vec<(&str, Box<dyn ListReranker>)> = vec![
        (
            "ebr",
            Box::new(
                GridReranker::new(EbrOptions {
                    k: a.depth,
                    grid: grid.clone(),
                    max_grids: a.depth.div_ceil(grid.cells),
                    ..EbrOptions::default()
                })
                .map_err(anyhow::Error::msg)?,
            ),
        ),
        (
            "cotrr (images)",
            Box::new(
                CotrrReranker::new(CotrrOptions {
                    k: a.depth,
                    ..CotrrOptions::default()
                })
                .map_err(anyhow::Error::msg)?,
            ),
        ),
        (
            "cotrr (grid)",
            Box::new(
                CotrrReranker::new(CotrrOptions {
                    k: a.depth,
                    input: CotrrInput::Grid,
                    grid: grid.clone(),
                    ..CotrrOptions::default()
                })
                .map_err(anyhow::Error::msg)?,
            ),
        ),
        (
            "pointwise",
            Box::new(PointwiseReranker {
                options: PointwiseOptions {
                    k: a.depth,
                    parallel: 1,
                    ..PointwiseOptions::default()
                },
            }),
        ),
        (
            "first",
            Box::new(
                squire_engine::first::FirstReranker::new(squire_engine::first::FirstOptions {
                    k: a.depth,
                    grid: grid.clone(),
                })
                .map_err(anyhow::Error::msg)?,
            ),
        ),
        (
            "prp (sorting)",
            Box::new(squire_engine::prp::PairwiseReranker {
                options: squire_engine::prp::PrpOptions {
                    k: a.depth,
                    parallel: 1,
                    ..Default::default()
                },
            }),
        ),
    ];
    let mut first = Tally::default();
    let mut ceiling = 0.0;
    let targets: Vec<usize> = queries
        .iter()
        .map(|q| row_of[q.relevant.as_str()])
        .collect();
    for (rows, &target) in firsts.iter().zip(&targets) {
        let rank = rows.iter().position(|&r| r == target).map_or(0, |p| p + 1);
        first.add_rank(rank);
        ceiling += f64::from(u8::from(rank > 0));
    }
    let n = queries.len();
    let mut results = Vec::new();
    let bar = super::super::progress_bar(a.json);
    bar.set_length((a.p.len() * rerankers.len() * n) as u64);
    bar.set_message("simulated reranks");
    let t = Instant::now();
    for &p in &a.p {
        let sim = SimulatedMllm::new(p, a.seed, grid.clone());
        for (name, r) in &rerankers {
            let mut tally = Tally::default();
            for ((q, rows), &target) in queries.iter().zip(&firsts).zip(&targets) {
                let cands: Vec<Arc<image::RgbImage>> =
                    rows.iter().map(|r| images[r].clone()).collect();
                let relevant: Vec<bool> = rows.iter().map(|&r| r == target).collect();
                sim.set_query(&cands, &relevant);
                let out = r.rerank(&sim, &RerankQuery::Text(q.caption.clone()), &cands);
                let rank = out
                    .order
                    .iter()
                    .position(|&i| rows[i] == target)
                    .map_or(0, |p| p + 1);
                tally.add_rank(rank);
                tally.calls += f64::from(out.cost.calls);
                tally.images += f64::from(out.cost.images);
                bar.inc(1);
            }
            results.push(json!({"p": p, "reranker": name, "metrics": tally.json(n)}));
        }
    }
    bar.finish_and_clear();
    let report = json!({
        "schema": "squire.bench.rerank-sim/1",
        "note": "SIMULATED MLLM: knows the ground truth, right with probability p; measures the rerankers' logic and cost, not any model",
        "collection": a.index.display().to_string(), "model": col.manifest().model, "queries": n, "depth": a.depth,
        "first_stage": first.json(n), "recall_ceiling": ceiling / n as f64, "first_stage_s": first_stage_s,
        "rerank_s": t.elapsed().as_secs_f64(), "results": results,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("SIMULATED MLLM (knows the ground truth; right with probability p) over {} first stage, {n} queries, depth {}", col.manifest().model, a.depth);
    let f = &report["first_stage"];
    println!(
        "first stage: R@1 {:.3}  R@5 {:.3}  MRR {:.3}; recall ceiling at depth {}: {:.3}",
        f["r1"].as_f64().unwrap_or(0.0),
        f["r5"].as_f64().unwrap_or(0.0),
        f["mrr"].as_f64().unwrap_or(0.0),
        a.depth,
        ceiling / n as f64
    );
    println!(
        "{:>4}  {:<15} {:>6} {:>6} {:>6} {:>10} {:>11}",
        "p", "reranker", "R@1", "R@5", "MRR", "calls/q", "images/q"
    );
    for r in &results {
        let m = &r["metrics"];
        println!(
            "{:>4}  {:<15} {:>6.3} {:>6.3} {:>6.3} {:>10.1} {:>11.1}",
            r["p"].as_f64().unwrap_or(0.0),
            r["reranker"].as_str().unwrap_or(""),
            m["r1"].as_f64().unwrap_or(0.0),
            m["r5"].as_f64().unwrap_or(0.0),
            m["mrr"].as_f64().unwrap_or(0.0),
            m["calls_per_query"].as_f64().unwrap_or(0.0),
            m["images_per_query"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
