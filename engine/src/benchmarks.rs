//! The benchmarks' queries resolved against a collection, as
//! [`Benchmark`]s for [`crate::harness::run_benchmark`]: text-to-image
//! query TSVs (Flickr8k-1k), CIRR, CIRCO, FashionIQ and INQUIRE-Fullrank.
//!
//! Protocol choices (see `shared/reference/algorithms.md` §4–6):
//! - CIRR: the reference image is left out of the ranking (as the official
//!   evaluation does); Recall@1/5/10/50 over the split gallery and
//!   Recall_subset@1/2/3 within the triplet's image group without the reference.
//! - CIRCO: the reference is left out; mAP@k = AP@k normalised by min(|gt|, k).
//! - FashionIQ: the two captions are joined with " and " into one
//!   modification text (the usual zero-shot practice); the candidate is not
//!   left out; Recall@10/50 per category, and their mean over categories.
//! - INQUIRE-Fullrank: AP@50 normalised by min(all annotated positives, 50),
//!   nDCG@50 (positives never retrieved count as missing), MRR within 50;
//!   grouped by supercategory.
//!
//! An image a query needs that is not in the collection stops the run with
//! an error naming the file and record, unless `skip_missing`: then the
//! query is dropped, counted and listed with the reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use squire_indexer::Collection;

use crate::datasets::{circo, cirr, inquire};
use crate::eval::{read_query_tsv, EvalError};
use crate::harness::{Benchmark, EvalQuery, QueryOutcome};
use crate::metrics;

/// Looks rows up by relative path or by file stem.
struct Rows {
    by_path: HashMap<String, usize>,
    by_stem: HashMap<String, usize>,
}

impl Rows {
    fn new(col: &Collection) -> Self {
        let mut by_stem = HashMap::new();
        let mut by_path = HashMap::new();
        for (i, r) in col.records().iter().enumerate() {
            by_path.insert(r.path.clone(), i);
            if let Some(stem) = Path::new(&r.path).file_stem() {
                by_stem.insert(stem.to_string_lossy().into_owned(), i);
            }
        }
        Rows { by_path, by_stem }
    }

    /// A path as the dataset writes it (`./dev/x.png`), else its stem.
    fn path(&self, p: &str) -> Option<usize> {
        let clean = p.trim_start_matches("./");
        self.by_path.get(clean).copied().or_else(|| {
            Path::new(clean)
                .file_stem()
                .and_then(|s| self.by_stem.get(s.to_string_lossy().as_ref()).copied())
        })
    }

    fn stem(&self, s: &str) -> Option<usize> {
        self.by_stem.get(s).copied()
    }
}

/// The stem of every record: CIRR and FashionIQ name images by it.
fn stems(col: &Collection) -> Vec<String> {
    col.records()
        .iter()
        .map(|r| {
            Path::new(&r.path)
                .file_stem()
                .map_or_else(|| r.path.clone(), |s| s.to_string_lossy().into_owned())
        })
        .collect()
}

/// Collects the missing images of one query: an error, or a dropped query.
struct Missing<'a> {
    file: &'a Path,
    skip: bool,
    dropped: Vec<(String, String)>,
}

impl Missing<'_> {
    /// `Ok(true)`: keep the query; `Ok(false)`: dropped; `Err`: stop.
    fn check(&mut self, record: usize, qid: &str, missing: &[String]) -> Result<bool, EvalError> {
        if missing.is_empty() {
            return Ok(true);
        }
        let why = format!("image(s) not in the collection: {}", missing.join(", "));
        if self.skip {
            self.dropped.push((qid.to_string(), why));
            return Ok(false);
        }
        Err(EvalError::Record {
            path: self.file.to_path_buf(),
            record,
            what: format!(" (query {qid})"),
            message: format!("{why}; index the benchmark's images into this collection, or pass --skip-missing to drop such queries"),
        })
    }
}

