//! CLIP dual encoders (ViT-B/32, ViT-B/16, ViT-L/14, or any checkpoint in
//! the Hugging Face `CLIPModel` safetensors layout).
//!
//! Two numerically equivalent forward passes exist: a fused, preallocated f32
//! path for the CPU ([`fast`]) and a candle-tensor path for f16 and other
//! devices ([`generic`]). [`ClipModel::load`] picks one from [`LoadOptions`].

mod config;
mod fast;
mod generic;
mod pooled;
pub mod stock;
pub use pooled::PooledClip;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use image::RgbImage;
use rayon::prelude::*;

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};

use crate::encoder::{ImageEncoder, TextEncoder};
use crate::error::{ModelError, Result};
use crate::preprocess::ImagePreprocessor;
use crate::tokenize::ClipTokenizer;
use crate::weights::CheckedWeights;

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats (the fused CPU path).
    #[default]
    F32,
    /// 16-bit floats (the candle path; weights converted at load).
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!("unknown precision `{other}` (expected f32 or f16)")),
        }
    }
}

/// Which forward-pass implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Implementation {
    /// The fused CPU path for f32, the candle path otherwise.
    #[default]
    Auto,
    /// Always the candle-tensor path.
    Candle,
}

/// Options for [`ClipModel::load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Numeric precision.
    pub precision: Precision,
    /// Forward-pass implementation.
    pub implementation: Implementation,
}

/// The files of a checkpoint directory in the standard layout.
#[derive(Debug, Clone)]
pub struct ClipFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `preprocessor_config.json` (optional; CLIP defaults when absent).
    pub preprocessor: Option<PathBuf>,
}

impl ClipFiles {
    /// The files of `dir`; the three required ones must exist.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let need = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::io(
                    &p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                ))
            }
        };
        let pre = dir.join("preprocessor_config.json");
        Ok(ClipFiles {
            config: need("config.json")?,
            weights: need("model.safetensors")?,
            tokenizer: need("tokenizer.json")?,
            preprocessor: pre.is_file().then_some(pre),
        })
    }
}

enum Vision {
    Fast(fast::FastVision),
    Generic(generic::GenericVision),
}

enum Text {
    Fast(fast::FastText),
    Generic(generic::GenericText),
}

/// A loaded CLIP model: preprocessing, tokenizer and both towers.
pub struct ClipModel {
    config: ClipConfig,
    files: ClipFiles,
    preprocessor: ImagePreprocessor,
    tokenizer: ClipTokenizer,
    vision: Vision,
    text: Text,
    logit_scale: f32,
    parameters: usize,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("files", &self.files)
            .field("config", &self.config)
            .finish()
    }
}

impl ClipModel {
    /// Loads a checkpoint directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, optional `preprocessor_config.json`).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        let files = ClipFiles::in_dir(dir)?;
        let config = ClipConfig::from_file(&files.config)?;
        let default_pre = ImagePreprocessor::clip(config.vision_config.image_size as u32);
        let preprocessor = match &files.preprocessor {
            Some(p) => ImagePreprocessor::from_file(p, &default_pre)?,
            None => default_pre,
        };
        if preprocessor.output_size(1, 1)
            != (
                config.vision_config.image_size as u32,
                config.vision_config.image_size as u32,
            )
        {
            return Err(ModelError::Config {
                path: files
                    .preprocessor
                    .clone()
                    .unwrap_or_else(|| files.config.clone()),
                field: "crop_size".into(),
                message: format!(
                    "preprocessing yields {:?} pixels but the vision tower expects {}×{}",
                    preprocessor.output_size(1, 1),
                    config.vision_config.image_size,
                    config.vision_config.image_size
                ),
            });
        }
        let tokenizer =
            ClipTokenizer::from_file(&files.tokenizer, config.text_config.max_position_embeddings)?;
        if tokenizer.eos_id() as usize >= config.text_config.vocab_size {
            return Err(ModelError::Config {
                path: files.config.clone(),
                field: "text_config.vocab_size".into(),
                message: format!(
                    "{} is too small for the tokenizer {} (its end token is id {})",
                    config.text_config.vocab_size,
                    files.tokenizer.display(),
                    tokenizer.eos_id()
                ),
            });
        }
        let weights = CheckedWeights::open(&files.weights)?;
        // A checkpoint without the class embedding would load with a random one
        // in some implementations; refuse it outright.
        if !weights.contains("vision_model.embeddings.class_embedding") {
            return Err(ModelError::MissingTensor {
                path: files.weights.clone(),
                name: "vision_model.embeddings.class_embedding".into(),
            });
        }
        let use_fast =
            opts.precision == Precision::F32 && opts.implementation == Implementation::Auto;
        let (vision, text) = if use_fast {
            (
                Vision::Fast(fast::FastVision::load(&weights, &config)?),
                Text::Fast(fast::FastText::load(&weights, &config)?),
            )
        } else {
            let dtype = match opts.precision {
                Precision::F32 => DType::F32,
                Precision::F16 => DType::F16,
            };
            let dev = Device::Cpu;
            (
                Vision::Generic(generic::GenericVision::load(
                    &weights, &config, dtype, &dev,
                )?),
                Text::Generic(generic::GenericText::load(&weights, &config, dtype, &dev)?),
            )
        };
        let logit_scale = if weights.contains("logit_scale") {
            weights
                .get_f32("logit_scale", &[])?
                .first()
                .copied()
                .unwrap_or(0.0)
        } else {
            2.6592
        };
        Ok(ClipModel {
            parameters: weights.parameter_count(),
            config,
            files,
            preprocessor,
            tokenizer,
            vision,
            text,
            logit_scale,
        })
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The files this model was loaded from.
    pub fn files(&self) -> &ClipFiles {
        &self.files
    }

