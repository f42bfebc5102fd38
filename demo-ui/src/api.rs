//! The JSON API's handlers.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Multipart, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use squire_engine::pipeline::{FirstStage, PipelineError, SearchRequest, Stage};
use squire_models::image_io::{self, DecodeLimits};

use crate::AppState;

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The message sent.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({ "error": self.message, "status": self.status.as_u16() })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Request(m) => ApiError::bad(m),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// Counts every answer by route and status; adds the CORS headers when an origin is allowed.
pub async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let mut res = next.run(req).await;
    st.metrics.request(&route, res.status().as_u16());
    if let Some(origin) = &st.config.cors_origin {
        if let Ok(v) = HeaderValue::from_str(origin) {
            let h = res.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    res
}

/// `OPTIONS /api/search`: a CORS preflight answer when an origin is allowed, else 405.
pub async fn preflight(State(st): State<Arc<AppState>>) -> Response {
    if st.config.cors_origin.is_none() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CORS is off (start the server with --cors-origin)",
        )
        .into_response();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Any other path: 404 in JSON.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// The `rerank` field: `"superglobal,ebr"` or `["superglobal", "ebr"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RerankField {
    One(String),
    Many(Vec<String>),
}

/// The JSON body of `POST /api/search`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    text: Option<String>,
    k: Option<usize>,
    rerank: Option<RerankField>,
    alpha: Option<f32>,
    sqaf: Option<bool>,
    exact: Option<bool>,
    /// A metadata filter (the grammar of `squire search --filter`).
    filter: Option<String>,
    /// A query vector in the collection's embedding space (instead of text or an image).
    vector: Option<Vec<f32>>,
    /// The named vector a `vector` query searches (default: the image query vector).
    vector_name: Option<String>,
    /// Query by an indexed image (its id).
    image_id: Option<String>,
    /// Query by an image sent inline, base64 (standard alphabet; a `data:` URL prefix is allowed).
    image_base64: Option<String>,
}

/// An uploaded query image as received.
struct Upload {
    bytes: Bytes,
    name: String,
}

/// A parsed request, before any decoding.
struct Query {
    body: SearchBody,
    image: Option<Upload>,
}

fn parse_flag(name: &str, v: &str) -> Result<bool, ApiError> {
    match v.trim() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "" | "0" | "false" | "off" | "no" => Ok(false),
        other => Err(ApiError::bad(format!(
            "field `{name}`: {other:?} is not true or false"
        ))),
    }
}

async fn parse_multipart(mut form: Multipart) -> Result<Query, ApiError> {
    let mut body = SearchBody::default();
    let mut image = None;
    let mut rerank = Vec::new();
    let field_err = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(e.status(), format!("reading the form: {}", e.body_text()))
    };
    while let Some(field) = form.next_field().await.map_err(field_err)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let file = field.file_name().unwrap_or("upload").to_string();
            let bytes = field.bytes().await.map_err(field_err)?;
            if !bytes.is_empty() {
                image = Some(Upload { bytes, name: file });
            }
            continue;
        }
        let text = field.text().await.map_err(field_err)?;
        let number = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| ApiError::bad(format!("field `{name}`: {v:?} is not a number")))
        };
        match name.as_str() {
            "text" => body.text = (!text.trim().is_empty()).then_some(text),
            "k" => body.k = Some(number(&text)?.max(0.0) as usize),
            "alpha" => body.alpha = Some(number(&text)? as f32),
            "rerank" => rerank.push(text),
            "sqaf" => body.sqaf = Some(parse_flag("sqaf", &text)?),
            "exact" => body.exact = Some(parse_flag("exact", &text)?),
            "image_id" => body.image_id = (!text.trim().is_empty()).then_some(text),
            "filter" => body.filter = (!text.trim().is_empty()).then_some(text),
            other => return Err(ApiError::bad(format!("unknown form field `{other}` (expected text, image, image_id, k, rerank, alpha, sqaf, exact, filter)"))),
        }
    }
    if !rerank.is_empty() {
        body.rerank = Some(RerankField::Many(rerank));
    }
    Ok(Query { body, image })
}

