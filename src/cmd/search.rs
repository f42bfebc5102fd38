//! `squire search`: text, image and composed queries against a collection.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;
use squire_indexer::{Collection, OpenOptions, SearchParams, StoreKind, VectorStore};
use squire_models::clip::LoadOptions;
use squire_engine::cost::MllmCost;
use squire_engine::ebr::RerankQuery;
use squire_engine::sqaf;
use squire_engine::superglobal::{self, Ranked};
use squire_kernels::{Compute, DeviceChoice};
use squire_models::image_io;

/// Search a collection by text, by image, or both (composed search).
///
/// With --image and --text together the query is
/// normalise((1 − α)·image + α·text) in the text-query space (--alpha, default 0.8).
///
/// With --sqaf (composed queries, needs --mllm) an MLLM captions the target
/// image and the query becomes normalise(w_i·image + w_t·text + w_c·caption);
/// the caption is printed with the results. --rerank ebr reorders the top
/// --ebr-k with one MLLM call on a marked grid (--save-grid writes it).
///
/// JSON output (--json; schema in README.md, "squire search --json"):
/// {"schema": "squire.search/1", "query": {...}, "store": {...},
///  "results": [{"rank", "id", "path", "score"}, ...],
///  "timings": {"encode_ms", "search_ms", "total_ms"}}; with an MLLM also
/// "mllm", "sqaf", "ebr" and "cost" (calls, requests, cache hits, images,
/// tokens and wall time per stage).
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
    /// Search the collection's PCA-whitened vectors (fitted by `squire whiten`;
    /// exact search, the gallery whitened at query time).
    #[arg(long, conflicts_with = "ef")]
    whiten: bool,
    /// Reranking stages after the first stage, in order, comma-separated:
    /// none; superglobal (SuperGlobal refinement of the top --sg-m candidates
    /// with their neighbours and an expanded query; any named vector); ebr
    /// (SQUARE's batch reranking: the top --ebr-k drawn as one marked grid,
    /// ranked by one MLLM call; needs --mllm); cotrr (listwise
    /// chain-of-thought reranking of the top --cotrr-k; needs --mllm);
    /// pointwise (INQUIRE's Yes/No question per candidate, scored from
    /// first-token log-probabilities; needs --mllm). E.g. --rerank superglobal,ebr.
    #[arg(long, default_value = "none", value_delimiter = ',', value_parser = ["none", "superglobal", "ebr", "cotrr", "pointwise"])]
    rerank: Vec<String>,
    #[command(flatten)]
    sg: SuperGlobalArgs,
    #[command(flatten)]
    sqaf: super::mllm::SqafArgs,
    #[command(flatten)]
    ebr: super::mllm::EbrArgs,
    #[command(flatten)]
    cotrr: super::mllm::CotrrArgs,
    #[command(flatten)]
    pointwise: super::mllm::PointwiseArgs,
    #[command(flatten)]
    mllm: super::mllm::MllmArgs,
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
    let embed_image = |path: &std::path::Path, vector: &str| embed_rgb(encoder, &image_io::load_rgb(path)?, vector);
    Ok(match (text, image) {
        (Some(t), None) => Query { vector: m.text_query_vector.clone(), values: encoder.embed_texts(&[t])? },
        (None, Some(p)) => Query { vector: m.image_query_vector.clone(), values: embed_image(p, &m.image_query_vector)? },
        (Some(t), Some(p)) => {
            let (img, txt) = composed_parts(col, encoder, t, &image_io::load_rgb(p)?)?;
            let mut q: Vec<f32> = img.iter().zip(&txt).map(|(i, t)| (1.0 - alpha) * i + alpha * t).collect();
            normalise(&mut q);
            Query { vector: m.text_query_vector.clone(), values: q }
        }
        (None, None) => anyhow::bail!("give --text, --image or both"),
    })
}

/// The named vector `vector` of one image.
pub fn embed_rgb(encoder: &dyn squire_models::DualEncoder, img: &image::RgbImage, vector: &str) -> anyhow::Result<Vec<f32>> {
    let s = encoder.input_size();
    let mut px = vec![0f32; 3 * s * s];
    encoder.preprocess_into(img, &mut px)?;
    let mut all = encoder.embed_named(&px, 1)?;
    let i = encoder.vector_names().iter().position(|n| *n == vector).context("the model lacks the collection's query vector")?;
    Ok(all.swap_remove(i))
}

