//! Squire's web demo: an HTTP API over the search pipeline
//! ([`squire_engine::pipeline::Pipeline`]) and an embedded page that shows
//! every stage (first stage, SQAF caption, refinement, MLLM reranking, the
//! grid the MLLM saw, timings and costs).
//!
//! [`router`] builds the axum application for a loaded pipeline; [`serve`]
//! runs it on a listener until shutdown. The routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` (and `/app.js`, `/style.css`) | the page, embedded in the binary |
//! | `POST /api/search` | a query: JSON or `multipart/form-data`; answers the `squire.search/1` schema |
//! | `GET /api/images/{id}` | an indexed image's file, by its 16-hex-digit id |
//! | `GET /api/thumbs/{id}` | its thumbnail (JPEG, longer side 320 px) |
//! | `GET /api/health` | collection size, model, available stages |
//! | `GET /metrics` | Prometheus text: requests, latency histogram, saturation, memory |
//!
//! Images are only ever served by id (looked up in the collection); no path
//! from a request reaches the file system.

#![warn(missing_docs)]

mod api;
mod assets;
mod gate;
mod metrics;
mod rerank_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use squire_engine::pipeline::Pipeline;

pub use gate::Gate;
pub use metrics::Metrics;

/// The server's limits and options.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (an upload included), bytes; more → 413.
    pub max_upload_bytes: usize,
    /// Largest uploaded image side in pixels; more → 400.
    pub max_image_side: u32,
    /// Longest a search may take before the client gets a 504.
    pub request_timeout: Duration,
    /// Searches running at once (model work).
    pub workers: usize,
    /// Searches allowed to wait for a worker; beyond that → 503.
    pub queue: usize,
    /// Most results one request may ask for.
    pub max_k: usize,
    /// An origin allowed to call the API from another site (CORS); `None`: CORS off.
    pub cors_origin: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_upload_bytes: 10 * 1024 * 1024,
            max_image_side: 8192,
            request_timeout: Duration::from_secs(120),
            workers: 2,
            queue: 64,
            max_k: 100,
            cors_origin: None,
        }
    }
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound or the server failed.
    #[error("serving on {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The collection's image folder is gone.
    #[error("the collection's image folder {path} cannot be opened: {source}")]
    ImagesRoot {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What every handler shares.
pub struct AppState {
    pipeline: Arc<Pipeline>,
    config: ServerConfig,
    gate: Gate,
    metrics: Metrics,
    images_root: PathBuf,
    thumbs: std::sync::Mutex<std::collections::HashMap<u64, axum::body::Bytes>>,
}

impl AppState {
    /// State for `pipeline` under `config`.
    pub fn new(pipeline: Arc<Pipeline>, config: ServerConfig) -> Result<Self, ServeError> {
        let root = &pipeline.collection().manifest().images_root;
        let images_root = root
            .canonicalize()
            .map_err(|source| ServeError::ImagesRoot {
                path: root.clone(),
                source,
            })?;
        Ok(AppState {
            gate: Gate::new(config.workers.max(1), config.queue),
            metrics: Metrics::default(),
            pipeline,
            config,
            images_root,
            thumbs: Default::default(),
        })
    }

    /// The metrics, e.g. for a benchmark that reads them in process.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The application: every route, the body limit and the middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_upload_bytes;
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/api/search", post(api::search).options(api::preflight))
        .route(
            "/v1/rerank",
            post(rerank_api::rerank).options(api::preflight),
        )
        .route("/api/images/{id}", get(api::image))
        .route("/api/thumbs/{id}", get(api::thumbnail))
        .route("/api/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::observe,
        ))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|source| ServeError::Io { addr, source })
}
