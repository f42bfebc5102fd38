//! Reading a ranking out of an MLLM's answer: the parser every MLLM
//! reranker shares (EBR's grid marks, CoTRR's image labels).
//!
//! Marks are 1-based. In order of preference the parser reads:
//! 1. the first balanced `{...}` block that is JSON: the list under a known
//!    key (`ranking`, `top_k_indices`, `ranked`, `order`, `marks`,
//!    `indices`, `ids`, `answer`, `result`), else its first list of numbers;
//! 2. the first balanced `[...]` block that is a JSON list of numbers;
//! 3. every whole number in the prose, in order ("Image 3 is best, then 7").
//!
//! Numbers may be JSON numbers or strings ("3", "Image 3", "#3"). Marks
//! out of range and repeats are dropped; candidates never mentioned follow
//! in their prior order. An answer with no usable mark, or read from prose
//! with fewer than two valid marks (where two or more candidates are
//! ranked: a lone number in prose is not a ranking), is
//! [`Parsed::usable`] = false and leaves the prior order.

use serde_json::Value;

use crate::rerank::AnswerRead;

/// The outcome of parsing one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The new order: a permutation of `0..n` (0-based candidate positions).
    pub order: Vec<usize>,
    /// How many candidates the answer placed (the rest follow in prior order).
    pub mentioned: usize,
    /// Whether any usable mark was found.
    pub usable: bool,
    /// Which reading produced the marks: "json-object", "json-list", "prose" or "none".
    pub source: &'static str,
}

impl Parsed {
    /// The provenance class of this reading ([`AnswerRead::Fallback`] when unusable).
    pub fn read(&self) -> AnswerRead {
        match (self.usable, self.source) {
            (false, _) => AnswerRead::Fallback,
            (true, "json-object") => AnswerRead::Json,
            (true, "json-list") => AnswerRead::List,
            _ => AnswerRead::Prose,
        }
    }
}

/// Keys whose list is taken first from a JSON object answer.
const KEYS: [&str; 9] = [
    "ranking",
    "top_k_indices",
    "ranked",
    "order",
    "marks",
    "indices",
    "ids",
    "answer",
    "result",
];

/// Which readings of an answer count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    /// JSON first, then the numbers in the prose (models do answer in prose).
    #[default]
    Prose,
    /// JSON only: an answer without a JSON ranking is unusable.
    Strict,
}

impl std::str::FromStr for ParseMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prose" => Ok(ParseMode::Prose),
            "strict" => Ok(ParseMode::Strict),
            other => Err(format!("`{other}`: expected prose or strict")),
        }
    }
}

/// Parses `answer` as a ranking of `n` candidates with 1-based marks, prose included.
pub fn parse_ranking(answer: &str, n: usize) -> Parsed {
    parse_ranking_with(answer, n, ParseMode::Prose)
}

/// [`parse_ranking`] with the readings `mode` allows.
pub fn parse_ranking_with(answer: &str, n: usize, mode: ParseMode) -> Parsed {
    let (marks, source) =
        if let Some(m) = first_block(answer, '{', '}').and_then(|b| object_marks(&b)) {
            (m, "json-object")
        } else if let Some(m) = first_block(answer, '[', ']').and_then(|b| list_marks(&b)) {
            (m, "json-list")
        } else if mode == ParseMode::Prose {
            (prose_numbers(answer), "prose")
        } else {
            (Vec::new(), "none")
        };
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for m in marks {
        if m >= 1 && m <= n as u64 && !seen[(m - 1) as usize] {
            seen[(m - 1) as usize] = true;
            order.push((m - 1) as usize);
        }
    }
    if source == "prose" && order.len() < 2.min(n) {
        order.clear();
        seen.iter_mut().for_each(|s| *s = false);
    }
    let mentioned = order.len();
    order.extend((0..n).filter(|&i| !seen[i]));
    Parsed {
        order,
        mentioned,
        usable: mentioned > 0,
        source: if mentioned > 0 { source } else { "none" },
    }
}

/// Every balanced `open ... close` block in order, outermost first; the
/// first that parses as JSON wins (strings are honoured when balancing).
pub(crate) fn first_block(s: &str, open: char, close: char) -> Option<Value> {
    let bytes: Vec<char> = s.chars().collect();
    let mut start = 0;
    while let Some(off) = bytes[start..].iter().position(|&c| c == open) {
        let begin = start + off;
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        let mut end = None;
        for (i, &c) in bytes.iter().enumerate().skip(begin) {
            if in_str {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            if c == '"' {
                in_str = true;
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
        }
        if let Some(end) = end {
            let text: String = bytes[begin..=end].iter().collect();
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return Some(v);
            }
        }
        start = begin + 1;
    }
    None
}

fn object_marks(v: &Value) -> Option<Vec<u64>> {
    let obj = v.as_object()?;
    for key in KEYS {
        if let Some((_, val)) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            if let Some(m) = list_marks(val) {
                return Some(m);
            }
        }
    }
    obj.values().find_map(list_marks)
}

/// The marks of a JSON list (numbers, or strings holding one number each).
fn list_marks(v: &Value) -> Option<Vec<u64>> {
    let items = v.as_array()?;
    let marks: Vec<u64> = items
        .iter()
        .filter_map(|x| match x {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e15)
                    .map(|f| f as u64)
            }),
            Value::String(s) => prose_numbers(s).first().copied(),
            Value::Object(o) => o.values().find_map(|x| x.as_u64()),
            _ => None,
        })
        .collect();
    (!marks.is_empty()).then_some(marks)
}

