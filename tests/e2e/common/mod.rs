//! Helpers shared by the CLI integration tests.
#![allow(dead_code)] // not every helper is used by every test module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The committed fixtures (tiny CLIP checkpoint, sample images).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures")
}

/// Runs the `squire` binary offline with `home` as SQUIRE_HOME.
pub fn squire(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_squire"))
        .args(args)
        .env("SQUIRE_HOME", home)
        .env("SQUIRE_OFFLINE", "1")
        .output()
        .expect("run squire")
}

/// stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh, empty temporary directory named after the test binary and `tag`.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squire-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// A collection of the fixture photos under the tiny CLIP, in a fresh
/// scratch directory: (home, index dir, images dir).
pub fn tiny_collection(tag: &str) -> (PathBuf, String, String) {
    let root = scratch(tag);
    let home = root.join("home");
    let model = fixtures().join("tiny-clip").display().to_string();
    let images = fixtures().join("images").display().to_string();
    let idx = root.join("index").display().to_string();
    let o = squire(
        &home,
        &["index", &images, "--index", &idx, "--model", &model],
    );
    assert!(o.status.success(), "{}", text(&o));
    (home, idx, images)
}
