//! `squire eval roxford|rparis`: the Revisited Oxford/Paris protocol.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_engine::datasets::revisitop::{self, Setup};
use squire_engine::superglobal::{self, Ranked};
use squire_indexer::{Collection, IndexOptions, StoreConfig, StoreKind, VectorStore};
use squire_kernels::{Compute, Metric, Precision};
use squire_models::clip::LoadOptions;
use squire_models::{image_io, DualEncoder};

/// Arguments of `squire eval roxford` and `squire eval rparis`.
#[derive(Args)]
pub struct RevisitopArgs {
    /// Root of the revisitop data: ROOT/<dataset>/gnd_<dataset>.pkl and ROOT/<dataset>/jpg/*.jpg.
    #[arg(long)]
    data: PathBuf,
    /// Dataset folder name [default: roxford5k or rparis6k].
    #[arg(long)]
    dataset: Option<String>,
    /// The +1M distractors: a folder of images (e.g. revisitop1m's jpg/), indexed once into the cache.
    #[arg(long)]
    distractors: Option<PathBuf>,
    /// Where the database (and distractor) indexes are kept.
    #[arg(long, default_value = "squire-revisitop-cache")]
    cache: PathBuf,
    /// Model name or checkpoint directory.
    #[arg(long, short, default_value = "lite")]
    model: String,
    /// Lite pack pooling: gem, gem+, gem+rgem, gem+rgem+sgem.
    #[arg(long, default_value = "gem")]
    pool: squire_models::pooling::Pooling,
    /// Reranking to measure against the first stage: none or superglobal.
    #[arg(long, default_value = "none", value_parser = ["none", "superglobal"])]
    rerank: String,
    #[command(flatten)]
    sg: super::search::SuperGlobalArgs,
    /// PCA-whiten the descriptors, fitted on the database images (not the distractors).
    #[arg(long)]
    whiten: bool,
    #[command(flatten)]
    whitening: super::whiten::WhitenParamsArgs,
    /// Compute backend: auto, cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: squire_kernels::DeviceChoice,
    /// Print JSON (mAP in % under `metrics`, per-query AP under `per_query`).
    #[arg(long)]
    json: bool,
}

/// One indexed image set (the database, or the distractors) with its
/// descriptors, whitened when asked.
struct Indexed {
    col: Collection,
    data: Vec<f32>,
}

