//! Which vector instruction set the hand-written CPU kernels use, chosen once
//! per process from what the CPU reports (and an optional override).

use std::sync::OnceLock;

/// A family of hand-written x86-64 kernels. Every kernel that has an
/// AVX-512 form also has the AVX2 one; code elsewhere is portable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdPath {
    /// 256-bit registers: AVX2 + FMA (+ F16C for f16 rows).
    Avx2,
    /// 512-bit registers: AVX-512 F/BW/VL (every AVX-512 server core since
    /// Skylake-SP has all three) beside AVX2; the packed
    /// product uses 12 × 32 register tiles and masked edges.
    Avx512,
}

impl SimdPath {
    /// The name benchmarks print (`avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
        }
    }

    /// Whether this CPU (and its operating system) runs the path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                SimdPath::Avx2 => avx2,
                SimdPath::Avx512 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Every path this CPU runs, narrowest first (tests run each of them).
    pub fn all_supported() -> Vec<SimdPath> {
        [SimdPath::Avx2, SimdPath::Avx512]
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    }
}

/// The environment variable that caps the kernels' instruction set:
/// `avx2` keeps an AVX-512 CPU on the AVX2 kernels (for A/B measurements),
/// `portable` turns the hand-written kernels off. Unset, or any other
/// value, means the widest path the CPU runs.
pub const SIMD_ENV: &str = "SQUIRE_SIMD";

/// The widest path this CPU runs, capped by [`SIMD_ENV`]; `None` where no
/// hand-written kernel runs (not x86-64, no AVX2/FMA, or `portable`).
/// Read once per process.
pub fn simd_path() -> Option<SimdPath> {
    static PATH: OnceLock<Option<SimdPath>> = OnceLock::new();
    *PATH.get_or_init(|| {
        let best = SimdPath::all_supported().into_iter().max();
        match std::env::var(SIMD_ENV).ok().as_deref().map(str::trim) {
            Some("portable") => None,
            Some("avx2") => best.map(|b| b.min(SimdPath::Avx2)),
            _ => best,
        }
    })
}

/// The name of [`simd_path`] (`avx512`, `avx2` or `portable`), as benchmarks report it.
pub fn simd_path_name() -> &'static str {
    simd_path().map_or("portable", SimdPath::name)
}
