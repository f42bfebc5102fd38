//! `squire import` / `squire export`: embeddings written in clip-retrieval's
//! layout by this test (its own .npy and parquet writers) give the same
//! search results as `squire index` of the same images; `squire index` then
//! embeds nothing again; export → import round-trips exactly; bad shards are
//! one error naming the file, and the collection is left as it was.

use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;
use squire_indexer::{Collection, OpenOptions, VectorStore};

use crate::common::{fixtures, scratch, squire, text};

/// A float32 .npy written by hand (not with Squire's writer).
pub fn write_npy_f32(path: &Path, rows: usize, dim: usize, data: &[f32]) {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    while (header.len() + 11) % 16 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, out).expect("write npy");
}

/// metadata_N.parquet with `image_path` (and `caption`) for `paths`.
pub fn write_metadata(path: &Path, paths: &[String], with_image_path: bool) {
    let name = if with_image_path {
        "image_path"
    } else {
        "file"
    };
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ REQUIRED BYTE_ARRAY {name} (UTF8); OPTIONAL BYTE_ARRAY caption (UTF8); }}"))
            .expect("schema"),
    );
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut w = SerializedFileWriter::new(
        std::fs::File::create(path).expect("create"),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .expect("writer");
    let mut rg = w.next_row_group().expect("row group");
    let mut i = 0;
    while let Some(mut col) = rg.next_column().expect("column") {
        let values: Vec<ByteArray> = if i == 0 {
            paths.iter().map(|p| ByteArray::from(p.as_str())).collect()
        } else {
            paths
                .iter()
                .map(|p| ByteArray::from(format!("a photo: {p}").as_str()))
                .collect()
        };
        let defs = vec![1i16; paths.len()];
        col.typed::<ByteArrayType>()
            .write_batch(&values, (i == 1).then_some(&defs[..]), None)
            .expect("write");
        col.close().expect("close");
        i += 1;
    }
    rg.close().expect("close");
    w.close().expect("close");
}

/// Writes the vectors of `col` in clip-retrieval's layout under `out`, in
/// `shards` shards, with `image_path` as `root/<path>` (absolute).
pub fn write_layout(col: &Collection, out: &Path, root: &Path, shards: usize) {
    let n = col.records().len();
    let per = n.div_ceil(shards);
    for s in 0..shards {
        let (a, b) = (s * per, ((s + 1) * per).min(n));
        for (name, _) in &col.manifest().vectors {
            let raw = col.vectors(name).expect("vectors");
            let dim = raw.dim();
            let folder = if *name == col.manifest().text_query_vector {
                "img_emb".to_string()
            } else {
                format!("{name}_emb")
            };
            write_npy_f32(
                &out.join(&folder).join(format!("{folder}_{s}.npy")),
                b - a,
                dim,
                &raw.data()[a * dim..b * dim],
            );
        }
        let paths: Vec<String> = col.records()[a..b]
            .iter()
            .map(|r| root.join(&r.path).display().to_string())
            .collect();
        write_metadata(
            &out.join("metadata").join(format!("metadata_{s}.parquet")),
            &paths,
            true,
        );
    }
}