fn metric_names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Text-to-image on a query TSV (`query_id`, `caption`, `relevant_image`
/// relative to the indexed folder): R@1/5/10, MRR and nDCG@10 over the top
/// `depth` (default: the whole collection). Queries whose image is not in the
/// collection are dropped and counted.
pub fn t2i(col: &Collection, queries: &Path, depth: Option<usize>) -> Result<Benchmark, EvalError> {
    let rows = Rows::new(col);
    let mut dropped = Vec::new();
    let mut out = Vec::new();
    for q in read_query_tsv(queries)? {
        match rows.by_path.get(&q.relevant) {
            Some(&row) => out.push(EvalQuery {
                qid: q.id,
                text: Some(q.caption),
                relevant: HashSet::from([row]),
                total_relevant: 1,
                relevant_names: vec![q.relevant],
                ..EvalQuery::default()
            }),
            None => dropped.push((
                q.id,
                format!("its image {} is not in the collection", q.relevant),
            )),
        }
    }
    let n = col.records().len();
    let depth = depth.unwrap_or(n).min(n);
    Ok(Benchmark {
        name: "t2i".into(),
        queries: out,
        dropped,
        depth,
        metric_names: metric_names(&["R@1", "R@5", "R@10", "MRR", "nDCG@10"]),
        metrics: Box::new(|ranked, q| {
            BTreeMap::from([
                (
                    "R@1".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 1),
                ),
                (
                    "R@5".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 5),
                ),
                (
                    "R@10".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 10),
                ),
                (
                    "MRR".to_string(),
                    metrics::reciprocal_rank(ranked, &q.relevant, usize::MAX),
                ),
                (
                    "nDCG@10".to_string(),
                    metrics::ndcg_at(ranked, &q.relevant, 10, q.total_relevant),
                ),
            ])
        }),
        doc_names: col.records().iter().map(|r| r.path.clone()).collect(),
        describe: json!({"queries": queries.display().to_string()}),
    })
}

/// CIRR's `split` (`val` or `test1`) from the dataset root (`captions/`,
/// `image_splits/`), over a collection of the split's images.
pub fn cirr(
    col: &Collection,
    root: &Path,
    split: &str,
    skip_missing: bool,
) -> Result<Benchmark, EvalError> {
    let caps = root.join("captions").join(format!("cap.rc2.{split}.json"));
    let split_file = root
        .join("image_splits")
        .join(format!("split.rc2.{split}.json"));
    let triplets = cirr::load_triplets(&caps)?;
    let names = cirr::load_split(&split_file)?;
    let rows = Rows::new(col);
    let row_of = |name: &str| {
        names
            .get(name)
            .and_then(|p| rows.path(p))
            .or_else(|| rows.stem(name))
    };
    let mut missing = Missing {
        file: &caps,
        skip: skip_missing,
        dropped: Vec::new(),
    };
    let mut queries = Vec::new();
    let labelled = triplets.iter().any(|t| t.target_hard.is_some());
    for (i, t) in triplets.iter().enumerate() {
        let qid = t.pairid.to_string();
        let mut need: Vec<&str> = vec![t.reference.as_str()];
        need.extend(t.target_hard.as_deref());
        need.extend(t.img_set.members.iter().map(String::as_str));
        let absent: Vec<String> = need
            .iter()
            .filter(|n| row_of(n).is_none())
            .map(|n| n.to_string())
            .collect();
        if !missing.check(i, &qid, &absent)? {
            continue;
        }
        let reference = row_of(&t.reference).unwrap_or_default();
        let target = t.target_hard.as_deref().and_then(row_of);
        queries.push(EvalQuery {
            qid,
            text: Some(t.caption.clone()),
            image_row: Some(reference),
            relevant: target.into_iter().collect(),
            total_relevant: usize::from(target.is_some()),
            relevant_names: t.target_hard.iter().cloned().collect(),
            exclude: vec![reference],
            subset: t
                .img_set
                .members
                .iter()
                .filter_map(|m| row_of(m))
                .filter(|&r| r != reference)
                .collect(),
            ..EvalQuery::default()
        });
    }
    Ok(Benchmark {
        name: format!("cirr-{split}"),
        queries,
        dropped: missing.dropped,
        depth: col.records().len(),
        metric_names: if labelled {
            metric_names(&[
                "R@1",
                "R@5",
                "R@10",
                "R@50",
                "Rsubset@1",
                "Rsubset@2",
                "Rsubset@3",
            ])
        } else {
            Vec::new()
        },
        metrics: Box::new(|ranked, q| {
            if q.relevant.is_empty() {
                return BTreeMap::new();
            }
            [1, 5, 10, 50]
                .iter()
                .map(|&k| (format!("R@{k}"), metrics::recall_at(ranked, &q.relevant, k)))
                .collect()
        }),
        doc_names: stems(col),
        describe: json!({"captions": caps.display().to_string(), "split": split_file.display().to_string()}),
    })
}

