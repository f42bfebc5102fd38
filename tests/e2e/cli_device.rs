//! `--device auto|cpu|gpu` through the CLI: exact search on the GPU backend
//! gives the CPU's results, and a machine without any GPU driver falls back
//! (auto) or fails clearly (gpu).
//!
//! "No driver at all" is simulated by restricting wgpu to Vulkan
//! (`WGPU_BACKEND=vulkan`) and pointing the Vulkan loader at a driver list
//! that does not exist: the loader then finds no driver, exactly as on a
//! machine without Vulkan or GL drivers.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{squire, text, tiny_collection};

fn squire_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_squire"));
    c.args(args)
        .env("SQUIRE_HOME", home)
        .env("SQUIRE_OFFLINE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run squire")
}

fn results(o: &Output) -> Vec<(String, f64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("json: {e}\n{}", text(o)));
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                r["score"].as_f64().expect("score"),
            )
        })
        .collect()
}

#[test]
fn device_choice_through_the_cli() {
    let (home, idx, _) = tiny_collection("device");
    let query = [
        "search", "--index", &idx, "--text", "a cat", "-k", "5", "--exact", "--json",
    ];

    // The CPU backend is the reference.
    let cpu = squire(&home, &[&query[..], &["--device", "cpu"]].concat());
    assert!(cpu.status.success(), "{}", text(&cpu));
    let want = results(&cpu);
    assert_eq!(want.len(), 5);

    // No driver: auto falls back with exactly one log line, gpu fails clearly.
    let none = [
        ("WGPU_BACKEND", "vulkan"),
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
    ];
    let auto = squire_env(
        &home,
        &[&query[..], &["--device", "auto", "--log", "info"]].concat(),
        &none,
    );
    assert!(auto.status.success(), "{}", text(&auto));
    let stderr = String::from_utf8_lossy(&auto.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("device auto"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(lines[0].contains("using the CPU backend"), "{stderr}");
    assert_eq!(results(&auto), want);
    let gpu = squire_env(&home, &[&query[..], &["--device", "gpu"]].concat(), &none);
    assert_eq!(gpu.status.code(), Some(1), "{}", text(&gpu));
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(
        err.contains("no GPU adapter found") && err.contains("--device cpu"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // With an adapter (lavapipe in CI), the GPU backend returns the same ids.
    let gpu = squire(&home, &[&query[..], &["--device", "gpu"]].concat());
    if !gpu.status.success() {
        assert_ne!(
            std::env::var("SQUIRE_REQUIRE_GPU").as_deref(),
            Ok("1"),
            "SQUIRE_REQUIRE_GPU=1: {}",
            text(&gpu)
        );
        eprintln!("skipping the GPU half: {}", text(&gpu));
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&gpu.stdout).expect("json");
    assert_eq!(v["store"]["device"], "gpu");
    let got = results(&gpu);
    assert_eq!(
        got.iter().map(|r| &r.0).collect::<Vec<_>>(),
        want.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    for (g, c) in got.iter().zip(&want) {
        assert!(
            (g.1 - c.1).abs() <= 1e-4 * c.1.abs().max(1.0),
            "{} vs {}",
            g.1,
            c.1
        );
    }
}

#[test]
fn superglobal_rerank_through_the_cli() {
    let (home, idx, images) = tiny_collection("superglobal");
    let first = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--image",
            &format!("{images}/astronaut.jpg"),
            "-k",
            "8",
            "--json",
        ],
    );
    assert!(first.status.success(), "{}", text(&first));
    let first_ids: Vec<String> = results(&first).into_iter().map(|r| r.0).collect();
    let args = [
        "search",
        "--index",
        &idx,
        "--image",
        &format!("{images}/astronaut.jpg"),
        "-k",
        "5",
        "--rerank",
        "superglobal",
        "--sg-m",
        "8",
        "--sg-k",
        "2",
        "--device",
        "cpu",
        "--json",
    ];
    let o = squire(&home, &args);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["rerank"]["method"], "superglobal");
    assert_eq!(v["rerank"]["m"], 8);
    // The query expands over the top K + 1, as in the authors' code, unless --sg-query-top says otherwise.
    assert_eq!(
        (v["rerank"]["k"].as_u64(), v["rerank"]["query_top"].as_u64()),
        (Some(2), Some(3)),
        "{v}"
    );
    assert!(v["timings"]["rerank_ms"].as_f64().is_some(), "{v}");
    let got = results(&o);
    assert_eq!(got.len(), 5);
    // Reranking reorders the first stage's top M; it never invents results.
    for (i, r) in v["results"].as_array().expect("results").iter().enumerate() {
        let id = r["id"].as_str().expect("id");
        assert!(
            first_ids.iter().any(|f| f == id),
            "{id} not in the first stage's top 8"
        );
        let fr = r["first_stage_rank"].as_u64().expect("first_stage_rank") as usize;
        assert_eq!(first_ids[fr - 1], id, "result {i}");
    }
    // Bad parameters are refused before any work.
    let o = squire(
        &home,
        &[
            "search", "--index", &idx, "--text", "x", "--rerank", "magic",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("magic"),
        "{}",
        text(&o)
    );
}
