//! `squire bench kernels`: similarity + top-k throughput against the
//! machine's roofline, on the CPU or a GPU.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use squire_kernels::{probe, Compute, DeviceChoice, Metric, Precision};
use squire_models::perf;

/// Arguments of `squire bench kernels`.
#[derive(Args)]
pub struct KernelsBenchArgs {
    /// Database rows.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Vector length.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries in the batched (compute-bound) case.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Queries in the streaming (memory-bound) case.
    #[arg(long, default_value_t = 1)]
    stream_queries: usize,
    /// Results per query.
    #[arg(long, short, default_value_t = 10)]
    k: usize,
    /// Storage precisions to measure: f32, f16.
    #[arg(long = "precision", default_values_t = ["f32".to_string(), "f16".to_string()])]
    precisions: Vec<String>,
    /// Backend: auto, cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Timed repetitions per case (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// SuperGlobal refinement case: candidates (M) × descriptor length (D).
    #[arg(long, default_value = "400x1280")]
    refine: String,
    /// Random seed of the synthetic vectors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// GPU only: also print where each top-k call's time goes (one block's
    /// similarity and select passes, submit latency), for tuning.
    #[arg(long)]
    profile: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Unit-length Gaussian vectors (splitmix64 + Box–Muller), like embeddings.
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            let (u1, u2) = (next().max(1e-300), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    v.chunks_exact_mut(dim)
        .for_each(squire_kernels::cpu::l2_normalize);
    v
}

/// Runs `squire bench kernels`.
pub fn run(a: KernelsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rows > 0 && a.dim > 0, "--rows and --dim must be positive");
    let compute = Compute::new(a.device)?;
    let device = compute.describe();
    if !a.json {
        eprintln!("generating {} × {} vectors ...", a.rows, a.dim);
    }
    let base = vectors(a.rows, a.dim, a.seed);
    let queries = vectors(a.queries.max(a.stream_queries), a.dim, a.seed + 1);
    let threads = rayon::current_num_threads();
    // Roofline: host FMA peak and streaming read bandwidth over the base itself
    // (far larger than the caches), or the GPU's copy bandwidth.
    let peak = probe::peak_gflops(1.0);
    let (bandwidth, bw_source) = match compute.gpu_context() {
        None => (probe::read_bandwidth(&base, 2.0), "host streaming read"),
        Some(g) => (
            g.copy_bandwidth(1 << 30, 5)?,
            "device buffer copy (read + write)",
        ),
    };
    let mut cases = Vec::new();
    for p in &a.precisions {
        let precision = match p.as_str() {
            "f32" => Precision::F32,
            "f16" => Precision::F16,
            other => anyhow::bail!("--precision {other}: expected f32 or f16"),
        };
        let t = Instant::now();
        let db = compute
            .upload(&base, a.dim, precision)
            .context("uploading the database")?;
        let upload_s = t.elapsed().as_secs_f64();
        for (case, nq) in [("streaming", a.stream_queries), ("batched", a.queries)] {
            if nq == 0 {
                continue;
            }
            let q = &queries[..nq * a.dim];
            let mut best = f64::INFINITY;
            for _ in 0..a.repeat.max(1) {
                let t = Instant::now();
                let hits = compute.top_k(&db, q, a.k, Metric::InnerProduct)?;
                best = best.min(t.elapsed().as_secs_f64());
                std::hint::black_box(hits);
            }
            if a.profile {
                if let Some(phases) = compute.profile_top_k(&db, q, a.k, a.repeat)? {
                    for (what, v) in phases {
                        eprintln!(
                            "profile {case} {p} q={nq}: {what}: {}",
                            if what == "blocks" {
                                format!("{v}")
                            } else {
                                format!("{:.3} ms", v * 1e3)
                            }
                        );
                    }
                }
            }
            let flops = 2.0 * nq as f64 * a.rows as f64 * a.dim as f64;
            let bytes = db.bytes() as f64;
            let gflops = flops / best / 1e9;
            let gbs = bytes / best / 1e9;
            // Roofline for one pass over the database: the slower of moving
            // the bytes and doing the arithmetic (GPU: compute ceiling unknown
            // here, so the bandwidth ceiling alone).
            let t_bw = bytes / (bandwidth * 1e9);
            let t_flop = if compute.is_gpu() {
                0.0
            } else {
                flops / (peak * 1e9)
            };
            let bound = if t_bw >= t_flop { "memory" } else { "compute" };
            cases.push(json!({
                "case": case, "precision": p, "queries": nq, "rows": a.rows, "dim": a.dim, "k": a.k,
                "seconds": best, "queries_per_s": nq as f64 / best, "gflops": gflops, "gb_per_s": gbs,
                "bound": bound, "roofline_fraction": t_bw.max(t_flop) / best, "upload_s": upload_s,
            }));
        }
    }
    // SuperGlobal's per-query cost: the M×M Gram matrix plus K = 9 neighbour
    // averaging over the top-M candidates.
    let (m, d) = a
        .refine
        .split_once('x')
        .and_then(|(m, d)| Some((m.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
        .context("--refine: expected MxD, e.g. 400x1280")?;
    let cand = vectors(m, d, a.seed + 2);
    let mut refine_times = Vec::new();
    for _ in 0..(5 * a.repeat).max(1) {
        let t = Instant::now();
        std::hint::black_box(compute.refine(&cand, d, 9, 0.15)?);
        refine_times.push(t.elapsed().as_secs_f64());
    }
    refine_times.sort_by(f64::total_cmp);
    let refine_best = refine_times[0];
    let refine_median = refine_times[refine_times.len() / 2];
    // The whole SuperGlobal stage as `search --rerank superglobal` runs it:
    // gather the top M of a 20,000-row database, refine, expand the query,
    // rescore, sort; median of the runs.
    let db_rows = 20_000.max(m);
    let database = vectors(db_rows, d, a.seed + 3);
    let query = vectors(1, d, a.seed + 4);
    let params = squire_engine::superglobal::SuperGlobalParams {
        m,
        ..Default::default()
    };
    let mut stage = Vec::new();
    for run in 0..(10 * a.repeat).max(5) {
        // Other rows every run, as other queries would have: nothing of the
        // previous run's candidates is left in cache for free.
        let ranking: Vec<squire_engine::superglobal::Ranked> = (0..m)
            .map(|i| squire_engine::superglobal::Ranked {
                row: (i * 7919 + run * 104_729) % db_rows,
                score: 1.0 - i as f32 * 1e-3,
            })
            .collect();
        let t = Instant::now();
        std::hint::black_box(squire_engine::superglobal::rerank(
            &compute, &query, &database, d, &ranking, &params,
        )?);
        stage.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stage.sort_by(f64::total_cmp);
    let stage_p50 = stage[stage.len() / 2];
    let report = json!({
        "device": device, "threads": threads, "kernel_path": squire_kernels::cpu::simd_path_name(),
        "refine": {"m": m, "dim": d, "k": 9, "ms": refine_best * 1e3, "median_ms": refine_median * 1e3, "stage_p50_ms": stage_p50},
        "roofline": {"peak_gflops": if compute.is_gpu() { Value::Null } else { json!(peak) },
                      "bandwidth_gb_per_s": bandwidth, "bandwidth_source": bw_source},
        "cases": cases,
        "peak_rss_mib": perf::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "device: {device}; {threads} threads; kernels {}",
        squire_kernels::cpu::simd_path_name()
    );
    if !compute.is_gpu() {
        println!("roofline: {peak:.1} GFLOP/s FMA peak, {bandwidth:.1} GB/s {bw_source}");
    } else {
        println!("roofline: {bandwidth:.1} GB/s {bw_source}");
    }
    println!(
        "{:<10} {:>4} {:>7} {:>10} {:>10} {:>9} {:>8} {:>8}",
        "case", "prec", "queries", "seconds", "queries/s", "GFLOP/s", "GB/s", "roofline"
    );
    for c in &cases {
        println!(
            "{:<10} {:>4} {:>7} {:>10.4} {:>10.1} {:>9.1} {:>8.1} {:>7.0}% ({})",
            c["case"].as_str().unwrap_or(""),
            c["precision"].as_str().unwrap_or(""),
            c["queries"],
            c["seconds"].as_f64().unwrap_or(0.0),
            c["queries_per_s"].as_f64().unwrap_or(0.0),
            c["gflops"].as_f64().unwrap_or(0.0),
            c["gb_per_s"].as_f64().unwrap_or(0.0),
            100.0 * c["roofline_fraction"].as_f64().unwrap_or(0.0),
            c["bound"].as_str().unwrap_or(""),
        );
    }
    println!(
        "SuperGlobal refinement, M = {m}, D = {d}, K = 9: kernel {:.2} ms best, {:.2} ms median; whole stage {stage_p50:.2} ms median",
        refine_best * 1e3,
        refine_median * 1e3
    );
    if let Some(r) = report["peak_rss_mib"].as_f64() {
        println!("peak RSS {r:.0} MiB");
    }
    Ok(())
}
