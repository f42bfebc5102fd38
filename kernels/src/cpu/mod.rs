//! The CPU backend: rayon over cache-sized blocks, explicit AVX2/FMA or
//! AVX-512 where the CPU has it ([`simd_path`]). Every function here is also what [`crate::Compute`] runs
//! on the CPU, and the reference the wgpu backend is tested against.

mod gram;
mod isa;
mod matmul;
mod packed;
mod pooling;
mod simd;
mod similarity;
mod team;

pub use gram::{gram, gram_into, refine, refine_into};
pub use isa::{simd_path, simd_path_name, SimdPath, SIMD_ENV};
pub use matmul::matmul_a_bt;
pub use packed::{packed_product, packed_supported, PackedRows, TileInit};
pub use pooling::{gem, l2_normalize, regional_gem, scale_gem};
pub use simd::{dot_f16, dot_f16_on, dot_f32, dot_f32_on};
pub use similarity::{inner_product_topk, GEMM_MIN_QUERIES};
pub use team::{team_for_each, team_for_each_rows, team_threads, SharedMut};

pub(crate) use gram::check_refine;
pub(crate) use pooling::{check_scales, inv_norm};
pub(crate) use similarity::{scores_rows, topk_rows, RowsRef};

pub use crate::types::Scored;

/// Deterministic pseudo-random test data shared by the unit tests.
#[cfg(test)]
pub(crate) fn test_values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}
