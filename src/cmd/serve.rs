//! `squire serve`: the web demo and JSON API over one collection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use squire_demo_ui::{AppState, ServerConfig};
use squire_engine::pipeline::Pipeline;
use squire_indexer::{Collection, OpenOptions};
use squire_kernels::{Compute, DeviceChoice};
use squire_models::clip::LoadOptions;

/// Serve the web demo and its JSON API over a collection.
///
/// Loads the collection and its model once, then answers `POST /api/search`
/// (JSON or multipart form with an uploaded image; the `squire search
/// --json` schema plus every stage's ranking, the SQAF caption and the EBR
/// grid), `GET /api/images/{id}`, `GET /api/thumbs/{id}`, `GET /api/health`
/// and `GET /metrics` (Prometheus), and the page at `/`. Binds to loopback
/// unless --addr says otherwise. MLLM stages appear when --mllm is given.
/// Stops on Ctrl-C or SIGTERM, finishing requests in flight.
#[derive(Args)]
pub struct ServeArgs {
    /// Collection directory (from `squire index`).
    #[arg(long)]
    index: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    limits: ServeLimits,
    #[command(flatten)]
    stages: super::mllm::StageArgs,
    /// Compute backend for SuperGlobal and exact search: auto, cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// The server's limits.
#[derive(Args, Debug, Clone)]
pub struct ServeLimits {
    /// Largest request body (an uploaded image included), in MB; more gets 413.
    #[arg(long, default_value_t = 10.0)]
    max_upload_mb: f64,
    /// Largest side of an uploaded image in pixels; more gets 400.
    #[arg(long, default_value_t = 8192)]
    max_image_side: u32,
    /// Seconds a search may take before the client gets 504.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
    /// Searches running at once (model work) [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Searches waiting for a worker; beyond that the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Most results one request may ask for.
    #[arg(long, default_value_t = 100)]
    max_k: usize,
    /// Allow this origin to call the API from another site (CORS; off by default).
    #[arg(long)]
    cors_origin: Option<String>,
}

impl ServeLimits {
    /// The server's configuration (checked).
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        anyhow::ensure!(
            self.max_upload_mb.is_finite() && self.max_upload_mb > 0.0,
            "--max-upload-mb {}: expected a positive size",
            self.max_upload_mb
        );
        anyhow::ensure!(
            self.request_timeout.is_finite() && self.request_timeout > 0.0,
            "--request-timeout {}: expected positive seconds",
            self.request_timeout
        );
        anyhow::ensure!(self.max_k > 0, "--max-k must be at least 1");
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        anyhow::ensure!(workers > 0, "--workers must be at least 1");
        Ok(ServerConfig {
            max_upload_bytes: (self.max_upload_mb * 1024.0 * 1024.0) as usize,
            max_image_side: self.max_image_side,
            request_timeout: Duration::from_secs_f64(self.request_timeout),
            workers,
            queue: self.queue,
            max_k: self.max_k,
            cors_origin: self.cors_origin.clone(),
        })
    }
}

/// Serves `pipeline` on `addr` until Ctrl-C or SIGTERM, printing the URL
/// (with the port actually bound) on stdout first.
pub fn serve_pipeline(
    pipeline: Pipeline,
    config: ServerConfig,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let images = pipeline.collection().records().len();
    let stages: Vec<&str> = pipeline
        .available_stages()
        .iter()
        .map(|s| s.name())
        .collect();
    let state = Arc::new(AppState::new(Arc::new(pipeline), config)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        println!(
            "Squire demo on http://{bound}/ ({images} images; rerankers: none, {})",
            stages.join(", ")
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        squire_demo_ui::serve(listener, state, shutdown_signal()).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Runs `squire serve`.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let config = a.limits.config()?;
    let options = a.stages.options()?;
    let mllm = a.stages.mllm.open()?;
    let compute = Compute::new(a.device)?;
    let col = Collection::open_with(&a.index, OpenOptions { view: true })
        .with_context(|| format!("opening the collection in {}", a.index.display()))?;
    let encoder = super::load_encoder(&col.manifest().model, LoadOptions::default())?;
    let pipeline = Pipeline::new(col, encoder, compute, mllm, options)?;
    serve_pipeline(pipeline, config, a.addr)
}
