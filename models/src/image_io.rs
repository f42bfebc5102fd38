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
        let d = mozjpeg::Decompress::builder()
            .with_err(strict_error_mgr())
            .from_mem(bytes)?;
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

/// libjpeg's error handling with one change: "premature end of JPEG data"
/// (a truncated file, which libjpeg only warns about and fills with grey) is
/// an error, as it is in Pillow ("image file is truncated"). Other warnings
/// (extraneous bytes, for instance) are ignored, as Pillow ignores them.
fn strict_error_mgr() -> mozjpeg_sys::jpeg_error_mgr {
    use mozjpeg_sys::{jpeg_common_struct, jpeg_std_error};
    // SAFETY: a zeroed jpeg_error_mgr is what jpeg_std_error expects to fill.
    let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut err) };
    fn message(cinfo: &mut jpeg_common_struct) -> String {
        // SAFETY: libjpeg hands us its own struct with the error manager set.
        unsafe {
            let Some(err) = cinfo.err.as_ref() else {
                return "libjpeg error".into();
            };
            let Some(format) = err.format_message else {
                return format!("libjpeg error {}", err.msg_code);
            };
            let mut buf = [0u8; 80];
            // libjpeg writes the message into the buffer it is given.
            let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]) =
                std::mem::transmute(format);
            format(cinfo, &mut buf);
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
    }
    extern "C-unwind" fn exit(cinfo: &mut jpeg_common_struct) {
        std::panic::resume_unwind(Box::new(message(cinfo)));
    }
    extern "C-unwind" fn emit(cinfo: &mut jpeg_common_struct, level: std::os::raw::c_int) {
        // SAFETY: as above.
        let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code) };
        if level < 0 && code == Some(mozjpeg_sys::JWRN_JPEG_EOF) {
            std::panic::resume_unwind(Box::new(
                "premature end of JPEG data (the file is truncated)".to_string(),
            ));
        }
    }
    err.error_exit = Some(exit);
    err.emit_message = Some(emit);
    err
}

/// What a photo's EXIF block says about when and with what it was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhotoFacts {
    /// `DateTimeOriginal` (else `DateTime`) as seconds since 1970-01-01
    /// 00:00:00, read as written: EXIF times are the camera's local time and
    /// carry no zone, so they are compared as if they were UTC.
    pub taken: Option<i64>,
    /// `Make` and `Model` ("Canon Canon EOS 5D" is given once as "Canon EOS 5D").
    pub camera: Option<String>,
}

/// The EXIF facts of an encoded image (JPEG, PNG, WebP, TIFF, HEIF); empty
/// when it has no EXIF block or the block cannot be read.
pub fn photo_facts(bytes: &[u8]) -> PhotoFacts {
    use exif::{In, Tag, Value};
    let Ok(ex) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return PhotoFacts::default();
    };
    let ascii = |tag: Tag| -> Option<String> {
        match &ex.get_field(tag, In::PRIMARY)?.value {
            Value::Ascii(v) => {
                let s = String::from_utf8_lossy(v.first()?)
                    .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string();
                (!s.is_empty()).then_some(s)
            }
            _ => None,
        }
    };
    let taken = [Tag::DateTimeOriginal, Tag::DateTime]
        .into_iter()
        .find_map(|tag| {
            let Value::Ascii(v) = &ex.get_field(tag, In::PRIMARY)?.value else {
                return None;
            };
            let t = exif::DateTime::from_ascii(v.first()?).ok()?;
            civil_seconds(
                t.year as i64,
                t.month as i64,
                t.day as i64,
                t.hour as i64,
                t.minute as i64,
                t.second as i64,
            )
        });
    let camera = match (ascii(Tag::Make), ascii(Tag::Model)) {
        (Some(make), Some(model)) if model.to_lowercase().starts_with(&make.to_lowercase()) => {
            Some(model)
        }
        (Some(make), Some(model)) => Some(format!("{make} {model}")),
        (make, model) => make.or(model),
    };
    PhotoFacts { taken, camera }
}

/// Seconds since 1970-01-01 00:00:00 of a proleptic Gregorian date and time
/// (no zone); `None` when a field is out of range.
pub fn civil_seconds(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m)
        || d < 1
        || d > days_in[(m - 1) as usize]
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0..61).contains(&ss)
    {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64×48 gradient JPEG (image's encoder, quality 90).
    fn jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    /// `jpeg` with an EXIF APP1 segment holding `fields` right after SOI.
    pub(crate) fn with_exif(jpeg: &[u8], fields: &[exif::Field]) -> Vec<u8> {
        let mut w = exif::experimental::Writer::new();
        fields.iter().for_each(|f| w.push_field(f));
        let mut tiff = std::io::Cursor::new(Vec::new());
        w.write(&mut tiff, false).unwrap();
        let tiff = tiff.into_inner();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(b"Exif\0\0");
        out.extend_from_slice(&tiff);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn ascii(tag: exif::Tag, s: &str) -> exif::Field {
        exif::Field {
            tag,
            ifd_num: exif::In::PRIMARY,
            value: exif::Value::Ascii(vec![s.as_bytes().to_vec()]),
        }
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_naming_the_cause_and_the_whole_one_decodes() {
        let bytes = jpeg();
        let origin = Path::new("cut.jpg");
        assert_eq!(decode_rgb(&bytes, origin).unwrap().dimensions(), (64, 48));
        for keep in [bytes.len() * 6 / 10, 700] {
            let e = decode_rgb(&bytes[..keep], origin).unwrap_err().to_string();
            assert!(
                e.contains("cut.jpg") && e.contains("truncated"),
                "{keep} bytes: {e}"
            );
        }
    }

    #[test]
    fn exif_capture_time_and_camera_are_read() {
        let bytes = with_exif(
            &jpeg(),
            &[
                ascii(exif::Tag::Make, "Canon"),
                ascii(exif::Tag::Model, "Canon EOS 5D"),
                ascii(exif::Tag::DateTimeOriginal, "2019:06:01 12:30:05"),
            ],
        );
        let facts = photo_facts(&bytes);
        assert_eq!(facts.camera.as_deref(), Some("Canon EOS 5D"));
        // 2019-06-01 is day 18048 after 1970-01-01.
        assert_eq!(facts.taken, Some(18_048 * 86_400 + 12 * 3600 + 30 * 60 + 5));
        assert_eq!(
            decode_rgb(&bytes, Path::new("x.jpg")).unwrap().dimensions(),
            (64, 48)
        );
        let other = with_exif(
            &jpeg(),
            &[
                ascii(exif::Tag::Make, "NIKON"),
                ascii(exif::Tag::Model, "D750"),
            ],
        );
        assert_eq!(
            photo_facts(&other),
            PhotoFacts {
                taken: None,
                camera: Some("NIKON D750".into())
            }
        );
        assert_eq!(photo_facts(&jpeg()), PhotoFacts::default());
        assert_eq!(civil_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(civil_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(civil_seconds(2019, 2, 29, 0, 0, 0), None);
    }
}
