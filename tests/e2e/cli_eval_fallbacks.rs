//! `squire eval t2i --rerank ebr` against a scripted stand-in for an
//! OpenAI-compatible server (tests/support: it replays a script, no model is
//! involved) that refuses every other query's request for good: the run
//! reports exactly those queries as fallbacks, says it is incomplete and
//! fails, and a rerun against a healthy server asks again for those queries
//! only and then reports none.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{squire, text, tiny_collection};
use crate::scripted_openai::{Reply, ScriptedServer};

const IMAGES: [&str; 4] = [
    "astronaut.jpg",
    "chelsea-420.jpg",
    "coffee-progressive.jpg",
    "rocket-444.jpg",
];

/// Query `i`'s text (no caption is a prefix of another's).
fn caption(i: usize) -> String {
    format!("photo {i} of twenty")
}

/// The logged EBR stage of each query: qid → (read, fallback reason).
fn logged(out: &Path) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    let log = std::fs::read_to_string(out.join("queries.jsonl")).expect("queries.jsonl");
    let mut m = std::collections::BTreeMap::new();
    for line in log.lines() {
        let q: Value = serde_json::from_str(line).expect("a JSON line");
        let ebr = q["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|s| s["stage"] == "ebr")
            .expect("an ebr stage")
            .clone();
        m.insert(
            q["qid"].as_str().expect("qid").to_string(),
            (
                ebr["read"].as_str().unwrap_or("-").to_string(),
                ebr["fallback"].as_str().map(str::to_string),
            ),
        );
    }
    m
}

#[test]
fn scripted_server_failing_every_other_query_eval_reports_fallbacks_and_the_rerun_retries_only_them(
) {
    let (home, idx, _) = tiny_collection("eval-fallbacks");
    let root = home.parent().expect("scratch root").to_path_buf();
    let tsv = root.join("q.tsv");
    let mut rows = String::from("query_id\tcaption\trelevant_image\n");
    for i in 0..20 {
        rows.push_str(&format!(
            "q{i:02}\t{}\t{}\n",
            caption(i),
            IMAGES[i % IMAGES.len()]
        ));
    }
    std::fs::write(&tsv, rows).expect("tsv");
    let out = root.join("eval-ebr");
    let (tsv_s, out_s) = (tsv.display().to_string(), out.display().to_string());
    let args = |url: &str| -> Vec<String> {
        [
            "eval",
            "t2i",
            "--index",
            &idx,
            "--queries",
            &tsv_s,
            "--out",
            &out_s,
            "--rerank",
            "ebr",
            "--ebr-k",
            "4",
            "--mllm",
            "openai",
            "--mllm-url",
            url,
            "--mllm-model",
            "scripted",
            "--mllm-cache",
            "none",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Queries run in file order: odd ones get a 400 (not retried), q00 a prose answer, the rest JSON.
    let script = (0..20)
        .map(|i| match i {
            _ if i % 2 == 1 => Reply::status(400),
            0 => Reply::answer("Image 2 fits best, then image 1."),
            _ => Reply::answer("{\"ranking\": [2, 1, 3, 4]}"),
        })
        .collect();
    let server = ScriptedServer::start(script);
    let a = args(&server.url);
    let o = squire(&home, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !o.status.success(),
        "a run that fell back must fail by default: {}",
        text(&o)
    );
    let all = text(&o);
    assert!(
        all.contains("incomplete evaluation") && all.contains("ebr on 10 of 20 queries"),
        "{all}"
    );
    assert!(
        all.contains("ebr: answers read as fallback 10, json 9, prose 1 (of 20 queries)"),
        "{all}"
    );
    assert_eq!(server.seen().len(), 20);
    let v: Value = serde_json::from_slice(&o.stdout).expect("the JSON report is still printed");
    assert_eq!(v["queries"], 20);
    assert_eq!(v["cost"]["ebr"]["calls"], 20);
    assert!(
        v["cost"]["ebr"]["wall_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{}",
        v["cost"]
    );
    assert_eq!(
        v["answers_read"]["ebr"],
        json!({"fallback": 10, "json": 9, "prose": 1})
    );
    assert_eq!(v["complete"], json!(false));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    assert_eq!(summary["answers_read"]["ebr"]["fallback"], 10);
    assert_eq!(summary["complete"], json!(false));
    let md = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(
        md.contains("**Incomplete**") && md.contains("| ebr | 9 | 0 | 0 | 0 | 1 | 10 |"),
        "{md}"
    );
    // Exactly the refused queries are logged as fallbacks, with the reason.
    let log = logged(&out);
    for i in 0..20 {
        let (read, why) = &log[&format!("q{i:02}")];
        match i {
            _ if i % 2 == 1 => {
                assert_eq!(read, "fallback", "q{i:02}");
                assert!(
                    why.as_deref().is_some_and(|w| w.contains("HTTP 400")),
                    "q{i:02}: {why:?}"
                );
            }
            0 => assert_eq!(read, "prose"),
            _ => assert_eq!((read.as_str(), why), ("json", &None), "q{i:02}"),
        }
    }
    drop(server);

    // A healthy server: only the ten queries that fell back are asked again.
    let server = ScriptedServer::start(vec![Reply::answer("{\"ranking\": [1, 2]}"); 10]);
    let a = args(&server.url);
    let o = squire(&home, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let seen = server.seen();
    assert_eq!(seen.len(), 10, "requests for the failed queries only");
    for (n, s) in seen.iter().enumerate() {
        let body = s.body.to_string();
        let i = 2 * n + 1;
        assert!(
            body.contains(&caption(i)),
            "request {n} should be for q{i:02}: {body:.300}"
        );
    }
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["resumed"].as_u64(), v["retried"].as_u64()),
        (Some(10), Some(10))
    );
    assert_eq!(v["answers_read"]["ebr"], json!({"json": 19, "prose": 1}));
    assert_eq!(v["complete"], json!(true));
    // Cost over the kept outcomes: ten answered in the first run, ten in this one, one request each.
    assert_eq!(
        (
            v["cost"]["ebr"]["calls"].as_u64(),
            v["cost"]["ebr"]["requests"].as_u64()
        ),
        (Some(20), Some(20)),
        "{}",
        v["cost"]
    );
    assert!(text(&o).contains("retried: 10 queries"), "{}", text(&o));
    let log = logged(&out);
    assert_eq!(log.len(), 20);
    assert!(log.values().all(|(read, _)| read != "fallback"), "{log:?}");

    // A third run has nothing left to retry and sends nothing.
    let server = ScriptedServer::start(Vec::new());
    let a = args(&server.url);
    let o = squire(&home, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.seen().len(), 0);
}
