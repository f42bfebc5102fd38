//! `squire bench encode`: encoder throughput.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_models::clip::stock::StockClip;
use squire_models::clip::{Implementation, LoadOptions, Precision};
use squire_models::{perf, registry};

/// Arguments of `squire bench encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Model name or checkpoint directory.
    #[arg(long, short)]
    model: String,
    /// Batch sizes to measure.
    #[arg(long = "batch", default_values_t = [1usize, 32])]
    batches: Vec<usize>,
    /// Minimum seconds of measurement per configuration.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Minimum timed iterations per configuration.
    #[arg(long, default_value_t = 3)]
    min_iters: usize,
    /// Which towers to measure.
    #[arg(long, default_value = "both", value_parser = ["image", "text", "both"])]
    tower: String,
    /// Forward-pass implementation: Squire's fused CPU path, Squire's candle-tensor
    /// path, or candle-transformers' stock ClipModel.
    #[arg(long = "impl", default_value = "fast", value_parser = ["fast", "candle", "stock"])]
    implementation: String,
    /// Precision (f16 uses the candle-tensor path).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    precision: String,
    /// Tokens per text, BOS and EOS included.
    #[arg(long, default_value_t = 16)]
    text_tokens: usize,
    /// Skip the matrix-multiply peak probe.
    #[arg(long)]
    no_probe: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn time_it(
    seconds: f64,
    min_iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, usize)> {
    f()?; // warm-up
    let start = Instant::now();
    let mut n = 0;
    while n < min_iters || start.elapsed().as_secs_f64() < seconds {
        f()?;
        n += 1;
    }
    Ok((start.elapsed().as_secs_f64() / n as f64, n))
}

/// Runs `squire bench encode`.
pub fn run(a: EncodeArgs) -> anyhow::Result<()> {
    let precision: Precision = a.precision.parse().map_err(anyhow::Error::msg)?;
    let resolved = registry::resolve(&a.model)?;
    let implementation = if a.implementation == "candle" {
        Implementation::Candle
    } else {
        Implementation::Auto
    };
    let model = squire_models::clip::ClipModel::load(
        &resolved.dir,
        LoadOptions {
            precision,
            implementation,
        },
    )
    .with_context(|| format!("loading {}", resolved.dir.display()))?;
    let stock = if a.implementation == "stock" {
        Some(StockClip::load(&model.files().weights, model.config())?)
    } else {
        None
    };
    let cfg = model.config().clone();
    // GFLOP/s count the work done: the fast path's last layer runs for the pooled token only.
    let pooled = stock.is_none() && model.pools_last_layer();
    let s = cfg.vision_config.image_size;
    let threads = rayon::current_num_threads();
    let peak = if a.no_probe {
        None
    } else {
        Some(perf::matmul_peak_gflops(2.0))
    };
    let mut rows = Vec::new();
    for &b in &a.batches {
        let b = b.max(1);
        if a.tower != "text" {
            let pixels: Vec<f32> = (0..b * 3 * s * s)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let (sec, iters) = time_it(a.seconds, a.min_iters, || {
                match &stock {
                    Some(m) => m.image_features(&pixels, b).map(drop)?,
                    None => model.embed_pixels(&pixels, b).map(drop)?,
                }
                Ok(())
            })?;
            let flops = perf::clip_image_flops(&cfg, pooled) * b as f64;
            rows.push(json!({
                "tower": "image", "batch": b, "iters": iters, "seconds_per_batch": sec,
                "per_second": b as f64 / sec, "gflops": flops / sec / 1e9,
                "share_of_peak": peak.map(|p| flops / sec / 1e9 / p),
            }));
        }
        if a.tower != "image" {
            let t = a
                .text_tokens
                .clamp(2, cfg.text_config.max_position_embeddings);
            let eos = model.tokenizer().eos_id();
            let ids: Vec<Vec<u32>> = (0..b)
                .map(|j| {
                    let mut v = vec![model.tokenizer().bos_id()];
                    v.extend((1..t - 1).map(|i| ((i * 131 + j * 17) % 40_000 + 300) as u32));
                    v.push(eos);
                    v
                })
                .collect();
            let (sec, iters) = time_it(a.seconds, a.min_iters, || {
                match &stock {
                    Some(m) => m.text_features(&ids).map(drop)?,
                    None => model.embed_token_ids(&ids).map(drop)?,
                }
                Ok(())
            })?;
            let flops = perf::clip_text_flops(&cfg, t, pooled) * b as f64;
            rows.push(json!({
                "tower": "text", "batch": b, "tokens": t, "iters": iters, "seconds_per_batch": sec,
                "per_second": b as f64 / sec, "gflops": flops / sec / 1e9,
                "share_of_peak": peak.map(|p| flops / sec / 1e9 / p),
            }));
        }
    }
    let rss = perf::peak_rss_bytes();
    if a.json {
        let v = json!({
            "model": resolved.dir.display().to_string(),
            "implementation": a.implementation, "precision": a.precision, "threads": threads,
            "kernel_path": squire_kernels::cpu::simd_path_name(),
            "matmul_peak_gflops": peak, "image_gflop_per_item": perf::clip_image_flops(&cfg, pooled) / 1e9,
            "image_gflop_per_item_full_model": perf::clip_image_flops(&cfg, false) / 1e9, "last_layer_pooled_only": pooled,
            "peak_rss_bytes": rss, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} | impl {} | {} | {threads} threads | kernels {}",
        resolved.dir.display(),
        a.implementation,
        a.precision,
        squire_kernels::cpu::simd_path_name()
    );
    if let Some(p) = peak {
        println!(
            "matmul peak (probe): {p:.1} GFLOP/s; image tower {:.2} GFLOP per image performed ({:.2} for the whole model)",
            perf::clip_image_flops(&cfg, pooled) / 1e9,
            perf::clip_image_flops(&cfg, false) / 1e9
        );
    }
    println!(
        "{:<6} {:>6} {:>12} {:>14} {:>10} {:>8}",
        "tower", "batch", "items/s", "ms/batch", "GFLOP/s", "of peak"
    );
    for r in &rows {
        println!(
            "{:<6} {:>6} {:>12.2} {:>14.2} {:>10.1} {:>8}",
            r["tower"].as_str().unwrap_or(""),
            r["batch"],
            r["per_second"].as_f64().unwrap_or(0.0),
            r["seconds_per_batch"].as_f64().unwrap_or(0.0) * 1e3,
            r["gflops"].as_f64().unwrap_or(0.0),
            r["share_of_peak"]
                .as_f64()
                .map(|s| format!("{:.0}%", s * 100.0))
                .unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(r) = rss {
        println!("peak RSS: {:.0} MiB", r as f64 / 1048576.0);
    }
    Ok(())
}
