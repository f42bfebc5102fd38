//! The local Qwen3-VL backend against transformers' `Qwen3VLForConditionalGeneration`
//! on a tiny random-weight model (`scripts/make_qwen3vl_fixtures.py`): the
//! processor's pixels, the chat template's token ids, the prompt's logits and
//! the greedy continuation, all through the real loader and generation loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::load;
use candle_core::Device;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};
use squire_models::qwen3vl::{Prompt, Qwen3Vl};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> (
    serde_json::Value,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("qwen3vl-reference.json")).unwrap(),
    )
    .unwrap();
    let tensors = load(
        fixtures().join("qwen3vl-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (meta, tensors)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn messages(case: &str, image: Arc<image::RgbImage>) -> Vec<Message> {
    match case {
        "image" => vec![Message::user(vec![
            Part::Image(image),
            Part::Text("Describe the target image in one sentence.".into()),
        ])],
        _ => vec![
            Message::system("Rank the candidate images."),
            Message::user(vec![Part::Text("Make it red and sleeveless.".into())]),
        ],
    }
}

#[test]
fn tiny_qwen3vl_matches_transformers() {
    let model = Qwen3Vl::load(&fixtures().join("tiny-qwen3vl")).unwrap();
    let (meta, tensors) = reference();
    let image = Arc::new(
        squire_models::image_io::load_rgb(&fixtures().join(meta["image"].as_str().unwrap()))
            .unwrap(),
    );

    // Pixels: Pillow-exact resize, so only float rounding differs.
    let patches = model.preprocess(&image).unwrap();
    let grid = ids(&meta["image_grid_thw"]);
    assert_eq!(
        (patches.grid_h as u32, patches.grid_w as u32),
        (grid[1], grid[2])
    );
    let want_px = tensors["image.pixel_values"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let px_diff = max_diff(&patches.values, &want_px);
    assert!(px_diff < 1e-5, "pixel values differ by {px_diff}");

    // The vision tower alone: merged tokens and every DeepStack level.
    let out = model.vision_tower().forward(&patches).unwrap();
    let scale = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut levels = vec![("merged".to_string(), out.embeds.clone())];
    levels.extend(
        out.deepstack
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("deepstack.{i}"), t.clone())),
    );
    assert_eq!(out.deepstack.len(), 2);
    for (name, t) in levels {
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = tensors[&format!("vision.{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_diff(&got, &want);
        eprintln!(
            "vision {name}: max |Δ| {d:.2e} (values up to {:.2})",
            scale(&want)
        );
        assert!(
            d < 1e-4 * (1.0 + scale(&want)),
            "vision {name} differs by {d}"
        );
    }

    for case in ["image", "text"] {
        let c = &meta["cases"][case];
        let prompt: Prompt = model.prompt(&messages(case, image.clone())).unwrap();
        assert_eq!(
            prompt.ids,
            ids(&c["input_ids"]),
            "{case}: chat template token ids"
        );
        let logits = model
            .prompt_logits(&prompt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = tensors[&format!("{case}.logits")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_diff(&logits, &want);
        eprintln!(
            "{case}: {} prompt tokens, logits max |Δ| {d:.2e}, pixels {px_diff:.2e}",
            prompt.ids.len()
        );
        assert!(d < 1e-4, "{case}: logits differ by {d}");
        let (generated, _) = model.generate(&prompt, 12, 0.0).unwrap();
        assert_eq!(
            generated,
            ids(&c["generated"]),
            "{case}: greedy continuation"
        );
    }
}

#[test]
fn tiny_qwen3vl_answers_chat_requests_end_to_end() {
    let model = Qwen3Vl::load(&fixtures().join("tiny-qwen3vl")).unwrap();
    let (meta, _) = reference();
    let image = Arc::new(
        squire_models::image_io::load_rgb(&fixtures().join(meta["image"].as_str().unwrap()))
            .unwrap(),
    );
    let mut req = ChatRequest::new(messages("image", image), 12);
    req.first_token_logprobs = Some(3);
    let answer = model.chat(&req).unwrap();
    let want = ids(&meta["cases"]["image"]["generated"]);
    assert_eq!(answer.text, model.decode(&want).unwrap());
    assert_eq!(answer.usage.completion_tokens, want.len() as u64);
    assert_eq!(
        answer.usage.prompt_tokens,
        meta["cases"]["image"]["input_ids"]
            .as_array()
            .unwrap()
            .len() as u64
    );
    // The first logprob is the greedy token's, and they are sorted.
    assert_eq!(answer.first_token_logprobs.len(), 3);
    assert_eq!(
        answer.first_token_logprobs[0].0,
        model.tokenizer().decode(&want[..1], false).unwrap()
    );
    assert!(answer
        .first_token_logprobs
        .windows(2)
        .all(|w| w[0].1 >= w[1].1));
    // Sampling is seeded: the same request twice gives the same answer; max_tokens holds.
    let mut sampled = ChatRequest::new(messages("text", Arc::new(image::RgbImage::new(1, 1))), 5);
    sampled.temperature = 0.8;
    let (a, b) = (model.chat(&sampled).unwrap(), model.chat(&sampled).unwrap());
    assert_eq!(a.text, b.text);
    assert!(a.usage.completion_tokens <= 5);
    assert!(model.model_id().starts_with("local:"));
}

#[test]
fn broken_qwen3vl_checkpoints_name_the_file() {
    let src = fixtures().join("tiny-qwen3vl");
    let dir = tempdir();
    for f in [
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // No weights.
    let err = Qwen3Vl::load(&dir).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // Truncated weights.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Qwen3Vl::load(&dir).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // A config whose heads do not fit.
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = Qwen3Vl::load(&dir).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("num_key_value_heads"),
        "{err}"
    );
    // A missing tokenizer.
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = Qwen3Vl::load(&dir).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "squire-qwen3vl-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tiny_qwen3vl_half_precision_stays_close() {
    let (meta, tensors) = reference();
    let image = Arc::new(
        squire_models::image_io::load_rgb(&fixtures().join(meta["image"].as_str().unwrap()))
            .unwrap(),
    );
    let want = tensors["image.logits"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let spread = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for dtype in [candle_core::DType::BF16, candle_core::DType::F16] {
        let model = Qwen3Vl::load_as(&fixtures().join("tiny-qwen3vl"), dtype).unwrap();
        let prompt = model.prompt(&messages("image", image.clone())).unwrap();
        let got = model
            .prompt_logits(&prompt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_diff(&got, &want);
        eprintln!("{dtype:?}: logits max |Δ| {d:.3} (logits up to {spread:.2})");
        assert!(
            d < 0.1 * spread,
            "{dtype:?}: logits differ by {d} (scale {spread})"
        );
        let (generated, _) = model.generate(&prompt, 4, 0.0).unwrap();
        assert_eq!(generated.len(), 4);
    }
    assert!(Qwen3Vl::load_as(&fixtures().join("tiny-qwen3vl"), candle_core::DType::U8).is_err());
}
