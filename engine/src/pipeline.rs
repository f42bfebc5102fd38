//! The whole search pipeline as one object that is loaded once and answers
//! many queries: query encoding (text, image, composed, SQAF), the first
//! stage (HNSW, exact or whitened search), SuperGlobal refinement and the
//! MLLM rerankers, with per-stage rankings, timings and costs.
//!
//! `squire search` runs one query through it; `squire serve` shares one
//! [`Pipeline`] between its request handlers (it is `Send + Sync`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde_json::{json, Value};
use squire_indexer::{Collection, Filter, RowHit, SearchParams, StoreKind, VectorStore};
use squire_kernels::{Compute, Metric, Precision};
use squire_models::mllm::Mllm;
use squire_models::{image_io, DualEncoder};

use crate::cost::MllmCost;
use crate::cotrr::CotrrOptions;
use crate::ebr::EbrOptions;
use crate::pointwise::PointwiseOptions;
use crate::rerank::{AnswerRead, RerankQuery};
use crate::sqaf::{self, SqafOptions};
pub use crate::stages::{ListCandidate, ListEncoder, ListOutcome, Rerankers};
use crate::superglobal::{self, Ranked, SuperGlobalParams};
use crate::whitening;

/// Errors of one query. [`PipelineError::Request`] is the caller's fault (a
/// server answers 400); the others are the collection's or the machine's.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request cannot be answered as asked: the message says why.
    #[error("{0}")]
    Request(String),
    /// A model failed (or the query image could not be decoded).
    #[error(transparent)]
    Model(#[from] squire_models::ModelError),
    /// The collection failed.
    #[error(transparent)]
    Index(#[from] squire_indexer::IndexError),
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] squire_kernels::KernelError),
    /// The whitening is missing, stale or broken.
    #[error(transparent)]
    Whitening(#[from] whitening::WhiteningError),
}

/// A reranking stage after the first stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// SuperGlobal refinement (no MLLM; must come first).
    SuperGlobal,
    /// SQUARE's grid-mark batch reranking.
    Ebr,
    /// CoTRR's listwise chain-of-thought reranking.
    Cotrr,
    /// INQUIRE's pointwise Yes/No reranker.
    Pointwise,
    /// FIRST: the ranking read from the first token's log-probabilities.
    First,
    /// PRP: pairwise preferences, both orders.
    Prp,
}

impl Stage {
    /// Every stage, in the order a page lists them.
    pub const ALL: [Stage; 6] = [
        Stage::SuperGlobal,
        Stage::Ebr,
        Stage::Cotrr,
        Stage::Pointwise,
        Stage::First,
        Stage::Prp,
    ];

    /// The stage's name in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::SuperGlobal => "superglobal",
            Stage::Ebr => "ebr",
            Stage::Cotrr => "cotrr",
            Stage::Pointwise => "pointwise",
            Stage::First => "first",
            Stage::Prp => "prp",
        }
    }

    /// Whether the stage calls the MLLM.
    pub fn needs_mllm(self) -> bool {
        self != Stage::SuperGlobal
    }

    /// Parses a list such as `superglobal,ebr` (`none` and empty items are skipped).
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Stage>, PipelineError> {
        items
            .iter()
            .flat_map(|s| s.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(|s| s.parse())
            .collect()
    }
}

impl std::str::FromStr for Stage {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                PipelineError::Request(format!(
                    "reranker `{s}`: expected none, superglobal, ebr, cotrr, pointwise, first or prp"
                ))
            })
    }
}

/// How the first stage searches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FirstStage {
    /// The collection's index (HNSW unless built exact), with an optional search breadth.
    Index {
        /// HNSW breadth (`None`: the collection's).
        ef: Option<usize>,
    },
    /// Brute force over every vector on the pipeline's compute backend.
    Exact,
    /// Brute force over the PCA-whitened vectors (fitted by `squire whiten`).
    Whitened,
}

