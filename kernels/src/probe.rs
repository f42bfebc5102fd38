//! Roofline probes for benchmarks: the machine's peak FMA throughput and the
//! memory bandwidth a streaming read reaches, measured with the same threads
//! the kernels use.

use std::time::Instant;

use rayon::prelude::*;

use crate::cpu::{dot_f32, simd_path, SimdPath};

/// Peak single-precision GFLOP/s with every rayon thread running
/// independent FMA chains in registers, on the widest vector path the
/// kernels use ([`simd_path`]: AVX-512, AVX2/FMA, or scalar).
pub fn peak_gflops(seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    let iters: u64 = 20_000_000;
    let path = simd_path();
    let flops_per_iter = fma_block_flops(path);
    let mut best = 0f64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || best == 0.0 {
        let t = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            .map(|i| fma_block(path, iters, i as f32))
            .sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(threads as f64 * iters as f64 * flops_per_iter / dt / 1e9);
    }
    best
}

/// Independent accumulator chains per block: enough to cover FMA latency (4
/// cycles) × two FMA ports on current x86 cores.
const CHAINS: usize = 12;

/// Floating-point operations one iteration of [`fma_block`] performs.
fn fma_block_flops(path: Option<SimdPath>) -> f64 {
    let lanes = match path {
        Some(SimdPath::Avx512) => 16.0,
        Some(SimdPath::Avx2) => 8.0,
        None => 1.0,
    };
    CHAINS as f64 * lanes * 2.0
}

fn fma_block(path: Option<SimdPath>, iters: u64, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match path {
        // SAFETY: `simd_path` only reports paths this CPU supports.
        Some(SimdPath::Avx512) => return unsafe { fma_block_avx512(iters, seed) },
        // SAFETY: as above.
        Some(SimdPath::Avx2) => return unsafe { fma_block_avx2(iters, seed) },
        None => {}
    }
    let _ = path;
    let mut acc = [seed; CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_block_avx2(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut out = [0f32; 8];
    let mut s = acc[0];
    for a in &acc[1..] {
        s = _mm256_add_ps(s, *a);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_block_avx512(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = acc[0];
    for a in &acc[1..] {
        s = _mm512_add_ps(s, *a);
    }
    _mm512_reduce_add_ps(s)
}

/// Read bandwidth in GB/s: every rayon thread streams its share of `buf`
/// (which should be far larger than the caches), best of the runs that fit
/// in `seconds`.
pub fn read_bandwidth(buf: &[f32], seconds: f64) -> f64 {
    let mut best = 0f64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || best == 0.0 {
        let t = Instant::now();
        let s: f32 = buf.par_chunks(1 << 18).map(|c| dot_f32(c, c)).sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(std::mem::size_of_val(buf) as f64 / dt / 1e9);
    }
    best
}
