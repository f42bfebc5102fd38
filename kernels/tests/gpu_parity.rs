//! The wgpu backend against the CPU backend on random and adversarial inputs.
//!
//! Runs on whatever adapter wgpu finds, software ones included (CI: Mesa's
//! lavapipe). Without an adapter the tests print why and pass, unless
//! SQUIRE_REQUIRE_GPU=1, under which they fail.

use std::sync::OnceLock;

use squire_kernels::{
    Compute, FeatureMaps, GemParams, GpuOptions, Metric, Precision, RegionalGemParams,
    ScaleGemMode, Scored,
};

/// A GPU backend whose database chunks are at most 256 KiB, so that small
/// test databases already stream over several buffers.
fn gpu() -> Option<&'static Compute> {
    static GPU: OnceLock<Option<Compute>> = OnceLock::new();
    GPU.get_or_init(|| {
        match Compute::gpu(&GpuOptions {
            max_chunk_bytes: Some(256 << 10),
        }) {
            Ok(c) => {
                eprintln!("GPU backend: {}", c.describe());
                Some(c)
            }
            Err(e) => {
                if std::env::var("SQUIRE_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("SQUIRE_REQUIRE_GPU=1 but the GPU backend is unavailable: {e}");
                }
                eprintln!("skipping GPU parity: {e}");
                None
            }
        }
    })
    .as_ref()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
    /// Multiples of 1/4 in [-2, 2]: dot products are exact in f32 (and in
    /// f16 storage), so both backends produce identical scores and ties.
    fn quantised(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() * 17.0).floor() - 8.0) / 4.0)
            .collect()
    }
}

fn assert_close(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g}");
        let rel = (g - c).abs() / c.abs().max(1.0);
        worst = worst.max(rel);
        assert!(rel <= 1e-4, "{what}[{i}]: gpu {g} vs cpu {c}");
    }
    eprintln!(
        "{what}: max relative difference {worst:.2e} over {} values",
        cpu.len()
    );
}

fn ids(hits: &[Vec<Scored>]) -> Vec<Vec<usize>> {
    hits.iter()
        .map(|h| h.iter().map(|s| s.row).collect())
        .collect()
}

#[test]
fn similarity_scores_agree_f32_f16_inner_product_and_cosine() {
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let mut rng = Rng(1);
    // Sizes that are not multiples of the 64×64 tile or the 16-wide k slice.
    let (n, nq, dim) = (1_237, 70, 100);
    let base = rng.vec(n * dim, -1.0, 1.0);
    let queries = rng.vec(nq * dim, -1.0, 1.0);
    for precision in [Precision::F32, Precision::F16] {
        let (dc, dg) = (
            cpu.upload(&base, dim, precision).unwrap(),
            gpu.upload(&base, dim, precision).unwrap(),
        );
        for metric in [Metric::InnerProduct, Metric::Cosine] {
            let c = cpu.scores(&dc, &queries, metric).unwrap();
            let g = gpu.scores(&dg, &queries, metric).unwrap();
            assert_close(&g, &c, &format!("scores {precision:?} {metric:?}"));
            let (tc, tg) = (
                cpu.top_k(&dc, &queries, 25, metric).unwrap(),
                gpu.top_k(&dg, &queries, 25, metric).unwrap(),
            );
            let flat = |h: &[Vec<Scored>]| {
                h.iter()
                    .flat_map(|l| l.iter().map(|s| s.score))
                    .collect::<Vec<f32>>()
            };
            assert_close(
                &flat(&tg),
                &flat(&tc),
                &format!("top-25 scores {precision:?} {metric:?}"),
            );
        }
    }
}

#[test]
fn top_k_ids_agree_exactly_with_ties_broken_by_id() {
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let mut rng = Rng(2);
    let (n, dim) = (3_001, 33);
    let base = rng.quantised(n * dim);
    for nq in [1usize, 5, 130] {
        let queries = rng.quantised(nq * dim);
        for precision in [Precision::F32, Precision::F16] {
            let (dc, dg) = (
                cpu.upload(&base, dim, precision).unwrap(),
                gpu.upload(&base, dim, precision).unwrap(),
            );
            for k in [1usize, 10, 1_000] {
                let c = cpu.top_k(&dc, &queries, k, Metric::InnerProduct).unwrap();
                let g = gpu.top_k(&dg, &queries, k, Metric::InnerProduct).unwrap();
                assert_eq!(ids(&g), ids(&c), "{nq} queries, k = {k}, {precision:?}");
                for (a, b) in g.iter().zip(&c) {
                    assert!(a.iter().zip(b).all(|(x, y)| x.score == y.score));
                }
            }
        }
    }
}

