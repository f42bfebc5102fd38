//! PRP, pairwise ranking prompting (Qin et al., 2024) on images: "which of
//! these two candidates better matches the query: A or B?", asked in both
//! orders so that the model's bias for a position cancels, and scored from
//! the first token's log-probabilities (P(A) / (P(A) + P(B))) where the
//! server sends them, else from the answered letter.
//!
//! The preference of i over j is the mean of s(i as A, j as B) and
//! 1 − s(j as A, i as B) over the calls that answered (0.5 when neither
//! did). Three ways to turn preferences into a ranking of the top K:
//!
//! - `allpairs`: every pair, K(K − 1) calls, all independent (run
//!   concurrently); a candidate's score is the sum of its preferences.
//! - `sorting`: a merge sort whose comparisons are pairs, 2 calls each;
//!   at most 2·(K⌈log₂K⌉ − 2^⌈log₂K⌉ + 1) calls.
//! - `sliding`: `passes` bubble passes from the bottom up, each fixing one
//!   more place at the top; 2·Σ_{p<passes}(K − 1 − p) calls (K − 1 passes
//!   sort the whole top K).
//!
//! Ties keep the prior order.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};

use crate::cost::MllmCost;
use crate::rerank::{AnswerRead, ListReranker, RerankOutcome, RerankQuery};

/// How PRP turns pairwise preferences into a ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrpMode {
    /// Every pair; a candidate's score is the sum of its preferences.
    AllPairs,
    /// A merge sort over pairwise comparisons.
    Sorting,
    /// Bubble passes from the bottom up.
    Sliding,
}

impl std::str::FromStr for PrpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allpairs" => Ok(PrpMode::AllPairs),
            "sorting" => Ok(PrpMode::Sorting),
            "sliding" => Ok(PrpMode::Sliding),
            o => Err(format!(
                "--prp-mode {o}: expected allpairs, sorting or sliding"
            )),
        }
    }
}

impl PrpMode {
    /// The mode's name in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            PrpMode::AllPairs => "allpairs",
            PrpMode::Sorting => "sorting",
            PrpMode::Sliding => "sliding",
        }
    }
}

/// Options of [`PairwiseReranker`].
#[derive(Debug, Clone, PartialEq)]
pub struct PrpOptions {
    /// Candidates reranked (the top K).
    pub k: usize,
    /// How preferences become a ranking.
    pub mode: PrpMode,
    /// Bubble passes of `sliding` (K − 1 sorts the whole top K).
    pub passes: usize,
    /// Calls in flight at once.
    pub parallel: usize,
    /// First-token alternatives asked for.
    pub top_logprobs: u32,
}

impl Default for PrpOptions {
    fn default() -> Self {
        PrpOptions {
            k: 10,
            mode: PrpMode::Sorting,
            passes: 3,
            parallel: 4,
            top_logprobs: 10,
        }
    }
}

/// The pairwise reranker.
#[derive(Debug, Clone, Default)]
pub struct PairwiseReranker {
    /// Options.
    pub options: PrpOptions,
}

/// P(A) / (P(A) + P(B)) from first-token alternatives, else 1 or 0 from
/// the answered letter; `None` when the answer is neither.
pub fn a_probability(logprobs: &[(String, f32)], text: &str) -> (Option<f64>, bool) {
    let (mut a, mut b) = (0f64, 0f64);
    for (t, lp) in logprobs {
        match t
            .trim()
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
            .as_str()
        {
            "a" => a += (*lp as f64).exp(),
            "b" => b += (*lp as f64).exp(),
            _ => {}
        }
    }
    if a + b > 0.0 {
        return (Some(a / (a + b)), true);
    }
    let t = text
        .trim_start()
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    let word = t.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
    let s = match word {
        "a" => Some(1.0),
        "b" => Some(0.0),
        _ if t.starts_with("candidate a") || t.starts_with("image a") => Some(1.0),
        _ if t.starts_with("candidate b") || t.starts_with("image b") => Some(0.0),
        _ => None,
    };
    (s, false)
}

/// What the calls of one query produced.
#[derive(Default)]
struct Tally {
    cost: MllmCost,
    answers: Vec<String>,
    failed: Vec<String>,
    without_logprobs: usize,
}

