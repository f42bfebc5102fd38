//! CoTRR-style listwise chain-of-thought reranking (algorithms.md §3): one
//! MLLM call per window of candidates; the prompt asks for (1) the query
//! broken into its parts, (2) each candidate judged against them, (3) a
//! ranked list as JSON with the reasoning.
//!
//! Candidates go as separate images labelled "Image i" (the default, as in
//! the paper; the reference image first for composed queries) or, with
//! [`CotrrInput::Grid`], as EBR's marked grid. The prompt wording is ours.
//!
//! Windows: K candidates above one window are reranked RankGPT-style from
//! the bottom up: the window covers the last `window` of the K, then moves
//! up by `step` until it covers the top. That costs
//! 1 + ⌈(K − window) / step⌉ calls per query (K ≤ window: one call).

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};

use crate::cost::MllmCost;
use crate::grid::{draw_grid, GridOptions};
use crate::ranking::{parse_ranking_with, ParseMode};
use crate::rerank::{reasoning_of, AnswerRead, ListReranker, RerankOutcome, RerankQuery};

/// How candidates are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CotrrInput {
    /// One image per candidate, each after the text "Image i:".
    Images,
    /// EBR's marked grid (mark i = Image i).
    Grid,
}

/// Which reasoning the prompt asks for (the paper's ablations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CotrrReasoning {
    /// Deconstruction, per-image evaluation, ranking.
    Full,
    /// The ranking alone.
    None,
    /// Deconstruction, then the ranking.
    DeconstructionOnly,
    /// Per-image evaluation, then the ranking.
    EvaluationOnly,
}

impl CotrrInput {
    /// The option's spelling: `images` or `grid`.
    pub fn name(self) -> &'static str {
        match self {
            CotrrInput::Images => "images",
            CotrrInput::Grid => "grid",
        }
    }
}

impl CotrrReasoning {
    /// The option's spelling: `full`, `none`, `deconstruction`, `evaluation`.
    pub fn name(self) -> &'static str {
        match self {
            CotrrReasoning::Full => "full",
            CotrrReasoning::None => "none",
            CotrrReasoning::DeconstructionOnly => "deconstruction",
            CotrrReasoning::EvaluationOnly => "evaluation",
        }
    }
}

impl std::str::FromStr for CotrrReasoning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "full" => CotrrReasoning::Full,
            "none" => CotrrReasoning::None,
            "deconstruction" => CotrrReasoning::DeconstructionOnly,
            "evaluation" => CotrrReasoning::EvaluationOnly,
            other => {
                return Err(format!(
                    "{other:?}: expected full, none, deconstruction or evaluation"
                ))
            }
        })
    }
}

/// Options of [`CotrrReranker`].
#[derive(Debug, Clone, PartialEq)]
pub struct CotrrOptions {
    /// Candidates reranked (the top K).
    pub k: usize,
    /// Candidates per call.
    pub window: usize,
    /// How far the window moves up between calls.
    pub step: usize,
    /// Separate images or a grid.
    pub input: CotrrInput,
    /// Grid drawing, for [`CotrrInput::Grid`] (the whole window in one grid).
    pub grid: GridOptions,
    /// The reasoning asked for.
    pub reasoning: CotrrReasoning,
    /// Extra calls after an unusable answer (the paper's code: 3).
    pub retries: u32,
    /// Most answer tokens per call (0: 1,024 with reasoning, 24 + 4 per candidate without).
    pub max_tokens: u32,
    /// Whether marks in prose count (they are reported as `prose`).
    pub parse: ParseMode,
}

impl Default for CotrrOptions {
    /// The authors' defaults: the top 10 in one call, 3 retries.
    fn default() -> Self {
        CotrrOptions {
            k: 10,
            window: 10,
            step: 5,
            input: CotrrInput::Images,
            grid: GridOptions {
                cells: 16,
                ..GridOptions::default()
            },
            reasoning: CotrrReasoning::Full,
            retries: 3,
            max_tokens: 0,
            parse: ParseMode::Prose,
        }
    }
}

