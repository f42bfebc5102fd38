//! Squire's search engine: query encoding and fusion (SQAF), first-stage
//! search, SuperGlobal refinement and MLLM reranking as a pipeline of stages,
//! and the evaluation harness that measures them.
//!
//! Depends on `squire-indexer` and `squire-models`. Today it holds the
//! text-to-image evaluation ([`eval`]) and the benchmark annotation loaders
//! ([`datasets`]); the stages arrive with their issues.

pub mod datasets;
pub mod eval;