/// Words that may run straight into a mark ("Image3").
const LABELS: [&str; 7] = ["image", "img", "candidate", "cand", "mark", "no", "picture"];

/// Whole numbers in prose, in order; digits that are part of a decimal
/// ("0.85") or of a word ("B2") are skipped.
fn prose_numbers(s: &str) -> Vec<u64> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let begin = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let before = begin.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i).copied();
        let decimal = matches!(before, Some('.') if begin >= 2 && chars[begin - 2].is_ascii_digit())
            || (after == Some('.') && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        // "Image3", "img3", "#3" count; "GPT4", "B2" do not.
        let word: String = chars[..begin]
            .iter()
            .rev()
            .take_while(|c| c.is_alphabetic())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let in_word = !word.is_empty() && !LABELS.contains(&word.to_lowercase().as_str());
        if decimal || in_word || i - begin > 6 {
            continue;
        }
        let digits: String = chars[begin..i].iter().collect();
        if let Ok(v) = digits.parse() {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(a: &str, n: usize) -> Vec<usize> {
        parse_ranking(a, n).order
    }

    #[test]
    fn json_object_with_a_known_key() {
        assert_eq!(order(r#"Sure! {"ranking": [3, 1, 2]}"#, 3), vec![2, 0, 1]);
        assert_eq!(
            order(r#"{"reasoning": "x [9]", "top_k_indices": [2, 4]}"#, 4),
            vec![1, 3, 0, 2]
        );
        assert_eq!(
            parse_ranking(r#"{"ranking": [2]}"#, 3).source,
            "json-object"
        );
    }

    #[test]
    fn json_object_with_an_unknown_key_uses_its_first_list() {
        assert_eq!(
            order(r##"{"best_images": ["Image 2", "#1"]}"##, 3),
            vec![1, 0, 2]
        );
    }

    #[test]
    fn braces_inside_strings_do_not_break_the_block() {
        assert_eq!(
            order(r#"{"why": "a } b {", "ranking": [2, 1]}"#, 2),
            vec![1, 0]
        );
    }

    #[test]
    fn bare_json_list_and_code_fences() {
        assert_eq!(order("```json\n[4, 2]\n```", 4), vec![3, 1, 0, 2]);
    }

    #[test]
    fn numbers_in_prose() {
        assert_eq!(
            order("Image 3 is best, then 7, then image 1.", 9),
            vec![2, 6, 0, 1, 3, 4, 5, 7, 8]
        );
        // Decimals and words with digits are not marks.
        assert_eq!(
            order("Image 2 (score 0.85) beats GPT4's pick 1", 3),
            vec![1, 0, 2]
        );
        assert_eq!(order("Best: Image3, then img2", 3), vec![2, 1, 0]);
    }

    #[test]
    fn out_of_range_zero_and_duplicates_are_dropped() {
        let p = parse_ranking("[0, 5, 2, 2, 99, 1]", 3);
        assert_eq!(p.order, vec![1, 0, 2]);
        assert_eq!(p.mentioned, 2);
    }

    #[test]
    fn an_unusable_answer_keeps_the_prior_order() {
        for a in [
            "",
            "I cannot tell.",
            "{}",
            "[]",
            "{\"ranking\": []}",
            "[0, 10]",
        ] {
            let p = parse_ranking(a, 4);
            assert_eq!(p.order, vec![0, 1, 2, 3], "{a:?}");
            assert!(!p.usable, "{a:?}");
        }
    }

    #[test]
    fn a_lone_number_in_prose_is_not_a_ranking() {
        for a in [
            "The 3rd one, maybe.",
            "I see 2 dogs and 40 cats",
            "Sorry, as a model trained in 2023 I cannot rank these.",
        ] {
            let p = parse_ranking(a, 4);
            assert!(!p.usable, "{a:?}: {p:?}");
            assert_eq!(
                (p.read(), p.order),
                (AnswerRead::Fallback, vec![0, 1, 2, 3]),
                "{a:?}"
            );
        }
        // One mark suffices in JSON, and in prose when there is one candidate.
        assert_eq!(
            parse_ranking(r#"{"ranking": [2]}"#, 3).read(),
            AnswerRead::Json
        );
        assert_eq!(parse_ranking("[2]", 3).read(), AnswerRead::List);
        assert!(parse_ranking("Image 1.", 1).usable);
        // Prose with two marks is read, and says so.
        assert_eq!(
            parse_ranking("Image 3, then image 1", 4).read(),
            AnswerRead::Prose
        );
    }

    #[test]
    fn strict_parsing_reads_json_only() {
        let prose = "Image 3 is best, then 7, then image 1.";
        assert!(parse_ranking_with(prose, 9, ParseMode::Prose).usable);
        let p = parse_ranking_with(prose, 9, ParseMode::Strict);
        assert_eq!((p.usable, p.read()), (false, AnswerRead::Fallback));
        assert_eq!(
            parse_ranking_with(r#"Sure: {"ranking": [2, 1]}"#, 2, ParseMode::Strict).read(),
            AnswerRead::Json
        );
        assert_eq!("strict".parse::<ParseMode>(), Ok(ParseMode::Strict));
        assert!("loose".parse::<ParseMode>().unwrap_err().contains("loose"));
    }

    #[test]
    fn no_candidates() {
        assert_eq!(parse_ranking("[1, 2]", 0).order, Vec::<usize>::new());
    }
}
