//! EBR (SQUARE's Efficient Batch Reranking): the top-K candidates drawn as
//! one marked grid, one MLLM call to rank them, the answer parsed into a new
//! order.
//!
//! Choices where the paper is silent (algorithms.md §2), all configurable:
//! K = 9 in a 3 × 3 grid of 336-px cells; marks 1..K in reading order; the
//! reference image of a composed query sent apart, before the grid; a JSON
//! answer `{"ranking": [marks, best first]}`. When K exceeds one grid's
//! cells the candidates fill several grids sent in the same call (marks
//! continue across grids), up to `max_grids`; one call per query either way.
//! An unusable answer is asked again (`retries`) with a reminder appended
//! (so a cached answer is not replayed); then the prior order stays and the
//! query is flagged.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};

use crate::cost::MllmCost;
use crate::grid::{draw_grid, GridOptions};
use crate::ranking::{parse_ranking_with, ParseMode};
pub use crate::rerank::{AnswerRead, ListReranker, RerankOutcome, RerankQuery};

/// Options of [`GridReranker`].
#[derive(Debug, Clone, PartialEq)]
pub struct EbrOptions {
    /// Candidates reranked (the top K of the previous stage).
    pub k: usize,
    /// Grid drawing; `grid.cells` candidates per grid image.
    pub grid: GridOptions,
    /// Most grid images in one call.
    pub max_grids: usize,
    /// Extra calls after an unusable answer.
    pub retries: u32,
    /// Most answer tokens per call (0: 24 + 4 per candidate).
    pub max_tokens: u32,
    /// Whether marks in prose count (they are reported as `prose`).
    pub parse: ParseMode,
}

impl Default for EbrOptions {
    fn default() -> Self {
        EbrOptions {
            k: 9,
            grid: GridOptions::default(),
            max_grids: 4,
            retries: 1,
            max_tokens: 0,
            parse: ParseMode::Prose,
        }
    }
}

impl EbrOptions {
    /// Checks the options, naming the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 {
            return Err("--ebr-k must be at least 1".into());
        }
        if self.grid.cells == 0 || self.max_grids == 0 {
            return Err("--ebr-cells and the grid limit must be at least 1".into());
        }
        if self.k > self.grid.cells * self.max_grids {
            return Err(format!(
                "--ebr-k {} needs more than {} grids of {} cells; raise --ebr-cells or lower --ebr-k",
                self.k, self.max_grids, self.grid.cells
            ));
        }
        if self.grid.cell < 32 {
            return Err(format!(
                "--ebr-cell-size {} is too small to read (at least 32 px)",
                self.grid.cell
            ));
        }
        Ok(())
    }
}

/// The prompt's query part and the candidate grids (marks 1 to `n`), and
/// how the prompt names what the candidates are compared with; shared by
/// EBR and FIRST.
pub(crate) fn query_and_candidates(
    query: &RerankQuery,
    grids: &[Arc<RgbImage>],
    n: usize,
) -> (Vec<Part>, &'static str) {
    let (mut parts, target) = crate::rerank::query_parts(query);
    let grid_note = if grids.len() > 1 {
        format!(", over {} grid images", grids.len())
    } else {
        String::new()
    };
    parts.push(Part::Text(format!(
        "Candidates: {n} images, each with a black number on a yellow badge in its top-left corner (marks 1 to {n}{grid_note}):"
    )));
    parts.extend(grids.iter().map(|g| Part::Image(g.clone())));
    (parts, target)
}

/// SQUARE's grid-mark batch reranker.
#[derive(Debug, Clone, Default)]
pub struct GridReranker {
    /// Options.
    pub options: EbrOptions,
}

impl GridReranker {
    /// A reranker with `options` (checked).
    pub fn new(options: EbrOptions) -> Result<Self, String> {
        options.validate()?;
        Ok(GridReranker { options })
    }

