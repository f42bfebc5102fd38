//! The MLLM options shared by every command that calls one (`search`,
//! later `eval`), and the SQAF / EBR options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use squire_engine::cotrr::{CotrrInput, CotrrOptions, CotrrReasoning};
use squire_engine::ebr::EbrOptions;
use squire_engine::grid::GridOptions;
use squire_engine::pipeline::{PipelineMllm, PipelineOptions};
use squire_engine::pointwise::PointwiseOptions;
use squire_engine::sqaf::{SqafOptions, SqafWeights};
use squire_models::mllm::{Cached, Mllm, OpenAiChat, OpenAiOptions, ResponseCache, API_KEY_ENV};

/// Which MLLM to call and how.
#[derive(Args, Debug, Clone)]
pub struct MllmArgs {
    /// MLLM backend for --sqaf and the MLLM rerankers: openai (any
    /// OpenAI-compatible chat server: vLLM, llama.cpp server, Ollama, hosted
    /// APIs; the key, if any, comes from $SQUIRE_MLLM_API_KEY and is never
    /// printed), or local (Qwen3-VL run in-process on the CPU by candle;
    /// --mllm-model is a checkpoint directory in the Hugging Face layout or
    /// qwen3-vl-2b|4b|8b).
    #[arg(long, value_parser = ["openai", "local"])]
    pub mllm: Option<String>,
    /// Server base URL, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama).
    #[arg(
        long,
        env = "SQUIRE_MLLM_URL",
        default_value = "http://localhost:8000/v1"
    )]
    pub mllm_url: String,
    /// The served model name, e.g. Qwen/Qwen3-VL-8B-Instruct; with --mllm
    /// local, a checkpoint directory or a known name (qwen3-vl-2b, -4b, -8b).
    #[arg(long, env = "SQUIRE_MLLM_MODEL")]
    pub mllm_model: Option<String>,
    /// Response cache folder (identical requests are answered from it, so
    /// evaluations rerun for free); `none` turns it off
    /// [default: $XDG_CACHE_HOME/squire/mllm or ~/.cache/squire/mllm].
    #[arg(long)]
    pub mllm_cache: Option<PathBuf>,
    /// Whose answers a cached answer may be: `endpoint` (this server's URL
    /// and model name) or `model` (any server answering under the model
    /// name; the scope of caches written by earlier versions).
    #[arg(long, value_enum, default_value_t = CacheScope::Endpoint)]
    pub mllm_cache_scope: CacheScope,
    /// Seconds before one request is abandoned (then retried).
    #[arg(long, default_value_t = 120.0)]
    pub mllm_timeout: f64,
    /// Retries after a 429, a 5xx, a timeout or a broken connection (with
    /// exponential backoff from 0.5 s, or the server's Retry-After).
    #[arg(long, default_value_t = 3)]
    pub mllm_retries: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub mllm_concurrency: usize,
    /// Weights and activations of --mllm local: f32, or bf16 / f16 for half
    /// the memory (the attention softmax and the logits stay f32).
    #[arg(long, value_parser = ["f32", "bf16", "f16"], default_value = "f32")]
    pub mllm_dtype: String,
    /// Images sent are downscaled to this longer side (JPEG, quality 90).
    #[arg(long, default_value_t = 1024)]
    pub mllm_max_image_side: u32,
}

/// Which answers a cached answer may stand for (`--mllm-cache-scope`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// This server's URL and model name.
    Endpoint,
    /// The model name, whichever server answers.
    Model,
}

/// The default response cache folder.
fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("squire").join("mllm")
}