fn index_folder(
    dir: &Path,
    cache: &Path,
    model: &str,
    encoder: &dyn DualEncoder,
    bar: &indicatif::ProgressBar,
    what: &str,
) -> anyhow::Result<Collection> {
    let exact = StoreConfig {
        kind: StoreKind::Exact,
        ..StoreConfig::default()
    };
    let mut col = Collection::open_or_create(cache, model, encoder, dir, exact)?;
    bar.set_message(format!("indexing the {what}"));
    let report = col.index(dir, encoder, IndexOptions::default(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    if !report.skipped.is_empty() {
        eprintln!(
            "warning: {} {what} image(s) could not be read and are left out",
            report.skipped.len()
        );
    }
    Ok(col)
}

/// The query crop: the bounding box [x1, y1, x2, y2] rounded outwards and
/// clamped to the image (at least one pixel).
fn crop(img: &image::RgbImage, bbx: [f64; 4]) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let x1 = (bbx[0].floor().max(0.0) as u32).min(w.saturating_sub(1));
    let y1 = (bbx[1].floor().max(0.0) as u32).min(h.saturating_sub(1));
    let x2 = (bbx[2].ceil().max(0.0) as u32).clamp(x1 + 1, w.max(x1 + 1));
    let y2 = (bbx[3].ceil().max(0.0) as u32).clamp(y1 + 1, h.max(y1 + 1));
    image::imageops::crop_imm(img, x1, y1, (x2 - x1).min(w - x1), (y2 - y1).min(h - y1)).to_image()
}

/// Runs `squire eval roxford` / `rparis` (`default_dataset` names the folder).
pub fn run(a: RevisitopArgs, default_dataset: &str) -> anyhow::Result<()> {
    let name = a
        .dataset
        .clone()
        .unwrap_or_else(|| default_dataset.to_string());
    let gnd_path = revisitop::gnd_path(&a.data, &name);
    let ds = revisitop::load(&gnd_path)?;
    let jpg = a.data.join(&name).join("jpg");
    anyhow::ensure!(
        jpg.is_dir(),
        "{} is missing: the images go there as <name>.jpg",
        jpg.display()
    );
    let model = super::with_pooling(&a.model, a.pool)?;
    let encoder = super::load_encoder(&model, LoadOptions::default())?;
    let tag: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let bar = super::progress_bar(a.json);
    let db_col = index_folder(
        &jpg,
        &a.cache.join(format!("{name}-{tag}")),
        &model,
        encoder.as_ref(),
        &bar,
        "database",
    )?;
    let row_of: std::collections::HashMap<&str, usize> = db_col
        .records()
        .iter()
        .enumerate()
        .map(|(i, r)| (r.path.as_str(), i))
        .collect();
    // Database position i (the ground truth's numbering) → collection row.
    let rows: Vec<usize> = ds
        .images
        .iter()
        .map(|n| {
            row_of
                .get(format!("{n}.jpg").as_str())
                .copied()
                .with_context(|| {
                    format!(
                        "database image {n}.jpg is not in {} (or could not be read)",
                        jpg.display()
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let vector = db_col.manifest().image_query_vector.clone();
    let whitening = if a.whiten {
        Some(super::whiten::fit_and_save(&db_col, &vector, &a.whitening)?.0)
    } else {
        None
    };
    let prepare = |col: Collection| -> anyhow::Result<Indexed> {
        let raw = col.vectors(&vector)?.data();
        let data = match &whitening {
            Some(w) => w.apply(raw)?,
            None => raw.to_vec(),
        };
        Ok(Indexed { col, data })
    };
    // Database vectors in ground-truth order.
    let db = prepare(db_col)?;
    let dim = whitening.as_ref().map_or_else(
        || db.col.vectors(&vector).map(|s| s.dim()).unwrap_or(0),
        |w| w.dim_out,
    );
    let db_data: Vec<f32> = rows
        .iter()
        .flat_map(|&r| db.data[r * dim..(r + 1) * dim].iter().copied())
        .collect();
    let distractors = match &a.distractors {
        Some(dir) => Some(prepare(index_folder(
            dir,
            &a.cache.join(format!("distractors-{tag}")),
            &model,
            encoder.as_ref(),
            &bar,
            "distractors",
        )?)?),
        None => None,
    };
    bar.finish_and_clear();
    let compute = Compute::new(a.device)?;
    let n = ds.images.len();
    let db_gpu = compute.upload(&db_data, dim, Precision::F32)?;
    let dis_gpu = match &distractors {
        Some(d) => Some(compute.upload(&d.data, dim, Precision::F32)?),
        None => None,
    };
    let superglobal = a.rerank == "superglobal";
    let sg = a.sg.params();
    let (mut first, mut reranked) = (Vec::new(), Vec::new());
    let mut rerank_ms = Vec::new();
    let t = Instant::now();
    for (qi, qname) in ds.queries.iter().enumerate() {
        let path = jpg.join(format!("{qname}.jpg"));
        let img =
            image_io::load_rgb(&path).with_context(|| format!("query image {}", path.display()))?;
        let mut q = squire_engine::pipeline::embed_rgb(
            encoder.as_ref(),
            &crop(&img, ds.gnd[qi].bbx),
            &vector,
        )?;
        if let Some(w) = &whitening {
            q = w.apply(&q)?;
        }
        // Full ranking: database positions 0..n, distractors as n + j.
        let mut scored: Vec<(usize, f32)> = compute
            .scores(&db_gpu, &q, Metric::InnerProduct)?
            .into_iter()
            .enumerate()
            .collect();
        if let Some(d) = &dis_gpu {
            scored.extend(
                compute
                    .scores(d, &q, Metric::InnerProduct)?
                    .into_iter()
                    .enumerate()
                    .map(|(j, s)| (n + j, s)),
            );
        }
        scored.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        first.push(scored.iter().map(|x| x.0).collect::<Vec<_>>());
        if superglobal {
            // The top M descriptors as one matrix, then SuperGlobal on it.
            let m = sg.m.min(scored.len());
            let mut cand = Vec::with_capacity(m * dim);
            for &(id, _) in &scored[..m] {
                let v = if id < n {
                    &db_data[id * dim..(id + 1) * dim]
                } else {
                    &distractors.as_ref().map_or(&[][..], |d| &d.data[..])
                        [(id - n) * dim..(id - n + 1) * dim]
                };
                cand.extend_from_slice(v);
            }
            let ranking: Vec<Ranked> = (0..m)
                .map(|i| Ranked {
                    row: i,
                    score: scored[i].1,
                })
                .collect();
            let t = Instant::now();
            let rr = superglobal::rerank(&compute, &q, &cand, dim, &ranking, &sg)?;
            rerank_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let mut order: Vec<usize> = rr.iter().map(|r| scored[r.row].0).collect();
            order.extend(scored[m..].iter().map(|x| x.0));
            reranked.push(order);
        }
    }
    let query_s = t.elapsed().as_secs_f64();
    let table = |rankings: &[Vec<usize>]| {
        let mut m = serde_json::Map::new();
        let mut per = Vec::new();
        for setup in Setup::ALL {
            let (map, aps) = revisitop::mean_average_precision(rankings, &ds.gnd, setup);
            m.insert(format!("{setup:?}").to_lowercase(), json!(100.0 * map));
            per.push(aps);
        }
        (serde_json::Value::Object(m), per)
    };
    let (first_m, first_per) = table(&first);
    let mut metrics = json!({ "first_stage": first_m });
    let mut sg_per = None;
    if superglobal {
        let (m, per) = table(&reranked);
        metrics["superglobal"] = m;
        sg_per = Some(per);
    }
    rerank_ms.sort_by(f64::total_cmp);
    let per_query: Vec<_> = ds
        .queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut v = json!({"query": q, "ap_first_stage": {"easy": first_per[0][i], "medium": first_per[1][i], "hard": first_per[2][i]}});
            if let Some(p) = &sg_per {
                v["ap_superglobal"] = json!({"easy": p[0][i], "medium": p[1][i], "hard": p[2][i]});
            }
            v
        })
        .collect();
    let report = json!({
        "benchmark": name, "model": model, "pool": a.pool.to_string(), "device": compute.describe(),
        "database": n, "distractors": distractors.as_ref().map_or(0, |d| d.col.records().len()), "queries": ds.queries.len(),
        "whitening": whitening.as_ref().map(|w| json!({"dims": w.dim_out, "power": w.params.power})),
        "metrics": metrics,
        "superglobal": if superglobal { json!({"params": sg, "rerank_ms_p50": rerank_ms.get(rerank_ms.len() / 2)}) } else { serde_json::Value::Null },
        "query_s": query_s,
        "per_query": per_query,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{name}: {} queries, {n} database images{} (model {model}{})",
        ds.queries.len(),
        report["distractors"]
            .as_u64()
            .filter(|&d| d > 0)
            .map_or(String::new(), |d| format!(" + {d} distractors")),
        whitening.as_ref().map_or(String::new(), |w| format!(
            ", whitened to {} dims",
            w.dim_out
        ))
    );
    println!("| stage | mAP Easy | mAP Medium | mAP Hard |");
    println!("|---|---|---|---|");
    let row = |label: &str, m: &serde_json::Value| {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} |",
            m["easy"].as_f64().unwrap_or(0.0),
            m["medium"].as_f64().unwrap_or(0.0),
            m["hard"].as_f64().unwrap_or(0.0)
        )
    };
    row("first stage", &report["metrics"]["first_stage"]);
    if superglobal {
        row("+ SuperGlobal", &report["metrics"]["superglobal"]);
    }
    Ok(())
}
