//! Image preprocessing identical to Hugging Face's `CLIPImageProcessor`:
//! RGB conversion, shortest-side resize with Pillow's bicubic filter, centre
//! crop, rescale to [0, 1] and per-channel normalisation.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::resample::{resize_u8, resize_u8_region, Filter};

/// The CLIP training mean, per RGB channel.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP training standard deviation, per RGB channel.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Preprocessing parameters, as read from a checkpoint's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocessor {
    /// Whether to resize the shortest side to `shortest_edge`.
    pub do_resize: bool,
    /// Target length of the shortest side after resizing.
    pub shortest_edge: u32,
    /// Resampling filter.
    pub filter: Filter,
    /// Whether to crop the centre `crop_height × crop_width`.
    pub do_center_crop: bool,
    /// Height of the centre crop.
    pub crop_height: u32,
    /// Width of the centre crop.
    pub crop_width: u32,
    /// Whether to multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Scale applied to 8-bit samples (1/255).
    pub rescale_factor: f64,
    /// Whether to normalise with `mean` and `std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl ImagePreprocessor {
    /// The standard CLIP preprocessing at a given square resolution.
    pub fn clip(size: u32) -> Self {
        ImagePreprocessor {
            do_resize: true,
            shortest_edge: size,
            filter: Filter::Bicubic,
            do_center_crop: true,
            crop_height: size,
            crop_width: size,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json`. Both the old layout (`"size": 224`)
    /// and the new one (`"size": {"shortest_edge": 224}`) are accepted;
    /// absent fields take `fallback`'s values.
    pub fn from_file(path: &Path, fallback: &ImagePreprocessor) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: RawPreprocessor = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let cfg_err = |field: &str, message: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        let mut p = fallback.clone();
        if let Some(v) = raw.do_resize {
            p.do_resize = v;
        }
        match raw.size {
            Some(SizeSpec::Int(s)) => p.shortest_edge = s,
            Some(SizeSpec::Map {
                shortest_edge: Some(s),
                ..
            }) => p.shortest_edge = s,
            Some(SizeSpec::Map {
                height: Some(h),
                width: Some(w),
                ..
            }) if h == w => p.shortest_edge = h,
            Some(other) => return Err(cfg_err("size", format!("unsupported value {other:?}"))),
            None => {}
        }
        if let Some(code) = raw.resample {
            p.filter = Filter::from_pil_code(code).ok_or_else(|| {
                cfg_err("resample", format!("unsupported Pillow filter code {code}"))
            })?;
        }
        if let Some(v) = raw.do_center_crop {
            p.do_center_crop = v;
        }
        match raw.crop_size {
            Some(SizeSpec::Int(s)) => (p.crop_height, p.crop_width) = (s, s),
            Some(SizeSpec::Map {
                height: Some(h),
                width: Some(w),
                ..
            }) => (p.crop_height, p.crop_width) = (h, w),
            Some(other) => {
                return Err(cfg_err("crop_size", format!("unsupported value {other:?}")))
            }
            None => {}
        }
        if let Some(v) = raw.do_rescale {
            p.do_rescale = v;
        }
        if let Some(v) = raw.rescale_factor {
            p.rescale_factor = v;
        }
        if let Some(v) = raw.do_normalize {
            p.do_normalize = v;
        }
        if let Some(m) = raw.image_mean {
            p.mean = three(&m).ok_or_else(|| {
                cfg_err("image_mean", format!("expected 3 values, got {}", m.len()))
            })?;
        }
        if let Some(s) = raw.image_std {
            p.std = three(&s).ok_or_else(|| {
                cfg_err("image_std", format!("expected 3 values, got {}", s.len()))
            })?;
            if p.std.iter().any(|&v| v == 0.0) {
                return Err(cfg_err("image_std", "a standard deviation is zero".into()));
            }
        }
        if p.shortest_edge == 0 || p.crop_height == 0 || p.crop_width == 0 {
            return Err(cfg_err("size", "sizes must be positive".into()));
        }
        Ok(p)
    }

    /// Output height and width of [`Self::preprocess`] for an input of `w × h`.
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        if self.do_center_crop {
            (self.crop_height, self.crop_width)
        } else if self.do_resize {
            let (rw, rh) = self.resized_size(w, h);
            (rh, rw)
        } else {
            (h, w)
        }
    }

    /// Width and height after the shortest-side resize, truncating the long
    /// side as the reference does (`int(size * long / short)`).
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        let s = self.shortest_edge as u64;
        if w <= h {
            (s as u32, ((s * h as u64) as f64 / w as f64).floor() as u32)
        } else {
            (((s * w as u64) as f64 / h as f64).floor() as u32, s as u32)
        }
    }

    /// Preprocesses one RGB image into a CHW `f32` tensor, written into `out`
    /// (length `3 × out_h × out_w`, see [`Self::output_size`]).
    pub fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        let (w, h) = img.dimensions();
        let (rw, rh) = if self.do_resize {
            self.resized_size(w, h)
        } else {
            (w, h)
        };
        let (oh, ow) = if self.do_center_crop {
            (self.crop_height, self.crop_width)
        } else {
            (rh, rw)
        };
        if out.len() != 3 * (oh * ow) as usize {
            return Err(ModelError::InvalidRequest(format!(
                "preprocess buffer holds {} values, {} needed",
                out.len(),
                3 * oh * ow
            )));
        }
        let top = (rh as i64 - oh as i64).div_euclid(2);
        let left = (rw as i64 - ow as i64).div_euclid(2);
        let inside = top >= 0 && left >= 0;
        // The crop's pixels (zero where the crop leaves the image, as the reference pads).
        let pixels: Vec<u8>;
        let cur: &[u8] = if inside && self.do_resize {
            // Resize only the pixels the crop keeps.
            let region = (left as usize, top as usize, ow as usize, oh as usize);
            pixels = resize_u8_region(
                img.as_raw(),
                w as usize,
                h as usize,
                3,
                rw as usize,
                rh as usize,
                self.filter,
                region,
            );
            &pixels
        } else {
            let resized = if self.do_resize {
                std::borrow::Cow::Owned(resize_u8(
                    img.as_raw(),
                    w as usize,
                    h as usize,
                    3,
                    rw as usize,
                    rh as usize,
                    self.filter,
                ))
            } else {
                std::borrow::Cow::Borrowed(img.as_raw().as_slice())
            };
            if (top, left, oh, ow) == (0, 0, rh, rw) {
                pixels = resized.into_owned();
            } else {
                let mut buf = vec![0u8; (oh * ow * 3) as usize];
                for y in 0..oh as i64 {
                    let sy = y + top;
                    if sy < 0 || sy >= rh as i64 {
                        continue;
                    }
                    for x in 0..ow as i64 {
                        let sx = x + left;
                        if sx < 0 || sx >= rw as i64 {
                            continue;
                        }
                        let si = ((sy * rw as i64 + sx) * 3) as usize;
                        let di = ((y * ow as i64 + x) * 3) as usize;
                        buf[di..di + 3].copy_from_slice(&resized[si..si + 3]);
                    }
                }
                pixels = buf;
            }
            &pixels
        };
        // Normalisation through a table per channel: the reference rescales in
        // f64, casts to f32, then normalises in f32; 256 inputs cover every case.
        let plane = (ow * oh) as usize;
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            let lut: Vec<f32> = (0..256)
                .map(|v| {
                    let v = v as f64;
                    let mut x = if self.do_rescale {
                        (v * self.rescale_factor) as f32
                    } else {
                        v as f32
                    };
                    if self.do_normalize {
                        x = (x - mean) / std;
                    }
                    x
                })
                .collect();
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(cur.chunks_exact(3)) {
                *d = lut[px[c] as usize];
            }
        }
        Ok(())
    }

    /// Preprocesses one image into a freshly allocated CHW buffer.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (h, w) = self.output_size(img.width(), img.height());
        let mut out = vec![0f32; 3 * (h * w) as usize];
        self.preprocess_into(img, &mut out)?;
        Ok(out)
    }
}

fn three(v: &[f32]) -> Option<[f32; 3]> {
    if v.len() == 3 {
        Some([v[0], v[1], v[2]])
    } else {
        None
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(u32),
    Map {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

#[derive(Debug, Deserialize)]
struct RawPreprocessor {
    do_resize: Option<bool>,
    size: Option<SizeSpec>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeSpec>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_like_the_reference() {
        let p = ImagePreprocessor::clip(224);
        assert_eq!(p.resized_size(500, 375), (298, 224));
        assert_eq!(p.resized_size(375, 500), (224, 298));
        assert_eq!(p.resized_size(224, 224), (224, 224));
    }

    #[test]
    fn normalises_a_flat_image() {
        let p = ImagePreprocessor::clip(4);
        let img = RgbImage::from_pixel(8, 6, image::Rgb([255, 0, 128]));
        let out = p.preprocess(&img).expect("preprocess");
        assert_eq!(out.len(), 3 * 16);
        let r = (1.0f32 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert!((out[0] - r).abs() < 1e-6);
        assert!((out[16] - (0.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
    }
}
