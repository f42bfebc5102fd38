//! The error type of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, loading or running a model.
///
/// Every variant names the file, field or value at fault, so that the message
/// alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file (config, preprocessor config) is malformed or misses a field.
    #[error("invalid JSON in {path}: {message}")]
    Json {
        /// The file that failed.
        path: PathBuf,
        /// What serde reported (line, column, field).
        message: String,
    },
    /// A config value is present but unusable (zero heads, width not divisible by heads, ...).
    #[error("invalid config in {path}: field `{field}`: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The offending field.
        field: String,
        /// Why it is unusable.
        message: String,
    },
    /// A safetensors file is corrupt, truncated or not safetensors at all.
    #[error("corrupt or truncated safetensors file {path}: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// A tensor the architecture needs is missing from the checkpoint.
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape implied by config.json.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// The tokenizer file is missing or unusable.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An image could not be decoded or is refused (too large, unsupported).
    #[error("image {path}: {message}")]
    Image {
        /// The image file (or `<memory>` for in-memory bytes).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A model name or directory could not be resolved to files on disk.
    #[error("{0}")]
    NotFound(String),
    /// A request that the model cannot serve (bad batch, wrong dtype for the device, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the models crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