impl PairwiseReranker {
    /// The question for one ordered pair.
    pub fn request(&self, query: &RerankQuery, a: Arc<RgbImage>, b: Arc<RgbImage>) -> ChatRequest {
        let (mut parts, target) = crate::rerank::query_parts(query);
        parts.push(Part::Text("Candidate A:".into()));
        parts.push(Part::Image(a));
        parts.push(Part::Text("Candidate B:".into()));
        parts.push(Part::Image(b));
        parts.push(Part::Text(format!(
            "Which candidate better matches {target}? Answer A or B."
        )));
        let mut r = ChatRequest::new(vec![Message::user(parts)], 1);
        r.first_token_logprobs = Some(self.options.top_logprobs);
        r
    }

    /// Runs the ordered pairs `pairs` (candidate indices, A then B) with up
    /// to `parallel` calls at once; each gives s(A over B) or `None`.
    fn ask(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
        pairs: &[(usize, usize)],
        tally: &Mutex<Tally>,
    ) -> Vec<Option<f64>> {
        let requests: Vec<ChatRequest> = pairs
            .iter()
            .map(|&(a, b)| self.request(query, candidates[a].clone(), candidates[b].clone()))
            .collect();
        let results = crate::rerank::chat_all(mllm, &requests, self.options.parallel);
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        results
            .into_iter()
            .enumerate()
            .map(|(i, result)| match result {
                Ok(resp) => {
                    t.cost.record(&requests[i], &resp);
                    let (s, from_logprobs) = a_probability(&resp.first_token_logprobs, &resp.text);
                    if !from_logprobs {
                        t.without_logprobs += 1;
                    }
                    if s.is_none() {
                        let shown: String = resp.text.chars().take(40).collect();
                        t.failed.push(format!(
                            "pair ({}, {}): answered neither A nor B ({shown:?})",
                            pairs[i].0 + 1,
                            pairs[i].1 + 1
                        ));
                    }
                    t.answers.push(resp.text);
                    s
                }
                Err(e) => {
                    t.cost.record_failure(&requests[i], e.attempts());
                    t.failed.push(format!(
                        "pair ({}, {}): {e}",
                        pairs[i].0 + 1,
                        pairs[i].1 + 1
                    ));
                    t.answers.push(String::new());
                    None
                }
            })
            .collect()
    }

    /// The preference of `i` over `j` (both orders asked).
    fn prefer(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
        i: usize,
        j: usize,
        tally: &Mutex<Tally>,
    ) -> f64 {
        let s = self.ask(mllm, query, candidates, &[(i, j), (j, i)], tally);
        combine(s[0], s[1])
    }

    /// Reranks the top K of `candidates`.
    pub fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        let start = Instant::now();
        let n = self.options.k.min(candidates.len());
        let tally = Mutex::new(Tally::default());
        let mut order: Vec<usize> = (0..n).collect();
        match self.options.mode {
            PrpMode::AllPairs => {
                let mut pairs = Vec::new();
                for i in 0..n {
                    for j in i + 1..n {
                        pairs.push((i, j));
                        pairs.push((j, i));
                    }
                }
                let s = self.ask(mllm, query, candidates, &pairs, &tally);
                let mut score = vec![0f64; n];
                for (c, pair) in s.chunks(2).zip(pairs.chunks(2)) {
                    let (i, j) = pair[0];
                    let p = combine(c[0], c[1]);
                    score[i] += p;
                    score[j] += 1.0 - p;
                }
                order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
            }
            PrpMode::Sorting => {
                // `better(a, b)`: a goes first; ties keep the prior order.
                let better = |a: usize, b: usize| {
                    let p = self.prefer(mllm, query, candidates, a, b, &tally);
                    p > 0.5 || (p == 0.5 && a < b)
                };
                order = merge_sort(order, &better);
            }
            PrpMode::Sliding => {
                for pass in 0..self.options.passes.min(n.saturating_sub(1)) {
                    for i in (pass..n - 1).rev() {
                        let (upper, lower) = (order[i], order[i + 1]);
                        if self.prefer(mllm, query, candidates, lower, upper, &tally) > 0.5 {
                            order.swap(i, i + 1);
                        }
                    }
                }
            }
        }
        order.extend(n..candidates.len());
        let mut t = tally.into_inner().unwrap_or_else(|p| p.into_inner());
        t.cost.finish(start.elapsed());
        let calls = t.answers.len();
        let (read, fallback) = if !t.failed.is_empty() {
            let shown: Vec<String> = t.failed.iter().take(3).cloned().collect();
            (
                AnswerRead::Fallback,
                Some(format!(
                    "{} of {calls} call(s) gave no preference (0.5 used): {}",
                    t.failed.len(),
                    shown.join("; ")
                )),
            )
        } else if t.without_logprobs > 0 {
            (AnswerRead::Word, Some(format!("{} of {calls} answer(s) came without log-probabilities; scored from the letter", t.without_logprobs)))
        } else {
            (AnswerRead::Logprobs, None)
        };
        RerankOutcome {
            order,
            mentioned: n,
            fallback,
            read,
            answers: t.answers,
            reasoning: Vec::new(),
            grids: Vec::new(),
            cost: t.cost,
        }
    }
}

