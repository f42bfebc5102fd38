//! The evaluation harness every benchmark shares: per-query results logged
//! as they finish (so a killed run resumes where it stopped), metrics per
//! stage and per group, and the outputs researchers cross-check — a
//! Markdown table, JSON, TREC run files and qrels, a PNG chart.
//!
//! A benchmark ranks each query through the pipeline's stages, computes its
//! metrics per stage with [`crate::metrics`], and hands a [`QueryOutcome`]
//! to [`RunLog::append`]. [`Summary::from_outcomes`] averages them;
//! [`write_outputs`] writes the files.
//!
//! Files in the output folder:
//! - `run.json`: what the run is (benchmark, collection, stages, options); a
//!   rerun with other settings into the same folder is refused.
//! - `queries.jsonl`: one [`QueryOutcome`] per line, appended and flushed per query.
//! - `summary.json`, `summary.md`, `metrics.png`.
//! - `run-<stage>.trec` (`qid Q0 doc rank score squire-<stage>`) and `qrels.txt` (`qid 0 doc 1`).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cost::MllmCost;
use crate::eval::EvalError;
use crate::metrics;
use crate::pipeline::{FirstStage, Pipeline, SearchRequest, Stage};
use crate::rerank::AnswerRead;
use crate::superglobal::Ranked;

fn io_err(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stage's ranking of one query, as logged (the top of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageResult {
    /// `first`, `superglobal`, `ebr`, ...
    pub stage: String,
    /// Document ids, best first (the top `keep`).
    pub docs: Vec<String>,
    /// Their scores (a reranker's order keeps the first stage's scores).
    pub scores: Vec<f32>,
    /// Metric name → value for this stage.
    pub metrics: BTreeMap<String, f64>,
    /// Wall time of the stage, ms.
    pub ms: f64,
    /// MLLM cost of the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostRecord>,
    /// Further named rankings (CIRR: `subset`, the query's image group in this stage's order).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<String, Vec<String>>,
    /// MLLM stages: how the answers were read (`fallback`: the prior order was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<AnswerRead>,
    /// MLLM stages: why the stage fell back, or a note on how it scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl QueryOutcome {
    /// Whether an MLLM stage of this query kept the prior order for want of a usable answer.
    pub fn fell_back(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.read == Some(AnswerRead::Fallback))
    }
}

/// The cost fields logged per stage (those of `squire search --json`'s `cost`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CostRecord {
    /// Calls.
    pub calls: u32,
    /// HTTP requests sent, retries included (0 for cached answers).
    #[serde(default)]
    pub requests: u32,
    /// Wall time of the MLLM stage, ms.
    #[serde(default)]
    pub wall_ms: f64,
    /// Images sent.
    pub images: u32,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Answers from the cache.
    pub cache_hits: u32,
}

impl From<&MllmCost> for CostRecord {
    fn from(c: &MllmCost) -> Self {
        CostRecord {
            calls: c.calls,
            requests: c.requests,
            wall_ms: c.wall_ms,
            images: c.images,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            cache_hits: c.cache_hits,
        }
    }
}

/// Everything one query produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryOutcome {
    /// Query id.
    pub qid: String,
    /// Group for per-group metrics (INQUIRE supercategory, FashionIQ category); may be empty.
    #[serde(default)]
    pub group: String,
    /// The relevant documents (for qrels; empty where the split has none).
    #[serde(default)]
    pub relevant: Vec<String>,
    /// One entry per stage, in pipeline order.
    pub stages: Vec<StageResult>,
}

/// The append-only, resumable log of a run.
pub struct RunLog {
    path: PathBuf,
    file: std::fs::File,
    unsynced: usize,
}

/// Lines written between fsyncs: every line reaches the OS at once (a killed
/// process loses nothing); a machine crash loses at most this many queries.
const SYNC_EVERY: usize = 64;

impl Drop for RunLog {
    fn drop(&mut self) {
        let _ = self.file.sync_data();
    }
}

