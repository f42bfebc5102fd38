//! Loader tests on the real annotation files in `../shared/data` (skipped
//! with a printed reason where absent; `SQUIRE_REQUIRE_DATA=1` makes that a
//! failure) and on malformed copies.

use std::path::PathBuf;

use super::*;

fn data() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if d.is_dir() {
        return Some(d);
    }
    assert!(
        std::env::var("SQUIRE_REQUIRE_DATA").map_or(true, |v| v != "1"),
        "SQUIRE_REQUIRE_DATA=1 but {} is missing",
        d.display()
    );
    println!("skipped: no evaluation data at {}", d.display());
    None
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("squire-datasets-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn cirr_annotations_parse_with_the_published_counts() {
    let Some(d) = data() else { return };
    let val = cirr::load_triplets(&d.join("cirr/captions/cap.rc2.val.json")).expect("val");
    assert_eq!(val.len(), 4181);
    assert!(val
        .iter()
        .all(|t| t.target_hard.is_some() && t.img_set.members.len() == 6));
    assert_eq!(val[0].pairid, 12060);
    assert_eq!(val[0].caption, "show three bottles of soft drink");
    let test = cirr::load_triplets(&d.join("cirr/captions/cap.rc2.test1.json")).expect("test1");
    assert_eq!(test.len(), 4148);
    assert!(test.iter().all(|t| t.target_hard.is_none()));
    let split = cirr::load_split(&d.join("cirr/image_splits/split.rc2.val.json")).expect("split");
    assert!(val.iter().all(|t| split.contains_key(&t.reference)
        && split.contains_key(t.target_hard.as_deref().unwrap_or(""))));
}

#[test]
fn circo_and_inquire_parse_with_the_published_counts() {
    let Some(d) = data() else { return };
    let val = circo::load_queries(&d.join("circo/val.json")).expect("circo val");
    assert_eq!(val.len(), 220);
    assert!(val
        .iter()
        .all(|q| !q.gt_img_ids.is_empty()
            && q.target_img_id.is_some_and(|t| q.gt_img_ids.contains(&t))));
    let test = circo::load_queries(&d.join("circo/test.json")).expect("circo test");
    assert_eq!(test.len(), 800);
    assert!(test.iter().all(|q| q.gt_img_ids.is_empty()));
    let iv =
        inquire::load_queries(&d.join("inquire/inquire_queries_val.csv")).expect("inquire val");
    let it =
        inquire::load_queries(&d.join("inquire/inquire_queries_test.csv")).expect("inquire test");
    assert_eq!((iv.len(), it.len()), (50, 200));
    assert!(iv.iter().chain(&it).all(|q| !q.query_text.is_empty()));
    assert_eq!(it[0].query_text, "A mongoose standing upright alert");
    // Quoted fields with commas survive.
    assert!(iv
        .iter()
        .chain(&it)
        .any(|q| q.category == "Mating, Courtship, Reproduction"));
}

#[test]
fn malformed_files_name_the_file_and_record() {
    let p = scratch(
        "cirr.json",
        r#"[{"pairid": 1, "reference": "a", "caption": "x", "img_set": {"id": 1, "members": []}},
        {"pairid": 77, "reference": "b", "img_set": {"id": 2, "members": []}}]"#,
    );
    let e = cirr::load_triplets(&p)
        .expect_err("missing caption")
        .to_string();
    assert!(
        e.contains(&p.display().to_string())
            && e.contains("record 1 (pairid 77)")
            && e.contains("caption"),
        "{e}"
    );
    let p = scratch("circo.json", r#"{"not": "an array"}"#);
    let e = circo::load_queries(&p)
        .expect_err("not an array")
        .to_string();
    assert!(e.contains("not a JSON array"), "{e}");
    let p = scratch("inquire.csv", "query_id,query_text\n1,a bird\n");
    let e = inquire::load_queries(&p)
        .expect_err("missing columns")
        .to_string();
    assert!(e.contains("no `supercategory` column"), "{e}");
    let p = scratch("inquire2.csv", ",query_id,query_text,supercategory,category,iconic_group\n0,1,a,b,c,d\n1,notanumber,a,b,c,d\n");
    let e = inquire::load_queries(&p).expect_err("bad id").to_string();
    assert!(e.contains(":3:"), "{e}");
    let e = cirr::load_triplets(std::path::Path::new("/nonexistent/cap.json"))
        .expect_err("missing")
        .to_string();
    assert!(e.contains("/nonexistent/cap.json"), "{e}");
}
