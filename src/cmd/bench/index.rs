//! `squire bench index`: end-to-end indexing throughput into a fresh collection.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_indexer::{Collection, IndexOptions, StoreConfig, StoreKind};
use squire_models::clip::LoadOptions;
use squire_models::perf;

/// Arguments of `squire bench index`.
#[derive(Args)]
pub struct IndexBenchArgs {
    /// Folder of images.
    images: PathBuf,
    /// Model name or checkpoint directory.
    #[arg(long, short, default_value = "lite")]
    model: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Vector store of the collection.
    #[arg(long, default_value = "usearch")]
    store: StoreKind,
    /// Where to build the collection [default: a fresh temporary directory, removed after].
    #[arg(long)]
    index: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `squire bench index`.
pub fn run(a: IndexBenchArgs) -> anyhow::Result<()> {
    let root = a
        .images
        .canonicalize()
        .with_context(|| format!("resolving {}", a.images.display()))?;
    let t = std::time::Instant::now();
    let encoder = crate::cmd::load_encoder(&a.model, LoadOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    let temp = a.index.is_none();
    let dir = a.index.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("squire-bench-index-{}", std::process::id()))
    });
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    } else if dir.join("manifest.json").exists() {
        anyhow::bail!(
            "{} already holds a collection; bench index needs a fresh directory",
            dir.display()
        );
    }
    let config = StoreConfig {
        kind: a.store,
        ..StoreConfig::default()
    };
    let mut col = Collection::open_or_create(&dir, &a.model, encoder.as_ref(), &root, config)?;
    let opts = IndexOptions {
        batch: a.batch.max(1),
        ..IndexOptions::default()
    };
    let r = col.index(&root, encoder.as_ref(), opts, &mut |_, _| {})?;
    let embedded = r.added + r.updated;
    // The model alone on the same number of (synthetic) images in the same
    // batches: what indexing would cost if decoding were free.
    let s = encoder.input_size();
    let plane = 3 * s * s;
    let pixels: Vec<f32> = (0..a.batch.max(1) * plane)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let t = std::time::Instant::now();
    let mut left = embedded;
    while left > 0 {
        let b = left.min(a.batch.max(1));
        encoder.embed_named(&pixels[..b * plane], b)?;
        left -= b;
    }
    let model_only = t.elapsed().as_secs_f64();
    let overhead = (1.0 - model_only / r.seconds.max(1e-9)).max(0.0);
    let other = (r.seconds - r.decode_seconds - r.model_seconds).max(0.0);
    let v = json!({
        "images_dir": root.display().to_string(), "model": a.model, "batch": a.batch,
        "threads": rayon::current_num_threads(), "store": a.store.name(),
        "images": embedded, "skipped": r.skipped.len(), "model_load_seconds": load_s,
        "seconds": r.seconds, "images_per_second": embedded as f64 / r.seconds.max(1e-9),
        "decode_wait_seconds": r.decode_seconds, "decode_cpu_seconds": r.decode_cpu_seconds, "model_seconds": r.model_seconds, "other_seconds": other,
        "decode_wait_share": r.decode_seconds / r.seconds.max(1e-9),
        "model_share": r.model_seconds / r.seconds.max(1e-9),
        "model_only_seconds": model_only,
        "pipeline_overhead_share": overhead,
        "peak_rss_bytes": perf::peak_rss_bytes(),
    });
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} images in {:.1} s: {:.1} images/s ({} threads, batch {}, model {})",
        embedded,
        r.seconds,
        embedded as f64 / r.seconds.max(1e-9),
        rayon::current_num_threads(),
        a.batch,
        a.model
    );
    println!(
        "  waiting for read+decode+resize {:.1} s ({:.1}%; {:.1} CPU-s of decoding overlapped the model), \
         model {:.1} s ({:.1}%), store+checkpoints {:.1} s ({:.1}%)",
        r.decode_seconds,
        100.0 * r.decode_seconds / r.seconds.max(1e-9),
        r.decode_cpu_seconds,
        r.model_seconds,
        100.0 * r.model_seconds / r.seconds.max(1e-9),
        other,
        100.0 * other / r.seconds.max(1e-9)
    );
    println!(
        "  the model alone on {embedded} synthetic images: {model_only:.1} s → decoding, storage and checkpoints add {:.1}% to indexing",
        100.0 * overhead
    );
    if let Some(p) = perf::peak_rss_bytes() {
        println!(
            "  peak RSS {:.0} MiB; model load {:.2} s",
            p as f64 / 1048576.0,
            load_s
        );
    }
    Ok(())
}