/// The stages' parameters, fixed when the pipeline is built.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// SuperGlobal refinement.
    pub superglobal: SuperGlobalParams,
    /// SQAF fusion.
    pub sqaf: SqafOptions,
    /// EBR.
    pub ebr: EbrOptions,
    /// CoTRR.
    pub cotrr: CotrrOptions,
    /// The pointwise reranker.
    pub pointwise: PointwiseOptions,
    /// FIRST.
    pub first: crate::first::FirstOptions,
    /// PRP.
    pub prp: crate::prp::PrpOptions,
}

/// One query.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Text query, or the modification text of a composed query.
    pub text: Option<String>,
    /// Query image, or the reference image of a composed query.
    pub image: Option<Arc<RgbImage>>,
    /// How to name the image in reports (a path, an upload's file name).
    pub image_label: Option<String>,
    /// Results wanted.
    pub k: usize,
    /// Weight of the text in a plain composed query.
    pub alpha: f32,
    /// First-stage search.
    pub first_stage: FirstStage,
    /// Reranking stages, in order.
    pub stages: Vec<Stage>,
    /// SQAF fusion of a composed query (needs the MLLM).
    pub sqaf: bool,
    /// Only images whose record passes this filter are returned (the first
    /// stage searches among them; the rerankers see only them).
    pub filter: Option<Filter>,
    /// A query given as a vector in the collection's embedding space (from
    /// outside: another tool, a notebook) instead of a text or an image; it
    /// is L2-normalised. Needs no encoder.
    pub vector: Option<Vec<f32>>,
    /// The named vector a [`SearchRequest::vector`] is searched against
    /// (`None`: the collection's image query vector).
    pub vector_name: Option<String>,
}

impl SearchRequest {
    /// A text query with the defaults (k 10, no reranking).
    pub fn text(text: &str) -> Self {
        SearchRequest {
            text: Some(text.to_string()),
            image: None,
            image_label: None,
            k: 10,
            alpha: 0.8,
            first_stage: FirstStage::Index { ef: None },
            stages: Vec::new(),
            sqaf: false,
            filter: None,
            vector: None,
            vector_name: None,
        }
    }

    /// A query by a vector (see [`SearchRequest::vector`]) with the defaults.
    pub fn vector(values: Vec<f32>) -> Self {
        SearchRequest {
            text: None,
            vector: Some(values),
            ..SearchRequest::text("")
        }
    }

    /// `text`, `image`, `composed` or `vector`.
    pub fn kind(&self) -> &'static str {
        if self.vector.is_some() {
            return "vector";
        }
        match (&self.text, &self.image) {
            (Some(_), Some(_)) => "composed",
            (Some(_), None) => "text",
            _ => "image",
        }
    }
}

/// What one reranking stage did.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The stage.
    pub stage: Stage,
    /// The whole ranking after the stage.
    pub ranking: Vec<Ranked>,
    /// Wall time in milliseconds.
    pub ms: f64,
    /// MLLM cost (MLLM stages only).
    pub cost: Option<MllmCost>,
    /// MLLM stages: how the answer was read.
    pub read: Option<AnswerRead>,
    /// MLLM stages: why the prior order was kept (or a note on how scores were read).
    pub fallback: Option<String>,
    /// Stage-specific details for reports (candidates, answers, fallback, ...).
    pub report: Value,
    /// EBR's grid images exactly as sent.
    pub grids: Vec<RgbImage>,
}

/// SQAF's part of a query.
#[derive(Debug, Clone)]
pub struct SqafRun {
    /// The caption (absent when the call failed: the plain composed query was used).
    pub caption: Option<String>,
    /// The raw answer.
    pub answer: Option<String>,
    /// Why there is no caption.
    pub fallback: Option<String>,
    /// Cost.
    pub cost: MllmCost,
}

