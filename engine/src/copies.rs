//! The transformed-copy benchmark: image-to-image retrieval of strongly
//! edited copies, generated from any folder of photos, deterministically from
//! a seed.
//!
//! From the folder's images (sorted by name) the seed picks `sources`; each
//! gets `variants` edited copies, each a random chain of 2–4 edits from: a
//! crop of 50–80% of the area, a rotation of up to ±20°, colour jitter
//! (brightness, contrast, hue), a Gaussian blur, a horizontal flip, a solid
//! border, always finished by JPEG re-encoding at quality 20–40. Copy 0 of
//! each source is the query; the gallery holds the source itself, its other
//! copies, and up to `others` further originals as distractors. Relevant to a
//! query: its source and that source's other copies.
//!
//! Everything is written under a cache directory named after the parameters
//! (`gallery/`, `queries/`, `truth.json`) and reused when complete, never
//! committed.

use std::path::{Path, PathBuf};

use image::{imageops, ImageEncoder, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

/// What the benchmark is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopiesSpec {
    /// Source images that get copies (and queries).
    pub sources: usize,
    /// Edited copies per source (one of them is the query).
    pub variants: usize,
    /// Other originals added to the gallery as distractors.
    pub others: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for CopiesSpec {
    /// 100 sources × 4 copies, 800 distractors, seed 1.
    fn default() -> Self {
        CopiesSpec {
            sources: 100,
            variants: 4,
            others: 800,
            seed: 1,
        }
    }
}

/// One query of the benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyQuery {
    /// Query image (under `queries/`).
    pub query: String,
    /// The source's file name in the input folder.
    pub source: String,
    /// Gallery paths (relative to `gallery/`) of the relevant images.
    pub relevant: Vec<String>,
    /// The edits applied to the query image, in order.
    pub edits: Vec<String>,
}

/// A generated benchmark on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopiesSet {
    /// The folder of gallery images (index this).
    pub gallery: PathBuf,
    /// The folder of query images.
    pub queries_dir: PathBuf,
    /// Gallery images.
    pub gallery_images: usize,
    /// Every query with its relevant set.
    pub queries: Vec<CopyQuery>,
}

