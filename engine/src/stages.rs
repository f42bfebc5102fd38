//! The reranking stages after the first stage (SuperGlobal and the MLLM
//! rerankers) as one object that needs no collection: [`Rerankers`] reranks
//! the candidates of a [`crate::pipeline::Pipeline`]'s first stage, or a
//! candidate list given from outside (INQUIRE-Rerank's published top 100).

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde_json::{json, Value};
use squire_kernels::Compute;
use squire_models::DualEncoder;

use crate::cotrr::CotrrReranker;
use crate::ebr::GridReranker;
use crate::first::FirstReranker;
use crate::pipeline::{
    embed_rgb_batch, PipelineError, PipelineMllm, PipelineOptions, Stage, StageRun,
};
use crate::pointwise::PointwiseReranker;
use crate::rerank::{ListReranker, RerankQuery};
use crate::superglobal::{self, Ranked};

/// A candidate given from outside the collection, with its prior score.
#[derive(Debug, Clone)]
pub struct ListCandidate {
    /// The image.
    pub image: Arc<RgbImage>,
    /// The score it came with (e.g. the published first stage's).
    pub score: f32,
}

/// What [`Rerankers::rerank_list`] produced.
#[derive(Debug, Clone)]
pub struct ListOutcome {
    /// The first stage's order (candidate indices).
    pub first: Vec<Ranked>,
    /// Each reranking stage.
    pub stages: Vec<StageRun>,
    /// Embedding and scoring time, ms.
    pub encode_ms: f64,
}

/// The encoder that embeds a list's query and candidates, for re-scoring
/// and SuperGlobal: a model and the named vector its text queries search.
#[derive(Clone, Copy)]
pub struct ListEncoder<'a> {
    /// The model.
    pub encoder: &'a dyn DualEncoder,
    /// The named image vector compared with text queries.
    pub vector: &'a str,
}

/// The reranking stages with their parameters, the compute backend SuperGlobal
/// runs on and the MLLM the other stages ask: built once, used for many queries.
pub struct Rerankers {
    pub(crate) compute: Compute,
    pub(crate) mllm: Option<PipelineMllm>,
    pub(crate) options: PipelineOptions,
    ebr: GridReranker,
    cotrr: CotrrReranker,
    pointwise: PointwiseReranker,
    first: FirstReranker,
    prp: crate::prp::PairwiseReranker,
}

impl Rerankers {
    /// Builds the rerankers, checking their parameters.
    pub fn new(
        compute: Compute,
        mllm: Option<PipelineMllm>,
        options: PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let ebr = GridReranker::new(options.ebr.clone()).map_err(PipelineError::Request)?;
        let cotrr = CotrrReranker::new(options.cotrr.clone()).map_err(PipelineError::Request)?;
        if options.pointwise.k == 0 {
            return Err(PipelineError::Request(
                "pointwise: k must be at least 1".into(),
            ));
        }
        let pointwise = PointwiseReranker {
            options: options.pointwise.clone(),
        };
        let first = FirstReranker::new(options.first.clone()).map_err(PipelineError::Request)?;
        if options.prp.k == 0 {
            return Err(PipelineError::Request("--prp-k must be at least 1".into()));
        }
        let prp = crate::prp::PairwiseReranker {
            options: options.prp.clone(),
        };
        if let Some(m) = &mllm {
            first
                .check_backend(m.model.as_ref())
                .map_err(PipelineError::Request)?;
        }
        Ok(Rerankers {
            compute,
            mllm,
            options,
            ebr,
            cotrr,
            pointwise,
            first,
            prp,
        })
    }

    /// The stages' parameters.
    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// The MLLM's description, when there is one.
    pub fn mllm(&self) -> Option<&Value> {
        self.mllm.as_ref().map(|m| &m.describe)
    }

