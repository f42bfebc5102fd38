//! Revisited Oxford and Paris (Radenović et al., CVPR 2018): the ground-truth
//! pickles `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`, read in Rust, and the
//! protocol's mAP for the Easy, Medium and Hard setups.
//!
//! A file is a dict with `imlist` (database image names), `qimlist` (query
//! image names) and `gnd`, one dict per query with `bbx` (the query crop,
//! x1, y1, x2, y2) and the database indices in `easy`, `hard` and `junk`.
//! The +1M distractor option only adds database images after `imlist`, so a
//! ranking over the larger database is scored the same way.

use std::path::{Path, PathBuf};

use serde_pickle::{HashableValue, Value};

use crate::eval::EvalError;

/// One query's ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// Query crop (x1, y1, x2, y2) in the query image's pixels.
    pub bbx: [f64; 4],
    /// Database indices of the easy positives.
    pub easy: Vec<usize>,
    /// Database indices of the hard positives.
    pub hard: Vec<usize>,
    /// Database indices to ignore.
    pub junk: Vec<usize>,
}

/// A loaded ground-truth file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Database image names, in index order.
    pub images: Vec<String>,
    /// Query image names.
    pub queries: Vec<String>,
    /// Ground truth per query (same order as `queries`).
    pub gnd: Vec<GroundTruth>,
}

/// The three evaluation setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Positives: easy; ignored: junk and hard.
    Easy,
    /// Positives: easy and hard; ignored: junk.
    Medium,
    /// Positives: hard; ignored: junk and easy.
    Hard,
}

impl Setup {
    /// All three, in the usual table order.
    pub const ALL: [Setup; 3] = [Setup::Easy, Setup::Medium, Setup::Hard];

    /// (positives, ignored) of a query under this setup.
    pub fn split(&self, g: &GroundTruth) -> (Vec<usize>, Vec<usize>) {
        let cat = |a: &[usize], b: &[usize]| a.iter().chain(b).copied().collect::<Vec<_>>();
        match self {
            Setup::Easy => (g.easy.clone(), cat(&g.junk, &g.hard)),
            Setup::Medium => (cat(&g.easy, &g.hard), g.junk.clone()),
            Setup::Hard => (g.hard.clone(), cat(&g.junk, &g.easy)),
        }
    }
}

fn bad(path: &Path, what: String) -> EvalError {
    EvalError::Format {
        path: path.to_path_buf(),
        line: 0,
        message: what,
    }
}

fn field<'a>(
    path: &Path,
    dict: &'a std::collections::BTreeMap<HashableValue, Value>,
    key: &str,
    ctx: &str,
) -> Result<&'a Value, EvalError> {
    dict.get(&HashableValue::String(key.to_string()))
        .ok_or_else(|| bad(path, format!("{ctx}: missing key `{key}`")))
}

fn list<'a>(path: &Path, v: &'a Value, ctx: &str) -> Result<&'a [Value], EvalError> {
    match v {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        other => Err(bad(
            path,
            format!("{ctx}: expected a list, found {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a string",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

fn indices(path: &Path, v: &Value, ctx: &str, n: usize) -> Result<Vec<usize>, EvalError> {
    list(path, v, ctx)?
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::I64(k) if *k >= 0 && (*k as usize) < n => Ok(*k as usize),
            Value::I64(k) => Err(bad(
                path,
                format!("{ctx}[{i}] = {k} is not an index into the {n} database images"),
            )),
            other => Err(bad(
                path,
                format!("{ctx}[{i}]: expected an int, found {}", kind(other)),
            )),
        })
        .collect()
}

fn names(path: &Path, v: &Value, ctx: &str) -> Result<Vec<String>, EvalError> {
    list(path, v, ctx)?
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => Err(bad(
                path,
                format!("{ctx}[{i}]: expected a string, found {}", kind(other)),
            )),
        })
        .collect()
}

