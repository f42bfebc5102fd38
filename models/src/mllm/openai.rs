//! The OpenAI-compatible chat-completions backend (vLLM, llama.cpp server,
//! Ollama, hosted APIs).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{encode_jpeg, ChatRequest, ChatResponse, Mllm, MllmError, Part, Usage};

/// The environment variable holding the API key (sent as a bearer token,
/// never logged or printed).
pub const API_KEY_ENV: &str = "SQUIRE_MLLM_API_KEY";

/// Options of [`OpenAiChat`].
#[derive(Clone)]
pub struct OpenAiOptions {
    /// Base URL (`http://host:8000/v1`) or the full `/chat/completions` URL.
    pub url: String,
    /// The served model name.
    pub model: String,
    /// Bearer token; see [`API_KEY_ENV`].
    pub api_key: Option<String>,
    /// Time limit of one request (connect + answer).
    pub timeout: Duration,
    /// Extra attempts after a 429, a 5xx, a timeout or a broken connection.
    pub retries: u32,
    /// First retry delay; doubled on each retry (a server's Retry-After wins, up to 60 s).
    pub backoff: Duration,
    /// Requests in flight at once from this client.
    pub max_concurrency: usize,
    /// Images are downscaled so their longer side is at most this (0: never).
    pub max_image_side: u32,
    /// JPEG quality of the images sent.
    pub jpeg_quality: u8,
}

impl std::fmt::Debug for OpenAiOptions {
    // The key never reaches logs or error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_image_side", &self.max_image_side)
            .finish()
    }
}

impl OpenAiOptions {
    /// Defaults for `model` at `url`: 120 s timeout, 3 retries from 0.5 s, 4
    /// requests at once, images up to 1024 px at JPEG quality 90, and the key
    /// from [`API_KEY_ENV`] when set.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiOptions {
            url: url.into(),
            model: model.into(),
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
            max_concurrency: 4,
            max_image_side: 1024,
            jpeg_quality: 90,
        }
    }
}

/// A chat model served over the OpenAI-compatible `/chat/completions` API.
#[derive(Debug)]
pub struct OpenAiChat {
    options: OpenAiOptions,
    endpoint: String,
    agent: ureq::Agent,
    in_flight: Mutex<usize>,
    slot_free: Condvar,
}

/// Releases a concurrency slot when dropped.
struct Slot<'a>(&'a OpenAiChat);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        self.0.slot_free.notify_one();
    }
}

enum Attempt {
    Done(Value),
    Retry(Option<Duration>, MllmError),
    Fail(MllmError),
}

