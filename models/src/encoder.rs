//! The encoder traits every model family implements, so that indexing and
//! search work the same whatever the backbone.

use image::RgbImage;
use rayon::prelude::*;

use crate::error::Result;

/// Maps images to L2-normalised vectors.
pub trait ImageEncoder: Send + Sync {
    /// Length of each image vector.
    fn image_dim(&self) -> usize;

    /// Side of the square input the network takes, in pixels.
    fn input_size(&self) -> usize;

    /// Preprocesses one image into `out` (`3 × input_size²`, CHW).
    fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()>;

    /// Embeds a batch of preprocessed images; returns `batch × image_dim` values.
    fn embed_preprocessed(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>>;

    /// Names of the vectors [`Self::embed_named`] returns for each image
    /// (`["clip"]` for CLIP; `["gem", "text"]` for the lite pack).
    fn vector_names(&self) -> Vec<&'static str> {
        vec!["clip"]
    }

    /// The named vector that text queries are compared with.
    fn text_query_vector(&self) -> &'static str {
        "clip"
    }

    /// The named vector that image queries are compared with.
    fn image_query_vector(&self) -> &'static str {
        "clip"
    }

    /// Embeds a batch of preprocessed images into every named vector: one flat
    /// `batch × dim` buffer per name, in [`Self::vector_names`] order.
    fn embed_named(&self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        Ok(vec![self.embed_preprocessed(pixels, batch)?])
    }

    /// Preprocesses (in parallel) and embeds a batch of images.
    fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<f32>> {
        let s = self.input_size();
        let plane = 3 * s * s;
        let mut pixels = vec![0f32; images.len() * plane];
        pixels
            .par_chunks_mut(plane)
            .zip(images.par_iter())
            .try_for_each(|(out, img)| self.preprocess_into(img, out))?;
        self.embed_preprocessed(&pixels, images.len())
    }
}

/// Maps texts to L2-normalised vectors.
pub trait TextEncoder: Send + Sync {
    /// Length of each text vector.
    fn text_dim(&self) -> usize;

    /// Embeds a batch of texts; returns `texts.len() × text_dim` values.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>>;
}

/// A model that embeds both images and texts into one space.
pub trait DualEncoder: ImageEncoder + TextEncoder {}

impl<T: ImageEncoder + TextEncoder> DualEncoder for T {}
