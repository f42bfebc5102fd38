//! The web demo's JSON API, served in process over the tiny CLIP collection
//! and called over real HTTP on loopback.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{fixtures, tiny_collection};
use crate::scripted_openai::{Reply, ScriptedServer};
use serde_json::{json, Value};
use squire_demo_ui::{AppState, ServerConfig};
use squire_engine::pipeline::{Pipeline, PipelineMllm, PipelineOptions};
use squire_indexer::{Collection, OpenOptions};
use squire_kernels::Compute;
use squire_models::clip::{ClipModel, LoadOptions};
use squire_models::mllm::{OpenAiChat, OpenAiOptions};

/// A server over a fresh tiny collection; dropped with the runtime.
pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) images: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

fn start(tag: &str, config: ServerConfig, mllm_url: Option<&str>) -> Running {
    let (_home, idx, images) = tiny_collection(tag);
    serve_collection(&idx, images.into(), config, mllm_url)
}

/// Serves the tiny-CLIP collection in `idx` (of the folder `images`).
pub(crate) fn serve_collection(
    idx: &str,
    images: std::path::PathBuf,
    config: ServerConfig,
    mllm_url: Option<&str>,
) -> Running {
    let col = Collection::open_with(std::path::Path::new(&idx), OpenOptions { view: true })
        .expect("open");
    let encoder =
        ClipModel::load(&fixtures().join("tiny-clip"), LoadOptions::default()).expect("tiny clip");
    let mllm = mllm_url.map(|url| {
        let mut o = OpenAiOptions::new(url, "scripted");
        o.retries = 0;
        PipelineMllm {
            model: Box::new(OpenAiChat::new(o).expect("client")),
            describe: json!({"model": "scripted"}),
        }
    });
    let mut options = PipelineOptions::default();
    options.ebr.k = 2;
    let pipeline =
        Pipeline::new(col, Box::new(encoder), Compute::cpu(), mllm, options).expect("pipeline");
    let state = Arc::new(AppState::new(Arc::new(pipeline), config).expect("state"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(squire_demo_ui::serve(
        listener,
        state,
        std::future::pending(),
    ));
    Running {
        base: format!("http://{addr}"),
        images,
        _rt: rt,
    }
}

/// (status, headers of interest, body) of a request, whatever the status.
fn call(req: ureq::Request, body: Option<(&str, Vec<u8>)>) -> (u16, Option<String>, Vec<u8>) {
    let r = match body {
        Some((ct, bytes)) => req.set("Content-Type", ct).send_bytes(&bytes),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(str::to_string);
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut buf).expect("body");
    (status, retry, buf)
}

/// Sends only the headers of a POST declaring `len` body bytes; returns the status and body.
fn raw_headers_only(base: &str, content_type: &str, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /api/search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn post_json(base: &str, v: &Value) -> (u16, Value) {
    let (s, _, b) = call(
        ureq::post(&format!("{base}/api/search")),
        Some(("application/json", v.to_string().into_bytes())),
    );
    (
        s,
        serde_json::from_slice(&b).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&b)})),
    )
}

/// A multipart body with text fields and an optional file field `image`.
fn multipart(fields: &[(&str, &str)], image: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "squire-test-boundary-7d1f";
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, bytes)) = image {
        b.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        b.extend(bytes);
        b.extend(b"\r\n");
    }
    b.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

fn post_form(base: &str, fields: &[(&str, &str)], image: Option<(&str, &[u8])>) -> (u16, Value) {
    let (ct, body) = multipart(fields, image);
    let (s, _, b) = call(ureq::post(&format!("{base}/api/search")), Some((&ct, body)));
    (
        s,
        serde_json::from_slice(&b).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&b)})),
    )
}

