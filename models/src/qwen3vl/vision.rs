//! The Qwen3-VL vision tower: patch embedding, the learned position table
//! resampled (bilinear, corners aligned) to each image's grid, 2-D rotary
//! attention, and the patch mergers (the final one and DeepStack's).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{LayerNorm, Linear, Module};

use super::config::Qwen3VlConfig;
use super::processor::ImagePatches;
use super::rotate_half;
use crate::error::Result;
use crate::weights::CheckedWeights;

/// A linear layer with bias, checked against the config's shapes.
pub(super) fn linear(
    w: &CheckedWeights,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
    dt: DType,
    dev: &Device,
) -> Result<Linear> {
    let weight = w.get(&format!("{prefix}.weight"), &[out, inp], dt, dev)?;
    let b = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out], dt, dev)?)
    } else {
        None
    };
    Ok(Linear::new(weight, b))
}

fn layer_norm(
    w: &CheckedWeights,
    prefix: &str,
    width: usize,
    dt: DType,
    dev: &Device,
) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        w.get(&format!("{prefix}.weight"), &[width], dt, dev)?,
        w.get(&format!("{prefix}.bias"), &[width], dt, dev)?,
        1e-6,
    ))
}

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// Merges `merge²` neighbouring patches into one language-model token:
/// layer norm (before the merge, or after it for DeepStack's), then a GELU MLP.
struct PatchMerger {
    norm: LayerNorm,
    postshuffle: bool,
    fc1: Linear,
    fc2: Linear,
    merged: usize,
}

