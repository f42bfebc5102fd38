use std::collections::HashMap;

use rayon::prelude::*;

use super::*;

/// Deterministic unit vectors around 20 centres (an embedding-like cloud).
fn cloud(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let centres: Vec<f32> = (0..20 * dim).map(|_| rnd()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[(i % 20) * dim..(i % 20 + 1) * dim];
        let mut v: Vec<f32> = c.iter().map(|x| x + 0.4 * rnd()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

fn config(kind: StoreKind) -> StoreConfig {
    StoreConfig {
        kind,
        ..StoreConfig::default()
    }
}

fn read_back(files: &[String], dir: &std::path::Path) -> HashMap<String, Vec<u8>> {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read(dir.join(f)).expect("read saved file"),
            )
        })
        .collect()
}

fn recall(store: &dyn VectorStore, exact: &ExactStore, queries: &[f32], dim: usize) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for q in queries.chunks(dim) {
        let truth: Vec<u64> = exact
            .search(q, 10, &SearchParams::default())
            .unwrap()
            .iter()
            .map(|h| h.key)
            .collect();
        let got: Vec<u64> = store
            .search(q, 10, &SearchParams::default())
            .unwrap()
            .iter()
            .map(|h| h.key)
            .collect();
        found += got.iter().filter(|k| truth.contains(k)).count();
        total += truth.len();
    }
    found as f64 / total as f64
}

