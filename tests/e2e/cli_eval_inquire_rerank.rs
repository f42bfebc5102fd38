//! `squire eval inquire-rerank` on an INQUIRE-Rerank-style parquet file
//! written here (the published layout: an `image` struct of bytes and path,
//! `query`, `relevant`, `clip_score`, iNat24 ids and categories) around the
//! fixture photos; EBR runs against a scripted stand-in for the MLLM.

use std::path::Path;
use std::sync::Arc;

use crate::common::{fixtures, scratch, squire, text, tiny_collection};
use crate::scripted_openai::{Reply, ScriptedServer};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{json, Value};

/// (query, supercategory, [(photo, relevant, clip_score)]).
type Spec<'a> = [(&'a str, &'a str, [(&'a str, bool, f64); 4])];

fn write_parquet(path: &Path, spec: &Spec) {
    let schema = Arc::new(
        parse_message_type(
            "message schema {
                REQUIRED GROUP image { OPTIONAL BYTE_ARRAY bytes; OPTIONAL BYTE_ARRAY path (UTF8); }
                REQUIRED BYTE_ARRAY query (UTF8);
                REQUIRED BOOLEAN relevant;
                REQUIRED DOUBLE clip_score;
                REQUIRED INT64 inat24_image_id;
                REQUIRED BYTE_ARRAY inat24_file_name (UTF8);
                REQUIRED BYTE_ARRAY supercategory (UTF8);
                REQUIRED BYTE_ARRAY category (UTF8);
                REQUIRED BYTE_ARRAY iconic_group (UTF8);
            }",
        )
        .unwrap(),
    );
    let rows: Vec<(&str, &str, &str, bool, f64, i64)> = spec
        .iter()
        .enumerate()
        .flat_map(|(qi, (q, sc, cands))| {
            cands.iter().enumerate().map(move |(ci, (photo, rel, s))| {
                (*q, *sc, *photo, *rel, *s, (qi * 10 + ci) as i64 + 5000)
            })
        })
        .collect();
    let bytes: Vec<ByteArray> = rows
        .iter()
        .map(|r| ByteArray::from(std::fs::read(fixtures().join("images").join(r.2)).unwrap()))
        .collect();
    let s = |f: &dyn Fn(&(&str, &str, &str, bool, f64, i64)) -> String| {
        rows.iter()
            .map(|r| ByteArray::from(f(r).as_str()))
            .collect::<Vec<_>>()
    };
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let ones = vec![1i16; rows.len()];
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        match i {
            0 => col
                .typed::<ByteArrayType>()
                .write_batch(&bytes, Some(&ones), None)
                .map(|_| ()),
            1 => col
                .typed::<ByteArrayType>()
                .write_batch(&s(&|r| format!("train/{}", r.2)), Some(&ones), None)
                .map(|_| ()),
            2 => col
                .typed::<ByteArrayType>()
                .write_batch(&s(&|r| r.0.to_string()), None, None)
                .map(|_| ()),
            3 => col
                .typed::<BoolType>()
                .write_batch(&rows.iter().map(|r| r.3).collect::<Vec<_>>(), None, None)
                .map(|_| ()),
            4 => col
                .typed::<DoubleType>()
                .write_batch(&rows.iter().map(|r| r.4).collect::<Vec<_>>(), None, None)
                .map(|_| ()),
            5 => col
                .typed::<Int64Type>()
                .write_batch(&rows.iter().map(|r| r.5).collect::<Vec<_>>(), None, None)
                .map(|_| ()),
            6 => col
                .typed::<ByteArrayType>()
                .write_batch(&s(&|r| format!("{}.jpg", r.5)), None, None)
                .map(|_| ()),
            7 => col
                .typed::<ByteArrayType>()
                .write_batch(&s(&|r| r.1.to_string()), None, None)
                .map(|_| ()),
            _ => col
                .typed::<ByteArrayType>()
                .write_batch(&s(&|_| "x".to_string()), None, None)
                .map(|_| ()),
        }
        .unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

