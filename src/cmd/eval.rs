//! `squire eval`: benchmarks.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use squire_indexer::Collection;
use squire_models::clip::LoadOptions;

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
    /// Output folder of the harness (per-query log, summary, TREC runs, chart; resumable)
    /// [default: CACHE/eval-<model>-<pool>-<rerank>[-whiten]].
    #[arg(long)]
    out: Option<PathBuf>,
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

fn copies(a: CopiesArgs) -> anyhow::Result<()> {
    use squire_engine::copies::{self, CopiesSpec};
    use squire_engine::harness::{run_benchmark, RunOptions};
    use squire_engine::pipeline::{Pipeline, Stage};
    use squire_indexer::{IndexOptions, StoreConfig, StoreKind};

    let spec = CopiesSpec {
        sources: a.sources,
        variants: a.variants,
        others: a.others,
        seed: a.seed,
    };
    let bar = super::progress_bar(a.json);
    bar.set_message("generating copies");
    let set = copies::build(&a.images, &a.cache, &spec, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let model = super::with_pooling(&a.model, a.pool)?;
    let encoder = super::load_encoder(&model, LoadOptions::default())?;
    let model_tag: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let index_dir = set.gallery.with_file_name(format!("index-{model_tag}"));
    let exact = StoreConfig {
        kind: StoreKind::Exact,
        ..StoreConfig::default()
    };
    let mut col =
        Collection::open_or_create(&index_dir, &model, encoder.as_ref(), &set.gallery, exact)?;
    bar.set_message("indexing the gallery");
    col.index(
        &set.gallery,
        encoder.as_ref(),
        IndexOptions::default(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    // With --whiten: fit on the gallery and store it in the collection; the pipeline searches the whitened vectors.
    let vector_name = col.manifest().image_query_vector.clone();
    let whitening = if a.whiten {
        let vector = a
            .whitening
            .whiten_vector
            .clone()
            .unwrap_or_else(|| vector_name.clone());
        anyhow::ensure!(
            vector == vector_name,
            "--whiten-vector {vector}: image queries search `{vector_name}`"
        );
        let (w, secs) = super::whiten::fit_and_save(&col, &vector, &a.whitening)?;
        Some((w.dim_out, w.params.power, secs))
    } else {
        None
    };
    drop(col);
    let col = Collection::open_with(&index_dir, squire_indexer::OpenOptions { view: true })?;
    let bench = squire_engine::benchmarks::copies(&col, &set, a.k)?;
    let superglobal = a.rerank == "superglobal";
    let options = squire_engine::pipeline::PipelineOptions {
        superglobal: a.sg.params(),
        ..Default::default()
    };
    let compute = squire_kernels::Compute::new(a.device)?;
    let device = compute.describe();
    let pipeline = Pipeline::new(col, encoder, compute, None, options)?;
    let pool_tag = a.pool.to_string().replace('+', "_");
    let out = a.out.clone().unwrap_or_else(|| {
        let whiten = if a.whiten {
            format!(
                "-whiten-d{}-p{}",
                a.whitening.whiten_dims, a.whitening.whiten_power
            )
        } else {
            String::new()
        };
        let sg = if superglobal {
            format!(
                "-m{}-k{}-b{}-q{}",
                a.sg.sg_m,
                a.sg.sg_k,
                a.sg.sg_beta,
                a.sg.params().query_top
            )
        } else {
            String::new()
        };
        a.cache.join(format!(
            "eval-{model_tag}-{pool_tag}-{}{sg}{whiten}-k{}",
            a.rerank, a.k
        ))
    });
    let opts = RunOptions {
        stages: if superglobal {
            vec![Stage::SuperGlobal]
        } else {
            Vec::new()
        },
        keep: a.k,
        ef: None,
        whiten: a.whiten,
        sqaf: false,
        out: out.clone(),
        accept_fallbacks: false,
        filter: None,
    };
    bar.set_message("queries");
    let run = run_benchmark(&pipeline, &bench, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let map = format!("mAP@{}", a.k);
    let ap = |q: &squire_engine::harness::QueryOutcome, stage: &str| {
        q.stages
            .iter()
            .find(|s| s.stage == stage)
            .and_then(|s| s.metrics.get(&map))
            .copied()
            .unwrap_or(0.0)
    };
    let (mut wins, mut losses, mut ties) = (0usize, 0usize, 0usize);
    let mut rerank_ms: Vec<f64> = Vec::new();
    let mut per_query = Vec::new();
    let edits: std::collections::HashMap<&str, &squire_engine::copies::CopyQuery> =
        set.queries.iter().map(|q| (q.query.as_str(), q)).collect();
    for q in &run.outcomes {
        let src = edits.get(q.qid.as_str());
        let mut entry = serde_json::json!({
            "query": q.qid, "source": src.map(|s| s.source.clone()), "edits": src.map(|s| s.edits.clone()), "ap_first_stage": ap(q, "first"),
        });
        if superglobal {
            let (f, s) = (ap(q, "first"), ap(q, "superglobal"));
            match s.partial_cmp(&f) {
                Some(std::cmp::Ordering::Greater) => wins += 1,
                Some(std::cmp::Ordering::Less) => losses += 1,
                _ => ties += 1,
            }
            entry["ap_superglobal"] = serde_json::json!(s);
            rerank_ms.extend(
                q.stages
                    .iter()
                    .find(|s| s.stage == "superglobal")
                    .map(|s| s.ms),
            );
        }
        per_query.push(entry);
    }
    rerank_ms.sort_by(f64::total_cmp);
    let p50 = rerank_ms.get(rerank_ms.len() / 2).copied();
    let stage_json = |stage: &str| serde_json::json!(run.summary.per_stage.get(stage));
    let mut metrics = serde_json::json!({ "first_stage": stage_json("first") });
    if superglobal {
        metrics["superglobal"] = stage_json("superglobal");
    }
    let sg = a.sg.params();
    let report = serde_json::json!({
        "benchmark": "copies", "spec": spec, "model": model, "pool": a.pool.to_string(), "device": device,
        "vector": vector_name, "queries": run.summary.queries, "gallery": pipeline.collection().records().len(),
        "whitening": whitening.map(|(dims, power, secs)| serde_json::json!({"dims": dims, "power": power, "fit_s": secs})),
        "k": a.k, "metrics": metrics,
        "superglobal": if superglobal { serde_json::json!({"params": sg, "wins": wins, "losses": losses, "ties": ties, "rerank_ms_p50": p50}) } else { serde_json::Value::Null },
        "out": out.display().to_string(), "resumed": run.resumed,
        "per_query": per_query,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "copies: {} queries, {} gallery images (model {}, vector `{}`{}, seed {})",
        run.summary.queries,
        pipeline.collection().records().len(),
        model,
        vector_name,
        whitening.map_or(String::new(), |(dims, power, _)| format!(
            ", whitened to {dims} dims, power {power}"
        )),
        a.seed
    );
    println!("{}", run.summary.markdown());
    if superglobal {
        println!(
            "SuperGlobal vs first stage, per query AP: {wins} better, {losses} worse, {ties} unchanged; rerank p50 {:.2} ms (M = {}, K = {}, β = {})",
            p50.unwrap_or(0.0),
            sg.m,
            sg.k,
            sg.beta
        );
    }
    println!(
        "written: {}",
        run.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
