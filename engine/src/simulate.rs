//! A **simulated** MLLM for benchmarking the reranking logic, not any
//! model: it is told which candidates are relevant for the current query
//! and answers correctly with probability `p`, else with a random
//! permutation or a near miss (the right answer with the first relevant
//! candidate moved to second place); pointwise questions get a confident
//! right or wrong Yes/No, PRP's pairs a confident A or B (the relevant one
//! when right), FIRST's mark question first-token log-probabilities that
//! put the relevant marks first when right. It reads the requests the rerankers really build:
//! candidate images sent one by one are recognised by their pixels, grid
//! cells by matching each cell against the candidates letterboxed the same
//! way. With p = 1 a correct reranker reaches the recall ceiling of its
//! depth, which checks windowing, merging and parsing end to end.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, ChatResponse, Mllm, MllmError, Part, Usage};

use crate::copies::Rng;
use crate::grid::{draw_grid, GridOptions};

/// A candidate as the simulator knows it.
struct Known {
    signature: Vec<f32>,
    relevant: bool,
}

/// The simulated MLLM (see the module documentation).
pub struct SimulatedMllm {
    p: f64,
    seed: u64,
    grid: GridOptions,
    known: Mutex<HashMap<u64, Known>>,
}

fn pixel_hash(img: &RgbImage) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    img.dimensions().hash(&mut h);
    img.as_raw().hash(&mut h);
    h.finish()
}

/// Mean colour of 6×6 blocks over the lower 70% of a cell (clear of the
/// mark badge in the top-left corner).
fn signature(img: &RgbImage, x0: u32, y0: u32, cell: u32) -> Vec<f32> {
    let (top, n) = (y0 + cell * 3 / 10, 6u32);
    let h = cell - cell * 3 / 10;
    let mut out = Vec::with_capacity((n * n * 3) as usize);
    for by in 0..n {
        for bx in 0..n {
            let (xa, xb) = (x0 + bx * cell / n, x0 + (bx + 1) * cell / n);
            let (ya, yb) = (top + by * h / n, top + (by + 1) * h / n);
            let mut sum = [0f64; 3];
            let mut count = 0f64;
            for y in ya..yb.min(img.height()) {
                for x in xa..xb.min(img.width()) {
                    let p = img.get_pixel(x, y).0;
                    for c in 0..3 {
                        sum[c] += p[c] as f64;
                    }
                    count += 1.0;
                }
            }
            out.extend(sum.iter().map(|s| (s / count.max(1.0)) as f32));
        }
    }
    out
}

impl SimulatedMllm {
    /// A simulator right with probability `p`, reading grids drawn with `grid`'s cell size and gap.
    pub fn new(p: f64, seed: u64, grid: GridOptions) -> Self {
        SimulatedMllm {
            p: p.clamp(0.0, 1.0),
            seed,
            grid,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Tells the simulator the current query's candidates and which are relevant.
    pub fn set_query(&self, candidates: &[Arc<RgbImage>], relevant: &[bool]) {
        let cell = self.grid.cell;
        let one = GridOptions {
            cells: 1,
            columns: 1,
            ..self.grid.clone()
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.clear();
        for (c, &r) in candidates.iter().zip(relevant) {
            let drawn = draw_grid(&[c.as_ref()], 1, &one);
            let (x0, y0) = one.cell_origin(0, 0);
            known.insert(
                pixel_hash(c),
                Known {
                    signature: signature(&drawn, x0, y0, cell),
                    relevant: r,
                },
            );
        }
    }

    /// Relevance of each mark 1..=n in a listwise request.
    fn marks(&self, request: &ChatRequest, n: usize) -> Vec<bool> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(n);
        let images = request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                Part::Image(i) => Some(i),
                Part::Text(_) => None,
            });
        let step = self.grid.cell + self.grid.gap;
        for img in images {
            if out.len() >= n {
                break;
            }
            if let Some(k) = known.get(&pixel_hash(img)) {
                out.push(k.relevant);
                continue;
            }
            let (w, h) = img.dimensions();
            if w < step || (w - self.grid.gap) % step != 0 || (h - self.grid.gap) % step != 0 {
                continue; // a query or reference image
            }
            let (cols, rows) = ((w - self.grid.gap) / step, (h - self.grid.gap) / step);
            for i in 0..cols * rows {
                if out.len() >= n {
                    break;
                }
                let (x0, y0) = self.grid.cell_origin(i % cols, i / cols);
                let s = signature(img, x0, y0, self.grid.cell);
                let best = known
                    .values()
                    .map(|k| (dist(&k.signature, &s), k.relevant))
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                out.push(best.is_some_and(|(_, r)| r));
            }
        }
        out.resize(n, false);
        out
    }
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// "marks 1 to N" in the request's text.
fn marks_in_prompt(request: &ChatRequest) -> Option<usize> {
    request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .find_map(|p| match p {
            Part::Text(t) => t.split("marks 1 to ").nth(1).and_then(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            }),
            Part::Image(_) => None,
        })
}

