//! Measurement helpers shared by `squire bench` and the benches: FLOP counts
//! of the encoders, a matrix-multiply peak probe and peak memory.

use std::time::Instant;

use crate::clip::ClipConfig;
use crate::cpu_ops::{dense, DenseT};

/// Floating-point operations (multiply and add counted separately) of one
/// image through the CLIP vision tower. With `pooled_last_layer`, the work
/// of a pass whose last layer computes the class token only (as the f32 CPU
/// fast path does when no patch tokens are asked for; see
/// [`crate::clip::ClipModel::pools_last_layer`]); otherwise that of the
/// whole model, as the reference implementation runs it.
pub fn clip_image_flops(c: &ClipConfig, pooled_last_layer: bool) -> f64 {
    let v = &c.vision_config;
    let g = v.image_size / v.patch_size;
    let np = (g * g) as f64;
    let patch = 2.0 * np * (3 * v.patch_size * v.patch_size) as f64 * v.hidden_size as f64;
    let layers = encoder_flops(
        v.num_hidden_layers,
        np + 1.0,
        v.hidden_size,
        v.intermediate_size,
        pooled_last_layer,
    );
    patch + layers + 2.0 * v.hidden_size as f64 * c.projection_dim as f64
}

/// FLOPs of one text of `tokens` tokens through the CLIP text tower
/// (`pooled_last_layer` as in [`clip_image_flops`]; causal masking is not
/// subtracted).
pub fn clip_text_flops(c: &ClipConfig, tokens: usize, pooled_last_layer: bool) -> f64 {
    let t = &c.text_config;
    let layers = encoder_flops(
        t.num_hidden_layers,
        tokens as f64,
        t.hidden_size,
        t.intermediate_size,
        pooled_last_layer,
    );
    layers + 2.0 * t.hidden_size as f64 * c.projection_dim as f64
}

/// FLOPs of `layers` transformer layers over `s` tokens of width `d` (MLP
/// width `m`), the last one for one query token only when `pooled_last`.
fn encoder_flops(layers: usize, s: f64, d: usize, m: usize, pooled_last: bool) -> f64 {
    let (d, m) = (d as f64, m as f64);
    // q/k/v for every token; scores and weighted values for `q` query
    // tokens; output projection and MLP for those.
    let layer = |q: f64| 2.0 * s * d * 3.0 * d + 4.0 * q * s * d + 2.0 * q * d * (d + 2.0 * m);
    match (layers, pooled_last) {
        (0, _) => 0.0,
        (n, true) => (n - 1) as f64 * layer(s) + layer(1.0),
        (n, false) => n as f64 * layer(s),
    }
}

/// Measures sustained f32 matrix-multiply throughput (GFLOP/s) on the shape
/// that dominates ViT-B inference (1600×768 · 768×3072), using the same
/// kernel as the encoders. Runs for about `seconds`.
pub fn matmul_peak_gflops(seconds: f64) -> f64 {
    matmul_gflops(1600, 768, 3072, seconds)
}

/// Measures f32 `m×k · k×n` throughput (GFLOP/s) of the encoders' dense kernel.
pub fn matmul_gflops(m: usize, k: usize, n: usize, seconds: f64) -> f64 {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 89) as f32 - 44.0) * 0.01)
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b32_flop_counts() {
        // ViT-B/32 (the default config): 50 tokens, width 768, MLP 3072, 12 layers.
        let c = ClipConfig::default();
        let full = clip_image_flops(&c, false);
        assert!((full / 1e9 - 8.817).abs() < 5e-3, "{full}");
        // The pooled last layer skips 49 tokens' scores, weighted values,
        // output projection and MLP: 49 · (4·50·768 + 2·768·(768 + 2·3072)).
        let skipped = 49.0 * (4.0 * 50.0 * 768.0 + 2.0 * 768.0 * 6912.0);
        assert!((full - clip_image_flops(&c, true) - skipped).abs() < 1.0);
        let text = clip_text_flops(&c, 16, false) - clip_text_flops(&c, 16, true);
        let skipped = 15.0 * (4.0 * 16.0 * 512.0 + 2.0 * 512.0 * (512.0 + 2.0 * 2048.0));
        assert!((text - skipped).abs() < 1.0, "{text} vs {skipped}");
    }
}
