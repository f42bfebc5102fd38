//! Squire's compute kernels: GeM pooling (GeM+, Regional-GeM, Scale-GeM),
//! similarity and top-k, and SuperGlobal's Gram-matrix refinement, each with a
//! CPU (rayon) backend and a wgpu (WGSL) backend that give the same answers.
//!
//! Used by every other crate and depends on none of them. The kernels arrive
//! with the kernels issue; until then this crate exports nothing.
