//! `A · Bᵀ` for row-major `A` and `B`, the one product shape the CPU kernels
//! need (queries × rows, and a Gram matrix), on the `gemm` crate.

use gemm::Parallelism;

/// `out (m × n, row-major) = A (m × k) · B (n × k)ᵀ`.
pub(crate) fn a_bt(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(
        out.len() >= m * n && a.len() >= m * k && b.len() >= n * k,
        "a_bt: buffers too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the sizes are checked above. dst is m × n (row stride n); lhs
    // m × k (row stride k); rhs is B read as k × n (column j = row j of B,
    // stride k).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `A Bᵀ` for row-major `a` (`m × k`) and `b` (`n × k`): an `m × n` matrix,
/// computed in parallel. Panics if the slices are shorter than the shapes say.
pub fn matmul_a_bt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= n * k,
        "matmul_a_bt: operands shorter than {m}×{k} and {n}×{k}"
    );
    let mut out = vec![0f32; m * n];
    if m > 0 && n > 0 {
        a_bt(&mut out, a, b, m, n, k, true);
    }
    out
}
