//! Roofline probes for benchmarks: the machine's peak FMA throughput and the
//! memory bandwidth a streaming read reaches, measured with the same threads
//! the kernels use.

use std::time::Instant;

use rayon::prelude::*;

use crate::cpu::dot_f32;

/// Peak single-precision GFLOP/s with every rayon thread running
/// independent FMA chains in registers (AVX2/FMA when present).
pub fn peak_gflops(seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    let iters: u64 = 20_000_000;
    let flops_per_iter = fma_block_flops();
    let mut best = 0f64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || best == 0.0 {
        let t = Instant::now();
        let sink: f32 = (0..threads).into_par_iter().map(|i| fma_block(iters, i as f32)).sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(threads as f64 * iters as f64 * flops_per_iter / dt / 1e9);
    }
    best
}

fn fma_block_flops() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return 10.0 * 8.0 * 2.0;
        }
    }
    10.0 * 2.0
}

fn fma_block(iters: u64, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present (checked above).
            return unsafe { fma_block_avx2(iters, seed) };
        }
    }
    let mut acc = [seed; 10];
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
    // Ten independent chains cover the FMA latency × throughput product.
    let mut acc = [_mm256_set1_ps(seed); 10];
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