    /// The grids for `candidates`, marked 1.. in order.
    pub fn grids(&self, candidates: &[Arc<RgbImage>]) -> Vec<Arc<RgbImage>> {
        let cells = self.options.grid.cells.max(1);
        candidates
            .chunks(cells)
            .enumerate()
            .map(|(g, chunk)| {
                let refs: Vec<&RgbImage> = chunk.iter().map(|c| c.as_ref()).collect();
                Arc::new(draw_grid(&refs, 1 + g * cells, &self.options.grid))
            })
            .collect()
    }

    /// The request for `query` and `grids` holding `n` candidates; `attempt`
    /// > 0 adds the reminder that follows an unusable answer.
    pub fn request(
        &self,
        query: &RerankQuery,
        grids: &[Arc<RgbImage>],
        n: usize,
        attempt: u32,
    ) -> ChatRequest {
        let (mut parts, target) = query_and_candidates(query, grids, n);
        let example: Vec<String> = (1..=n.min(3)).rev().map(|m| m.to_string()).collect();
        parts.push(Part::Text(format!(
            "Rank the candidates from best to worst match for {target}. \
             Answer with JSON only: {{\"ranking\": [marks, best first]}}, listing every mark from 1 to {n} once."
        )));
        if attempt > 0 {
            parts.push(Part::Text(format!(
                "Your previous answer could not be read. Reply with the JSON object only, for example {{\"ranking\": [{}]}}.",
                example.join(", ")
            )));
        }
        let max_tokens = if self.options.max_tokens > 0 {
            self.options.max_tokens
        } else {
            24 + 4 * n as u32
        };
        let mut request = ChatRequest::new(
            vec![
                Message::system("You are a careful visual judge for an image search engine."),
                Message::user(parts),
            ],
            max_tokens,
        );
        request.json = true;
        request
    }

    /// Reranks the first `options.k` of `candidates` (images in the prior
    /// order) for `query` with one call (plus retries on an unusable
    /// answer). The returned order covers all of `candidates`; positions
    /// beyond K keep their place.
    pub fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        let start = Instant::now();
        let n = self.options.k.min(candidates.len());
        let grids = self.grids(&candidates[..n]);
        let mut cost = MllmCost::default();
        let mut answers = Vec::new();
        let mut fallback = None;
        let mut ranking = None;
        if n > 0 {
            for attempt in 0..=self.options.retries {
                let request = self.request(query, &grids, n, attempt);
                match mllm.chat(&request) {
                    Ok(r) => {
                        cost.record(&request, &r);
                        let parsed = parse_ranking_with(&r.text, n, self.options.parse);
                        answers.push(r.text);
                        if parsed.usable {
                            ranking = Some(parsed);
                            break;
                        }
                        fallback = Some(format!("unusable answer after {} call(s)", attempt + 1));
                    }
                    Err(e) => {
                        // The backend already retried transport errors.
                        cost.record_failure(&request, e.attempts());
                        fallback = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        let (mut order, mentioned, read) = match ranking {
            Some(p) => {
                fallback = None;
                let read = p.read();
                (p.order, p.mentioned, read)
            }
            // No candidate: nothing to read, nothing fell back.
            None if n == 0 => (Vec::new(), 0, AnswerRead::Json),
            None => ((0..n).collect(), 0, AnswerRead::Fallback),
        };
        order.extend(n..candidates.len());
        cost.finish(start.elapsed());
        let reasoning = answers
            .iter()
            .filter_map(|a| crate::rerank::reasoning_of(a))
            .collect();
        let grids = grids
            .into_iter()
            .map(|g| Arc::try_unwrap(g).unwrap_or_else(|shared| (*shared).clone()))
            .collect();
        RerankOutcome {
            order,
            mentioned,
            fallback,
            read,
            answers,
            reasoning,
            grids,
            cost,
        }
    }
}

impl ListReranker for GridReranker {
    fn name(&self) -> &'static str {
        "ebr"
    }

    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        GridReranker::rerank(self, mllm, query, candidates)
    }
}
