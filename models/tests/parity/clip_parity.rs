//! Parity of the CLIP implementation with the Hugging Face reference, on the
//! tiny random-weight checkpoint and reference tensors that
//! `scripts/make_clip_fixtures.py` generated (transformers, run by hand).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use squire_models::clip::{ClipModel, Implementation, LoadOptions, Precision};
use squire_models::image_io::load_rgb;
use squire_models::preprocess::ImagePreprocessor;
use squire_models::{ImageEncoder, TextEncoder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

struct Reference {
    tensors: HashMap<String, Tensor>,
    images: Vec<String>,
    captions: Vec<String>,
    token_ids: Vec<Vec<u32>>,
}

fn reference() -> Reference {
    let tensors =
        candle_core::safetensors::load(fixtures().join("clip-reference.safetensors"), &Device::Cpu)
            .expect("reference tensors");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("clip-reference.json")).expect("reference json"),
    )
    .expect("json");
    let strings = |k: &str| -> Vec<String> {
        meta[k]
            .as_array()
            .expect(k)
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    };
    let token_ids = meta["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|s| {
            s.as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect()
        })
        .collect();
    Reference {
        tensors,
        images: strings("images"),
        captions: strings("captions"),
        token_ids,
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .expect("flatten")
        .to_vec1::<f32>()
        .expect("f32")
}

