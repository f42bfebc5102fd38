//! The device- and dtype-generic CLIP encoder on candle tensors: the path for
//! f16 and for non-CPU devices, and an independent check of the fast path.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};

use super::config::{ClipConfig, ClipVisionConfig};
use super::Activation;
use crate::error::Result;
use crate::weights::CheckedWeights;

struct Ctx<'a> {
    w: &'a CheckedWeights,
    dtype: DType,
    device: &'a Device,
}

impl Ctx<'_> {
    fn t(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(name, shape, self.dtype, self.device)
    }
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.t(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.t(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }
    fn norm(&self, prefix: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.t(&format!("{prefix}.weight"), &[width])?,
            self.t(&format!("{prefix}.bias"), &[width])?,
            eps,
        ))
    }
}

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

struct Encoder {
    layers: Vec<Layer>,
    heads: usize,
    act: Activation,
}

impl Encoder {
    fn load(
        c: &Ctx,
        prefix: &str,
        n: usize,
        d: usize,
        heads: usize,
        mlp: usize,
        act: Activation,
        eps: f64,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let p = format!("{prefix}.encoder.layers.{i}");
            layers.push(Layer {
                ln1: c.norm(&format!("{p}.layer_norm1"), d, eps)?,
                q: c.linear(&format!("{p}.self_attn.q_proj"), d, d, true)?,
                k: c.linear(&format!("{p}.self_attn.k_proj"), d, d, true)?,
                v: c.linear(&format!("{p}.self_attn.v_proj"), d, d, true)?,
                o: c.linear(&format!("{p}.self_attn.out_proj"), d, d, true)?,
                ln2: c.norm(&format!("{p}.layer_norm2"), d, eps)?,
                fc1: c.linear(&format!("{p}.mlp.fc1"), mlp, d, true)?,
                fc2: c.linear(&format!("{p}.mlp.fc2"), d, mlp, true)?,
            });
        }
        Ok(Encoder { layers, heads, act })
    }

    fn forward(&self, mut x: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let dh = d / self.heads;
        let scale = 1.0 / (dh as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for l in &self.layers {
            let h = l.ln1.forward(&x)?;
            let q = split((l.q.forward(&h)? * scale)?)?;
            let k = split(l.k.forward(&h)?)?;
            let v = split(l.v.forward(&h)?)?;
            let mut att = q.matmul(&k.t()?)?;
            if let Some(m) = mask {
                att = att.broadcast_add(m)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att.to_dtype(DType::F32)?)?
                .to_dtype(x.dtype())?;
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))?;
            x = (x + l.o.forward(&o)?)?;
            let h = l.fc1.forward(&l.ln2.forward(&x)?)?;
            let h = match self.act {
                Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
                Activation::Gelu => h.gelu_erf()?,
                Activation::GeluTanh => h.gelu()?,
                Activation::Relu6 => h.clamp(0f32, 6f32)?,
            };
            x = (x + l.fc2.forward(&h)?)?;
        }
        Ok(x)
    }
}

fn l2(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

/// The vision tower on candle tensors.
pub(crate) struct GenericVision {
    cfg: ClipVisionConfig,
    patch: Tensor,
    class_embedding: Tensor,
    positions: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Linear,
    dtype: DType,
    device: Device,
}

impl GenericVision {
    pub fn load(
        w: &CheckedWeights,
        cfg: &ClipConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let c = Ctx { w, dtype, device };
        let v = cfg.vision_config.clone();
        let (d, p) = (v.hidden_size, v.patch_size);
        let pre = "vision_model";
        Ok(GenericVision {
            patch: c.t(
                &format!("{pre}.embeddings.patch_embedding.weight"),
                &[d, 3, p, p],
            )?,
            class_embedding: c.t(&format!("{pre}.embeddings.class_embedding"), &[d])?,
            positions: c.t(
                &format!("{pre}.embeddings.position_embedding.weight"),
                &[cfg.vision_tokens(), d],
            )?,
            pre_norm: c.norm(&format!("{pre}.pre_layrnorm"), d, v.layer_norm_eps)?,
            encoder: Encoder::load(
                &c,
                pre,
                v.num_hidden_layers,
                d,
                v.num_attention_heads,
                v.intermediate_size,
                v.hidden_act,
                v.layer_norm_eps,
            )?,
            post_norm: c.norm(&format!("{pre}.post_layernorm"), d, v.layer_norm_eps)?,
            projection: c.linear("visual_projection", cfg.projection_dim, d, false)?,
            cfg: v,
            dtype,
            device: device.clone(),
        })
    }

    pub fn forward(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let s = self.cfg.image_size;
        let d = self.cfg.hidden_size;
        let x = Tensor::from_slice(pixels, (batch, 3, s, s), &self.device)?.to_dtype(self.dtype)?;
        let x = x.conv2d(&self.patch, 0, self.cfg.patch_size, 1, 1)?; // (b, d, g, g)
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (b, g·g, d)
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .repeat((batch, 1, 1))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positions.unsqueeze(0)?)?;
        let x = self.pre_norm.forward(&x)?;
        let x = self.encoder.forward(x, None)?;
        let pooled = self.post_norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        let out = l2(&self.projection.forward(&pooled)?)?;
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The text tower on candle tensors.
pub(crate) struct GenericText {
    tokens: Tensor,
    positions: Tensor,
    encoder: Encoder,
    final_norm: LayerNorm,
    projection: Linear,
    dtype: DType,
    device: Device,
}

impl GenericText {
    pub fn load(
        w: &CheckedWeights,
        cfg: &ClipConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let c = Ctx { w, dtype, device };
        let t = cfg.text_config.clone();
        let d = t.hidden_size;
        let pre = "text_model";
        Ok(GenericText {
            tokens: c.t(
                &format!("{pre}.embeddings.token_embedding.weight"),
                &[t.vocab_size, d],
            )?,
            positions: c.t(
                &format!("{pre}.embeddings.position_embedding.weight"),
                &[t.max_position_embeddings, d],
            )?,
            encoder: Encoder::load(
                &c,
                pre,
                t.num_hidden_layers,
                d,
                t.num_attention_heads,
                t.intermediate_size,
                t.hidden_act,
                t.layer_norm_eps,
            )?,
            final_norm: c.norm(&format!("{pre}.final_layer_norm"), d, t.layer_norm_eps)?,
            projection: c.linear("text_projection", cfg.projection_dim, d, false)?,
            dtype,
            device: device.clone(),
        })
    }

    pub fn forward(&self, ids: &[Vec<u32>], pool_at: &[usize], pad: u32) -> Result<Vec<f32>> {
        let batch = ids.len();
        let seq = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(batch * seq);
        for s in ids {
            flat.extend(s.iter().copied());
            flat.extend(std::iter::repeat_n(pad, seq - s.len()));
        }
        let ids_t = Tensor::from_vec(flat, (batch, seq), &self.device)?;
        let x = self
            .tokens
            .embedding(&ids_t.flatten_all()?)?
            .reshape((batch, seq, ()))?;
        let x = x.broadcast_add(&self.positions.narrow(0, 0, seq)?.unsqueeze(0)?)?;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, seq, seq), &self.device)?.to_dtype(self.dtype)?;
        let x = self.encoder.forward(x, Some(&mask))?;
        let mut rows = Vec::with_capacity(batch);
        for (b, &t) in pool_at.iter().enumerate() {
            rows.push(x.get(b)?.get(t)?);
        }
        let pooled = self.final_norm.forward(&Tensor::stack(&rows, 0)?)?;
        let out = l2(&self.projection.forward(&pooled)?)?;
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }
}
