//! INQUIRE's pointwise reranker (algorithms.md §4): one Yes/No question per
//! candidate, scored P(Yes) / (P(Yes) + P(No)) from the first answer token's
//! log-probabilities; candidates sorted by score, ties keeping their prior
//! order.
//!
//! Log-probabilities of every top token that reads "yes" (or "no") after
//! trimming and lower-casing are summed. When a server sends none, the
//! answered word decides (yes = 1, no = 0, anything else = 0.5) and the
//! outcome says so.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, ChatResponse, Message, Mllm, Part};

use crate::cost::MllmCost;
use crate::rerank::{AnswerRead, ListReranker, RerankOutcome, RerankQuery};

/// Options of [`PointwiseReranker`].
#[derive(Debug, Clone, PartialEq)]
pub struct PointwiseOptions {
    /// Candidates scored (the top K).
    pub k: usize,
    /// Calls in flight at once (the HTTP backend also caps this).
    pub parallel: usize,
    /// Top alternatives asked for the first token.
    pub top_logprobs: u32,
}

impl Default for PointwiseOptions {
    fn default() -> Self {
        PointwiseOptions {
            k: 10,
            parallel: 4,
            top_logprobs: 10,
        }
    }
}

/// How one candidate was scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scored {
    /// From first-token log-probabilities.
    Logprobs(f64),
    /// From the answered word (no log-probabilities came back).
    Word(f64),
    /// The call failed: the candidate keeps its prior place among the failed.
    Failed,
}

/// P(Yes) / (P(Yes) + P(No)) from (token, log-probability) pairs; `None`
/// when neither word is among them.
pub fn yes_probability(logprobs: &[(String, f32)]) -> Option<f64> {
    let (mut yes, mut no) = (0f64, 0f64);
    for (t, lp) in logprobs {
        match t.trim().to_lowercase().as_str() {
            "yes" => yes += (*lp as f64).exp(),
            "no" => no += (*lp as f64).exp(),
            _ => {}
        }
    }
    (yes + no > 0.0).then(|| yes / (yes + no))
}

/// The score of an answer without log-probabilities: 1 for Yes, 0 for No,
/// `None` for an answer that is neither (it scores nothing).
fn word_score(text: &str) -> Option<f64> {
    let t = text.trim_start().to_lowercase();
    if t.starts_with("yes") {
        Some(1.0)
    } else if t.starts_with("no") {
        Some(0.0)
    } else {
        None
    }
}

/// The pointwise Yes/No reranker.
#[derive(Debug, Clone, Default)]
pub struct PointwiseReranker {
    /// Options.
    pub options: PointwiseOptions,
}

impl PointwiseReranker {
    /// The question about one candidate.
    pub fn request(&self, query: &RerankQuery, candidate: Arc<RgbImage>) -> ChatRequest {
        let mut parts = Vec::new();
        let question = match query {
            RerankQuery::Text(t) => format!(
                "Does this picture show exactly \"{}\"? Answer Yes or No.",
                t.trim()
            ),
            RerankQuery::Image(img) => {
                parts.push(Part::Text("Query image:".into()));
                parts.push(Part::Image(img.clone()));
                "Does the next picture show the same object, place or scene as the query image? Answer Yes or No.".to_string()
            }
            RerankQuery::Composed {
                reference,
                modification,
                ..
            } => {
                parts.push(Part::Text("Reference image:".into()));
                parts.push(Part::Image(reference.clone()));
                format!(
                    "Does the next picture show exactly the reference image with this change: \"{}\"? Answer Yes or No.",
                    modification.trim()
                )
            }
        };
        parts.push(Part::Text(question));
        parts.push(Part::Image(candidate));
        let mut r = ChatRequest::new(vec![Message::user(parts)], 1);
        r.first_token_logprobs = Some(self.options.top_logprobs);
        r
    }