fn results(home: &Path, idx: &str, query: &[&str]) -> Vec<(String, f64)> {
    let mut args = vec!["search", "--index", idx, "-k", "10", "--json"];
    args.extend_from_slice(query);
    let o = squire(home, &args);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["score"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

#[test]
fn imported_embeddings_search_like_indexed_ones_round_trip_and_bad_shards_are_named() {
    let root = scratch("import");
    let home = root.join("home");
    let images = fixtures().join("images");
    let model = fixtures().join("tiny-clip").display().to_string();
    let (a, b, c) = (
        root.join("a").display().to_string(),
        root.join("b").display().to_string(),
        root.join("c").display().to_string(),
    );
    let o = squire(
        &home,
        &[
            "index",
            &images.display().to_string(),
            "--index",
            &a,
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let col_a = Collection::open_with(Path::new(&a), OpenOptions { view: true }).expect("open a");
    let layout = root.join("emb");
    write_layout(&col_a, &layout, &images, 3);

    let o = squire(
        &home,
        &[
            "import",
            &layout.display().to_string(),
            "--index",
            &b,
            "--model",
            &model,
            "--images",
            &images.display().to_string(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (
            v["report"]["added"].as_u64(),
            v["report"]["shards"].as_u64(),
            v["report"]["files_found"].as_u64()
        ),
        (Some(10), Some(3), Some(10)),
        "{v}"
    );
    for q in [
        &["--text", "a photo of a rocket"][..],
        &[
            "--image",
            &images.join("astronaut.jpg").display().to_string(),
        ][..],
        &["--text", "a cat", "--exact"][..],
    ] {
        let (ra, rb) = (results(&home, &a, q), results(&home, &b, q));
        assert_eq!(ra.len(), 10);
        for (x, y) in ra.iter().zip(&rb) {
            assert_eq!(x.0, y.0, "{q:?}: {ra:?} vs {rb:?}");
            assert!((x.1 - y.1).abs() < 1e-5, "{q:?}: {ra:?} vs {rb:?}");
        }
    }
    // `squire index` of the same folder finds every imported image unchanged.
    let o = squire(
        &home,
        &[
            "index",
            &images.display().to_string(),
            "--index",
            &b,
            "--model",
            &model,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (
            v["report"]["added"].as_u64(),
            v["report"]["updated"].as_u64(),
            v["report"]["unchanged"].as_u64()
        ),
        (Some(0), Some(0), Some(10)),
        "{v}"
    );
    // Importing the same again adds nothing.
    let o = squire(
        &home,
        &[
            "import",
            &layout.display().to_string(),
            "--index",
            &b,
            "--model",
            &model,
            "--images",
            &images.display().to_string(),
            "--json",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (
            v["report"]["added"].as_u64(),
            v["report"]["already_present"].as_u64()
        ),
        (Some(0), Some(10)),
        "{v}"
    );

    // export → import round-trips: the same paths, ids and vectors, bit for bit.
    let out = root.join("exported");
    let o = squire(
        &home,
        &[
            "export",
            "--index",
            &b,
            &out.display().to_string(),
            "--shard-rows",
            "4",
        ],
    );
    assert!(
        o.status.success() && text(&o).contains("3 shard(s)"),
        "{}",
        text(&o)
    );
    let o = squire(
        &home,
        &[
            "import",
            &out.display().to_string(),
            "--index",
            &c,
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (col_b, col_c) = (
        Collection::open(Path::new(&b)).expect("b"),
        Collection::open(Path::new(&c)).expect("c"),
    );
    let key = |col: &Collection| {
        col.records()
            .iter()
            .map(|r| (r.id, r.path.clone(), r.caption.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&col_b), key(&col_c));
    assert!(col_c.records().iter().all(|r| r
        .caption
        .as_deref()
        .is_some_and(|c| c.starts_with("a photo: "))));
    let bits = |col: &Collection| {
        col.vectors("clip")
            .expect("clip")
            .data()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&col_b), bits(&col_c));

    // Bad shards: one error naming the file; the collection keeps its 10 images.
    let bad = |tag: &str, make: &dyn Fn(&Path)| -> String {
        let dir = root.join(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        make(&dir);
        let o = squire(
            &home,
            &[
                "import",
                &dir.display().to_string(),
                "--index",
                &c,
                "--model",
                &model,
            ],
        );
        assert!(!o.status.success(), "{tag}: {}", text(&o));
        assert_eq!(
            Collection::open(Path::new(&c)).expect("c").records().len(),
            10,
            "{tag}"
        );
        text(&o)
    };
    let dim = col_a.vectors("clip").expect("clip").dim();
    let paths: Vec<String> = (0..3).map(|i| format!("new{i}.jpg")).collect();
    let unit = |i: usize| {
        (0..dim)
            .map(|j| if j == i { 1.0 } else { 0.0 })
            .collect::<Vec<f32>>()
    };
    let t = bad("shape", &|d| {
        write_npy_f32(
            &d.join("img_emb/img_emb_0.npy"),
            2,
            dim,
            &[unit(0), unit(1)].concat(),
        );
        write_metadata(&d.join("metadata/metadata_0.parquet"), &paths, true);
    });
    assert!(
        t.contains("img_emb_0.npy") && t.contains("2 rows, but") && t.contains("has 3"),
        "{t}"
    );
    let t = bad("nan", &|d| {
        let mut v = [unit(0), unit(1), unit(2)].concat();
        v[dim + 3] = f32::NAN;
        write_npy_f32(&d.join("img_emb/img_emb_0.npy"), 3, dim, &v);
        write_metadata(&d.join("metadata/metadata_0.parquet"), &paths, true);
    });
    assert!(
        t.contains("img_emb_0.npy") && t.contains("row 1 has a value that is not finite"),
        "{t}"
    );
    let t = bad("no-image-path", &|d| {
        write_npy_f32(
            &d.join("img_emb/img_emb_0.npy"),
            3,
            dim,
            &[unit(0), unit(1), unit(2)].concat(),
        );
        write_metadata(&d.join("metadata/metadata_0.parquet"), &paths, false);
    });
    assert!(
        t.contains("metadata_0.parquet")
            && t.contains("no `image_path` column (it has: file, caption)"),
        "{t}"
    );
    let t = bad("width", &|d| {
        write_npy_f32(&d.join("img_emb/img_emb_0.npy"), 3, 4, &[0.5f32; 12]);
        write_metadata(&d.join("metadata/metadata_0.parquet"), &paths, true);
    });
    assert!(
        t.contains("img_emb_0.npy")
            && t.contains(&format!("4-dim vectors; the collection's `clip` has {dim}")),
        "{t}"
    );
    // A known model's width is checked even for a new collection, with no weights on the machine.
    let dir = root.join("known");
    write_npy_f32(
        &dir.join("img_emb/img_emb_0.npy"),
        3,
        dim,
        &[unit(0), unit(1), unit(2)].concat(),
    );
    write_metadata(&dir.join("metadata/metadata_0.parquet"), &paths, true);
    let o = squire(
        &home,
        &[
            "import",
            &dir.display().to_string(),
            "--index",
            &root.join("d").display().to_string(),
            "--model",
            "clip-vit-b32",
        ],
    );
    assert!(
        !o.status.success()
            && text(&o).contains(&format!(
                "{dim}-dim vectors; model `clip-vit-b32` makes 512"
            )),
        "{}",
        text(&o)
    );
    // Not unit length: normalised, with a warning, and searchable by vector without weights.
    let dir = root.join("scaled");
    write_npy_f32(
        &dir.join("img_emb/img_emb_0.npy"),
        3,
        dim,
        &[unit(0), unit(1), unit(2)]
            .concat()
            .iter()
            .map(|x| x * 2.0)
            .collect::<Vec<_>>(),
    );
    write_metadata(&dir.join("metadata/metadata_0.parquet"), &paths, true);
    let e = root.join("e").display().to_string();
    let o = squire(
        &home,
        &[
            "import",
            &dir.display().to_string(),
            "--index",
            &e,
            "--model",
            "clip-vit-b32@gem+",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("gem_emb"),
        "a pooled model needs its gem vectors: {}",
        text(&o)
    );
    let o = squire(
        &home,
        &[
            "import",
            &dir.display().to_string(),
            "--index",
            &e,
            "--model",
            "my-model-dir",
        ],
    );
    assert!(
        o.status.success()
            && text(&o).contains("3 vector(s) were not unit length and were normalised"),
        "{}",
        text(&o)
    );
    let q = root.join("q.json");
    std::fs::write(&q, serde_json::to_vec(&unit(1)).expect("json")).expect("write");
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &e,
            "--query-vector",
            &q.display().to_string(),
            "-k",
            "1",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["results"][0]["path"], "new1.jpg");
    assert!(
        (v["results"][0]["score"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-5,
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
