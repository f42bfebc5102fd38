//! EBR grid drawing on fixed inputs (the committed sample photos): layout,
//! letterboxing, marks that read back as their numbers, and a golden image.
//!
//! `SQUIRE_UPDATE_GOLDEN=1` rewrites the golden PNG and the example in
//! docs/ (after a deliberate change to the drawing; look at them first).

use std::path::PathBuf;

use image::{Rgb, RgbImage};
use squire_engine::grid::{draw_grid, read_mark, GridOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn photos() -> Vec<RgbImage> {
    let dir = root().join("models/tests/fixtures/images");
    [
        "astronaut.jpg",
        "chelsea-420.jpg",
        "coffee-progressive.jpg",
        "rocket-444.jpg",
        "rotated-exif6.jpg",
        "grey.jpg",
        "palette.gif",
        "alpha.png",
        "tiny-5x3.png",
    ]
    .iter()
    .map(|f| squire_models::image_io::load_rgb(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
    .collect()
}

#[test]
fn layout_letterboxing_and_marks() {
    let photos = photos();
    let mut wide = RgbImage::from_pixel(200, 50, Rgb([0, 200, 0]));
    wide.put_pixel(0, 0, Rgb([0, 200, 0]));
    let mut images: Vec<&RgbImage> = photos.iter().take(4).collect();
    images.push(&wide);
    let o = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    // Marks 9..13: one and two digits.
    let grid = draw_grid(&images, 9, &o);
    assert_eq!(o.shape(5), (3, 2));
    assert_eq!(grid.dimensions(), (6 + 3 * 102, 6 + 2 * 102));
    for i in 0..5u32 {
        let mark = 9 + i as usize;
        let b = o.mark_box(i % 3, i / 3, mark);
        let digits = mark.to_string().len() as u32;
        assert_eq!(
            read_mark(&grid, b, digits),
            Some(mark),
            "mark {mark} does not read back"
        );
    }
    // The wide green image (cell 5: column 1, row 1) is letterboxed to
    // 96 × 24, centred: background above and below, green in the middle.
    let (x0, y0) = o.cell_origin(1, 1);
    assert_eq!(*grid.get_pixel(x0 + 60, y0 + 48), Rgb([0, 200, 0]));
    assert_eq!(*grid.get_pixel(x0 + 60, y0 + 30), Rgb(o.background));
    assert_eq!(*grid.get_pixel(x0 + 60, y0 + 66), Rgb(o.background));
    // Gaps stay background.
    assert_eq!(*grid.get_pixel(x0 - 3, y0 + 48), Rgb(o.background));
    // A damaged mark does not read back.
    let mut damaged = grid.clone();
    let b = o.mark_box(0, 0, 9);
    for y in b.y..b.y + b.height {
        for x in b.x + b.width / 2..b.x + b.width {
            damaged.put_pixel(x, y, Rgb([255, 221, 0]));
        }
    }
    assert_eq!(read_mark(&damaged, b, 1), None);
}

#[test]
fn default_marks_are_large() {
    // At the default 336-px cell a digit is 35 × 49 px: about 15% of the cell.
    let o = GridOptions::default();
    assert_eq!(o.mark_scale(), 7);
    let b = o.mark_box(0, 0, 16);
    assert!(b.height >= 60 && b.width < o.cell / 2, "{b:?}");
}

#[test]
fn golden_grid() {
    let photos = photos();
    let images: Vec<&RgbImage> = photos.iter().collect();
    let o = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    let grid = draw_grid(&images, 1, &o);
    let golden = root().join("engine/tests/fixtures/grid/golden-3x3-96px.png");
    if std::env::var("SQUIRE_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
        grid.save(&golden).expect("write golden");
        let docs = root().join("docs/ebr-grid.jpg");
        std::fs::create_dir_all(docs.parent().expect("parent")).expect("mkdir");
        draw_grid(&images, 1, &GridOptions::default())
            .save(&docs)
            .expect("write docs example");
    }
    let want = image::open(&golden)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (SQUIRE_UPDATE_GOLDEN=1 writes it)",
                golden.display()
            )
        })
        .to_rgb8();
    assert_eq!(grid.dimensions(), want.dimensions());
    let differing = grid
        .pixels()
        .zip(want.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing,
        0,
        "{differing} pixels differ from {}",
        golden.display()
    );
    for m in 1..=9usize {
        let i = (m - 1) as u32;
        assert_eq!(read_mark(&want, o.mark_box(i % 3, i / 3, m), 1), Some(m));
    }
}
