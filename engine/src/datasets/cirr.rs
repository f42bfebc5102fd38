//! CIRR (Liu et al., ICCV 2021): `captions/cap.rc2.<split>.json` (one record
//! per triplet) and `image_splits/split.rc2.<split>.json` (image name →
//! relative path).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::read_json_records;
use crate::eval::EvalError;

/// The group of six similar images a triplet belongs to (Recall_subset).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageSet {
    /// Group id.
    pub id: u64,
    /// The six images of the group (reference included).
    pub members: Vec<String>,
}

/// One CIRR triplet: a reference image, a modification caption and (outside
/// the test split) the target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Triplet {
    /// The pair id (submission files are keyed by it).
    pub pairid: u64,
    /// Reference image name.
    pub reference: String,
    /// The modification text.
    pub caption: String,
    /// The annotated target (absent in the test split).
    #[serde(default)]
    pub target_hard: Option<String>,
    /// Soft targets with their scores (absent in the test split).
    #[serde(default)]
    pub target_soft: BTreeMap<String, f32>,
    /// The group used by Recall_subset.
    pub img_set: ImageSet,
}

/// Reads `cap.rc2.<split>.json`.
pub fn load_triplets(path: &Path) -> Result<Vec<Triplet>, EvalError> {
    read_json_records(path, |v| {
        v.get("pairid")
            .map(|p| format!(" (pairid {p})"))
            .unwrap_or_default()
    })
}

/// Reads `split.rc2.<split>.json`: image name → path relative to the image root.
pub fn load_split(path: &Path) -> Result<BTreeMap<String, String>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EvalError::Format {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("expected an object of image name → path: {e}"),
    })
}