/// Everything one query produced.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The named vector searched.
    pub vector: String,
    /// `exact`, `usearch`, `hnsw_rs`.
    pub method: &'static str,
    /// HNSW breadth used (None for exact search).
    pub ef: Option<usize>,
    /// The first stage's ranking (as deep as the deepest stage needs).
    pub first: Vec<Ranked>,
    /// The reranking stages in order.
    pub stages: Vec<StageRun>,
    /// SQAF, when it ran.
    pub sqaf: Option<SqafRun>,
    /// Query encoding (SQAF's call included), ms.
    pub encode_ms: f64,
    /// First-stage search, ms.
    pub search_ms: f64,
}

impl SearchOutcome {
    /// The final ranking.
    pub fn ranked(&self) -> &[Ranked] {
        self.stages.last().map_or(&self.first, |s| &s.ranking)
    }

    /// All MLLM costs added together.
    pub fn total_cost(&self) -> MllmCost {
        let mut total = MllmCost::default();
        for c in self
            .sqaf
            .iter()
            .map(|s| &s.cost)
            .chain(self.stages.iter().filter_map(|s| s.cost.as_ref()))
        {
            total.add(c);
        }
        total
    }

    /// Wall time of every stage, ms.
    pub fn total_ms(&self) -> f64 {
        self.encode_ms + self.search_ms + self.stages.iter().map(|s| s.ms).sum::<f64>()
    }
}

/// A query's vector and the named vector it searches.
#[derive(Debug, Clone)]
pub struct QueryVector {
    /// Which named vector to search.
    pub vector: String,
    /// The query vector (L2-normalised).
    pub values: Vec<f32>,
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The named vector `vector` of one image.
pub fn embed_rgb(
    encoder: &dyn DualEncoder,
    img: &RgbImage,
    vector: &str,
) -> Result<Vec<f32>, PipelineError> {
    embed_rgb_batch(encoder, &[img], vector)
}

/// The named vector `vector` of each image, `images.len() × dim` values:
/// preprocessed in parallel, embedded in batches of 32.
pub fn embed_rgb_batch(
    encoder: &dyn DualEncoder,
    images: &[&RgbImage],
    vector: &str,
) -> Result<Vec<f32>, PipelineError> {
    use rayon::prelude::*;
    let i = encoder
        .vector_names()
        .iter()
        .position(|n| *n == vector)
        .ok_or_else(|| {
            PipelineError::Request(format!(
                "the model has no `{vector}` vector (the collection's query vector)"
            ))
        })?;
    let s = encoder.input_size();
    let plane = 3 * s * s;
    let mut out = Vec::new();
    for chunk in images.chunks(32) {
        let mut px = vec![0f32; chunk.len() * plane];
        px.par_chunks_mut(plane)
            .zip(chunk.par_iter())
            .try_for_each(|(dst, img)| encoder.preprocess_into(img, dst))?;
        out.extend(encoder.embed_named(&px, chunk.len())?.swap_remove(i));
    }
    Ok(out)
}

/// The two halves of a composed query in the collection's text-query space:
/// the reference image's embedding and the modification text's.
pub fn composed_parts(
    col: &Collection,
    encoder: &dyn DualEncoder,
    text: &str,
    reference: &RgbImage,
) -> Result<(Vec<f32>, Vec<f32>), PipelineError> {
    Ok((
        embed_rgb(encoder, reference, &col.manifest().text_query_vector)?,
        encoder.embed_texts(&[text])?,
    ))
}

/// Embeds a text, image or composed query (normalise((1 − α)·image + α·text)) for `col`.
pub fn embed_query(
    col: &Collection,
    encoder: &dyn DualEncoder,
    text: Option<&str>,
    image: Option<&RgbImage>,
    alpha: f32,
) -> Result<QueryVector, PipelineError> {
    let m = col.manifest();
    Ok(match (text, image) {
        (Some(t), None) => QueryVector {
            vector: m.text_query_vector.clone(),
            values: encoder.embed_texts(&[t])?,
        },
        (None, Some(img)) => QueryVector {
            vector: m.image_query_vector.clone(),
            values: embed_rgb(encoder, img, &m.image_query_vector)?,
        },
        (Some(t), Some(img)) => {
            let (i, tv) = composed_parts(col, encoder, t, img)?;
            let mut q: Vec<f32> = i
                .iter()
                .zip(&tv)
                .map(|(i, t)| (1.0 - alpha) * i + alpha * t)
                .collect();
            normalise(&mut q);
            QueryVector {
                vector: m.text_query_vector.clone(),
                values: q,
            }
        }
        (None, None) => {
            return Err(PipelineError::Request(
                "a query needs a text, an image or both".into(),
            ))
        }
    })
}

/// An MLLM and how to describe it in reports.
pub struct PipelineMllm {
    /// The model (behind its response cache when there is one).
    pub model: Box<dyn Mllm>,
    /// Backend, URL, model name, cache folder: reported as `mllm`.
    pub describe: Value,
}

/// The search pipeline over one collection: loaded once, queried many times.
pub struct Pipeline {
    collection: Collection,
    encoder: Option<Box<dyn DualEncoder>>,
    rerankers: Rerankers,
    /// Per named vector: its whitening, the whitened gallery and that gallery
    /// on the compute backend, made on the first whitened query.
    whitened: std::sync::Mutex<HashMap<String, Arc<WhitenedGallery>>>,
}

/// A collection's vectors through its fitted whitening.
struct WhitenedGallery {
    whitening: whitening::Whitening,
    rows: Vec<f32>,
    database: squire_kernels::Database,
}

impl Pipeline {
    /// Builds the pipeline; `compute` runs exact search and SuperGlobal.
    pub fn new(
        collection: Collection,
        encoder: Box<dyn DualEncoder>,
        compute: Compute,
        mllm: Option<PipelineMllm>,
        options: PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let rerankers = Rerankers::new(compute, mllm, options)?;
        Ok(Pipeline {
            collection,
            encoder: Some(encoder),
            rerankers,
            whitened: Default::default(),
        })
    }

