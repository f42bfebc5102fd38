//! `squire bench`: encoder, indexing and query benchmarks. Build with
//! `--release` for meaningful numbers; the scripts in `benches/` run these
//! side by side with Python peers on the same machine.

mod encode;
mod index;
mod kernels;
mod query;
mod rerank_sim;
mod serve;

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Image-tower and text-tower throughput of a CLIP checkpoint.
    ///
    /// Feeds deterministic synthetic inputs (no decoding) so that only the
    /// model is measured; reports inputs/s per batch size, achieved GFLOP/s,
    /// the share of a measured matrix-multiply peak, and peak memory.
    /// benches/encode.py runs this side by side with ONNX Runtime and PyTorch.
    Encode(encode::EncodeArgs),
    /// End-to-end indexing throughput of a folder into a fresh collection.
    ///
    /// Reports images/s, the share of time in reading+decoding+resizing vs the
    /// model, and peak memory. benches/index.py runs it side by side with
    /// Pillow + ONNX Runtime and Pillow + PyTorch pipelines on the same model.
    Index(index::IndexBenchArgs),
    /// HNSW build time, recall@10 against exact search, query latency
    /// (p50/p99) and QPS, on vectors derived from a collection's embeddings.
    ///
    /// Synthesises N vectors as mixtures of two real embeddings plus Gaussian
    /// noise (real-like neighbour structure; uniform random vectors would say
    /// nothing about HNSW), builds each store, and measures queries from the
    /// same distribution. --dump writes the vectors and the exact neighbours
    /// as .npy for benches/ann.py (faiss-cpu, hnswlib).
    Query(query::QueryBenchArgs),
    /// Exact similarity + top-k throughput of the compute kernels (CPU or
    /// GPU) against the machine's roofline.
    ///
    /// Scores a batch of queries (compute bound) and a few queries
    /// (memory-bandwidth bound) against N synthetic unit vectors stored as f32
    /// and f16; reports GFLOP/s, GB/s and the share of the roofline (FMA peak
    /// and streaming bandwidth, probed in the same run), and peak memory.
    /// benches/kernels.py runs it side by side with faiss-cpu flat search.
    Kernels(kernels::KernelsBenchArgs),
    /// The MLLM rerankers (EBR, CoTRR with images and with a grid,
    /// pointwise) over a real first stage, answered by a SIMULATED MLLM that
    /// knows the ground truth and is right with probability p: Recall@1/5,
    /// MRR, calls and images per query. Checks the rerankers' windowing,
    /// merging and parsing, and their cost; measures no model.
    RerankSim(rerank_sim::RerankSimArgs),
    /// Load test of `squire serve`'s API on loopback: text queries without
    /// MLLM from 1, 8 and 32 clients (p50/p99 latency, requests/s, non-200
    /// statuses) and a memory soak over 10,000 requests.
    Serve(serve::ServeBenchArgs),
}

/// Runs a `bench` subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; numbers are not meaningful (use cargo run --release)"
        );
    }
    match cmd {
        BenchCommand::Encode(a) => encode::run(a),
        BenchCommand::Index(a) => index::run(a),
        BenchCommand::Query(a) => query::run(a),
        BenchCommand::Kernels(a) => kernels::run(a),
        BenchCommand::RerankSim(a) => rerank_sim::run(a),
        BenchCommand::Serve(a) => serve::run(a),
    }
}