    /// Scores and sorts the top K of `candidates`.
    pub fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        let start = Instant::now();
        let n = self.options.k.min(candidates.len());
        let requests: Vec<ChatRequest> = candidates[..n]
            .iter()
            .map(|c| self.request(query, c.clone()))
            .collect();
        let results = crate::rerank::chat_all(mllm, &requests, self.options.parallel);
        let mut cost = MllmCost::default();
        let mut scores = Vec::with_capacity(n);
        let mut answers = Vec::with_capacity(n);
        let (mut no_logprobs, mut failed) = (0usize, Vec::new());
        for (i, r) in results.into_iter().enumerate() {
            let s = match r {
                Ok(resp) => {
                    cost.record(&requests[i], &resp);
                    let s = match yes_probability(&resp.first_token_logprobs) {
                        Some(p) => Scored::Logprobs(p),
                        None => {
                            no_logprobs += 1;
                            match word_score(&resp.text) {
                                Some(p) => Scored::Word(p),
                                None => {
                                    let shown: String = resp.text.chars().take(40).collect();
                                    failed.push(format!(
                                        "candidate {}: answered neither Yes nor No ({shown:?})",
                                        i + 1
                                    ));
                                    Scored::Failed
                                }
                            }
                        }
                    };
                    answers.push(resp.text);
                    s
                }
                Err(e) => {
                    cost.record_failure(&requests[i], e.attempts());
                    failed.push(format!("candidate {}: {e}", i + 1));
                    answers.push(String::new());
                    Scored::Failed
                }
            };
            scores.push(s);
        }
        // Failed candidates rank as 0.5 would, but after every scored tie.
        let key = |s: &Scored| match s {
            Scored::Logprobs(p) | Scored::Word(p) => (*p, 1u8),
            Scored::Failed => (0.5, 0u8),
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            let (ka, kb) = (key(&scores[a]), key(&scores[b]));
            kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1))
        });
        order.extend(n..candidates.len());
        let mut notes = Vec::new();
        if no_logprobs > 0 {
            notes.push(format!("{no_logprobs} of {n} answers came without log-probabilities: scored from the answered word"));
        }
        if !failed.is_empty() {
            notes.push(failed.join("; "));
        }
        cost.finish(start.elapsed());
        let scores_text: Vec<String> = scores
            .iter()
            .map(|s| match s {
                Scored::Logprobs(p) => format!("{p:.4}"),
                Scored::Word(p) => format!("{p:.1} (word)"),
                Scored::Failed => "failed".into(),
            })
            .collect();
        let read = if !failed.is_empty() {
            AnswerRead::Fallback
        } else if no_logprobs > 0 {
            AnswerRead::Word
        } else {
            AnswerRead::Logprobs
        };
        RerankOutcome {
            order,
            mentioned: n - failed.len(),
            fallback: (!notes.is_empty()).then(|| notes.join("; ")),
            read,
            answers,
            reasoning: vec![format!("P(yes) per candidate: {}", scores_text.join(", "))],
            grids: Vec::new(),
            cost,
        }
    }

    /// The score of one answer (the outcome lists every candidate's in
    /// [`RerankOutcome::reasoning`]).
    pub fn score(&self, response: &ChatResponse) -> Scored {
        match yes_probability(&response.first_token_logprobs) {
            Some(p) => Scored::Logprobs(p),
            None => word_score(&response.text).map_or(Scored::Failed, Scored::Word),
        }
    }
}

impl ListReranker for PointwiseReranker {
    fn name(&self) -> &'static str {
        "pointwise"
    }

    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        PointwiseReranker::rerank(self, mllm, query, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_probability_sums_spellings() {
        let lp = |v: &[(&str, f32)]| {
            v.iter()
                .map(|(t, p)| (t.to_string(), *p))
                .collect::<Vec<_>>()
        };
        let p = yes_probability(&lp(&[
            ("Yes", (0.6f32).ln()),
            (" yes", (0.1f32).ln()),
            ("No", (0.2f32).ln()),
            ("Maybe", -1.0),
        ]));
        assert!((p.expect("p") - 0.7 / 0.9).abs() < 1e-6);
        assert_eq!(yes_probability(&lp(&[("Sure", -0.1)])), None);
        assert_eq!(word_score(" Yes, it does"), Some(1.0));
        assert_eq!(word_score("no."), Some(0.0));
        assert_eq!(word_score("unclear"), None);
    }
}
