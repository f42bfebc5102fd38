//! A checked reader over a safetensors checkpoint: every tensor is looked up
//! by its checkpoint name, its shape is checked against what the config
//! implies, and failures name the file and the tensor.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Memory-mapped safetensors weights with name and shape checks.
pub struct CheckedWeights {
    inner: MmapedSafetensors,
    path: PathBuf,
}

impl CheckedWeights {
    /// Opens (memory-maps) a safetensors file and validates its header.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
        // SAFETY: the file is opened read-only; Squire never writes model files while they are loaded.
        let inner =
            unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(CheckedWeights {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Opens (memory-maps) the shards of one checkpoint (`model-00001-of-…`)
    /// as one set of tensors; errors name the first file.
    pub fn open_shards(paths: &[PathBuf]) -> Result<Self> {
        let first = paths.first().cloned().unwrap_or_default();
        for p in paths {
            if !p.is_file() {
                return Err(ModelError::io(
                    p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                ));
            }
        }
        // SAFETY: as in `open`: read-only maps of files Squire never writes while loaded.
        let inner =
            unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| ModelError::Safetensors {
                path: first.clone(),
                message: e.to_string(),
            })?;
        Ok(CheckedWeights { inner, path: first })
    }

    /// The file these weights come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.get(name).is_ok()
    }

    /// The stored shape of a tensor.
    pub fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let view = self
            .inner
            .get(name)
            .map_err(|_| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok(view.shape().to_vec())
    }

    /// Loads a tensor, checks its shape and converts it to `dtype` on `device`.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let view = self
            .inner
            .get(name)
            .map_err(|_| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if view.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let t = self
            .inner
            .load(name, device)
            .map_err(|e| ModelError::Safetensors {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })?;
        Ok(t.to_dtype(dtype)?)
    }

    /// Loads a tensor as a flat `f32` vector (row-major), after the shape check.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name, shape, DType::F32, &Device::Cpu)?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Number of scalar parameters stored in the file.
    pub fn parameter_count(&self) -> usize {
        self.inner
            .tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum()
    }
}
