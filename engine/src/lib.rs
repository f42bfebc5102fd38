//! Squire's search engine: query encoding and fusion (SQAF), first-stage
//! search, SuperGlobal refinement and MLLM reranking as a pipeline of stages,
//! and the evaluation harness that measures them.
//!
//! Depends on `squire-indexer`, `squire-models` and `squire-kernels`. Today
//! it holds SuperGlobal reranking ([`superglobal`]), the text-to-image
//! evaluation ([`eval`]), the transformed-copy benchmark ([`copies`]) and the
//! benchmark annotation loaders ([`datasets`]);
//! the other stages arrive with their issues.

pub mod copies;
pub mod datasets;
pub mod eval;
pub mod superglobal;
