//! The CPU backend: rayon over cache-sized blocks, explicit AVX2/FMA where
//! the CPU has it. Every function here is also what [`crate::Compute`] runs
//! on the CPU, and the reference the wgpu backend is tested against.

mod gram;
mod pooling;
mod simd;
mod similarity;

pub use gram::{gram, refine};
pub use pooling::{gem, l2_normalize, regional_gem, scale_gem};
pub use simd::{dot_f16, dot_f32};
pub use similarity::{inner_product_topk, GEMM_MIN_QUERIES};

pub(crate) use gram::check_refine;
pub(crate) use pooling::{check_scales, inv_norm};
pub(crate) use similarity::{scores_rows, topk_rows, RowsRef};

pub use crate::types::Scored;
