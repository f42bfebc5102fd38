//! `squire whiten` and `--whiten`: the whitening is fitted on the collection,
//! stored beside it, used by search, and refused once the collection changes.

use crate::common::{fixtures, scratch, squire, text};

#[test]
fn whiten_fit_search_and_stale_refusal() {
    let root = scratch("whiten");
    let home = root.join("home");
    let model = fixtures().join("tiny-clip").display().to_string();
    // A copy of the sample photos, so the test can add one later.
    let images = root.join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    let src = fixtures().join("images");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let (held_back, first) = names.split_last().expect("images");
    for n in first {
        std::fs::copy(src.join(n), images.join(n)).expect("copy");
    }
    let idx = root.join("index").display().to_string();
    let imgs = images.display().to_string();
    let o = squire(&home, &["index", &imgs, "--index", &idx, "--model", &model]);
    assert!(o.status.success(), "{}", text(&o));
    // Searching whitened before fitting names the missing file and the fix.
    let query = src.join("astronaut.jpg").display().to_string();
    let o = squire(
        &home,
        &["search", "--index", &idx, "--image", &query, "--whiten"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("squire whiten"), "{}", text(&o));
    // Fit: with 9 images the dimensions are capped at 8.
    let o = squire(&home, &["whiten", "--index", &idx, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["dim_out"], first.len() - 1);
    assert!(
        root.join("index/whitening/clip.json").exists()
            && root.join("index/whitening/clip.f32").exists()
    );
    let o = squire(
        &home,
        &[
            "search", "--index", &idx, "--image", &query, "--whiten", "--json", "-k", "3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["store"]["whitened"], true);
    assert_eq!(
        v["results"][0]["path"], "astronaut.jpg",
        "the query image itself comes first"
    );
    assert!((v["results"][0]["score"].as_f64().expect("score") - 1.0).abs() < 1e-4);
    // The collection changes: the stored whitening is refused until refitted.
    std::fs::copy(src.join(held_back), images.join(held_back)).expect("copy");
    let o = squire(&home, &["index", &imgs, "--index", &idx, "--model", &model]);
    assert!(o.status.success(), "{}", text(&o));
    let o = squire(
        &home,
        &["search", "--index", &idx, "--image", &query, "--whiten"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("run `squire whiten"), "{}", text(&o));
    let o = squire(&home, &["whiten", "--index", &idx, "--whiten-dims", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = squire(
        &home,
        &[
            "search", "--index", &idx, "--image", &query, "--whiten", "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Too many dimensions are refused with the reason.
    let o = squire(&home, &["whiten", "--index", &idx, "--whiten-dims", "500"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("500 output dimensions"), "{}", text(&o));
}