impl MllmArgs {
    /// Opens the backend; `None` without --mllm.
    pub fn open(&self) -> anyhow::Result<Option<PipelineMllm>> {
        let Some(backend) = self.mllm.as_deref() else {
            return Ok(None);
        };
        anyhow::ensure!(
            backend == "openai" || backend == "local",
            "--mllm {backend}: expected openai or local"
        );
        if backend == "local" {
            return self.open_local();
        }
        let model = self
            .mllm_model
            .clone()
            .context("--mllm openai needs --mllm-model (the served model name)")?;
        anyhow::ensure!(
            self.mllm_timeout.is_finite() && self.mllm_timeout > 0.0,
            "--mllm-timeout {}: expected a positive number of seconds",
            self.mllm_timeout
        );
        let mut options = OpenAiOptions::new(&self.mllm_url, &model);
        options.timeout = Duration::from_secs_f64(self.mllm_timeout);
        options.retries = self.mllm_retries;
        options.max_concurrency = self.mllm_concurrency.max(1);
        options.max_image_side = self.mllm_max_image_side;
        let client = OpenAiChat::new(options)?;
        let cache = match &self.mllm_cache {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None => Some(default_cache()),
        };
        let describe = serde_json::json!({
            "backend": backend, "url": client.endpoint(), "model": model,
            "api_key": std::env::var(API_KEY_ENV).is_ok_and(|k| !k.is_empty()),
            "cache": cache.as_ref().map(|p| p.display().to_string()), "cache_scope": self.mllm_cache_scope,
        });
        let model: Box<dyn Mllm> = match cache {
            Some(dir) if self.mllm_cache_scope == CacheScope::Model => {
                Box::new(Cached::new(client, ResponseCache::new(dir)))
            }
            Some(dir) => {
                let endpoint = client.endpoint().to_string();
                Box::new(Cached::for_endpoint(
                    client,
                    ResponseCache::new(dir),
                    &endpoint,
                ))
            }
            None => Box::new(client),
        };
        Ok(Some(PipelineMllm { model, describe }))
    }
}

impl MllmArgs {
    /// The response cache folder, if any.
    fn cache_dir(&self) -> Option<PathBuf> {
        match &self.mllm_cache {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None => Some(default_cache()),
        }
    }

    /// `--mllm local`: loads the Qwen3-VL checkpoint in-process.
    fn open_local(&self) -> anyhow::Result<Option<PipelineMllm>> {
        let spec = self.mllm_model.clone().context("--mllm local needs --mllm-model (a Qwen3-VL checkpoint directory or qwen3-vl-2b|4b|8b)")?;
        let dir = squire_models::qwen3vl::resolve_vlm(&spec)?;
        let t0 = std::time::Instant::now();
        let dtype = squire_models::qwen3vl::parse_dtype(&self.mllm_dtype)?;
        let model = squire_models::qwen3vl::Qwen3Vl::load_as(&dir, dtype)
            .with_context(|| format!("--mllm-model {}", dir.display()))?;
        tracing::info!(
            "loaded {} in {:.1} s",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        let cache = self.cache_dir();
        let describe = serde_json::json!({
            "backend": "local", "model": model.model_id(), "dir": dir.display().to_string(), "dtype": self.mllm_dtype,
            "cache": cache.as_ref().map(|p| p.display().to_string()),
        });
        let model: Box<dyn Mllm> = match cache {
            Some(c) => Box::new(Cached::new(model, ResponseCache::new(c))),
            None => Box::new(model),
        };
        Ok(Some(PipelineMllm { model, describe }))
    }
}

/// SQAF's options.
#[derive(Args, Debug, Clone)]
pub struct SqafArgs {
    /// SQAF (composed queries): the MLLM captions the target image and the
    /// caption's embedding is fused into the query (needs --mllm).
    #[arg(long)]
    pub sqaf: bool,
    /// SQAF weight of the reference image embedding.
    #[arg(long, default_value_t = SqafWeights::default().image)]
    pub sqaf_image_weight: f32,
    /// SQAF weight of the modification text embedding.
    #[arg(long, default_value_t = SqafWeights::default().text)]
    pub sqaf_text_weight: f32,
    /// SQAF weight of the caption embedding.
    #[arg(long, default_value_t = SqafWeights::default().caption)]
    pub sqaf_caption_weight: f32,
}

impl SqafArgs {
    /// The engine's options (weights checked).
    pub fn options(&self) -> anyhow::Result<SqafOptions> {
        let w = SqafWeights {
            image: self.sqaf_image_weight,
            text: self.sqaf_text_weight,
            caption: self.sqaf_caption_weight,
        };
        for (name, v) in [
            ("--sqaf-image-weight", w.image),
            ("--sqaf-text-weight", w.text),
            ("--sqaf-caption-weight", w.caption),
        ] {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{name} {v}: expected a finite weight ≥ 0"
            );
        }
        anyhow::ensure!(
            w.image + w.text + w.caption > 0.0,
            "the SQAF weights are all zero"
        );
        Ok(SqafOptions {
            weights: w,
            ..SqafOptions::default()
        })
    }
}

