//! Crash safety: `squire index` killed with SIGKILL at many points of a run
//! always leaves a loadable collection, and a rerun ends with every image
//! present exactly once. Uses the tiny CLIP fixture (fast, random weights).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use squire_indexer::{Collection, OpenOptions};

use crate::common::{fixtures, scratch};

/// `copies` copies of each fixture image under distinct names, in two folders.
fn gallery(dir: &Path, copies: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let sources: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .collect();
    for c in 0..copies {
        let sub = if c % 2 == 0 { "a" } else { "b/c" };
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        for s in &sources {
            let name = format!(
                "{sub}/{c:03}-{}",
                s.file_name().and_then(|n| n.to_str()).expect("name")
            );
            std::fs::copy(s, dir.join(&name)).expect("copy");
            names.insert(name);
        }
    }
    names
}

fn index_cmd(images: &Path, index: &Path, home: &Path, store: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_squire"));
    c.args([
        "index",
        images.to_str().expect("utf8"),
        "--index",
        index.to_str().expect("utf8"),
    ])
    .args([
        "--model",
        fixtures().join("tiny-clip").to_str().expect("utf8"),
    ])
    .args(["--batch", "4", "--checkpoint", "8", "--store", store])
    .env("SQUIRE_HOME", home)
    .env("SQUIRE_OFFLINE", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Paths in the collection, asserting each appears once; None if no manifest yet.
fn present_once(index: &Path) -> Option<Vec<String>> {
    if !index.join("manifest.json").exists() {
        return None;
    }
    let col = Collection::open(index)
        .unwrap_or_else(|e| panic!("the collection in {} does not load: {e}", index.display()));
    let paths: Vec<String> = col.records().iter().map(|r| r.path.clone()).collect();
    // Read-only serving opens the same generation (HNSW memory-mapped).
    let view = Collection::open_with(index, OpenOptions { view: true }).expect("open as a view");
    assert_eq!(view.records().len(), paths.len());
    let unique: BTreeSet<&String> = paths.iter().collect();
    assert_eq!(unique.len(), paths.len(), "duplicate records after a kill");
    // The HNSW index answers: a stored vector finds itself (or one of its
    // identical copies: the gallery repeats each photo) at similarity 1.
    if !col.records().is_empty() {
        let name = col.manifest().image_query_vector.clone();
        let v = col.vectors(&name).expect("vectors").row(0).to_vec();
        let hits = col
            .search(&name, &v, 1, &Default::default())
            .expect("search");
        assert!(hits.first().is_some_and(|h| h.score > 0.999), "{hits:?}");
    }
    Some(paths)
}

fn run_to_end(images: &Path, index: &Path, home: &Path, store: &str) {
    let out = index_cmd(images, index, home, store)
        .output()
        .expect("run squire index");
    assert!(
        out.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigkill_at_any_point_then_rerun_gives_every_image_exactly_once() {
    let root = scratch("points");
    let (images, home) = (root.join("images"), root.join("home"));
    let expected = gallery(&images, 24);

    // How long a whole run takes on this machine, to spread the kills over it.
    let t0 = Instant::now();
    run_to_end(&images, &root.join("calibrate"), &home, "usearch");
    let full = t0.elapsed();
    assert_eq!(
        present_once(&root.join("calibrate"))
            .expect("indexed")
            .len(),
        expected.len()
    );

    let mut killed_mid_run = 0;
    for (i, fraction) in [0.02, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9]
        .iter()
        .enumerate()
    {
        let store = if i % 3 == 2 { "hnsw_rs" } else { "usearch" };
        let index = root.join(format!("index-{i}"));
        let mut child = index_cmd(&images, &index, &home, store)
            .spawn()
            .expect("spawn squire index");
        std::thread::sleep(full.mul_f64(*fraction));
        if child.try_wait().expect("poll").is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        // Whatever the kill interrupted, what is on disk loads and has no duplicates.
        if let Some(paths) = present_once(&index) {
            assert!(
                paths.iter().all(|p| expected.contains(p)),
                "unknown paths after the kill"
            );
        }
        run_to_end(&images, &index, &home, store);
        let paths = present_once(&index).expect("a collection after the rerun");
        let got: BTreeSet<String> = paths.into_iter().collect();
        assert_eq!(got, expected, "kill at {fraction} of a run ({store})");
    }
    eprintln!("a whole run takes {full:?}; {killed_mid_run} of 8 kills landed mid-run");
    assert!(
        killed_mid_run >= 5,
        "only {killed_mid_run} kills landed before the run ended"
    );

    // Repeated kills on one collection, then leftovers of an interrupted save.
    let index = root.join("chain");
    for ms in [30u64, 120, 250, 400, 600] {
        let mut child = index_cmd(&images, &index, &home, "usearch")
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(ms).min(full / 2));
        let _ = child.kill();
        let _ = child.wait();
        present_once(&index);
    }
    if index.join("manifest.json").exists() {
        std::fs::create_dir_all(index.join("gen-999.tmp")).expect("mkdir");
        std::fs::write(index.join("gen-999.tmp/records.json"), b"[{\"half\": ").expect("write");
        std::fs::write(
            index.join("manifest.json.tmp"),
            b"{\"format_version\": 2, \"mod",
        )
        .expect("write");
    }
    run_to_end(&images, &index, &home, "usearch");
    let got: BTreeSet<String> = present_once(&index)
        .expect("collection")
        .into_iter()
        .collect();
    assert_eq!(got, expected);
    assert!(
        !index.join("gen-999.tmp").exists(),
        "leftovers of an interrupted save were not cleaned up"
    );
    let _ = std::fs::remove_dir_all(&root);
}
