//! End-to-end tests of the `squire` binary, the demo server and the lite pack
//! on real photos: one test binary (one link) for all of them.

mod common;
#[path = "../support/scripted_openai.rs"]
mod scripted_openai;

mod browser_demo;
mod cli_bench;
mod cli_clip_pool;
mod cli_device;
mod cli_eval_benchmarks;
mod cli_eval_copies;
mod cli_eval_fallbacks;
mod cli_eval_inquire_rerank;
mod cli_eval_revisitop;
mod cli_filter;
mod cli_import;
mod cli_index;
mod cli_kill;
mod cli_mllm;
mod cli_models;
mod cli_odd_files;
mod cli_vector_query;
mod cli_verify;
mod cli_whiten;
mod collection_writers;
mod lite_flickr;
mod real_openai_server;
mod serve_api;