/// Reads a `gnd_*.pkl` file (any pickle protocol; Python 2 byte strings too).
pub fn load(path: &Path) -> Result<Dataset, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = serde_pickle::DeOptions::new().decode_strings();
    let value = serde_pickle::value_from_slice(&bytes, opts)
        .map_err(|e| bad(path, format!("not a readable pickle: {e}")))?;
    let Value::Dict(top) = &value else {
        return Err(bad(
            path,
            format!("expected a dict at the top, found {}", kind(&value)),
        ));
    };
    let images = names(path, field(path, top, "imlist", "file")?, "imlist")?;
    let queries = names(path, field(path, top, "qimlist", "file")?, "qimlist")?;
    let entries = list(path, field(path, top, "gnd", "file")?, "gnd")?;
    if entries.len() != queries.len() {
        return Err(bad(
            path,
            format!(
                "gnd has {} entries for {} query images",
                entries.len(),
                queries.len()
            ),
        ));
    }
    let n = images.len();
    let gnd = entries
        .iter()
        .enumerate()
        .map(|(q, e)| {
            let ctx = format!("gnd[{q}] ({})", queries[q]);
            let Value::Dict(d) = e else {
                return Err(bad(
                    path,
                    format!("{ctx}: expected a dict, found {}", kind(e)),
                ));
            };
            let bbx_list = list(path, field(path, d, "bbx", &ctx)?, &format!("{ctx}.bbx"))?;
            let mut bbx = [0f64; 4];
            if bbx_list.len() != 4 {
                return Err(bad(
                    path,
                    format!("{ctx}.bbx has {} values, expected 4", bbx_list.len()),
                ));
            }
            for (slot, v) in bbx.iter_mut().zip(bbx_list) {
                *slot = match v {
                    Value::F64(f) => *f,
                    Value::I64(i) => *i as f64,
                    other => {
                        return Err(bad(
                            path,
                            format!("{ctx}.bbx: expected numbers, found {}", kind(other)),
                        ))
                    }
                };
            }
            let get = |key: &str| -> Result<Vec<usize>, EvalError> {
                match d.get(&HashableValue::String(key.to_string())) {
                    Some(v) => indices(path, v, &format!("{ctx}.{key}"), n),
                    None => Ok(Vec::new()),
                }
            };
            Ok(GroundTruth {
                bbx,
                easy: get("easy")?,
                hard: get("hard")?,
                junk: get("junk")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dataset {
        images,
        queries,
        gnd,
    })
}

/// The protocol's average precision of one ranking (database indices, best
/// first): junk is removed from the ranking, then the trapezoidal AP over
/// the positives' 0-based ranks, normalised by the number of positives
/// (positives missing from a truncated ranking count as never retrieved).
/// `None` when the query has no positives under the setup.
pub fn average_precision(ranking: &[usize], positives: &[usize], junk: &[usize]) -> Option<f64> {
    if positives.is_empty() {
        return None;
    }
    let (pos, ignore): (
        std::collections::HashSet<usize>,
        std::collections::HashSet<usize>,
    ) = (
        positives.iter().copied().collect(),
        junk.iter().copied().collect(),
    );
    let ranks: Vec<usize> = ranking
        .iter()
        .filter(|i| !ignore.contains(i))
        .enumerate()
        .filter(|(_, i)| pos.contains(i))
        .map(|(r, _)| r)
        .collect();
    let step = 1.0 / pos.len() as f64;
    let mut ap = 0.0;
    for (j, &rank) in ranks.iter().enumerate() {
        let p0 = if rank == 0 {
            1.0
        } else {
            j as f64 / rank as f64
        };
        let p1 = (j + 1) as f64 / (rank + 1) as f64;
        ap += (p0 + p1) * step / 2.0;
    }
    Some(ap)
}

/// mAP over the queries with at least one positive (as the reference code
/// averages), plus each query's AP (`None` = no positives, not averaged).
pub fn mean_average_precision(
    rankings: &[Vec<usize>],
    gnd: &[GroundTruth],
    setup: Setup,
) -> (f64, Vec<Option<f64>>) {
    let per: Vec<Option<f64>> = rankings
        .iter()
        .zip(gnd)
        .map(|(r, g)| {
            let (pos, junk) = setup.split(g);
            average_precision(r, &pos, &junk)
        })
        .collect();
    let scored: Vec<f64> = per.iter().flatten().copied().collect();
    let map = if scored.is_empty() {
        0.0
    } else {
        scored.iter().sum::<f64>() / scored.len() as f64
    };
    (map, per)
}

/// The path of the ground-truth file of a dataset under `root`
/// (`roxford5k` → `root/roxford5k/gnd_roxford5k.pkl`, as revisitop lays it out).
pub fn gnd_path(root: &Path, dataset: &str) -> PathBuf {
    root.join(dataset).join(format!("gnd_{dataset}.pkl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/revisitop")
            .join(name)
    }

    #[test]
    fn loads_the_fixture_pickles_of_both_protocols() {
        for name in ["gnd_tiny_p4.pkl", "gnd_tiny_p2.pkl"] {
            let d = load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.images.len(), 8, "{name}");
            assert_eq!(d.images[3], "db_03");
            assert_eq!(d.queries, vec!["query_a", "query_b", "query_c"]);
            assert_eq!(
                d.gnd[0],
                GroundTruth {
                    bbx: [10.5, 20.0, 110.25, 220.0],
                    easy: vec![0, 1],
                    hard: vec![2],
                    junk: vec![5]
                }
            );
            assert_eq!(d.gnd[1].easy, Vec::<usize>::new());
            assert_eq!(d.gnd[2].bbx, [1.0, 2.0, 3.0, 4.0]);
        }
    }

    #[test]
    fn malformed_files_name_the_field() {
        let dir = std::env::temp_dir().join(format!("squire-revisitop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: &Value| {
            let p = dir.join(name);
            std::fs::write(
                &p,
                serde_pickle::value_to_vec(v, serde_pickle::SerOptions::new()).unwrap(),
            )
            .unwrap();
            p
        };
        let s = |x: &str| HashableValue::String(x.into());
        let entry = |easy: Vec<Value>| {
            Value::Dict(
                [
                    (s("bbx"), Value::List(vec![Value::F64(0.0); 4])),
                    (s("easy"), Value::List(easy)),
                ]
                .into_iter()
                .collect(),
            )
        };
        let file = |gnd: Vec<Value>| {
            Value::Dict(
                [
                    (
                        s("imlist"),
                        Value::List(vec![Value::String("a".into()), Value::String("b".into())]),
                    ),
                    (s("qimlist"), Value::List(vec![Value::String("q".into())])),
                    (s("gnd"), Value::List(gnd)),
                ]
                .into_iter()
                .collect(),
            )
        };
        let err = |p: &Path| load(p).unwrap_err().to_string();
        let p = write("ok.pkl", &file(vec![entry(vec![Value::I64(1)])]));
        assert_eq!(load(&p).unwrap().gnd[0].easy, vec![1]);
        let p = write("range.pkl", &file(vec![entry(vec![Value::I64(7)])]));
        assert!(err(&p).contains("gnd[0] (q).easy[0] = 7"), "{}", err(&p));
        let p = write("count.pkl", &file(vec![]));
        assert!(err(&p).contains("0 entries for 1 query"), "{}", err(&p));
        let p = write("top.pkl", &Value::List(vec![]));
        assert!(err(&p).contains("expected a dict"), "{}", err(&p));
        let p = dir.join("garbage.pkl");
        std::fs::write(&p, b"not a pickle").unwrap();
        assert!(
            err(&p).contains("garbage.pkl") && err(&p).contains("pickle"),
            "{}",
            err(&p)
        );
        assert!(err(&dir.join("missing.pkl")).contains("missing.pkl"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn average_precision_by_hand() {
        // Ranking 3 0 5 1 2 4, positives {0, 1}, junk {5}: without junk the
        // positives sit at 0-based ranks 1 and 2, so
        // AP = ((0/1 + 1/2) + (1/2 + 2/3)) · (1/2) / 2 = 0.41666…
        let ap = average_precision(&[3, 0, 5, 1, 2, 4], &[0, 1], &[5]).unwrap();
        assert!((ap - (0.5 + 0.5 + 2.0 / 3.0) / 4.0).abs() < 1e-12, "{ap}");
        // A perfect ranking scores 1; no positives is None; a positive never
        // retrieved (truncated ranking) counts as a miss.
        assert_eq!(average_precision(&[1, 0, 2], &[1, 0], &[]), Some(1.0));
        assert_eq!(average_precision(&[0, 1], &[], &[1]), None);
        assert!((average_precision(&[0], &[0, 9], &[]).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn setups_split_positives_and_junk_as_the_protocol_says() {
        let g = GroundTruth {
            bbx: [0.0; 4],
            easy: vec![0],
            hard: vec![1],
            junk: vec![2],
        };
        assert_eq!(Setup::Easy.split(&g), (vec![0], vec![2, 1]));
        assert_eq!(Setup::Medium.split(&g), (vec![0, 1], vec![2]));
        assert_eq!(Setup::Hard.split(&g), (vec![1], vec![2, 0]));
        // Ranking 1 2 0: Easy ignores 1 and 2 → 0 first (AP 1); Medium: 1 at
        // rank 0, 0 at rank 1 after dropping junk 2 → AP 1; Hard ignores 0, 2 → 1 first.
        let (m, per) =
            mean_average_precision(&[vec![1, 2, 0]], std::slice::from_ref(&g), Setup::Medium);
        assert_eq!((m, per), (1.0, vec![Some(1.0)]));
        // A query without positives under a setup is left out of the mean.
        let none = GroundTruth {
            bbx: [0.0; 4],
            easy: vec![],
            hard: vec![1],
            junk: vec![],
        };
        let (m, per) = mean_average_precision(
            &[vec![0, 1, 2], vec![2, 1]],
            &[g.clone(), none],
            Setup::Easy,
        );
        assert_eq!(per, vec![Some(1.0), None]);
        assert_eq!(m, 1.0);
    }
}
