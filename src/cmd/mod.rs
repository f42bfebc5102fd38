//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod eval_bench;
pub mod eval_revisitop;
pub mod import;
pub mod index;
pub mod mllm;
pub mod models;
pub mod search;
pub mod serve;
pub mod verify;
pub mod whiten;

use anyhow::Context;
use squire_models::clip::{ClipModel, LoadOptions};
use squire_models::lite::{LiteOptions, LitePack};
use squire_models::pooling::Pooling;
use squire_models::{registry, DualEncoder};

/// Resolves `--model` (name or directory) and loads it as a CLIP model.
pub fn load_clip(spec: &str, opts: LoadOptions) -> anyhow::Result<ClipModel> {
    let resolved = registry::resolve(spec)?;
    tracing::info!(dir = %resolved.dir.display(), source = ?resolved.source, "model resolved");
    ClipModel::load(&resolved.dir, opts)
        .with_context(|| format!("loading model `{spec}` from {}", resolved.dir.display()))
}

/// Resolves `--model` and loads whichever family it names.
///
/// `lite@POOL` is the lite pack with its `gem` vector pooled by POOL (`gem+`,
/// `gem+rgem`, `gem+rgem+sgem`; see [`with_pooling`]); `CLIP@POOL` (a CLIP
/// name or directory) adds a `gem` vector pooled from the ViT's patch tokens
/// (`gem`, `gem+`, `gem+rgem`). A collection records the whole spec, so one
/// built with one pooling refuses another.
pub fn load_encoder(spec: &str, opts: LoadOptions) -> anyhow::Result<Box<dyn DualEncoder>> {
    let (name, pool) = match spec.split_once('@') {
        Some((name, pool)) => (
            name,
            pool.parse::<Pooling>()
                .map_err(|e| anyhow::anyhow!("model `{spec}`: {e}"))?,
        ),
        None => (spec, Pooling::Gem),
    };
    if name == "lite" {
        let resolved = registry::resolve(name)?;
        let pack = LitePack::load(
            &resolved.dir,
            LiteOptions {
                pool,
                ..LiteOptions::default()
            },
        )
        .with_context(|| format!("loading the lite pack from {}", resolved.dir.display()))?;
        return Ok(Box::new(pack));
    }
    if spec != name {
        // CLIP with its patch tokens pooled into a second vector, `gem`.
        let clip = load_clip(name, opts)?;
        return Ok(Box::new(
            squire_models::clip::PooledClip::new(clip, pool)
                .map_err(|e| anyhow::anyhow!("model `{spec}`: {e}"))?,
        ));
    }
    Ok(Box::new(load_clip(spec, opts)?))
}

/// The model spec for `--model M --pool P`: `M` for plain GeM, `M@P` otherwise.
pub fn with_pooling(model: &str, pool: Pooling) -> anyhow::Result<String> {
    if pool == Pooling::Gem {
        return Ok(model.to_string());
    }
    // The lite pack pools EfficientNet's feature map; a CLIP model pools its
    // patch-token grid (single-scale pipelines only).
    Ok(format!("{model}@{pool}"))
}

/// A progress bar with rate and ETA on stderr ({msg} says what is counted);
/// hidden when `hidden` (e.g. under --json).
pub fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len}, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
