//! EBR and SQAF against a scripted stand-in for an OpenAI-compatible server
//! (tests/support/scripted_openai.rs: an in-process HTTP server replaying a
//! script; no model is involved). Checks what goes over the wire (grid
//! image, prompt, JSON answer format, key), that the final order follows the
//! server's answer, that 500s, 429s and timeouts are retried then fall back,
//! that malformed answers fall back, and that the response cache answers a
//! repeated run without any request.

use std::sync::Arc;
use std::time::Duration;

use crate::scripted_openai::{Reply, ScriptedServer};
use base64::Engine as _;
use image::{Rgb, RgbImage};
use squire_engine::ebr::{EbrOptions, GridReranker, RerankQuery};
use squire_engine::grid::GridOptions;
use squire_engine::sqaf::{caption_target, SqafOptions};
use squire_models::mllm::{Cached, Mllm, OpenAiChat, OpenAiOptions, ResponseCache};

fn client(url: &str, retries: u32, timeout_ms: u64) -> OpenAiChat {
    let mut o = OpenAiOptions::new(url, "scripted-vlm");
    o.api_key = Some("sk-test-secret".into());
    o.retries = retries;
    o.backoff = Duration::from_millis(5);
    o.timeout = Duration::from_millis(timeout_ms);
    OpenAiChat::new(o).expect("client")
}

fn solid(rgb: [u8; 3], w: u32, h: u32) -> Arc<RgbImage> {
    Arc::new(RgbImage::from_pixel(w, h, Rgb(rgb)))
}

fn candidates(n: usize) -> Vec<Arc<RgbImage>> {
    (0..n)
        .map(|i| {
            solid(
                [(40 * i % 256) as u8, (200 + 37 * i) as u8, 90],
                64 + 8 * i as u32,
                48,
            )
        })
        .collect()
}

fn reranker(k: usize, cells: usize, retries: u32) -> GridReranker {
    GridReranker::new(EbrOptions {
        k,
        grid: GridOptions {
            cells,
            cell: 96,
            ..GridOptions::default()
        },
        retries,
        ..EbrOptions::default()
    })
    .expect("options")
}

/// The images of a request, decoded.
fn images_sent(body: &serde_json::Value) -> Vec<RgbImage> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().expect("messages") {
        for p in m["content"].as_array().into_iter().flatten() {
            if p["type"] == "image_url" {
                let url = p["image_url"]["url"].as_str().expect("url");
                let b64 = url
                    .strip_prefix("data:image/jpeg;base64,")
                    .expect("a JPEG data URL");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64");
                out.push(
                    image::load_from_memory(&bytes)
                        .expect("a decodable JPEG")
                        .to_rgb8(),
                );
            }
        }
    }
    out
}

fn prompt_text(body: &serde_json::Value) -> String {
    let mut t = String::new();
    for m in body["messages"].as_array().expect("messages") {
        match &m["content"] {
            serde_json::Value::String(s) => t.push_str(s),
            serde_json::Value::Array(parts) => {
                for p in parts {
                    if let Some(s) = p["text"].as_str() {
                        t.push_str(s);
                        t.push('\n');
                    }
                }
            }
            _ => {}
        }
    }
    t
}

