//! `squire verify`: a flipped byte in each kind of collection file is found
//! and named with what the file holds; a search opens a collection by
//! checking sizes and mapping its vectors, so it does not read (or check)
//! every byte, and a truncated file still stops it with the file named.

use std::path::Path;

use serde_json::Value;
use squire_indexer::{Collection, OpenOptions};

use crate::common::{squire, text, tiny_collection};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

fn verify(home: &Path, idx: &Path) -> (bool, Value) {
    let o = squire(
        home,
        &["verify", "--index", &idx.display().to_string(), "--json"],
    );
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o.status.success(), v)
}

#[test]
fn verify_names_a_flipped_byte_in_each_kind_of_file_and_search_maps_rather_than_reads() {
    let (home, idx, _) = tiny_collection("verify");
    let idx = Path::new(&idx).to_path_buf();
    let (ok, v) = verify(&home, &idx);
    assert!(ok && v["ok"] == true, "{v}");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(idx.join("manifest.json")).expect("manifest"),
    )
    .expect("JSON");
    let files: Vec<String> = manifest["files"]
        .as_object()
        .expect("files")
        .keys()
        .cloned()
        .collect();
    assert_eq!(v["files"].as_u64(), Some(files.len() as u64));
    let images = manifest["images"].as_u64().expect("images");
    // Each kind: records, vectors, keys, the HNSW file and its unlinked list.
    for suffix in ["records.json", ".f32", ".keys", ".usearch", ".unlinked"] {
        let rel = files
            .iter()
            .find(|f| f.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} file in {files:?}"));
        let copy = home.parent().expect("root").join(format!("flip{suffix}"));
        copy_dir(&idx, &copy);
        let path = copy.join(rel);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let (ok, v) = verify(&home, &copy);
        assert!(!ok && v["ok"] == false, "{suffix}: {v}");
        let problems = v["problems"].as_array().expect("problems");
        assert_eq!(problems.len(), 1, "{suffix}: {v}");
        assert!(
            problems[0]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with(rel.as_str())),
            "{suffix}: {v}"
        );
        assert!(
            problems[0]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("checksum")),
            "{suffix}: {v}"
        );
        if suffix == ".f32" {
            let holds = problems[0]["holds"].as_str().expect("holds");
            assert!(
                holds.contains(&format!("vectors of {images} images")),
                "{holds}"
            );
        }
        let o = squire(&home, &["verify", "--index", &copy.display().to_string()]);
        assert!(
            !o.status.success() && text(&o).contains(rel.as_str()),
            "{}",
            text(&o)
        );
        // The writer's open reads and checks every file, so it refuses the damaged one.
        let e = Collection::open(&copy)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(rel.as_str()), "{suffix}: {e}");
        if suffix == ".f32" {
            // A reader maps the vectors and checks sizes only (the flip is verify's to find).
            let c = Collection::open_with(&copy, OpenOptions { view: true })
                .expect("view of a same-size file");
            let name = rel
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".f32"))
                .expect("vector name");
            assert!(c.vectors(name).expect("vectors").is_mapped());
            // Truncated: the reader names the file.
            std::fs::write(&path, &bytes[..bytes.len() - 4]).expect("truncate");
            let e = Collection::open_with(&copy, OpenOptions { view: true })
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(rel.as_str()) && e.contains("bytes"), "{e}");
            let o = squire(
                &home,
                &[
                    "search",
                    "--index",
                    &copy.display().to_string(),
                    "--text",
                    "a cat",
                ],
            );
            assert!(
                !o.status.success() && text(&o).contains(rel.as_str()),
                "{}",
                text(&o)
            );
        }
    }
    // A missing file.
    let copy = home.parent().expect("root").join("missing");
    copy_dir(&idx, &copy);
    let rel = files
        .iter()
        .find(|f| f.ends_with(".usearch"))
        .expect("usearch file");
    std::fs::remove_file(copy.join(rel)).expect("rm");
    let (ok, v) = verify(&home, &copy);
    assert!(!ok && v["problems"][0]["problem"] == "missing", "{v}");
}
