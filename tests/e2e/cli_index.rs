//! `squire index`, `search` and `eval t2i` end to end on the tiny CLIP
//! fixture (random weights: the plumbing is tested, not retrieval quality).

use std::path::Path;

use crate::common::{fixtures, scratch, squire, text};

/// A gallery of the fixture images plus every kind of bad file.
fn gallery(dir: &Path) {
    for e in std::fs::read_dir(fixtures().join("images"))
        .expect("ls")
        .flatten()
    {
        std::fs::copy(e.path(), dir.join(e.file_name())).expect("copy");
    }
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::copy(
        fixtures().join("images/astronaut.jpg"),
        dir.join("sub/astronaut-copy.JPG"),
    )
    .expect("copy");
    let jpg = std::fs::read(fixtures().join("images/chelsea-420.jpg")).expect("read");
    std::fs::write(dir.join("truncated.jpg"), &jpg[..200]).expect("write");
    std::fs::write(dir.join("empty.jpg"), b"").expect("write");
    std::fs::write(dir.join("notes.jpg"), b"just some text, not an image\n").expect("write");
    // A PNG header declaring 30000×30000 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend(30000u32.to_be_bytes());
    png.extend(30000u32.to_be_bytes());
    png.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(dir.join("bomb.png"), png).expect("write");
    std::fs::write(dir.join("readme.txt"), b"ignored: not an image extension").expect("write");
}