#[test]
fn scripted_server_request_carries_grid_and_prompt_and_order_follows_answer() {
    let server = ScriptedServer::start(vec![Reply::answer(r#"{"ranking": [3, 1, 4]}"#)]);
    let mllm = client(&server.url, 0, 5_000);
    let query = RerankQuery::Composed {
        reference: solid([250, 0, 0], 80, 60),
        modification: "make it blue".into(),
        caption: Some("a blue square".into()),
    };
    let cands = candidates(5);
    let out = reranker(4, 9, 0).rerank(&mllm, &query, &cands);
    // The answer's marks 3, 1, 4 first; the unmentioned 2 after them; the 5th (beyond K) keeps its place.
    assert_eq!(out.order, vec![2, 0, 3, 1, 4]);
    assert_eq!((out.mentioned, out.fallback.clone()), (3, None));
    assert_eq!(
        (out.cost.calls, out.cost.requests, out.cost.images),
        (1, 1, 2),
        "one call: reference + one grid"
    );
    assert_eq!(
        (out.cost.prompt_tokens, out.cost.completion_tokens),
        (100, 7)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-secret"));
    assert_eq!(req.body["model"], "scripted-vlm");
    assert_eq!(req.body["response_format"]["type"], "json_object");
    assert_eq!(req.body["temperature"], 0.0);
    let text = prompt_text(&req.body);
    for needle in [
        "make it blue",
        "a blue square",
        "marks 1 to 4",
        "\"ranking\"",
    ] {
        assert!(text.contains(needle), "prompt lacks {needle:?}:\n{text}");
    }
    // Reference first, then the grid: 2 × 2 cells of 96 px with 6-px gaps.
    let imgs = images_sent(&req.body);
    assert_eq!(imgs.len(), 2);
    assert_eq!(imgs[0].dimensions(), (80, 60));
    assert_eq!(imgs[1].dimensions(), (6 + 2 * 102, 6 + 2 * 102));
    // The grid sent is the grid returned (up to JPEG): compare a cell centre.
    let centre = |img: &RgbImage, x: u32, y: u32| *img.get_pixel(x, y);
    let (a, b) = (
        centre(&imgs[1], 6 + 48, 6 + 70),
        centre(&out.grids[0], 6 + 48, 6 + 70),
    );
    assert!(
        a.0.iter()
            .zip(b.0)
            .all(|(x, y)| (*x as i32 - y as i32).abs() < 12),
        "{a:?} vs {b:?}"
    );
}

#[test]
fn scripted_server_k_above_one_grid_sends_several_grids_in_one_call() {
    let server = ScriptedServer::start(vec![Reply::answer("[12, 2]")]);
    let mllm = client(&server.url, 0, 5_000);
    let out = reranker(12, 9, 0).rerank(&mllm, &RerankQuery::Text("green".into()), &candidates(12));
    assert_eq!(out.grids.len(), 2);
    assert_eq!(&out.order[..3], &[11, 1, 0]);
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "exactly one call");
    assert_eq!(images_sent(&seen[0].body).len(), 2);
    assert!(prompt_text(&seen[0].body).contains("over 2 grid images"));
}

#[test]
fn scripted_server_500s_are_retried_then_the_answer_is_used() {
    let server = ScriptedServer::start(vec![
        Reply::status(500),
        Reply::status(503),
        Reply::answer("[2, 1]"),
    ]);
    let out = reranker(2, 9, 0).rerank(
        &client(&server.url, 3, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(2),
    );
    assert_eq!(out.order, vec![1, 0]);
    assert_eq!((out.cost.calls, out.cost.requests), (1, 3));
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn scripted_server_429_with_retry_after_is_retried() {
    let server = ScriptedServer::start(vec![
        Reply::status(429).header("Retry-After", "0"),
        Reply::answer("[2]"),
    ]);
    let out = reranker(2, 9, 0).rerank(
        &client(&server.url, 1, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(2),
    );
    assert_eq!(out.order, vec![1, 0]);
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn scripted_server_persistent_500s_fall_back_to_the_prior_order() {
    let server = ScriptedServer::start(vec![Reply::status(500); 10]);
    let out = reranker(3, 9, 0).rerank(
        &client(&server.url, 2, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(4),
    );
    assert_eq!(out.order, vec![0, 1, 2, 3]);
    let why = out.fallback.expect("flagged");
    assert!(
        why.contains("HTTP 500") && why.contains("3 attempt"),
        "{why}"
    );
    assert_eq!((out.cost.calls, out.cost.requests), (1, 3));
}

#[test]
fn scripted_server_invalid_json_bodies_are_retried_and_every_request_is_counted() {
    let garbage = Reply {
        body: "<html>not json</html>".into(),
        ..Reply::answer("")
    };
    let server = ScriptedServer::start(vec![garbage.clone(), garbage]);
    let out = reranker(3, 9, 0).rerank(
        &client(&server.url, 1, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(3),
    );
    assert_eq!(out.order, vec![0, 1, 2]);
    assert_eq!(server.seen().len(), 2);
    assert_eq!((out.cost.calls, out.cost.requests), (1, 2));
    let why = out.fallback.expect("flagged");
    assert!(
        why.contains("after 2 attempt(s)") && why.contains(&server.url),
        "{why}"
    );
    assert_eq!(out.read, squire_engine::rerank::AnswerRead::Fallback);
}

#[test]
fn scripted_server_4xx_is_not_retried() {
    let server = ScriptedServer::start(vec![Reply::status(400), Reply::answer("[2, 1]")]);
    let out = reranker(2, 9, 0).rerank(
        &client(&server.url, 3, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(2),
    );
    assert_eq!(out.order, vec![0, 1]);
    assert!(out.fallback.expect("flagged").contains("HTTP 400"));
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn scripted_server_timeouts_are_retried_then_fall_back() {
    let slow = Reply::answer("[2, 1]").after(Duration::from_millis(1_500));
    let server = ScriptedServer::start(vec![slow.clone(), slow]);
    let t = std::time::Instant::now();
    let out = reranker(2, 9, 0).rerank(
        &client(&server.url, 1, 300),
        &RerankQuery::Text("x".into()),
        &candidates(2),
    );
    assert_eq!(out.order, vec![0, 1]);
    assert!(out.fallback.is_some());
    assert_eq!(out.cost.requests, 2);
    assert!(
        t.elapsed() < Duration::from_millis(1_400),
        "the timeout was not applied: {:?}",
        t.elapsed()
    );
}

#[test]
fn scripted_server_malformed_answers_are_asked_again_then_fall_back() {
    let server = ScriptedServer::start(vec![
        Reply::answer("They all look nice."),
        Reply::answer("{\"ranking\": []}"),
    ]);
    let out = reranker(3, 9, 1).rerank(
        &client(&server.url, 0, 5_000),
        &RerankQuery::Text("x".into()),
        &candidates(3),
    );
    assert_eq!(out.order, vec![0, 1, 2]);
    assert!(out.fallback.expect("flagged").contains("unusable"));
    assert_eq!(out.answers.len(), 2);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(!prompt_text(&seen[0].body).contains("could not be read"));
    assert!(
        prompt_text(&seen[1].body).contains("could not be read"),
        "the retry carries a reminder"
    );
}

#[test]
fn scripted_server_second_identical_run_is_answered_by_the_cache() {
    let dir = std::env::temp_dir().join(format!("squire-mllm-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = ScriptedServer::start(vec![Reply::answer("[2, 3, 1]")]);
    let mllm = Cached::new(client(&server.url, 0, 5_000), ResponseCache::new(&dir));
    let query = RerankQuery::Text("x".into());
    let first = reranker(3, 9, 0).rerank(&mllm, &query, &candidates(3));
    let second = reranker(3, 9, 0).rerank(&mllm, &query, &candidates(3));
    assert_eq!(first.order, vec![1, 2, 0]);
    assert_eq!(second.order, first.order);
    assert_eq!(server.seen().len(), 1, "the second run sent a request");
    assert_eq!(
        (
            second.cost.calls,
            second.cost.requests,
            second.cost.cache_hits
        ),
        (1, 0, 1)
    );
    assert_eq!(
        second.cost.prompt_tokens, 100,
        "cached answers keep their recorded usage"
    );
    // A different image is a different key.
    let mut other = candidates(3);
    other[0] = solid([1, 2, 3], 64, 48);
    let _ = reranker(3, 9, 0).rerank(&mllm, &query, &other);
    assert_eq!(server.seen().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scripted_servers_with_one_model_name_share_cached_answers_only_when_scoped_by_model() {
    let dir = std::env::temp_dir().join(format!("squire-mllm-cache-scope-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (
        ScriptedServer::start(vec![Reply::answer("[2, 3, 1]")]),
        ScriptedServer::start(vec![Reply::answer("[3, 1, 2]"); 2]),
    );
    let query = RerankQuery::Text("x".into());
    let rerank = |m: &dyn Mllm| reranker(3, 9, 0).rerank(m, &query, &candidates(3));
    // Scoped by endpoint (the CLI's default): server B is asked, and its answer counts.
    let on_a = Cached::for_endpoint(client(&a.url, 0, 5_000), ResponseCache::new(&dir), &a.url);
    assert_eq!(rerank(&on_a).order, vec![1, 2, 0]);
    let on_b = Cached::for_endpoint(client(&b.url, 0, 5_000), ResponseCache::new(&dir), &b.url);
    let out = rerank(&on_b);
    assert_eq!(
        (out.order, out.cost.cache_hits, b.seen().len()),
        (vec![2, 0, 1], 0, 1)
    );
    // Again on A: its own answer, from the cache.
    let again = rerank(&on_a);
    assert_eq!(
        (again.order, again.cost.cache_hits, a.seen().len()),
        (vec![1, 2, 0], 1, 1)
    );
    // Scoped by model: one cache for the name, whichever server; entries written under this scope
    // (as before endpoints were in the key) are read back under it.
    let by_model_b = Cached::new(client(&b.url, 0, 5_000), ResponseCache::new(&dir));
    assert_eq!(rerank(&by_model_b).order, vec![2, 0, 1]);
    assert_eq!(b.seen().len(), 2);
    let by_model_a = Cached::new(client(&a.url, 0, 5_000), ResponseCache::new(&dir));
    let shared = rerank(&by_model_a);
    assert_eq!(
        (shared.order, shared.cost.cache_hits, a.seen().len()),
        (vec![2, 0, 1], 1, 1),
        "B's answer, from the model-scoped cache"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scripted_server_sqaf_caption_is_requested_with_the_reference_image() {
    let server = ScriptedServer::start(vec![
        Reply::answer("Caption: \"A blue square on grey.\""),
        Reply::status(500),
    ]);
    let mllm = client(&server.url, 0, 5_000);
    let out = caption_target(
        &mllm,
        solid([250, 0, 0], 40, 30),
        "make it blue",
        &SqafOptions::default(),
    );
    assert_eq!(out.caption.as_deref(), Some("A blue square on grey."));
    assert_eq!((out.cost.calls, out.cost.images), (1, 1));
    let seen = server.seen();
    assert!(prompt_text(&seen[0].body).contains("make it blue"));
    assert_eq!(images_sent(&seen[0].body)[0].dimensions(), (40, 30));
    assert!(seen[0].body.get("response_format").is_none());
    // A failing server: no caption, the error says why.
    let out = caption_target(
        &mllm,
        solid([250, 0, 0], 40, 30),
        "make it blue",
        &SqafOptions::default(),
    );
    assert!(out.caption.is_none() && out.error.expect("error").contains("HTTP 500"));
}

#[test]
fn the_api_key_is_never_in_debug_output() {
    let mut o = OpenAiOptions::new("http://127.0.0.1:9/v1", "m");
    o.api_key = Some("sk-very-secret".into());
    o.retries = 0;
    let c = OpenAiChat::new(o.clone()).expect("client");
    assert!(!format!("{o:?}").contains("sk-very-secret"));
    assert!(!format!("{c:?}").contains("sk-very-secret"));
    let e = c
        .chat(&squire_models::mllm::ChatRequest::new(vec![], 1))
        .expect_err("nothing listens on port 9");
    assert!(!e.to_string().contains("sk-very-secret"));
}