#[test]
fn few_query_kernel_agrees_exactly_with_ties_broken_by_id() {
    // Up to 16 queries with a length divisible by 4 (f32) or 8 (f16) take the
    // few-query kernel; 17 queries and dim 36 in f16 take the tiled one.
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let mut rng = Rng(7);
    for dim in [32usize, 36] {
        // Not a multiple of the kernel's 128 rows per workgroup.
        let n = 2_999;
        let base = rng.quantised(n * dim);
        for nq in [1usize, 3, 4, 5, 16, 17] {
            let queries = rng.quantised(nq * dim);
            for precision in [Precision::F32, Precision::F16] {
                let (dc, dg) = (
                    cpu.upload(&base, dim, precision).unwrap(),
                    gpu.upload(&base, dim, precision).unwrap(),
                );
                for metric in [Metric::InnerProduct, Metric::Cosine] {
                    let what = format!("dim {dim}, {nq} queries, {precision:?} {metric:?}");
                    let (c, g) = (
                        cpu.scores(&dc, &queries, metric).unwrap(),
                        gpu.scores(&dg, &queries, metric).unwrap(),
                    );
                    assert_close(&g, &c, &format!("scores, {what}"));
                    if metric == Metric::InnerProduct {
                        let c = cpu.top_k(&dc, &queries, 50, metric).unwrap();
                        let g = gpu.top_k(&dg, &queries, 50, metric).unwrap();
                        assert_eq!(ids(&g), ids(&c), "top-50 ids, {what}");
                    }
                }
            }
        }
    }
}

#[test]
fn adversarial_top_k_inputs() {
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let dim = 16;
    // All-zero database: every score ties at 0, so the answer is rows 0..k.
    let zeros = vec![0f32; 500 * dim];
    let q = vec![1f32; 2 * dim];
    let dg = gpu.upload(&zeros, dim, Precision::F32).unwrap();
    let g = gpu.top_k(&dg, &q, 40, Metric::InnerProduct).unwrap();
    assert!(g.iter().all(|h| h
        .iter()
        .enumerate()
        .all(|(i, s)| s.row == i && s.score == 0.0)));
    // Cosine against zero rows scores 0, not NaN.
    let g = gpu.top_k(&dg, &q, 3, Metric::Cosine).unwrap();
    assert!(g[0].iter().all(|s| s.score == 0.0));
    // k larger than the database returns every row; all-negative scores.
    let mut rng = Rng(3);
    let neg: Vec<f32> = rng
        .quantised(77 * dim)
        .iter()
        .map(|v| -v.abs() - 0.25)
        .collect();
    let (dc, dg) = (
        cpu.upload(&neg, dim, Precision::F32).unwrap(),
        gpu.upload(&neg, dim, Precision::F32).unwrap(),
    );
    let c = cpu.top_k(&dc, &q, 1_000, Metric::InnerProduct).unwrap();
    let g = gpu.top_k(&dg, &q, 1_000, Metric::InnerProduct).unwrap();
    assert_eq!(g[0].len(), 77);
    assert_eq!(ids(&g), ids(&c));
    // A database uploaded to one backend is refused by the other.
    assert!(cpu.top_k(&dg, &q, 3, Metric::InnerProduct).is_err());
    assert!(gpu.top_k(&dc, &q, 3, Metric::InnerProduct).is_err());
    // Wrong query length is an error, not a panic.
    assert!(gpu
        .top_k(&dg, &q[..dim + 1], 3, Metric::InnerProduct)
        .is_err());
}

#[test]
fn a_database_larger_than_one_binding_streams() {
    let Some(_) = gpu() else { return };
    // The default options: chunks at the adapter's binding limit (lavapipe:
    // 128 MiB). 66,000 × 512 f32 = 135 MB needs two buffers.
    let gpu = Compute::gpu(&GpuOptions::default()).unwrap();
    let cpu = Compute::cpu();
    let (n, dim) = (66_000, 512);
    let mut rng = Rng(4);
    let base = rng.quantised(n * dim);
    let queries = rng.quantised(3 * dim);
    let dg = gpu.upload(&base, dim, Precision::F32).unwrap();
    let dc = cpu.upload(&base, dim, Precision::F32).unwrap();
    let g = gpu.top_k(&dg, &queries, 100, Metric::InnerProduct).unwrap();
    let c = cpu.top_k(&dc, &queries, 100, Metric::InnerProduct).unwrap();
    assert_eq!(ids(&g), ids(&c));
}

