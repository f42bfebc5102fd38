//! EfficientNet-Lite0 on candle tensors: the image half of the offline "lite"
//! model pack. Produces the 1280×7×7 feature map, its GeM-pooled global
//! descriptor and the 1000 ImageNet logits.
//!
//! Weights use the EfficientNet-PyTorch naming (`_conv_stem`, `_bn0`,
//! `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
//! `_conv_head`, `_bn1`, `_fc`). Batch norm (eps 1e-3) is folded into the
//! convolutions at load. Padding is TensorFlow's "same" (asymmetric for
//! stride 2), as the network was trained with.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use rayon::prelude::*;

use crate::clip::Activation;
use crate::cpu_ops::{dense, DenseT};
use crate::error::{ModelError, Result};
use crate::weights::CheckedWeights;

/// Strides of the 16 MBConv blocks of EfficientNet-Lite0 (the stem has stride 2).
pub const LITE0_STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];
const BN_EPS: f64 = 1e-3;

/// A convolution with its batch norm folded in.
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    groups: usize,
    kernel: usize,
}

impl ConvBn {
    fn load(
        w: &CheckedWeights,
        conv: &str,
        bn: &str,
        stride: usize,
        depthwise: bool,
        dev: &Device,
    ) -> Result<Self> {
        let name = format!("{conv}.weight");
        let shape = w.shape_of(&name)?;
        if shape.len() != 4 || shape[2] != shape[3] {
            return Err(ModelError::ShapeMismatch {
                path: w.path().to_path_buf(),
                name,
                expected: vec![0, 0, 0, 0],
                found: shape,
            });
        }
        let (out, k) = (shape[0], shape[2]);
        let kernel = w.get(&name, &shape, DType::F32, dev)?;
        let v = |p: &str| w.get(&format!("{bn}.{p}"), &[out], DType::F32, dev);
        let (gamma, beta, mean, var) = (
            v("weight")?,
            v("bias")?,
            v("running_mean")?,
            v("running_var")?,
        );
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = kernel.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(ConvBn {
            weight,
            bias,
            stride,
            groups: if depthwise { out } else { 1 },
            kernel: k,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let x = same_pad(x, h, w, self.kernel, self.stride)?;
        let y = x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?)
    }
}

/// TensorFlow "same" padding: total `max((⌈n/s⌉ − 1)·s + k − n, 0)`, the
/// smaller half before.
fn same_pad(x: &Tensor, h: usize, w: usize, k: usize, s: usize) -> Result<Tensor> {
    let total = |n: usize| ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
    let (ph, pw) = (total(h), total(w));
    let mut x = x.clone();
    if ph > 0 {
        x = x.pad_with_zeros(2, ph / 2, ph - ph / 2)?;
    }
    if pw > 0 {
        x = x.pad_with_zeros(3, pw / 2, pw - pw / 2)?;
    }
    Ok(x)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

/// A 1×1 convolution as a dense layer over NHWC pixels.
fn pointwise(c: &ConvBn) -> Result<DenseT> {
    let (out, inp) = (c.weight.dim(0)?, c.weight.dim(1)?);
    let w = c.weight.flatten_all()?.to_vec1::<f32>()?;
    Ok(DenseT::from_torch(
        &w,
        Some(c.bias.to_vec1::<f32>()?),
        out,
        inp,
    ))
}

/// A depthwise convolution with weights laid out `[ky][kx][channel]`.
struct Depthwise {
    w: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    stride: usize,
    channels: usize,
}

impl Depthwise {
    fn from(c: &ConvBn) -> Result<Self> {
        let (ch, k) = (c.weight.dim(0)?, c.kernel);
        let src = c.weight.flatten_all()?.to_vec1::<f32>()?; // (ch, 1, k, k)
        let mut w = vec![0f32; ch * k * k];
        for o in 0..ch {
            for t in 0..k * k {
                w[t * ch + o] = src[o * k * k + t];
            }
        }
        Ok(Depthwise {
            w,
            bias: c.bias.to_vec1::<f32>()?,
            k,
            stride: c.stride,
            channels: ch,
        })
    }

    /// NHWC `x` (`b × h × w × c`) → NHWC output with TF "same" padding and ReLU6.
    fn forward(&self, x: &[f32], b: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (k, s, c) = (self.k, self.stride, self.channels);
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let pad_h = ((oh - 1) * s + k).saturating_sub(h) / 2;
        let pad_w = ((ow - 1) * s + k).saturating_sub(w) / 2;
        let mut out = vec![0f32; b * oh * ow * c];
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(row, orow)| {
                let (bi, oy) = (row / oh, row % oh);
                let img = &x[bi * h * w * c..(bi + 1) * h * w * c];
                for ox in 0..ow {
                    let acc = &mut orow[ox * c..(ox + 1) * c];
                    acc.copy_from_slice(&self.bias);
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - pad_h as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * s + kx) as isize - pad_w as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let src = &img[(iy as usize * w + ix as usize) * c..][..c];
                            let wt = &self.w[(ky * k + kx) * c..][..c];
                            for ((a, &v), &g) in acc.iter_mut().zip(src).zip(wt) {
                                *a += v * g;
                            }
                        }
                    }
                    acc.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
                }
            });
        (out, oh, ow)
    }
}

