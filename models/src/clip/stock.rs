//! candle-transformers' stock `ClipModel`, wrapped for side-by-side
//! benchmarking and cross-checking against Squire's own forward passes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip as st;

use super::config::{Activation, ClipConfig};
use crate::error::{ModelError, Result};
use crate::weights::CheckedWeights;

/// The stock candle-transformers CLIP model (f32, CPU, QuickGELU checkpoints only).
pub struct StockClip {
    model: st::ClipModel,
    image_size: usize,
}

impl StockClip {
    /// Loads `model.safetensors` with the given (already validated) config.
    pub fn load(weights: &Path, cfg: &ClipConfig) -> Result<Self> {
        // Checks names and shapes with clear errors before candle sees the file.
        let checked = CheckedWeights::open(weights)?;
        if !checked.contains("vision_model.embeddings.class_embedding") {
            return Err(ModelError::MissingTensor {
                path: weights.to_path_buf(),
                name: "vision_model.embeddings.class_embedding".into(),
            });
        }
        if cfg.text_config.hidden_act != Activation::QuickGelu
            || cfg.vision_config.hidden_act != Activation::QuickGelu
        {
            return Err(ModelError::InvalidRequest(
                "the stock candle CLIP supports quick_gelu checkpoints only".into(),
            ));
        }
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        let config = st::ClipConfig {
            text_config: st::text_model::ClipTextConfig {
                vocab_size: t.vocab_size,
                embed_dim: t.hidden_size,
                activation: st::text_model::Activation::QuickGelu,
                intermediate_size: t.intermediate_size,
                max_position_embeddings: t.max_position_embeddings,
                pad_with: None,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                projection_dim: cfg.projection_dim,
            },
            vision_config: st::vision_model::ClipVisionConfig {
                embed_dim: v.hidden_size,
                activation: st::text_model::Activation::QuickGelu,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                projection_dim: cfg.projection_dim,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
            },
            logit_scale_init_value: 2.6592,
            image_size: v.image_size,
        };
        // SAFETY: read-only mapping of a model file Squire does not modify.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
        Ok(StockClip {
            model: st::ClipModel::new(vb, &config)?,
            image_size: v.image_size,
        })
    }

    /// Image features (not normalised, as the stock model returns them).
    pub fn image_features(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let s = self.image_size;
        let x = Tensor::from_slice(pixels, (batch, 3, s, s), &Device::Cpu)?;
        Ok(self
            .model
            .get_image_features(&x)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// Text features for equal-length id sequences (not normalised).
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let len = ids.first().map(Vec::len).unwrap_or(0);
        if ids.iter().any(|s| s.len() != len) {
            return Err(ModelError::InvalidRequest(
                "stock text features need equal-length sequences".into(),
            ));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (ids.len(), len), &Device::Cpu)?;
        Ok(self.model.get_text_features(&x)?.flatten_all()?.to_vec1()?)
    }
}