/// Failures of the generator; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CopiesError {
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The folder does not hold enough images.
    #[error("{0}")]
    TooFew(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> CopiesError {
    CopiesError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// splitmix64: small, fast and the same everywhere.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Rotates by `degrees` about the centre (bilinear, same canvas, black corners).
fn rotate(img: &RgbImage, degrees: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
        let (sx, sy) = (c * dx + s * dy + cx - 0.5, -s * dx + c * dy + cy - 0.5);
        if sx < -0.5 || sy < -0.5 || sx > w as f64 - 0.5 || sy > h as f64 - 0.5 {
            return Rgb([0, 0, 0]);
        }
        let (sx, sy) = (sx.clamp(0.0, (w - 1) as f64), sy.clamp(0.0, (h - 1) as f64));
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
        let mut out = [0u8; 3];
        for (ch, o) in out.iter_mut().enumerate() {
            let p = |xx, yy| img.get_pixel(xx, yy)[ch] as f64;
            let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
            let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
            *o = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
        Rgb(out)
    })
}

/// Applies one random edit; returns its description.
fn edit(img: RgbImage, kind: usize, rng: &mut Rng) -> (RgbImage, String) {
    let (w, h) = img.dimensions();
    match kind {
        0 => {
            let area = rng.uniform(0.5, 0.8);
            let aspect = rng.uniform(0.75, 1.333);
            let cw = ((area * aspect).sqrt() * w as f64).clamp(1.0, w as f64) as u32;
            let ch = ((area / aspect).sqrt() * h as f64).clamp(1.0, h as f64) as u32;
            let (x, y) = (
                rng.below((w - cw + 1) as usize) as u32,
                rng.below((h - ch + 1) as usize) as u32,
            );
            (
                imageops::crop_imm(&img, x, y, cw, ch).to_image(),
                format!(
                    "crop {:.0}% at ({x},{y})",
                    100.0 * (cw * ch) as f64 / (w * h) as f64
                ),
            )
        }
        1 => {
            let deg = rng.uniform(-20.0, 20.0);
            (rotate(&img, deg), format!("rotate {deg:.1}°"))
        }
        2 => {
            let b = rng.uniform(-40.0, 40.0) as i32;
            let c = rng.uniform(-30.0, 30.0) as f32;
            let hue = rng.uniform(-40.0, 40.0) as i32;
            let out =
                imageops::huerotate(&imageops::contrast(&imageops::brighten(&img, b), c), hue);
            (
                out,
                format!("jitter brightness {b:+}, contrast {c:+.0}, hue {hue:+}°"),
            )
        }
        3 => {
            let sigma = rng.uniform(1.0, 3.0) as f32;
            (imageops::blur(&img, sigma), format!("blur σ {sigma:.1}"))
        }
        4 => (imageops::flip_horizontal(&img), "flip".to_string()),
        _ => {
            let pad = (rng.uniform(0.05, 0.15) * w.min(h) as f64) as u32;
            let colour = Rgb([
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ]);
            let mut out = RgbImage::from_pixel(w + 2 * pad, h + 2 * pad, colour);
            imageops::overlay(&mut out, &img, pad as i64, pad as i64);
            (out, format!("border {pad} px"))
        }
    }
}

/// One edited copy of `img` as JPEG bytes, with the edits applied.
pub fn make_copy(
    img: &RgbImage,
    rng: &mut Rng,
) -> Result<(Vec<u8>, Vec<String>), image::ImageError> {
    let mut kinds: Vec<usize> = (0..6).collect();
    rng.shuffle(&mut kinds);
    let n = 2 + rng.below(3);
    let mut out = img.clone();
    let mut edits = Vec::new();
    for &k in &kinds[..n] {
        let (next, what) = edit(out, k, rng);
        out = next;
        edits.push(what);
    }
    let quality = 20 + rng.below(21) as u8;
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).write_image(
        out.as_raw(),
        out.width(),
        out.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    edits.push(format!("jpeg q{quality}"));
    Ok((bytes, edits))
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png" | "webp" | "bmp" | "tiff" | "tif" | "gif")
    )
}

