//! Sentence-transformers text encoders on candle's BERT (all-MiniLM-L6-v2 in
//! the lite pack): mean pooling over the attention mask, L2-normalised.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::encoder::TextEncoder;
use crate::error::{ModelError, Result};
use crate::weights::CheckedWeights;

/// A BERT sentence encoder with mean pooling.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    dim: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder").field("dir", &self.dir).field("dim", &self.dim).finish()
    }
}

impl SentenceEncoder {
    /// Loads a sentence-transformers directory (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, optional `sentence_bert_config.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| ModelError::Json { path: cfg_path.clone(), message: e.to_string() })?;
        let weights = dir.join("model.safetensors");
        let checked = CheckedWeights::open(&weights)?;
        let dim = checked.shape_of("embeddings.word_embeddings.weight")?.get(1).copied().unwrap_or(0);
        drop(checked);
        // SAFETY: read-only mapping of a model file Squire does not modify.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)? };
        let model = BertModel::load(vb, &config)
            .map_err(|e| ModelError::Safetensors { path: weights.clone(), message: e.to_string() })?;
        let tok_path = dir.join("tokenizer.json");
        let terr = |message: String| ModelError::Tokenizer { path: tok_path.clone(), message };
        if !tok_path.is_file() {
            return Err(terr("file not found".into()));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| terr(format!("cannot load: {e}")))?;
        // sentence-transformers truncates at max_seq_length (256 for MiniLM), not the tokenizer's own limit.
        let max_len = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .unwrap_or(256) as usize;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| terr(format!("truncation: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        Ok(SentenceEncoder { model, tokenizer, dim, dir: dir.to_path_buf() })
    }
}

impl TextEncoder for SentenceEncoder {
    fn text_dim(&self) -> usize {
        self.dim
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| ModelError::Tokenizer {
            path: self.dir.join("tokenizer.json"),
            message: format!("cannot encode: {e}"),
        })?;
        let len = enc.first().map(|e| e.get_ids().len()).unwrap_or(0);
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let types: Vec<u32> = enc.iter().flat_map(|e| e.get_type_ids().to_vec()).collect();
        let mask: Vec<u32> = enc.iter().flat_map(|e| e.get_attention_mask().to_vec()).collect();
        let dev = Device::Cpu;
        let b = texts.len();
        let ids = Tensor::from_vec(ids, (b, len), &dev)?;
        let types = Tensor::from_vec(types, (b, len), &dev)?;
        let mask = Tensor::from_vec(mask, (b, len), &dev)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (b, len, dim)
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let mut v = mean.flatten_all()?.to_vec1::<f32>()?;
        for row in v.chunks_mut(self.dim.max(1)) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        Ok(v)
    }
}
