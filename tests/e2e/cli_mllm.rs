//! `squire search --sqaf` and `--rerank ebr` end to end, against a scripted
//! stand-in for an OpenAI-compatible server (tests/support: an in-process
//! HTTP server replaying a script; no model is involved), over a collection
//! of the sample photos under the tiny CLIP.

use std::process::Output;

use crate::common::{squire, text, tiny_collection};
use crate::scripted_openai::{Reply, ScriptedServer};
use serde_json::Value;

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("json: {e}\n{}", text(o)))
}

fn paths(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["path"].as_str().expect("path").to_string())
        .collect()
}

#[test]
fn scripted_server_sqaf_and_ebr_through_the_cli() {
    let (home, idx, images) = tiny_collection("mllm");
    let images = std::path::PathBuf::from(images);
    let root = home.parent().expect("scratch root").to_path_buf();
    let server = ScriptedServer::start(vec![
        Reply::answer("Caption: \"An astronaut in a blue suit.\""),
        Reply::answer("Ranking: {\"ranking\": [4, 3]}"),
    ]);
    let cache = root.join("mllm-cache").display().to_string();
    let grid = root.join("grid.png");
    let reference = images.join("astronaut.jpg").display().to_string();
    let base = [
        "search",
        "--index",
        &idx,
        "--image",
        &reference,
        "--text",
        "make the suit blue",
        "-k",
        "5",
        "--exact",
        "--json",
        "--sqaf",
        "--mllm",
        "openai",
        "--mllm-url",
        &server.url,
        "--mllm-model",
        "scripted",
        "--mllm-cache",
        &cache,
    ];
    // 1. SQAF alone: one call, the caption fused into the query.
    let v = json(&squire(&home, &base));
    assert_eq!(v["sqaf"]["caption"], "An astronaut in a blue suit.");
    assert_eq!(v["cost"]["sqaf"]["calls"], 1);
    assert_eq!(v["cost"]["sqaf"]["images"], 1);
    assert_eq!(v["cost"]["total"]["prompt_tokens"], 100);
    assert_eq!(v["mllm"]["model"], "scripted");
    let before = paths(&v);
    assert_eq!(before.len(), 5);
    // 2. SQAF + EBR on the top 4: the caption comes from the cache, EBR makes one call.
    let mut args = base.to_vec();
    let grid_s = grid.display().to_string();
    args.extend(["--rerank", "ebr", "--ebr-k", "4", "--save-grid", &grid_s]);
    let v = json(&squire(&home, &args));
    assert_eq!(
        (
            v["cost"]["sqaf"]["cache_hits"].as_u64(),
            v["cost"]["sqaf"]["requests"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(
        (
            v["cost"]["ebr"]["calls"].as_u64(),
            v["cost"]["ebr"]["images"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(v["ebr"]["mentioned"], 2);
    assert!(v["ebr"]["fallback"].is_null());
    assert_eq!(v["ebr"]["read"], "json", "{}", v["ebr"]);
    assert!(v["timings"]["ebr_ms"].as_f64().is_some());
    let after = paths(&v);
    let want: Vec<String> = [3, 2, 0, 1, 4].iter().map(|&i| before[i].clone()).collect();
    assert_eq!(after, want, "the order follows the scripted answer");
    assert_eq!(v["results"][0]["first_stage_rank"], 4);
    assert_eq!(
        server.seen().len(),
        2,
        "one SQAF request, then one EBR request"
    );
    let g = image::open(&grid).expect("the saved grid").to_rgb8();
    assert_eq!(g.dimensions(), (6 + 2 * 342, 6 + 2 * 342));
    // The EBR request carried the caption.
    let ebr_req = server.seen()[1].body.to_string();
    assert!(ebr_req.contains("An astronaut in a blue suit.") && ebr_req.contains("marks 1 to 4"));
    // 3. Text output prints the caption.
    let o = squire(
        &home,
        &base[..base.len()]
            .iter()
            .filter(|a| **a != "--json")
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("caption (SQAF): An astronaut in a blue suit."),
        "{}",
        text(&o)
    );
}

#[test]
fn an_unreachable_server_falls_back_and_bad_options_are_named() {
    let (home, idx, _) = tiny_collection("mllm-errors");
    // No MLLM given.
    let o = squire(
        &home,
        &[
            "search", "--index", &idx, "--text", "a cat", "--rerank", "ebr",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--mllm"), "{}", text(&o));
    // SQAF needs a composed query.
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a cat",
            "--sqaf",
            "--mllm",
            "openai",
            "--mllm-model",
            "m",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("composed"), "{}", text(&o));
    // K beyond the grids allowed.
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a cat",
            "--rerank",
            "ebr",
            "--ebr-k",
            "100",
            "--mllm",
            "openai",
            "--mllm-model",
            "m",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--ebr-k 100"), "{}", text(&o));
    // Nothing listens on port 9: EBR keeps the first-stage order and says why.
    let first = json(&squire(
        &home,
        &[
            "search", "--index", &idx, "--text", "a cat", "--exact", "--json",
        ],
    ));
    let v = json(&squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a cat",
            "--exact",
            "--json",
            "--rerank",
            "ebr",
            "--mllm",
            "openai",
            "--mllm-url",
            "http://127.0.0.1:9/v1",
            "--mllm-model",
            "m",
            "--mllm-retries",
            "0",
            "--mllm-cache",
            "none",
        ],
    ));
    let why = v["ebr"]["fallback"].as_str().expect("fallback");
    // The URL once, the attempts counted.
    assert!(
        why.contains("127.0.0.1:9")
            && why.matches("127.0.0.1:9").count() == 1
            && why.contains("after 1 attempt(s)"),
        "{why}"
    );
    assert_eq!(v["ebr"]["read"], "fallback");
    assert_eq!(paths(&v), paths(&first));
    assert_eq!(v["cost"]["ebr"]["requests"], 1);
}

#[test]
fn scripted_server_cotrr_then_pointwise_through_the_cli() {
    let (home, idx, _) = tiny_collection("mllm-cotrr");
    let first = json(&squire(
        &home,
        &[
            "search", "--index", &idx, "--text", "a cat", "--exact", "--json", "-k", "6",
        ],
    ));
    let before = paths(&first);
    let lp = |yes: f64| {
        Reply::answer_with_logprobs("Yes", &[("Yes", yes.ln()), ("No", (1.0 - yes).ln())])
    };
    let server = ScriptedServer::start(vec![
        Reply::answer(r#"{"reasoning": "a cat: subject. Image 3 shows one.", "ranking": [3, 2]}"#),
        // Pointwise over the new top 3, one call at a time.
        lp(0.1),
        lp(0.2),
        lp(0.9),
    ]);
    let v = json(&squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a cat",
            "--exact",
            "--json",
            "-k",
            "6",
            "--rerank",
            "cotrr,pointwise",
            "--cotrr-k",
            "4",
            "--pointwise-k",
            "3",
            "--mllm",
            "openai",
            "--mllm-url",
            &server.url,
            "--mllm-model",
            "scripted",
            "--mllm-cache",
            "none",
            "--mllm-concurrency",
            "1",
        ],
    ));
    // CoTRR puts [2, 1, 0, 3] first; pointwise then scores its top 3 at 0.1, 0.2, 0.9 and reverses them.
    let after = paths(&v);
    let cotrr: Vec<usize> = vec![2, 1, 0, 3, 4, 5];
    let pointwise_top: Vec<usize> = vec![cotrr[2], cotrr[1], cotrr[0]];
    let expected: Vec<String> = pointwise_top
        .iter()
        .chain(&cotrr[3..])
        .map(|&i| before[i].clone())
        .collect();
    assert_eq!(after, expected);
    assert_eq!(v["stages"], serde_json::json!(["cotrr", "pointwise"]));
    assert_eq!(
        v["cotrr"]["reasoning"][0],
        "a cat: subject. Image 3 shows one."
    );
    assert_eq!(v["cotrr"]["windows"], 1);
    assert_eq!(
        (
            v["cost"]["cotrr"]["calls"].as_u64(),
            v["cost"]["cotrr"]["images"].as_u64()
        ),
        (Some(1), Some(4))
    );
    assert_eq!(
        (
            v["cost"]["pointwise"]["calls"].as_u64(),
            v["cost"]["pointwise"]["completion_tokens"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert!(
        v["timings"]["cotrr_ms"].as_f64().is_some()
            && v["timings"]["pointwise_ms"].as_f64().is_some()
    );
    assert_eq!(server.seen().len(), 4);
}

#[test]
fn local_tiny_qwen3vl_sqaf_and_ebr_through_the_cli() {
    // The in-process Qwen3-VL backend on the tiny random-weight fixture: its
    // answers are nonsense, so this checks the plumbing (a caption is fused,
    // one EBR call is made, the order stays a permutation of the first stage).
    let (home, idx, images) = tiny_collection("mllm-local");
    let model = crate::common::fixtures()
        .join("tiny-qwen3vl")
        .display()
        .to_string();
    let reference = std::path::Path::new(&images)
        .join("astronaut.jpg")
        .display()
        .to_string();
    let base = [
        "search",
        "--index",
        &idx,
        "--image",
        &reference,
        "--text",
        "make the suit blue",
        "-k",
        "5",
        "--exact",
        "--json",
        "--mllm",
        "local",
        "--mllm-model",
        &model,
        "--mllm-cache",
        "none",
    ];
    let first = json(&squire(&home, &base));
    let mut args = base.to_vec();
    // No second ask: a nonsense answer (fewer than two marks) falls back at once.
    args.extend([
        "--sqaf",
        "--rerank",
        "ebr",
        "--ebr-k",
        "4",
        "--ebr-retries",
        "0",
        "--mllm-dtype",
        "bf16",
    ]);
    let v = json(&squire(&home, &args));
    assert_eq!(v["mllm"]["backend"], "local");
    assert_eq!(v["mllm"]["dtype"], "bf16");
    assert!(v["mllm"]["model"]
        .as_str()
        .expect("model id")
        .starts_with("local:"));
    assert!(v["sqaf"]["caption"].is_string(), "{}", v["sqaf"]);
    assert_eq!(v["cost"]["sqaf"]["calls"], 1);
    assert_eq!(v["cost"]["ebr"]["calls"], 1, "one call for 4 candidates");
    let read = v["ebr"]["read"].as_str().expect("read");
    assert!(
        ["json", "list", "prose", "fallback"].contains(&read),
        "{read}"
    );
    assert_eq!(
        v["ebr"]["fallback"].is_string(),
        read == "fallback",
        "{}",
        v["ebr"]
    );
    assert!(
        v["cost"]["total"]["prompt_tokens"]
            .as_u64()
            .expect("tokens")
            > 0
    );
    // SQAF moves the query, so the order may differ from `first`; every
    // result is still a gallery image, once.
    let gallery: Vec<String> = paths(&first);
    let mut got = paths(&v);
    assert_eq!(got.len(), 5);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5, "no result repeats");
    assert!(gallery
        .iter()
        .all(|p| std::path::Path::new(&images).join(p).is_file()));
    assert!(got
        .iter()
        .all(|p| std::path::Path::new(&images).join(p).is_file()));
    // A checkpoint that is not there is named.
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a cat",
            "--sqaf",
            "--mllm",
            "local",
            "--mllm-model",
            "/nonexistent/qwen",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/qwen"), "{}", text(&o));
}

#[test]
fn scripted_server_first_orders_marks_by_first_token_logprobs_in_one_single_token_call() {
    let (home, idx, _) = tiny_collection("mllm-first");
    let base = [
        "search", "--index", &idx, "--text", "a cat", "--exact", "--json", "-k", "10",
    ];
    let first = json(&squire(&home, &base));
    let before = paths(&first);
    // Marks 4 > 1 > 7 among the alternatives (and tokens that are no mark).
    let server = ScriptedServer::start(vec![Reply::answer_with_logprobs(
        "4",
        &[
            ("4", -0.2),
            ("1", -1.1),
            ("hello", -1.5),
            ("7", -2.3),
            ("12", -3.0),
        ],
    )]);
    let mllm = [
        "--mllm",
        "openai",
        "--mllm-url",
        &server.url,
        "--mllm-model",
        "scripted",
        "--mllm-cache",
        "none",
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--rerank", "first", "--first-k", "9"]);
    args.extend(mllm);
    let v = json(&squire(&home, &args));
    let expected: Vec<String> = [3usize, 0, 6, 1, 2, 4, 5, 7, 8, 9]
        .iter()
        .map(|&i| before[i].clone())
        .collect();
    assert_eq!(paths(&v), expected);
    assert_eq!(v["stages"], serde_json::json!(["first"]));
    assert_eq!(v["first"]["read"], "logprobs", "{v}");
    assert_eq!(
        (
            v["cost"]["first"]["calls"].as_u64(),
            v["cost"]["first"]["images"].as_u64()
        ),
        (Some(1), Some(1)),
        "{v}"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    assert_eq!(
        (
            body["max_tokens"].as_u64(),
            body["logprobs"].as_bool(),
            body["top_logprobs"].as_u64()
        ),
        (Some(1), Some(true), Some(20)),
        "{body}"
    );
    // K over 20 cannot be read from an OpenAI-compatible server's 20 alternatives.
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--rerank", "first", "--first-k", "21"]);
    args.extend(mllm);
    let o = squire(&home, &args);
    assert!(
        !o.status.success() && text(&o).contains("--first-k 21") && text(&o).contains("at most 20"),
        "{}",
        text(&o)
    );
    assert_eq!(server.seen().len(), 1, "nothing sent for a refused K");
}

/// The mean red value of a data-URL image in a request.
fn level_of(url: &str) -> f64 {
    use base64::Engine as _;
    let b64 = url.split_once(",").map(|(_, b)| b).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let img = image::load_from_memory(&bytes).expect("image").to_rgb8();
    img.pixels().map(|p| p[0] as f64).sum::<f64>() / (img.width() * img.height()) as f64
}

#[test]
fn scripted_server_preferring_the_darker_image_prp_sorts_by_it_in_every_mode_with_the_formula_calls(
) {
    let root = crate::common::scratch("mllm-prp");
    let (home, lib) = (root.join("home"), root.join("lib"));
    std::fs::create_dir_all(&lib).expect("mkdir");
    let levels = [130u8, 30, 210, 90, 170, 50, 250, 10, 110, 190];
    for (i, l) in levels.iter().enumerate() {
        image::RgbImage::from_pixel(40, 40, image::Rgb([*l, 100, 100]))
            .save(lib.join(format!("img{i}.png")))
            .expect("png");
    }
    let idx = root.join("index").display().to_string();
    let model = crate::common::fixtures()
        .join("tiny-clip")
        .display()
        .to_string();
    let o = squire(
        &home,
        &[
            "index",
            &lib.display().to_string(),
            "--index",
            &idx,
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The rule: the darker (smaller red) of A and B wins, said with log-probabilities.
    let server = ScriptedServer::respond(|body| {
        let urls: Vec<String> = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["image_url"]["url"].as_str().map(str::to_string))
            .collect();
        let (a, b) = (
            level_of(&urls[urls.len() - 2]),
            level_of(&urls[urls.len() - 1]),
        );
        let (win, lose) = if a < b { ("A", "B") } else { ("B", "A") };
        Reply::answer_with_logprobs(win, &[(win, 0.9f64.ln()), (lose, 0.1f64.ln())])
    });
    let mut want: Vec<usize> = (0..10).collect();
    want.sort_by_key(|&i| levels[i]);
    let want: Vec<String> = want.iter().map(|i| format!("img{i}.png")).collect();
    for (mode, passes, calls) in [
        ("allpairs", "3", Some(90)),
        ("sliding", "9", Some(90)),
        ("sorting", "3", None),
    ] {
        let before = server.seen().len();
        let v = json(&squire(
            &home,
            &[
                "search",
                "--index",
                &idx,
                "--text",
                "a red square",
                "--exact",
                "--json",
                "-k",
                "10",
                "--rerank",
                "prp",
                "--prp-k",
                "10",
                "--prp-mode",
                mode,
                "--prp-passes",
                passes,
                "--mllm",
                "openai",
                "--mllm-url",
                &server.url,
                "--mllm-model",
                "scripted",
                "--mllm-cache",
                "none",
            ],
        ));
        assert_eq!(paths(&v), want, "{mode}");
        assert_eq!(v["prp"]["read"], "logprobs", "{mode}: {v}");
        let made = v["cost"]["prp"]["calls"].as_u64().expect("calls") as usize;
        assert_eq!(server.seen().len() - before, made, "{mode}");
        match calls {
            Some(c) => assert_eq!(made, c, "{mode}"),
            // A merge sort of 10 makes at most 25 comparisons, 2 calls each.
            None => assert!(
                made % 2 == 0 && made <= 50 && made >= 2 * 9,
                "{mode}: {made}"
            ),
        }
        eprintln!("prp {mode}: {made} calls");
    }
    // Sliding with 2 passes fixes the top two only: 2·(9 + 8) calls.
    let v = json(&squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "a red square",
            "--exact",
            "--json",
            "-k",
            "10",
            "--rerank",
            "prp",
            "--prp-mode",
            "sliding",
            "--prp-passes",
            "2",
            "--mllm",
            "openai",
            "--mllm-url",
            &server.url,
            "--mllm-model",
            "scripted",
            "--mllm-cache",
            "none",
        ],
    ));
    assert_eq!(&paths(&v)[..2], &want[..2]);
    assert_eq!(v["cost"]["prp"]["calls"], 34);
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "x",
            "--rerank",
            "prp",
            "--prp-mode",
            "bubbles",
            "--mllm",
            "openai",
            "--mllm-url",
            &server.url,
            "--mllm-model",
            "scripted",
        ],
    );
    assert!(
        !o.status.success()
            && text(&o).contains("--prp-mode bubbles: expected allpairs, sorting or sliding"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&root);
}