/// Builds (or reuses) the benchmark for the images in `images` under `cache`.
/// `progress(done, total)` is called as images are written.
pub fn build(
    images: &Path,
    cache: &Path,
    spec: &CopiesSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CopiesSet, CopiesError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(images)
        .map_err(|e| io(images, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    names.sort();
    if names.len() < spec.sources.max(1) {
        return Err(CopiesError::TooFew(format!(
            "{} holds {} images; the benchmark needs at least {} sources",
            images.display(),
            names.len(),
            spec.sources.max(1)
        )));
    }
    if spec.variants < 1 {
        return Err(CopiesError::TooFew(
            "--variants must be at least 1 (copy 0 is the query)".into(),
        ));
    }
    let dir = cache.join(format!(
        "copies-s{}-v{}-o{}-seed{}",
        spec.sources, spec.variants, spec.others, spec.seed
    ));
    let truth = dir.join("truth.json");
    if let Ok(bytes) = std::fs::read(&truth) {
        if let Ok(set) = serde_json::from_slice::<CopiesSet>(&bytes) {
            return Ok(set);
        }
    }
    let (gallery, queries_dir) = (dir.join("gallery"), dir.join("queries"));
    for d in [&gallery, &queries_dir] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let mut rng = Rng::new(spec.seed);
    let mut order: Vec<usize> = (0..names.len()).collect();
    rng.shuffle(&mut order);
    let sources = &order[..spec.sources];
    let others = &order[spec.sources..(spec.sources + spec.others).min(order.len())];
    let total = sources.len() * (spec.variants + 1) + others.len();
    let mut done = 0;
    let mut queries = Vec::new();
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for (si, &i) in sources.iter().enumerate() {
        let src = &names[i];
        let img = squire_models::image_io::load_rgb(src).map_err(|e| io(src, e))?;
        let stem = format!("s{si:04}");
        let original = format!(
            "{stem}-original.{}",
            src.extension().and_then(|e| e.to_str()).unwrap_or("jpg")
        );
        std::fs::copy(src, gallery.join(&original)).map_err(|e| io(src, e))?;
        let mut relevant = vec![original];
        let mut query = None;
        for v in 0..spec.variants {
            let (bytes, edits) = make_copy(&img, &mut rng).map_err(|e| io(src, e))?;
            let file = format!("{stem}-copy{v}.jpg");
            let target = if v == 0 {
                queries_dir.join(&file)
            } else {
                gallery.join(&file)
            };
            std::fs::write(&target, bytes).map_err(|e| io(&target, e))?;
            if v == 0 {
                query = Some((file, edits));
            } else {
                relevant.push(file);
            }
            done += 1;
            progress(done, total);
        }
        if let Some((file, edits)) = query {
            queries.push(CopyQuery {
                query: file,
                source: name_of(src),
                relevant,
                edits,
            });
        }
        done += 1;
        progress(done, total);
    }
    for &i in others {
        let src = &names[i];
        let target = gallery.join(format!("o-{}", name_of(src)));
        std::fs::copy(src, &target).map_err(|e| io(&target, e))?;
        done += 1;
        progress(done, total);
    }
    let set = CopiesSet {
        gallery,
        queries_dir,
        gallery_images: sources.len() * spec.variants + others.len(),
        queries,
    };
    let json = serde_json::to_vec_pretty(&set).map_err(|e| io(&truth, e))?;
    let tmp = truth.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &truth).map_err(|e| io(&truth, e))?;
    Ok(set)
}

/// AP of a ranking cut at `k` (`relevant[i]`: whether rank i+1 is relevant),
/// normalised by min(total relevant, k); 0 when nothing is relevant.
pub fn average_precision_at(relevant: &[bool], total_relevant: usize, k: usize) -> f64 {
    let denom = total_relevant.min(k);
    if denom == 0 {
        return 0.0;
    }
    let mut hits = 0;
    let mut sum = 0.0;
    for (i, &r) in relevant.iter().take(k).enumerate() {
        if r {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / denom as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_by_hand() {
        // Relevant at ranks 1 and 3 of 3 relevant: (1/1 + 2/3) / 3.
        let ap = average_precision_at(&[true, false, true, false], 3, 100);
        assert!((ap - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // Cut at k = 2: only rank 1 counts, normalised by min(3, 2).
        assert!((average_precision_at(&[true, false, true], 3, 2) - 0.5).abs() < 1e-12);
        // No relevant items, or relevant never retrieved.
        assert_eq!(average_precision_at(&[false, false], 0, 10), 0.0);
        assert_eq!(average_precision_at(&[false, false], 2, 10), 0.0);
        // Fewer results than k: the missing ones count as not retrieved.
        assert!((average_precision_at(&[true], 2, 100) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn copies_are_deterministic_and_edited() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        });
        let (a, ea) = make_copy(&img, &mut Rng::new(7)).unwrap();
        let (b, eb) = make_copy(&img, &mut Rng::new(7)).unwrap();
        assert_eq!(a, b);
        assert_eq!(ea, eb);
        assert!(
            ea.len() >= 3 && ea.last().unwrap().starts_with("jpeg q"),
            "{ea:?}"
        );
        let (c, _) = make_copy(&img, &mut Rng::new(8)).unwrap();
        assert_ne!(a, c);
        // Rotation by 0° is the identity; by 15° it is not.
        assert_eq!(rotate(&img, 0.0), img);
        assert_ne!(rotate(&img, 15.0), img);
        // Every edit works on a tiny image (1×1 crops, 0-pixel borders).
        let tiny = RgbImage::from_pixel(3, 2, Rgb([10, 20, 30]));
        let mut rng = Rng::new(1);
        for kind in 0..6 {
            let (out, _) = edit(tiny.clone(), kind, &mut rng);
            assert!(out.width() >= 1 && out.height() >= 1);
        }
    }
}