fn run(home: &Path, args: &[&str]) -> Value {
    let o = squire(home, args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

#[test]
fn scripted_mllm_server_inquire_rerank_first_stage_rescore_and_ebr() {
    let (home, idx, _) = tiny_collection("inq-rerank");
    let root = scratch("inq-rerank-data");
    let shard = root.join("shards/val-00000-of-00001.parquet");
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    // Query A: ordered 0,1,2,3 by clip_score, relevant at 2 and 4: AP (1/2 + 2/4)/2 = 0.5, RR 0.5.
    // Query B: a tie (0.5, 0.5) keeps file order: 2,0,1,3, the relevant one (0) at 2: AP 0.5, RR 0.5.
    write_parquet(
        &shard,
        &[
            (
                "a bird on a branch",
                "Appearance",
                [
                    ("astronaut.jpg", false, 0.9),
                    ("chelsea-420.jpg", true, 0.8),
                    ("coffee-progressive.jpg", false, 0.7),
                    ("grey.jpg", true, 0.6),
                ],
            ),
            (
                "a fox in snow",
                "Context",
                [
                    ("rocket-444.jpg", true, 0.5),
                    ("cmyk.jpg", false, 0.5),
                    ("alpha.png", false, 0.9),
                    ("palette.gif", false, 0.1),
                ],
            ),
        ],
    );
    let data = root.join("shards").display().to_string();
    let out = root.join("o1").display().to_string();
    // The published first stage needs no collection: the parquet holds the candidates.
    let v = run(
        &home,
        &[
            "eval",
            "inquire-rerank",
            "--data",
            &data,
            "--out",
            &out,
            "--json",
        ],
    );
    assert_eq!(v["queries"], 2);
    assert_eq!(v["candidates"], 8);
    assert!(
        (v["metrics"]["AP"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{v}"
    );
    assert!(
        (v["metrics"]["MRR"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{v}"
    );
    let ndcg_a = (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
    let ndcg_b = 1.0 / 3f64.log2();
    assert!(
        (v["metrics"]["nDCG"].as_f64().unwrap() - (ndcg_a + ndcg_b) / 2.0).abs() < 1e-9,
        "{v}"
    );
    assert_eq!(v["per_group"]["Appearance"]["first"]["AP"], 0.5);
    let trec = std::fs::read_to_string(Path::new(&out).join("run-first.trec")).unwrap();
    assert!(
        trec.starts_with("0 Q0 5000 1 0.900000 squire-first"),
        "{trec}"
    );
    assert!(trec.contains("1 Q0 5012 1 0.900000"), "{trec}");
    // Re-scored with the collection's encoder: a different first stage, still 2 queries scored.
    let v = run(
        &home,
        &[
            "eval",
            "inquire-rerank",
            "--index",
            &idx,
            "--data",
            &data,
            "--rescore",
            "--out",
            &root.join("o2").display().to_string(),
            "--json",
        ],
    );
    assert_eq!(v["queries"], 2);
    assert!(v["per_query"][0]["metrics"]["first"]["AP"]
        .as_f64()
        .is_some());
    // Re-scoring and SuperGlobal embed the candidates: without a collection's encoder, an error naming --index.
    for extra in [&["--rescore"][..], &["--rerank", "superglobal"][..]] {
        let mut args = vec!["eval", "inquire-rerank", "--data", &data, "--out", &out];
        args.extend_from_slice(extra);
        let o = squire(&home, &args);
        assert!(
            !o.status.success() && text(&o).contains("--index DIR is required"),
            "{extra:?}: {}",
            text(&o)
        );
    }
    // EBR reverses each list (scripted answer): A → relevant at 1 and 3, AP (1 + 2/3)/2; B → at 3, AP 1/3.
    let server = ScriptedServer::start(
        (0..2)
            .map(|_| Reply::answer("{\"ranking\": [4, 3, 2, 1]}"))
            .collect(),
    );
    let v = run(
        &home,
        &[
            "eval",
            "inquire-rerank",
            "--data",
            &data,
            "--rerank",
            "ebr",
            "--ebr-k",
            "4",
            "--mllm",
            "openai",
            "--mllm-url",
            &server.url,
            "--mllm-model",
            "scripted",
            "--mllm-cache",
            "none",
            "--out",
            &root.join("o3").display().to_string(),
            "--json",
        ],
    );
    assert_eq!(v["stages"], json!(["first", "ebr"]));
    assert!((v["per_stage"]["first"]["AP"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    let want = ((1.0 + 2.0 / 3.0) / 2.0 + 1.0 / 3.0) / 2.0;
    assert!(
        (v["per_stage"]["ebr"]["AP"].as_f64().unwrap() - want).abs() < 1e-9,
        "{v}"
    );
    assert_eq!(v["cost"]["ebr"]["calls"], 2);
    assert_eq!(server.seen().len(), 2);
    // Not a parquet file: the file is named.
    let bad = root.join("bad.parquet");
    std::fs::write(&bad, "not parquet").unwrap();
    let o = squire(
        &home,
        &[
            "eval",
            "inquire-rerank",
            "--index",
            &idx,
            "--data",
            &bad.display().to_string(),
            "--out",
            &root.join("o4").display().to_string(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("bad.parquet"),
        "{}",
        text(&o)
    );
}