/// A 224 px reference stored as the 8-bit values the reference processor
/// normalised (`3 × h × w`), decoded the way the generator checked it:
/// `(v / 255 − mean) / std` in f32, with CLIP's mean and std.
fn decode_u8_pixels(t: &Tensor) -> Vec<f32> {
    const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
    const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
    let v = t
        .flatten_all()
        .expect("flatten")
        .to_vec1::<u8>()
        .expect("u8 pixels");
    let plane = v.len() / 3;
    v.iter()
        .enumerate()
        .map(|(i, &b)| (b as f32 / 255.0 - MEAN[i / plane]) / STD[i / plane])
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tiny(opts: LoadOptions) -> ClipModel {
    ClipModel::load(&fixtures().join("tiny-clip"), opts).expect("tiny model loads")
}

#[test]
fn tokenizer_ids_match_reference_exactly() {
    let r = reference();
    let m = tiny(LoadOptions::default());
    assert!(r.captions.len() >= 20);
    for (c, want) in r.captions.iter().zip(&r.token_ids) {
        let got = m.tokenizer().encode(c).expect("encode");
        assert_eq!(&got, want, "caption {c:?}");
        assert!(got.len() <= 77);
        assert_eq!(*got.last().expect("non-empty"), 49407);
    }
    let dog = m
        .tokenizer()
        .encode("a dog runs across the grass")
        .expect("encode");
    assert_eq!(dog, vec![49406, 320, 1929, 5586, 2500, 518, 5922, 49407]);
    assert_eq!(m.tokenizer().encode("").expect("empty"), vec![49406, 49407]);
    let long = "word ".repeat(10_000);
    assert_eq!(m.tokenizer().encode(&long).expect("long").len(), 77);
    println!(
        "tokenizer: {} captions identical to the reference",
        r.captions.len()
    );
}

#[test]
fn preprocessing_matches_reference_pixels() {
    let r = reference();
    let m = tiny(LoadOptions::default());
    let px32 = r.tensors.get("pixels32").expect("pixels32");
    let mut worst32 = 0f32;
    for (i, name) in r.images.iter().enumerate() {
        let img = load_rgb(&fixtures().join("images").join(name)).expect("image loads");
        let ours = m.preprocessor().preprocess(&img).expect("preprocess");
        let theirs = flat(&px32.get(i).expect("row"));
        let d = max_abs_diff(&ours, &theirs);
        println!("{name:<24} 32 px: max |diff| {d:.2e}");
        worst32 = worst32.max(d);
    }
    let full = ImagePreprocessor::clip(224);
    let mut worst224 = 0f32;
    let mut checked = 0;
    for name in &r.images {
        let key = name.replace('.', "_");
        let Some(t) = r.tensors.get(&format!("pixels224_pil_u8.{key}")) else {
            continue;
        };
        let img = load_rgb(&fixtures().join("images").join(name)).expect("image loads");
        let ours = full.preprocess(&img).expect("preprocess");
        let d = max_abs_diff(&ours, &decode_u8_pixels(t));
        println!("{name:<24} 224 px: max |diff| {d:.2e}");
        worst224 = worst224.max(d);
        checked += 1;
        if let Some(tv) = r.tensors.get(&format!("pixels224_torchvision_u8.{key}")) {
            println!(
                "{name:<24} 224 px vs the torchvision backend: max |diff| {:.2e}",
                max_abs_diff(&ours, &decode_u8_pixels(tv))
            );
        }
    }
    assert!(checked >= 4);
    println!("worst preprocessing difference: {worst32:.2e} (32 px), {worst224:.2e} (224 px)");
    assert!(
        worst32 <= 1e-3 && worst224 <= 1e-3,
        "pixels differ: {worst32} / {worst224}"
    );
}

fn check_embeddings(opts: LoadOptions, tol: f32) -> (f32, f32) {
    let r = reference();
    let m = tiny(opts);
    let px = r.tensors.get("pixels32").expect("pixels32");
    let n = px.dim(0).expect("dim");
    let img = m.embed_pixels(&flat(px), n).expect("image embeddings");
    let di = max_abs_diff(
        &img,
        &flat(r.tensors.get("image_embeds").expect("image_embeds")),
    );
    let txt = m.embed_token_ids(&r.token_ids).expect("text embeddings");
    let dt = max_abs_diff(
        &txt,
        &flat(r.tensors.get("text_embeds").expect("text_embeds")),
    );
    println!("{opts:?}: image max |diff| {di:.2e}, text max |diff| {dt:.2e}");
    assert!(
        di <= tol && dt <= tol,
        "embeddings differ: image {di}, text {dt} (tolerance {tol})"
    );
    (di, dt)
}

#[test]
fn fast_path_embeddings_match_reference() {
    check_embeddings(LoadOptions::default(), 1e-4);
}

#[test]
fn candle_path_embeddings_match_reference() {
    check_embeddings(
        LoadOptions {
            precision: Precision::F32,
            implementation: Implementation::Candle,
        },
        1e-4,
    );
}

#[test]
fn f16_path_is_close_to_reference() {
    check_embeddings(
        LoadOptions {
            precision: Precision::F16,
            implementation: Implementation::Candle,
        },
        2e-2,
    );
}

#[test]
fn logits_and_end_to_end_from_files_match_reference() {
    let r = reference();
    let m = tiny(LoadOptions::default());
    let imgs: Vec<_> = r
        .images
        .iter()
        .map(|n| load_rgb(&fixtures().join("images").join(n)).expect("image"))
        .collect();
    let img = m.embed_images(&imgs).expect("embed images");
    let di = max_abs_diff(
        &img,
        &flat(r.tensors.get("image_embeds").expect("image_embeds")),
    );
    let caps: Vec<&str> = r.captions.iter().map(String::as_str).collect();
    let txt = m.embed_texts(&caps).expect("embed texts");
    let dt = max_abs_diff(
        &txt,
        &flat(r.tensors.get("text_embeds").expect("text_embeds")),
    );
    println!("from files: image max |diff| {di:.2e}, text max |diff| {dt:.2e}");
    assert!(di <= 1e-4 && dt <= 1e-4);
    let d = m.image_dim();
    let scale = m.logit_scale().exp();
    let logits: Vec<f32> = img
        .chunks(d)
        .flat_map(|a| {
            txt.chunks(d)
                .map(move |b| scale * a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        })
        .collect();
    let dl = max_abs_diff(
        &logits,
        &flat(r.tensors.get("logits_per_image").expect("logits")),
    );
    println!("logits max |diff| {dl:.2e} (scale {scale:.3})");
    assert!(dl <= 1e-3);
}

#[test]
fn stock_candle_model_agrees_with_reference() {
    let r = reference();
    let m = tiny(LoadOptions::default());
    let stock = squire_models::clip::stock::StockClip::load(&m.files().weights, m.config())
        .expect("stock loads");
    let px = r.tensors.get("pixels32").expect("pixels32");
    let mut v = stock
        .image_features(&flat(px), px.dim(0).expect("dim"))
        .expect("features");
    for row in v.chunks_mut(m.image_dim()) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    let d = max_abs_diff(
        &v,
        &flat(r.tensors.get("image_embeds").expect("image_embeds")),
    );
    println!("stock candle image max |diff| {d:.2e}");
    assert!(d <= 1e-4);
}
