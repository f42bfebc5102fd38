//! Squire's models: image and text encoders and everything needed to feed
//! them (image decoding, Pillow-exact preprocessing, tokenisation, checkpoint
//! loading and model resolution).
//!
//! The library is usable without the `squire` binary:
//!
//! ```no_run
//! use squire_models::{clip::{ClipModel, LoadOptions}, ImageEncoder, TextEncoder};
//! # fn main() -> Result<(), squire_models::ModelError> {
//! let model = ClipModel::load("path/to/clip-vit-base-patch32".as_ref(), LoadOptions::default())?;
//! let img = squire_models::image_io::load_rgb("photo.jpg".as_ref())?;
//! let image_vec = model.embed_images(&[img])?;
//! let text_vec = model.embed_texts(&["a dog on the grass"])?;
//! # Ok(()) }
//! ```

pub mod clip;
mod cpu_ops;
pub mod efficientnet;
pub mod encoder;
pub mod error;
pub mod image_io;
pub mod lite;
pub mod minilm;
pub mod mllm;
pub mod perf;
pub mod pooling;
pub mod preprocess;
pub mod qwen3vl;
pub mod registry;
pub mod resample;
pub mod tokenize;
pub mod weights;

pub use encoder::{DualEncoder, ImageEncoder, TextEncoder};
pub use error::{ModelError, Result};