impl PatchMerger {
    fn load(
        w: &CheckedWeights,
        prefix: &str,
        cfg: &Qwen3VlConfig,
        postshuffle: bool,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        let v = &cfg.vision_config;
        let merged = v.hidden_size * v.spatial_merge_size * v.spatial_merge_size;
        Ok(PatchMerger {
            norm: layer_norm(
                w,
                &format!("{prefix}.norm"),
                if postshuffle { merged } else { v.hidden_size },
                dt,
                dev,
            )?,
            postshuffle,
            fc1: linear(
                w,
                &format!("{prefix}.linear_fc1"),
                merged,
                merged,
                true,
                dt,
                dev,
            )?,
            fc2: linear(
                w,
                &format!("{prefix}.linear_fc2"),
                v.out_hidden_size,
                merged,
                true,
                dt,
                dev,
            )?,
            merged,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.postshuffle {
            self.norm.forward(&x.reshape(((), self.merged))?)?
        } else {
            self.norm.forward(x)?.reshape(((), self.merged))?
        };
        Ok(self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)?)
    }
}

/// The tower's output for one image: merged tokens and DeepStack features.
pub struct VisionOutput {
    /// `tokens × out_hidden` embeddings that replace the image's pad tokens.
    pub embeds: Tensor,
    /// One `tokens × out_hidden` tensor per DeepStack level.
    pub deepstack: Vec<Tensor>,
}

/// The vision tower.
pub struct VisionTower {
    patch_embed: Linear,
    pos_embed: Vec<f32>,
    blocks: Vec<Block>,
    merger: PatchMerger,
    deepstack: Vec<(usize, PatchMerger)>,
    cfg: Qwen3VlConfig,
    device: Device,
    dtype: DType,
}

impl VisionTower {
    /// Loads the tower's weights (`model.visual.*`) in `dt`.
    pub fn load(w: &CheckedWeights, cfg: &Qwen3VlConfig, dt: DType, dev: &Device) -> Result<Self> {
        let v = &cfg.vision_config;
        let p = "model.visual";
        let (hid, patch_in) = (
            v.hidden_size,
            v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size,
        );
        // A Conv3d whose kernel equals its stride is a linear map of the flattened patch.
        let conv = w.get(
            &format!("{p}.patch_embed.proj.weight"),
            &[
                hid,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ],
            dt,
            dev,
        )?;
        let patch_embed = Linear::new(
            conv.reshape((hid, patch_in))?,
            Some(w.get(&format!("{p}.patch_embed.proj.bias"), &[hid], dt, dev)?),
        );
        let pos_embed = w.get_f32(
            &format!("{p}.pos_embed.weight"),
            &[v.num_position_embeddings, hid],
        )?;
        let mut blocks = Vec::with_capacity(v.depth);
        for i in 0..v.depth {
            let b = format!("{p}.blocks.{i}");
            blocks.push(Block {
                norm1: layer_norm(w, &format!("{b}.norm1"), hid, dt, dev)?,
                norm2: layer_norm(w, &format!("{b}.norm2"), hid, dt, dev)?,
                qkv: linear(w, &format!("{b}.attn.qkv"), 3 * hid, hid, true, dt, dev)?,
                proj: linear(w, &format!("{b}.attn.proj"), hid, hid, true, dt, dev)?,
                fc1: linear(
                    w,
                    &format!("{b}.mlp.linear_fc1"),
                    v.intermediate_size,
                    hid,
                    true,
                    dt,
                    dev,
                )?,
                fc2: linear(
                    w,
                    &format!("{b}.mlp.linear_fc2"),
                    hid,
                    v.intermediate_size,
                    true,
                    dt,
                    dev,
                )?,
            });
        }
        let merger = PatchMerger::load(w, &format!("{p}.merger"), cfg, false, dt, dev)?;
        let deepstack = v
            .deepstack_visual_indexes
            .iter()
            .enumerate()
            .map(|(k, &layer)| {
                Ok((
                    layer,
                    PatchMerger::load(
                        w,
                        &format!("{p}.deepstack_merger_list.{k}"),
                        cfg,
                        true,
                        dt,
                        dev,
                    )?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            patch_embed,
            pos_embed,
            blocks,
            merger,
            deepstack,
            cfg: cfg.clone(),
            device: dev.clone(),
            dtype: dt,
        })
    }

    /// Row and column of each patch, in merge-block order.
    fn patch_coords(&self, gh: usize, gw: usize) -> Vec<(usize, usize)> {
        let m = self.cfg.vision_config.spatial_merge_size;
        let mut out = Vec::with_capacity(gh * gw);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        out.push((bh * m + ih, bw * m + iw));
                    }
                }
            }
        }
        out
    }

    /// The position table resampled to a `gh × gw` grid (bilinear, corners
    /// aligned, as `F.interpolate(align_corners=True)`), per patch.
    fn position_embeddings(
        &self,
        coords: &[(usize, usize)],
        gh: usize,
        gw: usize,
    ) -> Result<Tensor> {
        let hid = self.cfg.vision_config.hidden_size;
        let side = (self.cfg.vision_config.num_position_embeddings as f64).sqrt() as usize;
        let taps = |i: usize, size: usize| -> [(usize, f32); 2] {
            let src = i as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
            let f = src.floor();
            let lo = (f as usize).min(side - 1);
            let hi = (f as usize + 1).min(side - 1);
            let d = src - f;
            [
                (lo, (1.0 - d).max(0.0)),
                (hi, (1.0 - (1.0 - d).abs()).max(0.0)),
            ]
        };
        let mut out = vec![0f32; coords.len() * hid];
        for (p, &(r, c)) in coords.iter().enumerate() {
            let dst = &mut out[p * hid..(p + 1) * hid];
            for (hr, wr) in taps(r, gh) {
                for (hc, wc) in taps(c, gw) {
                    let w = wr * wc;
                    let row = &self.pos_embed[(hr * side + hc) * hid..(hr * side + hc + 1) * hid];
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d += w * v;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (coords.len(), hid), &self.device)?.to_dtype(self.dtype)?)
    }

    /// cos and sin of the 2-D rotary embedding per patch (`patches × head_dim`).
    fn rotary(&self, coords: &[(usize, usize)]) -> Result<(Tensor, Tensor)> {
        let v = &self.cfg.vision_config;
        let dim = v.hidden_size / v.num_heads;
        let spatial = dim / 2;
        let theta = self.cfg.vision_theta();
        let inv: Vec<f32> = (0..spatial)
            .step_by(2)
            .map(|i| 1.0 / (theta.powf(i as f64 / spatial as f64) as f32))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(coords.len() * dim),
            Vec::with_capacity(coords.len() * dim),
        );
        for &(r, c) in coords {
            let angles: Vec<f32> = inv
                .iter()
                .map(|f| r as f32 * f)
                .chain(inv.iter().map(|f| c as f32 * f))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = (coords.len(), 1, dim);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    /// Runs the tower on one image's patches.
    pub fn forward(&self, patches: &ImagePatches) -> Result<VisionOutput> {
        let v = &self.cfg.vision_config;
        let (gh, gw) = (patches.grid_h, patches.grid_w);
        let n = gh * gw;
        let heads = v.num_heads;
        let hd = v.hidden_size / heads;
        let coords = self.patch_coords(gh, gw);
        let px = Tensor::from_slice(&patches.values, (n, patches.row_len), &self.device)?
            .to_dtype(self.dtype)?;
        let mut x = self
            .patch_embed
            .forward(&px)?
            .broadcast_add(&self.position_embeddings(&coords, gh, gw)?)?;
        let (cos, sin) = self.rotary(&coords)?;
        let rope = |t: &Tensor| -> Result<Tensor> {
            Ok((t.broadcast_mul(&cos)? + rotate_half(t)?.broadcast_mul(&sin)?)?)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut deepstack = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let qkv = b
                .qkv
                .forward(&b.norm1.forward(&x)?)?
                .reshape((n, 3, heads, hd))?;
            let q = rope(&qkv.narrow(1, 0, 1)?.squeeze(1)?)?
                .transpose(0, 1)?
                .contiguous()?;
            let k = rope(&qkv.narrow(1, 1, 1)?.squeeze(1)?)?
                .transpose(0, 1)?
                .contiguous()?;
            let val = qkv
                .narrow(1, 2, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .contiguous()?;
            let att = super::softmax_f32(&(q.matmul(&k.t()?)? * scale)?)?;
            let o = att
                .matmul(&val)?
                .transpose(0, 1)?
                .reshape((n, v.hidden_size))?;
            x = (x + b.proj.forward(&o)?)?;
            let h = b
                .fc2
                .forward(&b.fc1.forward(&b.norm2.forward(&x)?)?.gelu()?)?;
            x = (x + h)?;
            for (layer, merger) in &self.deepstack {
                if *layer == i {
                    deepstack.push(merger.forward(&x)?);
                }
            }
        }
        // DeepStack levels in the config's order.
        Ok(VisionOutput {
            embeds: self.merger.forward(&x)?,
            deepstack,
        })
    }
}

/// Last-dimension halves swapped with the first negated.
pub(super) fn rotate_half_impl(x: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}
