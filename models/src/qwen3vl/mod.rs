//! A local vision-language model on candle: Qwen3-VL (2B / 4B / 8B Instruct
//! in the Hugging Face layout), implemented here and proven against
//! transformers on a tiny random-weight model
//! (`scripts/make_qwen3vl_fixtures.py`, `models/tests/parity/qwen3vl_parity.rs`).
//!
//! candle-transformers 0.11's `qwen3_vl` is not used: it builds no causal
//! mask for a multi-token prefill and gives text tokens 1-D positions instead
//! of the multimodal RoPE, so its logits differ from the reference.
//!
//! [`Qwen3Vl`] answers [`Mllm`] chats: the messages become Qwen's chat
//! template (`<|im_start|>role\n…<|im_end|>\n`, each image as
//! `<|vision_start|>` + one `<|image_pad|>` per merged token +
//! `<|vision_end|>`), then greedy (temperature 0) or sampled decoding with a
//! key/value cache until an end token or `max_tokens`. On the CPU, in f32 or
//! (half the memory) bf16 / f16.
//! `json` requests are not constrained (the answer parsers accept prose).

mod config;
mod processor;
mod resolve;
mod text;
mod vision;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

pub use config::{ImageProcessorConfig, Qwen3VlConfig};
pub use processor::{preprocess, smart_resize, ImagePatches};
pub use resolve::{resolve_vlm, KNOWN_VLMS};
pub use text::{KvCache, TextModel};
pub use vision::{VisionOutput, VisionTower};

use crate::error::{ModelError, Result};
use crate::mllm::{ChatRequest, ChatResponse, Mllm, MllmError, Part, Role, Usage};
use crate::weights::CheckedWeights;

pub(crate) fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    vision::rotate_half_impl(x)
}

/// Softmax over the last dimension computed in f32 (as transformers' eager
/// attention does), returned in the input's dtype.
pub(crate) fn softmax_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
}

/// A prompt ready for the model: token ids and each image's patches, in order.
pub struct Prompt {
    /// Token ids, image pad tokens expanded.
    pub ids: Vec<u32>,
    /// The images' patches, in the order their pad runs appear.
    pub images: Vec<ImagePatches>,
}

/// A loaded Qwen3-VL checkpoint.
pub struct Qwen3Vl {
    vision: VisionTower,
    text: TextModel,
    tokenizer: tokenizers::Tokenizer,
    processor: ImageProcessorConfig,
    cfg: Qwen3VlConfig,
    stop: Vec<u32>,
    dir: PathBuf,
    /// Seed of sampled decoding (temperature > 0).
    pub seed: u64,
}