#[test]
fn every_store_finds_the_true_neighbours_and_reads_back_what_it_saved() {
    let (n, dim) = (2000, 32);
    let data = cloud(n, dim, 7);
    let keys: Vec<u64> = (0..n as u64).map(|i| i * 1_000_003 + 11).collect();
    let queries = cloud(50, dim, 99);
    let exact = ExactStore::from_rows(dim, keys.clone(), data.clone()).unwrap();
    for kind in [StoreKind::Usearch, StoreKind::HnswRs, StoreKind::Exact] {
        let cfg = config(kind);
        let mut store = new_store(&cfg, dim).unwrap();
        store.add(&keys[..1000], &data[..1000 * dim]).unwrap();
        store.add(&keys[1000..], &data[1000 * dim..]).unwrap();
        assert_eq!(store.len(), n, "{kind:?}");
        let r = recall(store.as_ref(), &exact, &queries, dim);
        assert!(r >= 0.95, "{kind:?}: recall@10 {r}");
        // Scores are inner products.
        let top = store
            .search(&data[5 * dim..6 * dim], 1, &SearchParams::default())
            .unwrap();
        assert_eq!(top[0].key, keys[5], "{kind:?}");
        assert!(
            (top[0].score - 1.0).abs() < 1e-4,
            "{kind:?}: {}",
            top[0].score
        );
        // Save and reopen.
        let dir = std::env::temp_dir().join(format!(
            "squire-store-{}-{}",
            kind.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = store.save(&dir, "clip").unwrap();
        assert!(!files.is_empty());
        let mut bytes = read_back(&files, &dir);
        let back = open_store(&cfg, dim, &dir, "clip", &mut bytes, false).unwrap();
        let mut viewed =
            open_store(&cfg, dim, &dir, "clip", &mut read_back(&files, &dir), true).unwrap();
        assert_eq!(back.len(), n, "{kind:?}");
        assert_eq!(viewed.len(), n, "{kind:?}");
        for q in queries.chunks(dim).take(10) {
            let a = store
                .search(q, 10, &SearchParams { ef: Some(200) })
                .unwrap();
            let b = back.search(q, 10, &SearchParams { ef: Some(200) }).unwrap();
            let c = viewed
                .search(q, 10, &SearchParams { ef: Some(200) })
                .unwrap();
            let keys = |h: &[Hit]| h.iter().map(|h| h.key).collect::<Vec<u64>>();
            assert_eq!(keys(&a), keys(&b), "{kind:?}");
            assert_eq!(keys(&a), keys(&c), "{kind:?} (view)");
        }
        if kind == StoreKind::Usearch {
            assert!(
                viewed.add(&keys[..1], &data[..dim]).is_err(),
                "a viewed index is read-only"
            );
        }
        // Wrong query size is an error, not a panic.
        assert!(store
            .search(&[1.0; 3], 5, &SearchParams::default())
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn removal_and_replacement() {
    let dim = 16;
    let data = cloud(300, dim, 3);
    let keys: Vec<u64> = (100..400).collect();
    for kind in [StoreKind::Usearch, StoreKind::Exact] {
        let mut s = new_store(&config(kind), dim).unwrap();
        s.add(&keys, &data).unwrap();
        assert!(s.remove(&keys[..10]).unwrap());
        assert_eq!(s.len(), 290, "{kind:?}");
        let hits = s
            .search(&data[..dim], 300, &SearchParams { ef: Some(400) })
            .unwrap();
        assert!(
            hits.iter().all(|h| h.key >= 110),
            "{kind:?}: a removed key came back"
        );
        // Adding an existing key replaces its vector.
        s.add(&keys[20..21], &data[..dim]).unwrap();
        assert_eq!(s.len(), 290, "{kind:?}");
        let top = s.search(&data[..dim], 1, &SearchParams::default()).unwrap();
        assert_eq!(top[0].key, keys[20], "{kind:?}");
    }
    let mut h = new_store(&config(StoreKind::HnswRs), dim).unwrap();
    h.add(&keys, &data).unwrap();
    assert!(
        !h.remove(&keys[..1]).unwrap(),
        "hnsw_rs cannot delete and must say so"
    );
    assert!(h.remove(&[1]).unwrap(), "removing an absent key is a no-op");
    assert!(h.add(&keys[..1], &data[..dim]).is_err());
}

#[test]
fn store_kinds_parse_and_print() {
    for k in [StoreKind::Usearch, StoreKind::HnswRs, StoreKind::Exact] {
        assert_eq!(k.name().parse::<StoreKind>().unwrap(), k);
    }
    assert!("faiss".parse::<StoreKind>().unwrap_err().contains("faiss"));
}

#[test]
fn default_search_breadth_grows_with_the_store_and_a_recorded_one_is_kept() {
    let auto = StoreConfig::default();
    assert_eq!(auto.expansion_search, None);
    assert_eq!(auto.search_breadth(0), SMALL_STORE_EF);
    assert_eq!(auto.search_breadth(LARGE_STORE_VECTORS - 1), SMALL_STORE_EF);
    assert_eq!(auto.search_breadth(LARGE_STORE_VECTORS), LARGE_STORE_EF);
    let fixed = StoreConfig {
        expansion_search: Some(40),
        ..auto
    };
    assert_eq!(fixed.search_breadth(5_000_000), 40);
    // Manifests written before the size rule recorded a number: it stays fixed.
    let old: StoreConfig = serde_json::from_str(r#"{"kind":"usearch","precision":"f32","connectivity":16,"expansion_add":128,"expansion_search":128}"#)
        .expect("old manifest store config");
    assert_eq!(old.search_breadth(1_000_000), 128);
    let new: StoreConfig =
        serde_json::from_str(&serde_json::to_string(&auto).expect("serialise")).expect("read back");
    assert_eq!(new, auto);
}

/// Keys of `store` a search with their own vector does not return first.
fn not_found_first(store: &dyn VectorStore, keys: &[u64], data: &[f32], dim: usize) -> Vec<u64> {
    keys.par_iter()
        .zip(data.par_chunks(dim))
        .filter(|(k, v)| {
            store
                .search(v, 1, &SearchParams::default())
                .unwrap()
                .first()
                .map(|h| h.key)
                != Some(**k)
        })
        .map(|(k, _)| *k)
        .collect()
}

#[test]
fn every_usearch_key_is_found_first_by_its_own_vector_built_at_once_in_batches_and_reopened() {
    let dim = 64;
    let n = 20_000;
    let data = cloud(n, dim, 7);
    let keys: Vec<u64> = (0..n as u64).map(|k| k * 7 + 3).collect();
    let cfg = config(StoreKind::Usearch);
    // At once, in parallel (how a first `squire index` builds it).
    let mut at_once = super::usearch_store::UsearchStore::new(&cfg, dim).unwrap();
    at_once.add(&keys, &data).unwrap();
    // In batches, the last ones small (appends to a grown collection).
    let mut batched = super::usearch_store::UsearchStore::new(&cfg, dim).unwrap();
    let mut start = 0;
    for size in [5_000, 5_000, 4_000, 3_000, 2_000, 500, 400, 90, 10] {
        batched
            .add(
                &keys[start..start + size],
                &data[start * dim..(start + size) * dim],
            )
            .unwrap();
        start += size;
    }
    assert_eq!(start, n);
    // Removals leave freed nodes in neighbour lists; appends after them must not take those for keys.
    let gone: Vec<u64> = keys.iter().step_by(40).copied().collect();
    batched.remove(&gone).unwrap();
    let again: Vec<f32> = keys
        .iter()
        .zip(data.chunks(dim))
        .filter(|(k, _)| gone.contains(k))
        .take(10)
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    batched.add(&gone[..10], &again).unwrap();
    let back: std::collections::HashSet<u64> = gone[10..].iter().copied().collect();
    let (keys_b, data_b): (Vec<u64>, Vec<f32>) = {
        let kept: Vec<(u64, &[f32])> = keys
            .iter()
            .copied()
            .zip(data.chunks(dim))
            .filter(|(k, _)| !back.contains(k))
            .collect();
        (
            kept.iter().map(|(k, _)| *k).collect(),
            kept.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
        )
    };
    assert_eq!(batched.len(), keys_b.len());
    let mut unlinked = Vec::new();
    for (name, store, keys, data) in [
        ("at once", &at_once, &keys, &data),
        ("batched", &batched, &keys_b, &data_b),
    ] {
        assert_eq!(store.len(), keys.len());
        let missed = not_found_first(store, keys, data, dim);
        assert!(
            missed.is_empty(),
            "{name}: {} keys not found first: {missed:?}",
            missed.len()
        );
        unlinked.push(store.unlinked_keys().len());
    }
    // The graph alone loses some keys here (the test would pass without the fix otherwise).
    assert!(
        unlinked.iter().any(|&u| u > 0),
        "no unlinked key: {unlinked:?}"
    );
    assert!(unlinked.iter().all(|&u| u < n / 500), "{unlinked:?}");
    // Saved and read back (loaded and memory-mapped): the same keys, still found.
    let dir = std::env::temp_dir().join(format!("squire-unlinked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = batched.save(&dir, "v").unwrap();
    assert_eq!(
        files,
        vec!["v.usearch".to_string(), "v.unlinked".to_string()]
    );
    let mut bytes = read_back(&files, &dir);
    let loaded =
        super::usearch_store::UsearchStore::open(&cfg, dim, &dir, "v", &mut bytes).unwrap();
    let viewed = super::usearch_store::UsearchStore::view(&cfg, dim, &dir, "v").unwrap();
    // An unlinked key is listed once even when a wide search reaches it too.
    if let Some(&u) = batched.unlinked_keys().first() {
        let row = keys_b.iter().position(|k| *k == u).unwrap();
        let hits = batched
            .search(
                &data_b[row * dim..(row + 1) * dim],
                50,
                &SearchParams { ef: Some(4000) },
            )
            .unwrap();
        assert_eq!(hits.iter().filter(|h| h.key == u).count(), 1, "{hits:?}");
    }
    for store in [&loaded, &viewed] {
        let mut a = store.unlinked_keys().to_vec();
        let mut b = batched.unlinked_keys().to_vec();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(not_found_first(store, &keys_b, &data_b, dim).is_empty());
    }
    // A truncated unlinked-keys file is named as corrupt.
    std::fs::write(dir.join("v.unlinked"), b"SQUL\x01\0\0\0").unwrap();
    let e = super::usearch_store::UsearchStore::view(&cfg, dim, &dir, "v")
        .unwrap_err()
        .to_string();
    assert!(e.contains("v.unlinked"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usearch_appends_after_removals_keep_only_live_keys_unlinked() {
    let dim = 16;
    let data = cloud(60, dim, 3);
    let keys: Vec<u64> = (0..60u64).collect();
    let cfg = config(StoreKind::Usearch);
    let mut s = super::usearch_store::UsearchStore::new(&cfg, dim).unwrap();
    s.add(&keys[..30], &data[..30 * dim]).unwrap();
    for round in 0..10 {
        // Remove three, add three more: freed nodes stay in neighbour lists.
        let gone: Vec<u64> = (0..3).map(|i| (round * 3 + i) as u64).collect();
        s.remove(&gone).unwrap();
        let new = 30 + round * 3..30 + round * 3 + 3;
        s.add(&keys[new.clone()], &data[new.start * dim..new.end * dim])
            .unwrap();
        for k in s.unlinked_keys() {
            assert!(
                (round as u64 * 3 + 3..new.end as u64).contains(k),
                "round {round}: unlinked key {k:x} is not a live key"
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("squire-unlinked-small-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = s.save(&dir, "v").unwrap();
    let mut bytes = read_back(&files, &dir);
    super::usearch_store::UsearchStore::open(&cfg, dim, &dir, "v", &mut bytes)
        .expect("reopen after removals");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A usearch view that fails to open (its file gone, as when a writer's
/// commit removes the generation a reader was opening, or cut short) closes
/// no descriptor but its own. usearch's own `view(path)` then closes
/// descriptor 0, which in a server or test process is usually a file another
/// thread has open: Rust aborts the process when that file is dropped.
#[cfg(unix)]
#[test]
fn a_usearch_view_that_fails_closes_no_other_descriptor() {
    let dim = 8;
    let cfg = config(StoreKind::Usearch);
    let data = cloud(64, dim, 5);
    let keys: Vec<u64> = (0..64).collect();
    let mut s = super::usearch_store::UsearchStore::new(&cfg, dim).unwrap();
    s.add(&keys, &data).unwrap();
    let dir = std::env::temp_dir().join(format!("squire-store-fd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    s.save(&dir, "v").unwrap();
    let bytes = std::fs::read(dir.join("v.usearch")).unwrap();
    std::fs::write(dir.join("cut.usearch"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join("empty.usearch"), b"").unwrap();
    let is_open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    // Descriptor 0 is stdin, or (when stdin is closed) the next file opened.
    let _held = if is_open(0) {
        None
    } else {
        Some(std::fs::File::open(dir.join("v.usearch")).unwrap())
    };
    assert!(is_open(0));
    for name in ["missing", "cut", "empty"] {
        assert!(
            super::usearch_store::UsearchStore::view(&cfg, dim, &dir, name).is_err(),
            "{name}"
        );
        assert!(
            is_open(0),
            "a failed view of {name}.usearch closed descriptor 0"
        );
    }
    let viewed = super::usearch_store::UsearchStore::view(&cfg, dim, &dir, "v").unwrap();
    assert_eq!(viewed.len(), 64);
    drop(viewed);
    assert!(is_open(0), "a dropped view closed descriptor 0");
    let _ = std::fs::remove_dir_all(&dir);
}
