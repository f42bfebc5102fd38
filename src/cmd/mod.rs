//! One module per subcommand.

pub mod bench;
pub mod embed;
pub mod models;

use anyhow::Context;
use squire_models::clip::{ClipModel, LoadOptions};
use squire_models::registry;

/// Resolves `--model` (name or directory) and loads it.
pub fn load_clip(spec: &str, opts: LoadOptions) -> anyhow::Result<ClipModel> {
    let resolved = registry::resolve(spec)?;
    tracing::info!(dir = %resolved.dir.display(), source = ?resolved.source, "model resolved");
    ClipModel::load(&resolved.dir, opts).with_context(|| format!("loading model `{spec}` from {}", resolved.dir.display()))
}
