//! `squire bench index` and `squire bench query` run end to end on the tiny
//! CLIP fixture and report what they promise (no timing is asserted: numbers
//! come from release builds, see README).

use crate::common::{fixtures, scratch, squire};

#[test]
fn bench_index_and_query_report_throughput_shares_and_recall() {
    let root = scratch("bench");
    let (home, images, index) = (root.join("home"), root.join("images"), root.join("index"));
    std::fs::create_dir_all(&images).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join("images"))
        .expect("ls")
        .flatten()
    {
        std::fs::copy(e.path(), images.join(e.file_name())).expect("copy");
    }
    let model = fixtures().join("tiny-clip").display().to_string();
    let img_s = images.display().to_string();

    let o = squire(
        &home,
        &[
            "bench", "index", &img_s, "--model", &model, "--batch", "4", "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["images"], serde_json::json!(10), "{v}");
    for key in [
        "images_per_second",
        "decode_wait_share",
        "pipeline_overhead_share",
        "model_only_seconds",
        "peak_rss_bytes",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }

    let o = squire(
        &home,
        &[
            "index",
            &img_s,
            "--index",
            index.to_str().expect("utf8"),
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dump = root.join("dump");
    let o = squire(
        &home,
        &[
            "bench",
            "query",
            "--index",
            index.to_str().expect("utf8"),
            "--size",
            "3000",
            "--queries",
            "100",
            "--store",
            "usearch",
            "--store",
            "hnsw_rs",
            "--ef",
            "16",
            "--ef",
            "256",
            "--dump",
            dump.to_str().expect("utf8"),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let size = &v["sizes"][0];
    assert_eq!(size["n"], serde_json::json!(3000));
    let stores = size["stores"].as_array().expect("stores");
    assert_eq!(stores.len(), 2);
    for st in stores {
        let rows = st["results"].as_array().expect("results");
        assert_eq!(rows.len(), 2);
        let at_256 = rows[1]["recall_at_10"].as_f64().expect("recall");
        assert!(
            at_256 >= 0.95,
            "{}: recall@10 {at_256} at ef 256",
            st["store"]
        );
        assert!(
            rows[0]["p50_ms"].as_f64().expect("p50") <= rows[0]["p99_ms"].as_f64().expect("p99")
        );
    }
    // The dump is valid .npy with the shapes the Python peers expect.
    let base = std::fs::read(dump.join("n3000/base.npy")).expect("base.npy");
    assert!(base.starts_with(b"\x93NUMPY\x01\x00"));
    let header =
        String::from_utf8_lossy(&base[10..10 + u16::from_le_bytes([base[8], base[9]]) as usize])
            .to_string();
    assert!(
        header.contains("'shape': (3000, 32)") && header.contains("'<f4'"),
        "{header}"
    );
    assert_eq!(base.len(), 10 + header.len() + 3000 * 32 * 4);
    let truth = std::fs::read(dump.join("n3000/truth.npy")).expect("truth.npy");
    assert_eq!(truth.len() % 16, 0);
    let _ = std::fs::remove_dir_all(&root);
}