#[test]
fn ties_across_many_blocks_keep_the_lowest_ids() {
    // 100,000 rows (four 32,768-row blocks) with three distinct scores: the
    // running list is full after the first block, so later blocks go through
    // the select pass's floor filter, where equal keys must lose to the
    // list's lower ids.
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let (n, dim) = (100_000, 8);
    let base: Vec<f32> = (0..n)
        .flat_map(|i| {
            let mut v = [0f32; 8];
            v[i % 3] = 1.0;
            v
        })
        .collect();
    let queries = [
        0.25f32, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    for precision in [Precision::F32, Precision::F16] {
        let (dc, dg) = (
            cpu.upload(&base, dim, precision).unwrap(),
            gpu.upload(&base, dim, precision).unwrap(),
        );
        for k in [1usize, 10, 16_384] {
            let (c, g) = (
                cpu.top_k(&dc, &queries, k, Metric::InnerProduct).unwrap(),
                gpu.top_k(&dg, &queries, k, Metric::InnerProduct).unwrap(),
            );
            assert_eq!(ids(&g), ids(&c), "k = {k}, {precision:?}");
        }
    }
}

#[test]
fn pooling_agrees() {
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let mut rng = Rng(5);
    let (n, c, h, w) = (3, 37, 7, 5);
    // Negatives (clamped by eps / at 0), exact zeros, and large values.
    let mut data = rng.vec(n * c * h * w, -1.0, 3.0);
    for (i, v) in data.iter_mut().enumerate() {
        match i % 11 {
            0 => *v = 0.0,
            1 => *v *= 40.0,
            _ => {}
        }
    }
    let maps = FeatureMaps::new(&data, n, c, h, w).unwrap();
    for params in [
        GemParams::GEM_PLUS,
        GemParams::GEM,
        GemParams { p: 1.0, eps: 1e-6 },
    ] {
        assert_close(
            &gpu.gem(maps, params).unwrap(),
            &cpu.gem(maps, params).unwrap(),
            &format!("GeM p = {}", params.p),
        );
    }
    for params in [
        RegionalGemParams::SUPERGLOBAL,
        RegionalGemParams {
            p: 3.0,
            size: 3,
            mix: 0.3,
        },
    ] {
        let r = gpu.regional_gem(maps, params).unwrap();
        assert_close(
            &r,
            &cpu.regional_gem(maps, params).unwrap(),
            &format!("Regional-GeM {}×{}", params.size, params.size),
        );
    }
    // Maps smaller than the window (reflection folds back and forth).
    let tiny = rng.vec(2 * 4, 0.0, 1.0);
    let small = FeatureMaps::new(&tiny, 1, 2, 2, 2).unwrap();
    let p = RegionalGemParams::SUPERGLOBAL;
    assert_close(
        &gpu.regional_gem(small, p).unwrap(),
        &cpu.regional_gem(small, p).unwrap(),
        "Regional-GeM 2×2",
    );
    let dim = 300;
    let scales: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(9 * dim, -1.0, 1.0)).collect();
    let refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
    for mode in [ScaleGemMode::Max, ScaleGemMode::Power(10.0)] {
        let g = gpu.scale_gem(&refs, dim, mode).unwrap();
        assert_close(
            &g,
            &cpu.scale_gem(&refs, dim, mode).unwrap(),
            &format!("Scale-GeM {mode:?}"),
        );
    }
}

#[test]
fn gram_and_refinement_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = Compute::cpu();
    let mut rng = Rng(6);
    let (m, dim) = (300, 130);
    let x = rng.quantised(m * dim);
    let g = gpu.gram(&x, dim).unwrap();
    let c = cpu.gram(&x, dim).unwrap();
    assert_eq!(g, c, "Gram matrices of quantised inputs are exact");
    for (k, beta) in [(9usize, 0.15f32), (1, 0.5), (0, 0.15), (40, 0.05)] {
        let rg = gpu.refine(&x, dim, k, beta).unwrap();
        let rc = cpu.refine(&x, dim, k, beta).unwrap();
        assert_close(&rg, &rc, &format!("refinement K = {k}, β = {beta}"));
    }
    // Real-valued normalised descriptors, M = 1,000 and D = 2,048 (the upper sizes).
    let (m, dim) = (1_000, 2_048);
    let mut y = rng.vec(m * dim, -1.0, 1.0);
    y.chunks_exact_mut(dim)
        .for_each(squire_kernels::cpu::l2_normalize);
    assert_close(
        &gpu.gram(&y, dim).unwrap(),
        &cpu.gram(&y, dim).unwrap(),
        "Gram 1000×2048",
    );
}
