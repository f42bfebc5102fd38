//! FIRST (Reddy et al., 2024: listwise reranking from the first generated
//! identifier's logits, one forward pass and no decoding) on images: the
//! top K drawn as EBR's marked grids, the model asked for the mark of the
//! best candidate with `max_tokens` 1, and the ranking read from the first
//! token's log-probabilities: marks in decreasing probability (the
//! probabilities of every token that reads as the same mark summed), then
//! the marks missing from the returned alternatives in their prior order.
//!
//! Over an OpenAI-compatible server the alternatives are `top_logprobs`,
//! at most 20, so K is at most 20 there (refused otherwise). Marks above 9
//! are read only when the tokenizer keeps them one token (many split
//! numbers into digits; K ≤ 9 is always safe); this is a limit of reading a
//! ranking from one token, written down rather than guessed around.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};

use crate::cost::MllmCost;
use crate::ebr::{query_and_candidates, GridReranker};
use crate::grid::GridOptions;
use crate::rerank::{AnswerRead, ListReranker, RerankOutcome, RerankQuery};

/// Options of [`FirstReranker`].
#[derive(Debug, Clone, PartialEq)]
pub struct FirstOptions {
    /// Candidates reranked (the top K).
    pub k: usize,
    /// Grid drawing (as EBR's).
    pub grid: GridOptions,
}

impl Default for FirstOptions {
    fn default() -> Self {
        FirstOptions {
            k: 9,
            grid: GridOptions::default(),
        }
    }
}

/// The FIRST single-token listwise reranker.
#[derive(Debug, Clone)]
pub struct FirstReranker {
    /// Options.
    pub options: FirstOptions,
    grids: GridReranker,
}

impl FirstReranker {
    /// A reranker with `options` (checked).
    pub fn new(options: FirstOptions) -> Result<Self, String> {
        if options.k == 0 {
            return Err("--first-k must be at least 1".into());
        }
        let cells = options.grid.cells.max(1);
        let ebr = crate::ebr::EbrOptions {
            k: options.k,
            grid: options.grid.clone(),
            max_grids: options.k.div_ceil(cells),
            ..Default::default()
        };
        let grids = GridReranker::new(ebr).map_err(|e| e.replace("--ebr-k", "--first-k"))?;
        Ok(FirstReranker { options, grids })
    }

    /// Checks that `mllm` can return the log-probabilities of K marks.
    pub fn check_backend(&self, mllm: &dyn Mllm) -> Result<(), String> {
        match mllm.max_top_logprobs() {
            Some(max) if self.options.k > max as usize => Err(format!(
                "FIRST: --first-k {} needs the first-token log-probabilities of {} marks, but this backend returns at most {max} (OpenAI-compatible servers cap top_logprobs at 20); use --first-k {max} or less",
                self.options.k, self.options.k
            )),
            _ => Ok(()),
        }
    }

    /// The request for `query` over `grids` holding `n` candidates.
    pub fn request(
        &self,
        query: &RerankQuery,
        grids: &[Arc<RgbImage>],
        n: usize,
        top: u32,
    ) -> ChatRequest {
        let (mut parts, target) = query_and_candidates(query, grids, n);
        parts.push(Part::Text(format!(
            "Which candidate best matches {target}? Answer with its mark only: one number from 1 to {n}."
        )));
        let mut r = ChatRequest::new(
            vec![
                Message::system("You are a careful visual judge for an image search engine."),
                Message::user(parts),
            ],
            1,
        );
        r.first_token_logprobs = Some(top);
        r
    }

    /// Reranks the first K of `candidates` with one call.
    pub fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        let start = Instant::now();
        let n = self.options.k.min(candidates.len());
        let grids = self.grids.grids(&candidates[..n]);
        let mut cost = MllmCost::default();
        let mut answers = Vec::new();
        let top = mllm
            .max_top_logprobs()
            .unwrap_or_else(|| (n as u32).max(20));
        let (mut order, mentioned, read, fallback) = if n == 0 {
            (Vec::new(), 0, AnswerRead::Logprobs, None)
        } else if let Err(e) = self.check_backend(mllm) {
            ((0..n).collect(), 0, AnswerRead::Fallback, Some(e))
        } else {
            let request = self.request(query, &grids, n, top);
            match mllm.chat(&request) {
                Ok(resp) => {
                    cost.record(&request, &resp);
                    answers.push(resp.text.clone());
                    let (order, scored) = order_from_logprobs(&resp.first_token_logprobs, n);
                    if scored > 0 {
                        (order, scored, AnswerRead::Logprobs, None)
                    } else {
                        (
                            order,
                            0,
                            AnswerRead::Fallback,
                            Some(format!(
                                "no mark among the first token's {} alternatives (answer {:?})",
                                resp.first_token_logprobs.len(),
                                resp.text
                            )),
                        )
                    }
                }
                Err(e) => {
                    cost.record_failure(&request, e.attempts());
                    (
                        (0..n).collect(),
                        0,
                        AnswerRead::Fallback,
                        Some(e.to_string()),
                    )
                }
            }
        };
        order.extend(n..candidates.len());
        cost.finish(start.elapsed());
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
            reasoning: Vec::new(),
            grids,
            cost,
        }
    }
}

/// The candidate order (indices `0..n`) from first-token alternatives:
/// marks by decreasing summed probability (ties in prior order), then the
/// unscored ones in prior order; and how many marks were scored.
pub fn order_from_logprobs(logprobs: &[(String, f32)], n: usize) -> (Vec<usize>, usize) {
    let mut p = vec![0f64; n];
    let mut seen = vec![false; n];
    for (token, lp) in logprobs {
        let t = token.trim().trim_start_matches('#');
        if let Ok(m) = t.parse::<usize>() {
            if (1..=n).contains(&m) {
                p[m - 1] += (*lp as f64).exp();
                seen[m - 1] = true;
            }
        }
    }
    let mut scored: Vec<usize> = (0..n).filter(|&i| seen[i]).collect();
    scored.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let count = scored.len();
    scored.extend((0..n).filter(|&i| !seen[i]));
    (scored, count)
}

impl ListReranker for FirstReranker {
    fn name(&self) -> &'static str {
        "first"
    }

    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        FirstReranker::rerank(self, mllm, query, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_by_probability_then_the_rest_in_prior_order() {
        let lp = |t: &str, v: f32| (t.to_string(), v);
        let (order, scored) = order_from_logprobs(
            &[
                lp("4", -0.2),
                lp(" 1", -1.0),
                lp("7", -2.5),
                lp("x", -0.1),
                lp("12", -0.3),
            ],
            9,
        );
        assert_eq!(scored, 3);
        assert_eq!(order, [3, 0, 6, 1, 2, 4, 5, 7, 8]);
        // Two spellings of one mark add up.
        let (order, _) = order_from_logprobs(&[lp("2", -1.0), lp("3", -0.9), lp(" 2", -1.0)], 3);
        assert_eq!(order, [1, 2, 0]);
        assert_eq!(order_from_logprobs(&[], 3), (vec![0, 1, 2], 0));
    }
}
