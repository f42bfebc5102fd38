//! Fused, multi-threaded f32 building blocks for transformer encoders on the
//! CPU: matrix products with bias and residual folded in, layer norm,
//! activations and multi-head attention over preallocated buffers.
//!
//! These exist because the generic tensor path allocates a fresh tensor per
//! elementwise op and runs those ops on one thread; here each step is one
//! pass over memory on every core.

use gemm::Parallelism;
use rayon::prelude::*;

use squire_kernels::cpu::{
    dot_f32, packed_product, team_for_each, team_for_each_rows, team_threads, PackedRows,
    SharedMut, TileInit,
};

use crate::clip::Activation;

/// A dense layer. Where the CPU runs the kernels crate's packed product
/// (x86-64 with AVX2 and FMA), its weight is stored strip-major for it
/// ([`PackedRows`]); otherwise transposed (`in × out`, row-major) for `gemm`.
pub(crate) struct DenseT {
    weight: Weight,
    pub bias: Option<Vec<f32>>,
    pub inp: usize,
    pub out: usize,
}

/// A dense layer's weight in the layout its product reads.
enum Weight {
    Packed(PackedRows),
    Transposed(Vec<f32>),
}

impl DenseT {
    /// Builds from a PyTorch-layout weight (`out × in`, row-major).
    pub fn from_torch(w: &[f32], bias: Option<Vec<f32>>, out: usize, inp: usize) -> Self {
        let weight = match PackedRows::new(w, out, inp) {
            Some(p) => Weight::Packed(p),
            None => {
                let mut w_t = vec![0f32; out * inp];
                for o in 0..out {
                    for i in 0..inp {
                        w_t[i * out + o] = w[o * inp + i];
                    }
                }
                Weight::Transposed(w_t)
            }
        };
        DenseT {
            weight,
            bias,
            inp,
            out,
        }
    }
}

fn threads() -> Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// `dst (rows × out) = act(x (rows × in) · W + b)`, or `dst += x · W + b` when
/// `accumulate` is set (the residual connection, fused). Bias, residual and
/// activation are applied inside the product's tiles where the packed kernel runs.
pub(crate) fn dense(
    x: &[f32],
    rows: usize,
    layer: &DenseT,
    dst: &mut [f32],
    accumulate: bool,
    act: Option<Activation>,
) {
    let (k, n) = (layer.inp, layer.out);
    assert!(
        x.len() >= rows * k && dst.len() >= rows * n,
        "dense: buffer sizes"
    );
    let w_t = match &layer.weight {
        Weight::Packed(p) => {
            let init = TileInit {
                bias: layer.bias.as_deref(),
                accumulate,
            };
            match act {
                Some(a) => packed_product(x, rows, p, init, &|row| activate_slice(row, a), dst),
                None => packed_product(x, rows, p, init, &|_| {}, dst),
            }
            return;
        }
        Weight::Transposed(w_t) => w_t,
    };
    let read_dst = accumulate || layer.bias.is_some();
    if let Some(b) = &layer.bias {
        if accumulate {
            dst.par_chunks_mut(n)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(d, &bv)| *d += bv));
        } else {
            dst.par_chunks_mut(n).for_each(|row| row.copy_from_slice(b));
        }
    }
    // SAFETY: all pointers cover rows×k, k×n and rows×n elements with the strides given.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            x.as_ptr(),
            1,
            k as isize,
            w_t.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads(),
        );
    }
    if let Some(a) = act {
        activate(&mut dst[..rows * n], a);
    }
}

/// A per-thread pool of `f32` buffers that hot paths borrow instead of
/// allocating: large fresh buffers come from the kernel as zeroed pages,
/// faulted in and cleared again on every forward pass.
pub(crate) type ScratchSlot = std::thread::LocalKey<std::cell::RefCell<Vec<Vec<f32>>>>;

/// Lends `N` buffers of `lens` values from `slot` to `f` (their contents are
/// whatever the last user left: `f` must write before it reads), then keeps
/// them for the next call on this thread. A nested call on the same slot
/// finds it empty and allocates.
pub(crate) fn with_scratch<const N: usize, R>(
    slot: &'static ScratchSlot,
    lens: [usize; N],
    f: impl FnOnce(&mut [Vec<f32>]) -> R,
) -> R {
    let mut bufs = slot.with(|c| std::mem::take(&mut *c.borrow_mut()));
    bufs.resize_with(N.max(bufs.len()), Vec::new);
    for (b, &len) in bufs.iter_mut().zip(&lens) {
        b.resize(len, 0.0);
    }
    let out = f(&mut bufs[..N]);
    slot.with(|c| *c.borrow_mut() = bufs);
    out
}

