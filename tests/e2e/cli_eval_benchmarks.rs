//! `squire eval cirr|circo|fashioniq|inquire-fullrank|t2i` end to end on
//! small datasets written here in the published formats over the fixture
//! photos (the real benchmarks' images are not available), indexed with the
//! tiny CLIP.

use std::path::{Path, PathBuf};

use crate::common::{fixtures, scratch, squire, text};
use serde_json::{json, Value};

/// The fixture photos copied under `names` into `dir/sub`, indexed; returns (home, index).
fn dataset(root: &Path, sub: &str, names: &[String]) -> (PathBuf, String) {
    let home = root.join("home");
    let images = root.join("images");
    std::fs::create_dir_all(images.join(sub)).unwrap();
    let mut photos: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos.retain(|p| !p.to_string_lossy().contains("tiny-5x3"));
    for (name, src) in names.iter().zip(&photos) {
        let ext = src.extension().unwrap().to_string_lossy();
        std::fs::copy(src, images.join(sub).join(format!("{name}.{ext}"))).unwrap();
    }
    let idx = root.join("index").display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    let o = squire(
        &home,
        &[
            "index",
            images.to_str().unwrap(),
            "--index",
            &idx,
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    (home, idx)
}

fn run_json(home: &Path, args: &[&str]) -> Value {
    let o = squire(home, args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn ext_of(root: &Path, sub: &str, name: &str) -> String {
    let dir = root.join("images").join(sub);
    let f = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|f| f.starts_with(&format!("{name}.")))
        .unwrap();
    format!("./{sub}/{f}")
}

#[test]
fn cirr_val_metrics_resume_test_submission_and_missing_images() {
    let root = scratch("eval-cirr");
    let names: Vec<String> = (0..9).map(|i| format!("dev-{i}-0-img{i}")).collect();
    let (home, idx) = dataset(&root, "dev", &names);
    let data = root.join("cirr");
    std::fs::create_dir_all(data.join("captions")).unwrap();
    std::fs::create_dir_all(data.join("image_splits")).unwrap();
    let split: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.clone(), json!(ext_of(&root, "dev", n))))
        .collect();
    for s in ["val", "test1"] {
        std::fs::write(
            data.join(format!("image_splits/split.rc2.{s}.json")),
            Value::Object(split.clone()).to_string(),
        )
        .unwrap();
    }
    let members = |a: usize| (a..a + 6).map(|i| names[i % 9].clone()).collect::<Vec<_>>();
    let triplets: Vec<Value> = (0..3)
        .map(|i| json!({"pairid": 100 + i, "reference": names[i], "target_hard": names[i + 1], "target_soft": {names[i + 1].clone(): 1.0},
                        "caption": "make it brighter", "img_set": {"id": i, "members": members(i)}}))
        .collect();
    std::fs::write(
        data.join("captions/cap.rc2.val.json"),
        Value::from(triplets.clone()).to_string(),
    )
    .unwrap();
    let test: Vec<Value> = triplets.iter().map(|t| json!({"pairid": t["pairid"], "reference": t["reference"], "caption": t["caption"], "img_set": t["img_set"]})).collect();
    std::fs::write(
        data.join("captions/cap.rc2.test1.json"),
        Value::from(test).to_string(),
    )
    .unwrap();
    let out = root.join("out-val").display().to_string();
    let data_s = data.display().to_string();
    let args = [
        "eval",
        "cirr",
        "--index",
        &idx,
        "--data",
        &data_s,
        "--out",
        &out,
        "--rerank",
        "superglobal",
        "--json",
    ];
    let v = run_json(&home, &args);
    assert_eq!(v["queries"], 3);
    assert_eq!(v["stages"], json!(["first", "superglobal"]));
    for stage in ["first", "superglobal"] {
        for k in [
            "R@1",
            "R@5",
            "R@10",
            "R@50",
            "Rsubset@1",
            "Rsubset@2",
            "Rsubset@3",
        ] {
            let m = v["per_stage"][stage][k]
                .as_f64()
                .unwrap_or_else(|| panic!("{stage} {k}: {v}"));
            assert!((0.0..=1.0).contains(&m));
        }
        // 8 candidates (9 images minus the reference): the target is always within 50.
        assert_eq!(v["per_stage"][stage]["R@50"], 1.0);
    }
    for q in v["per_query"].as_array().unwrap() {
        let m = &q["metrics"]["first"];
        assert!(
            m["Rsubset@1"].as_f64() >= m["R@1"].as_f64(),
            "the group is a sub-list of the gallery ranking: {q}"
        );
    }
    // The reference is never ranked; the TREC run and qrels are written.
    let log = std::fs::read_to_string(Path::new(&out).join("queries.jsonl")).unwrap();
    for (line, t) in log.lines().zip(&triplets) {
        let q: Value = serde_json::from_str(line).unwrap();
        assert!(
            !q["stages"][0]["docs"]
                .as_array()
                .unwrap()
                .contains(&t["reference"]),
            "{line}"
        );
        assert_eq!(q["stages"][0]["docs"].as_array().unwrap().len(), 8);
    }
    let trec = std::fs::read_to_string(Path::new(&out).join("run-first.trec")).unwrap();
    assert_eq!(trec.lines().count(), 24);
    assert!(trec.starts_with("100 Q0 "), "{trec}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&out).join("qrels.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(image::open(Path::new(&out).join("metrics.png")).is_ok());
    assert!(std::fs::read_to_string(Path::new(&out).join("summary.md"))
        .unwrap()
        .contains("| superglobal |"));
    // A rerun resumes from the log and reports the same numbers.
    let again = run_json(&home, &args);
    assert_eq!(again["resumed"], 3);
    assert_eq!(again["per_stage"], v["per_stage"]);
    // Other settings into the same folder are refused.
    let o = squire(
        &home,
        &[
            "eval", "cirr", "--index", &idx, "--data", &data_s, "--out", &out,
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("run.json") && text(&o).contains("another run"),
        "{}",
        text(&o)
    );
    // test1: no metrics, the official submission files.
    let out_t = root.join("out-test").display().to_string();
    let o = squire(
        &home,
        &[
            "eval", "cirr", "--index", &idx, "--data", &data_s, "--split", "test1", "--out", &out_t,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sub: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out_t).join("submission-recall-first.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (sub["version"].as_str(), sub["metric"].as_str()),
        (Some("rc2"), Some("recall"))
    );
    assert_eq!(sub["101"].as_array().unwrap().len(), 8);
    let subset: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out_t).join("submission-recall_subset-first.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(subset["102"].as_array().unwrap().len(), 3);
    // A triplet whose reference is not in the collection: an error naming the file and the pair; --skip-missing drops and counts it.
    let mut bad = triplets.clone();
    bad[1]["reference"] = json!("dev-999-0-img0");
    std::fs::write(
        data.join("captions/cap.rc2.val.json"),
        Value::from(bad).to_string(),
    )
    .unwrap();
    let out_b = root.join("out-bad").display().to_string();
    let o = squire(
        &home,
        &[
            "eval", "cirr", "--index", &idx, "--data", &data_s, "--out", &out_b,
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cap.rc2.val.json")
            && text(&o).contains("query 101")
            && text(&o).contains("dev-999-0-img0"),
        "{}",
        text(&o)
    );
    let v = run_json(
        &home,
        &[
            "eval",
            "cirr",
            "--index",
            &idx,
            "--data",
            &data_s,
            "--out",
            &out_b,
            "--skip-missing",
            "--json",
        ],
    );
    assert_eq!(
        (v["queries"].as_u64(), v["dropped"].clone()),
        (Some(2), json!(["101"]))
    );
    // A file that is not JSON.
    std::fs::write(data.join("captions/cap.rc2.val.json"), "[{\"pairid\": 1,").unwrap();
    let o = squire(
        &home,
        &[
            "eval",
            "cirr",
            "--index",
            &idx,
            "--data",
            &data_s,
            "--out",
            &root.join("x").display().to_string(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("cap.rc2.val.json"),
        "{}",
        text(&o)
    );
}

#[test]
fn circo_fashioniq_and_inquire_on_small_datasets() {
    let root = scratch("eval-sets");
    let ids: Vec<u64> = (1..=9).map(|i| 1000 + i).collect();
    let names: Vec<String> = ids.iter().map(|id| format!("{id:012}")).collect();
    let (home, idx) = dataset(&root, "unlabeled2017", &names);
    // CIRCO val: mAP@k; test: a submission of COCO ids.
    let data = root.join("circo");
    std::fs::create_dir_all(&data).unwrap();
    let val = json!([
        {"id": 0, "reference_img_id": ids[0], "target_img_id": ids[1], "relative_caption": "has two of them", "shared_concept": "x", "gt_img_ids": [ids[1], ids[2]], "semantic_aspects": []},
        {"id": 1, "reference_img_id": ids[3], "target_img_id": ids[4], "relative_caption": "is at night", "shared_concept": "y", "gt_img_ids": [ids[4]], "semantic_aspects": []},
    ]);
    std::fs::write(data.join("val.json"), val.to_string()).unwrap();
    std::fs::write(data.join("test.json"), json!([{"id": 7, "reference_img_id": ids[0], "relative_caption": "is red", "shared_concept": "z"}]).to_string()).unwrap();
    let data_s = data.display().to_string();
    let v = run_json(
        &home,
        &[
            "eval",
            "circo",
            "--index",
            &idx,
            "--data",
            &data_s,
            "--out",
            &root.join("o1").display().to_string(),
            "--json",
        ],
    );
    assert_eq!(v["queries"], 2);
    for k in ["mAP@5", "mAP@10", "mAP@25", "mAP@50"] {
        let m = v["metrics"][k].as_f64().unwrap();
        assert!(
            m > 0.0 && m <= 1.0,
            "{k} {m}: all targets are among 8 candidates"
        );
    }
    // With every target among 8 ranked images, mAP@50 ≥ mAP@5 for each query.
    for q in v["per_query"].as_array().unwrap() {
        assert!(
            q["metrics"]["first"]["mAP@50"].as_f64() >= q["metrics"]["first"]["mAP@5"].as_f64()
        );
    }
    let out_t = root.join("o2");
    let o = squire(
        &home,
        &[
            "eval",
            "circo",
            "--index",
            &idx,
            "--data",
            &data_s,
            "--split",
            "test",
            "--out",
            &out_t.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sub: Value = serde_json::from_str(
        &std::fs::read_to_string(out_t.join("submission-first.json")).unwrap(),
    )
    .unwrap();
    let list = sub["7"].as_array().unwrap();
    assert_eq!(list.len(), 8);
    assert!(
        list.iter().all(|x| x.is_u64()) && !list.contains(&json!(ids[0])),
        "{sub}"
    );

    // FashionIQ: per category and the average over categories.
    let fiq = root.join("fiq");
    std::fs::create_dir_all(fiq.join("captions")).unwrap();
    std::fs::write(fiq.join("captions/cap.dress.val.json"), json!([{"target": names[1], "candidate": names[0], "captions": ["is darker", "has long sleeves"]}]).to_string()).unwrap();
    std::fs::write(
        fiq.join("captions/cap.shirt.val.json"),
        json!([{"target": names[3], "candidate": names[2], "captions": ["is blue.", ""]}])
            .to_string(),
    )
    .unwrap();
    let v = run_json(
        &home,
        &[
            "eval",
            "fashioniq",
            "--index",
            &idx,
            "--data",
            &fiq.display().to_string(),
            "--categories",
            "dress,shirt",
            "--out",
            &root.join("o3").display().to_string(),
            "--json",
        ],
    );
    assert_eq!(v["queries"], 2);
    assert_eq!(v["per_group"]["dress"]["first"]["R@50"], 1.0);
    assert!(v["category_average"]["R@10"].as_f64().is_some());

    // INQUIRE-Fullrank: supercategories, AP@50 normalised by every annotated positive.
    let inq = root.join("inquire");
    std::fs::create_dir_all(&inq).unwrap();
    std::fs::write(inq.join("q.csv"), ",query_id,query_text,supercategory,category,iconic_group\n0,1,a bird on a branch,Appearance,Color,Birds\n1,2,a fox in snow,Context,Habitat,Mammals\n2,3,no positives here,Species,Species,Plants\n").unwrap();
    let p = |i: usize| {
        ext_of(&root, "unlabeled2017", &names[i])
            .trim_start_matches("./")
            .to_string()
    };
    std::fs::write(
        inq.join("ann.csv"),
        format!(
            "query_id,image_id,image_path\n1,a,{}\n1,b,{}\n1,c,not/indexed.jpg\n2,d,{}\n",
            p(1),
            p(2),
            p(5)
        ),
    )
    .unwrap();
    let v = run_json(
        &home,
        &[
            "eval",
            "inquire-fullrank",
            "--index",
            &idx,
            "--queries",
            &inq.join("q.csv").display().to_string(),
            "--annotations",
            &inq.join("ann.csv").display().to_string(),
            "--out",
            &root.join("o4").display().to_string(),
            "--json",
        ],
    );
    assert_eq!(v["queries"], 2);
    assert_eq!(
        v["dropped"],
        json!(["3"]),
        "a query without positives is dropped and counted"
    );
    assert_eq!(
        v["per_group"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["Appearance", "Context"]
    );
    let q1 = &v["per_query"][0]["metrics"]["first"];
    // Two of three positives indexed: AP@50 ≤ 2/3 whatever the order.
    assert!(q1["AP@50"].as_f64().unwrap() <= 2.0 / 3.0 + 1e-9, "{q1}");
    // Wrong columns are named.
    std::fs::write(inq.join("bad.csv"), "qid,path\n1,x.jpg\n").unwrap();
    let o = squire(
        &home,
        &[
            "eval",
            "inquire-fullrank",
            "--index",
            &idx,
            "--queries",
            &inq.join("q.csv").display().to_string(),
            "--annotations",
            &inq.join("bad.csv").display().to_string(),
            "--out",
            &root.join("o5").display().to_string(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("bad.csv") && text(&o).contains("image_path"),
        "{}",
        text(&o)
    );
}
