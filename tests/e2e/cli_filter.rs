//! Metadata filters through `squire search --filter` and the library, on a
//! folder made here whose EXIF dates, cameras, sizes, modification times and
//! subfolders are known: every field and operator; results all match and
//! equal the exact ranking filtered afterwards; a filter matching 3 of 1,000
//! images returns those 3; a bad expression names the column.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use squire_indexer::{Collection, Filter, OpenOptions, SearchParams};

use crate::common::{fixtures, scratch, squire, text};

/// What the test knows about each file it made.
#[derive(Debug, Clone)]
pub struct Made {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    /// EXIF capture time else mtime, seconds since 1970.
    pub taken: i64,
    pub camera: Option<String>,
}

impl Made {
    fn folder(&self) -> &str {
        self.path.rsplit_once('/').map(|(f, _)| f).unwrap_or("")
    }
}

const DAY: i64 = 86_400;
/// 2000-01-01T00:00:00.
const Y2000: i64 = 946_684_800;
/// 2010-01-01T00:00:00.
const Y2010: i64 = 1_262_304_000;
/// 2019-06-01T00:00:00.
const JUNE_2019: i64 = 1_559_347_200;

fn exif_datetime(t: i64) -> String {
    // Civil from days (inverse of days-from-civil).
    let (days, secs) = (t.div_euclid(DAY), t.rem_euclid(DAY));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}:{m:02}:{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A JPEG (or PNG) of `w`×`h` noise seeded by `seed`, with an EXIF block when asked.
fn encode(w: u32, h: u32, seed: u64, png: bool, exif: Option<(i64, &str)>) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let base = [(s >> 8) as u8, (s >> 16) as u8, (s >> 24) as u8];
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s & 63) as u8;
        image::Rgb([
            base[0].wrapping_add(n).wrapping_add(x as u8),
            base[1].wrapping_add(n),
            base[2].wrapping_add(y as u8),
        ])
    });
    let mut out = Vec::new();
    if png {
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        return out;
    }
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("jpeg");
    let Some((taken, camera)) = exif else {
        return out;
    };
    let (make, model) = camera.split_once(' ').unwrap_or((camera, ""));
    let ascii = |tag, v: &str| exif::Field {
        tag,
        ifd_num: exif::In::PRIMARY,
        value: exif::Value::Ascii(vec![v.as_bytes().to_vec()]),
    };
    let fields = [
        ascii(exif::Tag::Make, make),
        ascii(exif::Tag::Model, model),
        ascii(exif::Tag::DateTimeOriginal, &exif_datetime(taken)),
    ];
    let mut w = exif::experimental::Writer::new();
    fields.iter().for_each(|f| w.push_field(f));
    let mut tiff = Cursor::new(Vec::new());
    w.write(&mut tiff, false).expect("exif");
    let tiff = tiff.into_inner();
    let mut with = out[..2].to_vec();
    with.extend_from_slice(&[0xFF, 0xE1]);
    with.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
    with.extend_from_slice(b"Exif\0\0");
    with.extend_from_slice(&tiff);
    with.extend_from_slice(&out[2..]);
    with
}

/// Makes 997 images in seven folders (a third with EXIF dates from 2010 and
/// a Nikon camera, the rest dated by mtime from 2000) and three in `rare/`
/// (EXIF 2019-06-01..03, a Canon).
pub fn make_library(dir: &Path) -> Vec<Made> {
    let mut made = Vec::new();
    let mut write = |rel: String,
                     bytes: Vec<u8>,
                     mtime: i64,
                     w: u32,
                     h: u32,
                     taken: i64,
                     camera: Option<String>| {
        let p = dir.join(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, &bytes).expect("write");
        let f = std::fs::File::options().write(true).open(&p).expect("open");
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64))
            .expect("mtime");
        made.push(Made {
            path: rel,
            width: w,
            height: h,
            bytes: bytes.len() as u64,
            taken,
            camera,
        });
    };
    for i in 0..997u64 {
        let (w, h) = (16 + (i % 50) as u32, 16 + (i % 30) as u32);
        let png = i % 5 == 0;
        let mtime = Y2000 + i as i64 * DAY / 2;
        let exif =
            (!png && i % 3 == 0).then(|| (Y2010 + i as i64 * DAY, format!("Nikon D{}", i % 4)));
        let bytes = encode(w, h, i, png, exif.as_ref().map(|(t, c)| (*t, c.as_str())));
        let rel = format!("f{}/img{i:04}.{}", i % 7, if png { "png" } else { "jpg" });
        let (taken, camera) = match exif {
            Some((t, c)) => (t, Some(c)),
            None => (mtime, None),
        };
        write(rel, bytes, mtime, w, h, taken, camera);
    }
    for j in 0..3i64 {
        let t = JUNE_2019 + j * DAY + 10 * 3600;
        let bytes = encode(100, 80, 5000 + j as u64, false, Some((t, "Canon EOS 5D")));
        write(
            format!("rare/r{j}.jpg"),
            bytes,
            Y2000,
            100,
            80,
            t,
            Some("Canon EOS 5D".into()),
        );
    }
    made.sort_by(|a, b| a.path.cmp(&b.path));
    made
}

