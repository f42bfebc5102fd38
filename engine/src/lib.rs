//! Squire's search engine: query encoding and fusion (SQAF), first-stage
//! search, SuperGlobal refinement and MLLM reranking as a pipeline of stages,
//! and the evaluation harness that measures them.
//!
//! Depends on `squire-indexer`, `squire-models` and `squire-kernels`. The
//! whole query path is [`pipeline::Pipeline`], its reranking stages
//! [`stages::Rerankers`] (usable on lists from outside a collection); under it sit SuperGlobal
//! reranking ([`superglobal`]), PCA-whitening ([`whitening`]), SQUARE's query
//! fusion ([`sqaf`]), the MLLM rerankers ([`rerank`]: [`ebr`] with its grids
//! in [`grid`], [`cotrr`], [`pointwise`]; answers parsed by [`ranking`], cost
//! in [`cost`]). Evaluation: the metrics ([`metrics`]), the harness that runs
//! benchmarks stage by stage ([`harness`], charts in [`plot`]), the
//! benchmarks ([`benchmarks`], over the loaders in [`datasets`] and the
//! query TSV in [`eval`]) and the transformed-copy generator ([`copies`]).

#![warn(missing_docs)]

pub mod benchmarks;
pub mod copies;
pub mod cost;
pub mod cotrr;
pub mod datasets;
pub mod ebr;
pub mod eval;
pub mod first;
pub mod grid;
pub mod harness;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod pointwise;
pub mod prp;
pub mod ranking;
pub mod rerank;
pub mod simulate;
pub mod sqaf;
pub mod stages;
pub mod superglobal;
pub mod whitening;
