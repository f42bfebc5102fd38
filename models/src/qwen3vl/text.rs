//! The Qwen3-VL language model: Qwen3 decoder layers (RMSNorm, grouped-query
//! attention with per-head q/k norms, SwiGLU) with interleaved multimodal
//! RoPE (temporal, height, width positions) and DeepStack (vision features
//! added to the hidden states of the first layers at the image tokens), and
//! a key/value cache for generation.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear, Module, RmsNorm};

use super::config::Qwen3VlConfig;
use super::rotate_half;
use super::vision::linear;
use crate::error::Result;
use crate::weights::CheckedWeights;

struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

fn rms(
    w: &CheckedWeights,
    name: &str,
    width: usize,
    eps: f64,
    dt: DType,
    dev: &Device,
) -> Result<RmsNorm> {
    Ok(RmsNorm::new(w.get(name, &[width], dt, dev)?, eps))
}

/// Keys and values of every layer for the tokens seen so far.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens in the cache.
    pub len: usize,
}

/// The language model.
pub struct TextModel {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cfg: Qwen3VlConfig,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

/// Visual features to insert: the image-token rows and what goes there.
pub struct VisualInputs<'a> {
    /// Positions (in this forward's tokens) of the image pad tokens, in order.
    pub rows: &'a [usize],
    /// `rows.len() × hidden` merged image embeddings (replace the pad tokens).
    pub embeds: &'a Tensor,
    /// Per DeepStack level, `rows.len() × hidden`, added after layer 0, 1, ….
    pub deepstack: &'a [Tensor],
}