/// CIRCO's `split` (`val` or `test`): `<root>/<split>.json` over a collection of
/// COCO images whose file stems are their ids (`000000271520.jpg`).
pub fn circo(
    col: &Collection,
    root: &Path,
    split: &str,
    skip_missing: bool,
) -> Result<Benchmark, EvalError> {
    let file = root.join(format!("{split}.json"));
    let records = circo::load_queries(&file)?;
    let by_id: HashMap<u64, usize> = col
        .records()
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Path::new(&r.path)
                .file_stem()
                .and_then(|s| s.to_string_lossy().parse::<u64>().ok())
                .map(|id| (id, i))
        })
        .collect();
    let mut missing = Missing {
        file: &file,
        skip: skip_missing,
        dropped: Vec::new(),
    };
    let mut queries = Vec::new();
    let labelled = records.iter().any(|q| !q.gt_img_ids.is_empty());
    for (i, q) in records.iter().enumerate() {
        let qid = q.id.to_string();
        let absent: Vec<String> = std::iter::once(q.reference_img_id)
            .chain(q.gt_img_ids.iter().copied())
            .filter(|id| !by_id.contains_key(id))
            .map(|id| id.to_string())
            .collect();
        if !missing.check(i, &qid, &absent)? {
            continue;
        }
        let reference = by_id[&q.reference_img_id];
        queries.push(EvalQuery {
            qid,
            text: Some(q.relative_caption.clone()),
            image_row: Some(reference),
            relevant: q.gt_img_ids.iter().map(|id| by_id[id]).collect(),
            total_relevant: q.gt_img_ids.len(),
            relevant_names: q.gt_img_ids.iter().map(|id| id.to_string()).collect(),
            exclude: vec![reference],
            ..EvalQuery::default()
        });
    }
    let doc_names = col
        .records()
        .iter()
        .map(|r| {
            let stem = Path::new(&r.path)
                .file_stem()
                .map_or_else(|| r.path.clone(), |s| s.to_string_lossy().into_owned());
            stem.parse::<u64>().map_or(stem, |id| id.to_string())
        })
        .collect();
    Ok(Benchmark {
        name: format!("circo-{split}"),
        queries,
        dropped: missing.dropped,
        depth: 50,
        metric_names: if labelled {
            metric_names(&["mAP@5", "mAP@10", "mAP@25", "mAP@50"])
        } else {
            Vec::new()
        },
        metrics: Box::new(|ranked, q| {
            if q.total_relevant == 0 {
                return BTreeMap::new();
            }
            [5, 10, 25, 50]
                .iter()
                .map(|&k| {
                    (
                        format!("mAP@{k}"),
                        metrics::average_precision_at(ranked, &q.relevant, k, q.total_relevant),
                    )
                })
                .collect()
        }),
        doc_names,
        describe: json!({"queries": file.display().to_string()}),
    })
}

/// One FashionIQ triplet as published.
#[derive(Debug, Deserialize)]
struct FiqTriplet {
    #[serde(default)]
    target: Option<String>,
    candidate: String,
    captions: Vec<String>,
}

/// FashionIQ's `split` for `categories` (`dress`, `shirt`, `toptee`):
/// `<root>/captions/cap.<category>.<split>.json` over a collection whose file
/// stems are the image names.
pub fn fashioniq(
    col: &Collection,
    root: &Path,
    categories: &[String],
    split: &str,
    skip_missing: bool,
) -> Result<Benchmark, EvalError> {
    let rows = Rows::new(col);
    let mut queries = Vec::new();
    let mut dropped = Vec::new();
    let mut files = Vec::new();
    for cat in categories {
        let file = root
            .join("captions")
            .join(format!("cap.{cat}.{split}.json"));
        let triplets: Vec<FiqTriplet> =
            crate::datasets::read_json_records(&file, |_| String::new())?;
        let mut missing = Missing {
            file: &file,
            skip: skip_missing,
            dropped: Vec::new(),
        };
        for (i, t) in triplets.iter().enumerate() {
            let qid = format!("{cat}-{i}");
            let absent: Vec<String> = std::iter::once(&t.candidate)
                .chain(t.target.iter())
                .filter(|n| rows.stem(n).is_none())
                .cloned()
                .collect();
            if !missing.check(i, &qid, &absent)? {
                continue;
            }
            let caps: Vec<&str> = t
                .captions
                .iter()
                .map(|c| c.trim().trim_end_matches('.'))
                .filter(|c| !c.is_empty())
                .collect();
            if caps.is_empty() {
                return Err(EvalError::Record {
                    path: file.clone(),
                    record: i,
                    what: String::new(),
                    message: "no caption".into(),
                });
            }
            let target = t.target.as_deref().and_then(|n| rows.stem(n));
            queries.push(EvalQuery {
                qid,
                group: cat.clone(),
                text: Some(caps.join(" and ")),
                image_row: rows.stem(&t.candidate),
                relevant: target.into_iter().collect(),
                total_relevant: usize::from(target.is_some()),
                relevant_names: t.target.iter().cloned().collect(),
                ..EvalQuery::default()
            });
        }
        dropped.extend(missing.dropped);
        files.push(file.display().to_string());
    }
    Ok(Benchmark {
        name: format!("fashioniq-{split}"),
        queries,
        dropped,
        depth: 50,
        metric_names: metric_names(&["R@10", "R@50"]),
        metrics: Box::new(|ranked, q| {
            if q.relevant.is_empty() {
                return BTreeMap::new();
            }
            BTreeMap::from([
                (
                    "R@10".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 10),
                ),
                (
                    "R@50".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 50),
                ),
            ])
        }),
        doc_names: stems(col),
        describe: json!({"captions": files}),
    })
}

