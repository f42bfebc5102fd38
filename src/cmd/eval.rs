//! `squire eval`: benchmarks.

use std::path::PathBuf;

use squire_indexer::Collection;
use squire_models::clip::LoadOptions;
use clap::{Args, Subcommand};

/// Evaluations.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Text-to-image retrieval on a query TSV (query_id, caption, relevant_image).
    ///
    /// Ranks the whole collection for every caption and reports Recall@1/5/10,
    /// MRR and nDCG@10 for the first stage and after each --rerank stage.
    /// Queries whose relevant image is not in the collection are dropped,
    /// counted and listed, never silently ignored. Writes --out (resumable).
    T2i(super::eval_bench::T2iArgs),
    /// CIRR (composed): Recall@1/5/10/50 over the split's gallery and
    /// Recall_subset@1/2/3 within each triplet's group, the reference left
    /// out; test1 writes the official submission JSON files.
    Cirr(super::eval_bench::ComposedArgs),
    /// CIRCO (composed): mAP@5/10/25/50 over the gallery (COCO ids as file
    /// stems), the reference left out; test writes the submission JSON.
    Circo(super::eval_bench::ComposedArgs),
    /// FashionIQ (composed): Recall@10/50 per category (dress, shirt,
    /// toptee) and their average; the two captions joined with "and".
    Fashioniq(super::eval_bench::FashionIqArgs),
    /// INQUIRE-Fullrank (text): AP@50, nDCG@50 and MRR per stage and per
    /// supercategory over a collection of iNat24 images; rerankers rerank
    /// their own depth (e.g. --pointwise-k 100) and the top 50 is scored.
    InquireFullrank(super::eval_bench::InquireArgs),
    /// INQUIRE-Rerank (text): the published parquet shards' 100 candidates
    /// per query, ordered by their clip_score (the published first stage)
    /// or re-scored (--rescore), then reranked; AP over the list normalised
    /// by the positives present, nDCG and MRR, per supercategory.
    InquireRerank(super::eval_bench::InquireRerankArgs),
    /// Image-to-image retrieval of strongly edited copies (the
    /// transformed-copy benchmark), generated from any folder of photos.
    ///
    /// The seed picks --sources photos; each gets --variants edited copies
    /// (2–4 of: crop 50–80%, rotation ±20°, colour jitter, blur, flip, border;
    /// then JPEG quality 20–40). Copy 0 is the query; the gallery holds the
    /// source, its other copies and --others further photos. Relevant: the
    /// source and its copies. Reports mAP@k (k = 100), Recall@1 and Recall@10
    /// (a relevant image within the top 1 / 10), for the first stage and, with
    /// --rerank superglobal, after SuperGlobal, with the per-query win/loss
    /// count on AP. Images and the index are cached under --cache.
    Copies(CopiesArgs),
    /// Revisited Oxford (roxford5k): image-to-image retrieval with query
    /// crops, mAP Easy / Medium / Hard as the revisitop protocol defines them.
    ///
    /// Reads ROOT/roxford5k/gnd_roxford5k.pkl (the Python pickle, read in
    /// Rust) and ROOT/roxford5k/jpg/*.jpg; queries are cropped to their
    /// bounding boxes. --distractors adds the +1M set; --rerank superglobal
    /// and --whiten as for `eval copies`. Indexes are cached under --cache.
    Roxford(super::eval_revisitop::RevisitopArgs),
    /// Revisited Paris (rparis6k): as `eval roxford`, with ROOT/rparis6k.
    Rparis(super::eval_revisitop::RevisitopArgs),
}

/// Arguments of `squire eval copies`.
#[derive(Args)]
pub struct CopiesArgs {
    /// Folder of photos to build the benchmark from (e.g. ../shared/data/flickr8k-1k/images).
    #[arg(long)]
    images: PathBuf,
    /// Where generated images and the gallery's index are kept (reused when present).
    #[arg(long, default_value = "squire-copies-cache")]
    cache: PathBuf,
    /// Model name or checkpoint directory.
    #[arg(long, short, default_value = "lite")]
    model: String,
    /// Lite pack pooling of the image descriptor: gem, gem+, gem+rgem, gem+rgem+sgem.
    #[arg(long, default_value = "gem")]
    pool: squire_models::pooling::Pooling,
    /// Photos that get edited copies (one query each).
    #[arg(long, default_value_t = 100)]
    sources: usize,
    /// Edited copies per source (copy 0 is the query).
    #[arg(long, default_value_t = 4)]
    variants: usize,
    /// Further photos added to the gallery as distractors.
    #[arg(long, default_value_t = 800)]
    others: usize,
    /// Seed of every random choice (same seed, same benchmark).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ranking depth for mAP.
    #[arg(long, short, default_value_t = 100)]
    k: usize,
    /// Reranking to measure against the first stage: none or superglobal.
    #[arg(long, default_value = "none", value_parser = ["none", "superglobal"])]
    rerank: String,
    #[command(flatten)]
    sg: super::search::SuperGlobalArgs,
    /// Compute backend for search and reranking: auto, cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: squire_kernels::DeviceChoice,
    /// PCA-whiten the descriptors, fitted on the gallery itself (stored in
    /// its index; see `squire whiten`), before search and reranking.
    #[arg(long)]
    whiten: bool,
    #[command(flatten)]
    whitening: super::whiten::WhitenParamsArgs,
    /// Print JSON (metrics under `metrics`).
    #[arg(long)]
    json: bool,
}

