//! One writer at a time, any number of readers: a second writer (a library
//! handle or `squire index`) fails at once naming the first one's pid; a
//! handle whose collection another writer changed refuses to write over it;
//! readers that open the collection while a writer commits generation after
//! generation always get a whole snapshot, never an error.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use squire_indexer::{Collection, IndexError, OpenOptions, StoreConfig, StoreKind, WRITER_LOCK};

use crate::common::{fixtures, squire, text, tiny_collection};

#[test]
fn a_second_writer_fails_at_once_a_stale_handle_refuses_and_readers_always_get_a_snapshot() {
    let (home, idx, images) = tiny_collection("writers");
    let dir = Path::new(&idx);
    let mut first = Collection::open(dir).expect("open");
    let mut second = Collection::open(dir).expect("open");
    let images_n = first.records().len();
    let usearch = first.manifest().store;
    let hnsw = StoreConfig {
        kind: StoreKind::HnswRs,
        ..usearch
    };
    // The first change takes the lock and keeps it while the handle lives.
    first.change_store(hnsw).expect("first writer");
    assert!(dir.join(WRITER_LOCK).is_file());
    let pid = std::process::id();
    let e = second.change_store(hnsw).expect_err("second writer");
    assert!(
        matches!(e, IndexError::Busy { pid: Some(p), .. } if p == pid),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("is being written by pid {pid}")),
        "{e}"
    );
    // The CLI: `squire index` fails at once with the same message, before embedding anything.
    let model = fixtures().join("tiny-clip").display().to_string();
    let t = std::time::Instant::now();
    let o = squire(
        &home,
        &["index", &images, "--index", &idx, "--model", &model],
    );
    assert!(
        !o.status.success() && text(&o).contains(&format!("is being written by pid {pid}")),
        "{}",
        text(&o)
    );
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    drop(first);
    // The lock is free, but `second` read generation N and the collection is at N + 1 now.
    let e = second.change_store(hnsw).expect_err("a stale handle");
    assert!(
        matches!(e, IndexError::Stale { .. })
            && e.to_string().contains("changed since it was opened"),
        "{e}"
    );
    drop(second);

    // Readers while a writer commits (and removes the generation before) over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (stop.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let c = Collection::open_with(&dir, OpenOptions { view: true })
                    .unwrap_or_else(|e| panic!("a reader during a write: {e}"));
                assert_eq!(c.records().len(), images_n);
                reads += 1;
            }
            reads
        })
    };
    let mut writer = Collection::open(dir).expect("open");
    for i in 0..40 {
        writer
            .change_store(if i % 2 == 0 { usearch } else { hnsw })
            .expect("commit");
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader thread");
    assert!(reads > 0);
    eprintln!("{reads} snapshots read during 40 commits");
    // After the writer is gone, `squire index` writes again.
    drop(writer);
    let o = squire(
        &home,
        &["index", &images, "--index", &idx, "--model", &model],
    );
    assert!(o.status.success(), "{}", text(&o));
}