/// Row-wise layer norm: `dst = (x − mean) / sqrt(var + eps) · γ + β`.
pub(crate) fn layer_norm(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    dst: &mut [f32],
) {
    let rows = x.len().min(dst.len()) / width.max(1);
    team_for_each_rows(
        &mut dst[..rows * width],
        width,
        rows_per_task(rows),
        |r0, block| {
            for (r, d) in block.chunks_exact_mut(width).enumerate() {
                let row = &x[(r0 + r) * width..(r0 + r + 1) * width];
                let n = width as f32;
                let mean = lane_sum(row, |v| v) / n;
                let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
                let inv = 1.0 / (var + eps).sqrt();
                for i in 0..width {
                    d[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
                }
            }
        },
    );
}

/// `Σ f(v)` over `row` in 16 independent partial sums, which the compiler
/// turns into vector additions (a plain iterator sum is one serial chain of
/// dependent additions: 768 of them per row made layer norm 3× slower).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for f32 in a form the compiler vectorises (Cephes-style range
/// reduction and a degree-6 polynomial; relative error below 2e-7 on the
/// clamped range [−87, 88]).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer with the 1.5·2^23 trick: the
    // shifted sum holds n in its low mantissa bits, so 2^n is built from
    // those bits (a float → int cast would not vectorise: Rust's saturating
    // `as` becomes scalar code per lane).
    let t = x * std::f32::consts::LOG2_E;
    let shifted = t + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_452 + r * 0.001_388_89)))));
    let bits = shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23;
    p * f32::from_bits(bits)
}

fn quick_gelu(c: &mut [f32]) {
    c.iter_mut()
        .for_each(|v| *v /= 1.0 + exp_approx(-1.702 * *v));
}

/// [`quick_gelu`] eight lanes at a time: the same range reduction and
/// polynomial as [`exp_approx`], evaluated with FMA (so within a few ulps
/// of the scalar form, not bit-identical).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quick_gelu_avx2(c: &mut [f32]) {
    use std::arch::x86_64::*;
    let chunks = c.len() / 8;
    let ptr = c.as_mut_ptr();
    let one = _mm256_set1_ps(1.0);
    for i in 0..chunks {
        let p = ptr.add(i * 8);
        let x = _mm256_loadu_ps(p);
        let z = _mm256_min_ps(
            _mm256_max_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(-1.702)),
                _mm256_set1_ps(-87.0),
            ),
            _mm256_set1_ps(88.0),
        );
        let shifted = _mm256_fmadd_ps(
            z,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(12_582_912.0),
        );
        let n = _mm256_sub_ps(shifted, _mm256_set1_ps(12_582_912.0));
        let r = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(1.428_606_8e-6),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), z),
        );
        let mut poly = _mm256_set1_ps(0.001_388_89);
        for coef in [0.008_333_452f32, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0] {
            poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(coef));
        }
        let bits = _mm256_slli_epi32::<23>(_mm256_sub_epi32(
            _mm256_castps_si256(shifted),
            _mm256_set1_epi32(0x4B40_0000 - 127),
        ));
        let e = _mm256_mul_ps(poly, _mm256_castsi256_ps(bits));
        _mm256_storeu_ps(p, _mm256_div_ps(x, _mm256_add_ps(one, e)));
    }
    quick_gelu(&mut c[chunks * 8..])
}

/// Applies the activation in place, in parallel.
pub(crate) fn activate(x: &mut [f32], act: Activation) {
    const CHUNK: usize = 16 * 1024;
    x.par_chunks_mut(CHUNK).for_each(|c| activate_slice(c, act));
}

/// Applies the activation to one slice on the calling thread.
#[inline(always)]
fn activate_slice(c: &mut [f32], act: Activation) {
    match act {
        Activation::QuickGelu => {
            #[cfg(target_arch = "x86_64")]
            if squire_kernels::cpu::packed_supported() {
                // SAFETY: the CPU supports AVX2 and FMA.
                unsafe { quick_gelu_avx2(c) };
                return;
            }
            quick_gelu(c)
        }
        Activation::Relu6 => c.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        Activation::Gelu => c
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
        Activation::GeluTanh => c.iter_mut().for_each(|v| {
            let x = *v;
            let inner = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            *v = 0.5 * x * (1.0 + inner.tanh());
        }),
    }
}

/// The error function, to about 1e-7 absolute (W. J. Cody's rational
/// approximations are overkill here; this is Abramowitz & Stegun 7.1.26
/// refined in f64).
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let s = x.signum();
    let a = x.abs();
    // Numerical Recipes erfc approximation (fractional error < 1.2e-7).
    let t = 1.0 / (1.0 + 0.5 * a);
    let y = t
        * (-a * a - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (s * (1.0 - y)) as f32
}

