//! `squire eval roxford` on a tiny revisitop-layout dataset built here: the
//! fixture ground-truth pickle (scripts/make_revisitop_fixtures.py) and
//! images written from the sample photos. The real data is not available.

use std::path::Path;

use crate::common::{fixtures, scratch, squire, text};

fn photos() -> Vec<image::RgbImage> {
    let mut names: Vec<_> = std::fs::read_dir(fixtures().join("images"))
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            image::open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgb8()
        })
        .collect()
}

fn write_dataset(root: &Path) {
    let dir = root.join("tiny");
    std::fs::create_dir_all(dir.join("jpg")).expect("mkdir");
    let gnd = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures/revisitop/gnd_tiny_p4.pkl");
    std::fs::copy(gnd, dir.join("gnd_tiny.pkl")).expect("copy gnd");
    let p = photos();
    let names = [
        "db_00", "db_01", "db_02", "db_03", "db_04", "db_05", "db_06", "db_07", "query_a",
        "query_b", "query_c",
    ];
    for (i, n) in names.iter().enumerate() {
        // query_a is db_00's photo, so it has a true duplicate in the database.
        let img = if *n == "query_a" {
            &p[0]
        } else {
            &p[i % p.len()]
        };
        img.save(dir.join("jpg").join(format!("{n}.jpg")))
            .expect("write jpg");
    }
}

fn metrics(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("json: {e}\n{}", text(o)))
}

#[test]
fn roxford_protocol_on_a_tiny_dataset() {
    let root = scratch("revisitop");
    let home = root.join("home");
    let data = root.join("data");
    write_dataset(&data);
    let model = fixtures().join("tiny-clip").display().to_string();
    let cache = root.join("cache").display().to_string();
    let d = data.display().to_string();
    let base = [
        "eval",
        "roxford",
        "--data",
        &d,
        "--dataset",
        "tiny",
        "--model",
        &model,
        "--cache",
        &cache,
        "--json",
    ];
    let v = metrics(&squire(&home, &base));
    assert_eq!(
        (v["queries"].as_u64(), v["database"].as_u64()),
        (Some(3), Some(8))
    );
    for setup in ["easy", "medium", "hard"] {
        let m = v["metrics"]["first_stage"][setup].as_f64().expect("mAP");
        assert!((0.0..=100.0).contains(&m), "{setup}: {m}");
    }
    // query_b has no easy positives: no Easy AP, and it does not count.
    assert!(v["per_query"][1]["ap_first_stage"]["easy"].is_null());
    assert!(v["per_query"][1]["ap_first_stage"]["hard"]
        .as_f64()
        .is_some());
    // Distractors can only push positives down.
    let distractors = root.join("distractors");
    std::fs::create_dir_all(&distractors).expect("mkdir");
    for (i, img) in photos().iter().enumerate().take(5) {
        img.save(distractors.join(format!("d{i}.jpg")))
            .expect("write");
    }
    let ds = distractors.display().to_string();
    let mut args = base.to_vec();
    args.extend(["--distractors", &ds]);
    let w = metrics(&squire(&home, &args));
    assert_eq!(w["distractors"], 5);
    for setup in ["easy", "medium", "hard"] {
        let (a, b) = (
            v["metrics"]["first_stage"][setup].as_f64().expect("a"),
            w["metrics"]["first_stage"][setup].as_f64().expect("b"),
        );
        assert!(b <= a + 1e-9, "{setup}: {b} with distractors > {a} without");
    }
    // SuperGlobal and whitening run on the same data.
    let mut args = base.to_vec();
    args.extend([
        "--rerank",
        "superglobal",
        "--sg-m",
        "6",
        "--sg-k",
        "2",
        "--sg-query-top",
        "2",
        "--whiten",
        "--whiten-dims",
        "4",
    ]);
    let s = metrics(&squire(&home, &args));
    assert!(s["metrics"]["superglobal"]["medium"].as_f64().is_some());
    assert_eq!(s["whitening"]["dims"], 4);
    // A missing database image is named.
    std::fs::remove_file(data.join("tiny/jpg/db_03.jpg")).expect("rm");
    let o = squire(&home, &base);
    assert!(!o.status.success());
    assert!(text(&o).contains("db_03.jpg"), "{}", text(&o));
}