    /// The stages these rerankers can run (MLLM stages only with an MLLM).
    pub fn available_stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| !s.needs_mllm() || self.mllm.is_some())
            .collect()
    }

    /// How many candidates `stage` reranks.
    pub(crate) fn depth_of(&self, stage: Stage) -> usize {
        match stage {
            Stage::SuperGlobal => self.options.superglobal.m,
            Stage::Ebr => self.options.ebr.k,
            Stage::Cotrr => self.options.cotrr.k,
            Stage::Pointwise => self.options.pointwise.k,
            Stage::First => self.options.first.k,
            Stage::Prp => self.options.prp.k,
        }
    }

    fn reranker(&self, stage: Stage) -> Option<&dyn ListReranker> {
        match stage {
            Stage::SuperGlobal => None,
            Stage::Ebr => Some(&self.ebr),
            Stage::Cotrr => Some(&self.cotrr),
            Stage::Pointwise => Some(&self.pointwise),
            Stage::First => Some(&self.first),
            Stage::Prp => Some(&self.prp),
        }
    }

    /// Runs the MLLM stages of `stages` in order, each on the top of the
    /// previous order; `image_of(row)` gives a candidate's image.
    pub(crate) fn run_mllm_stages(
        &self,
        rq: &RerankQuery,
        stages: &[Stage],
        ranked: &mut Vec<Ranked>,
        image_of: &dyn Fn(usize) -> Arc<RgbImage>,
        out: &mut Vec<StageRun>,
    ) {
        let Some(m) = &self.mllm else { return };
        for &stage in stages.iter().filter(|s| s.needs_mllm()) {
            let Some(reranker) = self.reranker(stage) else {
                continue;
            };
            let n = self.depth_of(stage).min(ranked.len());
            let candidates: Vec<Arc<RgbImage>> =
                ranked[..n].iter().map(|h| image_of(h.row)).collect();
            let result = reranker.rerank(m.model.as_ref(), rq, &candidates);
            let head: Vec<Ranked> = result.order[..n].iter().map(|&i| ranked[i]).collect();
            ranked.splice(..n, head);
            let mut report = json!({
                "k": n, "mentioned": result.mentioned, "fallback": result.fallback, "read": result.read, "answers": result.answers,
                "reasoning": result.reasoning, "grids": result.grids.len(),
            });
            match stage {
                Stage::Ebr => report["cells"] = json!(self.options.ebr.grid.cells),
                Stage::Cotrr => {
                    let o = &self.options.cotrr;
                    report["windows"] = json!(o.calls(n));
                    report["input"] = json!(o.input.name());
                    report["reasoning_mode"] = json!(o.reasoning.name());
                }
                _ => {}
            }
            out.push(StageRun {
                stage,
                ranking: ranked.clone(),
                ms: result.cost.wall_ms,
                cost: Some(result.cost),
                read: Some(result.read),
                fallback: result.fallback,
                report,
                grids: result.grids,
            });
        }
    }

    /// Reranks a fixed candidate list for a text query (INQUIRE-Rerank's
    /// published top 100): the first stage orders the candidates by their
    /// given scores (ties keep the list's order), or with `rescore` by the
    /// encoder's similarity to the query; SuperGlobal refines the candidates'
    /// own embeddings (in the text-query space); MLLM stages rerank their
    /// depth. Re-scoring and SuperGlobal need `encoder`; the MLLM stages do
    /// not. Rankings hold candidate indices in `Ranked::row`.
    pub fn rerank_list(
        &self,
        text: &str,
        candidates: &[ListCandidate],
        stages: &[Stage],
        encoder: Option<ListEncoder<'_>>,
        rescore: bool,
    ) -> Result<ListOutcome, PipelineError> {
        if let Some(s) = stages
            .iter()
            .find(|s| s.needs_mllm())
            .filter(|_| self.mllm.is_none())
        {
            return Err(PipelineError::Request(format!(
                "the {} reranker needs an MLLM, and none is configured (--mllm)",
                s.name()
            )));
        }
        if stages.iter().skip(1).any(|s| *s == Stage::SuperGlobal) {
            return Err(PipelineError::Request(
                "rerank: superglobal comes first (it reranks the first stage's vectors), once"
                    .into(),
            ));
        }
        let t0 = Instant::now();
        let superglobal = stages.first() == Some(&Stage::SuperGlobal);
        let (query, db) = match encoder {
            Some(e) if rescore || superglobal => {
                let q = e.encoder.embed_texts(&[text])?;
                let images: Vec<&RgbImage> = candidates.iter().map(|c| c.image.as_ref()).collect();
                (q, embed_rgb_batch(e.encoder, &images, e.vector)?)
            }
            None if rescore => return Err(PipelineError::Request("re-scoring the candidates needs an encoder (a collection's model)".into())),
            None if superglobal => return Err(PipelineError::Request("superglobal needs the candidates' embeddings, so an encoder (a collection's model)".into())),
            _ => (Vec::new(), Vec::new()),
        };
        let dim = query.len().max(1);
        let scores: Vec<f32> = if rescore {
            db.chunks(dim)
                .map(|v| v.iter().zip(&query).map(|(a, b)| a * b).sum())
                .collect()
        } else {
            candidates.iter().map(|c| c.score).collect()
        };
        let first: Vec<Ranked> = crate::metrics::order_by_score(&scores)
            .into_iter()
            .map(|i| Ranked {
                row: i,
                score: scores[i],
            })
            .collect();
        let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut ranked = first.clone();
        let mut out = Vec::new();
        if superglobal {
            let t = Instant::now();
            let sg = &self.options.superglobal;
            ranked = superglobal::rerank(&self.compute, &query, &db, dim, &ranked, sg)?;
            let report = json!({"m": sg.m, "k": sg.k, "beta": sg.beta, "query_top": sg.query_top});
            out.push(StageRun {
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
        self.run_mllm_stages(
            &RerankQuery::Text(text.to_string()),
            stages,
            &mut ranked,
            &|i| candidates[i].image.clone(),
            &mut out,
        );
        Ok(ListOutcome {
            first,
            stages: out,
            encode_ms,
        })
    }
}
