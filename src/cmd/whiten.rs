//! `squire whiten`: fit PCA-whitening on a collection's own vectors and store
//! it beside the collection; `search --whiten` and `eval copies --whiten` use it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use squire_engine::whitening::{Whitening, WhiteningParams};
use squire_indexer::{Collection, OpenOptions, VectorStore};

/// Fit PCA-whitening on a collection's vectors and store it in the collection.
///
/// Fits mean and covariance of the named vector (default: the one image
/// queries search), keeps the leading --dims components and scales each by
/// eigenvalue^(−power/2) (power 1: full whitening; 0.5, the default, shrinks
/// it, which matters when there are fewer images than dimensions). Writes
/// whitening/<vector>.{json,f32} in the collection directory, with the
/// generation and checksum of the vectors it was fitted on; after the
/// collection changes, `--whiten` refuses the stale file until this is rerun.
#[derive(Args)]
pub struct WhitenArgs {
    /// Collection directory.
    #[arg(long)]
    index: PathBuf,
    #[command(flatten)]
    params: WhitenParamsArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The fitting options shared by `whiten` and `eval copies --whiten`.
#[derive(Args, Debug, Clone)]
pub struct WhitenParamsArgs {
    /// Named vector to whiten [default: the collection's image-query vector].
    #[arg(long)]
    pub whiten_vector: Option<String>,
    /// Output dimensions; 0 keeps min(dims, images − 1).
    #[arg(long, default_value_t = 0)]
    pub whiten_dims: usize,
    /// Eigenvalue exponent: 1 full whitening, 0 a plain PCA rotation.
    #[arg(long, default_value_t = 0.5)]
    pub whiten_power: f32,
}

impl WhitenParamsArgs {
    fn params(&self) -> WhiteningParams {
        WhiteningParams {
            dims: self.whiten_dims,
            power: self.whiten_power,
            ..WhiteningParams::default()
        }
    }
}

/// Fits and stores a whitening for `vector` of `col`.
pub fn fit_and_save(
    col: &Collection,
    vector: &str,
    args: &WhitenParamsArgs,
) -> anyhow::Result<(Whitening, f64)> {
    let on = squire_engine::whitening::fitted_on(col, vector)?;
    let store = col.vectors(vector)?;
    let t = Instant::now();
    let w = Whitening::fit(store.data(), store.dim(), args.params())?;
    let secs = t.elapsed().as_secs_f64();
    w.save(col.dir(), &on)?;
    Ok((w, secs))
}

/// Runs `squire whiten`.
pub fn run(a: WhitenArgs) -> anyhow::Result<()> {
    let col = Collection::open_with(&a.index, OpenOptions { view: true })
        .with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let vector = a
        .params
        .whiten_vector
        .clone()
        .unwrap_or_else(|| col.manifest().image_query_vector.clone());
    let (w, secs) = fit_and_save(&col, &vector, &a.params)?;
    let total: f64 = w.eigenvalues.iter().map(|&l| l as f64).sum();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "vector": vector, "images": col.records().len(), "dim_in": w.dim_in, "dim_out": w.dim_out,
                "power": w.params.power, "fit_s": secs, "largest_eigenvalues": &w.eigenvalues[..w.eigenvalues.len().min(10)],
                "files": [Whitening::paths(col.dir(), &vector).0, Whitening::paths(col.dir(), &vector).1],
            }))?
        );
        return Ok(());
    }
    println!(
        "whitened `{vector}`: {} → {} dims over {} images (power {}), fitted in {secs:.2} s; the leading 10 components hold {:.1}% of the kept variance",
        w.dim_in,
        w.dim_out,
        col.records().len(),
        w.params.power,
        100.0 * w.eigenvalues.iter().take(10).map(|&l| l as f64).sum::<f64>() / total.max(f64::MIN_POSITIVE)
    );
    println!("written to {}", col.dir().join("whitening").display());
    Ok(())
}