/// EBR's options.
#[derive(Args, Debug, Clone)]
pub struct EbrArgs {
    /// EBR: candidates reranked in one MLLM call (the top K).
    #[arg(long, default_value_t = 9)]
    pub ebr_k: usize,
    /// EBR: cells per grid image (more candidates go to further grids in the same call).
    #[arg(long, default_value_t = 9)]
    pub ebr_cells: usize,
    /// EBR: side of a grid cell in pixels.
    #[arg(long, default_value_t = 336)]
    pub ebr_cell_size: u32,
    /// EBR: extra calls after an answer with no usable mark.
    #[arg(long, default_value_t = 1)]
    pub ebr_retries: u32,
    /// EBR: write the grid image exactly as sent (PNG; several grids get -2, -3, ... before the extension).
    #[arg(long)]
    pub save_grid: Option<PathBuf>,
}

impl EbrArgs {
    /// The engine's options (checked).
    pub fn options(&self) -> anyhow::Result<EbrOptions> {
        let o = EbrOptions {
            k: self.ebr_k,
            grid: GridOptions {
                cells: self.ebr_cells,
                cell: self.ebr_cell_size,
                ..GridOptions::default()
            },
            retries: self.ebr_retries,
            ..EbrOptions::default()
        };
        o.validate().map_err(anyhow::Error::msg)?;
        Ok(o)
    }

    /// Writes `grids` to --save-grid, if given.
    pub fn save(&self, grids: &[image::RgbImage]) -> anyhow::Result<Vec<PathBuf>> {
        let Some(path) = &self.save_grid else {
            return Ok(Vec::new());
        };
        let mut written = Vec::new();
        for (i, g) in grids.iter().enumerate() {
            let p = if i == 0 {
                path.clone()
            } else {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "grid".into());
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "png".into());
                path.with_file_name(format!("{stem}-{}.{ext}", i + 1))
            };
            g.save(&p)
                .with_context(|| format!("writing the grid to {}", p.display()))?;
            written.push(p);
        }
        Ok(written)
    }
}

/// CoTRR's options.
#[derive(Args, Debug, Clone)]
pub struct CotrrArgs {
    /// CoTRR: candidates reranked (the top K).
    #[arg(long, default_value_t = 10)]
    pub cotrr_k: usize,
    /// CoTRR: candidates per call; K above it is reranked by a sliding window
    /// from the bottom up, 1 + ceil((K − window) / step) calls per query.
    #[arg(long, default_value_t = 10)]
    pub cotrr_window: usize,
    /// CoTRR: how far the window moves up between calls.
    #[arg(long, default_value_t = 5)]
    pub cotrr_step: usize,
    /// CoTRR: candidates as separate images labelled "Image i" (images), or as EBR's marked grid (grid).
    #[arg(long, default_value = "images", value_parser = ["images", "grid"])]
    pub cotrr_input: String,
    /// CoTRR: reasoning asked for: full (deconstruct the query, judge each
    /// image, rank), none, deconstruction, evaluation (the paper's ablations).
    #[arg(long, default_value = "full", value_parser = ["full", "none", "deconstruction", "evaluation"])]
    pub cotrr_reasoning: String,
    /// CoTRR: extra calls after an unusable answer.
    #[arg(long, default_value_t = 3)]
    pub cotrr_retries: u32,
}

