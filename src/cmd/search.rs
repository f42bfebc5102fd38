//! `squire search`: text, image and composed queries against a collection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;
use squire_engine::pipeline::{FirstStage, Pipeline, SearchRequest, Stage};
use squire_indexer::{Collection, OpenOptions};
use squire_kernels::{Compute, DeviceChoice};
use squire_models::clip::LoadOptions;
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
///  "per_stage": [{"stage", "ms", "results": [..., "previous_rank"]}, ...],
///  "timings": {"encode_ms", "search_ms", "total_ms"}}; with an MLLM also
/// "mllm", "sqaf", "ebr" and "cost" (calls, requests, cache hits, images,
/// tokens and wall time per stage).
/// `id` is the image's stable id (16 hex digits); `path` is relative to the indexed folder.
#[derive(Args)]
#[command(group(ArgGroup::new("q").required(true).multiple(true).args(["text", "image", "query_vector"])))]
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
    /// [default: the collection's if set at indexing, else 128 below
    /// 200,000 vectors and 256 from there].
    #[arg(long)]
    ef: Option<usize>,
    /// Brute-force search over every vector (exact; ignores the HNSW index).
    #[arg(long, conflicts_with = "ef")]
    exact: bool,
    /// Search the collection's PCA-whitened vectors (fitted by `squire whiten`;
    /// exact search, the gallery whitened at query time).
    #[arg(long, conflicts_with = "ef")]
    whiten: bool,
    /// Only images whose record passes EXPR, e.g. 'folder = "2019/rome" and
    /// taken >= 2019-06-01 and width >= 1000'. Fields: path, folder, taken
    /// (EXIF capture time, else the file's mtime), width, height, bytes,
    /// camera; operators = != < <= > >= glob ("*", "?", "**" across
    /// folders); and, or, not, parentheses; values: numbers, "strings",
    /// dates YYYY-MM-DD[THH:MM:SS]. The k best matches are returned (never
    /// fewer when k match); the rerankers see only matches.
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Query by vector(s) in the collection's embedding space instead of a
    /// text or an image: a .npy file (one vector, or a rows × dim matrix of
    /// float16/32/64) or a JSON list (one vector, or a list of them). Needs
    /// no model weights. Several vectors answer one query each (with --json,
    /// one JSON object per line).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["text", "image"])]
    query_vector: Option<PathBuf>,
    /// The named vector a --query-vector is searched against [default: the
    /// collection's image query vector].
    #[arg(long, value_name = "NAME", requires = "query_vector")]
    vector: Option<String>,
    /// Reranking stages after the first stage, in order, comma-separated:
    /// none; superglobal (SuperGlobal refinement of the top --sg-m candidates
    /// with their neighbours and an expanded query; any named vector); ebr
    /// (SQUARE's batch reranking: the top --ebr-k drawn as one marked grid,
    /// ranked by one MLLM call; needs --mllm); cotrr (listwise
    /// chain-of-thought reranking of the top --cotrr-k; needs --mllm);
    /// pointwise (INQUIRE's Yes/No question per candidate, scored from
    /// first-token log-probabilities; needs --mllm); first (FIRST: the top
    /// --first-k as EBR's grid, ranked from one call's first-token
    /// log-probabilities, max_tokens 1; needs --mllm); prp (pairwise "A or
    /// B?" in both orders over the top --prp-k, --prp-mode allpairs|sorting|sliding;
    /// needs --mllm). E.g. --rerank superglobal,ebr.
    #[arg(long, default_value = "none", value_delimiter = ',', value_parser = ["none", "superglobal", "ebr", "cotrr", "pointwise", "first", "prp"])]
    rerank: Vec<String>,
    #[command(flatten)]
    stages: super::mllm::StageArgs,
    /// Compute backend for --exact and SuperGlobal: auto (a hardware GPU when present, else
    /// the CPU; `--log info` shows the choice), cpu, or gpu (any wgpu adapter,
    /// software ones included; an error when there is none).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
    /// SuperGlobal: refined candidates whose element-wise max expands the
    /// query [default: K + 1, as the authors' code (RerankwMDA.py) does; 10
    /// with the default K].
    #[arg(long)]
    pub sg_query_top: Option<usize>,
}

