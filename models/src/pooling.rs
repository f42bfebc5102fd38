//! How a CNN feature map becomes a global descriptor: GeM, and SuperGlobal's
//! GeM+ / Regional-GeM / Scale-GeM pipeline (`shared/reference/algorithms.md`
//! §1), computed with the kernels crate's CPU backend.
//!
//! Per scale: [Regional-GeM] → GeM (p = 3 for plain GeM, 4.6 for GeM+) → L2;
//! with Scale-GeM the network runs at 0.7071×, 1× and 1.4142× the input size
//! (the image tensor bilinearly resized, as `F.interpolate(…, mode="bilinear",
//! align_corners=False)` does) and the per-scale descriptors are merged by an
//! element-wise max, then L2-normalised. No whitening (a learned projection
//! would need training data; the lite pack has none).

use std::fmt;
use std::str::FromStr;

use squire_kernels::{cpu, FeatureMaps, GemParams, RegionalGemParams, ScaleGemMode};

use crate::error::{ModelError, Result};

/// A pooling pipeline, named as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// `gem`: GeM with p = 3 (the common baseline).
    #[default]
    Gem,
    /// `gem+`: GeM+ (p = 4.6).
    GemPlus,
    /// `gem+rgem`: Regional-GeM, then GeM+.
    GemPlusRegional,
    /// `gem+rgem+sgem`: Regional-GeM and GeM+ at three scales, merged by Scale-GeM.
    GemPlusRegionalScale,
}

impl Pooling {
    /// Every pipeline, in the order of the ablation.
    pub const ALL: [Pooling; 4] = [
        Pooling::Gem,
        Pooling::GemPlus,
        Pooling::GemPlusRegional,
        Pooling::GemPlusRegionalScale,
    ];

    /// Image scales the network runs at.
    pub fn scales(&self) -> &'static [f64] {
        match self {
            Pooling::GemPlusRegionalScale => &[0.7071, 1.0, 1.4142],
            _ => &[1.0],
        }
    }

    fn gem(&self) -> GemParams {
        match self {
            Pooling::Gem => GemParams::GEM,
            _ => GemParams::GEM_PLUS,
        }
    }

    fn regional(&self) -> bool {
        matches!(
            self,
            Pooling::GemPlusRegional | Pooling::GemPlusRegionalScale
        )
    }

    /// Pools one scale's `batch × c × h × w` map into L2-normalised `batch × c`.
    pub fn pool_scale(
        &self,
        map: &[f32],
        batch: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        let err =
            |e: squire_kernels::KernelError| ModelError::InvalidRequest(format!("pooling: {e}"));
        let maps = FeatureMaps::new(map, batch, c, h, w).map_err(err)?;
        let regional;
        let maps = if self.regional() {
            regional = cpu::regional_gem(maps, RegionalGemParams::SUPERGLOBAL).map_err(err)?;
            FeatureMaps::new(&regional, batch, c, h, w).map_err(err)?
        } else {
            maps
        };
        let mut out = cpu::gem(maps, self.gem()).map_err(err)?;
        out.chunks_exact_mut(c.max(1)).for_each(cpu::l2_normalize);
        Ok(out)
    }

    /// Merges per-scale descriptors (each `batch × c`, L2-normalised).
    pub fn merge_scales(&self, scales: &[Vec<f32>], c: usize) -> Result<Vec<f32>> {
        match scales {
            [one] => Ok(one.clone()),
            _ => {
                let refs: Vec<&[f32]> = scales.iter().map(|s| s.as_slice()).collect();
                cpu::scale_gem(&refs, c, ScaleGemMode::Max)
                    .map_err(|e| ModelError::InvalidRequest(format!("Scale-GeM: {e}")))
            }
        }
    }
}

impl FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gem" => Ok(Pooling::Gem),
            "gem+" => Ok(Pooling::GemPlus),
            "gem+rgem" => Ok(Pooling::GemPlusRegional),
            "gem+rgem+sgem" => Ok(Pooling::GemPlusRegionalScale),
            other => Err(format!(
                "unknown pooling {other:?} (expected gem, gem+, gem+rgem or gem+rgem+sgem)"
            )),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Gem => "gem",
            Pooling::GemPlus => "gem+",
            Pooling::GemPlusRegional => "gem+rgem",
            Pooling::GemPlusRegionalScale => "gem+rgem+sgem",
        })
    }
}

/// Bilinear resize of `batch × channels × h × w` to `oh × ow` with
/// half-pixel centres and edge clamping (PyTorch's `align_corners=False`).
pub fn resize_bilinear(
    src: &[f32],
    batch: usize,
    channels: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; batch * channels * oh * ow];
    let coords = |n: usize, on: usize| -> Vec<(usize, usize, f32)> {
        let scale = n as f32 / on as f32;
        (0..on)
            .map(|i| {
                let x = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(n - 1);
                (x0, (x0 + 1).min(n - 1), x - x0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (coords(h, oh), coords(w, ow));
    for (plane, dst) in src.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                dst[oy * ow + ox] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Pooling::ALL {
            assert_eq!(p.to_string().parse::<Pooling>(), Ok(p));
        }
        assert!("max".parse::<Pooling>().is_err());
    }

    #[test]
    fn bilinear_matches_align_corners_false() {
        // torch.nn.functional.interpolate(tensor([[[[0., 1.], [2., 3.]]]]),
        // size=(4, 4), mode="bilinear", align_corners=False) gives rows
        // [0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3].
        let got = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 1, (2, 2), (4, 4));
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(got, want);
        // The same size is the identity.
        let x: Vec<f32> = (0..2 * 3 * 5 * 4).map(|i| i as f32).collect();
        assert_eq!(resize_bilinear(&x, 2, 3, (5, 4), (5, 4)), x);
    }

    #[test]
    fn pipelines_pool_as_their_parts() {
        let (b, c, h, w) = (2, 3, 4, 4);
        let map: Vec<f32> = (0..b * c * h * w)
            .map(|i| ((i * 7) % 11) as f32 / 10.0)
            .collect();
        let gem = Pooling::Gem.pool_scale(&map, b, c, h, w).unwrap();
        let plus = Pooling::GemPlus.pool_scale(&map, b, c, h, w).unwrap();
        assert_eq!(gem.len(), b * c);
        assert_ne!(gem, plus);
        let mut want =
            cpu::gem(FeatureMaps::new(&map, b, c, h, w).unwrap(), GemParams::GEM).unwrap();
        want.chunks_exact_mut(c).for_each(cpu::l2_normalize);
        assert_eq!(gem, want);
        for row in Pooling::GemPlusRegional
            .pool_scale(&map, b, c, h, w)
            .unwrap()
            .chunks(c)
        {
            assert!((row.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Merging one scale is the identity; several take the element-wise max.
        let merged = Pooling::GemPlusRegionalScale
            .merge_scales(&[gem.clone(), plus.clone()], c)
            .unwrap();
        assert_eq!(merged.len(), b * c);
        assert_eq!(
            Pooling::Gem
                .merge_scales(std::slice::from_ref(&gem), c)
                .unwrap(),
            gem
        );
    }
}
