//! The three MLLM rerankers against the **simulated** MLLM (engine's
//! `simulate`: told the ground truth, not a model): with p = 1 the relevant
//! candidate reaches the top from any position, through EBR's several
//! grids, CoTRR's sliding windows (separate images and grid input) and the
//! pointwise scores; with p = 0 the answers are wrong.

use std::sync::Arc;

use image::{Rgb, RgbImage};
use squire_engine::cotrr::{CotrrInput, CotrrOptions, CotrrReranker};
use squire_engine::ebr::{EbrOptions, GridReranker};
use squire_engine::grid::GridOptions;
use squire_engine::pointwise::{PointwiseOptions, PointwiseReranker};
use squire_engine::rerank::{ListReranker, RerankQuery};
use squire_engine::simulate::SimulatedMllm;

/// Distinct images: a colour per candidate plus a stripe at a distinct height.
fn candidates(n: usize) -> Vec<Arc<RgbImage>> {
    (0..n)
        .map(|i| {
            let mut img = RgbImage::from_pixel(
                120 + (i as u32 % 3) * 20,
                90,
                Rgb([
                    (i * 53 % 256) as u8,
                    (i * 97 % 256) as u8,
                    (255 - i * 31 % 256) as u8,
                ]),
            );
            for x in 0..img.width() {
                for y in 40..50 {
                    img.put_pixel(x, y, Rgb([(i * 11 % 256) as u8, 255, (i * 7 % 256) as u8]));
                }
            }
            Arc::new(img)
        })
        .collect()
}

fn rerankers(depth: usize, grid: &GridOptions) -> Vec<Box<dyn ListReranker>> {
    vec![
        Box::new(
            GridReranker::new(EbrOptions {
                k: depth,
                grid: grid.clone(),
                max_grids: 4,
                ..EbrOptions::default()
            })
            .expect("ebr"),
        ),
        Box::new(
            CotrrReranker::new(CotrrOptions {
                k: depth,
                window: 10,
                step: 5,
                ..CotrrOptions::default()
            })
            .expect("cotrr"),
        ),
        Box::new(
            CotrrReranker::new(CotrrOptions {
                k: depth,
                window: 10,
                step: 5,
                input: CotrrInput::Grid,
                grid: grid.clone(),
                ..CotrrOptions::default()
            })
            .expect("cotrr grid"),
        ),
        Box::new(PointwiseReranker {
            options: PointwiseOptions {
                k: depth,
                ..PointwiseOptions::default()
            },
        }),
    ]
}

#[test]
fn simulated_mllm_with_p_1_brings_the_relevant_candidate_to_the_top() {
    let depth = 20;
    let grid = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    let cands = candidates(depth + 3);
    let sim = SimulatedMllm::new(1.0, 7, grid.clone());
    for r in rerankers(depth, &grid) {
        for target in [0usize, 4, 9, 13, 19] {
            let relevant: Vec<bool> = (0..cands.len()).map(|i| i == target).collect();
            sim.set_query(&cands, &relevant);
            let out = r.rerank(&sim, &RerankQuery::Text("query".into()), &cands);
            assert_eq!(
                out.order[0],
                target,
                "{} with the relevant candidate at {target}: {:?}",
                r.name(),
                out.order
            );
            assert!(out.fallback.is_none(), "{}: {:?}", r.name(), out.fallback);
            // Beyond the depth nothing moves.
            assert_eq!(&out.order[depth..], &[20, 21, 22], "{}", r.name());
            let mut sorted = out.order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..cands.len()).collect::<Vec<_>>());
        }
        // A relevant candidate below the depth stays there.
        let relevant: Vec<bool> = (0..cands.len()).map(|i| i == 21).collect();
        sim.set_query(&cands, &relevant);
        let out = r.rerank(&sim, &RerankQuery::Text("query".into()), &cands);
        assert_eq!(out.order[21], 21, "{}", r.name());
    }
}

#[test]
fn calls_and_images_per_query() {
    let depth = 20;
    let grid = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    let cands = candidates(depth);
    let sim = SimulatedMllm::new(1.0, 1, grid.clone());
    sim.set_query(&cands, &vec![false; depth]);
    let costs: Vec<(u32, u32)> = rerankers(depth, &grid)
        .iter()
        .map(|r| {
            let c = r.rerank(&sim, &RerankQuery::Text("q".into()), &cands).cost;
            (c.calls, c.images)
        })
        .collect();
    // EBR: one call, 3 grids of 9; CoTRR: 3 windows of 10 images (or one grid
    // each); pointwise: one call and one image per candidate.
    assert_eq!(costs, vec![(1, 3), (3, 30), (3, 3), (20, 20)]);
}

#[test]
fn simulated_mllm_with_p_0_is_wrong() {
    let grid = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    let cands = candidates(9);
    let sim = SimulatedMllm::new(0.0, 3, grid.clone());
    let relevant: Vec<bool> = (0..9).map(|i| i == 0).collect();
    sim.set_query(&cands, &relevant);
    let pw = PointwiseReranker {
        options: PointwiseOptions {
            k: 9,
            ..PointwiseOptions::default()
        },
    };
    let out = pw.rerank(&sim, &RerankQuery::Text("q".into()), &cands);
    assert_ne!(
        out.order[0], 0,
        "a wrong pointwise judge demotes the relevant image"
    );
}

#[test]
fn simulated_mllm_with_p_1_first_and_prp_bring_the_relevant_candidate_to_the_top() {
    use squire_engine::first::{FirstOptions, FirstReranker};
    use squire_engine::prp::{PairwiseReranker, PrpMode, PrpOptions};
    let grid = GridOptions {
        cell: 96,
        ..GridOptions::default()
    };
    let cands = candidates(12);
    let sim = SimulatedMllm::new(1.0, 5, grid.clone());
    let first = FirstReranker::new(FirstOptions {
        k: 9,
        grid: grid.clone(),
    })
    .expect("first");
    let prp = |mode| PairwiseReranker {
        options: PrpOptions {
            k: 9,
            mode,
            passes: 1,
            ..PrpOptions::default()
        },
    };
    let all: Vec<Box<dyn ListReranker>> = vec![
        Box::new(first),
        Box::new(prp(PrpMode::AllPairs)),
        Box::new(prp(PrpMode::Sorting)),
        Box::new(prp(PrpMode::Sliding)),
    ];
    for r in &all {
        for target in [0usize, 4, 8] {
            let relevant: Vec<bool> = (0..cands.len()).map(|i| i == target).collect();
            sim.set_query(&cands, &relevant);
            let out = r.rerank(&sim, &RerankQuery::Text("query".into()), &cands);
            assert_eq!(
                out.order[0],
                target,
                "{} with the relevant candidate at {target}: {:?} ({:?})",
                r.name(),
                out.order,
                out.fallback
            );
            assert!(out.fallback.is_none(), "{}: {:?}", r.name(), out.fallback);
            assert_eq!(&out.order[9..], &[9, 10, 11], "{}", r.name());
        }
    }
}
