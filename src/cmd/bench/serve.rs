//! `squire bench serve`: a bounded load test of the web API on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_demo_ui::{AppState, ServerConfig};
use squire_engine::pipeline::{Pipeline, PipelineOptions};
use squire_indexer::{Collection, OpenOptions};
use squire_kernels::Compute;
use squire_models::clip::LoadOptions;

/// Load-test the web API: text queries (no MLLM) from 1, 8, 32 concurrent
/// clients against an in-process `squire serve` on 127.0.0.1.
///
/// Each client is a thread with its own keep-alive HTTP connection sending
/// `POST /api/search {"text", "k"}` back to back; queries cycle through
/// --queries (a text file, one per line, or a TSV whose `caption` or
/// `query` column holds them). Reports per level: p50/p90/p99/max latency,
/// requests/s and every non-200 status; then a soak run (--soak requests at
/// 8 clients) sampling resident memory every 1,000 requests. Server and
/// clients share the process, so RSS includes the client threads (a few MB).
#[derive(Args)]
pub struct ServeBenchArgs {
    /// Collection directory.
    #[arg(long)]
    index: PathBuf,
    /// Query texts: one per line, or a TSV with a `caption`/`query`/`text` column
    /// [default: a few built-in phrases].
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Concurrent clients per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests per level (after 20 warm-up requests per client).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests of the memory soak at 8 clients (0: none).
    #[arg(long, default_value_t = 10_000)]
    soak: usize,
    /// Results per query.
    #[arg(long, short, default_value_t = 10)]
    k: usize,
    /// Server workers (searches at once) [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Server waiting line; beyond workers + queue it answers 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn read_queries(path: Option<&PathBuf>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else {
        return Ok([
            "a dog running on grass",
            "a child in a red shirt",
            "two people on a beach",
            "a man riding a bike",
            "a black and white dog",
        ]
        .map(String::from)
        .to_vec());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let queries: Vec<String> = if header.contains('\t') {
        let cols: Vec<&str> = header.split('\t').collect();
        let col = cols
            .iter()
            .position(|c| ["caption", "query", "text"].contains(c))
            .with_context(|| {
                format!(
                    "{}: a TSV needs a caption, query or text column (has {cols:?})",
                    path.display()
                )
            })?;
        lines
            .filter_map(|l| l.split('\t').nth(col))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        text.lines()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    anyhow::ensure!(!queries.is_empty(), "{}: no queries", path.display());
    Ok(queries)
}

/// What one level of load measured.
struct Level {
    clients: usize,
    latencies_ms: Vec<f64>,
    statuses: std::collections::BTreeMap<u16, usize>,
    transport_errors: usize,
    seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Sends `total` requests from `clients` threads; `each` is called after every completed request.
fn load(
    url: &str,
    queries: &[String],
    k: usize,
    clients: usize,
    total: usize,
    each: &(dyn Fn(usize) + Sync),
) -> Level {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = Mutex::new((
        Vec::with_capacity(total),
        std::collections::BTreeMap::new(),
        0usize,
    ));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let body = json!({"text": queries[i % queries.len()], "k": k});
                    let t = Instant::now();
                    let status = match agent.post(url).send_json(body) {
                        Ok(r) => {
                            let _ = r.into_string();
                            Some(200u16)
                        }
                        Err(ureq::Error::Status(code, r)) => {
                            let _ = r.into_string();
                            Some(code)
                        }
                        Err(_) => None,
                    };
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if let Ok(mut g) = results.lock() {
                        match status {
                            Some(code) => {
                                if code == 200 {
                                    g.0.push(ms);
                                }
                                *g.1.entry(code).or_insert(0) += 1;
                            }
                            None => g.2 += 1,
                        }
                    }
                    each(i + 1);
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let (mut latencies_ms, statuses, transport_errors) = results.into_inner().unwrap_or_default();
    latencies_ms.sort_by(f64::total_cmp);
    Level {
        clients,
        latencies_ms,
        statuses,
        transport_errors,
        seconds,
    }
}

fn rss_mb() -> f64 {
    squire_demo_ui::Metrics::resident_bytes().unwrap_or(0) as f64 / 1048576.0
}

/// Runs `squire bench serve`.
pub fn run(a: ServeBenchArgs) -> anyhow::Result<()> {
    let queries = read_queries(a.queries.as_ref())?;
    let col = Collection::open_with(&a.index, OpenOptions { view: true })
        .with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let images = col.records().len();
    let model = col.manifest().model.clone();
    let encoder = crate::cmd::load_encoder(&model, LoadOptions::default())?;
    let pipeline = Pipeline::new(
        col,
        encoder,
        Compute::cpu(),
        None,
        PipelineOptions::default(),
    )?;
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let config = ServerConfig {
        workers,
        queue: a.queue,
        ..ServerConfig::default()
    };
    let state = Arc::new(AppState::new(Arc::new(pipeline), config)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
        [127, 0, 0, 1],
        0,
    ))))?;
    let url = format!("http://{}/api/search", listener.local_addr()?);
    rt.spawn(squire_demo_ui::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let rss_start = rss_mb();
    let mut levels = Vec::new();
    for &c in &a.clients {
        anyhow::ensure!(c > 0, "--clients: 0 clients");
        load(&url, &queries, a.k, c, 20 * c, &|_| {});
        let level = load(&url, &queries, a.k, c, a.requests, &|_| {});
        if !a.json {
            eprintln!("{c} client(s): done in {:.1} s", level.seconds);
        }
        levels.push((level, rss_mb()));
    }
    let mut soak_samples = Vec::new();
    if a.soak > 0 {
        let samples = Mutex::new(vec![(0usize, rss_mb())]);
        let bar = crate::cmd::progress_bar(a.json);
        bar.set_length(a.soak as u64);
        bar.set_message("soak");
        let level = load(&url, &queries, a.k, 8, a.soak, &|n| {
            bar.inc(1);
            if n % 1000 == 0 {
                if let Ok(mut s) = samples.lock() {
                    s.push((n, rss_mb()));
                }
            }
        });
        bar.finish_and_clear();
        soak_samples = samples.into_inner().unwrap_or_default();
        levels.push((level, rss_mb()));
    }
    let peak = squire_models::perf::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0;
    let report: Vec<_> = levels
        .iter()
        .enumerate()
        .map(|(i, (l, rss))| {
            let ok = l.latencies_ms.len();
            json!({
                "run": if i < a.clients.len() { "level" } else { "soak" },
                "clients": l.clients,
                "requests": ok + l.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum::<usize>() + l.transport_errors,
                "ok": ok,
                "statuses": l.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "transport_errors": l.transport_errors,
                "p50_ms": percentile(&l.latencies_ms, 50.0),
                "p90_ms": percentile(&l.latencies_ms, 90.0),
                "p99_ms": percentile(&l.latencies_ms, 99.0),
                "max_ms": l.latencies_ms.last().copied().unwrap_or(f64::NAN),
                "requests_per_s": ok as f64 / l.seconds,
                "rss_mb_after": rss,
            })
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "index": a.index.display().to_string(), "images": images, "model": model, "k": a.k,
                "workers": workers, "queue": a.queue, "queries": queries.len(),
                "rss_mb_start": rss_start, "rss_mb_peak": peak,
                "levels": report,
                "soak_rss_mb": soak_samples.iter().map(|(n, mb)| json!({"requests": n, "rss_mb": mb})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!("{images} images, model {model}, k {}, {workers} workers, queue {}; text queries without MLLM", a.k, a.queue);
    println!(
        "{:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}  other statuses",
        "run", "clients", "requests", "p50 ms", "p90 ms", "p99 ms", "req/s", "RSS MB"
    );
    for r in &report {
        let others: Vec<String> = r["statuses"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(s, _)| *s != "200")
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        println!(
            "{:>5} {:>7} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>9.1}  {}{}",
            r["run"].as_str().unwrap_or(""),
            r["clients"],
            r["requests"],
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p90_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["rss_mb_after"].as_f64().unwrap_or(0.0),
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            },
            if r["transport_errors"].as_u64().unwrap_or(0) > 0 {
                format!(", {} transport errors", r["transport_errors"])
            } else {
                String::new()
            },
        );
    }
    if !soak_samples.is_empty() {
        let s: Vec<String> = soak_samples
            .iter()
            .map(|(n, mb)| format!("{n}: {mb:.1}"))
            .collect();
        println!("soak RSS MB by requests: {}", s.join(", "));
    }
    println!("RSS: {rss_start:.1} MB after loading, peak {peak:.1} MB");
    Ok(())
}
