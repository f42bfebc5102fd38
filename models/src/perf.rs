//! Measurement helpers shared by `squire bench` and the benches: FLOP counts
//! of the encoders, a matrix-multiply peak probe and peak memory.

use std::time::Instant;

use crate::clip::ClipConfig;
use crate::cpu_ops::{dense, DenseT};

/// Floating-point operations (multiply and add counted separately) of one
/// image through the CLIP vision tower.
pub fn clip_image_flops(c: &ClipConfig) -> f64 {
    let v = &c.vision_config;
    let g = v.image_size / v.patch_size;
    let np = (g * g) as f64;
    let s = np + 1.0;
    let d = v.hidden_size as f64;
    let m = v.intermediate_size as f64;
    let patch = 2.0 * np * (3 * v.patch_size * v.patch_size) as f64 * d;
    let layer = 2.0 * s * d * (3.0 * d + d + 2.0 * m) + 4.0 * s * s * d;
    patch + v.num_hidden_layers as f64 * layer + 2.0 * d * c.projection_dim as f64
}

/// FLOPs of one text of `tokens` tokens through the CLIP text tower.
pub fn clip_text_flops(c: &ClipConfig, tokens: usize) -> f64 {
    let t = &c.text_config;
    let s = tokens as f64;
    let d = t.hidden_size as f64;
    let m = t.intermediate_size as f64;
    let layer = 2.0 * s * d * (3.0 * d + d + 2.0 * m) + 4.0 * s * s * d;
    t.num_hidden_layers as f64 * layer + 2.0 * d * c.projection_dim as f64
}

/// Measures sustained f32 matrix-multiply throughput (GFLOP/s) on the shape
/// that dominates ViT-B inference (1600×768 · 768×3072), using the same
/// kernel as the encoders. Runs for about `seconds`.
pub fn matmul_peak_gflops(seconds: f64) -> f64 {
    matmul_gflops(1600, 768, 3072, seconds)
}

/// Measures f32 `m×k · k×n` throughput (GFLOP/s) of the encoders' dense kernel.
pub fn matmul_gflops(m: usize, k: usize, n: usize, seconds: f64) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 89) as f32 - 44.0) * 0.01).collect();
    let layer = DenseT::from_torch(&w, None, n, k);
    let mut out = vec![0f32; m * n];
    dense(&x, m, &layer, &mut out, false, None);
    let start = Instant::now();
    let mut reps = 0u32;
    while start.elapsed().as_secs_f64() < seconds || reps < 3 {
        dense(&x, m, &layer, &mut out, false, None);
        reps += 1;
    }
    2.0 * (m * k * n) as f64 * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident memory of this process in bytes (Linux `VmRSS`), if known.
pub fn current_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
