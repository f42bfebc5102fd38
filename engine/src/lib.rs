//! Squire's search engine: query encoding and fusion (SQAF), first-stage
//! search, SuperGlobal refinement and MLLM reranking as a pipeline of stages,
//! and the evaluation harness that measures them.
//!
//! Depends on `squire-indexer`, `squire-models` and `squire-kernels`. The
//! whole query path is [`pipeline::Pipeline`]; under it sit SuperGlobal reranking ([`superglobal`]), SQUARE's query fusion
//! ([`sqaf`]) and grid-mark batch reranking ([`ebr`], drawing in [`grid`],
//! answer parsing in [`ranking`], cost accounting in [`cost`]), the
//! text-to-image evaluation ([`eval`]), the transformed-copy benchmark
//! ([`copies`]) and the benchmark annotation loaders ([`datasets`]).

#![warn(missing_docs)]

pub mod benchmarks;
pub mod copies;
pub mod cost;
pub mod cotrr;
pub mod datasets;
pub mod ebr;
pub mod eval;
pub mod grid;
pub mod harness;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod pointwise;
pub mod ranking;
pub mod rerank;
pub mod simulate;
pub mod sqaf;
pub mod superglobal;
pub mod whitening;