    /// The image preprocessing in use.
    pub fn preprocessor(&self) -> &ImagePreprocessor {
        &self.preprocessor
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Number of scalar parameters in the checkpoint.
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    /// The learned temperature, `exp(logit_scale)` multiplies cosine similarities into logits.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn check_pixels(&self, pixels: &[f32], batch: usize) -> Result<()> {
        let s = self.config.vision_config.image_size;
        if pixels.len() != batch * 3 * s * s {
            return Err(ModelError::InvalidRequest(format!(
                "{} pixel values for a batch of {batch} at {s}×{s} (expected {})",
                pixels.len(),
                batch * 3 * s * s
            )));
        }
        Ok(())
    }

    /// Whether [`Self::embed_pixels`] and [`Self::embed_token_ids`] run the
    /// last transformer layer for the pooled token only (the f32 CPU fast
    /// path: the class or end-of-text token is all the embedding reads, so
    /// the other tokens' last attention output and MLP are skipped; the
    /// embeddings are the same). False on the candle path, which runs the
    /// whole model as the reference does.
    pub fn pools_last_layer(&self) -> bool {
        matches!(self.vision, Vision::Fast(_))
    }

    /// Embeds preprocessed pixels (`batch × 3 × size × size`, CHW).
    pub fn embed_pixels(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.check_pixels(pixels, batch)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        match &self.vision {
            Vision::Fast(v) => Ok(v.forward(pixels, batch)),
            Vision::Generic(v) => v.forward(pixels, batch),
        }
    }

    /// Embeds preprocessed pixels and also returns the last layer's patch
    /// tokens (post-layernorm, class token dropped) as feature maps
    /// `batch × hidden × g × g`, g = image size / patch size. Needs the f32
    /// fast path (the default for f32 on the CPU).
    pub fn embed_pixels_with_patches(
        &self,
        pixels: &[f32],
        batch: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check_pixels(pixels, batch)?;
        match &self.vision {
            Vision::Fast(v) => {
                let (clip, maps) = v.forward_with_patches(pixels, batch, true);
                Ok((clip, maps.unwrap_or_default()))
            }
            Vision::Generic(_) => Err(ModelError::InvalidRequest(
                "patch-token pooling needs the f32 CPU path of the CLIP image tower (not f16 or another device)".into(),
            )),
        }
    }

    /// Side of the patch-token grid (image size / patch size).
    pub fn patch_grid(&self) -> usize {
        self.config.vision_config.image_size / self.config.vision_config.patch_size
    }

    /// Embeds token sequences (each `[BOS, …, EOS]`, at most the context length).
    pub fn embed_token_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.config.text_config.max_position_embeddings;
        let vocab = self.config.text_config.vocab_size as u32;
        let eos = self.tokenizer.eos_id();
        let mut pool_at = Vec::with_capacity(ids.len());
        for (i, s) in ids.iter().enumerate() {
            if s.is_empty() || s.len() > ctx {
                return Err(ModelError::InvalidRequest(format!(
                    "sequence {i} has {} tokens (1..={ctx} allowed)",
                    s.len()
                )));
            }
            if let Some(&bad) = s.iter().find(|&&t| t >= vocab) {
                return Err(ModelError::InvalidRequest(format!(
                    "sequence {i}: token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            // The pooled token is the first end-of-text token (the last token if none).
            pool_at.push(s.iter().position(|&t| t == eos).unwrap_or(s.len() - 1));
        }
        match &self.text {
            Text::Fast(t) => Ok(t.forward(ids, &pool_at, eos)),
            Text::Generic(t) => t.forward(ids, &pool_at, eos),
        }
    }
}

impl ImageEncoder for ClipModel {
    fn image_dim(&self) -> usize {
        self.config.projection_dim
    }

    fn input_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        self.preprocessor.preprocess_into(img, out)
    }

    fn embed_preprocessed(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.embed_pixels(pixels, batch)
    }
}

impl TextEncoder for ClipModel {
    fn text_dim(&self) -> usize {
        self.config.projection_dim
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<_>>()?;
        self.embed_token_ids(&ids)
    }
}