impl RunLog {
    /// Opens (or starts) the run in `out`: checks that `run.json` describes
    /// the same run as `describe` (else the folder belongs to another run and
    /// is refused), and returns the outcomes already logged. A final line cut
    /// short by a crash is dropped (that query is run again).
    pub fn open(out: &Path, describe: &Value) -> Result<(RunLog, Vec<QueryOutcome>), EvalError> {
        std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        let run_path = out.join("run.json");
        match std::fs::read(&run_path) {
            Ok(bytes) => {
                let old: Value = serde_json::from_slice(&bytes).map_err(|e| EvalError::Format {
                    path: run_path.clone(),
                    line: e.line(),
                    message: e.to_string(),
                })?;
                if &old != describe {
                    return Err(EvalError::Format {
                        path: run_path.clone(),
                        line: 1,
                        message: format!(
                            "this folder holds another run ({}), not {}: give another --out, or delete the folder to start again",
                            old, describe
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = serde_json::to_string_pretty(describe).unwrap_or_default();
                std::fs::write(&run_path, text).map_err(|e| io_err(&run_path, e))?;
            }
            Err(e) => return Err(io_err(&run_path, e)),
        }
        let path = out.join("queries.jsonl");
        let mut done = Vec::new();
        let mut good_len = 0u64;
        if let Ok(f) = std::fs::File::open(&path) {
            let mut reader = std::io::BufReader::new(f);
            let mut line = String::new();
            // A query logged twice (a fallback, then its retry) counts as its last line.
            let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(|e| io_err(&path, e))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<QueryOutcome>(&line) {
                    Ok(q) => {
                        match at.get(&q.qid) {
                            Some(&i) => done[i] = q,
                            None => {
                                at.insert(q.qid.clone(), done.len());
                                done.push(q);
                            }
                        }
                        good_len += n as u64;
                    }
                    Err(_) => break,
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // Drop a torn last line, then append after the good ones.
        file.set_len(good_len).map_err(|e| io_err(&path, e))?;
        let mut log = RunLog {
            path,
            file,
            unsynced: 0,
        };
        use std::io::Seek;
        log.file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| io_err(&log.path, e))?;
        Ok((log, done))
    }

    /// Appends one outcome (one write to the OS), syncing to disk every [`SYNC_EVERY`] lines.
    pub fn append(&mut self, q: &QueryOutcome) -> Result<(), EvalError> {
        let mut line = serde_json::to_string(q).map_err(|e| EvalError::Backend(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io_err(&self.path, e))?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        }
        Ok(())
    }
}

/// Metrics averaged over the evaluated queries.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The benchmark's name.
    pub benchmark: String,
    /// Stages in pipeline order.
    pub stages: Vec<String>,
    /// Metric names in report order.
    pub metric_names: Vec<String>,
    /// Queries evaluated.
    pub queries: usize,
    /// Queries dropped (their ids), with the reason printed by the caller.
    pub dropped: Vec<String>,
    /// Stage → metric → mean.
    pub per_stage: BTreeMap<String, BTreeMap<String, f64>>,
    /// Group → stage → metric → mean (only when queries carry groups).
    pub per_group: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// Stage → MLLM cost summed over queries.
    pub cost: BTreeMap<String, CostRecord>,
    /// Stage → mean wall time per query, ms.
    pub ms_per_query: BTreeMap<String, f64>,
    /// MLLM stage → how its answers were read (`json`, `list`, `logprobs`,
    /// `word`, `prose`, `fallback`) → queries.
    pub answers_read: BTreeMap<String, BTreeMap<String, usize>>,
    /// No MLLM stage fell back on any query (every MLLM row is the stage's own result).
    pub complete: bool,
}

fn mean_metrics<'a>(
    stage: &str,
    names: &[String],
    qs: impl Iterator<Item = &'a QueryOutcome>,
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for q in qs {
        if let Some(s) = q.stages.iter().find(|s| s.stage == stage) {
            for n in names {
                if let Some(v) = s.metrics.get(n) {
                    let e = sums.entry(n.clone()).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
            }
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n.max(1) as f64))
        .collect()
}

impl Summary {
    /// Averages `outcomes` per stage and group.
    pub fn from_outcomes(
        benchmark: &str,
        stages: &[String],
        metric_names: &[String],
        outcomes: &[QueryOutcome],
        dropped: Vec<String>,
    ) -> Summary {
        let mut per_stage = BTreeMap::new();
        let mut cost = BTreeMap::new();
        let mut ms = BTreeMap::new();
        for st in stages {
            per_stage.insert(st.clone(), mean_metrics(st, metric_names, outcomes.iter()));
            let mut c = CostRecord::default();
            let (mut total_ms, mut n) = (0.0, 0usize);
            for s in outcomes
                .iter()
                .flat_map(|q| q.stages.iter())
                .filter(|s| &s.stage == st)
            {
                if let Some(x) = &s.cost {
                    c.calls += x.calls;
                    c.requests += x.requests;
                    c.wall_ms += x.wall_ms;
                    c.images += x.images;
                    c.prompt_tokens += x.prompt_tokens;
                    c.completion_tokens += x.completion_tokens;
                    c.cache_hits += x.cache_hits;
                }
                total_ms += s.ms;
                n += 1;
            }
            if c.calls > 0 {
                cost.insert(st.clone(), c);
            }
            ms.insert(st.clone(), total_ms / n.max(1) as f64);
        }
        let mut answers_read: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for s in outcomes.iter().flat_map(|q| q.stages.iter()) {
            if let Some(r) = s.read {
                *answers_read
                    .entry(s.stage.clone())
                    .or_default()
                    .entry(r.name().to_string())
                    .or_default() += 1;
            }
        }
        let groups: std::collections::BTreeSet<&str> = outcomes
            .iter()
            .map(|q| q.group.as_str())
            .filter(|g| !g.is_empty())
            .collect();
        let per_group = groups
            .into_iter()
            .map(|g| {
                let by_stage = stages
                    .iter()
                    .map(|st| {
                        (
                            st.clone(),
                            mean_metrics(
                                st,
                                metric_names,
                                outcomes.iter().filter(|q| q.group == g),
                            ),
                        )
                    })
                    .collect();
                (g.to_string(), by_stage)
            })
            .collect();
        let mut summary = Summary {
            benchmark: benchmark.to_string(),
            stages: stages.to_vec(),
            metric_names: metric_names.to_vec(),
            queries: outcomes.len(),
            dropped,
            per_stage,
            per_group,
            cost,
            ms_per_query: ms,
            answers_read,
            complete: false,
        };
        summary.complete = summary.worst_fallback_share() == 0.0;
        summary
    }

    /// Queries whose stage `stage` fell back.
    pub fn fallbacks(&self, stage: &str) -> usize {
        self.answers_read
            .get(stage)
            .and_then(|m| m.get(AnswerRead::Fallback.name()))
            .copied()
            .unwrap_or(0)
    }

    /// The largest share of queries any MLLM stage fell back on (0 without MLLM stages).
    pub fn worst_fallback_share(&self) -> f64 {
        self.answers_read
            .keys()
            .map(|st| self.fallbacks(st) as f64 / self.queries.max(1) as f64)
            .fold(0.0, f64::max)
    }

    /// The Markdown table: one row per stage, one column per metric (in %),
    /// then ms per query; per-group tables follow when there are groups.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {} ({} queries", self.benchmark, self.queries);
        if !self.dropped.is_empty() {
            out.push_str(&format!(", {} dropped", self.dropped.len()));
        }
        out.push_str(")\n\n");
        let table = |rows: &BTreeMap<String, BTreeMap<String, f64>>, with_ms: bool| {
            let mut t = format!(
                "| stage | {} |{}\n",
                self.metric_names.join(" | "),
                if with_ms { " ms/query |" } else { "" }
            );
            t.push_str(&format!(
                "|---|{}{}\n",
                "---:|".repeat(self.metric_names.len()),
                if with_ms { "---:|" } else { "" }
            ));
            for st in &self.stages {
                let m = rows.get(st);
                let cells: Vec<String> = self
                    .metric_names
                    .iter()
                    .map(|n| {
                        m.and_then(|m| m.get(n))
                            .map_or("–".into(), |v| format!("{:.2}", v * 100.0))
                    })
                    .collect();
                t.push_str(&format!("| {st} | {} |", cells.join(" | ")));
                if with_ms {
                    t.push_str(&format!(
                        " {:.2} |",
                        self.ms_per_query.get(st).copied().unwrap_or(0.0)
                    ));
                }
                t.push('\n');
            }
            t
        };
        out.push_str(&table(&self.per_stage, true));
        for (g, rows) in &self.per_group {
            out.push_str(&format!("\n{g}:\n\n"));
            out.push_str(&table(rows, false));
        }
        if !self.cost.is_empty() {
            out.push_str("\n| stage | MLLM calls | requests | images | prompt tokens | completion tokens | cached | MLLM s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for (st, c) in &self.cost {
                out.push_str(&format!(
                    "| {st} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
                    c.calls,
                    c.requests,
                    c.images,
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.cache_hits,
                    c.wall_ms / 1e3
                ));
            }
        }
        if !self.answers_read.is_empty() {
            let names: Vec<&str> = AnswerRead::ALL.iter().map(|r| r.name()).collect();
            out.push_str(&format!(
                "\nHow the MLLM's answers were read (queries):\n\n| stage | {} |\n|---|{}\n",
                names.join(" | "),
                "---:|".repeat(names.len())
            ));
            for (st, m) in &self.answers_read {
                let cells: Vec<String> = names
                    .iter()
                    .map(|n| m.get(*n).copied().unwrap_or(0).to_string())
                    .collect();
                out.push_str(&format!("| {st} | {} |\n", cells.join(" | ")));
            }
            let fell: Vec<String> = self
                .answers_read
                .keys()
                .filter(|st| self.fallbacks(st) > 0)
                .map(|st| format!("{st} on {} of {}", self.fallbacks(st), self.queries))
                .collect();
            if fell.is_empty() {
                out.push_str(
                    "\nEvery MLLM stage ranked every query from an answer (no fallback).\n",
                );
            } else {
                out.push_str(&format!(
                    "\n**Incomplete**: the prior order was kept where no usable answer came ({}); those rows are not the stage's result.\n",
                    fell.join(", ")
                ));
            }
        }
        out.push_str("\nMetrics in %.\n");
        out
    }

    /// The chart of every metric per stage.
    pub fn chart(&self) -> image::RgbImage {
        let series: Vec<(String, Vec<f64>)> = self
            .stages
            .iter()
            .map(|st| {
                (
                    st.clone(),
                    self.metric_names
                        .iter()
                        .map(|n| {
                            self.per_stage
                                .get(st)
                                .and_then(|m| m.get(n))
                                .copied()
                                .unwrap_or(f64::NAN)
                        })
                        .collect(),
                )
            })
            .collect();
        crate::plot::bar_chart(
            &format!("{} ({} QUERIES)", self.benchmark, self.queries),
            &self.metric_names,
            &series,
        )
    }
}

/// Writes `summary.json`, `summary.md`, `metrics.png`, one TREC run per
/// stage and `qrels.txt` into `out`; returns the files written.
pub fn write_outputs(
    out: &Path,
    summary: &Summary,
    outcomes: &[QueryOutcome],
    extra: &Value,
) -> Result<Vec<PathBuf>, EvalError> {
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), EvalError> {
        let p = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io_err(&p, e))?;
        written.push(p);
        Ok(())
    };
    let mut v = serde_json::to_value(summary).map_err(|e| EvalError::Backend(e.to_string()))?;
    if let (Value::Object(o), Value::Object(x)) = (&mut v, extra) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    put(
        "summary.json",
        serde_json::to_string_pretty(&v)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    put("summary.md", summary.markdown().as_bytes())?;
    let mut png = Vec::new();
    summary
        .chart()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| EvalError::Backend(format!("drawing metrics.png: {e}")))?;
    put("metrics.png", &png)?;
    for st in &summary.stages {
        let mut trec = String::new();
        for q in outcomes {
            if let Some(s) = q.stages.iter().find(|s| &s.stage == st) {
                for (i, (d, score)) in s.docs.iter().zip(&s.scores).enumerate() {
                    // TREC tools sort by score: a reranked order gets decreasing pseudo-scores.
                    let score = if st == "first" {
                        *score as f64
                    } else {
                        (s.docs.len() - i) as f64
                    };
                    trec.push_str(&format!(
                        "{} Q0 {} {} {:.6} squire-{st}\n",
                        q.qid,
                        d,
                        i + 1,
                        score
                    ));
                }
            }
        }
        put(&format!("run-{st}.trec"), trec.as_bytes())?;
    }
    let mut qrels = String::new();
    for q in outcomes {
        for d in &q.relevant {
            qrels.push_str(&format!("{} 0 {} 1\n", q.qid, d));
        }
    }
    put("qrels.txt", qrels.as_bytes())?;
    Ok(written)
}

/// The JSON printed by `squire eval … --json`: the summary (`metrics` = the
/// last stage's, `per_stage`, `per_group`, cost) and each query's metrics per stage.
pub fn report_json(summary: &Summary, outcomes: &[QueryOutcome]) -> Value {
    let last = summary
        .stages
        .last()
        .and_then(|s| summary.per_stage.get(s))
        .cloned()
        .unwrap_or_default();
    let per_query: Vec<Value> = outcomes
        .iter()
        .map(|q| {
            let m: BTreeMap<&str, &BTreeMap<String, f64>> = q
                .stages
                .iter()
                .map(|s| (s.stage.as_str(), &s.metrics))
                .collect();
            json!({"query_id": q.qid, "group": q.group, "metrics": m})
        })
        .collect();
    json!({
        "schema": "squire.eval/1",
        "benchmark": summary.benchmark,
        "queries": summary.queries,
        "dropped": summary.dropped,
        "stages": summary.stages,
        "metrics": last,
        "per_stage": summary.per_stage,
        "per_group": summary.per_group,
        "cost": summary.cost,
        "ms_per_query": summary.ms_per_query,
        "answers_read": summary.answers_read,
        "complete": summary.complete,
        "per_query": per_query,
    })
}

/// One query of a benchmark, resolved against the collection.
#[derive(Debug, Clone, Default)]
pub struct EvalQuery {
    /// Query id.
    pub qid: String,
    /// Group for per-group metrics ("" for none).
    pub group: String,
    /// Text (the whole query, or a composed query's modification).
    pub text: Option<String>,
    /// Row of the query (reference) image.
    pub image_row: Option<usize>,
    /// A query image outside the collection (the transformed-copy queries).
    pub image_path: Option<PathBuf>,
    /// Rows of the relevant images present in the collection.
    pub relevant: HashSet<usize>,
    /// Relevant images in the whole dataset (indexed or not): AP and nDCG normalise by it.
    pub total_relevant: usize,
    /// The relevant documents' names (for qrels).
    pub relevant_names: Vec<String>,
    /// Rows left out of the ranking (a composed query's reference).
    pub exclude: Vec<usize>,
    /// Rows of a subset also ranked on its own (CIRR's img_set), logged as `subset`.
    pub subset: Vec<usize>,
}

/// How a benchmark scores one ranking (rows, best first, exclusions removed).
pub type MetricFn = dyn Fn(&[usize], &EvalQuery) -> BTreeMap<String, f64> + Send + Sync;

/// A benchmark resolved against a collection, ready to run.
pub struct Benchmark {
    /// Its name (`t2i`, `cirr`, ...).
    pub name: String,
    /// Its queries.
    pub queries: Vec<EvalQuery>,
    /// Queries dropped before the run: (id, reason).
    pub dropped: Vec<(String, String)>,
    /// Ranking depth of the first stage (rows).
    pub depth: usize,
    /// Metric names in report order (empty for a split without ground truth).
    pub metric_names: Vec<String>,
    /// The metrics of one ranking.
    pub metrics: Box<MetricFn>,
    /// Document name of each row (TREC runs, qrels, submissions).
    pub doc_names: Vec<String>,
    /// What identifies the data (files, split), recorded in `run.json`.
    pub describe: Value,
}

/// How to run a benchmark.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Reranking stages after the first stage.
    pub stages: Vec<Stage>,
    /// Documents logged per query and stage.
    pub keep: usize,
    /// HNSW breadth; `None`: exact first stage.
    pub ef: Option<usize>,
    /// Search the collection's PCA-whitened vectors (fitted by `squire whiten`).
    pub whiten: bool,
    /// SQAF for composed queries.
    pub sqaf: bool,
    /// Output folder.
    pub out: PathBuf,
    /// Keep logged outcomes whose MLLM stage fell back instead of running those queries again.
    pub accept_fallbacks: bool,
    /// Search only images whose record passes this filter (relevant images
    /// outside it stay in the relevance judgements, so they count as misses).
    pub filter: Option<squire_indexer::Filter>,
}

