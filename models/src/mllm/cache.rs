//! An on-disk cache of MLLM answers, so that evaluations can be rerun for
//! free: one JSON file per answer, keyed by the model and everything in the
//! request (texts, image pixels, answer format, sampling settings).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{ChatRequest, ChatResponse, Mllm, MllmError, Part};

/// Answers stored under a folder as `<key[0..2]>/<key>.json`.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

/// Bumped when the key's recipe or the file's layout changes.
const VERSION: &str = "squire.mllm-cache/1";

impl ResponseCache {
    /// A cache in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResponseCache { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of `request` sent to `model`: SHA-256 over the model id, the
    /// answer format, the sampling settings and every part, images by the
    /// hash of their size and pixels.
    pub fn key(model: &str, request: &ChatRequest) -> String {
        let mut h = Sha256::new();
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("v", VERSION.as_bytes());
        field("model", model.as_bytes());
        field("json", &[u8::from(request.json)]);
        field("max_tokens", &request.max_tokens.to_le_bytes());
        field("temperature", &request.temperature.to_bits().to_le_bytes());
        field(
            "logprobs",
            &request
                .first_token_logprobs
                .map_or(-1i64, i64::from)
                .to_le_bytes(),
        );
        for m in &request.messages {
            field("role", format!("{:?}", m.role).as_bytes());
            for p in &m.content {
                match p {
                    Part::Text(t) => field("text", t.as_bytes()),
                    Part::Image(img) => {
                        let mut ih = Sha256::new();
                        ih.update(img.width().to_le_bytes());
                        ih.update(img.height().to_le_bytes());
                        ih.update(img.as_raw());
                        field("image", &ih.finalize());
                    }
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The stored answer for `key`, if any. A file that cannot be parsed is
    /// treated as missing (and overwritten by the next answer).
    pub fn get(&self, key: &str) -> Option<ChatResponse> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        match serde_json::from_slice::<ChatResponse>(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "ignoring unreadable MLLM cache entry {}: {e}",
                    self.path(key).display()
                );
                None
            }
        }
    }

    /// Stores `response` under `key` (written to a temporary file, then renamed).
    pub fn put(&self, key: &str, response: &ChatResponse) -> Result<(), MllmError> {
        let path = self.path(key);
        let err = |p: &Path, e: &dyn std::fmt::Display| MllmError::Cache {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| err(parent, &e))?;
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let bytes = serde_json::to_vec(response).map_err(|e| err(&path, &e))?;
        std::fs::write(&tmp, bytes).map_err(|e| err(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, &e))
    }
}

/// Any [`Mllm`] with a [`ResponseCache`] in front: an identical request is
/// answered from disk without reaching the model.
pub struct Cached<M> {
    inner: M,
    cache: ResponseCache,
    scope: Option<String>,
}

impl<M: Mllm> Cached<M> {
    /// `inner` behind `cache`, keyed by the model id alone: every endpoint
    /// serving a model of that name shares the answers (the keys of caches
    /// written before endpoints were part of them).
    pub fn new(inner: M, cache: ResponseCache) -> Self {
        Cached {
            inner,
            cache,
            scope: None,
        }
    }

    /// `inner` behind `cache`, keyed by `endpoint` (the server's URL) and
    /// the model id: a second server answering for the same model name
    /// (llama.cpp's and Ollama's names are often generic) gets its own answers.
    pub fn for_endpoint(inner: M, cache: ResponseCache, endpoint: &str) -> Self {
        Cached {
            inner,
            cache,
            scope: Some(endpoint.to_string()),
        }
    }

    /// The id the keys are made from: the model id, after the endpoint when scoped.
    fn key_id(&self) -> String {
        match &self.scope {
            Some(endpoint) => format!("{endpoint}\u{1f}{}", self.inner.model_id()),
            None => self.inner.model_id(),
        }
    }
}

impl<M: Mllm> Mllm for Cached<M> {
    fn model_id(&self) -> String {
        self.inner.model_id()
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError> {
        let start = Instant::now();
        let key = ResponseCache::key(&self.key_id(), request);
        if let Some(mut hit) = self.cache.get(&key) {
            hit.cached = true;
            hit.requests = 0;
            hit.wall = start.elapsed();
            return Ok(hit);
        }
        let answer = self.inner.chat(request)?;
        if let Err(e) = self.cache.put(&key, &answer) {
            tracing::warn!("{e}");
        }
        Ok(answer)
    }
}
