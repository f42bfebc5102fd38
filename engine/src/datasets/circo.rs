//! CIRCO (Baldrati et al., ICCV 2023): `val.json` / `test.json`, one record
//! per query over COCO 2017 unlabeled images (ids are COCO image ids).

use std::path::Path;

use serde::Deserialize;

use super::read_json_records;
use crate::eval::EvalError;

/// One CIRCO query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Query {
    /// Query id (submission files are keyed by it).
    pub id: u64,
    /// COCO id of the reference image.
    pub reference_img_id: u64,
    /// The modification text.
    pub relative_caption: String,
    /// What reference and targets have in common.
    pub shared_concept: String,
    /// The annotated target (absent in the test split).
    #[serde(default)]
    pub target_img_id: Option<u64>,
    /// Every ground-truth target (absent in the test split): mAP@k is computed over these.
    #[serde(default)]
    pub gt_img_ids: Vec<u64>,
    /// Annotated semantic aspects (absent in the test split).
    #[serde(default)]
    pub semantic_aspects: Vec<String>,
}

/// Reads `val.json` or `test.json`.
pub fn load_queries(path: &Path) -> Result<Vec<Query>, EvalError> {
    read_json_records(path, |v| {
        v.get("id")
            .map(|p| format!(" (id {p})"))
            .unwrap_or_default()
    })
}
