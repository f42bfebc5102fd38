//! `CLIPModel` configuration, read from a checkpoint's `config.json` with the
//! reference implementation's defaults for absent fields.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Activation function of the MLP blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`, used by the OpenAI checkpoints.
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / √2))`.
    Gelu,
    /// GELU with the tanh approximation.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    /// `min(max(x, 0), 6)`, used by EfficientNet-Lite.
    Relu6,
}

/// The text tower's configuration (`text_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Vocabulary size of the token embedding.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Context length (77 for OpenAI CLIP).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The vision tower's configuration (`vision_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Input resolution in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A whole `CLIPModel` configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// Text tower.
    pub text_config: ClipTextConfig,
    /// Vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
        }
    }
}

impl ClipConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: ClipConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(ModelError::Config {
                path: path.to_path_buf(),
                field: field.into(),
                message,
            })
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        for (field, value) in [
            ("projection_dim", self.projection_dim),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.vocab_size", t.vocab_size),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
        ] {
            if value == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return bad(
                "text_config.num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {} heads",
                    t.hidden_size, t.num_attention_heads
                ),
            );
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return bad(
                "vision_config.num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {} heads",
                    v.hidden_size, v.num_attention_heads
                ),
            );
        }
        if v.image_size % v.patch_size != 0 {
            return bad(
                "vision_config.patch_size",
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            );
        }
        if v.num_channels != 3 {
            return bad(
                "vision_config.num_channels",
                format!("{} channels; only RGB (3) is supported", v.num_channels),
            );
        }
        Ok(())
    }

    /// Number of patch tokens plus the class token.
    pub fn vision_tokens(&self) -> usize {
        let g = self.vision_config.image_size / self.vision_config.patch_size;
        g * g + 1
    }
}