/// The two halves of a composed query in the collection's text-query space:
/// the reference image's embedding and the modification text's.
pub fn composed_parts(
    col: &Collection,
    encoder: &dyn squire_models::DualEncoder,
    text: &str,
    reference: &image::RgbImage,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    Ok((embed_rgb(encoder, reference, &col.manifest().text_query_vector)?, encoder.embed_texts(&[text])?))
}

/// Runs `squire search`.
pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    let stages: Vec<&str> = a.rerank.iter().map(String::as_str).filter(|s| *s != "none").collect();
    let superglobal = stages.contains(&"superglobal");
    anyhow::ensure!(
        stages.iter().filter(|s| **s == "superglobal").count() <= 1 && stages.iter().position(|s| *s == "superglobal").is_none_or(|i| i == 0),
        "--rerank: superglobal comes first (it reranks the first stage's vectors), once"
    );
    let llm_stages: Vec<&str> = stages.iter().copied().filter(|s| *s != "superglobal").collect();
    let mllm = a.mllm.open()?;
    anyhow::ensure!(
        !(a.sqaf.sqaf || !llm_stages.is_empty()) || mllm.is_some(),
        "--sqaf and --rerank ebr|cotrr|pointwise need an MLLM: give --mllm openai --mllm-url URL --mllm-model NAME"
    );
    anyhow::ensure!(!a.sqaf.sqaf || (a.text.is_some() && a.image.is_some()), "--sqaf needs a composed query: --image (the reference) and --text (the modification)");
    let sqaf_options = a.sqaf.options()?;
    let rerankers = llm_stages
        .iter()
        .map(|s| super::mllm::list_reranker(s, &a.ebr, &a.cotrr, &a.pointwise, a.mllm.mllm_concurrency))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The backend is only needed (and only probed) for exact search and reranking.
    let compute = if a.exact || a.whiten || superglobal || a.device == DeviceChoice::Gpu {
        Some(Compute::new(a.device)?)
    } else {
        None
    };
    let cpu = Compute::cpu();
    let compute_ref = compute.as_ref().unwrap_or(&cpu);
    let sg = a.sg.params();
    let llm_k = llm_stages.iter().map(|s| super::mllm::rerank_depth(s, &a.ebr, &a.cotrr, &a.pointwise)).max().unwrap_or(0);
    let depth = a.k.max(if superglobal { sg.m } else { 0 }).max(llm_k);
    let col = Collection::open_with(&a.index, OpenOptions { view: true }).with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let t0 = Instant::now();
    // SQAF: caption the target, fuse its embedding into the composed query.
    let mut sqaf_report = serde_json::Value::Null;
    let mut caption = None;
    let mut cost_sqaf = None;
    // The query image, decoded once for every stage that shows it to the MLLM.
    let query_image = match (&mllm, a.image.as_deref()) {
        (Some(_), Some(p)) => Some(std::sync::Arc::new(image_io::load_rgb(p)?)),
        _ => None,
    };
    let Query { vector, values: query } = match (&mllm, a.sqaf.sqaf, a.text.as_deref(), &query_image) {
        (Some(m), true, Some(text), Some(reference)) => {
            let (img_vec, txt_vec) = composed_parts(&col, encoder.as_ref(), text, reference)?;
            let out = sqaf::caption_target(m.model.as_ref(), reference.clone(), text, &sqaf_options);
            let cap_vec = match &out.caption {
                Some(c) => Some(encoder.embed_texts(&[c.as_str()])?),
                None => {
                    eprintln!("warning: SQAF fell back to the plain composed query: {}", out.error.as_deref().unwrap_or("no caption"));
                    None
                }
            };
            let values = sqaf::fuse(&img_vec, &txt_vec, cap_vec.as_deref(), &sqaf_options.weights);
            sqaf_report = json!({
                "caption": out.caption, "answer": out.answer, "fallback": out.error,
                "weights": sqaf_options.weights,
            });
            caption = out.caption.clone();
            cost_sqaf = Some(out.cost);
            Query { vector: col.manifest().text_query_vector.clone(), values }
        }
        _ => embed_query(&col, encoder.as_ref(), a.text.as_deref(), a.image.as_deref(), a.alpha)?,
    };
    // Whitening: the query and the gallery through the collection's fitted transform.
    let whitened = if a.whiten {
        let w = super::whiten::load_fresh(&col, &vector)?;
        let store = col.vectors(&vector)?;
        Some((w.apply(&query)?, w.apply(store.data())?, w.dim_out))
    } else {
        None
    };
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    // HNSW needs a search breadth of at least the depth asked for.
    let ef = a.ef.unwrap_or(col.manifest().store.expansion_search).max(depth);
    let hits = if let Some((q, g, dim)) = &whitened {
        let db = compute_ref.upload(g, *dim, squire_kernels::Precision::F32)?;
        compute_ref.top_k(&db, q, depth, squire_kernels::Metric::InnerProduct)?[0]
            .iter()
            .map(|s| squire_indexer::RowHit { row: s.row, score: s.score })
            .collect()
    } else if a.exact {
        col.search_exact_on(compute_ref, &vector, &query, depth)?
    } else {
        col.search(&vector, &query, depth, &SearchParams { ef: Some(ef) })?
    };
    let search_ms = t1.elapsed().as_secs_f64() * 1e3;
    let first: Vec<Ranked> = hits.iter().map(|h| Ranked { row: h.row, score: h.score }).collect();
    let t2 = Instant::now();
    let mut ranked = if superglobal {
        let store = col.vectors(&vector)?;
        match &whitened {
            Some((q, g, dim)) => superglobal::rerank(compute_ref, q, g, *dim, &first, &sg)?,
            None => superglobal::rerank(compute_ref, &query, store.data(), store.dim(), &first, &sg)?,
        }
    } else {
        first.clone()
    };
    let rerank_ms = t2.elapsed().as_secs_f64() * 1e3;
    // MLLM rerankers, in the order given, each on the previous order's top K.
    let mut stage_reports = serde_json::Map::new();
    let mut stage_costs = Vec::new();
    let mut caption_seen = caption.clone();
    if let Some(m) = &mllm {
        let rq = match (a.text.as_deref(), &query_image) {
            (Some(t), Some(img)) => {
                Some(RerankQuery::Composed { reference: img.clone(), modification: t.to_string(), caption: caption_seen.take() })
            }
            (Some(t), None) => Some(RerankQuery::Text(t.to_string())),
            (None, Some(img)) => Some(RerankQuery::Image(img.clone())),
            (None, None) => None,
        };
        let root = &col.manifest().images_root;
        for (reranker, stage) in rerankers.iter().zip(&llm_stages) {
            let Some(rq) = &rq else { break };
            let n = super::mllm::rerank_depth(stage, &a.ebr, &a.cotrr, &a.pointwise).min(ranked.len());
            let candidates: Vec<std::sync::Arc<image::RgbImage>> = ranked[..n]
                .iter()
                .map(|h| {
                    let path = root.join(&col.records()[h.row].path);
                    std::sync::Arc::new(image_io::load_rgb(&path).unwrap_or_else(|e| {
                        eprintln!("warning: candidate {} cannot be shown to the MLLM ({e}); it gets a blank image", path.display());
                        image::RgbImage::new(1, 1)
                    }))
                })
                .collect();
            let out = reranker.rerank(m.model.as_ref(), rq, &candidates);
            let saved = if *stage == "ebr" { a.ebr.save(&out.grids)? } else { Vec::new() };
            if let Some(why) = &out.fallback {
                eprintln!("warning: {stage}: {why}");
            }
            let head: Vec<Ranked> = out.order[..n].iter().map(|&i| ranked[i]).collect();
            ranked.splice(..n, head);
            let mut report = json!({
                "k": n, "mentioned": out.mentioned, "fallback": out.fallback, "answers": out.answers,
                "reasoning": out.reasoning, "grids": out.grids.len(),
            });
            if *stage == "ebr" {
                report["cells"] = json!(a.ebr.ebr_cells);
                report["saved_grids"] = json!(saved.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
            }
            if *stage == "cotrr" {
                report["windows"] = json!(a.cotrr.options()?.calls(n));
                report["input"] = json!(a.cotrr.cotrr_input);
                report["reasoning_mode"] = json!(a.cotrr.cotrr_reasoning);
            }
            stage_reports.insert(stage.to_string(), report);
            stage_costs.push((stage.to_string(), out.cost));
        }
    }
    let first_rank: std::collections::HashMap<usize, usize> = first.iter().enumerate().map(|(i, r)| (r.row, i + 1)).collect();
    let reranked = !stages.is_empty();
    let results: Vec<_> = ranked
        .iter()
        .take(a.k)
        .enumerate()
        .map(|(i, h)| {
            let r = &col.records()[h.row];
            let mut v = json!({ "rank": i + 1, "id": format!("{:016x}", r.id), "path": r.path, "score": h.score });
            if reranked {
                v["first_stage_rank"] = json!(first_rank.get(&h.row));
            }
            v
        })
        .collect();
    let mut total_cost = MllmCost::default();
    for c in cost_sqaf.iter().chain(stage_costs.iter().map(|(_, c)| c)) {
        total_cost.add(c);
    }
    let llm_ms: f64 = stage_costs.iter().map(|(_, c)| c.wall_ms).sum();
    if a.json {
        let store = col.manifest().store;
        let method = if a.exact || a.whiten || store.kind == StoreKind::Exact { "exact" } else { store.kind.name() };
        let mut timings = json!({ "encode_ms": encode_ms, "search_ms": search_ms });
        if let Some(c) = &cost_sqaf {
            timings["sqaf_ms"] = json!(c.wall_ms);
        }
        if superglobal {
            timings["rerank_ms"] = json!(rerank_ms);
        }
        for (stage, c) in &stage_costs {
            timings[format!("{stage}_ms")] = json!(c.wall_ms);
        }
        timings["total_ms"] = json!(encode_ms + search_ms + if superglobal { rerank_ms } else { 0.0 } + llm_ms);
        let mut v = json!({
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
                "whitened": a.whiten,
                "device": if a.exact || a.whiten { Some(if compute.as_ref().is_some_and(Compute::is_gpu) { "gpu" } else { "cpu" }) } else { None },
            },
            "rerank": if superglobal { json!({"method": "superglobal", "m": sg.m, "k": sg.k, "beta": sg.beta, "query_top": sg.query_top}) } else { serde_json::Value::Null },
            "stages": stages,
            "results": results,
            "timings": timings,
        });
        if let Some(m) = &mllm {
            v["mllm"] = m.describe.clone();
            v["sqaf"] = sqaf_report;
            let mut cost = serde_json::Map::new();
            cost.insert("sqaf".into(), json!(cost_sqaf));
            for (stage, c) in &stage_costs {
                cost.insert(stage.clone(), json!(c));
            }
            cost.insert("total".into(), json!(total_cost));
            for (stage, r) in stage_reports {
                v[stage] = r;
            }
            v["cost"] = serde_json::Value::Object(cost);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(c) = &caption {
        println!("caption (SQAF): {c}");
    }
    println!("{:>4}  {:>7}  path", "rank", "score");
    for r in &results {
        println!("{:>4}  {:>7.4}  {}", r["rank"], r["score"].as_f64().unwrap_or(0.0), r["path"].as_str().unwrap_or(""));
    }
    let mut notes = String::new();
    if superglobal {
        notes.push_str(&format!(", SuperGlobal rerank {rerank_ms:.2} ms"));
    }
    for (stage, c) in &stage_costs {
        notes.push_str(&format!(", {stage} {:.0} ms", c.wall_ms));
    }
    if mllm.is_some() {
        notes.push_str(&format!(
            "; MLLM: {} call(s), {} request(s), {} cached, {} image(s), {} + {} tokens",
            total_cost.calls, total_cost.requests, total_cost.cache_hits, total_cost.images, total_cost.prompt_tokens, total_cost.completion_tokens
        ));
    }
    println!("({} images searched on `{vector}`; encode {encode_ms:.1} ms, search {search_ms:.2} ms{notes})", col.records().len());
    Ok(())
}