impl SuperGlobalArgs {
    /// The engine's parameters.
    pub fn params(&self) -> squire_engine::superglobal::SuperGlobalParams {
        let query_top = self.sg_query_top.unwrap_or(self.sg_k + 1);
        squire_engine::superglobal::SuperGlobalParams {
            m: self.sg_m,
            k: self.sg_k,
            beta: self.sg_beta,
            query_top,
        }
    }
}

/// Runs `squire search`.
pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    let stages = Stage::parse_list(&a.rerank)?;
    let filter = match a.filter.as_deref() {
        Some(f) => {
            Some(squire_indexer::Filter::parse(f).map_err(|e| anyhow::anyhow!("--filter: {e}"))?)
        }
        None => None,
    };
    let options = a.stages.options()?;
    let mllm = a.stages.mllm.open()?;
    let superglobal = stages.contains(&Stage::SuperGlobal);
    // The backend is only needed (and only probed) for exact search and reranking.
    let compute = if a.exact || a.whiten || superglobal || a.device == DeviceChoice::Gpu {
        Compute::new(a.device)?
    } else {
        Compute::cpu()
    };
    let vectors = match &a.query_vector {
        Some(p) => Some(read_query_vectors(p)?),
        None => None,
    };
    let col = Collection::open_with(&a.index, OpenOptions { view: true })
        .with_context(|| format!("opening the collection in {}", a.index.display()))?;
    // A vector query needs no encoder (nor its weights on this machine).
    let encoder = match vectors {
        Some(_) => None,
        None => Some(
            super::load_encoder(&col.manifest().model, LoadOptions::default()).with_context(
                || {
                    format!(
                        "loading the collection's model `{}` (a --query-vector search needs none)",
                        col.manifest().model
                    )
                },
            )?,
        ),
    };
    let image = match &a.image {
        Some(p) => Some(Arc::new(image_io::load_rgb(p)?)),
        None => None,
    };
    let req = SearchRequest {
        text: a.text.clone(),
        image,
        image_label: a.image.as_ref().map(|p| p.display().to_string()),
        k: a.k,
        alpha: a.alpha,
        first_stage: if a.whiten {
            FirstStage::Whitened
        } else if a.exact {
            FirstStage::Exact
        } else {
            FirstStage::Index { ef: a.ef }
        },
        stages,
        sqaf: a.stages.sqaf.sqaf,
        filter,
        vector: None,
        vector_name: a.vector.clone(),
    };
    let pipeline = match encoder {
        Some(encoder) => Pipeline::new(col, encoder, compute, mllm, options)?,
        None => Pipeline::without_encoder(col, compute, mllm, options)?,
    };
    let Some(vectors) = vectors else {
        return answer(&a, &pipeline, &req, None);
    };
    let n = vectors.len();
    for (i, v) in vectors.into_iter().enumerate() {
        let req = SearchRequest {
            vector: Some(v),
            ..req.clone()
        };
        answer(&a, &pipeline, &req, (n > 1).then_some((i, n)))?;
    }
    Ok(())
}