impl CotrrOptions {
    /// Checks the options, naming the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 || self.window < 2 {
            return Err(format!(
                "--cotrr-k {} / --cotrr-window {}: need K ≥ 1 and a window ≥ 2",
                self.k, self.window
            ));
        }
        if self.step == 0 || self.step >= self.window {
            return Err(format!(
                "--cotrr-step {}: must be at least 1 and below the window ({})",
                self.step, self.window
            ));
        }
        Ok(())
    }

    /// Calls per query for `n` candidates.
    pub fn calls(&self, n: usize) -> usize {
        let n = n.min(self.k);
        if n == 0 {
            0
        } else if n <= self.window {
            1
        } else {
            1 + (n - self.window).div_ceil(self.step)
        }
    }

    /// The windows, in call order: (start, end) ranges over positions.
    pub fn windows(&self, n: usize) -> Vec<(usize, usize)> {
        let n = n.min(self.k);
        if n == 0 {
            return Vec::new();
        }
        if n <= self.window {
            return vec![(0, n)];
        }
        let mut out = Vec::new();
        let mut end = n;
        loop {
            let start = end.saturating_sub(self.window);
            out.push((start, end));
            if start == 0 {
                break;
            }
            end = end.saturating_sub(self.step).max(self.window.min(n));
        }
        out
    }
}

/// The CoTRR listwise reranker.
#[derive(Debug, Clone, Default)]
pub struct CotrrReranker {
    /// Options.
    pub options: CotrrOptions,
}

impl CotrrReranker {
    /// A reranker with `options` (checked).
    pub fn new(options: CotrrOptions) -> Result<Self, String> {
        options.validate()?;
        Ok(CotrrReranker { options })
    }

    /// The request ranking `window` (images in the current order) for
    /// `query`; `attempt` > 0 adds the reminder after an unusable answer.
    /// Returns the request and the grid drawn, if any.
    pub fn request(
        &self,
        query: &RerankQuery,
        window: &[Arc<RgbImage>],
        attempt: u32,
    ) -> (ChatRequest, Option<RgbImage>) {
        let n = window.len();
        let composed = matches!(query, RerankQuery::Composed { .. });
        let mut parts = Vec::new();
        match query {
            RerankQuery::Text(t) => {
                parts.push(Part::Text(format!("Search query: \"{}\"", t.trim())))
            }
            RerankQuery::Image(img) => {
                parts.push(Part::Text(
                    "Query image (find the same object, place or scene):".into(),
                ));
                parts.push(Part::Image(img.clone()));
            }
            RerankQuery::Composed {
                reference,
                modification,
                caption,
            } => {
                parts.push(Part::Text("Reference image:".into()));
                parts.push(Part::Image(reference.clone()));
                let mut t = format!("Requested change: \"{}\". We look for the reference image with this change applied.", modification.trim());
                if let Some(c) = caption {
                    t.push_str(&format!(" A description of the target: \"{}\".", c.trim()));
                }
                parts.push(Part::Text(t));
            }
        }
        let mut grid = None;
        match self.options.input {
            CotrrInput::Images => {
                parts.push(Part::Text(format!(
                    "Candidates: {n} images (marks 1 to {n})."
                )));
                for (i, img) in window.iter().enumerate() {
                    parts.push(Part::Text(format!("Image {}:", i + 1)));
                    parts.push(Part::Image(img.clone()));
                }
            }
            CotrrInput::Grid => {
                let refs: Vec<&RgbImage> = window.iter().map(|c| c.as_ref()).collect();
                let g = draw_grid(
                    &refs,
                    1,
                    &GridOptions {
                        cells: n,
                        ..self.options.grid.clone()
                    },
                );
                parts.push(Part::Text(format!(
                    "Candidates: {n} images in one grid, each with a black number on a yellow badge in its top-left corner; Image i is the one marked i (marks 1 to {n})."
                )));
                parts.push(Part::Image(Arc::new(g.clone())));
                grid = Some(g);
            }
        }
        let parts_of_query = if composed {
            "what must stay as in the reference image and what the change asks for (subject, details, setting, style)"
        } else {
            "its main subject, what the subject is doing, the details that matter, the setting and the mood"
        };
        let decon = format!("First, list the parts of the query: {parts_of_query}.");
        let eval = "Then, for each image in turn, say in a few words which parts it satisfies and which it misses.";
        let rank = format!("Finally, order the images from best to worst match. Every image from 1 to {n} appears once in the ranking.");
        let (steps, json) = match self.options.reasoning {
            CotrrReasoning::Full => (format!("{decon} {eval} {rank}"), "{\"reasoning\": \"<your analysis>\", \"ranking\": [image numbers, best first]}"),
            CotrrReasoning::DeconstructionOnly => (format!("{decon} {rank}"), "{\"reasoning\": \"<the parts of the query>\", \"ranking\": [image numbers, best first]}"),
            CotrrReasoning::EvaluationOnly => (format!("{eval} {rank}"), "{\"reasoning\": \"<your notes per image>\", \"ranking\": [image numbers, best first]}"),
            CotrrReasoning::None => (rank, "{\"ranking\": [image numbers, best first]}"),
        };
        parts.push(Part::Text(format!(
            "{steps}\nAnswer with a JSON object only: {json}"
        )));
        if attempt > 0 {
            parts.push(Part::Text(
                "Your previous answer could not be read. Reply with the JSON object only.".into(),
            ));
        }
        let max_tokens = match (self.options.max_tokens, self.options.reasoning) {
            (0, CotrrReasoning::None) => 24 + 4 * n as u32,
            (0, _) => 1024,
            (m, _) => m,
        };
        let mut request = ChatRequest::new(
            vec![
                Message::system("You are an expert at judging images for a search engine. You reason carefully and answer in JSON."),
                Message::user(parts),
            ],
            max_tokens,
        );
        request.json = true;
        (request, grid)
    }