async fn parse_request(req: Request) -> Result<Query, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        return parse_multipart(form).await;
    }
    if !content_type.is_empty() && !content_type.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?}: send application/json or multipart/form-data"),
        ));
    }
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let mut body: SearchBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("the JSON body: {e}")))?;
    let image = match body.image_base64.take() {
        Some(b64) => {
            let data = b64.split_once("base64,").map_or(b64.as_str(), |(_, d)| d);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::bad(format!("field `image_base64`: not base64 ({e})")))?;
            Some(Upload {
                bytes: bytes.into(),
                name: "image_base64".into(),
            })
        }
        None => None,
    };
    Ok(Query { body, image })
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no image with id {id:?} (ids are 16 hexadecimal digits)"),
        )
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    u64::from_str_radix(id, 16).map_err(|_| not_found())
}

impl AppState {
    /// The file of the indexed image `id`, inside the collection's image folder.
    pub(crate) fn image_file(&self, id: &str) -> Result<(u64, PathBuf), ApiError> {
        let key = parse_id(id)?;
        let row = self.pipeline.collection().row_of(key).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no image with id {id} in the collection"),
            )
        })?;
        let record = &self.pipeline.collection().records()[row];
        let path = self
            .images_root
            .join(record.relative_path())
            .canonicalize()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("image {id} ({}) cannot be read: {e}", record.path),
                )
            })?;
        // A record that resolves outside the image folder (a symlink, a
        // tampered manifest) is never served.
        if !path.starts_with(&self.images_root) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("image {id} lies outside the collection's folder"),
            ));
        }
        Ok((key, path))
    }

    /// Decodes, searches and reports one query (blocking: model work).
    fn run_query(&self, q: Query) -> Result<Value, ApiError> {
        let cfg = &self.config;
        let body = q.body;
        let k = body.k.unwrap_or(10);
        if k == 0 || k > cfg.max_k {
            return Err(ApiError::bad(format!(
                "field `k`: {k} is outside 1..={}",
                cfg.max_k
            )));
        }
        if body.text.as_ref().is_some_and(|t| t.len() > 2000) {
            return Err(ApiError::bad("field `text`: longer than 2,000 bytes"));
        }
        let limits = DecodeLimits {
            max_side: cfg.max_image_side,
            ..DecodeLimits::default()
        };
        let (image, label) = match (q.image, body.image_id.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "give an uploaded image or image_id, not both",
                ))
            }
            (Some(Upload { bytes, name }), None) => {
                let img = image_io::decode_rgb_with(&bytes, FsPath::new(&name), limits)
                    .map_err(|e| ApiError::bad(format!("field `image`: {e}")))?;
                (Some(img), Some(name))
            }
            (None, Some(id)) => {
                let (_, path) = self
                    .image_file(id)
                    .map_err(|e| ApiError::bad(format!("field `image_id`: {}", e.message)))?;
                let img = image_io::load_rgb(&path)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                (Some(img), Some(format!("id:{id}")))
            }
            (None, None) => (None, None),
        };
        let stages = match body.rerank {
            None => Vec::new(),
            Some(RerankField::One(s)) => Stage::parse_list(&[s])?,
            Some(RerankField::Many(v)) => Stage::parse_list(&v)?,
        };
        let filter = match body.filter.as_deref() {
            Some(f) => Some(
                squire_indexer::Filter::parse(f)
                    .map_err(|e| ApiError::bad(format!("field `filter`: {e}")))?,
            ),
            None => None,
        };
        let req = SearchRequest {
            text: body.text,
            image: image.map(Arc::new),
            image_label: label,
            k,
            alpha: body.alpha.unwrap_or(0.8),
            first_stage: if body.exact.unwrap_or(false) {
                FirstStage::Exact
            } else {
                FirstStage::Index { ef: None }
            },
            stages,
            sqaf: body.sqaf.unwrap_or(false),
            filter,
            vector: body.vector,
            vector_name: body.vector_name,
        };
        let out = self.pipeline.search(&req)?;
        let mut report = self.pipeline.report(&req, &out);
        // The grids exactly as the MLLM saw them, for the page.
        for s in out.stages.iter().filter(|s| !s.grids.is_empty()) {
            let urls: Vec<String> = s
                .grids
                .iter()
                .filter_map(|g| jpeg_data_url(g, 90))
                .collect();
            if let Some(r) = report.get_mut(s.stage.name()) {
                r["grid_images"] = json!(urls);
            }
        }
        Ok(report)
    }
}