fn paths(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn search_by_text_upload_and_composed_with_the_search_schema() {
    let srv = start("serve-search", ServerConfig::default(), None);
    // Text, JSON body.
    let (s, v) = post_json(&srv.base, &json!({"text": "a photo of a rocket", "k": 4}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["schema"], "squire.search/1");
    assert_eq!(v["query"]["kind"], "text");
    assert_eq!(paths(&v).len(), 4);
    for (i, r) in v["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        assert_eq!(r["id"].as_str().map(str::len), Some(16));
        assert!(r["score"].as_f64().is_some());
    }
    assert_eq!(v["per_stage"][0]["stage"], "first");
    assert!(v["timings"]["total_ms"].as_f64().is_some());
    // Image upload (multipart): the uploaded photo finds its own file first.
    let bytes = std::fs::read(srv.images.join("chelsea-420.jpg")).unwrap();
    let (s, v) = post_form(&srv.base, &[("k", "3")], Some(("chelsea-420.jpg", &bytes)));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["query"]["kind"], "image");
    assert_eq!(v["query"]["image"], "chelsea-420.jpg");
    assert_eq!(paths(&v)[0], "chelsea-420.jpg");
    assert!(v["results"][0]["score"].as_f64().unwrap() > 0.999);
    let own_id = v["results"][0]["id"].as_str().unwrap().to_string();
    // The same query by id, and the same image inline as base64.
    let (s, by_id) = post_json(&srv.base, &json!({"image_id": own_id, "k": 3}));
    assert_eq!(s, 200, "{by_id}");
    assert_eq!(paths(&by_id), paths(&v));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (s, inline) = post_json(
        &srv.base,
        &json!({"image_base64": format!("data:image/jpeg;base64,{b64}"), "k": 3}),
    );
    assert_eq!(s, 200, "{inline}");
    assert_eq!(paths(&inline), paths(&v));
    // Composed: reference image + modification text; SuperGlobal reranks it and reports both stages.
    let (s, v) = post_form(
        &srv.base,
        &[
            ("text", "make it a dog"),
            ("k", "3"),
            ("rerank", "superglobal"),
        ],
        Some(("chelsea-420.jpg", &bytes)),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["query"]["kind"], "composed");
    assert_eq!(v["stages"], json!(["superglobal"]));
    let stages: Vec<&str> = v["per_stage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["first", "superglobal"]);
    assert!(v["per_stage"][1]["results"][0]["previous_rank"]
        .as_u64()
        .is_some());
    // Filters: a JSON field and a form field; SuperGlobal reranks only matches.
    let (s, v) = post_json(
        &srv.base,
        &json!({"text": "a photo", "k": 10, "filter": "path glob \"*.png\" or path = \"grey.jpg\""}),
    );
    assert_eq!(s, 200, "{v}");
    let mut got = paths(&v);
    got.sort();
    assert_eq!(got, ["alpha.png", "grey.jpg", "tiny-5x3.png"], "{v}");
    assert_eq!(v["query"]["filter"]["matching_images"], 3);
    let (s, v) = post_form(
        &srv.base,
        &[
            ("text", "make it a dog"),
            ("k", "3"),
            ("rerank", "superglobal"),
            ("filter", "width >= 400 and not path = \"chelsea-420.jpg\""),
        ],
        Some(("chelsea-420.jpg", &bytes)),
    );
    assert_eq!(s, 200, "{v}");
    assert!(
        !paths(&v).is_empty() && !paths(&v).contains(&"chelsea-420.jpg".to_string()),
        "{v}"
    );
    for stage in v["per_stage"].as_array().unwrap() {
        for r in stage["results"].as_array().unwrap() {
            assert_ne!(r["path"], "chelsea-420.jpg", "{v}");
        }
    }
    let (s, v) = post_json(&srv.base, &json!({"text": "a photo", "filter": "width >"}));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("field `filter`: invalid filter at column 8"),
        "{v}"
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let config = ServerConfig {
        max_upload_bytes: 64 * 1024,
        ..ServerConfig::default()
    };
    let srv = start("serve-errors", config, None);
    // Oversize upload → 413, answered from the declared size before the body
    // is read (a client still sending would otherwise race the closed connection).
    for (ct, len) in [
        ("multipart/form-data; boundary=b", 200 * 1024),
        ("application/json", 100 * 1024),
    ] {
        let (s, body) = raw_headers_only(&srv.base, ct, len);
        assert_eq!(s, 413, "{body}");
        assert!(body.contains("limit"), "{body}");
    }
    // Not an image → 400 naming the field and the problem.
    let (s, v) = post_form(
        &srv.base,
        &[],
        Some(("notes.jpg", b"this is not a picture")),
    );
    assert_eq!(s, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("image") && msg.contains("notes.jpg"), "{msg}");
    // Other bad input, each named.
    for (body, needle) in [
        (json!({"k": 3}), "a text, an image"),
        (json!({"text": "a cat", "k": 0}), "`k`"),
        (json!({"text": "a cat", "k": 100000}), "`k`"),
        (json!({"text": "a cat", "rerank": "magic"}), "magic"),
        (json!({"text": "a cat", "rerank": "ebr"}), "needs an MLLM"),
        (json!({"text": "a cat", "colour": "red"}), "colour"),
        (json!({"image_id": "0123456789abcdef"}), "image_id"),
        (json!({"image_base64": "***"}), "base64"),
    ] {
        let (s, v) = post_json(&srv.base, &body);
        assert_eq!(s, 400, "{body} → {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(needle),
            "{body} → {v}"
        );
    }
    let (s, _, b) = call(
        ureq::post(&format!("{}/api/search", srv.base)),
        Some(("application/json", b"{not json".to_vec())),
    );
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    let (s, _, _) = call(
        ureq::post(&format!("{}/api/search", srv.base)),
        Some(("text/plain", b"a cat".to_vec())),
    );
    assert_eq!(s, 415);
    // Unknown ids → 404.
    for id in ["0123456789abcdef", "zz", "0123456789ABCDEF0"] {
        let (s, _, _) = call(ureq::get(&format!("{}/api/images/{id}", srv.base)), None);
        assert_eq!(s, 404, "{id}");
        let (s, _, _) = call(ureq::get(&format!("{}/api/thumbs/{id}", srv.base)), None);
        assert_eq!(s, 404, "{id}");
    }
}

#[test]
fn images_are_served_by_id_only_and_traversal_never_reads_outside() {
    let srv = start("serve-files", ServerConfig::default(), None);
    let (_, v) = post_json(&srv.base, &json!({"text": "a photo", "k": 10}));
    let first = &v["results"][0];
    let id = first["id"].as_str().unwrap();
    let path = first["path"].as_str().unwrap();
    let (s, _, body) = call(ureq::get(&format!("{}/api/images/{id}", srv.base)), None);
    assert_eq!(s, 200);
    assert_eq!(
        body,
        std::fs::read(srv.images.join(path)).unwrap(),
        "the file as stored"
    );
    let (s, _, thumb) = call(ureq::get(&format!("{}/api/thumbs/{id}", srv.base)), None);
    assert_eq!(s, 200);
    let t = image::load_from_memory(&thumb).expect("a JPEG thumbnail");
    assert!(t.width().max(t.height()) <= 320);
    // A secret beside the image folder, and the usual ways of reaching for it.
    let secret = srv.images.parent().unwrap().join("secret.txt");
    let _ = std::fs::write(&secret, "TOP-SECRET");
    for attempt in [
        "/api/images/../../../../etc/passwd",
        "/api/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/api/thumbs/..%252F..%252Fsecret.txt",
        "/api/images/....//....//etc/passwd",
        "/api/images/%2Fetc%2Fpasswd",
        "/../../etc/passwd",
        "/api/images/..%5C..%5Csecret.txt",
    ] {
        let (s, _, body) = call(ureq::get(&format!("{}{attempt}", srv.base)), None);
        let text = String::from_utf8_lossy(&body);
        assert!(s == 404 || s == 400, "{attempt} → {s}");
        assert!(
            !text.contains("root:") && !text.contains("TOP-SECRET"),
            "{attempt} leaked: {text}"
        );
    }
    let (s, v) = post_json(&srv.base, &json!({"image_id": "../../secret.txt"}));
    assert_eq!(s, 400, "{v}");
    // Health and metrics.
    let (s, _, b) = call(ureq::get(&format!("{}/api/health", srv.base)), None);
    assert_eq!(s, 200);
    let h: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(h["images"], 10);
    assert_eq!(h["stages"], json!(["superglobal"]));
    let (s, _, b) = call(ureq::get(&format!("{}/metrics", srv.base)), None);
    assert_eq!(s, 200);
    let m = String::from_utf8(b).unwrap();
    assert!(
        m.contains("squire_http_requests_total{route=\"/api/search\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains("squire_search_duration_seconds_count 1"), "{m}");
    assert!(m.contains("squire_collection_images 10"), "{m}");
    // CORS is off by default: no cross-origin header, preflight refused.
    let r = ureq::get(&format!("{}/api/health", srv.base))
        .set("Origin", "https://elsewhere.example")
        .call()
        .unwrap();
    assert!(r.header("Access-Control-Allow-Origin").is_none());
    let (s, _, _) = call(
        ureq::request("OPTIONS", &format!("{}/api/search", srv.base)),
        None,
    );
    assert_eq!(s, 405);
}

#[test]
fn scripted_mllm_server_ebr_grid_and_saturation_503() {
    // Every EBR answer takes 600 ms: one worker, no waiting line.
    let script: Vec<Reply> = (0..20)
        .map(|_| Reply::answer("{\"ranking\": [2, 1]}").after(Duration::from_millis(600)))
        .collect();
    let mllm = ScriptedServer::start(script);
    let config = ServerConfig {
        workers: 1,
        queue: 0,
        ..ServerConfig::default()
    };
    let srv = start("serve-busy", config, Some(&mllm.url));
    let (s, v) = post_json(
        &srv.base,
        &json!({"text": "a cat", "k": 3, "rerank": "ebr"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ebr"]["mentioned"], 2);
    let first = &v["per_stage"][0]["results"];
    assert_eq!(
        v["results"][0]["id"], first[1]["id"],
        "the scripted answer put candidate 2 first"
    );
    let grid = v["ebr"]["grid_images"][0].as_str().unwrap();
    assert!(grid.starts_with("data:image/jpeg;base64,"));
    // Four at once: one runs, the rest are turned away with 503 + Retry-After.
    let base = srv.base.clone();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * i));
                let body = json!({"text": "a cat", "k": 3, "rerank": "ebr"})
                    .to_string()
                    .into_bytes();
                call(
                    ureq::post(&format!("{base}/api/search")),
                    Some(("application/json", body)),
                )
            })
        })
        .collect();
    let outcomes: Vec<(u16, Option<String>, Vec<u8>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = outcomes.iter().filter(|o| o.0 == 200).count();
    let busy: Vec<_> = outcomes.iter().filter(|o| o.0 == 503).collect();
    assert_eq!(
        ok + busy.len(),
        4,
        "only 200 and 503: {:?}",
        outcomes.iter().map(|o| o.0).collect::<Vec<_>>()
    );
    assert!(ok >= 1 && !busy.is_empty(), "ok {ok}, busy {}", busy.len());
    assert_eq!(busy[0].1.as_deref(), Some("1"), "Retry-After");
    assert!(String::from_utf8_lossy(&busy[0].2).contains("busy"));
}

#[test]
fn scripted_mllm_server_v1_rerank_orders_five_data_url_images_and_names_bad_documents() {
    // FIRST's one call: marks 4 > 1 > 5 among the first token's alternatives.
    let server = ScriptedServer::start(vec![Reply::answer_with_logprobs(
        "4",
        &[("4", -0.2), ("1", -1.0), ("5", -2.0)],
    )]);
    let (_home, idx, images) = tiny_collection("serve-rerank");
    let srv = serve_collection(
        &idx,
        images.into(),
        ServerConfig::default(),
        Some(&server.url),
    );
    use base64::Engine as _;
    let url = |f: &str| {
        format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(srv.images.join(f)).unwrap())
        )
    };
    // One document by collection id.
    let (_, found) = post_json(&srv.base, &json!({"text": "x", "k": 10}));
    let grey = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "grey.jpg")
        .unwrap()["id"]
        .clone();
    let docs = json!([url("astronaut.jpg"), {"id": grey}, {"image": url("rocket-444.jpg")}, url("chelsea-420.jpg"), url("cmyk.jpg")]);
    let call = |body: Value| match ureq::post(&format!("{}/v1/rerank", srv.base)).send_json(body) {
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json::<Value>().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    };
    let (s, v) = call(
        json!({"model": "first", "query": "a cat", "documents": docs, "top_n": 4, "return_documents": true}),
    );
    assert_eq!(s, 200, "{v}");
    let idx_scores: Vec<(u64, f64)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["relevance_score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(idx_scores, [(3, 1.0), (0, 0.8), (4, 0.6), (1, 0.4)], "{v}");
    assert_eq!(v["results"][3]["document"], json!({"id": grey}));
    assert_eq!(
        (v["meta"]["model"].as_str(), v["meta"]["read"].as_str()),
        (Some("first"), Some("logprobs")),
        "{v}"
    );
    assert_eq!(v["meta"]["cost"]["calls"], 1);
    assert_eq!(server.seen().len(), 1);
    // Bad documents and models: 400, naming the index or the choices; nothing sent.
    let (s, v) = call(
        json!({"model": "first", "query": "a cat", "documents": [url("grey.jpg"), url("cmyk.jpg"), "http://example.com/x.jpg"]}),
    );
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("documents[2]: not a base64 data URL"),
        "{v}"
    );
    let (s, v) = call(
        json!({"model": "first", "query": "a cat", "documents": [url("grey.jpg"), "data:image/png;base64,AAAA"]}),
    );
    assert_eq!(s, 400);
    assert!(
        v["error"].as_str().unwrap().starts_with("documents[1]:"),
        "{v}"
    );
    let (s, v) =
        call(json!({"model": "superglobal", "query": "a cat", "documents": [url("grey.jpg")]}));
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("expected one of ebr, cotrr, pointwise, first, prp"),
        "{v}"
    );
    assert_eq!(server.seen().len(), 1);
}
