//! What every MLLM reranker shares: the query it ranks against, the
//! outcome it returns, and the [`ListReranker`] trait (EBR, CoTRR and the
//! pointwise reranker implement it).

use std::sync::Arc;

use image::RgbImage;
use squire_models::mllm::Mllm;

use crate::cost::MllmCost;

/// What the candidates are ranked against.
#[derive(Debug, Clone)]
pub enum RerankQuery {
    /// A text query.
    Text(String),
    /// An image query.
    Image(Arc<RgbImage>),
    /// A composed query: a reference image and a modification text.
    Composed {
        /// The reference image.
        reference: Arc<RgbImage>,
        /// The requested change.
        modification: String,
        /// The SQAF caption of the target, when there is one.
        caption: Option<String>,
    },
}

/// The result of reranking one query's candidates.
#[derive(Debug, Clone)]
pub struct RerankOutcome {
    /// The new order of the candidates given: a permutation of `0..n`.
    pub order: Vec<usize>,
    /// Candidates the answer placed.
    pub mentioned: usize,
    /// Set when the prior order was kept: why.
    pub fallback: Option<String>,
    /// Every raw answer, retries included.
    pub answers: Vec<String>,
    /// The reasoning the answers gave (a `reasoning` field of the JSON
    /// object, or the prose around it), one per answer that had any.
    pub reasoning: Vec<String>,
    /// The grid images exactly as sent (empty when none were drawn).
    pub grids: Vec<RgbImage>,
    /// Calls, images, tokens, time.
    pub cost: MllmCost,
}

/// A stage that reorders a query's top candidates with an MLLM.
pub trait ListReranker: Send + Sync {
    /// The stage's name in reports (`ebr`, `cotrr`, `pointwise`).
    fn name(&self) -> &'static str;

    /// Reorders `candidates` (images in the prior order) for `query`; the
    /// returned order is a permutation of all of them.
    fn rerank(&self, mllm: &dyn Mllm, query: &RerankQuery, candidates: &[Arc<RgbImage>]) -> RerankOutcome;
}

/// The reasoning in an answer: the `reasoning` (or `analysis`, `explanation`,
/// `thoughts`, `rationale`) field of its first JSON object, else the text
/// before the first `{` when that is more than a few words.
pub fn reasoning_of(answer: &str) -> Option<String> {
    if let Some(serde_json::Value::Object(o)) = crate::ranking::first_block(answer, '{', '}') {
        for key in ["reasoning", "analysis", "explanation", "thoughts", "rationale"] {
            let text = match o.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => continue,
            };
            if !text.trim().is_empty() {
                return Some(text.trim().to_string());
            }
        }
    }
    let before = answer[..answer.find('{').unwrap_or(answer.len())].trim();
    (before.split_whitespace().count() >= 5).then(|| before.to_string())
}