impl CotrrArgs {
    /// The engine's options (checked).
    pub fn options(&self) -> anyhow::Result<CotrrOptions> {
        let o = CotrrOptions {
            k: self.cotrr_k,
            window: self.cotrr_window,
            step: self.cotrr_step,
            input: if self.cotrr_input == "grid" {
                CotrrInput::Grid
            } else {
                CotrrInput::Images
            },
            reasoning: self
                .cotrr_reasoning
                .parse::<CotrrReasoning>()
                .map_err(anyhow::Error::msg)?,
            retries: self.cotrr_retries,
            ..CotrrOptions::default()
        };
        o.validate().map_err(anyhow::Error::msg)?;
        Ok(o)
    }
}

/// The pointwise reranker's options.
#[derive(Args, Debug, Clone)]
pub struct PointwiseArgs {
    /// Pointwise: candidates scored, one Yes/No call each (the top K).
    #[arg(long, default_value_t = 10)]
    pub pointwise_k: usize,
}

/// FIRST's options.
#[derive(Args, Debug, Clone)]
pub struct FirstArgs {
    /// FIRST: candidates reranked (the top K), ranked from one call's
    /// first-token log-probabilities (at most 20 over an OpenAI-compatible
    /// server; marks above 9 are read only where the tokenizer keeps them one token).
    #[arg(long, default_value_t = 9)]
    pub first_k: usize,
}

/// PRP's options.
#[derive(Args, Debug, Clone)]
pub struct PrpArgs {
    /// PRP: candidates reranked (the top K), compared in pairs, both orders.
    #[arg(long, default_value_t = 10)]
    pub prp_k: usize,
    /// PRP: allpairs (K(K−1) calls, run concurrently), sorting (a merge
    /// sort, at most 2(K⌈log₂K⌉ − 2^⌈log₂K⌉ + 1) calls) or sliding
    /// (--prp-passes bubble passes, 2·Σ(K−1−p) calls).
    #[arg(long, default_value = "sorting")]
    pub prp_mode: String,
    /// PRP sliding: bubble passes from the bottom, each fixing one more top place (K − 1 sorts all).
    #[arg(long, default_value_t = 3)]
    pub prp_passes: usize,
}

/// Every stage's options, shared by `search` and `serve`.
#[derive(Args, Debug, Clone)]
pub struct StageArgs {
    /// How EBR's and CoTRR's answers are read: prose (JSON first, then the
    /// numbers in the text, reported as `prose`) or strict (JSON only; any
    /// other answer is asked again, then falls back).
    #[arg(long, default_value = "prose")]
    pub parse: squire_engine::ranking::ParseMode,
    #[command(flatten)]
    pub sg: super::search::SuperGlobalArgs,
    #[command(flatten)]
    pub sqaf: SqafArgs,
    #[command(flatten)]
    pub ebr: EbrArgs,
    #[command(flatten)]
    pub cotrr: CotrrArgs,
    #[command(flatten)]
    pub pointwise: PointwiseArgs,
    #[command(flatten)]
    pub first: FirstArgs,
    #[command(flatten)]
    pub prp: PrpArgs,
    #[command(flatten)]
    pub mllm: MllmArgs,
}

impl StageArgs {
    /// The pipeline's options (each checked, the offending option named).
    pub fn options(&self) -> anyhow::Result<PipelineOptions> {
        anyhow::ensure!(
            self.pointwise.pointwise_k > 0,
            "--pointwise-k must be at least 1"
        );
        Ok(PipelineOptions {
            superglobal: self.sg.params(),
            sqaf: self.sqaf.options()?,
            ebr: EbrOptions {
                parse: self.parse,
                ..self.ebr.options()?
            },
            cotrr: CotrrOptions {
                parse: self.parse,
                ..self.cotrr.options()?
            },
            pointwise: PointwiseOptions {
                k: self.pointwise.pointwise_k,
                parallel: self.mllm.mllm_concurrency.max(1),
                ..PointwiseOptions::default()
            },
            first: squire_engine::first::FirstOptions {
                k: self.first.first_k,
                grid: self.ebr.options()?.grid,
            },
            prp: squire_engine::prp::PrpOptions {
                k: self.prp.prp_k,
                mode: self.prp.prp_mode.parse().map_err(anyhow::Error::msg)?,
                passes: self.prp.prp_passes,
                parallel: self.mllm.mllm_concurrency.max(1),
                ..Default::default()
            },
        })
    }
}
