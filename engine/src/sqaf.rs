//! SQAF (SQUARE's Semantic Query-Augmented Fusion) for composed queries:
//! an MLLM looks at the reference image and the modification text and
//! writes a caption of the target image; the caption's text embedding joins
//! the image and modification-text embeddings in one normalised query.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use squire_models::mllm::{ChatRequest, Message, Mllm, Part};

use crate::cost::MllmCost;

/// Weights of the fused query q = normalise(w_i·ê_img + w_t·ê_mod + w_c·ê_caption),
/// each embedding normalised first.
///
/// Defaults: image 0.1, text 0.4, caption 0.5. The image : text ratio is
/// 1 : 4, the α = 0.8 that SQUARE's authors use for CLIP backbones
/// (WeiMoCIR), so without a caption the query is their base query; the
/// caption, a whole description of the target in the gallery's text space,
/// gets half of the total weight. SQUARE does not publish its weights
/// (algorithms.md §2); these are our choice, configurable on every command.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SqafWeights {
    /// Weight of the reference image embedding.
    pub image: f32,
    /// Weight of the modification text embedding.
    pub text: f32,
    /// Weight of the caption embedding.
    pub caption: f32,
}

impl Default for SqafWeights {
    fn default() -> Self {
        SqafWeights {
            image: 0.1,
            text: 0.4,
            caption: 0.5,
        }
    }
}

/// Options of the caption call.
#[derive(Debug, Clone, PartialEq)]
pub struct SqafOptions {
    /// Fusion weights.
    pub weights: SqafWeights,
    /// Most caption tokens (CLIP reads 77 at most).
    pub max_tokens: u32,
}

impl Default for SqafOptions {
    fn default() -> Self {
        SqafOptions {
            weights: SqafWeights::default(),
            max_tokens: 77,
        }
    }
}

/// The caption prompt: the reference image, then the instruction.
pub fn caption_request(
    reference: Arc<RgbImage>,
    modification: &str,
    options: &SqafOptions,
) -> ChatRequest {
    let instruction = format!(
        "The image above is a reference image. Requested change: \"{}\".\n\
         Describe the target image: the reference image with the change applied. \
         Answer with one caption of at most 30 words describing only the target image, \
         with no preamble.",
        modification.trim()
    );
    ChatRequest::new(
        vec![
            Message::system("You write short, concrete captions for an image search engine."),
            Message::user(vec![Part::Image(reference), Part::Text(instruction)]),
        ],
        options.max_tokens,
    )
}

/// The caption inside an answer: the `caption` field of a JSON object if the
/// model sent one, else the first non-empty line, without a "Caption:"
/// label or quotes. `None` when nothing is left.
pub fn clean_caption(answer: &str) -> Option<String> {
    let trimmed = answer.trim();
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(trimmed) {
        if let Some(c) = o
            .iter()
            .find(|(k, _)| k.to_lowercase().contains("caption"))
            .and_then(|(_, v)| v.as_str())
        {
            return clean_caption(c);
        }
    }
    let line = trimmed
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("```"))?;
    let mut line = line;
    for label in ["target caption:", "caption:", "target image:", "target:"] {
        if line
            .get(..label.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(label))
        {
            line = line[label.len()..].trim();
        }
    }
    let line = line.trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c.is_whitespace());
    (!line.is_empty()).then(|| line.to_string())
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

/// The fused query: normalise(w_i·ê_img + w_t·ê_mod + w_c·ê_caption); without
/// a caption, the base query normalise(w_i·ê_img + w_t·ê_mod).
pub fn fuse(image: &[f32], text: &[f32], caption: Option<&[f32]>, w: &SqafWeights) -> Vec<f32> {
    let (i, t) = (normalised(image), normalised(text));
    let mut q: Vec<f32> = i
        .iter()
        .zip(&t)
        .map(|(a, b)| w.image * a + w.text * b)
        .collect();
    if let Some(c) = caption {
        for (q, c) in q.iter_mut().zip(normalised(c)) {
            *q += w.caption * c;
        }
    }
    normalised(&q)
}

/// The caption stage's result.
#[derive(Debug, Clone)]
pub struct CaptionOutcome {
    /// The cleaned caption; `None` when the call failed or the answer was empty.
    pub caption: Option<String>,
    /// The raw answer.
    pub answer: Option<String>,
    /// Why there is no caption.
    pub error: Option<String>,
    /// Calls, tokens, time.
    pub cost: MllmCost,
}

/// Asks `mllm` for the target caption of a composed query.
pub fn caption_target(
    mllm: &dyn Mllm,
    reference: Arc<RgbImage>,
    modification: &str,
    options: &SqafOptions,
) -> CaptionOutcome {
    let start = Instant::now();
    let request = caption_request(reference, modification, options);
    let mut cost = MllmCost::default();
    let mut out = match mllm.chat(&request) {
        Ok(r) => {
            cost.record(&request, &r);
            let caption = clean_caption(&r.text);
            let error = caption
                .is_none()
                .then(|| "the MLLM's caption was empty".to_string());
            CaptionOutcome {
                caption,
                answer: Some(r.text),
                error,
                cost,
            }
        }
        Err(e) => {
            cost.record_failure(&request, e.attempts());
            CaptionOutcome {
                caption: None,
                answer: None,
                error: Some(e.to_string()),
                cost,
            }
        }
    };
    out.cost.finish(start.elapsed());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_cleaned() {
        assert_eq!(
            clean_caption("  Caption: \"A red sleeveless dress.\"\n\nMore text").as_deref(),
            Some("A red sleeveless dress.")
        );
        assert_eq!(
            clean_caption(r#"{"caption": "a dog on snow"}"#).as_deref(),
            Some("a dog on snow")
        );
        assert_eq!(clean_caption("```\nA cat\n```").as_deref(), Some("A cat"));
        assert_eq!(clean_caption("   \n "), None);
        assert_eq!(clean_caption("\"\""), None);
    }

    #[test]
    fn fusion_is_the_normalised_weighted_sum_of_normalised_embeddings() {
        let w = SqafWeights {
            image: 0.25,
            text: 0.75,
            caption: 1.0,
        };
        // Unnormalised inputs along three axes.
        let q = fuse(
            &[2.0, 0.0, 0.0],
            &[0.0, 5.0, 0.0],
            Some(&[0.0, 0.0, 0.5]),
            &w,
        );
        let n = (0.25f32 * 0.25 + 0.75 * 0.75 + 1.0).sqrt();
        for (a, b) in q.iter().zip([0.25 / n, 0.75 / n, 1.0 / n]) {
            assert!((a - b).abs() < 1e-6, "{q:?}");
        }
        // Without a caption: the base query, image : text = 1 : 3.
        let q = fuse(&[2.0, 0.0, 0.0], &[0.0, 5.0, 0.0], None, &w);
        assert!((q[1] / q[0] - 3.0).abs() < 1e-5 && q[2] == 0.0);
    }
}
