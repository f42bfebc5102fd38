//! Pillow-compatible 8-bit resampling.
//!
//! Pillow's `Image.resize(..., BICUBIC)` is a separable convolution whose
//! kernel widens with the down-scaling factor (antialiasing), evaluated in
//! fixed point with 22 fractional bits and rounded to 8 bits after each pass
//! (horizontal first, then vertical). Reproducing that arithmetic exactly is
//! what makes our pixels equal to the reference `CLIPImageProcessor`'s.

use rayon::prelude::*;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resampling filters with Pillow's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `BICUBIC` (Keys cubic, a = -0.5, support 2).
    Bicubic,
    /// Pillow `BILINEAR` (triangle, support 1).
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }

    /// Maps Pillow's numeric resample codes (as stored in `preprocessor_config.json`).
    pub fn from_pil_code(code: u32) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
}

/// Fixed-point coefficients for one axis: for each output index, the first
/// input index and the integer weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero with a +0.5 offset, then clamps.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax_abs = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let count = xmax_abs.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..count {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            row[x] = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
        }
        bounds.push((xmin, count));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(v: i64) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// Resizes an interleaved 8-bit image with `channels` samples per pixel to
/// `out_w × out_h`, bit-exactly as Pillow does.
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    let need_h = out_w != width;
    let need_v = out_h != height;
    let vert = precompute(height, out_h, filter);
    // Rows of the source that the vertical pass will read.
    let (row_first, row_last) = if need_v {
        let first = vert.bounds.first().map(|b| b.0).unwrap_or(0);
        let last = vert.bounds.last().map(|b| b.0 + b.1).unwrap_or(height);
        (first, last)
    } else {
        (0, height)
    };

    let horiz = need_h.then(|| {
        let hc = precompute(width, out_w, filter);
        let rows = row_last - row_first;
        let mut out = vec![0u8; rows * out_w * channels];
        out.par_chunks_mut(out_w * channels).enumerate().for_each(|(r, orow)| {
            let y = r + row_first;
            let irow = &src[y * width * channels..(y + 1) * width * channels];
            for xx in 0..out_w {
                let (xmin, count) = hc.bounds[xx];
                let k = &hc.weights[xx * hc.ksize..xx * hc.ksize + count];
                for c in 0..channels {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &w) in k.iter().enumerate() {
                        ss += irow[(xmin + x) * channels + c] as i64 * w as i64;
                    }
                    orow[xx * channels + c] = clip8(ss);
                }
            }
        });
        out
    });
    if !need_v {
        return horiz.unwrap_or_else(|| src.to_vec());
    }
    let (mid, mid_w, mid_first) = match &horiz {
        Some(h) => (&h[..], out_w, row_first),
        None => (src, width, 0usize),
    };
    let stride = mid_w * channels;
    let mut out = vec![0u8; out_h * stride];
    out.par_chunks_mut(stride).enumerate().for_each(|(yy, orow)| {
        let (ymin, count) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        let base = ymin - mid_first;
        for (i, o) in orow.iter_mut().enumerate() {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                ss += mid[(base + y) * stride + i] as i64 * w as i64;
            }
            *o = clip8(ss);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..48).map(|v| v as u8).collect();
        assert_eq!(resize_u8(&src, 4, 4, 3, 4, 4, Filter::Bicubic), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 37 * 23 * 3];
        let out = resize_u8(&src, 37, 23, 3, 11, 7, Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 200));
        let up = resize_u8(&src, 37, 23, 3, 80, 50, Filter::Bicubic);
        assert!(up.iter().all(|&v| v == 200));
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(500, 298), (375, 224), (32, 224), (7, 3)] {
            let c = precompute(i, o, Filter::Bicubic);
            for xx in 0..o {
                let s: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().map(|&w| w as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.ksize as i64, "{i}->{o} at {xx}: {s}");
            }
        }
    }
}