/// What a run produced.
pub struct RunResult {
    /// Averages.
    pub summary: Summary,
    /// Every query's outcome.
    pub outcomes: Vec<QueryOutcome>,
    /// Queries found in the log from an earlier run.
    pub resumed: usize,
    /// Logged queries run again because an MLLM stage had fallen back.
    pub retried: usize,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Runs `bench` through `pipeline`, query by query, logging each outcome
/// (a rerun into the same folder skips the queries already there), then
/// writes the outputs. `progress(done, total)` follows the queries still to run.
pub fn run_benchmark(
    pipeline: &Pipeline,
    bench: &Benchmark,
    opts: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunResult, EvalError> {
    let stage_names: Vec<String> = std::iter::once("first".to_string())
        .chain(opts.stages.iter().map(|s| s.name().to_string()))
        .collect();
    let col = pipeline.collection();
    let describe = json!({
        "schema": "squire.eval-run/1", "benchmark": bench.name, "collection": col.dir().display().to_string(),
        "generation": col.manifest().generation, "model": col.manifest().model, "stages": stage_names,
        "ef": opts.ef, "whiten": opts.whiten, "keep": opts.keep, "depth": bench.depth, "sqaf": opts.sqaf, "data": bench.describe,
        "filter": opts.filter.as_ref().map(|f| f.source().to_string()),
        "options": format!("{:?}", pipeline.options()),
    });
    let (mut log, done) = RunLog::open(&opts.out, &describe)?;
    let (mut outcomes, done_ids, retried) = resume(done, opts.accept_fallbacks);
    let resumed = outcomes.len();
    let todo: Vec<&EvalQuery> = bench
        .queries
        .iter()
        .filter(|q| !done_ids.contains(&q.qid))
        .collect();
    let root = &col.manifest().images_root;
    for (i, q) in todo.iter().enumerate() {
        progress(i, todo.len());
        let path = q
            .image_row
            .map(|row| root.join(col.records()[row].relative_path()))
            .or_else(|| q.image_path.clone());
        let image = match path {
            Some(path) => Some(std::sync::Arc::new(
                squire_models::image_io::load_rgb(&path)
                    .map_err(|e| EvalError::Backend(format!("query {}: {e}", q.qid)))?,
            )),
            None => None,
        };
        let req = SearchRequest {
            text: q.text.clone(),
            image,
            image_label: None,
            k: bench.depth + q.exclude.len(),
            alpha: 0.8,
            first_stage: if opts.whiten {
                FirstStage::Whitened
            } else {
                opts.ef
                    .map_or(FirstStage::Exact, |ef| FirstStage::Index { ef: Some(ef) })
            },
            stages: opts.stages.clone(),
            sqaf: opts.sqaf && q.text.is_some() && q.image_row.is_some(),
            filter: opts.filter.clone(),
            vector: None,
            vector_name: None,
        };
        // On a worker of the global rayon pool: the query's serial steps run
        // there instead of on this thread while the workers spin idle next
        // to it, and each parallel step starts without waking the pool from
        // outside (on 2 cores this took the SuperGlobal stage from 5.3–5.8 ms
        // to under 5).
        let res = rayon::scope(|_| pipeline.search(&req))
            .map_err(|e| EvalError::Backend(format!("query {}: {e}", q.qid)))?;
        let outcome = query_outcome(
            bench.metrics.as_ref(),
            &bench.doc_names,
            q,
            &res.first,
            res.encode_ms + res.search_ms,
            &res.stages,
            opts.keep,
        );
        log.append(&outcome)?;
        outcomes.push(outcome);
    }
    progress(todo.len(), todo.len());
    let wanted: HashSet<&str> = bench.queries.iter().map(|q| q.qid.as_str()).collect();
    let extra = json!({"run": describe, "dropped_reasons": bench.dropped.iter().map(|(id, why)| json!({"query_id": id, "reason": why})).collect::<Vec<_>>()});
    let summary_of = |o: &[QueryOutcome]| {
        Summary::from_outcomes(
            &bench.name,
            &stage_names,
            &bench.metric_names,
            o,
            bench.dropped.iter().map(|(id, _)| id.clone()).collect(),
        )
    };
    finish(
        outcomes, &wanted, summary_of, &opts.out, &extra, resumed, retried,
    )
}

/// Splits a log's outcomes into those kept and those to run again (an MLLM
/// stage fell back, unless `accept_fallbacks`): returns the kept outcomes,
/// their ids, and how many will be retried.
fn resume(
    done: Vec<QueryOutcome>,
    accept_fallbacks: bool,
) -> (Vec<QueryOutcome>, HashSet<String>, usize) {
    let before = done.len();
    let kept: Vec<QueryOutcome> = done
        .into_iter()
        .filter(|q| accept_fallbacks || !q.fell_back())
        .collect();
    let ids = kept.iter().map(|q| q.qid.clone()).collect();
    let retried = before - kept.len();
    (kept, ids, retried)
}

/// Keeps the outcomes of the queries in `wanted` (an earlier run with a
/// longer list may have logged more), summarises them and writes the outputs.
fn finish(
    mut outcomes: Vec<QueryOutcome>,
    wanted: &HashSet<&str>,
    summary_of: impl Fn(&[QueryOutcome]) -> Summary,
    out: &Path,
    extra: &Value,
    resumed: usize,
    retried: usize,
) -> Result<RunResult, EvalError> {
    outcomes.retain(|q| wanted.contains(q.qid.as_str()));
    let summary = summary_of(&outcomes);
    let files = write_outputs(out, &summary, &outcomes, extra)?;
    Ok(RunResult {
        summary,
        outcomes,
        resumed,
        retried,
        files,
    })
}

/// A query's logged outcome: the first stage and every reranking stage, each scored.
fn query_outcome(
    metric_fn: &MetricFn,
    doc_names: &[String],
    q: &EvalQuery,
    first: &[Ranked],
    first_ms: f64,
    stages: &[crate::pipeline::StageRun],
    keep: usize,
) -> QueryOutcome {
    let mut results = vec![stage_result(
        metric_fn,
        doc_names,
        q,
        "first".to_string(),
        first,
        first_ms,
        None,
        keep,
    )];
    for s in stages {
        let mut r = stage_result(
            metric_fn,
            doc_names,
            q,
            s.stage.name().to_string(),
            &s.ranking,
            s.ms,
            s.cost.as_ref().map(CostRecord::from),
            keep,
        );
        r.read = s.read;
        r.fallback = s.fallback.clone();
        results.push(r);
    }
    QueryOutcome {
        qid: q.qid.clone(),
        group: q.group.clone(),
        relevant: q.relevant_names.clone(),
        stages: results,
    }
}

/// One stage's logged result: metrics on the ranking without the excluded rows, the top `keep`.
#[allow(clippy::too_many_arguments)]
fn stage_result(
    metric_fn: &MetricFn,
    doc_names: &[String],
    q: &EvalQuery,
    stage: String,
    ranking: &[Ranked],
    ms: f64,
    cost: Option<CostRecord>,
    keep: usize,
) -> StageResult {
    let rows: Vec<usize> = ranking
        .iter()
        .map(|r| r.row)
        .filter(|r| !q.exclude.contains(r))
        .collect();
    let mut m = metric_fn(&rows, q);
    let score_of: std::collections::HashMap<usize, f32> =
        ranking.iter().map(|r| (r.row, r.score)).collect();
    let kept: Vec<usize> = rows.iter().copied().take(keep).collect();
    let mut lists = BTreeMap::new();
    if !q.subset.is_empty() {
        let subset: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|r| q.subset.contains(r))
            .collect();
        if !q.relevant.is_empty() {
            for k in [1, 2, 3] {
                m.insert(
                    format!("Rsubset@{k}"),
                    metrics::recall_at(&subset, &q.relevant, k),
                );
            }
        }
        lists.insert(
            "subset".to_string(),
            subset.iter().map(|&r| doc_names[r].clone()).collect(),
        );
    }
    StageResult {
        stage,
        docs: kept.iter().map(|&r| doc_names[r].clone()).collect(),
        scores: kept
            .iter()
            .map(|r| score_of.get(r).copied().unwrap_or(0.0))
            .collect(),
        metrics: m,
        ms,
        cost,
        lists,
        read: None,
        fallback: None,
    }
}

/// The encoder of an INQUIRE-Rerank run that re-scores (or SuperGlobal-refines)
/// the candidates, with the model spec the run log records.
#[derive(Clone, Copy)]
pub struct ListScorer<'a> {
    /// The model spec (a collection's `model`).
    pub model: &'a str,
    /// The encoder and the vector text queries compare with.
    pub encoder: crate::stages::ListEncoder<'a>,
}