    /// A pipeline without an encoder, for a collection whose model weights
    /// are not on this machine: it answers vector queries only.
    pub fn without_encoder(
        collection: Collection,
        compute: Compute,
        mllm: Option<PipelineMllm>,
        options: PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let rerankers = Rerankers::new(compute, mllm, options)?;
        Ok(Pipeline {
            collection,
            encoder: None,
            rerankers,
            whitened: Default::default(),
        })
    }

    fn need_encoder(&self) -> Result<&dyn DualEncoder, PipelineError> {
        self.encoder.as_deref().ok_or_else(|| {
            PipelineError::Request("this pipeline has no encoder (the collection's model was not loaded): only vector queries can be answered".into())
        })
    }

    /// The collection searched.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// The encoder (`None` for a pipeline made [`Pipeline::without_encoder`]).
    pub fn encoder(&self) -> Option<&dyn DualEncoder> {
        self.encoder.as_deref()
    }

    /// The stages' parameters.
    pub fn options(&self) -> &PipelineOptions {
        &self.rerankers.options
    }

    /// The reranking stages, usable on candidate lists from outside the collection.
    pub fn rerankers(&self) -> &Rerankers {
        &self.rerankers
    }

    /// The MLLM's description, when there is one.
    pub fn mllm(&self) -> Option<&Value> {
        self.rerankers.mllm()
    }

    /// The stages this pipeline can run (MLLM stages only with an MLLM).
    pub fn available_stages(&self) -> Vec<Stage> {
        self.rerankers.available_stages()
    }

    /// Reranks a fixed candidate list for a text query with the collection's
    /// encoder (see [`Rerankers::rerank_list`]).
    pub fn rerank_list(
        &self,
        text: &str,
        candidates: &[ListCandidate],
        stages: &[Stage],
        rescore: bool,
    ) -> Result<ListOutcome, PipelineError> {
        let encoder = self.encoder.as_deref().map(|encoder| ListEncoder {
            encoder,
            vector: &self.collection.manifest().text_query_vector,
        });
        self.rerankers
            .rerank_list(text, candidates, stages, encoder, rescore)
    }

