//! A CLIP model whose image tower also yields a pooled descriptor of its
//! patch tokens: SuperGlobal's pooling (GeM, GeM+, Regional-GeM) over the
//! last layer's g × g token grid, for image-to-image search with CLIP.

use image::RgbImage;

use super::ClipModel;
use crate::encoder::{ImageEncoder, TextEncoder};
use crate::error::{ModelError, Result};
use crate::pooling::Pooling;

/// CLIP with a second named vector, `gem`: the patch-token grid pooled by a
/// [`Pooling`] pipeline. Text queries search `clip`, image queries `gem`.
/// Scale-GeM is refused: CLIP's position embeddings fix the input size.
pub struct PooledClip {
    clip: ClipModel,
    pool: Pooling,
}

impl PooledClip {
    /// `clip` with `pool` over its patch tokens.
    pub fn new(clip: ClipModel, pool: Pooling) -> Result<Self> {
        if pool.scales().len() > 1 {
            return Err(ModelError::InvalidRequest(format!(
                "pooling `{pool}` runs the network at several input sizes; CLIP's position embeddings fix the size (use gem, gem+ or gem+rgem)"
            )));
        }
        Ok(PooledClip { clip, pool })
    }

    /// The CLIP model.
    pub fn clip(&self) -> &ClipModel {
        &self.clip
    }
}

impl ImageEncoder for PooledClip {
    fn image_dim(&self) -> usize {
        self.clip.image_dim()
    }

    fn input_size(&self) -> usize {
        self.clip.input_size()
    }

    fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        self.clip.preprocess_into(img, out)
    }

    fn embed_preprocessed(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.clip.embed_preprocessed(pixels, batch)
    }

    fn vector_names(&self) -> Vec<&'static str> {
        vec!["clip", "gem"]
    }

    fn text_query_vector(&self) -> &'static str {
        "clip"
    }

    fn image_query_vector(&self) -> &'static str {
        "gem"
    }

    fn embed_named(&self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        if batch == 0 {
            return Ok(vec![Vec::new(), Vec::new()]);
        }
        let (clip, maps) = self.clip.embed_pixels_with_patches(pixels, batch)?;
        let g = self.clip.patch_grid();
        let d = maps.len() / (batch * g * g).max(1);
        let pooled = self.pool.pool_scale(&maps, batch, d, g, g)?;
        Ok(vec![clip, pooled])
    }
}

impl TextEncoder for PooledClip {
    fn text_dim(&self) -> usize {
        self.clip.text_dim()
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.clip.embed_texts(texts)
    }
}
