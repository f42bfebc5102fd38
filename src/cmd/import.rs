//! `squire import` and `squire export`: precomputed embeddings in and out,
//! in clip-retrieval's layout (img_emb/*.npy + metadata/*.parquet).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use squire_indexer::{Collection, StoreConfig, StoreKind, EXPORT_SHARD_ROWS};

/// Build or extend a collection from precomputed embeddings.
///
/// EMB_DIR is in clip-retrieval's layout (LAION's published embeddings use
/// it): img_emb/img_emb_N.npy (rows × dim, float16/32/64) and
/// metadata/metadata_N.parquet with an `image_path` column (and `caption`,
/// `url`, kept). For a model with several named vectors (the lite pack's
/// `gem` beside `text`), each further one is in <name>_emb/<name>_emb_N.npy.
/// img_emb holds the vector text queries search (CLIP's only one).
///
/// Needs no model weights, only the model's name: text and image queries
/// then need its weights, vector queries (--query-vector) do not. Vectors
/// are checked (shape, finite, non-zero) and normalised with a warning when
/// not unit length. Rows already in the collection are skipped, so a killed
/// import is resumed by running it again; `squire index` of --images later
/// embeds only files that changed.
#[derive(Args)]
pub struct ImportArgs {
    /// Folder in clip-retrieval's layout.
    emb_dir: PathBuf,
    /// Collection directory (created if absent).
    #[arg(long)]
    index: PathBuf,
    /// The model the embeddings come from (`clip-vit-b32`, `lite`, a
    /// checkpoint directory): recorded, and checked against the vectors'
    /// size when the name is known.
    #[arg(long, short)]
    model: String,
    /// Folder the images live in: `image_path` is taken relative to it
    /// (absolute paths under it are made relative), and files found there
    /// have their size, time and pixel size recorded. Without it the images
    /// are not served and MLLM rerankers cannot see them.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Vector store of a new collection: usearch (default), hnsw_rs or exact.
    #[arg(long)]
    store: Option<StoreKind>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Write a collection's embeddings in clip-retrieval's layout.
///
/// OUT_DIR gets img_emb/img_emb_N.npy (float32, the text-query vector),
/// <name>_emb/<name>_emb_N.npy for each further named vector, and
/// metadata/metadata_N.parquet (image_path, caption, url, id), in record
/// order; `squire import` reads it back.
#[derive(Args)]
pub struct ExportArgs {
    /// Collection directory.
    #[arg(long)]
    index: PathBuf,
    /// Output folder (created).
    out_dir: PathBuf,
    /// Rows per shard.
    #[arg(long, default_value_t = EXPORT_SHARD_ROWS)]
    shard_rows: usize,
}

/// Runs `squire import`.
pub fn run_import(a: ImportArgs) -> anyhow::Result<()> {
    if !a.emb_dir.is_dir() {
        anyhow::bail!("{} is not a directory", a.emb_dir.display());
    }
    let root = match &a.images {
        Some(p) => Some(
            p.canonicalize()
                .with_context(|| format!("--images {}", p.display()))?,
        ),
        None => None,
    };
    let layout = squire_models::registry::vector_layout(&a.model);
    let store = StoreConfig {
        kind: a.store.unwrap_or_default(),
        ..StoreConfig::default()
    };
    let recorded_root = root.clone().unwrap_or_else(|| a.emb_dir.clone());
    let mut col =
        Collection::open_or_create_with_layout(&a.index, &a.model, &layout, &recorded_root, store)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing [{bar:30}] {pos}/{len} shards, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = col.import(&a.emb_dir, root.as_deref(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if report.normalised > 0 {
        eprintln!(
            "warning: {} vector(s) were not unit length and were normalised",
            report.normalised
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "index": col.dir().display().to_string(), "images": col.records().len(), "report": report,
            }))?
        );
        return Ok(());
    }
    println!(
        "imported {} new image(s) from {} shard(s) ({} already present, {} with their file found) → {} images in {} ({:.1} s)",
        report.added,
        report.shards,
        report.already_present,
        report.files_found,
        col.records().len(),
        col.dir().display(),
        report.seconds
    );
    Ok(())
}

/// Runs `squire export`.
pub fn run_export(a: ExportArgs) -> anyhow::Result<()> {
    let col = Collection::open_with(&a.index, squire_indexer::OpenOptions { view: true })
        .with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let shards = col.export(&a.out_dir, a.shard_rows)?;
    println!(
        "exported {} images in {shards} shard(s) to {}",
        col.records().len(),
        a.out_dir.display()
    );
    Ok(())
}
