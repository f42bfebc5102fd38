//! Inputs, parameters and outputs shared by both backends.

use crate::error::{KernelError, Result};

/// One scored database row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Row in the database (0-based, upload order).
    pub row: usize,
    /// Similarity with the query.
    pub score: f32,
}

/// The order every top-k follows: descending score, ties by ascending row.
pub(crate) fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.row.cmp(&b.row))
}

/// How database vectors are stored (scores are always accumulated in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 4 bytes per value.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes per value: half the memory traffic;
    /// values are rounded once at upload, so both backends score the same
    /// rounded vectors.
    F16,
}

impl Precision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// What a similarity kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// Plain dot product.
    #[default]
    InnerProduct,
    /// Cosine: the query and every row are L2-normalised (a zero vector
    /// scores 0 against everything).
    Cosine,
}

/// A batch of C×H×W feature maps (row-major `n × c × h × w`), e.g. a CNN's
/// last activation or a ViT's patch tokens laid out as a grid.
#[derive(Debug, Clone, Copy)]
pub struct FeatureMaps<'a> {
    /// `n × c × h × w` values.
    pub data: &'a [f32],
    /// Maps in the batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl<'a> FeatureMaps<'a> {
    /// Wraps `data`, checking that it holds exactly `n × c × h × w` values.
    pub fn new(data: &'a [f32], n: usize, c: usize, h: usize, w: usize) -> Result<Self> {
        let want = n
            .checked_mul(c)
            .and_then(|v| v.checked_mul(h))
            .and_then(|v| v.checked_mul(w));
        if want != Some(data.len()) {
            return Err(KernelError::Shape(format!(
                "feature maps: {} values for {n} × {c} × {h} × {w}",
                data.len()
            )));
        }
        if h == 0 || w == 0 {
            return Err(KernelError::Shape(format!(
                "feature maps: empty spatial size {h} × {w}"
            )));
        }
        Ok(FeatureMaps { data, n, c, h, w })
    }
}

/// Generalized-mean pooling over each channel's H×W values:
/// `f_c = (mean_{h,w} max(x, eps)^p)^(1/p)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemParams {
    /// The power (1 = average pooling; large = max pooling).
    pub p: f32,
    /// Values are clamped to at least this before the power.
    pub eps: f32,
}

impl GemParams {
    /// SuperGlobal's GeM+: p = 4.6, eps = 1e-8.
    pub const GEM_PLUS: GemParams = GemParams { p: 4.6, eps: 1e-8 };
    /// The common GeM baseline: p = 3, eps = 1e-6.
    pub const GEM: GemParams = GemParams { p: 3.0, eps: 1e-6 };

    pub(crate) fn check(&self) -> Result<()> {
        if !(self.p.is_finite() && self.p > 0.0) || !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(KernelError::Parameter(format!(
                "GeM needs p > 0 and eps > 0, got p = {}, eps = {}",
                self.p, self.eps
            )));
        }
        Ok(())
    }
}

impl Default for GemParams {
    fn default() -> Self {
        GemParams::GEM_PLUS
    }
}

/// SuperGlobal's Regional-GeM: `x' = mix · LP(x) + (1 − mix) · x`, where LP
/// is a `size × size`, stride-1 sliding generalized mean
/// `(Σ max(x, 0)^p / size²)^(1/p)` over the map reflection-padded by
/// `size / 2` on each side. Output has the input's shape.
///
/// Reflection follows PyTorch's `ReflectionPad2d` (the edge is not repeated);
/// where a map is smaller than the padding (which PyTorch refuses) the index
/// keeps reflecting back and forth, so a 1×1 map reflects onto itself.
/// Negative activations are clamped to 0 inside LP (a fractional power of a
/// negative number is undefined); the `(1 − mix) · x` term keeps them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionalGemParams {
    /// The LP power (SuperGlobal: 2.5).
    pub p: f32,
    /// Window side, odd (SuperGlobal: 5).
    pub size: usize,
    /// Weight of the pooled map (SuperGlobal: 0.5).
    pub mix: f32,
}

impl RegionalGemParams {
    /// SuperGlobal's values: p = 2.5, 5×5, 50/50.
    pub const SUPERGLOBAL: RegionalGemParams = RegionalGemParams {
        p: 2.5,
        size: 5,
        mix: 0.5,
    };

    pub(crate) fn check(&self) -> Result<()> {
        if !(self.p.is_finite() && self.p > 0.0)
            || self.size == 0
            || self.size % 2 == 0
            || !self.mix.is_finite()
        {
            return Err(KernelError::Parameter(format!(
                "Regional-GeM needs p > 0 and an odd window, got p = {}, size = {}, mix = {}",
                self.p, self.size, self.mix
            )));
        }
        Ok(())
    }
}

impl Default for RegionalGemParams {
    fn default() -> Self {
        RegionalGemParams::SUPERGLOBAL
    }
}

/// How Scale-GeM merges one descriptor per image scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaleGemMode {
    /// SuperGlobal's default (the p = ∞ limit): L2-normalise each scale's
    /// descriptor, take the element-wise max over scales, L2-normalise.
    Max,
    /// The finite-p variant of SuperGlobal's code: with γ the minimum over
    /// every value of every scale, `(mean_s (x_s − γ)^p)^(1/p) + γ`
    /// (no per-scale normalisation), then L2-normalised.
    Power(f32),
}

/// Checks that `values` holds a whole number of `dim`-long rows.
pub(crate) fn rows_of(values: &[f32], dim: usize, what: &str) -> Result<usize> {
    if dim == 0 {
        return Err(KernelError::Shape(format!("{what}: dimension is 0")));
    }
    if values.len() % dim != 0 {
        return Err(KernelError::Shape(format!(
            "{what}: {} values are not a whole number of {dim}-dim vectors",
            values.len()
        )));
    }
    Ok(values.len() / dim)
}
