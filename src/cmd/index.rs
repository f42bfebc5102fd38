//! `squire index`: build or update a collection from a folder of images.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use squire_indexer::{Collection, IndexOptions, StoreConfig, StoreKind, StoredPrecision};
use squire_models::clip::LoadOptions;

/// Index a folder of images (recursively) into a collection.
///
/// Incremental: a re-run embeds only new and changed files and drops records
/// of deleted ones. Crash-safe and resumable: progress is checkpointed every
/// --checkpoint images; a killed run resumes where it stopped. Unreadable
/// files are skipped and listed with the reason (exit code 0; the count of
/// skipped files is printed).
#[derive(Args)]
pub struct IndexArgs {
    /// Folder of images (jpg, jpeg, png, webp, gif, bmp, tiff), scanned recursively.
    images: PathBuf,
    /// Collection directory (created if absent).
    #[arg(long)]
    index: PathBuf,
    /// Model name or checkpoint directory (`lite`, `clip-vit-b32`, a directory).
    #[arg(long, short, default_value = "lite")]
    model: String,
    /// How the lite pack pools its image descriptor (`gem` vector): gem
    /// (GeM p = 3), gem+ (GeM+ p = 4.6), gem+rgem (Regional-GeM, then GeM+),
    /// gem+rgem+sgem (that at 3 scales merged by Scale-GeM: ~3.5× the compute).
    /// With a CLIP model, gem+ and gem+rgem add a `gem` vector pooled from the
    /// ViT's patch tokens, which image queries then search (`--model M@gem`
    /// for plain GeM; Scale-GeM is refused: CLIP's input size is fixed).
    #[arg(long, default_value = "gem")]
    pool: squire_models::pooling::Pooling,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Images between checkpoints, at least (the interval grows to a quarter
    /// of the collection, so checkpoints stay a bounded share of the run).
    #[arg(long, default_value_t = 256)]
    checkpoint: usize,
    /// Worker threads for decoding and the model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Vector store: usearch (HNSW, default), hnsw_rs (HNSW) or exact (brute
    /// force). Given for an existing collection, its index is rebuilt from the
    /// stored vectors.
    #[arg(long)]
    store: Option<StoreKind>,
    /// Element type of the HNSW vectors: f32, or f16 for half the memory (usearch).
    #[arg(long, value_parser = parse_precision)]
    precision: Option<StoredPrecision>,
    /// HNSW links per node (M) [default: 16].
    #[arg(long)]
    connectivity: Option<usize>,
    /// HNSW build breadth (ef_construction) [default: 128].
    #[arg(long)]
    ef_construction: Option<usize>,
    /// Default HNSW search breadth (ef) recorded for queries [default: by
    /// size, 128 below 200,000 vectors and 256 from there].
    #[arg(long)]
    ef: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_precision(s: &str) -> Result<StoredPrecision, String> {
    match s {
        "f32" => Ok(StoredPrecision::F32),
        "f16" => Ok(StoredPrecision::F16),
        _ => Err(format!("unknown precision `{s}` (expected f32 or f16)")),
    }
}

impl IndexArgs {
    /// `base` with the store options given on the command line applied.
    fn store_config(&self, base: StoreConfig) -> anyhow::Result<StoreConfig> {
        let c = StoreConfig {
            kind: self.store.unwrap_or(base.kind),
            precision: self.precision.unwrap_or(base.precision),
            connectivity: self.connectivity.unwrap_or(base.connectivity),
            expansion_add: self.ef_construction.unwrap_or(base.expansion_add),
            expansion_search: self.ef.or(base.expansion_search),
        };
        if !(2..=255).contains(&c.connectivity) {
            anyhow::bail!(
                "--connectivity {} is out of range (2 to 255)",
                c.connectivity
            );
        }
        if c.expansion_add == 0 || c.expansion_search == Some(0) {
            anyhow::bail!("--ef-construction and --ef must be at least 1");
        }
        if c.precision == StoredPrecision::F16 && c.kind != StoreKind::Usearch {
            anyhow::bail!("--precision f16 needs --store usearch");
        }
        Ok(c)
    }
}

/// Runs `squire index`.
pub fn run(a: IndexArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .context("setting --threads")?;
    }
    if !a.images.is_dir() {
        anyhow::bail!("{} is not a directory", a.images.display());
    }
    let root = a
        .images
        .canonicalize()
        .with_context(|| format!("resolving {}", a.images.display()))?;
    let model = super::with_pooling(&a.model, a.pool)?;
    let encoder = super::load_encoder(&model, LoadOptions::default())?;
    let mut col = Collection::open_or_create(
        &a.index,
        &model,
        encoder.as_ref(),
        &root,
        a.store_config(StoreConfig::default())?,
    )?;
    let wanted = a.store_config(col.manifest().store)?;
    if wanted != col.manifest().store {
        eprintln!(
            "rebuilding the vector store as {} ({wanted:?})",
            wanted.kind.name()
        );
        col.change_store(wanted)?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} indexing [{bar:30}] {pos}/{len} images, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let opts = IndexOptions {
        batch: a.batch.max(1),
        checkpoint_every: a.checkpoint.max(1),
    };
    let report = col.index(&root, encoder.as_ref(), opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let embedded = report.added + report.updated;
    if !report.skipped.is_empty() {
        eprintln!("warning: skipped {} file(s):", report.skipped.len());
        for (f, why) in &report.skipped {
            eprintln!("  {f}: {why}");
        }
    }
    if !report.unreadable.is_empty() {
        eprintln!(
            "warning: could not read {} folder(s) or file(s); skipped, and what they held before is kept:",
            report.unreadable.len()
        );
        for (f, why) in &report.unreadable {
            eprintln!("  {}: {why}", if f.is_empty() { "." } else { f });
        }
    }
    if !report.symlinked_folders.is_empty() {
        eprintln!(
            "note: {} symlinked folder(s) not followed (index the target folder itself): {}",
            report.symlinked_folders.len(),
            report.symlinked_folders.join(", ")
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "index": col.dir().display().to_string(), "images": col.records().len(), "report": report,
                "images_per_second": if report.seconds > 0.0 { embedded as f64 / report.seconds } else { 0.0 },
            }))?
        );
        return Ok(());
    }
    if embedded == 0 && report.removed == 0 {
        println!(
            "up to date: {} images, nothing to embed ({} unchanged)",
            col.records().len(),
            report.unchanged
        );
    } else {
        println!(
            "indexed {} new, {} changed, removed {}, kept {} unchanged → {} images in {}",
            report.added,
            report.updated,
            report.removed,
            report.unchanged,
            col.records().len(),
            col.dir().display()
        );
        if embedded > 0 {
            println!(
                "{:.1} s, {:.1} images/s (model {:.1} s; waiting for decoding {:.1} s)",
                report.seconds,
                embedded as f64 / report.seconds.max(1e-9),
                report.model_seconds,
                report.decode_seconds
            );
        }
    }
    Ok(())
}
