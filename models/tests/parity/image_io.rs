//! Image loading refuses bad input with a reason that names the file.

use std::path::Path;

use squire_models::image_io::{decode_rgb, load_rgb};

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG that declares `w × h` pixels but carries no image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    out
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let e = decode_rgb(&png_header(30_000, 30_000), Path::new("bomb.png")).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("bomb.png") && msg.contains("30000×30000"),
        "{msg}"
    );
}

#[test]
fn empty_and_non_image_files_are_refused() {
    let e = decode_rgb(b"", Path::new("empty.jpg")).expect_err("empty");
    assert!(e.to_string().contains("empty.jpg") && e.to_string().contains("0 bytes"));
    let e = decode_rgb(
        b"hello, I am a text file renamed .jpg\n",
        Path::new("text.jpg"),
    )
    .expect_err("text");
    assert!(e.to_string().contains("text.jpg"));
    let e = load_rgb(Path::new("/definitely/not/here.jpg")).expect_err("missing");
    assert!(e.to_string().contains("/definitely/not/here.jpg"));
}

#[test]
fn truncated_jpeg_is_an_error_or_a_partial_image_never_a_panic() {
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/astronaut.jpg"),
    )
    .expect("fixture");
    for cut in [10, 100, 600, good.len() / 2] {
        // Either outcome is acceptable; what matters is no panic and a named file on error.
        if let Err(e) = decode_rgb(&good[..cut], Path::new("cut.jpg")) {
            assert!(e.to_string().contains("cut.jpg"));
        }
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 240×160 with orientation 6: displayed (and returned) as 160×240.
    let img = load_rgb(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/rotated-exif6.jpg"),
    )
    .expect("loads");
    assert_eq!(img.dimensions(), (160, 240));
}
