//! Vector queries: `squire search --query-vector FILE` (.npy or JSON, one
//! vector or several) and `"vector"` in the API answer as the image they
//! came from does, with a filter too, and need no model weights.

use std::path::Path;

use serde_json::{json, Value};
use squire_indexer::{npy, Collection, OpenOptions};

use crate::common::{fixtures, scratch, squire, text};

fn json_out(home: &Path, args: &[&str]) -> Value {
    let o = squire(home, args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn top(v: &Value) -> Vec<(String, f64)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("").to_string(),
                r["score"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

#[test]
fn vector_queries_from_npy_and_json_match_image_queries_and_need_no_weights() {
    let root = scratch("vector-query");
    let home = root.join("home");
    // The model copied here, so that it can be taken away afterwards.
    let model = root.join("tiny-clip");
    std::fs::create_dir_all(&model).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join("tiny-clip")).expect("model") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, model.join(p.file_name().expect("name"))).expect("copy");
    }
    let images = fixtures().join("images");
    let idx = root.join("index").display().to_string();
    let o = squire(
        &home,
        &[
            "index",
            &images.display().to_string(),
            "--index",
            &idx,
            "--model",
            &model.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    // The stored vectors of two photos, as a 1-row .npy, a 2-row f16 .npy and JSON.
    let col = Collection::open_with(Path::new(&idx), OpenOptions { view: true }).expect("open");
    let name = col.manifest().image_query_vector.clone();
    let store = col.vectors(&name).expect("vectors");
    let row = |p: &str| col.records().iter().position(|r| r.path == p).expect(p);
    let (chelsea, rocket) = (
        store.row(row("chelsea-420.jpg")).to_vec(),
        store.row(row("rocket-444.jpg")).to_vec(),
    );
    let dim = chelsea.len();
    drop(col);
    // Scaled: a vector query is normalised first.
    let scaled: Vec<f32> = chelsea.iter().map(|x| x * 3.0).collect();
    let one = root.join("one.npy");
    std::fs::write(&one, npy::encode(&scaled, 1, dim, false)).expect("write");
    let two = root.join("two.npy");
    std::fs::write(
        &two,
        npy::encode(&[chelsea.clone(), rocket.clone()].concat(), 2, dim, true),
    )
    .expect("write");
    let as_json = root.join("q.json");
    std::fs::write(&as_json, serde_json::to_vec(&chelsea).expect("json")).expect("write");

    let by_image = json_out(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--image",
            &images.join("chelsea-420.jpg").display().to_string(),
            "--exact",
            "-k",
            "5",
            "--json",
        ],
    );
    for file in [&one, &as_json] {
        let v = json_out(
            &home,
            &[
                "search",
                "--index",
                &idx,
                "--query-vector",
                &file.display().to_string(),
                "--exact",
                "-k",
                "5",
                "--json",
            ],
        );
        assert_eq!(v["query"]["kind"], "vector");
        let (got, want) = (top(&v), top(&by_image));
        assert_eq!(got[0].0, "chelsea-420.jpg");
        assert!((got[0].1 - 1.0).abs() < 1e-4, "{got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "{got:?} vs {want:?}");
            assert!((g.1 - w.1).abs() < 1e-3, "{got:?} vs {want:?}");
        }
    }

    // Without the model's weights: vector queries still answer, text queries say why not.
    std::fs::remove_dir_all(&model).expect("remove the model");
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--query-vector",
            &two.display().to_string(),
            "-k",
            "3",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0]["query"]["index"].as_u64(),
            top(&lines[0])[0].0.as_str()
        ),
        (Some(0), "chelsea-420.jpg")
    );
    assert_eq!(
        (
            lines[1]["query"]["index"].as_u64(),
            top(&lines[1])[0].0.as_str()
        ),
        (Some(1), "rocket-444.jpg")
    );
    let filtered = json_out(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--query-vector",
            &one.display().to_string(),
            "--filter",
            "not path glob \"chelsea*\"",
            "--json",
        ],
    );
    assert!(
        top(&filtered)
            .iter()
            .all(|(p, _)| !p.starts_with("chelsea")),
        "{filtered}"
    );
    let o = squire(&home, &["search", "--index", &idx, "--text", "a cat"]);
    assert!(!o.status.success());

    // Bad vectors are named.
    let short = root.join("short.json");
    std::fs::write(&short, b"[0.1, 0.2, 0.3]").expect("write");
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--query-vector",
            &short.display().to_string(),
        ],
    );
    assert!(
        !o.status.success()
            && text(&o).contains(&format!(
                "the query vector has 3 values; vector `{name}` has {dim}"
            )),
        "{}",
        text(&o)
    );
    let nan = root.join("nan.npy");
    let mut bad = chelsea.clone();
    bad[0] = f32::NAN;
    std::fs::write(&nan, npy::encode(&bad, 1, dim, false)).expect("write");
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--query-vector",
            &nan.display().to_string(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("must be finite"),
        "{}",
        text(&o)
    );
    let words = root.join("words.json");
    std::fs::write(&words, b"[0.1, \"x\"]").expect("write");
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--query-vector",
            &words.display().to_string(),
        ],
    );
    assert!(
        !o.status.success()
            && text(&o).contains("words.json: the value[1] = \"x\" is not a number"),
        "{}",
        text(&o)
    );

    // The API: "vector" in the JSON body.
    let idx2 = crate::common::tiny_collection("vector-query-api").1;
    let srv = crate::serve_api::serve_collection(
        &idx2,
        images.clone(),
        squire_demo_ui::ServerConfig::default(),
        None,
    );
    let resp = ureq::post(&format!("{}/api/search", srv.base))
        .send_json(json!({"vector": rocket, "k": 3}))
        .expect("POST");
    let v: Value = resp.into_json().expect("json");
    assert_eq!(v["query"]["kind"], "vector", "{v}");
    assert_eq!(v["results"][0]["path"], "rocket-444.jpg", "{v}");
    let e =
        ureq::post(&format!("{}/api/search", srv.base)).send_json(json!({"vector": [1.0, 2.0]}));
    match e {
        Err(ureq::Error::Status(400, r)) => {
            assert!(r.into_string().unwrap_or_default().contains("has 2 values"))
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    drop(srv);
    let _ = std::fs::remove_dir_all(&root);
}
