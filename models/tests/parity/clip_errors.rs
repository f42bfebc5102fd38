//! Broken checkpoints give one clear error naming the file; nothing panics.

use std::path::{Path, PathBuf};

use squire_models::clip::{ClipModel, LoadOptions};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip")
}

/// A scratch copy of the tiny checkpoint, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("squire-clip-err-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "preprocessor_config.json",
        ] {
            std::fs::copy(fixture_dir().join(f), dir.join(f)).expect("copy fixture");
        }
        Scratch(dir)
    }

    /// Rewrites the copy's `config.json` with `edit` applied.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let p = self.0.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        edit(&mut cfg);
        std::fs::write(&p, cfg.to_string()).expect("write");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> String {
    match ClipModel::load(dir, LoadOptions::default()) {
        Ok(_) => panic!("a broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_weights_name_the_file() {
    let s = Scratch::new("trunc");
    let w = s.0.join("model.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    std::fs::write(&w, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = load_err(&s.0);
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt or truncated"),
        "{e}"
    );
}

#[test]
fn garbage_weights_name_the_file() {
    let s = Scratch::new("garbage");
    std::fs::write(
        s.0.join("model.safetensors"),
        b"this is not a safetensors file at all",
    )
    .expect("write");
    let e = load_err(&s.0);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_shapes_in_config_name_the_tensor_and_file() {
    let s = Scratch::new("shape");
    s.edit_config(|cfg| cfg["vision_config"]["hidden_size"] = serde_json::json!(48));
    let e = load_err(&s.0);
    assert!(
        e.contains("model.safetensors") && e.contains("has shape"),
        "{e}"
    );
}

#[test]
fn invalid_config_values_name_the_field() {
    let s = Scratch::new("heads");
    s.edit_config(|cfg| cfg["text_config"]["num_attention_heads"] = serde_json::json!(5));
    let e = load_err(&s.0);
    assert!(
        e.contains("config.json") && e.contains("text_config.num_attention_heads"),
        "{e}"
    );
    std::fs::write(s.0.join("config.json"), "{ not json").expect("write");
    let e = load_err(&s.0);
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer_names_the_file() {
    let s = Scratch::new("tok");
    std::fs::remove_file(s.0.join("tokenizer.json")).expect("rm");
    let e = load_err(&s.0);
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::write(s.0.join("tokenizer.json"), "{\"garbage\": true}").expect("write");
    let e = load_err(&s.0);
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn missing_class_embedding_is_refused() {
    let s = Scratch::new("cls");
    let w = s.0.join("model.safetensors");
    let mut all = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).expect("load");
    all.remove("vision_model.embeddings.class_embedding");
    candle_core::safetensors::save(&all, &w).expect("save");
    let e = load_err(&s.0);
    assert!(
        e.contains("class_embedding") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn out_of_vocabulary_ids_are_an_error_not_a_panic() {
    let m = ClipModel::load(&fixture_dir(), LoadOptions::default()).expect("loads");
    let e = m
        .embed_token_ids(&[vec![49406, 60000, 49407]])
        .expect_err("rejected");
    assert!(e.to_string().contains("60000"));
    assert!(m.embed_token_ids(&[vec![]]).is_err());
    assert!(m.embed_pixels(&[0.0; 10], 1).is_err());
}
