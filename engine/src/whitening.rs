//! Learned PCA-whitening of global descriptors, fitted on a collection's own
//! vectors (unsupervised: no training pairs needed) and stored in the
//! collection directory.
//!
//! Fit: mean μ and covariance C of the vectors; C = U Λ Uᵀ; keep the `dims`
//! leading components; P = diag((λ_i + ε)^(−power/2)) U_dimsᵀ. Apply:
//! x' = L2(P (x − μ)). `power` 1 is full whitening; 0.5 (the default) shrinks
//! it, which matters when a collection holds fewer vectors than dimensions
//! and the trailing eigenvalues are noise.
//!
//! SuperGlobal whitens each scale's descriptor before Scale-GeM merges them
//! (algorithms.md §1). Here whitening is one transform of the final stored
//! vector, fitted after indexing, so it needs no second pass over the
//! images and an incremental index keeps working; the whitening file
//! records the generation and checksum of the vectors it was fitted on, and
//! a stale file is refused until refitted.

use std::path::{Path, PathBuf};

use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};
use squire_kernels::cpu;

/// Errors of fitting, loading and applying a whitening.
#[derive(Debug, thiserror::Error)]
pub enum WhiteningError {
    /// Unusable parameters or data.
    #[error("whitening: {0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("whitening file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Fitting parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WhiteningParams {
    /// Output dimensions (0: min(input dims, vectors − 1)).
    pub dims: usize,
    /// Exponent of the eigenvalue scaling: 1 full whitening, 0 plain PCA rotation.
    pub power: f32,
    /// Added to every eigenvalue, relative to the largest.
    pub epsilon: f32,
}

impl Default for WhiteningParams {
    fn default() -> Self {
        WhiteningParams {
            dims: 0,
            power: 0.5,
            epsilon: 1e-6,
        }
    }
}

/// What a whitening was fitted on, to detect a stale file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FittedOn {
    /// The named vector.
    pub vector: String,
    /// The collection's generation.
    pub generation: u64,
    /// SHA-256 of the vector file it was fitted on (from the collection manifest).
    pub sha256: String,
    /// Vectors used.
    pub rows: usize,
}

/// A fitted PCA-whitening.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// Input length.
    pub dim_in: usize,
    /// Output length.
    pub dim_out: usize,
    /// μ, `dim_in` values.
    pub mean: Vec<f32>,
    /// P, `dim_out × dim_in` row-major.
    pub projection: Vec<f32>,
    /// The parameters used.
    pub params: WhiteningParams,
    /// Eigenvalues kept, largest first.
    pub eigenvalues: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    dim_in: usize,
    dim_out: usize,
    params: WhiteningParams,
    eigenvalues: Vec<f32>,
    fitted_on: FittedOn,
}

const FORMAT: &str = "squire.whitening/1";

