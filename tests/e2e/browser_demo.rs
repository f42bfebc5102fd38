//! The demo page in a real browser: `squire serve` over the tiny CLIP
//! collection (with a scripted stand-in for the MLLM, so EBR runs), driven
//! by headless Chromium through playwright-core
//! (`demo-ui/browser-test/run.mjs`). Screenshots are written to
//! `target/tmp/browser-demo/`.
//!
//! Needs node, Debian's `chromium` and `npm ci` in demo-ui/browser-test
//! (`.ci/run` does all three). Without them the test is skipped, unless
//! SQUIRE_REQUIRE_BROWSER=1 (set by `.ci/run`), when it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::tiny_collection;
use crate::scripted_openai::{Reply, ScriptedServer};
use serde_json::Value;

fn missing_tools(test_dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if Command::new("node")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        missing.push("node".to_string());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing.push(format!("{chromium} (apt-get install chromium)"));
    }
    if !test_dir.join("node_modules/playwright-core").is_dir() {
        missing.push(format!(
            "playwright-core (npm ci --prefix {})",
            test_dir.display()
        ));
    }
    missing
}

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn scripted_mllm_server_demo_page_in_headless_chromium() {
    let test_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo-ui/browser-test");
    let missing = missing_tools(&test_dir);
    if !missing.is_empty() {
        assert!(
            std::env::var("SQUIRE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "SQUIRE_REQUIRE_BROWSER=1 but missing: {missing:?}"
        );
        eprintln!("skipped: missing {missing:?}");
        return;
    }
    let (home, idx, images) = tiny_collection("browser");
    let mllm = ScriptedServer::start(
        (0..6)
            .map(|_| Reply::answer("{\"ranking\": [3, 1, 2]}"))
            .collect(),
    );
    let mut server = Child(
        Command::new(env!("CARGO_BIN_EXE_squire"))
            .args([
                "serve",
                "--index",
                &idx,
                "--addr",
                "127.0.0.1:0",
                "--device",
                "cpu",
                "--ebr-k",
                "4",
            ])
            .args([
                "--mllm",
                "openai",
                "--mllm-url",
                &mllm.url,
                "--mllm-model",
                "scripted",
                "--mllm-cache",
                "none",
            ])
            .env("SQUIRE_HOME", &home)
            .env("SQUIRE_OFFLINE", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start squire serve"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-demo");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("mkdir");
    let bad = out.join("notes.jpg");
    std::fs::write(&bad, "this is not a picture").expect("write");
    let image = Path::new(&images).join("rocket-444.jpg");
    let run = Command::new("node")
        .arg(test_dir.join("run.mjs"))
        .args([
            &url,
            &image.display().to_string(),
            &bad.display().to_string(),
            &out.display().to_string(),
        ])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{report}");
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {report}"));
    assert_eq!(
        seen["steps"],
        serde_json::json!([
            "text",
            "composed",
            "superglobal",
            "ebr",
            "similar",
            "bad-upload",
            "phone"
        ]),
        "{report}"
    );
    assert_eq!(
        seen["rerankers"],
        serde_json::json!([
            "none",
            "superglobal",
            "ebr",
            "cotrr",
            "pointwise",
            "first",
            "prp",
            "superglobal,ebr"
        ]),
        "{report}"
    );
    assert!(
        seen["collection"]
            .as_str()
            .unwrap_or("")
            .contains("10 images"),
        "{report}"
    );
    for key in [
        "text_status",
        "composed_status",
        "superglobal_status",
        "ebr_status",
        "similar_status",
    ] {
        assert_eq!(seen[key], 200, "{key}: {report}");
    }
    assert!(seen["text_results"].as_u64().unwrap_or(0) >= 8, "{report}");
    assert!(
        seen["text_summary"]
            .as_str()
            .unwrap_or("")
            .starts_with("text query"),
        "{report}"
    );
    assert!(
        seen["composed_summary"]
            .as_str()
            .unwrap_or("")
            .starts_with("composed query"),
        "{report}"
    );
    assert_eq!(
        seen["superglobal_stages"],
        serde_json::json!(["first", "superglobal"]),
        "{report}"
    );
    assert_eq!(
        seen["ebr_stages"],
        serde_json::json!(["first", "ebr"]),
        "{report}"
    );
    // 4 candidates in a 3×3 grid of 336 px cells with 8 px gaps.
    assert!(seen["ebr_grid"][0].as_u64().unwrap_or(0) > 300, "{report}");
    assert_eq!(seen["bad_status"], 400, "{report}");
    assert!(
        seen["bad_message"]
            .as_str()
            .unwrap_or("")
            .contains("notes.jpg"),
        "{report}"
    );
    assert!(
        seen["phone_overflow"].as_i64().unwrap_or(1) <= 0,
        "the page is wider than a phone: {report}"
    );
    assert_eq!(seen["page_errors"], serde_json::json!([]), "{report}");
    assert_eq!(mllm.seen().len(), 1, "one EBR call");
    for shot in ["demo.png", "demo-phone.png"] {
        let img = image::open(out.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(img.width() >= 390, "{shot}");
    }
}