/// The transformed-copy benchmark (see [`crate::copies`]) over a collection
/// of its gallery: mAP@k (AP@k normalised by min(relevant, k)), R@1, R@10.
pub fn copies(
    col: &Collection,
    set: &crate::copies::CopiesSet,
    k: usize,
) -> Result<Benchmark, EvalError> {
    let rows = Rows::new(col);
    let mut queries = Vec::new();
    for q in &set.queries {
        let relevant: HashSet<usize> = q
            .relevant
            .iter()
            .filter_map(|p| rows.by_path.get(p).copied())
            .collect();
        if relevant.len() != q.relevant.len() {
            return Err(EvalError::Backend(format!(
                "the gallery index in {} lacks some of {:?}: delete it and rerun",
                col.dir().display(),
                q.relevant
            )));
        }
        queries.push(EvalQuery {
            qid: q.query.clone(),
            image_path: Some(set.queries_dir.join(&q.query)),
            total_relevant: relevant.len(),
            relevant,
            relevant_names: q.relevant.clone(),
            ..EvalQuery::default()
        });
    }
    let map_name = format!("mAP@{k}");
    Ok(Benchmark {
        name: "copies".into(),
        queries,
        dropped: Vec::new(),
        depth: k,
        metric_names: vec![map_name.clone(), "R@1".into(), "R@10".into()],
        metrics: Box::new(move |ranked, q| {
            BTreeMap::from([
                (
                    map_name.clone(),
                    metrics::average_precision_at(ranked, &q.relevant, k, q.total_relevant),
                ),
                (
                    "R@1".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 1),
                ),
                (
                    "R@10".to_string(),
                    metrics::recall_at(ranked, &q.relevant, 10),
                ),
            ])
        }),
        doc_names: col.records().iter().map(|r| r.path.clone()).collect(),
        describe: json!({"gallery": set.gallery.display().to_string(), "queries": set.queries_dir.display().to_string()}),
    })
}

/// The mean over groups of each metric of `stage` (FashionIQ's "average" over categories).
pub fn group_average(summary: &crate::harness::Summary, stage: &str) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for by_stage in summary.per_group.values() {
        for (k, v) in by_stage.get(stage).into_iter().flatten() {
            let e = sums.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n.max(1) as f64))
        .collect()
}

