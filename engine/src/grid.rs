//! Candidate grids for batch reranking (SQUARE's EBR): the top candidates
//! drawn as one image, each letterboxed into an equal cell with a large
//! numbered mark in its top-left corner.
//!
//! Marks are black digits on a yellow badge with a black border: legible on
//! any photo. Digits come from a built-in 5×7 pixel font scaled by an
//! integer factor, so a grid is the same bytes on every machine (no font
//! files, no rasteriser differences) and [`read_mark`] can read a mark back.

use image::{imageops, Rgb, RgbImage};
use imageproc::drawing::draw_filled_rect_mut;
use imageproc::rect::Rect;

/// How a grid is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct GridOptions {
    /// Columns; 0 picks the smallest square that holds the candidates.
    pub columns: u32,
    /// Cells per grid image; candidates beyond it go to further grids.
    pub cells: usize,
    /// Side of a square cell in pixels.
    pub cell: u32,
    /// Gap between cells (and around the grid) in pixels.
    pub gap: u32,
    /// Height of a mark's badge as a fraction of the cell side.
    pub mark_height: f32,
    /// Background and letterbox colour.
    pub background: [u8; 3],
}

impl Default for GridOptions {
    /// Nine 336-px cells (3 × 3, a 1,020-px square: about what current MLLMs
    /// take in without tiling), marks one fifth of the cell high.
    fn default() -> Self {
        GridOptions {
            columns: 0,
            cells: 9,
            cell: 336,
            gap: 6,
            mark_height: 0.2,
            background: [40, 40, 40],
        }
    }
}

/// Badge fill and ink.
const BADGE: Rgb<u8> = Rgb([255, 221, 0]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// The 5×7 digits, one row per byte (bit 4 = leftmost pixel).
const DIGITS: [[u8; 7]; 10] = [
    [
        0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
    ],
    [
        0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
    ],
    [
        0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
    ],
    [
        0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
    ],
    [
        0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
    ],
    [
        0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
    ],
    [
        0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
    ],
    [
        0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
    ],
    [
        0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
    ],
    [
        0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
    ],
];

/// Where one mark sits: the badge rectangle and the font's pixel size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkBox {
    /// Badge left edge.
    pub x: u32,
    /// Badge top edge.
    pub y: u32,
    /// Badge width.
    pub width: u32,
    /// Badge height.
    pub height: u32,
    /// Side of one font pixel.
    pub scale: u32,
}

impl GridOptions {
    /// (columns, rows) of a grid holding `n` candidates.
    pub fn shape(&self, n: usize) -> (u32, u32) {
        let n = n.max(1) as u32;
        let cols = if self.columns > 0 {
            self.columns
        } else {
            (1..).find(|c| c * c >= n).unwrap_or(1)
        };
        (cols, n.div_ceil(cols))
    }

    /// The font pixel size of the marks.
    pub fn mark_scale(&self) -> u32 {
        ((self.cell as f32 * self.mark_height) / 9.0)
            .floor()
            .max(2.0) as u32
    }

    /// The badge of mark `mark` in cell (`col`, `row`).
    pub fn mark_box(&self, col: u32, row: u32, mark: usize) -> MarkBox {
        let s = self.mark_scale();
        let digits = mark.to_string().len() as u32;
        let (x0, y0) = self.cell_origin(col, row);
        MarkBox {
            x: x0,
            y: y0,
            width: digits * 6 * s + 3 * s,
            height: 9 * s + s,
            scale: s,
        }
    }

    /// The top-left pixel of cell (`col`, `row`).
    pub fn cell_origin(&self, col: u32, row: u32) -> (u32, u32) {
        (
            self.gap + col * (self.cell + self.gap),
            self.gap + row * (self.cell + self.gap),
        )
    }
}

/// Draws `images` as one grid, marked `first_mark`, `first_mark + 1`, ...
/// in reading order (row by row).
pub fn draw_grid(images: &[&RgbImage], first_mark: usize, options: &GridOptions) -> RgbImage {
    let (cols, rows) = options.shape(images.len());
    let side = |n: u32| options.gap + n * (options.cell + options.gap);
    let mut grid = RgbImage::from_pixel(side(cols), side(rows), Rgb(options.background));
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i as u32 % cols, i as u32 / cols);
        let (x0, y0) = options.cell_origin(col, row);
        letterbox(&mut grid, img, x0, y0, options.cell);
        draw_mark(
            &mut grid,
            options.mark_box(col, row, first_mark + i),
            first_mark + i,
        );
    }
    grid
}

/// Scales `img` to fit a `cell`-sided square at (x0, y0), centred.
fn letterbox(grid: &mut RgbImage, img: &RgbImage, x0: u32, y0: u32, cell: u32) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let s = (cell as f64 / w as f64).min(cell as f64 / h as f64);
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).clamp(1, cell),
        ((h as f64 * s).round() as u32).clamp(1, cell),
    );
    let scaled = imageops::resize(img, nw, nh, imageops::FilterType::CatmullRom);
    imageops::replace(
        grid,
        &scaled,
        (x0 + (cell - nw) / 2) as i64,
        (y0 + (cell - nh) / 2) as i64,
    );
}

fn draw_mark(grid: &mut RgbImage, b: MarkBox, mark: usize) {
    let s = b.scale;
    let border = (s / 2).max(1);
    draw_filled_rect_mut(
        grid,
        Rect::at(b.x as i32, b.y as i32).of_size(b.width, b.height),
        INK,
    );
    draw_filled_rect_mut(
        grid,
        Rect::at((b.x + border) as i32, (b.y + border) as i32)
            .of_size(b.width - 2 * border, b.height - 2 * border),
        BADGE,
    );
    for (d, ch) in mark.to_string().bytes().enumerate() {
        let glyph = DIGITS[(ch - b'0') as usize];
        let gx = b.x + 2 * s + d as u32 * 6 * s;
        let gy = b.y + (b.height - 7 * s) / 2;
        for (r, bits) in glyph.iter().enumerate() {
            for c in 0..5u32 {
                if bits & (0b10000 >> c) != 0 {
                    draw_filled_rect_mut(
                        grid,
                        Rect::at((gx + c * s) as i32, (gy + r as u32 * s) as i32).of_size(s, s),
                        INK,
                    );
                }
            }
        }
    }
}

/// Reads the number in the badge `b` back from a drawn grid by sampling
/// the centre of every font pixel: `None` when any digit is not exactly a
/// glyph of the font (the mark is damaged, clipped or covered).
pub fn read_mark(grid: &RgbImage, b: MarkBox, digits: u32) -> Option<usize> {
    let s = b.scale;
    let gy = b.y + (b.height - 7 * s) / 2;
    let mut value = 0usize;
    for d in 0..digits {
        let gx = b.x + 2 * s + d * 6 * s;
        let mut glyph = [0u8; 7];
        for (r, row) in glyph.iter_mut().enumerate() {
            for c in 0..5u32 {
                let p = grid.get_pixel_checked(gx + c * s + s / 2, gy + r as u32 * s + s / 2)?;
                if *p == INK {
                    *row |= 0b10000 >> c;
                } else if *p != BADGE {
                    return None;
                }
            }
        }
        value = value * 10 + DIGITS.iter().position(|g| *g == glyph)?;
    }
    Some(value)
}
