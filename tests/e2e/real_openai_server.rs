//! Squire's OpenAI-compatible client against a real server implementation:
//! `transformers serve` (Hugging Face transformers from PyPI) on loopback,
//! serving the committed tiny random-weight Qwen3-VL made servable by
//! `scripts/make_served_vlm.py` (a chat template and the processor configs).
//! SQAF, EBR, CoTRR and pointwise run through `squire search`, and EBR with
//! pointwise through `squire eval t2i`; every request must be accepted (the
//! server's access log has a 200 for each one Squire counts), and since a
//! random model answers nonsense, what is checked is how each answer was
//! read: never a clean ranking from text that is not one, no log-probability
//! scores from a server that returns none, and the summary's counts equal
//! the per-query log's.
//!
//! Needs python3 with torch, torchvision and `transformers[serving]`
//! (`.ci/run` installs them). Without them the test is skipped, unless
//! SQUIRE_REQUIRE_TRANSFORMERS=1 (set by `.ci/run`), when it fails.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{fixtures, squire, text, tiny_collection};

/// Kills the server when the test ends, however it ends.
struct Server {
    child: Child,
    log: PathBuf,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The access log's chat-completion lines: (accepted with 200, any other status).
    fn chat_statuses(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("POST /v1/chat/completions"))
            .collect();
        let ok = lines.iter().filter(|l| l.contains("\" 200")).count();
        (ok, lines.len() - ok)
    }
}

