//! What the MLLM stages of one query cost: calls, images, tokens, time.

use std::time::Duration;

use squire_models::mllm::{ChatRequest, ChatResponse};

/// MLLM cost of one query's stage (or of several stages added together).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MllmCost {
    /// Chat calls the stage made (an answer from the cache counts as a call).
    pub calls: u32,
    /// HTTP requests actually sent, retries included (0 for cached answers).
    pub requests: u32,
    /// Calls answered from the response cache.
    pub cache_hits: u32,
    /// Images sent with the calls.
    pub images: u32,
    /// Prompt tokens reported by the server.
    pub prompt_tokens: u64,
    /// Completion tokens reported by the server.
    pub completion_tokens: u64,
    /// Wall time of the stage in milliseconds, drawing and parsing included.
    pub wall_ms: f64,
}

impl MllmCost {
    /// Counts one answered call.
    pub fn record(&mut self, request: &ChatRequest, response: &ChatResponse) {
        self.calls += 1;
        self.requests += response.requests;
        self.cache_hits += u32::from(response.cached);
        self.images += request.images() as u32;
        self.prompt_tokens += response.usage.prompt_tokens;
        self.completion_tokens += response.usage.completion_tokens;
    }

    /// Counts one call that failed after `requests` requests.
    pub fn record_failure(&mut self, request: &ChatRequest, requests: u32) {
        self.calls += 1;
        self.requests += requests;
        self.images += request.images() as u32;
    }

    /// Sets the stage's wall time.
    pub fn finish(&mut self, wall: Duration) {
        self.wall_ms = wall.as_secs_f64() * 1e3;
    }

    /// The sum of two costs.
    pub fn add(&mut self, other: &MllmCost) {
        self.calls += other.calls;
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.images += other.images;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.wall_ms += other.wall_ms;
    }
}