/// The vectors of a --query-vector file: a .npy (one vector or a matrix) or
/// a JSON list (one vector or a list of vectors).
fn read_query_vectors(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading --query-vector {}", path.display()))?;
    if bytes.starts_with(b"\x93NUMPY") {
        let arr = squire_indexer::npy::parse(&bytes, path)?;
        let (rows, dim) = arr.matrix(path)?;
        if rows == 0 || dim == 0 {
            anyhow::bail!(
                "--query-vector {}: the array is empty (shape {:?})",
                path.display(),
                arr.shape
            );
        }
        return Ok(arr.data.chunks(dim).map(<[f32]>::to_vec).collect());
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "--query-vector {}: neither a .npy file nor JSON",
            path.display()
        )
    })?;
    let row = |v: &serde_json::Value, at: String| -> anyhow::Result<Vec<f32>> {
        let list = v.as_array().with_context(|| {
            format!(
                "--query-vector {}: {at} is not a list of numbers",
                path.display()
            )
        })?;
        list.iter()
            .enumerate()
            .map(|(j, x)| {
                x.as_f64().map(|f| f as f32).with_context(|| {
                    format!(
                        "--query-vector {}: {at}[{j}] = {x} is not a number",
                        path.display()
                    )
                })
            })
            .collect()
    };
    let out = match v.as_array() {
        Some(rows) if rows.first().is_some_and(|r| r.is_array()) => rows
            .iter()
            .enumerate()
            .map(|(i, r)| row(r, format!("[{i}]")))
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => vec![row(&v, "the value".into())?],
    };
    if out.is_empty() || out.iter().any(|r| r.is_empty()) {
        anyhow::bail!("--query-vector {}: no values", path.display());
    }
    Ok(out)
}

/// Runs one query and prints its answer (`of`: this query's index and the
/// number of queries, when there are several).
fn answer(
    a: &SearchArgs,
    pipeline: &Pipeline,
    req: &SearchRequest,
    of: Option<(usize, usize)>,
) -> anyhow::Result<()> {
    let out = pipeline.search(req)?;
    if let Some(why) = out.sqaf.as_ref().and_then(|s| s.fallback.as_deref()) {
        eprintln!("warning: SQAF fell back to the plain composed query: {why}");
    }
    let mut saved = Vec::new();
    for s in &out.stages {
        if let Some(why) = s.report.get("fallback").and_then(|f| f.as_str()) {
            eprintln!("warning: {}: {why}", s.stage.name());
        }
        if s.stage == Stage::Ebr {
            saved = a.stages.ebr.save(&s.grids)?;
        }
    }
    let mut report = pipeline.report(req, &out);
    if a.json {
        if let Some(ebr) = report.get_mut("ebr") {
            ebr["saved_grids"] = json!(saved
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>());
        }
        match of {
            Some((i, _)) => {
                report["query"]["index"] = json!(i);
                println!("{}", serde_json::to_string(&report)?);
            }
            None => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        return Ok(());
    }
    if let Some((i, n)) = of {
        println!(
            "{}query vector {} of {n}",
            if i > 0 { "\n" } else { "" },
            i + 1
        );
    }
    if let Some(c) = out.sqaf.as_ref().and_then(|s| s.caption.as_deref()) {
        println!("caption (SQAF): {c}");
    }
    if let Some(n) = report["query"]["filter"]["matching_images"].as_u64() {
        println!("filter: {n} of {} images match", report["store"]["images"]);
    }
    println!("{:>4}  {:>7}  path", "rank", "score");
    for r in report["results"].as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:>7.4}  {}",
            r["rank"],
            r["score"].as_f64().unwrap_or(0.0),
            r["path"].as_str().unwrap_or("")
        );
    }
    let mut notes = String::new();
    for s in &out.stages {
        match s.stage {
            Stage::SuperGlobal => notes.push_str(&format!(", SuperGlobal rerank {:.2} ms", s.ms)),
            other => notes.push_str(&format!(", {} {:.0} ms", other.name(), s.ms)),
        }
    }
    if pipeline.mllm().is_some() {
        let c = out.total_cost();
        notes.push_str(&format!(
            "; MLLM: {} call(s), {} request(s), {} cached, {} image(s), {} + {} tokens",
            c.calls, c.requests, c.cache_hits, c.images, c.prompt_tokens, c.completion_tokens
        ));
    }
    println!(
        "({} images searched on `{}`; encode {:.1} ms, search {:.2} ms{notes})",
        pipeline.collection().records().len(),
        out.vector,
        out.encode_ms,
        out.search_ms
    );
    Ok(())
}
