//! `squire search`: text, image and composed queries against a collection.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;
use squire_indexer::{Collection, OpenOptions, SearchParams, StoreKind, VectorStore};
use squire_models::clip::LoadOptions;
use squire_engine::superglobal::{self, Ranked};
use squire_kernels::{Compute, DeviceChoice};
use squire_models::image_io;

/// Search a collection by text, by image, or both (composed search).
///
/// With --image and --text together the query is
/// normalise((1 − α)·image + α·text) in the text-query space (--alpha, default 0.8).
///
/// JSON output (--json; schema in README.md, "squire search --json"):
/// {"schema": "squire.search/1", "query": {...}, "store": {...},
///  "results": [{"rank", "id", "path", "score"}, ...],
///  "timings": {"encode_ms", "search_ms", "total_ms"}}.
/// `id` is the image's stable id (16 hex digits); `path` is relative to the indexed folder.
#[derive(Args)]
#[command(group(ArgGroup::new("q").required(true).multiple(true).args(["text", "image"])))]
pub struct SearchArgs {
    /// Collection directory (from `squire index`).
    #[arg(long)]
    index: PathBuf,
    /// Text query (or the modification text of a composed query).
    #[arg(long)]
    text: Option<String>,
    /// Query image (or the reference image of a composed query).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Number of results.
    #[arg(long, short, default_value_t = 10)]
    k: usize,
    /// Weight of the text in a composed query.
    #[arg(long, default_value_t = 0.8)]
    alpha: f32,
    /// HNSW search breadth: higher finds more true neighbours, slower
    /// [default: the collection's, 128 unless set at indexing].
    #[arg(long)]
    ef: Option<usize>,
    /// Brute-force search over every vector (exact; ignores the HNSW index).
    #[arg(long, conflicts_with = "ef")]
    exact: bool,
    /// Reranking after the first stage: none, or superglobal (SuperGlobal
    /// refinement of the top --sg-m candidates with their neighbours and an
    /// expanded query; works on any named vector).
    #[arg(long, default_value = "none", value_parser = ["none", "superglobal"])]
    rerank: String,
    #[command(flatten)]
    sg: SuperGlobalArgs,
    /// Compute backend for --exact and SuperGlobal: auto (a hardware GPU when present, else
    /// the CPU; `--log info` shows the choice), cpu, or gpu (any wgpu adapter,
    /// software ones included; an error when there is none).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// SuperGlobal's options, shared by `search` and `eval copies`.
#[derive(Args, Debug, Clone)]
pub struct SuperGlobalArgs {
    /// SuperGlobal: candidates refined (M); the first stage retrieves max(k, M).
    #[arg(long, default_value_t = 400)]
    pub sg_m: usize,
    /// SuperGlobal: neighbours averaged into each candidate (K).
    #[arg(long, default_value_t = 9)]
    pub sg_k: usize,
    /// SuperGlobal: neighbour weight per unit of similarity (β).
    #[arg(long, default_value_t = 0.15)]
    pub sg_beta: f32,
    /// SuperGlobal: refined candidates whose element-wise max expands the query.
    #[arg(long, default_value_t = 10)]
    pub sg_query_top: usize,
}

impl SuperGlobalArgs {
    /// The engine's parameters.
    pub fn params(&self) -> squire_engine::superglobal::SuperGlobalParams {
        squire_engine::superglobal::SuperGlobalParams { m: self.sg_m, k: self.sg_k, beta: self.sg_beta, query_top: self.sg_query_top }
    }
}

/// A query's vector and the named vector it searches.
pub struct Query {
    /// Which named vector to search.
    pub vector: String,
    /// The query vector.
    pub values: Vec<f32>,
}

/// Embeds a text, image or composed query for `col`.
pub fn embed_query(
    col: &Collection,
    encoder: &dyn squire_models::DualEncoder,
    text: Option<&str>,
    image: Option<&std::path::Path>,
    alpha: f32,
) -> anyhow::Result<Query> {
    let m = col.manifest();
    let names = encoder.vector_names();
    let embed_image = |path: &std::path::Path, vector: &str| -> anyhow::Result<Vec<f32>> {
        let img = image_io::load_rgb(path)?;
        let s = encoder.input_size();
        let mut px = vec![0f32; 3 * s * s];
        encoder.preprocess_into(&img, &mut px)?;
        let mut all = encoder.embed_named(&px, 1)?;
        let i = names.iter().position(|n| *n == vector).context("the model lacks the collection's query vector")?;
        Ok(all.swap_remove(i))
    };
    Ok(match (text, image) {
        (Some(t), None) => Query { vector: m.text_query_vector.clone(), values: encoder.embed_texts(&[t])? },
        (None, Some(p)) => Query { vector: m.image_query_vector.clone(), values: embed_image(p, &m.image_query_vector)? },
        (Some(t), Some(p)) => {
            let img = embed_image(p, &m.text_query_vector)?;
            let txt = encoder.embed_texts(&[t])?;
            let mut q: Vec<f32> = img.iter().zip(&txt).map(|(i, t)| (1.0 - alpha) * i + alpha * t).collect();
            normalise(&mut q);
            Query { vector: m.text_query_vector.clone(), values: q }
        }
        (None, None) => anyhow::bail!("give --text, --image or both"),
    })
}

/// Runs `squire search`.
pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    // The backend is only needed (and only probed) for exact search and reranking.
    let superglobal = a.rerank == "superglobal";
    let compute =
        if a.exact || superglobal || a.device == DeviceChoice::Gpu { Some(Compute::new(a.device)?) } else { None };
    let cpu = Compute::cpu();
    let compute_ref = compute.as_ref().unwrap_or(&cpu);
    let sg = a.sg.params();
    let depth = if superglobal { a.k.max(sg.m) } else { a.k };
    let col = Collection::open_with(&a.index, OpenOptions { view: true }).with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let t0 = Instant::now();
    let Query { vector, values: query } = embed_query(&col, encoder.as_ref(), a.text.as_deref(), a.image.as_deref(), a.alpha)?;
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    // HNSW needs a search breadth of at least the depth asked for.
    let ef = a.ef.unwrap_or(col.manifest().store.expansion_search).max(depth);
    let hits = if a.exact {
        col.search_exact_on(compute_ref, &vector, &query, depth)?
    } else {
        col.search(&vector, &query, depth, &SearchParams { ef: Some(ef) })?
    };
    let search_ms = t1.elapsed().as_secs_f64() * 1e3;
    let first: Vec<Ranked> = hits.iter().map(|h| Ranked { row: h.row, score: h.score }).collect();
    let t2 = Instant::now();
    let ranked = if superglobal {
        let store = col.vectors(&vector)?;
        superglobal::rerank(compute_ref, &query, store.data(), store.dim(), &first, &sg)?
    } else {
        first.clone()
    };
    let rerank_ms = t2.elapsed().as_secs_f64() * 1e3;
    let first_rank: std::collections::HashMap<usize, usize> = first.iter().enumerate().map(|(i, r)| (r.row, i + 1)).collect();
    let results: Vec<_> = ranked
        .iter()
        .take(a.k)
        .enumerate()
        .map(|(i, h)| {
            let r = &col.records()[h.row];
            let mut v = json!({ "rank": i + 1, "id": format!("{:016x}", r.id), "path": r.path, "score": h.score });
            if superglobal {
                v["first_stage_rank"] = json!(first_rank.get(&h.row));
            }
            v
        })
        .collect();
    if a.json {
        let store = col.manifest().store;
        let method = if a.exact || store.kind == StoreKind::Exact { "exact" } else { store.kind.name() };
        let v = json!({
            "schema": "squire.search/1",
            "query": {
                "kind": match (&a.text, &a.image) { (Some(_), Some(_)) => "composed", (Some(_), None) => "text", _ => "image" },
                "text": a.text, "image": a.image.as_ref().map(|p| p.display().to_string()),
                "alpha": a.alpha, "vector": vector, "k": a.k,
            },
            "store": {
                "method": method,
                "ef": if method == "exact" { None } else { Some(ef) },
                "images": col.records().len(),
                "device": if a.exact { Some(if compute.as_ref().is_some_and(Compute::is_gpu) { "gpu" } else { "cpu" }) } else { None },
            },
            "rerank": if superglobal { json!({"method": "superglobal", "m": sg.m, "k": sg.k, "beta": sg.beta, "query_top": sg.query_top}) } else { serde_json::Value::Null },
            "results": results,
            "timings": if superglobal {
                json!({ "encode_ms": encode_ms, "search_ms": search_ms, "rerank_ms": rerank_ms, "total_ms": encode_ms + search_ms + rerank_ms })
            } else {
                json!({ "encode_ms": encode_ms, "search_ms": search_ms, "total_ms": encode_ms + search_ms })
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:>4}  {:>7}  path", "rank", "score");
    for r in &results {
        println!("{:>4}  {:>7.4}  {}", r["rank"], r["score"].as_f64().unwrap_or(0.0), r["path"].as_str().unwrap_or(""));
    }
    let rerank_note = if superglobal { format!(", SuperGlobal rerank {rerank_ms:.2} ms") } else { String::new() };
    println!("({} images searched on `{vector}`; encode {encode_ms:.1} ms, search {search_ms:.2} ms{rerank_note})", col.records().len());
    Ok(())
}