impl TextModel {
    /// Loads the language model (`model.language_model.*`, `lm_head`) in `dt`.
    pub fn load(w: &CheckedWeights, cfg: &Qwen3VlConfig, dt: DType, dev: &Device) -> Result<Self> {
        let t = &cfg.text_config;
        let p = "model.language_model";
        let (hid, hd) = (t.hidden_size, t.head_dim);
        let (qh, kvh) = (t.num_attention_heads, t.num_key_value_heads);
        let table = w.get(
            &format!("{p}.embed_tokens.weight"),
            &[t.vocab_size, hid],
            dt,
            dev,
        )?;
        let mut layers = Vec::with_capacity(t.num_hidden_layers);
        for i in 0..t.num_hidden_layers {
            let l = format!("{p}.layers.{i}");
            layers.push(Layer {
                input_norm: rms(
                    w,
                    &format!("{l}.input_layernorm.weight"),
                    hid,
                    t.rms_norm_eps,
                    dt,
                    dev,
                )?,
                post_norm: rms(
                    w,
                    &format!("{l}.post_attention_layernorm.weight"),
                    hid,
                    t.rms_norm_eps,
                    dt,
                    dev,
                )?,
                q: linear(
                    w,
                    &format!("{l}.self_attn.q_proj"),
                    qh * hd,
                    hid,
                    false,
                    dt,
                    dev,
                )?,
                k: linear(
                    w,
                    &format!("{l}.self_attn.k_proj"),
                    kvh * hd,
                    hid,
                    false,
                    dt,
                    dev,
                )?,
                v: linear(
                    w,
                    &format!("{l}.self_attn.v_proj"),
                    kvh * hd,
                    hid,
                    false,
                    dt,
                    dev,
                )?,
                o: linear(
                    w,
                    &format!("{l}.self_attn.o_proj"),
                    hid,
                    qh * hd,
                    false,
                    dt,
                    dev,
                )?,
                q_norm: rms(
                    w,
                    &format!("{l}.self_attn.q_norm.weight"),
                    hd,
                    t.rms_norm_eps,
                    dt,
                    dev,
                )?,
                k_norm: rms(
                    w,
                    &format!("{l}.self_attn.k_norm.weight"),
                    hd,
                    t.rms_norm_eps,
                    dt,
                    dev,
                )?,
                gate: linear(
                    w,
                    &format!("{l}.mlp.gate_proj"),
                    t.intermediate_size,
                    hid,
                    false,
                    dt,
                    dev,
                )?,
                up: linear(
                    w,
                    &format!("{l}.mlp.up_proj"),
                    t.intermediate_size,
                    hid,
                    false,
                    dt,
                    dev,
                )?,
                down: linear(
                    w,
                    &format!("{l}.mlp.down_proj"),
                    hid,
                    t.intermediate_size,
                    false,
                    dt,
                    dev,
                )?,
            });
        }
        let lm_head = if w.contains("lm_head.weight") || !cfg.tied_embeddings() {
            linear(w, "lm_head", t.vocab_size, hid, false, dt, dev)?
        } else {
            Linear::new(table.clone(), None)
        };
        let theta = cfg.text_theta();
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / (theta.powf(i as f64 / hd as f64) as f32))
            .collect();
        Ok(TextModel {
            embed: Embedding::new(table, hid),
            layers,
            norm: rms(w, &format!("{p}.norm.weight"), hid, t.rms_norm_eps, dt, dev)?,
            lm_head,
            cfg: cfg.clone(),
            inv_freq,
            device: dev.clone(),
            dtype: dt,
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.cfg.text_config.vocab_size
    }

    /// cos and sin (`tokens × 1 × head_dim`) for (t, h, w) positions, with
    /// the frequencies interleaved over the axes as Qwen3-VL does: frequency
    /// i takes the height position if i ≡ 1 (mod 3) and i < 3·section[1],
    /// the width position if i ≡ 2 (mod 3) and i < 3·section[2], else the temporal one.
    fn rotary(&self, positions: &[[i64; 3]]) -> Result<(Tensor, Tensor)> {
        let sec = self.cfg.mrope_section();
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions.len() * hd),
            Vec::with_capacity(positions.len() * hd),
        );
        for p in positions {
            let angles: Vec<f32> = (0..half)
                .map(|i| {
                    let axis = if i % 3 == 1 && i < 3 * sec[1] {
                        1
                    } else if i % 3 == 2 && i < 3 * sec[2] {
                        2
                    } else {
                        0
                    };
                    p[axis] as f32 * self.inv_freq[i]
                })
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = (positions.len(), 1, hd);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    /// Runs `ids` (with their (t, h, w) positions) after the cached tokens
    /// and returns the logits (f32) of every token (`all`) or of the last
    /// one only (`1 × vocab`).
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[[i64; 3]],
        visual: Option<VisualInputs<'_>>,
        cache: &mut KvCache,
        all: bool,
    ) -> Result<Tensor> {
        let t = &self.cfg.text_config;
        let n = ids.len();
        let (qh, kvh, hd) = (t.num_attention_heads, t.num_key_value_heads, t.head_dim);
        let rep = qh / kvh;
        let ids_t = Tensor::from_slice(ids, n, &self.device)?;
        let mut x = self.embed.forward(&ids_t)?;
        let visual_index = match &visual {
            Some(vis) if !vis.rows.is_empty() => {
                // The image rows replace the pad tokens' embeddings: text and
                // image runs concatenated in order.
                let mut parts = Vec::new();
                let (mut at, mut taken) = (0usize, 0usize);
                let mut r = 0;
                while r < vis.rows.len() {
                    let start = vis.rows[r];
                    let mut end = start + 1;
                    while r + (end - start) < vis.rows.len() && vis.rows[r + (end - start)] == end {
                        end += 1;
                    }
                    if start > at {
                        parts.push(x.narrow(0, at, start - at)?);
                    }
                    parts.push(vis.embeds.narrow(0, taken, end - start)?);
                    taken += end - start;
                    r += end - start;
                    at = end;
                }
                if at < n {
                    parts.push(x.narrow(0, at, n - at)?);
                }
                x = Tensor::cat(&parts, 0)?;
                Some(Tensor::from_vec(
                    vis.rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    vis.rows.len(),
                    &self.device,
                )?)
            }
            _ => None,
        };
        let (cos, sin) = self.rotary(positions)?;
        let rope = |z: &Tensor| -> Result<Tensor> {
            Ok((z.broadcast_mul(&cos)? + rotate_half(z)?.broadcast_mul(&sin)?)?)
        };
        let past = cache.len;
        if cache.layers.len() < self.layers.len() {
            cache.layers.resize_with(self.layers.len(), || None);
        }
        // Causal mask over (new tokens) × (cached + new tokens).
        let mask = if n > 1 {
            let m: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (1, 1, n, past + n), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let q = rope(
                &layer
                    .q_norm
                    .forward(&layer.q.forward(&h)?.reshape((n, qh, hd))?)?,
            )?;
            let k = rope(
                &layer
                    .k_norm
                    .forward(&layer.k.forward(&h)?.reshape((n, kvh, hd))?)?,
            )?;
            let v = layer.v.forward(&h)?.reshape((n, kvh, hd))?;
            let (k, v) = (
                k.transpose(0, 1)?.contiguous()?,
                v.transpose(0, 1)?.contiguous()?,
            );
            let (k, v) = match cache.layers[li].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                None => (k, v),
            };
            cache.layers[li] = Some((k.clone(), v.clone()));
            // Query head j·rep + r reads key/value head j.
            let q = q
                .transpose(0, 1)?
                .contiguous()?
                .reshape((kvh, rep * n, hd))?;
            let scores = (q.matmul(&k.t()?)? * scale)?.reshape((kvh, rep, n, past + n))?;
            let scores = match &mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let att = super::softmax_f32(&scores)?.reshape((kvh, rep * n, past + n))?;
            let o = att
                .matmul(&v)?
                .reshape((qh, n, hd))?
                .transpose(0, 1)?
                .reshape((n, qh * hd))?;
            x = (x + layer.o.forward(&o)?)?;
            let h = layer.post_norm.forward(&x)?;
            let mlp = layer.down.forward(
                &(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?,
            )?;
            x = (x + mlp)?;
            if let (Some(vis), Some(idx)) = (&visual, &visual_index) {
                if let Some(extra) = vis.deepstack.get(li) {
                    x = x.index_add(idx, extra, 0)?;
                }
            }
        }
        cache.len += n;
        let x = if all { x } else { x.narrow(0, n - 1, 1)? };
        Ok(self
            .lm_head
            .forward(&self.norm.forward(&x)?)?
            .to_dtype(DType::F32)?)
    }
}

/// Greedy choice: the highest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of one row of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
    logits.iter().map(|&v| v - lse).collect()
}
