//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod index;
pub mod models;
pub mod search;

use anyhow::Context;
use squire_models::clip::{ClipModel, LoadOptions};
use squire_models::lite::{LiteOptions, LitePack};
use squire_models::{registry, DualEncoder};

/// Resolves `--model` (name or directory) and loads it as a CLIP model.
pub fn load_clip(spec: &str, opts: LoadOptions) -> anyhow::Result<ClipModel> {
    let resolved = registry::resolve(spec)?;
    tracing::info!(dir = %resolved.dir.display(), source = ?resolved.source, "model resolved");
    ClipModel::load(&resolved.dir, opts).with_context(|| format!("loading model `{spec}` from {}", resolved.dir.display()))
}

/// Resolves `--model` and loads whichever family it names.
pub fn load_encoder(spec: &str, opts: LoadOptions) -> anyhow::Result<Box<dyn DualEncoder>> {
    if spec == "lite" {
        let resolved = registry::resolve(spec)?;
        let pack = LitePack::load(&resolved.dir, LiteOptions::default())
            .with_context(|| format!("loading the lite pack from {}", resolved.dir.display()))?;
        return Ok(Box::new(pack));
    }
    Ok(Box::new(load_clip(spec, opts)?))
}

/// A progress bar with rate and ETA on stderr ({msg} says what is counted);
/// hidden when `hidden` (e.g. under --json).
pub fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}, {per_sec}, ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
