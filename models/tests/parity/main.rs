//! Loader and parity tests of the models crate (CLIP, lite pack, Qwen3-VL,
//! image decoding) against reference outputs: one test binary for all of them.

mod clip_errors;
mod clip_parity;
mod clip_patch_pooling;
mod image_io;
mod lite_parity;
mod qwen3vl_parity;