fn jpeg_data_url(img: &image::RgbImage, quality: u8) -> Option<String> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(img)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(buf)
    ))
}

/// `POST /api/search`.
pub async fn search(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<axum::Json<Value>, ApiError> {
    // A declared size over the limit is refused before any byte of the body is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > st.config.max_upload_bytes as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {n} bytes, over the {}-byte limit (--max-upload-mb)",
                st.config.max_upload_bytes
            ),
        ));
    }
    let query = parse_request(req).await?;
    gated(&st, "search", move |st| {
        let t = Instant::now();
        let out = st.run_query(query);
        if out.is_ok() {
            st.metrics.search(t.elapsed().as_secs_f64());
        }
        out
    })
    .await
    .map(axum::Json)
}

/// Runs `job` on a blocking worker behind the server's gate (at most
/// `workers` at once, `queue` waiting; 503 beyond) and its request timeout
/// (504); `what` names the work in those errors.
pub(crate) async fn gated<T: Send + 'static>(
    st: &Arc<AppState>,
    what: &'static str,
    job: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(ticket) = st.gate.enter() else {
        st.metrics.rejected();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: {} requests are running or waiting (the limit); retry shortly",
                st.gate.capacity()
            ),
        ));
    };
    let timeout = st.config.request_timeout;
    let work = {
        let st = st.clone();
        async move {
            let permit = st.gate.worker().await;
            tokio::task::spawn_blocking(move || {
                let _held = (permit, ticket);
                job(&st)
            })
            .await
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the {what} failed: {join}"),
        )),
        Err(_) => {
            st.metrics.timed_out();
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the {what} took longer than {:.0} s", timeout.as_secs_f64()),
            ))
        }
    }
}

fn content_type_of(path: &FsPath) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// `GET /api/images/{id}`: the indexed file as stored.
pub async fn image(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, path) = st.image_file(&id)?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("image {id} cannot be read: {e}"),
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type_of(&path)),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

/// Thumbnails kept in memory; the cache is emptied when it holds this many.
const THUMB_CACHE: usize = 4096;

/// `GET /api/thumbs/{id}`: a JPEG whose longer side is at most 320 px.
pub async fn thumbnail(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (key, path) = st.image_file(&id)?;
    let cached = st.thumbs.lock().ok().and_then(|c| c.get(&key).cloned());
    let bytes = match cached {
        Some(b) => b,
        None => {
            let made = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                let img = image_io::load_rgb(&path).map_err(|e| e.to_string())?;
                let (w, h) = img.dimensions();
                let scale = (320.0 / w.max(h) as f32).min(1.0);
                let small = image::imageops::thumbnail(
                    &img,
                    ((w as f32 * scale) as u32).max(1),
                    ((h as f32 * scale) as u32).max(1),
                );
                let mut buf = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 82)
                    .encode_image(&small)
                    .map_err(|e| e.to_string())?;
                Ok(buf)
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("thumbnail of {id}: {e}"),
                )
            })?;
            let b = Bytes::from(made);
            if let Ok(mut c) = st.thumbs.lock() {
                if c.len() >= THUMB_CACHE {
                    c.clear();
                }
                c.insert(key, b.clone());
            }
            b
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /api/health`.
pub async fn health(State(st): State<Arc<AppState>>) -> axum::Json<Value> {
    let p = &st.pipeline;
    let m = p.collection().manifest();
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "images": p.collection().records().len(),
        "model": m.model,
        "vectors": m.vectors.keys().collect::<Vec<_>>(),
        "text_query_vector": m.text_query_vector,
        "image_query_vector": m.image_query_vector,
        "stages": p.available_stages().iter().map(|s| s.name()).collect::<Vec<_>>(),
        "mllm": p.mllm(),
        "limits": {
            "max_upload_bytes": st.config.max_upload_bytes,
            "max_image_side": st.config.max_image_side,
            "max_k": st.config.max_k,
            "workers": st.config.workers,
            "queue": st.config.queue,
            "request_timeout_s": st.config.request_timeout.as_secs_f64(),
        },
        "admitted": st.gate.admitted(),
    }))
}

/// `GET /metrics`.
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.metrics.render(
        st.gate.admitted(),
        st.gate.capacity(),
        st.pipeline.collection().records().len(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