impl Qwen3Vl {
    /// Loads a checkpoint directory: `config.json`, `model.safetensors` (or
    /// the shards listed in `model.safetensors.index.json`),
    /// `tokenizer.json`, and `preprocessor_config.json` and
    /// `generation_config.json` where present.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, DType::F32)
    }

    /// [`Qwen3Vl::load`] with the weights and activations in `dtype` (f32,
    /// or bf16 / f16 for half the memory; attention softmax and logits stay f32).
    pub fn load_as(dir: &Path, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidRequest(format!(
                "dtype {dtype:?}: expected f32, bf16 or f16"
            )));
        }
        let cfg = Qwen3VlConfig::load(&dir.join("config.json"))?;
        let weights = open_weights(dir)?;
        let device = Device::Cpu;
        let vision = VisionTower::load(&weights, &cfg, dtype, &device)?;
        let text = TextModel::load(&weights, &cfg, dtype, &device)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::io(
                &tok_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Json {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let processor = ImageProcessorConfig::load(&dir.join("preprocessor_config.json"))?;
        let mut stop = read_eos(&dir.join("generation_config.json"))?;
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        for (name, id) in [
            ("image_token_id", cfg.image_token_id),
            ("vision_start_token_id", cfg.vision_start_token_id),
        ] {
            if id as usize >= cfg.text_config.vocab_size {
                return Err(ModelError::Config {
                    path: dir.join("config.json"),
                    field: name.into(),
                    message: format!("{id} is outside the vocabulary"),
                });
            }
        }
        Ok(Qwen3Vl {
            vision,
            text,
            tokenizer,
            processor,
            cfg,
            stop,
            dir: dir.to_path_buf(),
            seed: 0,
        })
    }

    /// The checkpoint's config.
    pub fn config(&self) -> &Qwen3VlConfig {
        &self.cfg
    }

    /// The vision tower.
    pub fn vision_tower(&self) -> &VisionTower {
        &self.vision
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (special tokens in it recognised, none added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::InvalidRequest(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Preprocesses one image with the checkpoint's processor settings.
    pub fn preprocess(&self, img: &image::RgbImage) -> Result<ImagePatches> {
        let v = &self.cfg.vision_config;
        preprocess(
            img,
            &self.processor,
            v.patch_size,
            v.spatial_merge_size,
            v.temporal_patch_size,
        )
    }

    /// Merged tokens of an image with these patches.
    fn image_tokens(&self, p: &ImagePatches) -> usize {
        let m = self.cfg.vision_config.spatial_merge_size;
        p.grid_h * p.grid_w / (m * m)
    }

    /// The chat template applied to `messages`, with the assistant's turn opened.
    pub fn prompt(&self, messages: &[crate::mllm::Message]) -> Result<Prompt> {
        let mut text = String::new();
        let mut images = Vec::new();
        for msg in messages {
            let role = match msg.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            text.push_str("<|im_start|>");
            text.push_str(role);
            text.push('\n');
            for part in &msg.content {
                match part {
                    Part::Text(t) => text.push_str(t),
                    Part::Image(img) => {
                        let p = self.preprocess(img)?;
                        text.push_str("<|vision_start|>");
                        text.push_str(&"<|image_pad|>".repeat(self.image_tokens(&p)));
                        text.push_str("<|vision_end|>");
                        images.push(p);
                    }
                }
            }
            text.push_str("<|im_end|>\n");
        }
        text.push_str("<|im_start|>assistant\n");
        Ok(Prompt {
            ids: self.encode(&text)?,
            images,
        })
    }

    /// The (temporal, height, width) RoPE positions of a prompt's tokens, as
    /// transformers' `get_rope_index`: text tokens count up on all three
    /// axes; an image's tokens take (start, start + row, start + column) on
    /// its merged grid, and the next text starts max(rows, columns) later.
    pub fn positions(&self, ids: &[u32], images: &[ImagePatches]) -> Result<Vec<[i64; 3]>> {
        let m = self.cfg.vision_config.spatial_merge_size;
        let pad = self.cfg.image_token_id;
        let mut out = Vec::with_capacity(ids.len());
        let mut pos = 0i64;
        let mut i = 0;
        let mut next_image = images.iter();
        while i < ids.len() {
            if ids[i] != pad {
                out.push([pos; 3]);
                pos += 1;
                i += 1;
                continue;
            }
            let img = next_image.next().ok_or_else(|| {
                ModelError::InvalidRequest("more image pad runs than images".into())
            })?;
            let (h, w) = (img.grid_h / m, img.grid_w / m);
            let run = ids[i..].iter().take_while(|&&t| t == pad).count();
            if run != h * w {
                return Err(ModelError::InvalidRequest(format!(
                    "an image pad run of {run} tokens for an image of {} tokens",
                    h * w
                )));
            }
            for r in 0..h {
                for c in 0..w {
                    out.push([pos, pos + r as i64, pos + c as i64]);
                }
            }
            pos += h.max(w) as i64;
            i += run;
        }
        if next_image.next().is_some() {
            return Err(ModelError::InvalidRequest(
                "more images than image pad runs".into(),
            ));
        }
        Ok(out)
    }

    /// Runs the vision tower on every image and collects the inputs the
    /// language model inserts: pad-token rows, embeddings and DeepStack levels.
    fn visual(&self, prompt: &Prompt) -> Result<Option<(Vec<usize>, Tensor, Vec<Tensor>)>> {
        if prompt.images.is_empty() {
            return Ok(None);
        }
        let rows: Vec<usize> = prompt
            .ids
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == self.cfg.image_token_id)
            .map(|(i, _)| i)
            .collect();
        let outs = prompt
            .images
            .iter()
            .map(|p| self.vision.forward(p))
            .collect::<Result<Vec<VisionOutput>>>()?;
        let embeds = Tensor::cat(&outs.iter().map(|o| &o.embeds).collect::<Vec<_>>(), 0)?;
        let levels = outs.first().map_or(0, |o| o.deepstack.len());
        let deepstack = (0..levels)
            .map(|l| Tensor::cat(&outs.iter().map(|o| &o.deepstack[l]).collect::<Vec<_>>(), 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if embeds.dim(0)? != rows.len() {
            return Err(ModelError::InvalidRequest(format!(
                "{} image tokens in the prompt, {} from the images",
                rows.len(),
                embeds.dim(0)?
            )));
        }
        Ok(Some((rows, embeds, deepstack)))
    }

    /// Logits of every prompt token (`tokens × vocab`): the prefill alone.
    pub fn prompt_logits(&self, prompt: &Prompt) -> Result<Tensor> {
        let positions = self.positions(&prompt.ids, &prompt.images)?;
        let visual = self.visual(prompt)?;
        let vis = visual.as_ref().map(|(rows, e, d)| text::VisualInputs {
            rows,
            embeds: e,
            deepstack: d,
        });
        self.text
            .forward(&prompt.ids, &positions, vis, &mut KvCache::default(), true)
    }

    /// Generates up to `max_tokens` after the prompt (greedy when
    /// `temperature` is 0); returns the new tokens (an end token, if
    /// reached, excluded) and the log-probabilities of the first step.
    pub fn generate(
        &self,
        prompt: &Prompt,
        max_tokens: usize,
        temperature: f32,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        if prompt.ids.is_empty() {
            return Err(ModelError::InvalidRequest("empty prompt".into()));
        }
        let positions = self.positions(&prompt.ids, &prompt.images)?;
        let visual = self.visual(prompt)?;
        let vis = visual.as_ref().map(|(rows, e, d)| text::VisualInputs {
            rows,
            embeds: e,
            deepstack: d,
        });
        let mut cache = KvCache::default();
        let mut logits = self
            .text
            .forward(&prompt.ids, &positions, vis, &mut cache, false)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let first = text::log_softmax(&logits);
        let mut next_pos = positions
            .iter()
            .map(|p| p[0].max(p[1]).max(p[2]))
            .max()
            .unwrap_or(-1)
            + 1;
        let mut rng = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::new();
        while out.len() < max_tokens {
            let tok = if temperature > 0.0 {
                sample(&logits, temperature, &mut rng)
            } else {
                text::argmax(&logits)
            };
            if self.stop.contains(&tok) {
                break;
            }
            out.push(tok);
            if out.len() == max_tokens {
                break;
            }
            logits = self
                .text
                .forward(&[tok], &[[next_pos; 3]], None, &mut cache, false)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
            next_pos += 1;
        }
        Ok((out, first))
    }

    /// Text of generated tokens (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::InvalidRequest(format!("decoding tokens: {e}")))
    }
}

/// The dtype named `f32`, `bf16` or `f16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(ModelError::InvalidRequest(format!(
            "dtype `{other}`: expected f32, bf16 or f16"
        ))),
    }
}