/// INQUIRE-Rerank: each query's published candidates (in file order) are
/// ordered by their `clip_score` (or re-scored with `rescore`) and reranked
/// by `opts.stages`; AP over the list normalised by the positives present,
/// nDCG and MRR over the list; grouped by supercategory. Query ids are the
/// queries' positions in the files (0-based); documents are `inat24_image_id`s.
/// Without `encoder` only the MLLM stages can run, on the published order.
pub fn run_inquire_rerank(
    rerankers: &crate::stages::Rerankers,
    encoder: Option<ListScorer<'_>>,
    queries: &[crate::datasets::inquire_rerank::RerankQuery],
    describe: Value,
    rescore: bool,
    opts: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunResult, EvalError> {
    let name = "inquire-rerank";
    let stage_names: Vec<String> = std::iter::once("first".to_string())
        .chain(opts.stages.iter().map(|s| s.name().to_string()))
        .collect();
    let run_describe = json!({
        "schema": "squire.eval-run/1", "benchmark": name, "model": encoder.map(|e| e.model), "stages": stage_names,
        "keep": opts.keep, "rescore": rescore, "data": describe, "options": format!("{:?}", rerankers.options()),
    });
    let (mut log, done) = RunLog::open(&opts.out, &run_describe)?;
    let (mut outcomes, done_ids, retried) = resume(done, opts.accept_fallbacks);
    let resumed = outcomes.len();
    let metric_names: Vec<String> = ["AP", "nDCG", "MRR"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let metric_fn: Box<MetricFn> = Box::new(|ranked, q| {
        let n = ranked.len();
        BTreeMap::from([
            (
                "AP".to_string(),
                metrics::average_precision_at(ranked, &q.relevant, n, q.total_relevant),
            ),
            (
                "nDCG".to_string(),
                metrics::ndcg_at(ranked, &q.relevant, n, q.total_relevant),
            ),
            (
                "MRR".to_string(),
                metrics::reciprocal_rank(ranked, &q.relevant, n),
            ),
        ])
    });
    let need_images = rescore || !opts.stages.is_empty();
    let todo: Vec<(usize, &crate::datasets::inquire_rerank::RerankQuery)> = queries
        .iter()
        .enumerate()
        .filter(|(i, _)| !done_ids.contains(&i.to_string()))
        .collect();
    for (step, (i, rq)) in todo.iter().enumerate() {
        progress(step, todo.len());
        let mut list = Vec::with_capacity(rq.candidates.len());
        for c in &rq.candidates {
            let image = if need_images {
                squire_models::image_io::decode_rgb(&c.image, Path::new(&c.file_name)).map_err(
                    |e| {
                        EvalError::Backend(format!(
                            "query {i} ({:?}), candidate {}: {e}",
                            rq.query, c.id
                        ))
                    },
                )?
            } else {
                image::RgbImage::new(1, 1)
            };
            list.push(crate::pipeline::ListCandidate {
                image: std::sync::Arc::new(image),
                score: c.clip_score as f32,
            });
        }
        let res = rerankers
            .rerank_list(
                &rq.query,
                &list,
                &opts.stages,
                encoder.map(|e| e.encoder),
                rescore,
            )
            .map_err(|e| EvalError::Backend(format!("query {i} ({:?}): {e}", rq.query)))?;
        let relevant: HashSet<usize> = rq
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.relevant)
            .map(|(j, _)| j)
            .collect();
        let q = EvalQuery {
            qid: i.to_string(),
            group: rq.supercategory.clone(),
            text: Some(rq.query.clone()),
            total_relevant: relevant.len(),
            relevant_names: relevant
                .iter()
                .map(|&j| rq.candidates[j].id.clone())
                .collect(),
            relevant,
            ..EvalQuery::default()
        };
        let doc_names: Vec<String> = rq.candidates.iter().map(|c| c.id.clone()).collect();
        let outcome = query_outcome(
            metric_fn.as_ref(),
            &doc_names,
            &q,
            &res.first,
            res.encode_ms,
            &res.stages,
            opts.keep,
        );
        log.append(&outcome)?;
        outcomes.push(outcome);
    }
    progress(todo.len(), todo.len());
    let ids: Vec<String> = (0..queries.len()).map(|i| i.to_string()).collect();
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let summary_of = |o: &[QueryOutcome]| {
        Summary::from_outcomes(name, &stage_names, &metric_names, o, Vec::new())
    };
    finish(
        outcomes,
        &wanted,
        summary_of,
        &opts.out,
        &json!({"run": run_describe}),
        resumed,
        retried,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(qid: &str, group: &str, r1: f64) -> QueryOutcome {
        QueryOutcome {
            qid: qid.into(),
            group: group.into(),
            relevant: vec!["a.jpg".into()],
            stages: vec![StageResult {
                stage: "first".into(),
                docs: vec!["a.jpg".into(), "b.jpg".into()],
                scores: vec![0.9, 0.5],
                metrics: [("R@1".to_string(), r1)].into_iter().collect(),
                ms: 2.0,
                cost: None,
                lists: BTreeMap::new(),
                read: None,
                fallback: None,
            }],
        }
    }

    /// `outcome` with an EBR stage read as `read`.
    fn with_ebr(qid: &str, read: AnswerRead) -> QueryOutcome {
        let mut q = outcome(qid, "", 1.0);
        let mut s = q.stages[0].clone();
        s.stage = "ebr".into();
        s.read = Some(read);
        s.fallback = (read == AnswerRead::Fallback).then(|| "HTTP 503".to_string());
        q.stages.push(s);
        q
    }

    #[test]
    fn fallbacks_are_counted_and_rerun_and_the_retry_is_the_line_that_counts() {
        let dir = std::env::temp_dir().join(format!("squire-harness-fb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let describe = json!({"benchmark": "t2i"});
        let (mut log, _) = RunLog::open(&dir, &describe).unwrap();
        for (i, r) in [
            AnswerRead::Json,
            AnswerRead::Fallback,
            AnswerRead::Prose,
            AnswerRead::Fallback,
        ]
        .into_iter()
        .enumerate()
        {
            log.append(&with_ebr(&i.to_string(), r)).unwrap();
        }
        drop(log);
        let (_, done) = RunLog::open(&dir, &describe).unwrap();
        let s = Summary::from_outcomes(
            "t2i",
            &["first".into(), "ebr".into()],
            &["R@1".into()],
            &done,
            Vec::new(),
        );
        assert_eq!(
            s.answers_read["ebr"],
            BTreeMap::from([
                ("fallback".to_string(), 2),
                ("json".to_string(), 1),
                ("prose".to_string(), 1)
            ])
        );
        assert_eq!(s.fallbacks("ebr"), 2);
        assert_eq!(s.worst_fallback_share(), 0.5);
        let md = s.markdown();
        assert!(
            md.contains("| ebr | 1 | 0 | 0 | 0 | 1 | 2 |")
                && md.contains("**Incomplete**")
                && md.contains("ebr on 2 of 4"),
            "{md}"
        );
        assert_eq!(report_json(&s, &done)["complete"], json!(false));
        assert!(!s.complete);
        // A rerun keeps the clean ones and runs the two that fell back again ...
        let (kept, ids, retried) = resume(done.clone(), false);
        assert_eq!((kept.len(), retried), (2, 2));
        assert!(
            ids.contains("0")
                && ids.contains("2")
                && !ids.contains("1")
                && kept.iter().all(|q| !q.fell_back())
        );
        // ... unless asked to accept them.
        assert_eq!(resume(done, true).2, 0);
        // The retry's line, appended after the fallback's, is the one read back.
        let (mut log, _) = RunLog::open(&dir, &describe).unwrap();
        log.append(&with_ebr("1", AnswerRead::Json)).unwrap();
        drop(log);
        let (_, done) = RunLog::open(&dir, &describe).unwrap();
        assert_eq!(done.len(), 4);
        assert_eq!(done[1].stages[1].read, Some(AnswerRead::Json));
        let s = Summary::from_outcomes(
            "t2i",
            &["first".into(), "ebr".into()],
            &["R@1".into()],
            &done,
            Vec::new(),
        );
        assert_eq!(s.fallbacks("ebr"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_killed_run_resumes_without_duplicates_and_a_torn_line_is_rerun() {
        let dir = std::env::temp_dir().join(format!("squire-harness-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let describe = json!({"benchmark": "t2i", "k": 10});
        let (mut log, done) = RunLog::open(&dir, &describe).unwrap();
        assert!(done.is_empty());
        log.append(&outcome("1", "", 1.0)).unwrap();
        log.append(&outcome("2", "", 0.0)).unwrap();
        drop(log);
        // A crash in the middle of the third line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("queries.jsonl"))
            .unwrap();
        f.write_all(b"{\"qid\": \"3\", \"sta").unwrap();
        drop(f);
        let (mut log, done) = RunLog::open(&dir, &describe).unwrap();
        assert_eq!(
            done.iter().map(|q| q.qid.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        log.append(&outcome("3", "", 1.0)).unwrap();
        drop(log);
        let (_, done) = RunLog::open(&dir, &describe).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(done[2], outcome("3", "", 1.0));
        // Another run's settings are refused, naming the file.
        let e = RunLog::open(&dir, &json!({"benchmark": "t2i", "k": 50}))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("run.json") && e.to_string().contains("another run"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_tables_and_files() {
        let outs = vec![
            outcome("1", "Species", 1.0),
            outcome("2", "Context", 0.0),
            outcome("3", "Species", 0.0),
        ];
        let s = Summary::from_outcomes(
            "t2i",
            &["first".into()],
            &["R@1".into()],
            &outs,
            vec!["9".into()],
        );
        assert!((s.per_stage["first"]["R@1"] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.per_group["Species"]["first"]["R@1"], 0.5);
        let md = s.markdown();
        assert!(md.contains("| first | 33.33 | 2.00 |"), "{md}");
        assert!(md.contains("1 dropped"), "{md}");
        let dir = std::env::temp_dir().join(format!("squire-harness-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_outputs(&dir, &s, &outs, &json!({"note": 1})).unwrap();
        let trec = std::fs::read_to_string(dir.join("run-first.trec")).unwrap();
        assert_eq!(
            trec.lines().next(),
            Some("1 Q0 a.jpg 1 0.900000 squire-first")
        );
        assert_eq!(trec.lines().count(), 6);
        assert_eq!(
            std::fs::read_to_string(dir.join("qrels.txt"))
                .unwrap()
                .lines()
                .count(),
            3
        );
        assert!(image::open(dir.join("metrics.png")).is_ok());
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(v["note"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
