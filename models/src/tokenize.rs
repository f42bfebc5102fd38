//! CLIP text tokenisation through the `tokenizers` crate, from a checkpoint's
//! `tokenizer.json`: BOS + BPE tokens + EOS, truncated to the context length
//! so that the sequence always ends with EOS.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// The context length of every OpenAI CLIP text tower.
pub const CLIP_CONTEXT: usize = 77;

/// A CLIP tokenizer: ids are `[BOS, tokens…, EOS]`, at most `context` long.
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    bos: u32,
    eos: u32,
    context: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("path", &self.path)
            .field("context", &self.context)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`. The special tokens `<|startoftext|>` and
    /// `<|endoftext|>` must be in its vocabulary.
    pub fn from_file(path: &Path, context: usize) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(format!("cannot load: {e}")))?;
        let bos = inner
            .token_to_id("<|startoftext|>")
            .ok_or_else(|| err("no `<|startoftext|>` token".into()))?;
        let eos = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| err("no `<|endoftext|>` token".into()))?;
        if context < 2 {
            return Err(err(format!(
                "context length {context} leaves no room for BOS and EOS"
            )));
        }
        // We add specials and truncate ourselves; switch off any padding or
        // truncation stored in the file so results do not depend on it.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot disable truncation: {e}")))?;
        Ok(ClipTokenizer {
            inner,
            path: path.to_path_buf(),
            bos,
            eos,
            context,
        })
    }

    /// The id that ends every sequence (and pads batches).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id that starts every sequence.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The maximum sequence length, BOS and EOS included.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Tokenises one text. Empty text gives `[BOS, EOS]`; long text keeps its
    /// first `context − 2` tokens. Never panics.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {:?}: {e}", truncate_for_message(text)),
            })?;
        let body = enc.get_ids();
        let keep = body.len().min(self.context - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        Ok(ids)
    }

    /// Tokenises a batch.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
}

fn truncate_for_message(text: &str) -> String {
    text.chars().take(40).collect()
}