impl OpenAiChat {
    /// A client for `options` (no request is sent until the first chat).
    pub fn new(options: OpenAiOptions) -> Result<Self, MllmError> {
        let base = options.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(MllmError::Config(format!(
                "--mllm-url {base:?}: expected an http:// or https:// URL"
            )));
        }
        if options.model.is_empty() {
            return Err(MllmError::Config("--mllm-model is empty".into()));
        }
        let endpoint = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        let agent = ureq::AgentBuilder::new().timeout(options.timeout).build();
        Ok(OpenAiChat {
            options,
            endpoint,
            agent,
            in_flight: Mutex::new(0),
            slot_free: Condvar::new(),
        })
    }

    /// The URL requests are posted to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn acquire(&self) -> Slot<'_> {
        let limit = self.options.max_concurrency.max(1);
        let mut n = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= limit {
            n = self.slot_free.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot(self)
    }

    /// The request body, images as base64 JPEG data URLs.
    pub fn body(&self, request: &ChatRequest) -> Result<Value, MllmError> {
        let mut messages = Vec::with_capacity(request.messages.len());
        for m in &request.messages {
            let only_text = m.content.iter().all(|p| matches!(p, Part::Text(_)));
            let content = if only_text {
                // Plain strings: every server accepts them for every role.
                let text: Vec<&str> = m
                    .content
                    .iter()
                    .filter_map(|p| {
                        if let Part::Text(t) = p {
                            Some(t.as_str())
                        } else {
                            None
                        }
                    })
                    .collect();
                json!(text.join("\n"))
            } else {
                let mut parts = Vec::with_capacity(m.content.len());
                for p in &m.content {
                    parts.push(match p {
                        Part::Text(t) => json!({"type": "text", "text": t}),
                        Part::Image(img) => {
                            let jpeg = encode_jpeg(img, self.options.max_image_side, self.options.jpeg_quality)?;
                            let b64 = base64::engine::general_purpose::STANDARD.encode(jpeg);
                            json!({"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{b64}")}})
                        }
                    });
                }
                Value::Array(parts)
            };
            messages.push(json!({"role": m.role, "content": content}));
        }
        let mut body = json!({
            "model": self.options.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if let Some(n) = request.first_token_logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(n);
        }
        Ok(body)
    }

    fn attempt(&self, body: &Value) -> Attempt {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.options.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let url = self.endpoint.clone();
        match req.send_json(body) {
            Ok(resp) => match resp.into_json::<Value>() {
                Ok(v) => Attempt::Done(v),
                // A body cut off mid-way is a transport failure worth retrying.
                Err(e) => Attempt::Retry(
                    None,
                    MllmError::Answer {
                        url,
                        attempts: 0,
                        message: format!("reading the JSON body: {e}"),
                    },
                ),
            },
            Err(ureq::Error::Status(status, resp)) => {
                let retry_after = resp
                    .header("retry-after")
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_secs_f64(s.min(60.0)));
                let mut text = resp.into_string().unwrap_or_default();
                text.truncate(text.char_indices().nth(300).map_or(text.len(), |(i, _)| i));
                let err = MllmError::Status {
                    url,
                    status,
                    attempts: 0,
                    body: text,
                };
                if status == 429 || status >= 500 {
                    Attempt::Retry(retry_after, err)
                } else {
                    Attempt::Fail(err)
                }
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry(
                None,
                MllmError::Transport {
                    url,
                    attempts: 0,
                    message: transport_reason(&t),
                },
            ),
        }
    }

    fn parse(&self, v: &Value) -> Result<(String, Usage, Vec<(String, f32)>), MllmError> {
        let bad = |m: &str| MllmError::Answer {
            url: self.endpoint.clone(),
            attempts: 0,
            message: m.to_string(),
        };
        if let Some(err) = v.get("error") {
            return Err(bad(&format!("the server reported an error: {err}")));
        }
        let choice = v
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| bad("no `choices[0]` in the answer"))?;
        let text = match choice.pointer("/message/content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let count = |k: &str| {
            v.pointer(&format!("/usage/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let usage = Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        };
        let logprobs = choice
            .pointer("/logprobs/content/0/top_logprobs")
            .and_then(Value::as_array)
            .map(|alts| {
                alts.iter()
                    .filter_map(|a| {
                        Some((
                            a.get("token")?.as_str()?.to_string(),
                            a.get("logprob")?.as_f64()? as f32,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((text, usage, logprobs))
    }
}

impl Mllm for OpenAiChat {
    fn model_id(&self) -> String {
        self.options.model.clone()
    }

    /// OpenAI's API (and vLLM, llama.cpp and Ollama with it) caps `top_logprobs` at 20.
    fn max_top_logprobs(&self) -> Option<u32> {
        Some(20)
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError> {
        let body = self.body(request)?;
        let start = Instant::now();
        let _slot = self.acquire();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let t = Instant::now();
            match self.attempt(&body) {
                Attempt::Done(v) => {
                    let (text, usage, first_token_logprobs) =
                        self.parse(&v).map_err(|e| with_attempts(e, attempts))?;
                    tracing::debug!(
                        "MLLM {} answered in {:.0} ms ({} + {} tokens)",
                        self.options.model,
                        t.elapsed().as_secs_f64() * 1e3,
                        usage.prompt_tokens,
                        usage.completion_tokens
                    );
                    return Ok(ChatResponse {
                        text,
                        usage,
                        first_token_logprobs,
                        cached: false,
                        requests: attempts,
                        wall: start.elapsed(),
                    });
                }
                Attempt::Fail(e) => return Err(with_attempts(e, attempts)),
                Attempt::Retry(after, e) => {
                    if attempts > self.options.retries {
                        return Err(with_attempts(e, attempts));
                    }
                    let delay = after.unwrap_or_else(|| {
                        self.options
                            .backoff
                            .saturating_mul(1 << (attempts - 1).min(6))
                            .min(Duration::from_secs(30))
                    });
                    tracing::warn!(
                        "MLLM request to {} failed on attempt {attempts} of {}: {}; retrying in {delay:?}",
                        self.endpoint,
                        self.options.retries + 1,
                        e.reason()
                    );
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

fn with_attempts(e: MllmError, n: u32) -> MllmError {
    match e {
        MllmError::Status {
            url, status, body, ..
        } => MllmError::Status {
            url,
            status,
            attempts: n,
            body,
        },
        MllmError::Transport { url, message, .. } => MllmError::Transport {
            url,
            attempts: n,
            message,
        },
        MllmError::Answer { url, message, .. } => MllmError::Answer {
            url,
            attempts: n,
            message,
        },
        other => other,
    }
}

/// A transport error without the URL ureq puts in front (the error names
/// it once): its kind, then its message or cause where that adds something.
fn transport_reason(t: &ureq::Transport) -> String {
    let kind = t.kind().to_string();
    let detail = t
        .message()
        .map(str::to_string)
        .or_else(|| std::error::Error::source(t).map(|s| s.to_string()));
    match detail {
        Some(d) if !d.is_empty() && d != kind => format!("{kind}: {d}"),
        _ => kind,
    }
}