/// The preference of i over j from s(i as A) and s(j as A).
fn combine(first: Option<f64>, second: Option<f64>) -> f64 {
    match (first, second) {
        (Some(a), Some(b)) => (a + (1.0 - b)) / 2.0,
        (Some(a), None) => a,
        (None, Some(b)) => 1.0 - b,
        (None, None) => 0.5,
    }
}

/// A stable merge sort by `better(a, b)` (a before b).
fn merge_sort(v: Vec<usize>, better: &dyn Fn(usize, usize) -> bool) -> Vec<usize> {
    if v.len() <= 1 {
        return v;
    }
    let right = v[v.len() / 2..].to_vec();
    let (left, right) = (
        merge_sort(v[..v.len() / 2].to_vec(), better),
        merge_sort(right, better),
    );
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        // Take from the right only when it is strictly better.
        if better(right[j], left[i]) {
            out.push(right[j]);
            j += 1;
        } else {
            out.push(left[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&left[i..]);
    out.extend_from_slice(&right[j..]);
    out
}

/// The most calls `mode` makes for K candidates (exact for allpairs and sliding).
pub fn max_calls(mode: PrpMode, k: usize, passes: usize) -> usize {
    match mode {
        PrpMode::AllPairs => k * k.saturating_sub(1),
        PrpMode::Sorting if k <= 1 => 0,
        PrpMode::Sorting => {
            let lg = (usize::BITS - (k - 1).leading_zeros()) as usize;
            2 * (k * lg + 1 - (1usize << lg))
        }
        PrpMode::Sliding => {
            2 * (0..passes.min(k.saturating_sub(1)))
                .map(|p| k - 1 - p)
                .sum::<usize>()
        }
    }
}

impl ListReranker for PairwiseReranker {
    fn name(&self) -> &'static str {
        "prp"
    }

    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        PairwiseReranker::rerank(self, mllm, query, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_logprobs_and_formulas() {
        let lp = |t: &str, v: f64| (t.to_string(), v.ln() as f32);
        let (p, from) = a_probability(&[lp("A", 0.6), lp(" B", 0.2), lp("a", 0.2)], "A");
        assert!(from && (p.unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(a_probability(&[], "B."), (Some(0.0), false));
        assert_eq!(
            a_probability(&[], "Candidate A is better"),
            (Some(1.0), false)
        );
        assert_eq!(a_probability(&[], "both"), (None, false));
        assert_eq!(combine(Some(0.9), Some(0.3)), 0.8);
        assert_eq!(max_calls(PrpMode::AllPairs, 10, 0), 90);
        assert_eq!(max_calls(PrpMode::Sliding, 10, 9), 90);
        assert_eq!(max_calls(PrpMode::Sliding, 10, 2), 34);
        // Merge sort of 10: at most 10·4 − 16 + 1 = 25 comparisons.
        assert_eq!(max_calls(PrpMode::Sorting, 10, 0), 50);
        // The merge sort is stable and sorts.
        let key = [5, 3, 3, 9, 1, 0, 7, 7, 2, 4];
        let sorted = merge_sort((0..10).collect(), &|a, b| key[a] < key[b]);
        assert_eq!(sorted, [5, 4, 8, 1, 2, 9, 0, 6, 7, 3]);
    }
}
