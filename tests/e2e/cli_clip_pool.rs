//! CLIP with patch-token pooling through the CLI: `--pool gem+rgem` with a
//! CLIP model adds a `gem` vector that image queries search.

use crate::common::{fixtures, scratch, squire, text};

#[test]
fn clip_patch_token_pooling_through_the_cli() {
    let root = scratch("clip-pool");
    let home = root.join("home");
    let model = fixtures().join("tiny-clip").display().to_string();
    let images = fixtures().join("images").display().to_string();
    let idx = root.join("index").display().to_string();
    let o = squire(
        &home,
        &[
            "index", &images, "--index", &idx, "--model", &model, "--pool", "gem+rgem",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let query = fixtures()
        .join("images/astronaut.jpg")
        .display()
        .to_string();
    let o = squire(
        &home,
        &[
            "search", "--index", &idx, "--image", &query, "--json", "-k", "3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["query"]["vector"], "gem");
    assert_eq!(v["results"][0]["path"], "astronaut.jpg");
    // Text queries still search the CLIP vector.
    let o = squire(
        &home,
        &["search", "--index", &idx, "--text", "a rocket", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["query"]["vector"], "clip");
    // Scale-GeM needs other input sizes, which CLIP cannot take.
    let idx2 = root.join("index2").display().to_string();
    let o = squire(
        &home,
        &[
            "index",
            &images,
            "--index",
            &idx2,
            "--model",
            &model,
            "--pool",
            "gem+rgem+sgem",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("position embeddings"), "{}", text(&o));
}