    /// The whitened gallery of `vector`, whitened and uploaded once per pipeline.
    fn whitened_gallery(&self, vector: &str) -> Result<Arc<WhitenedGallery>, PipelineError> {
        let mut cache = self.whitened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = cache.get(vector) {
            return Ok(g.clone());
        }
        let w = whitening::load_fresh(&self.collection, vector)?;
        let rows = w.apply(self.collection.vectors(vector)?.data())?;
        let database = self
            .rerankers
            .compute
            .upload(&rows, w.dim_out, Precision::F32)?;
        let g = Arc::new(WhitenedGallery {
            whitening: w,
            rows,
            database,
        });
        cache.insert(vector.to_string(), g.clone());
        Ok(g)
    }

    /// Checks a request before any work, naming what is wrong.
    pub fn check(&self, req: &SearchRequest) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::Request(m));
        if let Some(v) = &req.vector {
            if req.text.is_some() || req.image.is_some() {
                return bad("give a query vector or a text and/or image, not both".into());
            }
            let name = req
                .vector_name
                .as_deref()
                .unwrap_or(&self.collection.manifest().image_query_vector);
            let dim = self.collection.manifest().vectors.get(name).copied();
            match dim {
                None => {
                    return bad(format!(
                        "the collection has no vector `{name}` (it has {})",
                        self.collection
                            .manifest()
                            .vectors
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                Some(d) if d != v.len() => {
                    return bad(format!(
                        "the query vector has {} values; vector `{name}` has {d}",
                        v.len()
                    ))
                }
                _ => {}
            }
            if !v.iter().all(|x| x.is_finite()) || v.iter().all(|x| *x == 0.0) {
                return bad("the query vector must be finite and not all zero".into());
            }
            if let Some(s) = req.stages.iter().find(|s| s.needs_mllm()) {
                return bad(format!(
                    "the {} reranker needs a text or image query; a vector query has neither",
                    s.name()
                ));
            }
            if req.sqaf {
                return bad("SQAF needs a composed query, not a vector".into());
            }
        } else if self.encoder.is_none() {
            return bad("this pipeline has no encoder (the collection's model was not loaded): only vector queries can be answered".into());
        }
        if req.vector.is_none() && req.text.is_none() && req.image.is_none() {
            return bad("a query needs a text, an image or both (or a vector)".into());
        }
        if req.text.as_deref().is_some_and(|t| t.trim().is_empty()) && req.image.is_none() {
            return bad("the query text is empty".into());
        }
        if req.k == 0 {
            return bad("k must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&req.alpha) {
            return bad(format!(
                "alpha {}: expected a weight between 0 and 1",
                req.alpha
            ));
        }
        if req
            .stages
            .iter()
            .filter(|s| **s == Stage::SuperGlobal)
            .count()
            > 1
            || req
                .stages
                .iter()
                .position(|s| *s == Stage::SuperGlobal)
                .is_some_and(|i| i != 0)
        {
            return bad(
                "rerank: superglobal comes first (it reranks the first stage's vectors), once"
                    .into(),
            );
        }
        if self.rerankers.mllm.is_none() {
            if let Some(s) = req.stages.iter().find(|s| s.needs_mllm()) {
                return bad(format!("the {} reranker needs an MLLM, and none is configured (--mllm openai --mllm-url URL --mllm-model NAME)", s.name()));
            }
            if req.sqaf {
                return bad("SQAF needs an MLLM, and none is configured (--mllm openai --mllm-url URL --mllm-model NAME)".into());
            }
        }
        if req.sqaf && req.kind() != "composed" {
            return bad(
                "SQAF needs a composed query: a reference image and a modification text".into(),
            );
        }
        Ok(())
    }

    /// Runs one query through every stage asked for.
    pub fn search(&self, req: &SearchRequest) -> Result<SearchOutcome, PipelineError> {
        self.check(req)?;
        let col = &self.collection;
        let manifest = col.manifest();
        let superglobal = req.stages.first() == Some(&Stage::SuperGlobal);
        let depth = req
            .stages
            .iter()
            .map(|s| self.rerankers.depth_of(*s))
            .fold(req.k, usize::max);
        let t0 = Instant::now();
        let mut sqaf_run = None;
        let query = match (
            &self.rerankers.mllm,
            req.sqaf,
            req.text.as_deref(),
            &req.image,
        ) {
            _ if req.vector.is_some() => {
                let mut values = req.vector.clone().unwrap_or_default();
                normalise(&mut values);
                QueryVector {
                    vector: req
                        .vector_name
                        .clone()
                        .unwrap_or_else(|| manifest.image_query_vector.clone()),
                    values,
                }
            }
            (Some(m), true, Some(text), Some(reference)) => {
                let encoder = self.need_encoder()?;
                let (img_vec, txt_vec) = composed_parts(col, encoder, text, reference)?;
                let out = sqaf::caption_target(
                    m.model.as_ref(),
                    reference.clone(),
                    text,
                    &self.rerankers.options.sqaf,
                );
                let cap_vec = match &out.caption {
                    Some(c) => Some(encoder.embed_texts(&[c.as_str()])?),
                    None => None,
                };
                let values = sqaf::fuse(
                    &img_vec,
                    &txt_vec,
                    cap_vec.as_deref(),
                    &self.rerankers.options.sqaf.weights,
                );
                sqaf_run = Some(SqafRun {
                    caption: out.caption,
                    answer: out.answer,
                    fallback: out.error,
                    cost: out.cost,
                });
                QueryVector {
                    vector: manifest.text_query_vector.clone(),
                    values,
                }
            }
            _ => embed_query(
                col,
                self.need_encoder()?,
                req.text.as_deref(),
                req.image.as_deref(),
                req.alpha,
            )?,
        };
        let vector = query.vector;
        let whitened = if req.first_stage == FirstStage::Whitened {
            let g = self.whitened_gallery(&vector)?;
            Some((g.whitening.apply(&query.values)?, g))
        } else {
            None
        };
        let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let store_kind = manifest.store.kind;
        let (method, ef) = match req.first_stage {
            FirstStage::Index { .. } if store_kind == StoreKind::Exact => ("exact", None),
            FirstStage::Index { ef } => (
                store_kind.name(),
                Some(
                    ef.unwrap_or_else(|| manifest.store.search_breadth(col.records().len()))
                        .max(depth),
                ),
            ),
            _ => ("exact", None),
        };
        let hits: Vec<RowHit> = match (&whitened, req.first_stage) {
            (Some((q, g)), _) if req.filter.is_some() => {
                let pass: std::collections::HashSet<usize> = req
                    .filter
                    .as_ref()
                    .map(|f| col.matching_rows(f))
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                self.rerankers.compute.top_k(
                    &g.database,
                    q,
                    col.records().len(),
                    Metric::InnerProduct,
                )?[0]
                    .iter()
                    .filter(|s| pass.contains(&s.row))
                    .take(depth)
                    .map(|s| RowHit {
                        row: s.row,
                        score: s.score,
                    })
                    .collect()
            }
            (Some((q, g)), _) => {
                self.rerankers
                    .compute
                    .top_k(&g.database, q, depth, Metric::InnerProduct)?[0]
                    .iter()
                    .map(|s| RowHit {
                        row: s.row,
                        score: s.score,
                    })
                    .collect()
            }
            (None, first) if req.filter.is_some() => {
                let f = req
                    .filter
                    .as_ref()
                    .ok_or_else(|| PipelineError::Request("filter".into()))?;
                col.search_filtered(
                    &vector,
                    &query.values,
                    depth,
                    &SearchParams { ef },
                    f,
                    first == FirstStage::Exact,
                )?
            }
            (None, FirstStage::Exact) => {
                col.search_exact_on(&self.rerankers.compute, &vector, &query.values, depth)?
            }
            // HNSW needs a search breadth of at least the depth asked for.
            _ => col.search(&vector, &query.values, depth, &SearchParams { ef })?,
        };
        let search_ms = t1.elapsed().as_secs_f64() * 1e3;
        let first: Vec<Ranked> = hits
            .iter()
            .map(|h| Ranked {
                row: h.row,
                score: h.score,
            })
            .collect();
        let mut stages = Vec::new();
        let mut ranked = first.clone();
        if superglobal {
            let t = Instant::now();
            let sg = &self.rerankers.options.superglobal;
            ranked = match &whitened {
                Some((q, g)) => superglobal::rerank(
                    &self.rerankers.compute,
                    q,
                    &g.rows,
                    g.whitening.dim_out,
                    &ranked,
                    sg,
                )?,
                None => {
                    let store = col.vectors(&vector)?;
                    superglobal::rerank(
                        &self.rerankers.compute,
                        &query.values,
                        store.data(),
                        store.dim(),
                        &ranked,
                        sg,
                    )?
                }
            };
            let report = json!({"m": sg.m, "k": sg.k, "beta": sg.beta, "query_top": sg.query_top});
            stages.push(StageRun {
                stage: Stage::SuperGlobal,
                ranking: ranked.clone(),
                ms: t.elapsed().as_secs_f64() * 1e3,
                cost: None,
                read: None,
                fallback: None,
                report,
                grids: Vec::new(),
            });
        }
        if self.rerankers.mllm.is_some() && (req.text.is_some() || req.image.is_some()) {
            let caption = sqaf_run.as_ref().and_then(|s| s.caption.clone());
            let rq = match (req.text.as_deref(), &req.image) {
                (Some(t), Some(img)) => RerankQuery::Composed {
                    reference: img.clone(),
                    modification: t.to_string(),
                    caption,
                },
                (Some(t), None) => RerankQuery::Text(t.to_string()),
                (None, Some(img)) => RerankQuery::Image(img.clone()),
                (None, None) => unreachable!("checked above"),
            };
            self.rerankers.run_mllm_stages(
                &rq,
                &req.stages,
                &mut ranked,
                &|row| Arc::new(self.candidate_image(row)),
                &mut stages,
            );
        }
        Ok(SearchOutcome {
            vector,
            method,
            ef,
            first,
            stages,
            sqaf: sqaf_run,
            encode_ms,
            search_ms,
        })
    }

    /// A candidate's image for the MLLM: a blank pixel (and a warning in the
    /// log) when its file cannot be read any more.
    fn candidate_image(&self, row: usize) -> RgbImage {
        let path = self
            .collection
            .manifest()
            .images_root
            .join(self.collection.records()[row].relative_path());
        image_io::load_rgb(&path).unwrap_or_else(|e| {
            tracing::warn!(
                "candidate {} cannot be shown to the MLLM ({e}); it gets a blank image",
                path.display()
            );
            RgbImage::new(1, 1)
        })
    }

    /// One result object: `rank`, `id` (16 hex digits), `path` (relative to the indexed folder), `score`.
    pub fn result_json(&self, rank: usize, hit: &Ranked) -> Value {
        let r = &self.collection.records()[hit.row];
        json!({ "rank": rank, "id": format!("{:016x}", r.id), "path": r.path, "score": hit.score })
    }

    /// The `squire.search/1` report of one query (the schema of
    /// `squire search --json`, documented in README.md), with `per_stage`:
    /// each stage's top k with the rank every result had before it.
    pub fn report(&self, req: &SearchRequest, out: &SearchOutcome) -> Value {
        let col = &self.collection;
        let first_rank: HashMap<usize, usize> = out
            .first
            .iter()
            .enumerate()
            .map(|(i, r)| (r.row, i + 1))
            .collect();
        let reranked = !out.stages.is_empty();
        let results: Vec<Value> = out
            .ranked()
            .iter()
            .take(req.k)
            .enumerate()
            .map(|(i, h)| {
                let mut v = self.result_json(i + 1, h);
                if reranked {
                    v["first_stage_rank"] = json!(first_rank.get(&h.row));
                }
                v
            })
            .collect();
        // Every stage's top k, each result with its rank before the stage.
        let mut per_stage = vec![json!({
            "stage": "first",
            "ms": out.encode_ms + out.search_ms,
            "results": out.first.iter().take(req.k).enumerate().map(|(i, h)| self.result_json(i + 1, h)).collect::<Vec<_>>(),
        })];
        let mut before = &out.first;
        for s in &out.stages {
            let prior: HashMap<usize, usize> = before
                .iter()
                .enumerate()
                .map(|(i, r)| (r.row, i + 1))
                .collect();
            let top: Vec<Value> = s
                .ranking
                .iter()
                .take(req.k)
                .enumerate()
                .map(|(i, h)| {
                    let mut v = self.result_json(i + 1, h);
                    v["previous_rank"] = json!(prior.get(&h.row));
                    v
                })
                .collect();
            per_stage.push(json!({"stage": s.stage.name(), "ms": s.ms, "results": top}));
            before = &s.ranking;
        }
        let mut timings = json!({ "encode_ms": out.encode_ms, "search_ms": out.search_ms });
        if let Some(s) = &out.sqaf {
            timings["sqaf_ms"] = json!(s.cost.wall_ms);
        }
        for s in &out.stages {
            let key = if s.stage == Stage::SuperGlobal {
                "rerank_ms".to_string()
            } else {
                format!("{}_ms", s.stage.name())
            };
            timings[key] = json!(s.ms);
        }
        timings["total_ms"] = json!(out.total_ms());
        let superglobal = out.stages.iter().find(|s| s.stage == Stage::SuperGlobal);
        let exact_like = matches!(req.first_stage, FirstStage::Exact | FirstStage::Whitened);
        let mut v = json!({
            "schema": "squire.search/1",
            "query": {
                "kind": req.kind(), "text": req.text, "image": req.image_label,
                "alpha": req.alpha, "vector": out.vector, "k": req.k,
                "filter": req.filter.as_ref().map(|f| json!({
                    "expression": f.source(), "matching_images": col.matching_rows(f).len(),
                })),
            },
            "store": {
                "method": out.method,
                "ef": out.ef,
                "images": col.records().len(),
                "whitened": req.first_stage == FirstStage::Whitened,
                "device": if exact_like { Some(if self.rerankers.compute.is_gpu() { "gpu" } else { "cpu" }) } else { None },
            },
            "rerank": superglobal.map_or(Value::Null, |s| {
                let mut r = s.report.clone();
                r["method"] = json!("superglobal");
                r
            }),
            "stages": req.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "results": results,
            "per_stage": per_stage,
            "timings": timings,
        });
        if let Some(m) = &self.rerankers.mllm {
            v["mllm"] = m.describe.clone();
            v["sqaf"] = out.sqaf.as_ref().map_or(Value::Null, |s| {
                json!({"caption": s.caption, "answer": s.answer, "fallback": s.fallback, "weights": self.rerankers.options.sqaf.weights})
            });
            let mut cost = serde_json::Map::new();
            cost.insert("sqaf".into(), json!(out.sqaf.as_ref().map(|s| s.cost)));
            for s in out.stages.iter().filter(|s| s.cost.is_some()) {
                cost.insert(s.stage.name().into(), json!(s.cost));
                v[s.stage.name()] = s.report.clone();
            }
            cost.insert("total".into(), json!(out.total_cost()));
            v["cost"] = Value::Object(cost);
        }
        v
    }
}