fn search_json(home: &Path, idx: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "search",
        "--index",
        idx,
        "--text",
        "a small photo",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = squire(home, &args);
    assert!(o.status.success(), "{:?}: {}", extra, text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn results(v: &Value) -> Vec<(String, f64)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["path"].as_str().expect("path").to_string(),
                r["score"].as_f64().expect("score"),
            )
        })
        .collect()
}

#[test]
fn filters_on_every_field_match_the_exact_filtered_ranking_and_bad_ones_name_the_column() {
    let root = scratch("filter");
    let (home, lib, idx) = (
        root.join("home"),
        root.join("library"),
        root.join("index").display().to_string(),
    );
    let made = make_library(&lib);
    assert_eq!(made.len(), 1000);
    let model = fixtures().join("tiny-clip").display().to_string();
    let o = squire(
        &home,
        &[
            "index",
            &lib.display().to_string(),
            "--index",
            &idx,
            "--model",
            &model,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let by_path: HashMap<&str, &Made> = made.iter().map(|m| (m.path.as_str(), m)).collect();

    // The whole exact ranking, to filter afterwards.
    let all = results(&search_json(&home, &idx, &["--exact", "-k", "1000"]));
    assert_eq!(all.len(), 1000);
    let mut sizes: Vec<u64> = made.iter().map(|m| m.bytes).collect();
    sizes.sort();
    let median = sizes[500];
    let median_s = median.to_string();
    let d = |t: i64| t; // readability below
    let cases: Vec<(String, Box<dyn Fn(&Made) -> bool>)> = vec![
        (
            r#"folder = "rare""#.into(),
            Box::new(|m: &Made| m.folder() == "rare"),
        ),
        (
            r#"folder != "f3" and folder >= "f5""#.into(),
            Box::new(|m: &Made| m.folder() != "f3" && m.folder() >= "f5"),
        ),
        (
            r#"path = "f2/img0002.jpg" or path < "f0/img0100""#.into(),
            Box::new(|m: &Made| m.path == "f2/img0002.jpg" || m.path.as_str() < "f0/img0100"),
        ),
        (
            r#"path glob "f3/*.png""#.into(),
            Box::new(|m: &Made| m.folder() == "f3" && m.path.ends_with(".png")),
        ),
        (
            r#"path glob "**/img00?1.jpg""#.into(),
            Box::new(|m: &Made| {
                m.path.ends_with(".jpg") && m.path.len() >= 11 && {
                    let n = &m.path[m.path.len() - 11..];
                    n.starts_with("img00") && n.ends_with("1.jpg")
                }
            }),
        ),
        (r#"path glob "*.jpg""#.into(), Box::new(|_: &Made| false)),
        (
            "width >= 60 and height < 25".into(),
            Box::new(|m: &Made| m.width >= 60 && m.height < 25),
        ),
        (
            "width = 100 or height = 45".into(),
            Box::new(|m: &Made| m.width == 100 || m.height == 45),
        ),
        ("height <= 17".into(), Box::new(|m: &Made| m.height <= 17)),
        ("width > 64".into(), Box::new(|m: &Made| m.width > 64)),
        (
            format!("bytes > {median_s}"),
            Box::new(move |m: &Made| m.bytes > median),
        ),
        (
            format!("bytes <= {median_s} and bytes != {median_s}"),
            Box::new(move |m: &Made| m.bytes < median),
        ),
        (
            r#"camera = "Canon EOS 5D""#.into(),
            Box::new(|m: &Made| m.camera.as_deref() == Some("Canon EOS 5D")),
        ),
        (
            r#"camera != "Nikon D1""#.into(),
            Box::new(|m: &Made| m.camera.as_deref().is_some_and(|c| c != "Nikon D1")),
        ),
        (
            r#"not camera glob "Nikon*" and (folder = "f1" or folder = "f2")"#.into(),
            Box::new(|m: &Made| {
                !m.camera.as_deref().is_some_and(|c| c.starts_with("Nikon"))
                    && (m.folder() == "f1" || m.folder() == "f2")
            }),
        ),
        // EXIF dates (2010 on) and modification times (2000 on) as `taken`.
        (
            "taken = 2019-06-01".into(),
            Box::new(|m: &Made| (JUNE_2019..JUNE_2019 + DAY).contains(&m.taken)),
        ),
        (
            r#"taken >= 2019-06-02 and camera = "Canon EOS 5D""#.into(),
            Box::new(|m: &Made| {
                m.taken >= JUNE_2019 + DAY && m.camera.as_deref() == Some("Canon EOS 5D")
            }),
        ),
        (
            "taken < 2000-03-01".into(),
            Box::new(move |m: &Made| m.taken < d(Y2000 + 60 * DAY)),
        ),
        (
            "taken > 2012-01-01 and taken <= 2012-03-01T00:00:00".into(),
            Box::new(|m: &Made| m.taken >= Y2010 + 731 * DAY && m.taken <= Y2010 + 790 * DAY),
        ),
    ];
    for (expr, want) in &cases {
        let matching = made.iter().filter(|m| want(m)).count();
        let expected: Vec<&(String, f64)> = all
            .iter()
            .filter(|(p, _)| want(by_path[p.as_str()]))
            .take(10)
            .collect();
        assert_eq!(expected.len(), matching.min(10), "{expr}");
        for extra in [&[][..], &["--exact"][..]] {
            let mut args = vec!["--filter", expr.as_str(), "-k", "10"];
            args.extend_from_slice(extra);
            let v = search_json(&home, &idx, &args);
            let got = results(&v);
            assert_eq!(
                v["query"]["filter"]["matching_images"].as_u64(),
                Some(matching as u64),
                "{expr}"
            );
            assert_eq!(got.len(), matching.min(10), "{expr}: {got:?}");
            for ((gp, gs), (ep, es)) in got.iter().zip(&expected) {
                assert!(want(by_path[gp.as_str()]), "{expr}: {gp} does not match");
                assert_eq!(gp, ep, "{expr}: {got:?} vs {expected:?}");
                assert!((gs - es).abs() < 1e-5, "{expr}: {gp} {gs} vs {es}");
            }
        }
        eprintln!("{expr}: {matching} match");
    }
    // 3 of 1,000.
    let rare = results(&search_json(
        &home,
        &idx,
        &["--filter", r#"folder = "rare""#, "-k", "10"],
    ));
    let mut paths: Vec<&str> = rare.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["rare/r0.jpg", "rare/r1.jpg", "rare/r2.jpg"]);

    // The ANN's filtered search (asked for even when few match): all match,
    // k of them, nearly the exact filtered ranking.
    let col = Collection::open_with(Path::new(&idx), OpenOptions { view: true }).expect("open");
    let vector = col.manifest().image_query_vector.clone();
    let store = col.vectors(&vector).expect("vectors");
    let (mut same, mut total) = (0, 0);
    for expr in [r#"folder = "f1""#, "width > 30", r#"not path glob "f4/**""#] {
        let f = Filter::parse(expr).expect("parse");
        for q in 0..20 {
            let query = store.row(q * 37).to_vec();
            let ann = col
                .search_filtered_with(&vector, &query, 10, &SearchParams::default(), &f, 0)
                .expect("ann");
            let exact = col
                .search_filtered_with(
                    &vector,
                    &query,
                    10,
                    &SearchParams::default(),
                    &f,
                    usize::MAX,
                )
                .expect("exact");
            assert_eq!(ann.len(), 10, "{expr}");
            assert!(
                ann.iter().all(|h| f.matches(&col.records()[h.row])),
                "{expr}"
            );
            same += ann
                .iter()
                .filter(|h| exact.iter().any(|e| e.row == h.row))
                .count();
            total += 10;
        }
    }
    let recall = same as f64 / total as f64;
    eprintln!("ANN filtered recall@10 {recall:.3}");
    assert!(recall >= 0.9, "ANN filtered recall@10 {recall}");

    // `eval t2i --filter`: only matches are ranked; a relevant image outside counts as a miss.
    let tsv = root.join("queries.tsv");
    std::fs::write(&tsv, "query_id\tcaption\trelevant_image\n0\ta photo\trare/r0.jpg\n1\ta photo\trare/r2.jpg\n2\ta photo\tf1/img0001.jpg\n").expect("tsv");
    let out = root.join("eval");
    let o = squire(
        &home,
        &[
            "eval",
            "t2i",
            "--index",
            &idx,
            "--queries",
            &tsv.display().to_string(),
            "--filter",
            r#"folder = "rare""#,
            "--out",
            &out.display().to_string(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("json");
    assert_eq!(run["filter"], r#"folder = "rare""#, "{run}");
    let log = std::fs::read_to_string(out.join("queries.jsonl")).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for q in &lines {
        let docs = q["stages"][0]["docs"].as_array().expect("docs");
        assert_eq!(docs.len(), 3, "{q}");
        let mut names: Vec<String> = docs
            .iter()
            .map(|d| {
                d.as_str()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["r0.jpg", "r1.jpg", "r2.jpg"], "{q}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    // Two of three queries have their image among the 3 matches; the third's is filtered out.
    let r10 = summary["per_stage"]["first"]["R@10"]
        .as_f64()
        .expect("R@10");
    assert!(
        (r10 - 2.0 / 3.0).abs() < 1e-9 || (r10 - 200.0 / 3.0).abs() < 1e-6,
        "{summary}"
    );
    let o = squire(
        &home,
        &[
            "eval",
            "t2i",
            "--index",
            &idx,
            "--queries",
            &tsv.display().to_string(),
            "--filter",
            "width >",
            "--out",
            &out.display().to_string(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("--filter: invalid filter at column 8"),
        "{}",
        text(&o)
    );

    // A bad expression: one error with the column and what was expected; nothing searched.
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "x",
            "--filter",
            "width >> 3",
        ],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("--filter: invalid filter at column 8: expected a number"),
        "{t}"
    );
    let o = squire(
        &home,
        &[
            "search",
            "--index",
            &idx,
            "--text",
            "x",
            "--filter",
            r#"colour = "red""#,
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("expected a field (path, folder, taken"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&root);
}
