//! What every MLLM reranker shares: the query it ranks against, the
//! outcome it returns, and the [`ListReranker`] trait (EBR, CoTRR and the
//! pointwise reranker implement it).

use std::sync::Arc;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, ChatResponse, Mllm, MllmError, Part};

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

/// How a stage's answers were read, from the cleanest to a failure; a
/// stage of several calls (CoTRR's windows, pointwise's candidates) takes
/// the worst of its calls. Evaluations count queries per class, and a rerun
/// redoes the ones that fell back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AnswerRead {
    /// A list under a key of a JSON object (the format asked for).
    Json,
    /// A bare JSON list of marks.
    List,
    /// Pointwise: every score from first-token log-probabilities.
    Logprobs,
    /// Pointwise: some scores from the answered word (no log-probabilities came back).
    Word,
    /// Marks read from the numbers in prose (two at least).
    Prose,
    /// No usable answer for at least part of the list: the prior order was kept there.
    Fallback,
}

impl AnswerRead {
    /// Every class, in order.
    pub const ALL: [AnswerRead; 6] = [
        AnswerRead::Json,
        AnswerRead::List,
        AnswerRead::Logprobs,
        AnswerRead::Word,
        AnswerRead::Prose,
        AnswerRead::Fallback,
    ];

    /// The class's name in reports (`json`, `list`, `logprobs`, `word`, `prose`, `fallback`).
    pub fn name(self) -> &'static str {
        match self {
            AnswerRead::Json => "json",
            AnswerRead::List => "list",
            AnswerRead::Logprobs => "logprobs",
            AnswerRead::Word => "word",
            AnswerRead::Prose => "prose",
            AnswerRead::Fallback => "fallback",
        }
    }
}

/// The result of reranking one query's candidates.
#[derive(Debug, Clone)]
pub struct RerankOutcome {
    /// The new order of the candidates given: a permutation of `0..n`.
    pub order: Vec<usize>,
    /// Candidates the answer placed.
    pub mentioned: usize,
    /// Set when the prior order was kept (or a note on how scores were read): why.
    pub fallback: Option<String>,
    /// How the answers were read (the worst over the stage's calls).
    pub read: AnswerRead,
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
    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome;
}

/// The reasoning in an answer: the `reasoning` (or `analysis`, `explanation`,
/// `thoughts`, `rationale`) field of its first JSON object, else the text
/// before the first `{` when that is more than a few words.
pub fn reasoning_of(answer: &str) -> Option<String> {
    if let Some(serde_json::Value::Object(o)) = crate::ranking::first_block(answer, '{', '}') {
        for key in [
            "reasoning",
            "analysis",
            "explanation",
            "thoughts",
            "rationale",
        ] {
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

/// The opening of a listwise or pairwise prompt for `query` (the query text,
/// the query image, or the reference image with the change and any SQAF
/// caption), and how the prompt names what the candidates are compared with.
pub(crate) fn query_parts(query: &RerankQuery) -> (Vec<Part>, &'static str) {
    let mut parts = Vec::new();
    let target = match query {
        RerankQuery::Text(t) => {
            parts.push(Part::Text(format!("Query: \"{}\"", t.trim())));
            "the query"
        }
        RerankQuery::Image(img) => {
            parts.push(Part::Text("Query image:".into()));
            parts.push(Part::Image(img.clone()));
            "the query image (the same object, place or scene)"
        }
        RerankQuery::Composed {
            reference,
            modification,
            caption,
        } => {
            parts.push(Part::Text("Reference image:".into()));
            parts.push(Part::Image(reference.clone()));
            let mut t = format!("Requested change: \"{}\". The target is the reference image with this change applied.", modification.trim());
            if let Some(c) = caption {
                t.push_str(&format!(" A description of the target: \"{}\".", c.trim()));
            }
            parts.push(Part::Text(t));
            "the target"
        }
    };
    (parts, target)
}

/// Sends `requests` with at most `parallel` in flight; the answers in the
/// requests' order.
pub(crate) fn chat_all(
    mllm: &dyn Mllm,
    requests: &[ChatRequest],
    parallel: usize,
) -> Vec<Result<ChatResponse, MllmError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let n = requests.len();
    let results: Vec<Mutex<Option<Result<ChatResponse, MllmError>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = mllm.chat(&requests[i]);
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(MllmError::Config("the request was not sent".into())))
        })
        .collect()
}
