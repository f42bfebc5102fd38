//! `squire`: multimodal image retrieval from the command line.
//!
//! This binary only parses arguments and calls the library crates.

mod cmd;

use clap::{Parser, Subcommand};

/// Squire: composed, text-to-image and image-to-image search with MLLM reranking.
#[derive(Parser)]
#[command(name = "squire", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, inspect and fetch models.
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// Offline end-to-end demo: fetch the lite pack, index a gallery, answer two queries.
    Demo(cmd::demo::DemoArgs),
    /// Index a folder of images into a collection (incremental, resumable).
    Index(cmd::index::IndexArgs),
    /// Build or extend a collection from precomputed embeddings (clip-retrieval's layout).
    Import(cmd::import::ImportArgs),
    /// Write a collection's embeddings in clip-retrieval's layout.
    Export(cmd::import::ExportArgs),
    /// Search a collection by text, image, or both (composed).
    Search(cmd::search::SearchArgs),
    /// Serve the web demo and JSON API over a collection.
    Serve(cmd::serve::ServeArgs),
    /// Check every file of a collection against its manifest's checksums.
    Verify(cmd::verify::VerifyArgs),
    /// Fit PCA-whitening on a collection's vectors (used by --whiten).
    Whiten(cmd::whiten::WhitenArgs),
    /// Run evaluations.
    #[command(subcommand)]
    Eval(cmd::eval::EvalCommand),
    /// Print L2-normalised embeddings of images or texts.
    Embed(cmd::embed::EmbedArgs),
    /// Measure throughput (release builds only give meaningful numbers).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

/// Dies quietly on a closed pipe (`squire search … | head`), as Unix tools do,
/// instead of panicking on the next print.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> std::process::ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    // wgpu's own layers log every Vulkan/GL loader complaint (a machine
    // without drivers prints several ERROR lines); Squire reports the outcome
    // itself, so they stay quiet unless RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},wgpu_hal=off,wgpu_core=off,naga=off",
            cli.log
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Models(c) => cmd::models::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Index(a) => cmd::index::run(a),
        Command::Import(a) => cmd::import::run_import(a),
        Command::Export(a) => cmd::import::run_export(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Whiten(a) => cmd::whiten::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once (an error that already quotes
/// its cause is not followed by it again), with a hint for a full disk.
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    let disk_full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) == Some(28)
            || c.downcast_ref::<squire_indexer::IndexError>().is_some_and(|ie| {
                matches!(ie, squire_indexer::IndexError::Io { source, .. } if source.raw_os_error() == Some(28))
            })
    });
    if disk_full {
        msg.push_str("\nthe disk is full: free some space (or write elsewhere) and run again; what was stored before is unchanged");
    }
    msg
}