/// INQUIRE-Fullrank: the query CSV and the annotations CSV (`query_id`,
/// `image_path` and optionally `image_id`; one row per relevant image) over a
/// collection of the iNat24 images (matched by relative path, else by file name).
pub fn inquire_fullrank(
    col: &Collection,
    queries_csv: &Path,
    annotations_csv: &Path,
    skip_missing: bool,
) -> Result<Benchmark, EvalError> {
    let qs = inquire::load_queries(queries_csv)?;
    let ann = inquire::load_annotations(annotations_csv)?;
    let rows = Rows::new(col);
    let mut positives: HashMap<u64, Vec<&inquire::Annotation>> = HashMap::new();
    for a in &ann {
        positives.entry(a.query_id).or_default().push(a);
    }
    let mut missing = Missing {
        file: annotations_csv,
        skip: skip_missing,
        dropped: Vec::new(),
    };
    let mut dropped = Vec::new();
    let mut queries = Vec::new();
    for q in &qs {
        let qid = q.query_id.to_string();
        let pos = positives.get(&q.query_id).map(Vec::as_slice).unwrap_or(&[]);
        if pos.is_empty() {
            dropped.push((
                qid,
                format!("no annotated positives in {}", annotations_csv.display()),
            ));
            continue;
        }
        let absent: Vec<String> = pos
            .iter()
            .filter(|a| rows.path(&a.image_path).is_none())
            .map(|a| a.image_path.clone())
            .collect();
        // The collection may hold a subset of iNat24: absent positives still count in the normalisation.
        if !skip_missing && absent.len() == pos.len() {
            missing.check(pos[0].line, &qid, &absent)?;
        }
        queries.push(EvalQuery {
            qid,
            group: q.supercategory.clone(),
            text: Some(q.query_text.clone()),
            relevant: pos
                .iter()
                .filter_map(|a| rows.path(&a.image_path))
                .collect(),
            total_relevant: pos.len(),
            relevant_names: pos
                .iter()
                .filter_map(|a| rows.path(&a.image_path))
                .map(|r| col.records()[r].path.clone())
                .collect(),
            ..EvalQuery::default()
        });
    }
    dropped.extend(missing.dropped);
    Ok(Benchmark {
        name: "inquire-fullrank".into(),
        queries,
        dropped,
        depth: 50,
        metric_names: metric_names(&["AP@50", "nDCG@50", "MRR"]),
        metrics: Box::new(|ranked, q| {
            BTreeMap::from([
                (
                    "AP@50".to_string(),
                    metrics::average_precision_at(ranked, &q.relevant, 50, q.total_relevant),
                ),
                (
                    "nDCG@50".to_string(),
                    metrics::ndcg_at(ranked, &q.relevant, 50, q.total_relevant),
                ),
                (
                    "MRR".to_string(),
                    metrics::reciprocal_rank(ranked, &q.relevant, 50),
                ),
            ])
        }),
        doc_names: col.records().iter().map(|r| r.path.clone()).collect(),
        describe: json!({"queries": queries_csv.display().to_string(), "annotations": annotations_csv.display().to_string()}),
    })
}

/// Writes the official submission files of a test split from `stage`'s
/// rankings: CIRR `submission-recall-<stage>.json` (top 50 per pair id) and
/// `submission-recall_subset-<stage>.json` (top 3 of the group), CIRCO
/// `submission-<stage>.json` (top 50 COCO ids per query id).
pub fn write_submissions(
    benchmark: &str,
    outcomes: &[QueryOutcome],
    stage: &str,
    out: &Path,
) -> Result<Vec<PathBuf>, EvalError> {
    let mut files = Vec::new();
    let mut write = |name: String, v: serde_json::Value| -> Result<(), EvalError> {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string(&v).unwrap_or_default()).map_err(|source| {
            EvalError::Io {
                path: p.clone(),
                source,
            }
        })?;
        files.push(p);
        Ok(())
    };
    let of = |q: &QueryOutcome| q.stages.iter().find(|s| s.stage == stage).cloned();
    if benchmark.starts_with("cirr") {
        let mut recall = serde_json::Map::from_iter([
            ("version".to_string(), json!("rc2")),
            ("metric".to_string(), json!("recall")),
        ]);
        let mut subset = serde_json::Map::from_iter([
            ("version".to_string(), json!("rc2")),
            ("metric".to_string(), json!("recall_subset")),
        ]);
        for q in outcomes {
            if let Some(s) = of(q) {
                recall.insert(
                    q.qid.clone(),
                    json!(s.docs.iter().take(50).collect::<Vec<_>>()),
                );
                subset.insert(
                    q.qid.clone(),
                    json!(s
                        .lists
                        .get("subset")
                        .map(|l| l.iter().take(3).collect::<Vec<_>>())
                        .unwrap_or_default()),
                );
            }
        }
        write(format!("submission-recall-{stage}.json"), recall.into())?;
        write(
            format!("submission-recall_subset-{stage}.json"),
            subset.into(),
        )?;
    } else if benchmark.starts_with("circo") {
        let mut m = serde_json::Map::new();
        for q in outcomes {
            if let Some(s) = of(q) {
                let ids: Vec<serde_json::Value> = s
                    .docs
                    .iter()
                    .take(50)
                    .map(|d| d.parse::<u64>().map_or_else(|_| json!(d), |id| json!(id)))
                    .collect();
                m.insert(q.qid.clone(), json!(ids));
            }
        }
        write(format!("submission-{stage}.json"), m.into())?;
    }
    Ok(files)
}
