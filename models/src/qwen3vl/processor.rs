//! Qwen3-VL's image preprocessing, as transformers' Qwen2-VL image processor
//! (Pillow backend) does it: resize to a multiple of patch × merge pixels
//! inside the configured pixel budget (Pillow-exact bicubic), rescale,
//! normalise, and cut into patches in merge-block order, each repeated over
//! the temporal patch.

use image::RgbImage;

use super::config::ImageProcessorConfig;
use crate::error::{ModelError, Result};
use crate::resample::{resize_u8, Filter};

/// The patches of one image and its grid.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    /// `grid_h · grid_w` rows of `channels · temporal · patch · patch` values.
    pub values: Vec<f32>,
    /// Values per row.
    pub row_len: usize,
    /// Patch rows.
    pub grid_h: usize,
    /// Patch columns.
    pub grid_w: usize,
}

/// transformers' `smart_resize`: the height and width, multiples of
/// `factor`, closest to the input's aspect with `min_pixels ≤ h·w ≤ max_pixels`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(ModelError::InvalidRequest(format!(
            "image of {width}×{height} pixels"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ModelError::InvalidRequest(format!(
            "image of {width}×{height}: aspect ratio over 200"
        )));
    }
    // Python's round() rounds halves to even.
    let round_even = |x: f64| {
        let r = x.round();
        if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
            r - x.signum()
        } else {
            r
        }
    };
    let mut hb = round_even(h / f) * f;
    let mut wb = round_even(w / f) * f;
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// Preprocesses one RGB image for a tower with these patch sizes.
pub fn preprocess(
    img: &RgbImage,
    cfg: &ImageProcessorConfig,
    patch: usize,
    merge: usize,
    temporal: usize,
) -> Result<ImagePatches> {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let factor = patch * merge;
    let (h, w) = smart_resize(
        h0,
        w0,
        factor,
        cfg.size.shortest_edge,
        cfg.size.longest_edge,
    )?;
    let filter = Filter::from_pil_code(cfg.resample).ok_or_else(|| {
        ModelError::InvalidRequest(format!(
            "preprocessor resample code {} is not bilinear (2) or bicubic (3)",
            cfg.resample
        ))
    })?;
    let pixels = resize_u8(img.as_raw(), w0, h0, 3, w, h, filter);
    let (gh, gw) = (h / patch, w / patch);
    let row_len = 3 * temporal * patch * patch;
    let mut values = vec![0f32; gh * gw * row_len];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / cfg.image_std[c]);
    let mut row = 0;
    // Patch order: merge blocks row-major, then the patches inside a block;
    // inside a patch: channel, temporal copy, patch row, patch column.
    for bh in 0..gh / merge {
        for bw in 0..gw / merge {
            for mh in 0..merge {
                for mw in 0..merge {
                    let (py0, px0) = ((bh * merge + mh) * patch, (bw * merge + mw) * patch);
                    let dst = &mut values[row * row_len..(row + 1) * row_len];
                    let mut at = 0;
                    for c in 0..3 {
                        for _ in 0..temporal {
                            for y in 0..patch {
                                for x in 0..patch {
                                    let v =
                                        pixels[((py0 + y) * w + px0 + x) * 3 + c] as f32 / 255.0;
                                    dst[at] = (v - cfg.image_mean[c]) * scale[c];
                                    at += 1;
                                }
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
    Ok(ImagePatches {
        values,
        row_len,
        grid_h: gh,
        grid_w: gw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_transformers() {
        // Values from transformers' smart_resize (factor 28 / 32).
        assert_eq!(smart_resize(300, 451, 16, 1024, 12288).unwrap(), (80, 128));
        assert_eq!(
            smart_resize(224, 224, 28, 3136, 1_003_520).unwrap(),
            (224, 224)
        );
        assert_eq!(smart_resize(10, 10, 28, 3136, 1_003_520).unwrap(), (56, 56));
        assert_eq!(
            smart_resize(1000, 2000, 32, 65_536, 262_144).unwrap(),
            (352, 704)
        );
        assert!(smart_resize(1, 500, 28, 3136, 1_003_520).is_err());
        assert!(smart_resize(0, 5, 28, 3136, 1_003_520).is_err());
    }
}
