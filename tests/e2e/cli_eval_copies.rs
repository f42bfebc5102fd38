//! `squire eval copies` end to end on the committed fixture photos with the
//! tiny random CLIP (the plumbing and the bookkeeping are tested; retrieval
//! quality is measured on Flickr8k-1k with the lite pack, see README).

use crate::common::{fixtures, scratch, squire, text};

#[test]
fn copies_benchmark_is_deterministic_and_counts_every_query() {
    let root = scratch("copies");
    let home = root.join("home");
    let cache = root.join("cache").display().to_string();
    let images = fixtures().join("images").display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    let args = [
        "eval",
        "copies",
        "--images",
        &images,
        "--cache",
        &cache,
        "--model",
        &model,
        "--sources",
        "3",
        "--variants",
        "3",
        "--others",
        "4",
        "--seed",
        "5",
        "--rerank",
        "superglobal",
        "--sg-k",
        "2",
        "--device",
        "cpu",
        "--json",
    ];
    let o = squire(&home, &args);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["queries"], 3);
    // Gallery: 3 sources + 2 kept copies each + 4 distractors.
    assert_eq!(v["gallery"], 3 + 3 * 2 + 4, "{v}");
    for stage in ["first_stage", "superglobal"] {
        for m in ["mAP@100", "R@1", "R@10"] {
            let x = v["metrics"][stage][m].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&x), "{stage} {m} = {x}");
        }
    }
    let sg = &v["superglobal"];
    let counted = sg["wins"].as_u64().unwrap()
        + sg["losses"].as_u64().unwrap()
        + sg["ties"].as_u64().unwrap();
    assert_eq!(counted, 3);
    let per_query = v["per_query"].as_array().expect("per_query");
    assert_eq!(per_query.len(), 3);
    assert!(per_query
        .iter()
        .all(|q| q["edits"].as_array().is_some_and(|e| e.len() >= 3)));
    // The same seed gives the same benchmark and the same numbers (cached or not).
    let again = squire(&home, &args);
    let w: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(v["metrics"], w["metrics"]);
    assert_eq!(v["per_query"], w["per_query"]);
    // A folder with too few photos is a clear error.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let o = squire(
        &home,
        &[
            "eval",
            "copies",
            "--images",
            &empty.display().to_string(),
            "--cache",
            &cache,
            "--model",
            &model,
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("needs at least"),
        "{}",
        text(&o)
    );
}
