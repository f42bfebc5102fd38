use std::collections::HashMap;

use super::*;

/// Deterministic unit vectors around 20 centres (an embedding-like cloud).
fn cloud(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
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
    StoreConfig { kind, ..StoreConfig::default() }
}

fn read_back(files: &[String], dir: &std::path::Path) -> HashMap<String, Vec<u8>> {
    files.iter().map(|f| (f.clone(), std::fs::read(dir.join(f)).expect("read saved file"))).collect()
}

fn recall(store: &dyn VectorStore, exact: &ExactStore, queries: &[f32], dim: usize) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for q in queries.chunks(dim) {
        let truth: Vec<u64> = exact.search(q, 10, &SearchParams::default()).unwrap().iter().map(|h| h.key).collect();
        let got: Vec<u64> = store.search(q, 10, &SearchParams::default()).unwrap().iter().map(|h| h.key).collect();
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
        let top = store.search(&data[5 * dim..6 * dim], 1, &SearchParams::default()).unwrap();
        assert_eq!(top[0].key, keys[5], "{kind:?}");
        assert!((top[0].score - 1.0).abs() < 1e-4, "{kind:?}: {}", top[0].score);
        // Save and reopen.
        let dir = std::env::temp_dir().join(format!("squire-store-{}-{}", kind.name(), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = store.save(&dir, "clip").unwrap();
        assert!(!files.is_empty());
        let mut bytes = read_back(&files, &dir);
        let back = open_store(&cfg, dim, &dir, "clip", &mut bytes, false).unwrap();
        let mut viewed = open_store(&cfg, dim, &dir, "clip", &mut read_back(&files, &dir), true).unwrap();
        assert_eq!(back.len(), n, "{kind:?}");
        assert_eq!(viewed.len(), n, "{kind:?}");
        for q in queries.chunks(dim).take(10) {
            let a = store.search(q, 10, &SearchParams { ef: Some(200) }).unwrap();
            let b = back.search(q, 10, &SearchParams { ef: Some(200) }).unwrap();
            let c = viewed.search(q, 10, &SearchParams { ef: Some(200) }).unwrap();
            let keys = |h: &[Hit]| h.iter().map(|h| h.key).collect::<Vec<u64>>();
            assert_eq!(keys(&a), keys(&b), "{kind:?}");
            assert_eq!(keys(&a), keys(&c), "{kind:?} (view)");
        }
        if kind == StoreKind::Usearch {
            assert!(viewed.add(&keys[..1], &data[..dim]).is_err(), "a viewed index is read-only");
        }
        // Wrong query size is an error, not a panic.
        assert!(store.search(&[1.0; 3], 5, &SearchParams::default()).is_err());
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
        let hits = s.search(&data[..dim], 300, &SearchParams { ef: Some(400) }).unwrap();
        assert!(hits.iter().all(|h| h.key >= 110), "{kind:?}: a removed key came back");
        // Adding an existing key replaces its vector.
        s.add(&keys[20..21], &data[..dim]).unwrap();
        assert_eq!(s.len(), 290, "{kind:?}");
        let top = s.search(&data[..dim], 1, &SearchParams::default()).unwrap();
        assert_eq!(top[0].key, keys[20], "{kind:?}");
    }
    let mut h = new_store(&config(StoreKind::HnswRs), dim).unwrap();
    h.add(&keys, &data).unwrap();
    assert!(!h.remove(&keys[..1]).unwrap(), "hnsw_rs cannot delete and must say so");
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
    let fixed = StoreConfig { expansion_search: Some(40), ..auto };
    assert_eq!(fixed.search_breadth(5_000_000), 40);
    // Manifests written before the size rule recorded a number: it stays fixed.
    let old: StoreConfig = serde_json::from_str(r#"{"kind":"usearch","precision":"f32","connectivity":16,"expansion_add":128,"expansion_search":128}"#)
        .expect("old manifest store config");
    assert_eq!(old.search_breadth(1_000_000), 128);
    let new: StoreConfig = serde_json::from_str(&serde_json::to_string(&auto).expect("serialise")).expect("read back");
    assert_eq!(new, auto);
}