#[test]
fn index_search_and_eval_through_the_cli() {
    let root = scratch("flow");
    let (home, images, index) = (root.join("home"), root.join("images"), root.join("index"));
    std::fs::create_dir_all(&images).expect("mkdir");
    gallery(&images);
    let model = fixtures().join("tiny-clip").display().to_string();
    let (img_s, idx_s) = (images.display().to_string(), index.display().to_string());

    let o = squire(
        &home,
        &[
            "index", &img_s, "--index", &idx_s, "--model", &model, "--batch", "4", "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["images"], serde_json::json!(11), "{v}");
    let skipped: Vec<String> = v["report"]["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| s[0].as_str().expect("name").to_string())
        .collect();
    let mut sorted = skipped.clone();
    sorted.sort();
    // A truncated JPEG may decode partially (libjpeg fills the rest), like Pillow with LOAD_TRUNCATED_IMAGES;
    // the other three must be refused with a reason.
    for bad in ["bomb.png", "empty.jpg", "notes.jpg"] {
        assert!(
            sorted.iter().any(|s| s == bad),
            "{bad} not skipped: {sorted:?}"
        );
    }
    for reason in v["report"]["skipped"].as_array().expect("skipped") {
        assert!(!reason[1].as_str().unwrap_or("").is_empty());
    }

    // Exit code 0, with the count of skipped files on stderr.
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("warning: skipped {} file(s)", skipped.len())),
        "{}",
        text(&o)
    );

    // A second run embeds nothing.
    let o = squire(
        &home,
        &["index", &img_s, "--index", &idx_s, "--model", &model],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to embed"), "{}", text(&o));

    // Text, image and composed search, JSON schema.
    for args in [
        vec!["--text", "an astronaut"],
        vec!["--image", "IMG"],
        vec!["--image", "IMG", "--text", "make it red"],
    ] {
        let q = images.join("coffee-progressive.jpg").display().to_string();
        let mut full = vec!["search", "--index", &idx_s, "--json", "-k", "3"];
        full.extend(
            args.iter()
                .map(|a| if *a == "IMG" { q.as_str() } else { a }),
        );
        let o = squire(&home, &full);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 3);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r["rank"], serde_json::json!(i + 1));
            let id = r["id"].as_str().expect("id is a string");
            assert!(
                id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{r}"
            );
            assert!(r["path"].is_string() && r["score"].is_f64(), "{r}");
        }
        assert_eq!(v["schema"], serde_json::json!("squire.search/1"));
        assert_eq!(v["store"]["method"], serde_json::json!("usearch"));
        assert_eq!(v["store"]["ef"], serde_json::json!(128));
        for t in ["encode_ms", "search_ms", "total_ms"] {
            assert!(v["timings"][t].is_f64(), "{t}: {v}");
        }
        let kind = v["query"]["kind"].as_str().expect("kind");
        assert_eq!(
            kind,
            match args.len() {
                4 => "composed",
                _ if args[0] == "--text" => "text",
                _ => "image",
            }
        );
        if args.len() == 2 && args[0] == "--image" {
            // An image finds itself first.
            assert_eq!(
                results[0]["path"],
                serde_json::json!("coffee-progressive.jpg")
            );
        }
    }

    // HNSW (usearch, then hnsw_rs after a rebuild) and exact search agree on a small collection.
    let top = |extra: &[&str]| -> Vec<String> {
        let mut full = vec![
            "search", "--index", &idx_s, "--json", "-k", "5", "--text", "a rocket",
        ];
        full.extend_from_slice(extra);
        let o = squire(&home, &full);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["path"].as_str().expect("path").to_string())
            .collect()
    };
    let exact = top(&["--exact"]);
    assert_eq!(exact.len(), 5);
    assert_eq!(top(&[]), exact);
    assert_eq!(top(&["--ef", "16"]), exact);
    let o = squire(
        &home,
        &[
            "index", &img_s, "--index", &idx_s, "--model", &model, "--store", "hnsw_rs",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("rebuilding the vector store as hnsw_rs"),
        "{}",
        text(&o)
    );
    assert_eq!(top(&[]), exact);
    let o = squire(
        &home,
        &[
            "index", &img_s, "--index", &idx_s, "--model", &model, "--store", "faiss",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("unknown store `faiss`"),
        "{}",
        text(&o)
    );
    let o = squire(
        &home,
        &[
            "index",
            &img_s,
            "--index",
            &idx_s,
            "--model",
            &model,
            "--store",
            "usearch",
            "--precision",
            "f16",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(top(&[]), exact);

    // eval t2i: JSON metrics, and queries whose image is missing are counted, not dropped silently.
    let tsv = root.join("q.tsv");
    std::fs::write(&tsv, "query_id\tcaption\trelevant_image\n1\tan astronaut\tastronaut.jpg\n2\ta cat\tchelsea-420.jpg\n3\ta ghost\tnot-indexed.jpg\n").expect("tsv");
    let out = root.join("eval-t2i").display().to_string();
    let o = squire(
        &home,
        &[
            "eval",
            "t2i",
            "--index",
            &idx_s,
            "--queries",
            tsv.to_str().expect("utf8"),
            "--out",
            &out,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    for key in ["R@1", "R@5", "R@10", "MRR", "nDCG@10"] {
        assert!(v["metrics"][key].is_f64(), "{key} missing: {v}");
    }
    assert_eq!(v["queries"], serde_json::json!(2));
    assert_eq!(v["dropped"], serde_json::json!(["3"]));
    assert!(text(&o).contains("1 queries dropped"), "{}", text(&o));

    // A collection refuses another model.
    let other = root.join("other-model");
    std::fs::create_dir_all(&other).expect("mkdir");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), other.join(f)).expect("copy");
    }
    let o = squire(
        &home,
        &[
            "index",
            &img_s,
            "--index",
            &idx_s,
            "--model",
            other.to_str().expect("utf8"),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("was built with model"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn index_refuses_to_make_a_collection_in_a_folder_of_other_files_and_changes_nothing() {
    let root = scratch("index-foreign");
    let home = root.join("home");
    let model = fixtures().join("tiny-clip").display().to_string();
    let images = fixtures().join("images").display().to_string();
    // A folder that is not a collection, with a `gen-*` folder of its own.
    let dir = root.join("photos-2019");
    std::fs::create_dir_all(dir.join("gen-2019")).expect("mkdir");
    std::fs::write(dir.join("gen-2019/holiday.jpg"), b"mine").expect("write");
    let o = squire(
        &home,
        &[
            "index",
            &images,
            "--index",
            &dir.display().to_string(),
            "--model",
            &model,
        ],
    );
    let out = text(&o);
    assert!(
        !o.status.success() && out.contains("holds no collection") && out.contains("photos-2019"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("gen-2019/holiday.jpg")).expect("still there"),
        b"mine"
    );
    assert!(!dir.join("manifest.json").exists());
    // An empty existing folder is fine.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let o = squire(
        &home,
        &[
            "index",
            &images,
            "--index",
            &empty.display().to_string(),
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}
