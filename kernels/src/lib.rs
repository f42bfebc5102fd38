//! Squire's compute kernels: GeM pooling (GeM+, Regional-GeM, Scale-GeM),
//! similarity and top-k, and SuperGlobal's Gram-matrix refinement, each with a
//! CPU (rayon) backend and a wgpu (WGSL) backend that give the same answers.
//!
//! Used by every other crate and depends on none of them. So far: the CPU
//! backend's batched inner-product top-k ([`cpu::inner_product_topk`]); the
//! wgpu backend and pooling arrive with the kernels issue.

pub mod cpu;
