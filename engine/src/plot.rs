//! Bar charts of metrics per stage as PNG images, drawn with a built-in
//! 5×7 pixel font (so a chart is the same bytes on every machine and needs
//! no font file): one group of bars per metric, one bar per stage.

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_filled_rect_mut;
use imageproc::rect::Rect;

/// Rows of a 5×7 glyph, the top row first, the leftmost pixel in bit 4.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '@' => [0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ' ' => [0; 7],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Width in pixels of `text` at `scale` (6 columns per character, the last gap dropped).
pub fn text_width(text: &str, scale: u32) -> u32 {
    (text.chars().count() as u32 * 6).saturating_sub(1) * scale
}

/// Draws `text` with its top-left corner at (x, y), `scale` pixels per font pixel.
pub fn draw_text(img: &mut RgbImage, text: &str, x: i32, y: i32, scale: u32, colour: Rgb<u8>) {
    let s = scale.max(1) as i32;
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        let x0 = x + i as i32 * 6 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    draw_filled_rect_mut(
                        img,
                        Rect::at(x0 + col * s, y + row as i32 * s).of_size(s as u32, s as u32),
                        colour,
                    );
                }
            }
        }
    }
}

const PALETTE: [Rgb<u8>; 6] = [
    Rgb([90, 110, 140]),
    Rgb([31, 95, 191]),
    Rgb([214, 120, 30]),
    Rgb([40, 150, 80]),
    Rgb([170, 60, 140]),
    Rgb([120, 120, 40]),
];
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([220, 220, 220]);

/// A grouped bar chart of values in [0, 1]: one group per `groups` entry
/// (e.g. a metric), one bar per series (e.g. a stage), each bar labelled
/// with its value; a legend names the series.
pub fn bar_chart(title: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> RgbImage {
    let (bar, gap, left, top, plot_h) = (34u32, 30u32, 70u32, 70u32, 300u32);
    let group_w = bar * series.len().max(1) as u32 + gap;
    let legend_w: u32 = series.iter().map(|(n, _)| text_width(n, 2) + 40).sum();
    let width = (left + group_w * groups.len().max(1) as u32 + 20)
        .max(text_width(title, 2) + 40)
        .max(legend_w + left);
    let height = top + plot_h + 90;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    draw_text(&mut img, title, 20, 16, 2, INK);
    // Legend.
    let mut lx = left as i32;
    for (i, (name, _)) in series.iter().enumerate() {
        draw_filled_rect_mut(
            &mut img,
            Rect::at(lx, 44).of_size(14, 14),
            PALETTE[i % PALETTE.len()],
        );
        draw_text(&mut img, name, lx + 20, 45, 2, INK);
        lx += text_width(name, 2) as i32 + 40;
    }
    // Axis and grid lines at 0, 0.25, ..., 1.
    let y_of =
        |v: f64| top as i32 + plot_h as i32 - (v.clamp(0.0, 1.0) * plot_h as f64).round() as i32;
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let y = y_of(v);
        draw_filled_rect_mut(
            &mut img,
            Rect::at(left as i32, y).of_size(width - left - 10, 1),
            GRID,
        );
        let label = format!("{v:.2}");
        draw_text(
            &mut img,
            &label,
            left as i32 - 8 - text_width(&label, 2) as i32,
            y - 7,
            2,
            INK,
        );
    }
    draw_filled_rect_mut(
        &mut img,
        Rect::at(left as i32, top as i32).of_size(2, plot_h + 1),
        INK,
    );
    for (g, name) in groups.iter().enumerate() {
        let gx = left as i32 + 10 + (g as u32 * group_w) as i32;
        for (s, (_, values)) in series.iter().enumerate() {
            let Some(&v) = values.get(g) else { continue };
            if !v.is_finite() {
                continue;
            }
            let x = gx + (s as u32 * bar) as i32;
            let y = y_of(v);
            let h = (top as i32 + plot_h as i32 - y).max(1) as u32;
            draw_filled_rect_mut(
                &mut img,
                Rect::at(x, y).of_size(bar - 4, h),
                PALETTE[s % PALETTE.len()],
            );
            let label = format!("{:.0}", v * 100.0);
            draw_text(
                &mut img,
                &label,
                x + (bar as i32 - 4 - text_width(&label, 1) as i32) / 2,
                y - 10,
                1,
                INK,
            );
        }
        let label_x = gx + (group_w as i32 - gap as i32 - text_width(name, 2) as i32) / 2;
        draw_text(
            &mut img,
            name,
            label_x.max(gx - 10),
            (top + plot_h + 12) as i32,
            2,
            INK,
        );
    }
    draw_text(
        &mut img,
        "BAR LABELS: VALUE X 100",
        left as i32,
        (top + plot_h + 50) as i32,
        1,
        INK,
    );
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_have_the_heights_of_their_values() {
        let img = bar_chart(
            "T2I",
            &["R@1".into()],
            &[
                ("first".into(), vec![0.5]),
                ("superglobal".into(), vec![1.0]),
            ],
        );
        // The first bar spans the lower half of the 300-px plot: its middle column
        // is coloured at 75% height and white above 50%.
        let x = 70 + 10 + 15;
        let (top, h) = (70, 300);
        assert_eq!(*img.get_pixel(x, top + h - 10), PALETTE[0]);
        assert_eq!(*img.get_pixel(x, top + h / 2 + 5), PALETTE[0]);
        assert_ne!(*img.get_pixel(x, top + h / 2 - 30), PALETTE[0]);
        // The second reaches the top.
        assert_eq!(*img.get_pixel(x + 34, top + 5), PALETTE[1]);
    }

    #[test]
    fn every_label_character_has_a_glyph() {
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:@-+=/_()%".chars() {
            assert_ne!(glyph(c), glyph('~'), "{c} falls back to the unknown glyph");
        }
        assert_eq!(text_width("R@10", 2), (4 * 6 - 1) * 2);
    }
}
