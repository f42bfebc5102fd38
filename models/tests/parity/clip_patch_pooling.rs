//! CLIP ViT patch tokens as a pooling grid: the tiny checkpoint's patch
//! tokens against transformers (scripts/make_clip_patch_fixtures.py), and the
//! pooled `gem` vector against GeM computed directly on those tokens.

use std::path::PathBuf;

use candle_core::Device;
use squire_models::clip::{ClipModel, LoadOptions, PooledClip};
use squire_models::pooling::Pooling;
use squire_models::ImageEncoder;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tensor(file: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let all = candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).expect("fixture");
    let t = all.get(name).expect("tensor");
    (
        t.dims().to_vec(),
        t.flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .expect("f32 values"),
    )
}

#[test]
fn patch_tokens_match_transformers_and_pool_as_gem() {
    let clip =
        ClipModel::load(&fixtures().join("tiny-clip"), LoadOptions::default()).expect("tiny clip");
    let (shape, pixels) = tensor("clip-reference.safetensors", "pixels32");
    let batch = shape[0];
    let (tshape, want) = tensor("clip-patch-reference.safetensors", "patch_tokens");
    let (np, d) = (tshape[1], tshape[2]);
    let g = clip.patch_grid();
    assert_eq!(g * g, np);
    let (embeddings, maps) = clip
        .embed_pixels_with_patches(&pixels, batch)
        .expect("patches");
    // Without patches the last layer runs for the class token only: the same embeddings.
    let pooled_only = clip.embed_pixels(&pixels, batch).expect("embed");
    assert_eq!(embeddings.len(), pooled_only.len());
    let gap = embeddings
        .iter()
        .zip(&pooled_only)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        gap < 1e-6,
        "class-token-only last layer differs from the full pass by {gap}"
    );
    // maps: batch × d × g × g; the reference: batch × np × d.
    // Relative to the token's scale: LayerNorm outputs are O(1) (up to
    // |gamma|), where the final L2-normalised embeddings are O(1/sqrt(512)).
    let (mut worst, mut largest) = (0f32, 0f32);
    for b in 0..batch {
        for t in 0..np {
            for c in 0..d {
                let (got, w) = (maps[(b * d + c) * np + t], want[(b * np + t) * d + c]);
                worst = worst.max((got - w).abs() / w.abs().max(1.0));
                largest = largest.max(w.abs());
            }
        }
    }
    eprintln!("patch tokens vs transformers: max relative difference {worst:.2e} (largest |token| {largest:.2})");
    assert!(
        worst < 1e-4,
        "patch tokens differ from transformers by up to {worst} (relative)"
    );
    // The pooled vector: GeM+ (p = 4.6, clamped at 1e-8) per channel, L2-normalised.
    let pooled = PooledClip::new(clip, Pooling::GemPlus).expect("pooled");
    assert_eq!(pooled.vector_names(), vec!["clip", "gem"]);
    assert_eq!(pooled.image_query_vector(), "gem");
    let named = pooled.embed_named(&pixels, batch).expect("embed");
    let gem = &named[1];
    assert_eq!(gem.len(), batch * d);
    for b in 0..batch {
        let mut direct: Vec<f64> = (0..d)
            .map(|c| {
                let m = (0..np)
                    .map(|t| (want[(b * np + t) * d + c].max(1e-8) as f64).powf(4.6))
                    .sum::<f64>()
                    / np as f64;
                m.powf(1.0 / 4.6)
            })
            .collect();
        let n = direct.iter().map(|v| v * v).sum::<f64>().sqrt();
        direct.iter_mut().for_each(|v| *v /= n);
        for c in 0..d {
            assert!(
                (gem[b * d + c] as f64 - direct[c]).abs() < 1e-3,
                "image {b}, channel {c}: {} vs {}",
                gem[b * d + c],
                direct[c]
            );
        }
    }
    // Scale-GeM needs other input sizes: refused with the reason.
    let clip =
        ClipModel::load(&fixtures().join("tiny-clip"), LoadOptions::default()).expect("tiny clip");
    let e = PooledClip::new(clip, Pooling::GemPlusRegionalScale)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("position embeddings"), "{e}");
}