impl Whitening {
    /// Fits on `data` (`n × dim` row-major vectors).
    pub fn fit(
        data: &[f32],
        dim: usize,
        params: WhiteningParams,
    ) -> Result<Whitening, WhiteningError> {
        if dim == 0 || data.len() % dim != 0 {
            return Err(WhiteningError::Invalid(format!(
                "{} values are not rows of {dim}",
                data.len()
            )));
        }
        let n = data.len() / dim;
        if n < 2 {
            return Err(WhiteningError::Invalid(format!(
                "needs at least 2 vectors, got {n}"
            )));
        }
        if !(params.power.is_finite() && (0.0..=1.0).contains(&params.power)) {
            return Err(WhiteningError::Invalid(format!(
                "power {} is not in [0, 1]",
                params.power
            )));
        }
        let max_dims = dim.min(n - 1);
        let dims = if params.dims == 0 {
            max_dims
        } else {
            params.dims
        };
        if dims > max_dims {
            return Err(WhiteningError::Invalid(format!(
                "{dims} output dimensions, but {n} vectors of {dim} give at most {max_dims}"
            )));
        }
        let mut mean = vec![0f64; dim];
        for row in data.chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Centred data, transposed (dim × n), so the covariance is its Gram matrix.
        let mut ct = vec![0f32; dim * n];
        for (r, row) in data.chunks_exact(dim).enumerate() {
            for (d, &x) in row.iter().enumerate() {
                ct[d * n + r] = (x as f64 - mean[d]) as f32;
            }
        }
        let g = cpu::matmul_a_bt(&ct, &ct, dim, dim, n);
        let cov = DMatrix::<f64>::from_fn(dim, dim, |i, j| g[i * dim + j] as f64 / n as f64);
        let eig = SymmetricEigen::new(cov);
        let mut idx: Vec<usize> = (0..dim).collect();
        idx.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let top = eig.eigenvalues[idx[0]].max(0.0);
        let eps = params.epsilon as f64 * top.max(f64::MIN_POSITIVE);
        let mut projection = Vec::with_capacity(dims * dim);
        let mut eigenvalues = Vec::with_capacity(dims);
        for &i in idx.iter().take(dims) {
            let lambda = eig.eigenvalues[i].max(0.0);
            let scale = (lambda + eps).powf(-(params.power as f64) / 2.0);
            // Sign convention: the largest-magnitude entry of each component is positive.
            let col = eig.eigenvectors.column(i);
            let sign = if col
                .iter()
                .copied()
                .fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a })
                < 0.0
            {
                -1.0
            } else {
                1.0
            };
            projection.extend(col.iter().map(|&u| (sign * u * scale) as f32));
            eigenvalues.push(lambda as f32);
        }
        Ok(Whitening {
            dim_in: dim,
            dim_out: dims,
            mean: mean.iter().map(|&m| m as f32).collect(),
            projection,
            params: WhiteningParams { dims, ..params },
            eigenvalues,
        })
    }

    /// Whitens `rows` (`n × dim_in`), each output L2-normalised.
    pub fn apply(&self, rows: &[f32]) -> Result<Vec<f32>, WhiteningError> {
        if rows.len() % self.dim_in != 0 {
            return Err(WhiteningError::Invalid(format!(
                "{} values are not rows of {}",
                rows.len(),
                self.dim_in
            )));
        }
        let n = rows.len() / self.dim_in;
        let centred: Vec<f32> = rows
            .chunks_exact(self.dim_in)
            .flat_map(|r| r.iter().zip(&self.mean).map(|(x, m)| x - m))
            .collect();
        let mut out = cpu::matmul_a_bt(&centred, &self.projection, n, self.dim_out, self.dim_in);
        out.chunks_exact_mut(self.dim_out)
            .for_each(cpu::l2_normalize);
        Ok(out)
    }

    /// The file pair for `vector` in a collection directory:
    /// `whitening/<vector>.json` (header) and `whitening/<vector>.f32` (μ, then P).
    pub fn paths(index_dir: &Path, vector: &str) -> (PathBuf, PathBuf) {
        let dir = index_dir.join("whitening");
        (
            dir.join(format!("{vector}.json")),
            dir.join(format!("{vector}.f32")),
        )
    }

    /// Writes the whitening beside a collection (values first, header last,
    /// each through a temporary file and a rename).
    pub fn save(&self, index_dir: &Path, fitted_on: &FittedOn) -> Result<(), WhiteningError> {
        let (header_path, values_path) = Self::paths(index_dir, &fitted_on.vector);
        let err = |p: &Path, e: &dyn std::fmt::Display| WhiteningError::File {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        let dir = header_path.parent().unwrap_or(index_dir);
        std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
        let mut bytes = Vec::with_capacity(4 * (self.mean.len() + self.projection.len()));
        for v in self.mean.iter().chain(&self.projection) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let header = Header {
            format: FORMAT.into(),
            dim_in: self.dim_in,
            dim_out: self.dim_out,
            params: self.params,
            eigenvalues: self.eigenvalues.clone(),
            fitted_on: fitted_on.clone(),
        };
        let json = serde_json::to_vec_pretty(&header).map_err(|e| err(&header_path, &e))?;
        for (path, data) in [(&values_path, &bytes), (&header_path, &json)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, data).map_err(|e| err(&tmp, &e))?;
            std::fs::rename(&tmp, path).map_err(|e| err(path, &e))?;
        }
        Ok(())
    }

    /// Reads the whitening of `vector` beside a collection, with what it was fitted on.
    pub fn load(index_dir: &Path, vector: &str) -> Result<(Whitening, FittedOn), WhiteningError> {
        let (header_path, values_path) = Self::paths(index_dir, vector);
        let err = |p: &Path, m: String| WhiteningError::File {
            path: p.to_path_buf(),
            message: m,
        };
        let text = std::fs::read(&header_path)
            .map_err(|e| err(&header_path, format!("{e} (fit one with `squire whiten`)")))?;
        let h: Header =
            serde_json::from_slice(&text).map_err(|e| err(&header_path, e.to_string()))?;
        if h.format != FORMAT {
            return Err(err(
                &header_path,
                format!("format {:?}, expected {FORMAT:?}", h.format),
            ));
        }
        let bytes = std::fs::read(&values_path).map_err(|e| err(&values_path, e.to_string()))?;
        let want = 4 * (h.dim_in + h.dim_in * h.dim_out);
        if bytes.len() != want {
            return Err(err(
                &values_path,
                format!(
                    "{} bytes, expected {want} for {} → {} dims",
                    bytes.len(),
                    h.dim_in,
                    h.dim_out
                ),
            ));
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(err(&values_path, "holds non-finite values".into()));
        }
        let (mean, projection) = values.split_at(h.dim_in);
        Ok((
            Whitening {
                dim_in: h.dim_in,
                dim_out: h.dim_out,
                mean: mean.to_vec(),
                projection: projection.to_vec(),
                params: h.params,
                eigenvalues: h.eigenvalues,
            },
            h.fitted_on,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Correlated 3-D data with known covariance.
    fn data() -> Vec<f32> {
        let mut s = 7u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        (0..400)
            .flat_map(|_| {
                let (a, b, c) = (next(), next(), next());
                [3.0 * a + 1.0, a + 0.5 * b - 2.0, 0.1 * c]
            })
            .collect()
    }

    #[test]
    fn full_whitening_gives_identity_covariance() {
        let x = data();
        let w = Whitening::fit(
            &x,
            3,
            WhiteningParams {
                dims: 3,
                power: 1.0,
                epsilon: 0.0,
            },
        )
        .expect("fit");
        // Unnormalised projection of the centred data: covariance must be I.
        let centred: Vec<f32> = x
            .chunks_exact(3)
            .flat_map(|r| r.iter().zip(&w.mean).map(|(a, m)| a - m))
            .collect();
        let y = cpu::matmul_a_bt(&centred, &w.projection, 400, 3, 3);
        for i in 0..3 {
            for j in 0..3 {
                let c: f64 = y
                    .chunks_exact(3)
                    .map(|r| r[i] as f64 * r[j] as f64)
                    .sum::<f64>()
                    / 400.0;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-3, "cov[{i}][{j}] = {c}");
            }
        }
        // Eigenvalues largest first; the mean is the data mean.
        assert!(w.eigenvalues[0] >= w.eigenvalues[1] && w.eigenvalues[1] >= w.eigenvalues[2]);
        assert!((w.mean[0] - 1.0).abs() < 0.1 && (w.mean[1] + 2.0).abs() < 0.1);
        // apply() normalises.
        let out = w.apply(&x[..6]).expect("apply");
        for r in out.chunks_exact(3) {
            assert!((r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn dims_are_checked_and_the_file_round_trips() {
        let x = data();
        assert!(
            Whitening::fit(&x[..6], 3, WhiteningParams::default()).is_ok_and(|w| w.dim_out == 1)
        );
        assert!(Whitening::fit(
            &x[..6],
            3,
            WhiteningParams {
                dims: 2,
                ..WhiteningParams::default()
            }
        )
        .is_err());
        assert!(Whitening::fit(
            &x,
            3,
            WhiteningParams {
                power: 2.0,
                ..WhiteningParams::default()
            }
        )
        .is_err());
        let w = Whitening::fit(
            &x,
            3,
            WhiteningParams {
                dims: 2,
                ..WhiteningParams::default()
            },
        )
        .expect("fit");
        let dir = std::env::temp_dir().join(format!("squire-whiten-{}", std::process::id()));
        let on = FittedOn {
            vector: "gem".into(),
            generation: 3,
            sha256: "ab".into(),
            rows: 400,
        };
        w.save(&dir, &on).expect("save");
        let (back, fitted) = Whitening::load(&dir, "gem").expect("load");
        assert_eq!((back, fitted), (w, on));
        // A truncated values file is refused with its name.
        let (_, values) = Whitening::paths(&dir, "gem");
        std::fs::write(&values, [0u8; 8]).expect("truncate");
        let e = Whitening::load(&dir, "gem")
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("gem.f32") && e.contains("expected"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// What identifies the vectors of `vector` in `col`'s current generation.
pub fn fitted_on(
    col: &squire_indexer::Collection,
    vector: &str,
) -> Result<FittedOn, WhiteningError> {
    let m = col.manifest();
    let file = m
        .files
        .iter()
        .find(|(name, _)| {
            Path::new(name)
                .file_name()
                .is_some_and(|f| f == format!("{vector}.f32").as_str())
        })
        .map(|(_, sum)| sum.sha256.clone())
        .ok_or_else(|| {
            let have = m.vectors.keys().cloned().collect::<Vec<_>>().join(", ");
            WhiteningError::Invalid(format!(
                "the collection has no `{vector}` vectors (it has: {have})"
            ))
        })?;
    Ok(FittedOn {
        vector: vector.to_string(),
        generation: m.generation,
        sha256: file,
        rows: col.records().len(),
    })
}

/// Loads the whitening of `vector` stored in `col`, refusing one fitted on
/// other vectors than the collection holds now.
pub fn load_fresh(
    col: &squire_indexer::Collection,
    vector: &str,
) -> Result<Whitening, WhiteningError> {
    let (w, on) = Whitening::load(col.dir(), vector)?;
    let now = fitted_on(col, vector)?;
    if on != now {
        return Err(WhiteningError::Invalid(format!(
            "the whitening in {} was fitted on generation {} ({} images) of `{vector}`, the collection is now at generation {} ({} images): run `squire whiten --index {}` again",
            col.dir().join("whitening").display(),
            on.generation,
            on.rows,
            now.generation,
            now.rows,
            col.dir().display()
        )));
    }
    Ok(w)
}
