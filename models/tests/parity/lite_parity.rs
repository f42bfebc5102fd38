//! Parity of the lite pack with its references: EfficientNet-Lite0 logits and
//! GeM descriptors against the original PyTorch model, MiniLM embeddings
//! against sentence-transformers (`scripts/make_lite_fixtures.py`, run by hand).
//!
//! The weights are not committed: these tests need `squire models fetch lite`
//! (CI runs it) and the Flickr8k-1k photos in `../shared`. Without them they
//! print why and pass, unless `SQUIRE_REQUIRE_LITE=1`, under which they fail.

use std::path::{Path, PathBuf};

use squire_models::efficientnet::EfficientNetLite;
use squire_models::lite::{fetch, LiteOptions, LitePack};
use squire_models::minilm::SentenceEncoder;
use squire_models::TextEncoder;

fn reference() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("reference")).expect("json")
}

fn flickr() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/flickr8k-1k/images")
}

/// The installed pack, or `None` after printing why the test cannot run.
fn pack_dir(need_flickr: bool) -> Option<PathBuf> {
    let dir = fetch::lite_dir();
    let missing = if fetch::verify(&dir, false).is_err() {
        Some(format!(
            "the lite pack is not installed in {} (run `squire models fetch lite`)",
            dir.display()
        ))
    } else if need_flickr && !flickr().is_dir() {
        Some(format!(
            "the Flickr8k-1k photos are not at {}",
            flickr().display()
        ))
    } else {
        None
    };
    match missing {
        None => Some(dir),
        Some(why) if std::env::var("SQUIRE_REQUIRE_LITE").is_ok_and(|v| v == "1") => {
            panic!("SQUIRE_REQUIRE_LITE=1 but {why}")
        }
        Some(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn efficientnet_logits_and_gem_match_pytorch() {
    let Some(dir) = pack_dir(true) else { return };
    let net =
        EfficientNetLite::load(&dir.join("efficientnet-lite0/model.safetensors")).expect("load");
    let pre = LitePack::preprocessing();
    let r = reference();
    let (mut worst_logit, mut worst_gem) = (0f32, 0f32);
    for item in r["images"].as_array().expect("images") {
        let file = item["file"].as_str().expect("file");
        let img = squire_models::image_io::load_rgb(&flickr().join(file)).expect("photo");
        let px = pre.preprocess(&img).expect("preprocess");
        let out = net.forward_pixels(&px, 1, 224, 224).expect("forward");
        assert_eq!(out.feature_map.dims(), &[1, 1280, 7, 7]);
        let logits = out
            .logits
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        let want = floats(&item["logits"]);
        let d = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst_logit = worst_logit.max(d);
        let gem = squire_models::efficientnet::gem_pool(&out.feature_map, 3.0, 1e-6).expect("gem");
        let g = gem
            .iter()
            .zip(floats(&item["gem_p3"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst_gem = worst_gem.max(g);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&i, &j| logits[j].total_cmp(&logits[i]));
        let want_top5: Vec<usize> = item["top5"]
            .as_array()
            .expect("top5")
            .iter()
            .map(|v| v.as_u64().expect("id") as usize)
            .collect();
        assert_eq!(&order[..5], &want_top5[..], "{file}");
        println!(
            "{file}: max |logit diff| {d:.2e}, max |gem diff| {g:.2e}, top-1 class {}",
            order[0]
        );
    }
    // The three dog photos' top-5 classes are all dog breeds (ImageNet ids 151–268).
    for item in r["images"].as_array().expect("images").iter().take(3) {
        for id in item["top5"].as_array().expect("top5") {
            let id = id.as_u64().expect("id");
            assert!(
                (151..=268).contains(&id),
                "{}: class {id} is not a dog breed",
                item["file"]
            );
        }
    }
    println!("worst: logits {worst_logit:.2e}, GeM {worst_gem:.2e}");
    assert!(
        worst_logit <= 1e-3 && worst_gem <= 1e-4,
        "logits {worst_logit}, gem {worst_gem}"
    );
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(dir) = pack_dir(false) else { return };
    let enc = SentenceEncoder::load(&dir.join("minilm")).expect("load");
    let r = reference();
    let caps: Vec<&str> = r["captions"]
        .as_array()
        .expect("captions")
        .iter()
        .map(|v| v.as_str().expect("str"))
        .collect();
    let got = enc.embed_texts(&caps).expect("embed");
    let want: Vec<f32> = r["minilm_embeddings"]
        .as_array()
        .expect("emb")
        .iter()
        .flat_map(floats)
        .collect();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!("MiniLM max |diff| over {} captions: {d:.2e}", caps.len());
    assert_eq!(got.len(), want.len());
    assert!(d <= 1e-4, "MiniLM differs by {d}");
}

#[test]
fn conse_vectors_point_at_the_right_words() {
    let Some(dir) = pack_dir(true) else { return };
    let pack = LitePack::load(&dir, LiteOptions::default()).expect("load");
    let dog = squire_models::image_io::load_rgb(&flickr().join("2094323311_27d58b1513.jpg"))
        .expect("dog photo");
    let bike = squire_models::image_io::load_rgb(&flickr().join("110595925_f3395c8bd6.jpg"))
        .expect("bike photo");
    let pre = LitePack::preprocessing();
    let mut px = pre.preprocess(&dog).expect("pre");
    px.extend(pre.preprocess(&bike).expect("pre"));
    let v = pack.embed_pixels(&px, 2).expect("embed");
    let q = pack
        .embed_texts(&["a dog running on grass", "a man riding a bicycle on a road"])
        .expect("texts");
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (d, b) = (&v.text[..384], &v.text[384..]);
    let (qd, qb) = (&q[..384], &q[384..]);
    println!(
        "dog·dog {:.3} dog·bike {:.3} bike·bike {:.3} bike·dog {:.3}",
        dot(d, qd),
        dot(d, qb),
        dot(b, qb),
        dot(b, qd)
    );
    assert!(dot(d, qd) > dot(d, qb) && dot(b, qb) > dot(b, qd));
    assert!(
        (dot(d, d) - 1.0).abs() < 1e-4 && (dot(&v.gem[..1280], &v.gem[..1280]) - 1.0).abs() < 1e-4
    );
}
