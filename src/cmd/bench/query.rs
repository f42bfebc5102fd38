//! `squire bench query`: HNSW stores against exact search on real-like vectors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use serde_json::{json, Value};
use squire_indexer::store::new_store;
use squire_indexer::{
    Collection, SearchParams, StoreConfig, StoreKind, StoredPrecision, VectorStore,
};
use squire_models::perf;

/// Arguments of `squire bench query`.
#[derive(Args)]
pub struct QueryBenchArgs {
    /// Collection whose embeddings seed the synthetic vectors.
    #[arg(long)]
    index: PathBuf,
    /// Named vector to use [default: the collection's text-query vector].
    #[arg(long)]
    vector: Option<String>,
    /// Database sizes to measure.
    #[arg(long = "size", default_values_t = [100_000usize])]
    sizes: Vec<usize>,
    /// Queries per measurement.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Stores to build: usearch, usearch-f16, hnsw_rs.
    #[arg(long = "store", default_values_t = ["usearch".to_string(), "hnsw_rs".to_string()])]
    stores: Vec<String>,
    /// Search breadths to measure.
    #[arg(long = "ef", default_values_t = [16usize, 32, 64, 128, 256])]
    efs: Vec<usize>,
    /// HNSW links per node (M).
    #[arg(long, default_value_t = 16)]
    connectivity: usize,
    /// HNSW build breadth.
    #[arg(long, default_value_t = 128)]
    ef_construction: usize,
    /// Standard deviation of the added noise, relative to a unit vector.
    #[arg(long, default_value_t = 0.35)]
    noise: f32,
    /// Write base.npy, queries.npy and truth.npy (exact top-10 rows) per size here.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A small deterministic generator (splitmix64 + Box–Muller).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// `n` unit vectors, each a mixture of two seed embeddings (weight of the
/// first uniform in [0.5, 1]) plus isotropic Gaussian noise of norm ≈ `noise`.
fn synthesise(seeds: &[f32], dim: usize, n: usize, noise: f32, seed: u64) -> Vec<f32> {
    let m = seeds.len() / dim;
    let mut out = vec![0f32; n * dim];
    out.par_chunks_mut(dim).enumerate().for_each(|(i, v)| {
        let mut r = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i as u64);
        let (a, b) = (
            (r.next_u64() % m as u64) as usize,
            (r.next_u64() % m as u64) as usize,
        );
        let w = 0.5 + 0.5 * r.uniform();
        let sigma = noise / (dim as f32).sqrt();
        for (j, x) in v.iter_mut().enumerate() {
            *x = w * seeds[a * dim + j] + (1.0 - w) * seeds[b * dim + j] + sigma * r.gauss();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
    });
    out
}

fn write_npy(path: &Path, shape: &[usize], descr: &str, data: &[u8]) -> anyhow::Result<()> {
    let shape_s = match shape {
        [a] => format!("({a},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn store_config(name: &str, a: &QueryBenchArgs) -> anyhow::Result<StoreConfig> {
    let (kind, precision) = match name {
        "usearch" => (StoreKind::Usearch, StoredPrecision::F32),
        "usearch-f16" => (StoreKind::Usearch, StoredPrecision::F16),
        "hnsw_rs" => (StoreKind::HnswRs, StoredPrecision::F32),
        _ => anyhow::bail!("unknown store `{name}` (expected usearch, usearch-f16 or hnsw_rs)"),
    };
    Ok(StoreConfig {
        kind,
        precision,
        connectivity: a.connectivity,
        expansion_add: a.ef_construction,
        expansion_search: None,
    })
}

/// Measures one store: build, then recall and latency at each `ef`.
fn measure(
    name: &str,
    config: &StoreConfig,
    base: &[f32],
    queries: &[f32],
    truth: &[Vec<usize>],
    dim: usize,
    efs: &[usize],
) -> anyhow::Result<Value> {
    let n = base.len() / dim;
    let rss0 = perf::current_rss_bytes().unwrap_or(0);
    let t0 = Instant::now();
    let mut store: Box<dyn VectorStore> = new_store(config, dim)?;
    let keys: Vec<u64> = (0..n as u64).collect();
    for (k, b) in keys.chunks(10_000).zip(base.chunks(10_000 * dim)) {
        store.add(k, b)?;
    }
    let build_s = t0.elapsed().as_secs_f64();
    let rss1 = perf::current_rss_bytes().unwrap_or(0);
    let mut rows = Vec::new();
    for &ef in efs {
        let params = SearchParams { ef: Some(ef) };
        // Single-threaded latency, one query at a time.
        let mut lat = Vec::with_capacity(truth.len());
        let mut found = 0usize;
        let t = Instant::now();
        for (q, want) in queries.chunks(dim).zip(truth) {
            let s = Instant::now();
            let hits = store.search(q, 10, &params)?;
            lat.push(s.elapsed().as_secs_f64() * 1e3);
            found += hits
                .iter()
                .filter(|h| want.contains(&(h.key as usize)))
                .count();
        }
        let serial_s = t.elapsed().as_secs_f64();
        // Throughput with every core.
        let t = Instant::now();
        queries
            .par_chunks(dim)
            .try_for_each(|q| store.search(q, 10, &params).map(drop))?;
        let parallel_s = t.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let nq = truth.len();
        rows.push(json!({
            "ef": ef,
            "recall_at_10": found as f64 / (nq * 10) as f64,
            "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
            "qps_1_thread": nq as f64 / serial_s,
            "qps_all_threads": nq as f64 / parallel_s,
        }));
    }
    Ok(json!({
        "store": name, "build_seconds": build_s,
        "build_vectors_per_second": n as f64 / build_s,
        "rss_growth_bytes": rss1.saturating_sub(rss0),
        "results": rows,
    }))
}

/// Runs `squire bench query`.
pub fn run(a: QueryBenchArgs) -> anyhow::Result<()> {
    let col =
        Collection::open(&a.index).with_context(|| format!("opening {}", a.index.display()))?;
    let vector = a
        .vector
        .clone()
        .unwrap_or_else(|| col.manifest().text_query_vector.clone());
    let seeds = col.vectors(&vector)?;
    let dim = seeds.dim();
    if seeds.is_empty() {
        anyhow::bail!("the collection in {} has no vectors", a.index.display());
    }
    let configs: Vec<(String, StoreConfig)> = a
        .stores
        .iter()
        .map(|s| Ok((s.clone(), store_config(s, &a)?)))
        .collect::<anyhow::Result<_>>()?;
    let threads = rayon::current_num_threads();
    let mut sizes = Vec::new();
    for &n in &a.sizes {
        let t = Instant::now();
        let base = synthesise(seeds.data(), dim, n, a.noise, a.seed);
        let queries = synthesise(seeds.data(), dim, a.queries, a.noise, a.seed ^ 0xABCD_EF01);
        let gen_s = t.elapsed().as_secs_f64();
        let exact = squire_indexer::ExactStore::from_rows(dim, (0..n as u64).collect(), base)?;
        let t = Instant::now();
        let truth: Vec<Vec<usize>> = exact
            .search_batch(&queries, 10)?
            .iter()
            .map(|h| h.iter().map(|x| x.key as usize).collect())
            .collect();
        let exact_s = t.elapsed().as_secs_f64();
        // Exact single-query latency over the same data, for reference.
        let mut lat = Vec::new();
        for q in queries.chunks(dim).take(50) {
            let s = Instant::now();
            exact.search(q, 10, &SearchParams::default())?;
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let base = exact.data();
        lat.sort_by(f64::total_cmp);
        if let Some(d) = &a.dump {
            let dir = d.join(format!("n{n}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_npy(&dir.join("base.npy"), &[n, dim], "<f4", &f32_bytes(base))?;
            write_npy(
                &dir.join("queries.npy"),
                &[a.queries, dim],
                "<f4",
                &f32_bytes(&queries),
            )?;
            let t: Vec<u8> = truth
                .iter()
                .flat_map(|r| r.iter().flat_map(|&x| (x as i64).to_le_bytes()))
                .collect();
            write_npy(&dir.join("truth.npy"), &[a.queries, 10], "<i8", &t)?;
        }
        let mut stores = Vec::new();
        for (name, cfg) in &configs {
            if !a.json {
                eprintln!("n = {n}: building {name} …");
            }
            stores.push(measure(name, cfg, base, &queries, &truth, dim, &a.efs)?);
        }
        sizes.push(json!({
            "n": n, "dim": dim, "queries": a.queries, "generate_seconds": gen_s,
            "exact_batch_seconds": exact_s,
            "exact_single_query_p50_ms": percentile(&lat, 0.5),
            "stores": stores,
        }));
    }
    let v = json!({
        "collection": a.index.display().to_string(), "vector": vector, "seed_vectors": seeds.len(),
        "noise": a.noise, "connectivity": a.connectivity, "ef_construction": a.ef_construction,
        "threads": threads, "peak_rss_bytes": perf::peak_rss_bytes(), "sizes": sizes,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("seed: {} × {dim} `{vector}` vectors of {}; noise {}; M {}, ef_construction {}; {threads} threads",
        seeds.len(), a.index.display(), a.noise, a.connectivity, a.ef_construction);
    for s in v["sizes"].as_array().into_iter().flatten() {
        println!("\nn = {}: exact top-10 of {} queries in {:.1} s (batched); exact single query p50 {:.2} ms",
            s["n"], s["queries"], s["exact_batch_seconds"].as_f64().unwrap_or(0.0), s["exact_single_query_p50_ms"].as_f64().unwrap_or(0.0));
        println!(
            "{:<12} {:>9} {:>6} {:>10} {:>9} {:>9} {:>11} {:>11}",
            "store", "build s", "ef", "recall@10", "p50 ms", "p99 ms", "QPS 1 thr", "QPS all"
        );
        for st in s["stores"].as_array().into_iter().flatten() {
            for r in st["results"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:>9.1} {:>6} {:>10.4} {:>9.3} {:>9.3} {:>11.0} {:>11.0}",
                    st["store"].as_str().unwrap_or(""),
                    st["build_seconds"].as_f64().unwrap_or(0.0),
                    r["ef"],
                    r["recall_at_10"].as_f64().unwrap_or(0.0),
                    r["p50_ms"].as_f64().unwrap_or(0.0),
                    r["p99_ms"].as_f64().unwrap_or(0.0),
                    r["qps_1_thread"].as_f64().unwrap_or(0.0),
                    r["qps_all_threads"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    if let Some(p) = perf::peak_rss_bytes() {
        println!("\npeak RSS {:.0} MiB", p as f64 / 1048576.0);
    }
    Ok(())
}
