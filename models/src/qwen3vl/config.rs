//! `config.json` of a Qwen3-VL checkpoint (the Hugging Face layout), and the
//! image processor's `preprocessor_config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// RoPE settings as transformers 5 writes them (`rope_parameters`), or as
/// older checkpoints do (`rope_scaling` plus a top-level `rope_theta`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    /// Base of the rotary frequencies.
    pub rope_theta: Option<f64>,
    /// Frequencies per axis (temporal, height, width) of the text model's
    /// multimodal RoPE; they sum to half the head dimension.
    pub mrope_section: Option<Vec<usize>>,
}

/// The language model's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE (older checkpoints).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// RoPE base (older checkpoints).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Whether the output head shares the embedding table (2B: yes).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_vision_theta() -> f64 {
    10_000.0
}

/// The vision tower's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the tower.
    pub hidden_size: usize,
    /// Width of its MLP.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Side of a patch in pixels.
    pub patch_size: usize,
    /// Patches merged per side into one language-model token.
    pub spatial_merge_size: usize,
    /// Frames per temporal patch (an image is repeated to fill it).
    pub temporal_patch_size: usize,
    /// Width of the merged tokens (the language model's width).
    pub out_hidden_size: usize,
    /// Entries of the learned position table (a square grid).
    pub num_position_embeddings: usize,
    /// Blocks whose output also feeds the first language-model layers (DeepStack).
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    /// RoPE of the tower.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
}

fn three() -> usize {
    3
}

/// A whole Qwen3-VL checkpoint's config.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3VlConfig {
    /// The language model.
    pub text_config: TextConfig,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// `<|image_pad|>`: one per merged image token.
    pub image_token_id: u32,
    /// `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>`.
    pub vision_end_token_id: u32,
    /// Whether the output head shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

impl Qwen3VlConfig {
    /// Reads and checks `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: Qwen3VlConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let bad = |field: &str, message: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        let t = &cfg.text_config;
        if t.num_attention_heads == 0
            || t.num_key_value_heads == 0
            || t.num_attention_heads % t.num_key_value_heads != 0
        {
            return Err(bad(
                "text_config.num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    t.num_attention_heads, t.num_key_value_heads
                ),
            ));
        }
        if t.head_dim == 0 || t.head_dim % 2 != 0 {
            return Err(bad(
                "text_config.head_dim",
                format!("{} is not a positive even number", t.head_dim),
            ));
        }
        let section = cfg.mrope_section();
        if section.len() != 3 || section.iter().sum::<usize>() != t.head_dim / 2 {
            return Err(bad(
                "text_config.rope_parameters.mrope_section",
                format!(
                    "{section:?} must be 3 numbers summing to head_dim / 2 = {}",
                    t.head_dim / 2
                ),
            ));
        }
        let v = &cfg.vision_config;
        if v.num_heads == 0
            || v.hidden_size % v.num_heads != 0
            || (v.hidden_size / v.num_heads) % 4 != 0
        {
            return Err(bad(
                "vision_config.num_heads",
                format!(
                    "width {} over {} heads must give a head width divisible by 4",
                    v.hidden_size, v.num_heads
                ),
            ));
        }
        let side = (v.num_position_embeddings as f64).sqrt() as usize;
        if side * side != v.num_position_embeddings || side == 0 {
            return Err(bad(
                "vision_config.num_position_embeddings",
                format!("{} is not a square", v.num_position_embeddings),
            ));
        }
        if v.patch_size == 0 || v.spatial_merge_size == 0 || v.temporal_patch_size == 0 {
            return Err(bad(
                "vision_config.patch_size",
                "patch, merge and temporal sizes must be positive".into(),
            ));
        }
        if let Some(&i) = v.deepstack_visual_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(bad(
                "vision_config.deepstack_visual_indexes",
                format!("block {i} is past the tower's depth {}", v.depth),
            ));
        }
        if v.deepstack_visual_indexes.len() > t.num_hidden_layers {
            return Err(bad(
                "vision_config.deepstack_visual_indexes",
                "more DeepStack levels than language-model layers".into(),
            ));
        }
        Ok(cfg)
    }

    /// The text model's RoPE base.
    pub fn text_theta(&self) -> f64 {
        let t = &self.text_config;
        t.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(t.rope_theta)
            .unwrap_or(5_000_000.0)
    }

    /// The multimodal RoPE sections (temporal, height, width); [24, 20, 20] if unset.
    pub fn mrope_section(&self) -> Vec<usize> {
        let t = &self.text_config;
        t.rope_parameters
            .as_ref()
            .and_then(|r| r.mrope_section.clone())
            .or_else(|| {
                t.rope_scaling
                    .as_ref()
                    .and_then(|r| r.mrope_section.clone())
            })
            .unwrap_or_else(|| vec![24, 20, 20])
    }

    /// The vision tower's RoPE base.
    pub fn vision_theta(&self) -> f64 {
        self.vision_config
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or_else(default_vision_theta)
    }

    /// Whether the output head is the embedding table.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings
            .or(self.text_config.tie_word_embeddings)
            .unwrap_or(false)
    }
}

/// Pixel-count bounds of the image processor (`size` in
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct SizeBounds {
    /// Fewest pixels after resizing.
    pub shortest_edge: usize,
    /// Most pixels after resizing.
    pub longest_edge: usize,
}

/// `preprocessor_config.json` of the Qwen2-VL image processor family.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    /// Pixel-count bounds.
    pub size: SizeBounds,
    /// Per-channel mean after rescaling.
    #[serde(default = "half3")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    #[serde(default = "half3")]
    pub image_std: [f32; 3],
    /// Pillow resample code (3: bicubic).
    #[serde(default = "bicubic")]
    pub resample: u32,
}

fn half3() -> [f32; 3] {
    [0.5; 3]
}

fn bicubic() -> u32 {
    3
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`; without one, Qwen3-VL's defaults
    /// (65,536 to 16,777,216 pixels, mean and std 0.5, bicubic).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(ImageProcessorConfig {
                size: SizeBounds {
                    shortest_edge: 65_536,
                    longest_edge: 16_777_216,
                },
                image_mean: half3(),
                image_std: half3(),
                resample: 3,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}
