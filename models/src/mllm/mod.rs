//! Multimodal LLMs behind one trait: chat with interleaved text and images,
//! an optional JSON answer format and optional first-token log-probabilities.
//!
//! Backends: [`OpenAiChat`] (any OpenAI-compatible server: vLLM, llama.cpp
//! server, Ollama, hosted APIs), with an on-disk [`ResponseCache`]
//! in front of any backend ([`Cached`]). The engine's SQAF and reranking
//! stages only see [`Mllm`].

mod cache;
mod openai;

use std::sync::Arc;
use std::time::Duration;

pub use cache::{Cached, ResponseCache};
pub use openai::{OpenAiChat, OpenAiOptions, API_KEY_ENV};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The question, with its images.
    User,
    /// An earlier answer (few-shot examples, multi-turn).
    Assistant,
}

/// One piece of a message: text, or an image.
#[derive(Debug, Clone)]
pub enum Part {
    /// Plain text.
    Text(String),
    /// An RGB image; backends encode it as they need (the HTTP backend as a
    /// JPEG data URL, downscaled to its `max_image_side`).
    Image(Arc<image::RgbImage>),
}

/// One message of a chat.
#[derive(Debug, Clone)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// Text and images, in order.
    pub content: Vec<Part>,
}

impl Message {
    /// A system message of plain text.
    pub fn system(text: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: vec![Part::Text(text.into())],
        }
    }

    /// A user message of interleaved parts.
    pub fn user(content: Vec<Part>) -> Self {
        Message {
            role: Role::User,
            content,
        }
    }
}

/// A chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation; the model answers the last user message.
    pub messages: Vec<Message>,
    /// Ask for a JSON object as the answer (`response_format: json_object`).
    pub json: bool,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Return the top-n log-probabilities of the first generated token.
    pub first_token_logprobs: Option<u32>,
}

impl ChatRequest {
    /// A greedy request for `messages` with up to `max_tokens` tokens.
    pub fn new(messages: Vec<Message>, max_tokens: u32) -> Self {
        ChatRequest {
            messages,
            json: false,
            max_tokens,
            temperature: 0.0,
            first_token_logprobs: None,
        }
    }

    /// Number of images in the request.
    pub fn images(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|p| matches!(p, Part::Image(_)))
            .count()
    }
}

/// Tokens a call consumed, as the server reported them (0 when it did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Prompt tokens, images included.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

/// A model's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChatResponse {
    /// The answer text.
    pub text: String,
    /// Token usage of the call that produced it.
    pub usage: Usage,
    /// (token, log-probability) of the first token's top alternatives, best
    /// first; empty unless asked for and supported.
    #[serde(default)]
    pub first_token_logprobs: Vec<(String, f32)>,
    /// Answered from the response cache: no request was sent.
    #[serde(skip)]
    pub cached: bool,
    /// Requests sent for this answer (retries included; 0 when cached).
    #[serde(skip)]
    pub requests: u32,
    /// Wall time of the call, retries and waiting included.
    #[serde(skip)]
    pub wall: Duration,
}

/// Everything that can go wrong talking to a model.
#[derive(Debug, thiserror::Error)]
pub enum MllmError {
    /// The server could not be reached, or the request timed out, after every retry.
    #[error("MLLM request to {url} failed after {attempts} attempt(s): {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// Requests sent.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The server answered with an error status (after retries, where the
    /// status is retryable).
    #[error("MLLM server {url} answered HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Requests sent.
        attempts: u32,
        /// The start of the error body.
        body: String,
    },
    /// The server's answer is not the expected JSON.
    #[error("MLLM server {url} sent an unreadable answer after {attempts} attempt(s): {message}")]
    Answer {
        /// The endpoint.
        url: String,
        /// Requests sent.
        attempts: u32,
        /// What is wrong with it.
        message: String,
    },
    /// An option or input is unusable.
    #[error("MLLM configuration: {0}")]
    Config(String),
    /// The response cache could not be read or written.
    #[error("MLLM response cache {path}: {message}")]
    Cache {
        /// The cache file or folder.
        path: std::path::PathBuf,
        /// What failed.
        message: String,
    },
}

impl MllmError {
    /// Requests sent before the error (0 when none was).
    pub fn attempts(&self) -> u32 {
        match self {
            MllmError::Transport { attempts, .. }
            | MllmError::Status { attempts, .. }
            | MllmError::Answer { attempts, .. } => *attempts,
            MllmError::Config(_) | MllmError::Cache { .. } => 0,
        }
    }

    /// What went wrong, without the URL and the attempt count (for a
    /// warning that names those once).
    pub fn reason(&self) -> String {
        match self {
            MllmError::Transport { message, .. } | MllmError::Answer { message, .. } => {
                message.clone()
            }
            MllmError::Status { status, body, .. } => format!("HTTP {status}: {body}"),
            other => other.to_string(),
        }
    }
}

/// A multimodal chat model.
pub trait Mllm: Send + Sync {
    /// The model's id as used in cache keys and reports (e.g. the served model name).
    fn model_id(&self) -> String;

    /// Answers `request`.
    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError>;

    /// The most first-token alternatives (`top_logprobs`) the backend can
    /// return, when it is limited (OpenAI-compatible servers: 20).
    fn max_top_logprobs(&self) -> Option<u32> {
        None
    }
}

impl<T: Mllm + ?Sized> Mllm for Arc<T> {
    fn model_id(&self) -> String {
        (**self).model_id()
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError> {
        (**self).chat(request)
    }

    fn max_top_logprobs(&self) -> Option<u32> {
        (**self).max_top_logprobs()
    }
}

impl<T: Mllm + ?Sized> Mllm for Box<T> {
    fn model_id(&self) -> String {
        (**self).model_id()
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, MllmError> {
        (**self).chat(request)
    }

    fn max_top_logprobs(&self) -> Option<u32> {
        (**self).max_top_logprobs()
    }
}

/// Downscales `img` so its longer side is at most `max_side` (Catmull-Rom),
/// and encodes it as JPEG at `quality`: the bytes every image in a request
/// becomes, and what the cache keys hash.
pub fn encode_jpeg(
    img: &image::RgbImage,
    max_side: u32,
    quality: u8,
) -> Result<Vec<u8>, MllmError> {
    let (w, h) = img.dimensions();
    let long = w.max(h);
    let scaled;
    let src = if max_side > 0 && long > max_side {
        let s = max_side as f64 / long as f64;
        let (nw, nh) = (
            ((w as f64 * s).round() as u32).max(1),
            ((h as f64 * s).round() as u32).max(1),
        );
        scaled = image::imageops::resize(img, nw, nh, image::imageops::FilterType::CatmullRom);
        &scaled
    } else {
        img
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(src)
        .map_err(|e| MllmError::Config(format!("encoding an image as JPEG: {e}")))?;
    Ok(out)
}
