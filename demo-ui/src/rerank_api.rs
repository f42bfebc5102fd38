//! `POST /v1/rerank`: the Cohere/Jina-style rerank API over Squire's MLLM
//! rerankers, for candidate images that come from outside a search.
//!
//! Request: `{"model": "ebr|cotrr|pointwise|first|prp", "query": "…",
//! "documents": [D, …], "top_n": N, "return_documents": bool}` where each D
//! is an image data URL (`"data:image/jpeg;base64,…"`), `{"image": data URL}`
//! or an indexed image `{"id": "16 hex digits"}`. The documents' order is the
//! prior order the reranker starts from; it reorders its top K (K as the
//! server was started with: `--ebr-k`, `--first-k`, …) and the rest follow. Response: `{"results": [{"index",
//! "relevance_score", "document"?}], "meta": {"model", "read", "fallback",
//! "cost"}}`, best first. MLLM rerankers give an order, not calibrated
//! scores, so `relevance_score` is (n − rank) / n for the rank (0-based)
//! among the n documents.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use base64::Engine as _;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};
use squire_engine::pipeline::Stage;
use squire_engine::stages::ListCandidate;
use squire_models::image_io::{self, DecodeLimits};

use crate::api::ApiError;
use crate::AppState;

/// Most documents in one request.
pub const MAX_DOCUMENTS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankBody {
    model: Option<String>,
    query: String,
    documents: Vec<Value>,
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

impl AppState {
    /// One document's image; errors name its index.
    fn document_image(&self, i: usize, d: &Value) -> Result<RgbImage, ApiError> {
        let bad = |m: String| ApiError::bad(format!("documents[{i}]: {m}"));
        let data_url = match d {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => match (o.get("image"), o.get("id")) {
                (Some(Value::String(s)), None) => Some(s.as_str()),
                (None, Some(Value::String(id))) => {
                    let (_, path) = self
                        .image_file(id)
                        .map_err(|e| bad(e.message().to_string()))?;
                    return image_io::load_rgb(&path).map_err(|e| bad(e.to_string()));
                }
                _ => {
                    return Err(bad(
                        "expected a data URL, {\"image\": data URL} or {\"id\": \"…\"}".into(),
                    ))
                }
            },
            _ => {
                return Err(bad(
                    "expected a data URL, {\"image\": data URL} or {\"id\": \"…\"}".into(),
                ))
            }
        };
        let url = data_url.unwrap_or_default();
        let Some(b64) = url
            .strip_prefix("data:")
            .and_then(|r| r.split_once(";base64,"))
            .map(|(_, b)| b)
        else {
            return Err(bad(
                "not a base64 data URL (data:image/…;base64,…); remote URLs are not fetched".into(),
            ));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| bad(format!("not base64 ({e})")))?;
        let limits = DecodeLimits {
            max_side: self.config.max_image_side,
            ..DecodeLimits::default()
        };
        image_io::decode_rgb_with(
            &bytes,
            std::path::Path::new(&format!("documents[{i}]")),
            limits,
        )
        .map_err(|e| bad(e.to_string()))
    }

    fn run_rerank(&self, body: RerankBody) -> Result<Value, ApiError> {
        let start = Instant::now();
        let available: Vec<Stage> = self
            .pipeline
            .available_stages()
            .into_iter()
            .filter(|s| s.needs_mllm())
            .collect();
        if available.is_empty() {
            return Err(ApiError::bad(
                "this server has no MLLM configured (squire serve --mllm …), so it cannot rerank",
            ));
        }
        let names = available
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ");
        let stage = match body.model.as_deref() {
            None => available[0],
            Some(m) => available
                .iter()
                .copied()
                .find(|s| s.name() == m)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "field `model`: {m:?} is not a reranker here (expected one of {names})"
                    ))
                })?,
        };
        if body.query.trim().is_empty() {
            return Err(ApiError::bad("field `query` is empty"));
        }
        let n = body.documents.len();
        if n == 0 || n > MAX_DOCUMENTS {
            return Err(ApiError::bad(format!(
                "field `documents`: {n} documents; send 1 to {MAX_DOCUMENTS}"
            )));
        }
        let candidates: Vec<ListCandidate> = body
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Ok(ListCandidate {
                    image: Arc::new(self.document_image(i, d)?),
                    score: 1.0 - i as f32 / n as f32,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        // The reranker reorders its top K of the documents (K as configured:
        // --ebr-k, --first-k, …); the rest follow in the given order.
        let out = self.pipeline.rerankers().rerank_list(
            body.query.trim(),
            &candidates,
            &[stage],
            None,
            false,
        )?;
        let run = out.stages.last().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the reranker ran no stage",
            )
        })?;
        let top_n = body.top_n.unwrap_or(n).min(n);
        let results: Vec<Value> = run
            .ranking
            .iter()
            .take(top_n)
            .enumerate()
            .map(|(rank, r)| {
                let mut v =
                    json!({"index": r.row, "relevance_score": (n - rank) as f64 / n as f64});
                if body.return_documents {
                    v["document"] = body.documents[r.row].clone();
                }
                v
            })
            .collect();
        Ok(json!({
            "results": results,
            "meta": {
                "model": stage.name(),
                "read": run.read.map(|r| r.name()),
                "fallback": run.fallback,
                "cost": run.cost,
                "ms": start.elapsed().as_secs_f64() * 1e3,
            },
        }))
    }
}

/// `POST /v1/rerank`.
pub async fn rerank(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<axum::Json<Value>, ApiError> {
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if bytes.len() > st.config.max_upload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {} bytes, over the {}-byte limit (--max-upload-mb)",
                bytes.len(),
                st.config.max_upload_bytes
            ),
        ));
    }
    let body: RerankBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("the JSON body: {e}")))?;
    crate::api::gated(&st, "rerank", move |st| st.run_rerank(body))
        .await
        .map(axum::Json)
}
