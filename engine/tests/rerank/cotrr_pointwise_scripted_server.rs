//! CoTRR and the pointwise reranker against a scripted stand-in for an
//! OpenAI-compatible server (tests/support/scripted_openai.rs: replays a
//! script, no model involved): sliding-window merging, unmentioned
//! candidates keeping their order, malformed answers retried then left in
//! prior order, and pointwise scores computed exactly from the supplied
//! log-probabilities with stable ties.

use std::sync::Arc;
use std::time::Duration;

use crate::scripted_openai::{Reply, ScriptedServer};
use image::{Rgb, RgbImage};
use squire_engine::cotrr::{CotrrOptions, CotrrReasoning, CotrrReranker};
use squire_engine::pointwise::{PointwiseOptions, PointwiseReranker};
use squire_engine::rerank::RerankQuery;
use squire_models::mllm::{OpenAiChat, OpenAiOptions};

fn client(url: &str) -> OpenAiChat {
    let mut o = OpenAiOptions::new(url, "scripted-vlm");
    o.retries = 0;
    o.backoff = Duration::from_millis(5);
    OpenAiChat::new(o).expect("client")
}

fn candidates(n: usize) -> Vec<Arc<RgbImage>> {
    (0..n)
        .map(|i| {
            Arc::new(RgbImage::from_pixel(
                32,
                24,
                Rgb([(i * 20) as u8, 100, 200]),
            ))
        })
        .collect()
}

fn texts(body: &serde_json::Value) -> Vec<String> {
    let user = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "user")
        .expect("a user message");
    user["content"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(|p| p["text"].as_str().map(String::from))
        .collect()
}

fn image_count(body: &serde_json::Value) -> usize {
    body["messages"][1]["content"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["type"] == "image_url")
        .count()
}

#[test]
fn scripted_server_cotrr_windows_merge_bottom_up() {
    let server = ScriptedServer::start(vec![
        Reply::answer("[6, 5]"),
        Reply::answer(r#"{"reasoning": "parts: dog, snow. Image 4 fits best", "ranking": [4, 1]}"#),
        // Prose with two marks is read (a lone "Image 4 is best" would not be a ranking).
        Reply::answer("Image 4 is the best match, then image 1."),
    ]);
    let r = CotrrReranker::new(CotrrOptions {
        k: 12,
        window: 6,
        step: 3,
        ..CotrrOptions::default()
    })
    .expect("options");
    let out = r.rerank(
        &client(&server.url),
        &RerankQuery::Text("a dog in snow".into()),
        &candidates(14),
    );
    assert_eq!(
        out.order,
        vec![11, 0, 1, 2, 3, 4, 5, 10, 6, 7, 8, 9, 12, 13]
    );
    assert_eq!((out.cost.calls, out.cost.images), (3, 18));
    assert!(out.fallback.is_none());
    // The stage is as good as its worst window: list, JSON, then prose.
    assert_eq!(out.read, squire_engine::rerank::AnswerRead::Prose);
    assert!(
        out.reasoning
            .iter()
            .any(|r| r.contains("Image 4 fits best")),
        "{:?}",
        out.reasoning
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(image_count(&s.body), 6);
        let t = texts(&s.body);
        assert!(
            t.iter().any(|x| x == "Image 1:") && t.iter().any(|x| x == "Image 6:"),
            "{t:?}"
        );
        assert!(
            t.iter().any(|x| x.contains("list the parts of the query")),
            "full reasoning asked for"
        );
        assert_eq!(s.body["response_format"]["type"], "json_object");
    }
}

#[test]
fn scripted_server_cotrr_malformed_answers_are_retried_then_fall_back() {
    let server = ScriptedServer::start(vec![
        Reply::answer("nope"),
        Reply::answer("{bad json"),
        Reply::answer("[]"),
    ]);
    let r = CotrrReranker::new(CotrrOptions {
        k: 5,
        window: 5,
        step: 2,
        retries: 2,
        ..CotrrOptions::default()
    })
    .expect("options");
    let out = r.rerank(
        &client(&server.url),
        &RerankQuery::Text("x".into()),
        &candidates(5),
    );
    assert_eq!(out.order, vec![0, 1, 2, 3, 4]);
    assert!(out
        .fallback
        .expect("flagged")
        .contains("unusable answer after 3 call(s)"));
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn scripted_server_cotrr_ablation_without_reasoning_asks_for_the_ranking_only() {
    let server = ScriptedServer::start(vec![Reply::answer("[2, 1]")]);
    let r = CotrrReranker::new(CotrrOptions {
        reasoning: CotrrReasoning::None,
        ..CotrrOptions::default()
    })
    .expect("options");
    let out = r.rerank(
        &client(&server.url),
        &RerankQuery::Text("x".into()),
        &candidates(2),
    );
    assert_eq!(out.order, vec![1, 0]);
    let t = texts(&server.seen()[0].body).join("\n");
    assert!(
        !t.contains("list the parts") && !t.contains("for each image"),
        "{t}"
    );
    assert_eq!(server.seen()[0].body["max_tokens"], 24 + 8);
}

#[test]
fn scripted_server_pointwise_scores_come_from_the_logprobs_and_ties_are_stable() {
    let (y, n) = (|p: f64| ("Yes", p.ln()), |p: f64| ("No", p.ln()));
    let server = ScriptedServer::start(vec![
        Reply::answer_with_logprobs("No", &[n(0.8), y(0.2)]),
        Reply::answer_with_logprobs("Yes", &[y(0.6), ("yes", 0.3f64.ln()), n(0.1)]),
        Reply::answer_with_logprobs("No", &[y(0.2), n(0.8)]),
        Reply::answer_with_logprobs("Maybe", &[("Maybe", -0.1)]),
    ]);
    // One call at a time, so the script's replies map to candidates in order.
    let r = PointwiseReranker {
        options: PointwiseOptions {
            k: 4,
            parallel: 1,
            top_logprobs: 5,
        },
    };
    let out = r.rerank(
        &client(&server.url),
        &RerankQuery::Text("a red car".into()),
        &candidates(5),
    );
    // Scores: 0.2, 0.9, 0.2 (a tie with the first: prior order kept); "Maybe" (no Yes or No
    // among its log-probabilities, and neither word answered) scores nothing: it ranks as 0.5
    // would (after any scored 0.5), and the stage reports a fallback for it.
    assert_eq!(out.order, vec![1, 3, 0, 2, 4]);
    assert_eq!(
        out.reasoning[0],
        "P(yes) per candidate: 0.2000, 0.9000, 0.2000, failed"
    );
    let why = out.fallback.expect("reported");
    assert!(
        why.contains("1 of 4 answers came without log-probabilities")
            && why.contains("candidate 4: answered neither Yes nor No"),
        "{why}"
    );
    assert_eq!(
        (out.mentioned, out.read),
        (3, squire_engine::rerank::AnswerRead::Fallback)
    );
    assert_eq!(
        (out.cost.calls, out.cost.images, out.cost.prompt_tokens),
        (4, 4, 200)
    );
    let seen = server.seen();
    assert_eq!(seen[0].body["logprobs"], true);
    assert_eq!(seen[0].body["top_logprobs"], 5);
    assert_eq!(seen[0].body["max_tokens"], 1);
    assert!(texts(&seen[0].body)
        .iter()
        .any(|t| t == "Does this picture show exactly \"a red car\"? Answer Yes or No."));
}
