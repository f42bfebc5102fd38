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
            row[x] = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
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
    resize_u8_region(
        src,
        width,
        height,
        channels,
        out_w,
        out_h,
        filter,
        (0, 0, out_w, out_h),
    )
}

/// Like [`resize_u8`], but computes only the output pixels in `region`
/// (`left, top, width, height`, inside `out_w × out_h`): a centre crop after a
/// resize costs only the pixels it keeps. Each output pixel depends only on
/// its own coefficients, so the result equals cropping the full resize.
/// Accumulates in 32-bit integers, as Pillow does (22-bit weights × 8-bit
/// samples cannot overflow).
#[allow(clippy::too_many_arguments)]
pub fn resize_u8_region(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
    region: (usize, usize, usize, usize),
) -> Vec<u8> {
    let (left, top, rw, rh) = region;
    debug_assert!(left + rw <= out_w && top + rh <= out_h);
    let need_h = out_w != width;
    let need_v = out_h != height;
    let vert = precompute(height, out_h, filter);
    // Rows of the source that the vertical pass (or the crop) will read.
    let (row_first, row_last) = if need_v {
        let first = (top..top + rh).map(|y| vert.bounds[y].0).min().unwrap_or(0);
        let last = (top..top + rh)
            .map(|y| vert.bounds[y].0 + vert.bounds[y].1)
            .max()
            .unwrap_or(0);
        (first, last.max(first))
    } else {
        (top, top + rh)
    };
    // Horizontal pass over those rows, for the region's columns only.
    let mid_w = if need_h { rw } else { width };
    let mid: std::borrow::Cow<[u8]> = if need_h {
        let hc = precompute(width, out_w, filter);
        let mut out = vec![0u8; (row_last - row_first) * rw * channels];
        out.par_chunks_mut(rw * channels)
            .with_min_len(16)
            .enumerate()
            .for_each(|(r, orow)| {
                let y = r + row_first;
                let irow = &src[y * width * channels..(y + 1) * width * channels];
                for (ox, opx) in orow.chunks_exact_mut(channels).enumerate() {
                    let xx = left + ox;
                    let (xmin, count) = hc.bounds[xx];
                    let k = &hc.weights[xx * hc.ksize..xx * hc.ksize + count];
                    let window = &irow[xmin * channels..(xmin + count) * channels];
                    if channels == 3 {
                        let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                        for (px, &w) in window.chunks_exact(3).zip(k) {
                            ss[0] += px[0] as i32 * w;
                            ss[1] += px[1] as i32 * w;
                            ss[2] += px[2] as i32 * w;
                        }
                        opx[0] = clip8(ss[0]);
                        opx[1] = clip8(ss[1]);
                        opx[2] = clip8(ss[2]);
                    } else {
                        for c in 0..channels {
                            let mut ss = 1i32 << (PRECISION_BITS - 1);
                            for (x, &w) in k.iter().enumerate() {
                                ss += window[x * channels + c] as i32 * w;
                            }
                            opx[c] = clip8(ss);
                        }
                    }
                }
            });
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(&src[row_first * width * channels..row_last * width * channels])
    };
    let stride = mid_w * channels;
    // Columns of `mid` the region covers (all of them after a horizontal pass).
    let (c0, c1) = if need_h {
        (0, stride)
    } else {
        (left * channels, (left + rw) * channels)
    };
    if !need_v {
        let mut out = Vec::with_capacity(rh * (c1 - c0));
        for r in mid.chunks_exact(stride) {
            out.extend_from_slice(&r[c0..c1]);
        }
        return out;
    }
    let width_out = c1 - c0;
    let mut out = vec![0u8; rh * width_out];
    out.par_chunks_mut(width_out)
        .with_min_len(16)
        .enumerate()
        .for_each_init(
            || vec![0i32; width_out],
            |acc, (r, orow)| {
                let yy = top + r;
                let (ymin, count) = vert.bounds[yy];
                let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
                acc.iter_mut().for_each(|a| *a = 1 << (PRECISION_BITS - 1));
                for (y, &w) in k.iter().enumerate() {
                    let row = &mid[(ymin + y - row_first) * stride + c0
                        ..(ymin + y - row_first) * stride + c1];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v as i32 * w;
                    }
                }
                for (o, &a) in orow.iter_mut().zip(acc.iter()) {
                    *o = clip8(a);
                }
            },
        );
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
    fn a_region_equals_cropping_the_full_resize() {
        let (w, h) = (53usize, 41usize);
        let src: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        for (ow, oh) in [(31, 24), (53, 20), (30, 41), (80, 60)] {
            let full = resize_u8(&src, w, h, 3, ow, oh, Filter::Bicubic);
            for (l, t, rw, rh) in [
                (0, 0, ow, oh),
                (3, 2, ow - 5, oh - 4),
                (ow / 2, oh / 3, 1, 1),
            ] {
                let part = resize_u8_region(&src, w, h, 3, ow, oh, Filter::Bicubic, (l, t, rw, rh));
                let want: Vec<u8> = (t..t + rh)
                    .flat_map(|y| full[(y * ow + l) * 3..(y * ow + l + rw) * 3].to_vec())
                    .collect();
                assert_eq!(part, want, "{ow}x{oh} region {l},{t} {rw}x{rh}");
            }
        }
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
                let s: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize]
                    .iter()
                    .map(|&w| w as i64)
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }
}
