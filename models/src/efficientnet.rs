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
    fn load(w: &CheckedWeights, conv: &str, bn: &str, stride: usize, depthwise: bool, dev: &Device) -> Result<Self> {
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
        let (gamma, beta, mean, var) = (v("weight")?, v("bias")?, v("running_mean")?, v("running_var")?);
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = kernel.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(ConvBn { weight, bias, stride, groups: if depthwise { out } else { 1 }, kernel: k })
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
                Some(ConvBn::load(&w, &format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false, &dev)?)
            } else {
                None
            };
            let depthwise = ConvBn::load(&w, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), stride, true, &dev)?;
            let project = ConvBn::load(&w, &format!("{p}._project_conv"), &format!("{p}._bn2"), 1, false, &dev)?;
            let out_ch = project.weight.dim(0)?;
            let in_ch = match &expand {
                Some(e) => e.weight.dim(1)?,
                None => depthwise.weight.dim(0)?,
            };
            blocks.push(Block { expand, depthwise, project, residual: stride == 1 && in_ch == out_ch });
        }
        let head = ConvBn::load(&w, "_conv_head", "_bn1", 1, false, &dev)?;
        let feat = head.weight.dim(0)?;
        let fc_shape = w.shape_of("_fc.weight")?;
        let classes = fc_shape.first().copied().unwrap_or(0);
        let fc_w = w.get("_fc.weight", &[classes, feat], DType::F32, &dev)?;
        let fc_b = w.get("_fc.bias", &[classes], DType::F32, &dev)?;
        Ok(EfficientNetLite { stem, blocks, head, fc_w, fc_b, device: dev })
    }

    /// Channels of the final feature map (1280).
    pub fn feature_channels(&self) -> usize {
        self.head.weight.dim(0).unwrap_or(0)
    }

    /// Runs the network on preprocessed pixels (`batch × 3 × h × w`, CHW).
    pub fn forward_pixels(&self, pixels: &[f32], batch: usize, h: usize, w: usize) -> Result<EfficientNetOutput> {
        if pixels.len() != batch * 3 * h * w {
            return Err(ModelError::InvalidRequest(format!("{} values for {batch}×3×{h}×{w}", pixels.len())));
        }
        let x = Tensor::from_slice(pixels, (batch, 3, h, w), &self.device)?;
        self.forward(&x)
    }

    /// Runs the network on a pixel tensor.
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
        Ok(EfficientNetOutput { feature_map, logits })
    }
}

/// Generalised-mean pooling of a `batch × C × h × w` map into `batch × C`:
/// `(mean(max(x, eps)^p))^(1/p)`, then L2-normalised.
pub fn gem_pool(map: &Tensor, p: f64, eps: f64) -> Result<Vec<f32>> {
    let (b, c, _, _) = map.dims4()?;
    let pooled = map.clamp(eps as f32, f32::MAX)?.powf(p)?.mean(D::Minus1)?.mean(D::Minus1)?.powf(1.0 / p)?;
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
