//! Squire's search engine: query encoding and fusion (SQAF), first-stage
//! search, SuperGlobal refinement and MLLM reranking, as a pipeline of stages.
//!
//! Depends on `squire-indexer` and `squire-models`. Its contents arrive with
//! the search and reranking issues; until then this crate exports nothing.