/// The safetensors of a checkpoint directory: `model.safetensors`, or the
/// shards its index names.
fn open_weights(dir: &Path) -> Result<CheckedWeights> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let files: Vec<PathBuf> = shard_names(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect();
        return CheckedWeights::open_shards(&files);
    }
    CheckedWeights::open(&dir.join("model.safetensors"))
}

/// The shard files a `model.safetensors.index.json` names, sorted, once each.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Json {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// End tokens from `generation_config.json` (`eos_token_id`: a number or a list).
fn read_eos(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    })
}

/// Draws from softmax(logits / temperature) with a SplitMix64 stream.
fn sample(logits: &[f32], temperature: f32, state: &mut u64) -> u32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits
        .iter()
        .map(|&v| (((v - m) / temperature) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    for (i, x) in w.iter().enumerate() {
        acc += x / total;
        if u < acc {
            return i as u32;
        }
    }
    (logits.len() - 1) as u32
}

impl Mllm for Qwen3Vl {
    fn model_id(&self) -> String {
        // The whole path: two checkpoints of the same folder name must not
        // share response-cache entries.
        format!("local:{}", self.dir.display())
    }

    fn chat(&self, request: &ChatRequest) -> std::result::Result<ChatResponse, MllmError> {
        let t0 = Instant::now();
        let fail = |e: ModelError| MllmError::Answer {
            url: format!("local:{}", self.dir.display()),
            attempts: 1,
            message: e.to_string(),
        };
        if !request.temperature.is_finite() || request.temperature < 0.0 {
            return Err(MllmError::Config(format!(
                "temperature {} must be finite and ≥ 0",
                request.temperature
            )));
        }
        let prompt = self.prompt(&request.messages).map_err(fail)?;
        let (ids, first) = self
            .generate(&prompt, request.max_tokens as usize, request.temperature)
            .map_err(fail)?;
        let text = self.decode(&ids).map_err(fail)?;
        let first_token_logprobs = match request.first_token_logprobs {
            Some(n) if n > 0 => {
                let mut order: Vec<usize> = (0..first.len()).collect();
                order.sort_by(|&a, &b| first[b].total_cmp(&first[a]));
                order
                    .into_iter()
                    .take(n as usize)
                    .map(|i| {
                        (
                            self.tokenizer
                                .decode(&[i as u32], false)
                                .unwrap_or_default(),
                            first[i],
                        )
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(ChatResponse {
            text,
            usage: Usage {
                prompt_tokens: prompt.ids.len() as u64,
                completion_tokens: ids.len() as u64,
            },
            first_token_logprobs,
            cached: false,
            requests: 1,
            wall: t0.elapsed(),
        })
    }
}
