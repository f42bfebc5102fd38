//! End-to-end tests of `squire models` and `squire embed` through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("models/tests/fixtures")
}

/// An empty, private SQUIRE_HOME and Hugging Face cache, offline.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("squire-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Env { dir }
    }

    fn squire(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_squire"))
            .args(args)
            .env("SQUIRE_HOME", self.dir.join("home"))
            .env("HF_HOME", self.dir.join("hf"))
            .env_remove("HF_HUB_CACHE")
            .env("SQUIRE_OFFLINE", "1")
            .output()
            .expect("run squire")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn models_list_runs_offline_and_marks_weights_absent() {
    let env = Env::new("list");
    let o = env.squire(&["models", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for name in ["lite", "clip-vit-b32", "clip-vit-b16", "clip-vit-l14"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
        assert!(line.contains("absent"), "{line}");
    }
    let o = env.squire(&["models", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(4));
    assert_eq!(v[0]["present"], serde_json::json!(false));
}

#[test]
fn models_info_says_weights_are_absent_and_where_it_looked() {
    let env = Env::new("info");
    let o = env.squire(&["models", "info", "clip-vit-b32"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("NOT PRESENT"), "{out}");
    assert!(
        out.contains(
            &env.dir
                .join("home/models/clip-vit-b32")
                .display()
                .to_string()
        ),
        "{out}"
    );
    assert!(
        out.contains("models--openai--clip-vit-base-patch32"),
        "{out}"
    );
    assert!(out.contains("512"), "{out}");
}

#[test]
fn models_info_finds_weights_in_squire_home() {
    let env = Env::new("home");
    let dst = env.dir.join("home/models/clip-vit-b32");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), dst.join(f)).expect("copy");
    }
    let o = env.squire(&["models", "info", "clip-vit-b32", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["present"], serde_json::json!(true));
    assert_eq!(v["dim"], serde_json::json!(32));
    assert_eq!(v["source"], serde_json::json!("SquireHome"));
}

#[test]
fn embed_json_prints_the_vectors_the_parity_test_checks() {
    let env = Env::new("embed");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("clip-reference.json")).expect("read"),
    )
    .expect("json");
    let images: Vec<String> = meta["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    let captions: Vec<String> = meta["captions"]
        .as_array()
        .expect("captions")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    let refs = candle_core::safetensors::load(
        fixtures().join("clip-reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("reference");
    let img_ref = refs["image_embeds"].to_vec2::<f32>().expect("image_embeds");
    let txt_ref = refs["text_embeds"].to_vec2::<f32>().expect("text_embeds");

    let model = fixtures().join("tiny-clip");
    let mut args: Vec<String> = vec![
        "embed".into(),
        "--model".into(),
        model.display().to_string(),
        "--json".into(),
        "--image".into(),
    ];
    args.extend(
        images
            .iter()
            .map(|n| fixtures().join("images").join(n).display().to_string()),
    );
    args.push("--text".into());
    args.extend(captions.iter().filter(|c| !c.starts_with('-')).cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = env.squire(&argv);
    assert!(o.status.success(), "{}", text(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    let rows = rows.as_array().expect("array");
    let mut worst = 0f32;
    let mut n_img = 0;
    let mut n_txt = 0;
    for row in rows {
        let v: Vec<f32> = row["vector"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().expect("num") as f32)
            .collect();
        assert_eq!(row["dim"], serde_json::json!(32));
        let want = if row["kind"] == "image" {
            n_img += 1;
            let name = Path::new(row["input"].as_str().expect("input"))
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            &img_ref[images.iter().position(|n| *n == name).expect("known image")]
        } else {
            n_txt += 1;
            let t = row["input"].as_str().expect("input");
            &txt_ref[captions.iter().position(|c| c == t).expect("known caption")]
        };
        worst = v
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    assert_eq!(n_img, images.len());
    assert!(n_txt >= 20);
    assert!(
        worst <= 1e-4,
        "squire embed differs from the reference by {worst}"
    );
}

#[test]
fn embed_errors_are_clear_and_name_the_culprit() {
    let env = Env::new("err");
    let o = env.squire(&["embed", "--model", "clip-vit-b32", "--text", "hello"]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("not present") && out.contains("Looked in"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");

    let bad = env.dir.join("not-an-image.jpg");
    std::fs::write(&bad, "plain text").expect("write");
    let model = fixtures().join("tiny-clip").display().to_string();
    let o = env.squire(&[
        "embed",
        "--model",
        &model,
        "--image",
        bad.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("not-an-image.jpg"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    let o = env.squire(&["embed", "--model", "/no/such/dir/", "--text", "x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/no/such/dir/"), "{}", text(&o));
}

#[test]
fn models_info_finds_weights_in_the_hugging_face_cache() {
    let env = Env::new("hfcache");
    let repo = env.dir.join("hf/hub/models--openai--clip-vit-base-patch16");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).expect("mkdir");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), "0123abcd\n").expect("ref");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), snap.join(f)).expect("copy");
    }
    let o = env.squire(&["models", "info", "clip-vit-b16", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["source"], serde_json::json!("HfCache"));
    assert_eq!(v["present"], serde_json::json!(true));
    // Without preprocessor_config.json the CLIP defaults at the model's resolution apply.
    assert_eq!(v["files"]["preprocessor"], serde_json::Value::Null);
}