struct FastBlock {
    expand: Option<DenseT>,
    depthwise: Depthwise,
    project: DenseT,
    residual: bool,
}

/// The CPU forward pass in NHWC: 1×1 convolutions on the packed matrix kernel
/// (bias and ReLU6 fused), direct depthwise convolutions vectorised over channels.
struct FastNet {
    stem: DenseT,
    stem_k: usize,
    blocks: Vec<FastBlock>,
    head: DenseT,
    fc: DenseT,
}

/// The outputs of one forward pass.
#[derive(Debug)]
pub struct EfficientNetOutput {
    /// The last feature map after the head (`batch × 1280 × h × w`, 7×7 at 224 px).
    pub feature_map: Tensor,
    /// ImageNet logits (`batch × 1000`).
    pub logits: Tensor,
}

/// EfficientNet-Lite0 with folded batch norm.
pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    fc_w: Tensor,
    fc_b: Tensor,
    device: Device,
    fast: FastNet,
}

impl EfficientNetLite {
    /// Loads EfficientNet-Lite0 weights from a safetensors file.
    pub fn load(weights: &Path) -> Result<Self> {
        let w = CheckedWeights::open(weights)?;
        let dev = Device::Cpu;
        let stem = ConvBn::load(&w, "_conv_stem", "_bn0", 2, false, &dev)?;
        let mut blocks = Vec::with_capacity(LITE0_STRIDES.len());
        for (i, &stride) in LITE0_STRIDES.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let expand = if w.contains(&format!("{p}._expand_conv.weight")) {
                Some(ConvBn::load(
                    &w,
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    1,
                    false,
                    &dev,
                )?)
            } else {
                None
            };
            let depthwise = ConvBn::load(
                &w,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                stride,
                true,
                &dev,
            )?;
            let project = ConvBn::load(
                &w,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                1,
                false,
                &dev,
            )?;
            let out_ch = project.weight.dim(0)?;
            let in_ch = match &expand {
                Some(e) => e.weight.dim(1)?,
                None => depthwise.weight.dim(0)?,
            };
            blocks.push(Block {
                expand,
                depthwise,
                project,
                residual: stride == 1 && in_ch == out_ch,
            });
        }
        let head = ConvBn::load(&w, "_conv_head", "_bn1", 1, false, &dev)?;
        let feat = head.weight.dim(0)?;
        let fc_shape = w.shape_of("_fc.weight")?;
        let classes = fc_shape.first().copied().unwrap_or(0);
        let fc_w = w.get("_fc.weight", &[classes, feat], DType::F32, &dev)?;
        let fc_b = w.get("_fc.bias", &[classes], DType::F32, &dev)?;
        let stem_w = stem.weight.flatten_all()?.to_vec1::<f32>()?;
        let (stem_out, stem_k) = (stem.weight.dim(0)?, stem.kernel);
        let fast = FastNet {
            stem: DenseT::from_torch(
                &stem_w,
                Some(stem.bias.to_vec1::<f32>()?),
                stem_out,
                3 * stem_k * stem_k,
            ),
            stem_k,
            blocks: blocks
                .iter()
                .map(|b| {
                    Ok(FastBlock {
                        expand: b.expand.as_ref().map(pointwise).transpose()?,
                        depthwise: Depthwise::from(&b.depthwise)?,
                        project: pointwise(&b.project)?,
                        residual: b.residual,
                    })
                })
                .collect::<Result<_>>()?,
            head: pointwise(&head)?,
            fc: DenseT::from_torch(
                &fc_w.flatten_all()?.to_vec1::<f32>()?,
                Some(fc_b.to_vec1::<f32>()?),
                classes,
                feat,
            ),
        };
        Ok(EfficientNetLite {
            stem,
            blocks,
            head,
            fc_w,
            fc_b,
            device: dev,
            fast,
        })
    }

    /// Channels of the final feature map (1280).
    pub fn feature_channels(&self) -> usize {
        self.head.weight.dim(0).unwrap_or(0)
    }

    /// Runs the network on preprocessed pixels (`batch × 3 × h × w`, CHW) on
    /// the fast CPU path.
    ///
    /// A batch is split into single images run in parallel, each through the
    /// whole network: a layer's activations for one image stay in cache, where
    /// a whole batch's (150 MB in the first blocks at batch 32) would stream
    /// through memory at every layer.
    pub fn forward_pixels(
        &self,
        pixels: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<EfficientNetOutput> {
        if pixels.len() != batch * 3 * h * w || h == 0 || w == 0 {
            return Err(ModelError::InvalidRequest(format!(
                "{} values for {batch}×3×{h}×{w}",
                pixels.len()
            )));
        }
        let parts: Vec<(Vec<f32>, Vec<f32>, usize, usize)> = pixels
            .par_chunks(3 * h * w)
            .map(|p| self.forward_nhwc(p, 1, h, w))
            .collect();
        let (fh, fw) = parts.first().map(|p| (p.2, p.3)).unwrap_or((0, 0));
        let feat = self.fast.head.out;
        let mut nchw = Vec::with_capacity(batch * feat * fh * fw);
        let mut logits = Vec::with_capacity(batch * self.fast.fc.out);
        for (m, l, _, _) in parts {
            nchw.extend(m);
            logits.extend(l);
        }
        Ok(EfficientNetOutput {
            feature_map: Tensor::from_vec(nchw, (batch, feat, fh, fw), &self.device)?,
            logits: Tensor::from_vec(logits, (batch, self.fast.fc.out), &self.device)?,
        })
    }

    /// The fast forward pass on `batch` images: (NCHW feature map, logits, map height, map width).
    fn forward_nhwc(
        &self,
        pixels: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> (Vec<f32>, Vec<f32>, usize, usize) {
        let f = &self.fast;
        // Stem: im2col in the weight's (channel, ky, kx) order, stride 2, "same" padding.
        let (k, s) = (f.stem_k, 2usize);
        let (mut ch, mut cw) = (h.div_ceil(s), w.div_ceil(s));
        let pad_h = ((ch - 1) * s + k).saturating_sub(h) / 2;
        let pad_w = ((cw - 1) * s + k).saturating_sub(w) / 2;
        let kd = 3 * k * k;
        let mut cols = vec![0f32; batch * ch * cw * kd];
        cols.par_chunks_mut(kd).enumerate().for_each(|(r, row)| {
            let (bi, p) = (r / (ch * cw), r % (ch * cw));
            let (oy, ox) = (p / cw, p % cw);
            for c in 0..3 {
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - pad_h as isize;
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - pad_w as isize;
                        if iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w {
                            row[(c * k + ky) * k + kx] =
                                pixels[((bi * 3 + c) * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
        });
        let mut x = vec![0f32; batch * ch * cw * f.stem.out];
        dense(
            &cols,
            batch * ch * cw,
            &f.stem,
            &mut x,
            false,
            Some(Activation::Relu6),
        );
        drop(cols);
        for b in &f.blocks {
            let rows = batch * ch * cw;
            let expanded = match &b.expand {
                Some(e) => {
                    let mut y = vec![0f32; rows * e.out];
                    dense(&x, rows, e, &mut y, false, Some(Activation::Relu6));
                    Some(y)
                }
                None => None,
            };
            let (dw, oh, ow) =
                b.depthwise
                    .forward(expanded.as_deref().unwrap_or(&x), batch, ch, cw);
            let orows = batch * oh * ow;
            if b.residual {
                dense(&dw, orows, &b.project, &mut x, true, None);
            } else {
                let mut y = vec![0f32; orows * b.project.out];
                dense(&dw, orows, &b.project, &mut y, false, None);
                x = y;
            }
            ch = oh;
            cw = ow;
        }
        let rows = batch * ch * cw;
        let feat = f.head.out;
        let mut head = vec![0f32; rows * feat];
        dense(&x, rows, &f.head, &mut head, false, Some(Activation::Relu6));
        // Global average pool, classifier, and the NCHW feature map.
        let hw = ch * cw;
        let mut pooled = vec![0f32; batch * feat];
        let mut nchw = vec![0f32; batch * feat * hw];
        for bi in 0..batch {
            for p in 0..hw {
                let src = &head[(bi * hw + p) * feat..][..feat];
                for (c, &v) in src.iter().enumerate() {
                    pooled[bi * feat + c] += v;
                    nchw[(bi * feat + c) * hw + p] = v;
                }
            }
        }
        pooled.iter_mut().for_each(|v| *v /= hw as f32);
        let mut logits = vec![0f32; batch * f.fc.out];
        dense(&pooled, batch, &f.fc, &mut logits, false, None);
        (nchw, logits, ch, cw)
    }

    /// Runs the network on a pixel tensor with candle's convolutions (slow on
    /// CPU; the reference for [`Self::forward_pixels`]).
    pub fn forward(&self, x: &Tensor) -> Result<EfficientNetOutput> {
        let mut x = relu6(&self.stem.forward(x)?)?;
        for b in &self.blocks {
            let input = x.clone();
            if let Some(e) = &b.expand {
                x = relu6(&e.forward(&x)?)?;
            }
            x = relu6(&b.depthwise.forward(&x)?)?;
            x = b.project.forward(&x)?;
            if b.residual {
                x = (x + input)?;
            }
        }
        let feature_map = relu6(&self.head.forward(&x)?)?;
        let pooled = feature_map.mean(D::Minus1)?.mean(D::Minus1)?;
        let logits = pooled.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?;
        Ok(EfficientNetOutput {
            feature_map,
            logits,
        })
    }
}

/// Generalised-mean pooling of a `batch × C × h × w` map into `batch × C`:
/// `(mean(max(x, eps)^p))^(1/p)`, then L2-normalised.
pub fn gem_pool(map: &Tensor, p: f64, eps: f64) -> Result<Vec<f32>> {
    let (b, c, _, _) = map.dims4()?;
    let pooled = map
        .clamp(eps as f32, f32::MAX)?
        .powf(p)?
        .mean(D::Minus1)?
        .mean(D::Minus1)?
        .powf(1.0 / p)?;
    let mut v = pooled.flatten_all()?.to_vec1::<f32>()?;
    for row in v.chunks_mut(c.max(1)) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|x| *x /= n);
        }
    }
    debug_assert_eq!(v.len(), b * c);
    Ok(v)
}
