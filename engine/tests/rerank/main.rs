//! Tests of the reranking stages (grid, EBR, CoTRR, fuzzing, simulated
//! rankings): one test binary for all of them.

#[path = "../../../tests/support/scripted_openai.rs"]
mod scripted_openai;

mod cotrr_pointwise_scripted_server;
mod ebr_scripted_server;
mod grid_golden;
mod ranking_fuzz;
mod rerank_simulated;