    /// Reranks the top K of `candidates` window by window.
    pub fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        let start = Instant::now();
        let n = self.options.k.min(candidates.len());
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        let mut cost = MllmCost::default();
        let (mut answers, mut reasoning, mut grids) = (Vec::new(), Vec::new(), Vec::new());
        let mut failures = Vec::new();
        let mut mentioned = 0;
        let mut read = AnswerRead::Json;
        for (ws, we) in self.options.windows(n) {
            let window: Vec<Arc<RgbImage>> = order[ws..we]
                .iter()
                .map(|&i| candidates[i].clone())
                .collect();
            let mut parsed = None;
            let mut error = None;
            for attempt in 0..=self.options.retries {
                let (request, grid) = self.request(query, &window, attempt);
                if attempt == 0 {
                    grids.extend(grid);
                }
                match mllm.chat(&request) {
                    Ok(r) => {
                        cost.record(&request, &r);
                        let p = parse_ranking_with(&r.text, window.len(), self.options.parse);
                        reasoning.extend(reasoning_of(&r.text));
                        answers.push(r.text);
                        if p.usable {
                            parsed = Some(p);
                            break;
                        }
                    }
                    Err(e) => {
                        cost.record_failure(&request, e.attempts());
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            match parsed {
                Some(p) => {
                    read = read.max(p.read());
                    mentioned += p.mentioned;
                    let reordered: Vec<usize> = p.order.iter().map(|&j| order[ws + j]).collect();
                    order.splice(ws..we, reordered);
                }
                // The window keeps its order; the others still run.
                None => {
                    read = AnswerRead::Fallback;
                    failures.push(format!(
                        "window {}..{}: {}",
                        ws + 1,
                        we,
                        error.unwrap_or_else(|| format!(
                            "unusable answer after {} call(s)",
                            self.options.retries + 1
                        ))
                    ))
                }
            }
        }
        cost.finish(start.elapsed());
        let fallback = (!failures.is_empty()).then(|| failures.join("; "));
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

impl ListReranker for CotrrReranker {
    fn name(&self) -> &'static str {
        "cotrr"
    }

    fn rerank(
        &self,
        mllm: &dyn Mllm,
        query: &RerankQuery,
        candidates: &[Arc<RgbImage>],
    ) -> RerankOutcome {
        CotrrReranker::rerank(self, mllm, query, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_run_bottom_up_and_cover_the_top() {
        let o = CotrrOptions {
            k: 20,
            window: 10,
            step: 5,
            ..CotrrOptions::default()
        };
        assert_eq!(o.windows(20), vec![(10, 20), (5, 15), (0, 10)]);
        assert_eq!(o.calls(20), 3);
        assert_eq!(o.windows(7), vec![(0, 7)]);
        let o = CotrrOptions {
            k: 23,
            window: 10,
            step: 4,
            ..CotrrOptions::default()
        };
        let w = o.windows(23);
        assert_eq!(w.len(), o.calls(23));
        assert_eq!(w.first(), Some(&(13, 23)));
        assert_eq!(w.last(), Some(&(0, 10)));
        assert_eq!(o.windows(0), Vec::<(usize, usize)>::new());
    }
}