impl Mllm for SimulatedMllm {
    fn model_id(&self) -> String {
        format!("simulated(p={})", self.p)
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.seed.hash(&mut h);
        squire_models::mllm::ResponseCache::key("simulated", request).hash(&mut h);
        let mut rng = Rng::new(h.finish());
        let right = rng.uniform(0.0, 1.0) < self.p;
        let text;
        let mut logprobs = Vec::new();
        let prompt: String = request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Image(_) => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let relevant_image = |i: &RgbImage| {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pixel_hash(i))
                .map(|k| k.relevant)
                .unwrap_or(false)
        };
        let confidence = 0.85 + 0.1 * rng.uniform(0.0, 1.0);
        if prompt.contains("Answer A or B") {
            // PRP: the last two images are A and B; the relevant one is
            // preferred when the answer is right (a coin toss between equals).
            let images: Vec<&RgbImage> = request
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter_map(|p| match p {
                    Part::Image(i) => Some(i.as_ref()),
                    Part::Text(_) => None,
                })
                .collect();
            let (a, b) = match images.as_slice() {
                [.., a, b] => (relevant_image(a), relevant_image(b)),
                _ => (false, false),
            };
            let a_wins = if a == b {
                rng.uniform(0.0, 1.0) < 0.5
            } else {
                a == right
            };
            let pa = if a_wins { confidence } else { 1.0 - confidence };
            let logprobs = vec![
                ("A".to_string(), (pa as f32).ln()),
                ("B".to_string(), ((1.0 - pa) as f32).ln()),
            ];
            return Ok(ChatResponse {
                text: if a_wins { "A".into() } else { "B".into() },
                usage: Usage::default(),
                first_token_logprobs: logprobs,
                cached: false,
                requests: 1,
                wall: Duration::ZERO,
            });
        }
        if prompt.contains("Answer with its mark only") {
            // FIRST: a right answer puts the probability mass on the relevant
            // marks (in a random order among them), a wrong one on random marks.
            let n = marks_in_prompt(request).ok_or_else(|| {
                MllmError::Config("simulated MLLM: no \"marks 1 to N\" in the prompt".into())
            })?;
            let rel = self.marks(request, n);
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            if right {
                order.sort_by_key(|&i| !rel[i]);
            }
            let top = request.first_token_logprobs.unwrap_or(20) as usize;
            let logprobs: Vec<(String, f32)> = order
                .iter()
                .take(top)
                .enumerate()
                .map(|(r, &i)| {
                    (
                        (i + 1).to_string(),
                        (-(r as f32) - (1.0 - confidence as f32)),
                    )
                })
                .collect();
            return Ok(ChatResponse {
                text: logprobs.first().map(|l| l.0.clone()).unwrap_or_default(),
                usage: Usage::default(),
                first_token_logprobs: logprobs,
                cached: false,
                requests: 1,
                wall: Duration::ZERO,
            });
        }
        if request.first_token_logprobs.is_some() {
            // Pointwise: the candidate is the last image.
            let last = request
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter_map(|p| match p {
                    Part::Image(i) => Some(i),
                    Part::Text(_) => None,
                })
                .last();
            let relevant = last
                .and_then(|i| {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&pixel_hash(i))
                        .map(|k| k.relevant)
                })
                .unwrap_or(false);
            let yes = relevant == right;
            let (py, pn) = if yes {
                (confidence, 1.0 - confidence)
            } else {
                (1.0 - confidence, confidence)
            };
            logprobs = vec![
                ("Yes".to_string(), (py as f32).ln()),
                ("No".to_string(), (pn as f32).ln()),
            ];
            text = if yes {
                "Yes".to_string()
            } else {
                "No".to_string()
            };
        } else {
            let n = marks_in_prompt(request).ok_or_else(|| {
                MllmError::Config("simulated MLLM: no \"marks 1 to N\" in the prompt".into())
            })?;
            let rel = self.marks(request, n);
            let mut good: Vec<usize> = (0..n)
                .filter(|&i| rel[i])
                .chain((0..n).filter(|&i| !rel[i]))
                .collect();
            let order = if right {
                good
            } else if rng.uniform(0.0, 1.0) < 0.5 {
                let mut o: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut o);
                o
            } else {
                if n > 1 {
                    good.swap(0, 1);
                }
                good
            };
            let marks: Vec<usize> = order.iter().map(|i| i + 1).collect();
            text =
                serde_json::json!({"reasoning": "simulated answer", "ranking": marks}).to_string();
        }
        Ok(ChatResponse {
            text,
            usage: Usage::default(),
            first_token_logprobs: logprobs,
            cached: false,
            requests: 1,
            wall: Duration::ZERO,
        })
    }
}
