//! Finding a Qwen3-VL checkpoint by directory or by name, in the same order
//! as the encoders (`crate::registry`): an explicit directory;
//! `$SQUIRE_HOME/models/<name>`; the Hugging Face cache; a download through
//! the hub where a network exists.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::registry::{hf_cache_dir, hf_cache_snapshot, hf_fetch, offline, squire_home};

/// Vision-language models known by name: (name, Hugging Face repository).
pub const KNOWN_VLMS: &[(&str, &str)] = &[
    ("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct"),
    ("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct"),
    ("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct"),
];

/// Files a checkpoint directory must hold (besides its weights).
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files fetched when present.
const OPTIONAL: [&str; 3] = [
    "preprocessor_config.json",
    "generation_config.json",
    "tokenizer_config.json",
];

fn has_weights(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file()
}

fn complete(dir: &Path) -> std::result::Result<(), String> {
    if !dir.is_dir() {
        return Err("does not exist".into());
    }
    let mut missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !has_weights(dir) {
        missing.push("model.safetensors (or model.safetensors.index.json)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

/// Resolves `spec` (a directory, or a name of [`KNOWN_VLMS`]) to a checkpoint
/// directory; the error lists every place tried and how to fix it.
pub fn resolve_vlm(spec: &str) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return complete(as_path)
            .map(|()| as_path.to_path_buf())
            .map_err(|why| {
                ModelError::NotFound(format!(
                    "Qwen3-VL checkpoint directory {}: {why}",
                    as_path.display()
                ))
            });
    }
    let Some(&(name, repo)) = KNOWN_VLMS.iter().find(|(n, _)| *n == spec) else {
        let names: Vec<&str> = KNOWN_VLMS.iter().map(|(n, _)| *n).collect();
        return Err(ModelError::NotFound(format!(
            "`{spec}` is neither a Qwen3-VL checkpoint directory nor a known model name (known: {})",
            names.join(", ")
        )));
    };
    let mut tried = Vec::new();
    let home = squire_home().join("models").join(name);
    let cache = hf_cache_snapshot(repo).unwrap_or_else(|| {
        hf_cache_dir()
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots/<main>")
    });
    for dir in [home.clone(), cache] {
        match complete(&dir) {
            Ok(()) => return Ok(dir),
            Err(why) => tried.push(format!("  - {} ({why})", dir.display())),
        }
    }
    if offline() {
        tried.push("  - download skipped: SQUIRE_OFFLINE or HF_HUB_OFFLINE is set".into());
    } else {
        match download(repo) {
            Ok(dir) => return Ok(dir),
            Err(e) => tried.push(format!(
                "  - download from the Hugging Face hub ({repo}): {e}"
            )),
        }
    }
    Err(ModelError::NotFound(format!(
        "the weights of `{name}` ({repo}) are not present. Looked in:\n{}\nTo fix: put the checkpoint (config.json, tokenizer.json, \
         model*.safetensors, preprocessor_config.json) in {}, or pass --mllm-model DIR.",
        tried.join("\n"),
        home.display()
    )))
}

fn download(repo: &str) -> std::result::Result<PathBuf, String> {
    let (dir, r) = hf_fetch(repo, &REQUIRED, &OPTIONAL)?;
    match r.get("model.safetensors.index.json") {
        Ok(index) => {
            for s in super::shard_names(&index).map_err(|e| e.to_string())? {
                r.get(&s).map_err(|e| format!("{s}: {e}"))?;
            }
        }
        Err(_) => {
            r.get("model.safetensors")
                .map_err(|e| format!("model.safetensors: {e}"))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_incomplete_directories_are_explained() {
        let e = resolve_vlm("no-such-vlm").unwrap_err().to_string();
        assert!(e.contains("qwen3-vl-2b"), "{e}");
        let dir = std::env::temp_dir().join(format!("squire-vlm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let e = resolve_vlm(dir.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("model.safetensors"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
