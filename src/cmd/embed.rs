//! `squire embed`: print embeddings for debugging and export.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;
use squire_models::clip::{Implementation, LoadOptions, Precision};
use squire_models::image_io;

/// Print the L2-normalised embeddings of images or texts.
///
/// Examples:
///   squire embed --model clip-vit-b32 --image cat.jpg dog.png --json
///   squire embed --model ./my-clip-checkpoint --text "a red dress" "a blue shirt"
#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).multiple(true).args(["image", "text"])))]
pub struct EmbedArgs {
    /// Model name (see `squire models list`) or checkpoint directory (Hugging Face CLIPModel layout).
    #[arg(long, short)]
    model: String,
    /// Image files to embed.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    image: Vec<PathBuf>,
    /// Texts to embed.
    #[arg(long, num_args = 1.., value_name = "TEXT")]
    text: Vec<String>,
    /// Print JSON: one object per input with its vector.
    #[arg(long)]
    json: bool,
    /// Numeric precision of the forward pass.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    precision: String,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// Runs `squire embed`.
pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    let precision: Precision = a.precision.parse().map_err(anyhow::Error::msg)?;
    let model = super::load_encoder(
        &a.model,
        LoadOptions {
            precision,
            implementation: Implementation::Auto,
        },
    )?;
    let batch = a.batch.max(1);
    let mut rows: Vec<(String, &str, Vec<f32>)> = Vec::new();
    for chunk in a.image.chunks(batch) {
        let imgs = chunk
            .iter()
            .map(|p| image_io::load_rgb(p))
            .collect::<Result<Vec<_>, _>>()?;
        let v = model.embed_images(&imgs).context("embedding images")?;
        let d = model.image_dim();
        for (p, vec) in chunk.iter().zip(v.chunks(d)) {
            rows.push((p.display().to_string(), "image", vec.to_vec()));
        }
    }
    for chunk in a.text.chunks(batch) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let v = model.embed_texts(&refs).context("embedding texts")?;
        let d = model.text_dim();
        for (t, vec) in chunk.iter().zip(v.chunks(d)) {
            rows.push((t.clone(), "text", vec.to_vec()));
        }
    }
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(input, kind, v)| json!({ "input": input, "kind": kind, "dim": v.len(), "vector": v }))
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for (input, kind, v) in &rows {
            let vals: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
            println!("{kind}\t{input}\t[{}]", vals.join(", "));
        }
    }
    Ok(())
}