/// Multi-head self-attention over packed `qkv` rows (`batch·seq × 3·width`,
/// the q, k and v projections side by side), writing `out` (`batch·seq × width`).
/// With `causal`, position i attends to positions ≤ i only.
pub(crate) fn attention(
    qkv: &[f32],
    batch: usize,
    seq: usize,
    width: usize,
    heads: usize,
    causal: bool,
    out: &mut [f32],
) {
    let dh = width / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let stride = 3 * width;
    let out_ptr = SharedMut::new(out.as_mut_ptr());
    team_for_each(batch * heads, |bh| {
        ATTENTION_SCORES.with_borrow_mut(|scores| {
            scores.resize(seq * seq, 0.0);
            let (b, h) = (bh / heads, bh % heads);
            let base = b * seq * stride;
            let q = qkv[base + h * dh..].as_ptr();
            let k = qkv[base + width + h * dh..].as_ptr();
            let v = qkv[base + 2 * width + h * dh..].as_ptr();
            // SAFETY: q/k/v index rows base + i·stride + [0, dh) for i < seq, inside qkv;
            // the output block rows b·seq.., columns h·dh.. are written by this task only.
            unsafe {
                gemm::gemm(
                    seq,
                    seq,
                    dh,
                    scores.as_mut_ptr(),
                    1,
                    seq as isize,
                    false,
                    q,
                    1,
                    stride as isize,
                    k,
                    stride as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for i in 0..seq {
                let row = &mut scores[i * seq..(i + 1) * seq];
                let valid = if causal { i + 1 } else { seq };
                let m = row[..valid]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                // Exponentials first (a loop the compiler vectorises), then the sum.
                row[..valid]
                    .iter_mut()
                    .for_each(|r| *r = exp_approx(*r - m));
                let sum = lane_sum(&row[..valid], |v| v);
                let inv = 1.0 / sum;
                row[..valid].iter_mut().for_each(|r| *r *= inv);
                row[valid..].iter_mut().for_each(|r| *r = 0.0);
            }
            // SAFETY: rows b·seq.., columns h·dh.. of `out` (batch·seq × width)
            // are this task's alone; `v` as above.
            unsafe {
                let dst = out_ptr.get().add(b * seq * width + h * dh);
                gemm::gemm(
                    seq,
                    dh,
                    seq,
                    dst,
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    seq as isize,
                    v,
                    1,
                    stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        })
    });
}

/// [`attention`] for one query position per sequence: `out` (`batch × width`)
/// receives, for each sequence `b`, the attention output of its position
/// `query_at[b]` only (keys and values are still every position's, or with
/// `causal` every position up to it). This is all a last layer needs when
/// only a pooled token (CLIP's class or end-of-text token) is read out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_rows(
    qkv: &[f32],
    batch: usize,
    seq: usize,
    width: usize,
    heads: usize,
    causal: bool,
    query_at: &[usize],
    out: &mut [f32],
) {
    let dh = width / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let stride = 3 * width;
    assert!(
        query_at.len() >= batch && query_at[..batch].iter().all(|&i| i < seq),
        "attention_rows: query positions"
    );
    assert!(
        qkv.len() >= batch * seq * stride && out.len() >= batch * width,
        "attention_rows: buffer sizes"
    );
    // One task per sequence (a row of `out`): the work is small (one query
    // row per head), so heads are not split further.
    team_for_each_rows(&mut out[..batch * width], width, 1, |b, dst| {
        ATTENTION_SCORES.with_borrow_mut(|scores| {
            let i = query_at[b];
            let valid = if causal { i + 1 } else { seq };
            scores.resize(valid, 0.0);
            for (h, dst) in dst.chunks_exact_mut(dh).enumerate() {
                let row = |t: usize, part: usize| {
                    &qkv[(b * seq + t) * stride + part * width + h * dh..][..dh]
                };
                let q = row(i, 0);
                for (t, s) in scores.iter_mut().enumerate() {
                    *s = dot_f32(q, row(t, 1)) * scale;
                }
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                scores.iter_mut().for_each(|s| *s = exp_approx(*s - m));
                let inv = 1.0 / lane_sum(scores, |v| v);
                dst.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let p = p * inv;
                    dst.iter_mut()
                        .zip(row(t, 2))
                        .for_each(|(d, &v)| *d += p * v);
                }
            }
        })
    });
}

thread_local! {
    /// One attention task's `seq × seq` scores, kept per thread.
    static ATTENTION_SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows per task for row-wise passes: about four tasks per thread.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * team_threads()).max(1)
}

/// L2-normalises each row in place (a zero row stays zero).
pub(crate) fn l2_normalize_rows(x: &mut [f32], width: usize) {
    for row in x.chunks_mut(width) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.0, 0.999_977_9),
        ] {
            assert!((erf(x) - e).abs() < 1e-6, "erf({x}) = {} vs {e}", erf(x));
        }
    }

    #[test]
    fn vectorised_quick_gelu_matches_the_scalar_form() {
        let xs: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.013)
            .chain([0.0, -0.0, 60.0, -60.0, 1e-8])
            .collect();
        let mut fast = xs.clone();
        activate_slice(&mut fast, Activation::QuickGelu);
        for (x, f) in xs.iter().zip(&fast) {
            let want = x / (1.0 + (-1.702 * x).exp());
            assert!(
                (f - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "quick_gelu({x}) = {f}, want {want}"
            );
        }
    }

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f32;
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let rel = ((exp_approx(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "relative error {worst}");
    }

    #[test]
    fn small_and_large_row_counts_agree_with_naive_product() {
        // Depths below, at and across the kernel's depth blocks (256), with an
        // activation that must see the whole sum, not a block's.
        for (rows, inp) in [
            (1, 40),
            (5, 40),
            (6, 40),
            (7, 40),
            (50, 40),
            (97, 40),
            (130, 40),
            (13, 256),
            (13, 600),
            (97, 600),
        ] {
            let out = 48;
            let x: Vec<f32> = (0..rows * inp)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
            for (bias, acc, act) in [
                (None, false, None),
                (Some(b.clone()), false, None),
                (Some(b.clone()), true, None),
                (Some(b.clone()), true, Some(Activation::Relu6)),
            ] {
                let layer = DenseT::from_torch(&w, bias.clone(), out, inp);
                let mut dst = vec![0.25f32; rows * out];
                dense(&x, rows, &layer, &mut dst, acc, act);
                for r in 0..rows {
                    for o in 0..out {
                        let base = if acc { 0.25 } else { 0.0 }
                            + bias.as_ref().map(|b| b[o]).unwrap_or(0.0);
                        let mut want = base
                            + (0..inp)
                                .map(|i| x[r * inp + i] * w[o * inp + i])
                                .sum::<f32>();
                        if act.is_some() {
                            want = want.clamp(0.0, 6.0);
                        }
                        let tol = 1e-4 * (1.0 + want.abs());
                        assert!(
                            (dst[r * out + o] - want).abs() < tol,
                            "rows {rows} k {inp} ({r},{o}): {} vs {want}",
                            dst[r * out + o]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dense_matches_naive_product() {
        let (rows, inp, out) = (5, 7, 3);
        let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = vec![0.5, -1.0, 2.0];
        let layer = DenseT::from_torch(&w, Some(b.clone()), out, inp);
        let mut dst = vec![1.0f32; rows * out];
        dense(&x, rows, &layer, &mut dst, true, None);
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = 1.0
                    + b[o]
                    + (0..inp)
                        .map(|i| x[r * inp + i] * w[o * inp + i])
                        .sum::<f32>();
                assert!((dst[r * out + o] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn attention_for_chosen_rows_matches_full_attention() {
        let (batch, seq, width, heads) = (3, 7, 40, 2);
        let qkv: Vec<f32> = (0..batch * seq * 3 * width)
            .map(|i| (i as f32 * 0.173).sin() * 2.0)
            .collect();
        for causal in [false, true] {
            let mut full = vec![0f32; batch * seq * width];
            attention(&qkv, batch, seq, width, heads, causal, &mut full);
            let at = [0, 6, 3];
            let mut rows = vec![f32::NAN; batch * width];
            attention_rows(&qkv, batch, seq, width, heads, causal, &at, &mut rows);
            for b in 0..batch {
                for c in 0..width {
                    let (got, want) = (rows[b * width + c], full[(b * seq + at[b]) * width + c]);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "causal {causal}, sequence {b}, column {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn causal_attention_first_row_copies_first_value() {
        // With a causal mask, position 0 attends only to itself: output = v_0.
        let (seq, width, heads) = (4, 4, 2);
        let qkv: Vec<f32> = (0..seq * 3 * width)
            .map(|i| (i as f32 * 0.3).sin())
            .collect();
        let mut out = vec![0f32; seq * width];
        attention(&qkv, 1, seq, width, heads, true, &mut out);
        for c in 0..width {
            assert!((out[c] - qkv[2 * width + c]).abs() < 1e-6);
        }
    }
}