/// Runs an `eval` subcommand.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::T2i(a) => super::eval_bench::t2i(a),
        EvalCommand::Cirr(a) => super::eval_bench::composed(a, "cirr"),
        EvalCommand::Circo(a) => super::eval_bench::composed(a, "circo"),
        EvalCommand::Fashioniq(a) => super::eval_bench::fashioniq(a),
        EvalCommand::InquireFullrank(a) => super::eval_bench::inquire_fullrank(a),
        EvalCommand::InquireRerank(a) => super::eval_bench::inquire_rerank(a),
        EvalCommand::Roxford(a) => super::eval_revisitop::run(a, "roxford5k"),
        EvalCommand::Rparis(a) => super::eval_revisitop::run(a, "rparis6k"),
        EvalCommand::Copies(a) => copies(a),
    }
}

/// mAP@k, R@1 and R@10 of one stage.
#[derive(Default, serde::Serialize)]
struct StageMetrics {
    #[serde(rename = "mAP@100")]
    map: f64,
    #[serde(rename = "R@1")]
    r1: f64,
    #[serde(rename = "R@10")]
    r10: f64,
}

fn stage_metrics(per_query: &[(f64, bool, bool)]) -> StageMetrics {
    let n = per_query.len().max(1) as f64;
    StageMetrics {
        map: per_query.iter().map(|q| q.0).sum::<f64>() / n,
        r1: per_query.iter().filter(|q| q.1).count() as f64 / n,
        r10: per_query.iter().filter(|q| q.2).count() as f64 / n,
    }
}

