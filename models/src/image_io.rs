//! Image loading shared by every encoder, the indexer and the demo: decode,
//! apply EXIF orientation, convert to 8-bit RGB the way Pillow's
//! `Image.convert("RGB")` does, and refuse decompression bombs.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{ModelError, Result};

/// Limits applied before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width or height in pixels.
    pub max_side: u32,
    /// Largest accepted number of pixels (width × height).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 16384 px per side and 100 MP cover every camera; a 30000×30000 header is refused.
        DecodeLimits {
            max_side: 16_384,
            max_pixels: 100_000_000,
        }
    }
}

/// Reads an image file and returns it as 8-bit RGB with EXIF orientation applied.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_with(path, DecodeLimits::default())
}

/// Like [`load_rgb`] with explicit limits.
pub fn load_rgb_with(path: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    decode_rgb_with(&bytes, path, limits)
}

/// Decodes in-memory bytes (an upload, a parquet cell). `origin` names the source in errors.
pub fn decode_rgb(bytes: &[u8], origin: &Path) -> Result<RgbImage> {
    decode_rgb_with(bytes, origin, DecodeLimits::default())
}

/// Like [`decode_rgb`] with explicit limits.
pub fn decode_rgb_with(bytes: &[u8], origin: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    let err = |message: String| ModelError::Image {
        path: origin.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Err(err("file is empty (0 bytes)".into()));
    }
    // PNG declares its size up front; check it before any decoder reads further.
    if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        check_size(w, h, limits).map_err(err)?;
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(err("not a recognised image format".into()));
    }
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, limits).map_err(err)?;
    let mut alloc = image::Limits::default();
    alloc.max_image_width = Some(limits.max_side);
    alloc.max_image_height = Some(limits.max_side);
    alloc.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    decoder
        .set_limits(alloc)
        .map_err(|e| err(format!("limits: {e}")))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = if is_jpeg {
        drop(decoder);
        DynamicImage::ImageRgb8(
            decode_jpeg_like_pillow(bytes).map_err(|m| err(format!("cannot decode JPEG: {m}")))?,
        )
    } else {
        DynamicImage::from_decoder(decoder).map_err(|e| err(format!("cannot decode: {e}")))?
    };
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

fn check_size(w: u32, h: u32, limits: DecodeLimits) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has zero size ({w}×{h})"));
    }
    if w > limits.max_side || h > limits.max_side || (w as u64) * (h as u64) > limits.max_pixels {
        return Err(format!(
            "image is {w}×{h} pixels, over the limit of {} px per side / {} pixels (possible decompression bomb)",
            limits.max_side, limits.max_pixels
        ));
    }
    Ok(())
}

/// Decodes a JPEG with libjpeg-turbo's default settings (accurate integer
/// IDCT, fancy upsampling), exactly as Pillow does, and converts CMYK the way
/// Pillow's `convert("RGB")` does (Adobe-inverted samples, `(255−C)(255−K)/255`).
fn decode_jpeg_like_pillow(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use mozjpeg::decompress::Format;
    // libjpeg reports fatal errors by unwinding; turn them into an error value.
    let run = || -> std::io::Result<RgbImage> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let (w, h) = (d.width() as u32, d.height() as u32);
        let rgb = match d.image()? {
            Format::RGB(mut s) => {
                let px = s.read_scanlines::<u8>()?;
                let _ = s.finish();
                px
            }
            Format::Gray(mut s) => {
                let px = s.read_scanlines::<u8>()?;
                let _ = s.finish();
                px.iter().flat_map(|&v| [v, v, v]).collect()
            }
            Format::CMYK(mut s) => {
                let px = s.read_scanlines::<u8>()?;
                let _ = s.finish();
                let mut out = Vec::with_capacity(px.len() / 4 * 3);
                for p in px.chunks_exact(4) {
                    // Pillow reads CMYK JPEGs as inverted ("CMYK;I"): its K is 255 − raw,
                    // so its 255 − K is the raw sample.
                    let nk = p[3] as i32;
                    for &c in &p[..3] {
                        let c = 255 - c as i32;
                        let t = c * nk + 128;
                        let muldiv = ((t >> 8) + t) >> 8;
                        out.push((nk - muldiv).clamp(0, 255) as u8);
                    }
                }
                out
            }
        };
        RgbImage::from_raw(w, h, rgb).ok_or_else(|| bad("decoded size does not match the header"))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into())),
    }
}

/// Converts any decoded image to 8-bit RGB as Pillow's `convert("RGB")` does:
/// grey is replicated, alpha is dropped (not composited), 16-bit samples are
/// scaled to 8 bits.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(l) => {
            let (w, h) = l.dimensions();
            let mut out = Vec::with_capacity((w * h * 3) as usize);
            for &v in l.as_raw() {
                out.extend_from_slice(&[v, v, v]);
            }
            RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
        }
        DynamicImage::ImageLumaA8(la) => {
            let (w, h) = la.dimensions();
            let mut out = Vec::with_capacity((w * h * 3) as usize);
            for px in la.as_raw().chunks_exact(2) {
                out.extend_from_slice(&[px[0], px[0], px[0]]);
            }
            RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
        }
        DynamicImage::ImageRgba8(rgba) => {
            let (w, h) = rgba.dimensions();
            let mut out = Vec::with_capacity((w * h * 3) as usize);
            for px in rgba.as_raw().chunks_exact(4) {
                out.extend_from_slice(&px[..3]);
            }
            RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
        }
        other => other.to_rgb8(),
    }
}