/// What is missing for the test: python3 modules.
fn missing() -> Option<String> {
    let o = Command::new("python3")
        .args([
            "-c",
            "import torch, torchvision, transformers, fastapi, uvicorn",
        ])
        .output();
    match o {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
                .to_string(),
        ),
        Err(e) => Some(format!("python3: {e}")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Makes the servable model in `root` and starts `transformers serve` on it.
fn start(root: &Path) -> (Server, String) {
    let model = root.join("served-vlm");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/make_served_vlm.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(&model)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run make_served_vlm.py");
    assert!(o.status.success(), "make_served_vlm.py: {}", text(&o));
    let port = free_port();
    let log = root.join("serve.log");
    let out = std::fs::File::create(&log).expect("serve.log");
    let err = out.try_clone().expect("serve.log");
    // The `transformers` console script of the python3 that has the package.
    let child = Command::new("python3")
        .args([
            "-c",
            "from transformers.cli.transformers import main; main()",
            "serve",
            &model.display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--device",
            "cpu",
            "--log-level",
            "info",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start `transformers serve`");
    let server = Server {
        child,
        log,
        url: format!("http://127.0.0.1:{port}/v1"),
    };
    // Ready when /v1/models answers (the model is preloaded before the port opens).
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(s, "GET /v1/models HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "transformers serve did not answer within 180 s: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    (server, model.display().to_string())
}

fn json_of(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// A stage's answers must be read as what they are: `json` only from valid
/// JSON, a fallback always with its reason, a prose reading only of text
/// with at least two numbers.
fn check_read(stage: &str, report: &Value) {
    let read = report["read"]
        .as_str()
        .unwrap_or_else(|| panic!("{stage}: no `read` in {report}"));
    let answers: Vec<String> = report["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match read {
        "fallback" => assert!(
            report["fallback"].as_str().is_some_and(|r| !r.is_empty()),
            "{stage}: a fallback without a reason: {report}"
        ),
        "json" | "list" => {
            assert!(report["fallback"].is_null(), "{report}");
            assert!(
                answers.iter().any(|a| a.contains('[')),
                "{stage}: read as {read} but no answer holds a list: {answers:?}"
            );
        }
        "prose" => {
            assert!(report["fallback"].is_null(), "{report}");
            assert!(
                answers
                    .iter()
                    .any(|a| a.chars().filter(char::is_ascii_digit).count() >= 2),
                "{stage}: prose reading without two numbers: {answers:?}"
            );
        }
        "word" => assert_eq!(stage, "pointwise", "{report}"),
        other => panic!(
            "{stage}: read as {other}: a server without log-probabilities gives none ({report})"
        ),
    }
}

#[test]
fn transformers_serve_real_server_sqaf_ebr_cotrr_pointwise_and_eval_report_how_answers_were_read() {
    if let Some(m) = missing() {
        assert!(
            std::env::var("SQUIRE_REQUIRE_TRANSFORMERS").as_deref() != Ok("1"),
            "SQUIRE_REQUIRE_TRANSFORMERS=1 but python3 lacks: {m}"
        );
        eprintln!(
            "skipped: python3 lacks {m} (pip install torch torchvision 'transformers[serving]')"
        );
        return;
    }
    let (home, idx, images) = tiny_collection("real-openai");
    let root = home.parent().expect("scratch root").to_path_buf();
    let (server, model) = start(&root);
    let mllm = [
        "--mllm",
        "openai",
        "--mllm-url",
        &server.url,
        "--mllm-model",
        &model,
        "--mllm-cache",
        "none",
        "--mllm-timeout",
        "120",
    ];
    let reference = fixtures()
        .join("images/astronaut.jpg")
        .display()
        .to_string();

    // 1. A composed query: SQAF's caption, then EBR on the top 4 and CoTRR (no reasoning: short answers) on the top 3.
    let mut args = vec![
        "search",
        "--index",
        &idx,
        "--image",
        &reference,
        "--text",
        "make the suit red",
        "-k",
        "5",
        "--exact",
        "--json",
        "--sqaf",
        "--rerank",
        "ebr,cotrr",
        "--ebr-k",
        "4",
        "--cotrr-k",
        "3",
        "--cotrr-reasoning",
        "none",
        "--cotrr-retries",
        "1",
    ];
    args.extend_from_slice(&mllm);
    let v = json_of(&squire(&home, &args));
    assert_eq!(
        v["sqaf"]["fallback"],
        Value::Null,
        "the server answered SQAF's request: {}",
        v["sqaf"]
    );
    assert!(
        v["sqaf"]["answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{}",
        v["sqaf"]
    );
    check_read("ebr", &v["ebr"]);
    check_read("cotrr", &v["cotrr"]);
    let mut counted = 0;
    for stage in ["sqaf", "ebr", "cotrr"] {
        let c = &v["cost"][stage];
        assert!(c["calls"].as_u64().is_some_and(|n| n >= 1), "{stage}: {c}");
        assert!(
            c["wall_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{stage}: {c}"
        );
        counted += c["requests"].as_u64().expect("requests") as usize;
    }
    assert_eq!(
        server.chat_statuses(),
        (counted, 0),
        "every request Squire counts was accepted with 200"
    );

    // 2. A text query reranked pointwise on the top 3: one Yes/No request per candidate, no log-probabilities.
    let mut args = vec![
        "search",
        "--index",
        &idx,
        "--text",
        "an astronaut",
        "-k",
        "5",
        "--exact",
        "--json",
        "--rerank",
        "pointwise",
        "--pointwise-k",
        "3",
    ];
    args.extend_from_slice(&mllm);
    let v = json_of(&squire(&home, &args));
    check_read("pointwise", &v["pointwise"]);
    assert_eq!(v["cost"]["pointwise"]["calls"], 3, "{}", v["cost"]);
    counted += v["cost"]["pointwise"]["requests"]
        .as_u64()
        .expect("requests") as usize;
    assert_eq!(server.chat_statuses(), (counted, 0));

    // 3. `eval t2i` with EBR then pointwise over 4 queries: the summary counts each query's reading once,
    //    its fallbacks are those of the log, and a summary with any says it is incomplete.
    let tsv = root.join("q.tsv");
    let photos = [
        "astronaut.jpg",
        "chelsea-420.jpg",
        "coffee-progressive.jpg",
        "rocket-444.jpg",
    ];
    let rows: String = photos
        .iter()
        .enumerate()
        .map(|(i, p)| format!("q{i}\tphoto number {i}\t{p}\n"))
        .collect();
    std::fs::write(&tsv, format!("query_id\tcaption\trelevant_image\n{rows}")).expect("tsv");
    let out = root.join("eval");
    let (tsv_s, out_s) = (tsv.display().to_string(), out.display().to_string());
    let mut args = vec![
        "eval",
        "t2i",
        "--index",
        &idx,
        "--queries",
        &tsv_s,
        "--out",
        &out_s,
        "--rerank",
        "ebr,pointwise",
        "--ebr-k",
        "4",
        "--pointwise-k",
        "2",
        "--max-fallback-share",
        "1.0",
        "--json",
    ];
    args.extend_from_slice(&mllm);
    let v = json_of(&squire(&home, &args));
    let _ = images;
    assert_eq!(v["queries"], 4, "{v}");
    let log = std::fs::read_to_string(out.join("queries.jsonl")).expect("queries.jsonl");
    let mut logged: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("\"stages\"")) {
        let q: Value = serde_json::from_str(line).expect("a JSON line");
        for s in q["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter(|s| s["stage"] != "first")
        {
            let read = s["read"]
                .as_str()
                .unwrap_or_else(|| panic!("a logged MLLM stage without `read`: {s}"));
            assert_ne!(read, "logprobs", "{s}");
            assert_eq!(read == "fallback", s["fallback"].is_string(), "{s}");
            *logged
                .entry(s["stage"].as_str().expect("stage").into())
                .or_default()
                .entry(read.into())
                .or_default() += 1;
        }
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
    )
    .expect("summary JSON");
    for stage in ["ebr", "pointwise"] {
        let classes: BTreeMap<String, usize> =
            serde_json::from_value(summary["answers_read"][stage].clone())
                .unwrap_or_else(|e| panic!("{e}: {summary}"));
        assert_eq!(classes.values().sum::<usize>(), 4, "{stage}: {classes:?}");
        assert_eq!(
            Some(&classes),
            logged.get(stage),
            "{stage}: the summary's counts are the log's"
        );
    }
    let fell = logged.values().any(|c| c.contains_key("fallback"));
    assert_eq!(summary["complete"], !fell, "{summary}");
    let md = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert_eq!(md.contains("Incomplete"), fell, "{md}");
    let (ok, other) = server.chat_statuses();
    assert_eq!(other, 0, "every request was accepted");
    assert!(
        ok > counted,
        "the evaluation asked the server ({ok} accepted in all)"
    );
    eprintln!("transformers serve: {ok} chat requests accepted; eval read {logged:?}");
}