fn copies(a: CopiesArgs) -> anyhow::Result<()> {
    use squire_engine::copies::{self, average_precision_at, CopiesSpec};
    use squire_engine::superglobal::{self, Ranked};
    use squire_indexer::{IndexOptions, StoreConfig, StoreKind, VectorStore};

    let spec = CopiesSpec { sources: a.sources, variants: a.variants, others: a.others, seed: a.seed };
    let bar = super::progress_bar(a.json);
    bar.set_message("generating copies");
    let set = copies::build(&a.images, &a.cache, &spec, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let model = super::with_pooling(&a.model, a.pool)?;
    let encoder = super::load_encoder(&model, LoadOptions::default())?;
    let model_tag: String = model.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let index_dir = set.gallery.with_file_name(format!("index-{model_tag}"));
    let exact = StoreConfig { kind: StoreKind::Exact, ..StoreConfig::default() };
    let mut col = Collection::open_or_create(&index_dir, &model, encoder.as_ref(), &set.gallery, exact)?;
    bar.set_message("indexing the gallery");
    col.index(&set.gallery, encoder.as_ref(), IndexOptions::default(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let compute = squire_kernels::Compute::new(a.device)?;
    let superglobal = a.rerank == "superglobal";
    let sg = a.sg.params();
    let depth = if superglobal { a.k.max(sg.m) } else { a.k };
    let row_of_path: std::collections::HashMap<&str, usize> =
        col.records().iter().enumerate().map(|(i, r)| (r.path.as_str(), i)).collect();
    // With --whiten: fit on the gallery, whiten it once, search the whitened copy.
    let vector_name = col.manifest().image_query_vector.clone();
    let whitening = if a.whiten {
        let vector = a.whitening.whiten_vector.clone().unwrap_or_else(|| vector_name.clone());
        anyhow::ensure!(vector == vector_name, "--whiten-vector {vector}: image queries search `{vector_name}`");
        let (w, secs) = super::whiten::fit_and_save(&col, &vector, &a.whitening)?;
        let gallery = w.apply(col.vectors(&vector)?.data())?;
        let db = compute.upload(&gallery, w.dim_out, squire_kernels::Precision::F32)?;
        Some((w, gallery, db, secs))
    } else {
        None
    };
    let (mut first, mut reranked, mut per_query) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wins, mut losses, mut ties) = (0usize, 0usize, 0usize);
    let mut rerank_ms = Vec::new();
    for q in &set.queries {
        let path = set.queries_dir.join(&q.query);
        let query = squire_engine::pipeline::embed_query(&col, encoder.as_ref(), None, Some(&squire_models::image_io::load_rgb(&path)?), 0.0)?;
        let relevant: std::collections::HashSet<usize> = q.relevant.iter().filter_map(|p| row_of_path.get(p.as_str()).copied()).collect();
        anyhow::ensure!(relevant.len() == q.relevant.len(), "the gallery index lacks some of {:?}; delete {} and rerun", q.relevant, index_dir.display());
        let (qv, ranking): (Vec<f32>, Vec<Ranked>) = match &whitening {
            Some((w, _, db, _)) => {
                let qv = w.apply(&query.values)?;
                let hits = compute.top_k(db, &qv, depth, squire_kernels::Metric::InnerProduct)?;
                (qv, hits[0].iter().map(|h| Ranked { row: h.row, score: h.score }).collect())
            }
            None => {
                let hits = col.search_exact_on(&compute, &query.vector, &query.values, depth)?;
                (query.values.clone(), hits.iter().map(|h| Ranked { row: h.row, score: h.score }).collect())
            }
        };
        let score = |r: &[Ranked]| {
            let rel: Vec<bool> = r.iter().take(a.k).map(|x| relevant.contains(&x.row)).collect();
            (average_precision_at(&rel, relevant.len(), a.k), rel.first().copied().unwrap_or(false), rel.iter().take(10).any(|&b| b))
        };
        let f = score(&ranking);
        first.push(f);
        let mut entry = serde_json::json!({ "query": q.query, "source": q.source, "edits": q.edits, "ap_first_stage": f.0 });
        if superglobal {
            let store = col.vectors(&query.vector)?;
            let (data, dim) = match &whitening {
                Some((w, g, _, _)) => (g.as_slice(), w.dim_out),
                None => (store.data(), store.dim()),
            };
            let t = std::time::Instant::now();
            let rr = superglobal::rerank(&compute, &qv, data, dim, &ranking, &sg)?;
            rerank_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let s = score(&rr);
            match s.0.partial_cmp(&f.0) {
                Some(std::cmp::Ordering::Greater) => wins += 1,
                Some(std::cmp::Ordering::Less) => losses += 1,
                _ => ties += 1,
            }
            entry["ap_superglobal"] = serde_json::json!(s.0);
            reranked.push(s);
        }
        per_query.push(entry);
    }
    let mut metrics = serde_json::json!({ "first_stage": stage_metrics(&first) });
    if superglobal {
        metrics["superglobal"] = serde_json::to_value(stage_metrics(&reranked))?;
    }
    rerank_ms.sort_by(f64::total_cmp);
    let p50 = rerank_ms.get(rerank_ms.len() / 2).copied();
    let report = serde_json::json!({
        "benchmark": "copies", "spec": spec, "model": model, "pool": a.pool.to_string(), "device": compute.describe(),
        "vector": col.manifest().image_query_vector, "queries": set.queries.len(), "gallery": col.records().len(),
        "whitening": whitening.as_ref().map(|(w, _, _, secs)| serde_json::json!({"dims": w.dim_out, "power": w.params.power, "fit_s": secs})),
        "k": a.k, "metrics": metrics,
        "superglobal": if superglobal { serde_json::json!({"params": sg, "wins": wins, "losses": losses, "ties": ties, "rerank_ms_p50": p50}) } else { serde_json::Value::Null },
        "per_query": per_query,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "copies: {} queries, {} gallery images (model {}, vector `{}`{}, seed {})",
        set.queries.len(),
        col.records().len(),
        model,
        col.manifest().image_query_vector,
        whitening.as_ref().map_or(String::new(), |(w, _, _, _)| format!(", whitened to {} dims, power {}", w.dim_out, w.params.power)),
        a.seed
    );
    println!("| stage | mAP@{} | R@1 | R@10 |", a.k);
    println!("|---|---|---|---|");
    let row = |name: &str, m: &StageMetrics| println!("| {name} | {:.4} | {:.4} | {:.4} |", m.map, m.r1, m.r10);
    row("first stage", &stage_metrics(&first));
    if superglobal {
        row("+ SuperGlobal", &stage_metrics(&reranked));
        println!(
            "SuperGlobal vs first stage, per query AP: {wins} better, {losses} worse, {ties} unchanged; rerank p50 {:.2} ms (M = {}, K = {}, β = {})",
            p50.unwrap_or(0.0),
            sg.m,
            sg.k,
            sg.beta
        );
    }
    Ok(())
}
