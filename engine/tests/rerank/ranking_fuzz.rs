//! Property tests of the MLLM answer parser: whatever the string, no panic
//! and always a permutation of the candidates, with the answer's valid marks
//! first when there are any.

use proptest::prelude::*;
use squire_engine::ranking::parse_ranking;

fn is_permutation(order: &[usize], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
}

/// Strings built from the pieces answers are made of: JSON punctuation,
/// keys, numbers (negative, huge, decimal), words, unicode and whitespace.
fn answerish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\\".to_string()),
        Just("\"ranking\"".to_string()),
        Just("\"top_k_indices\"".to_string()),
        Just("Image ".to_string()),
        Just("```json\n".to_string()),
        Just(" then ".to_string()),
        Just("é漢🙂".to_string()),
        Just("\n".to_string()),
        (0u64..30).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[a-zA-Z ]{0,8}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_string_gives_a_permutation(s in any::<String>(), n in 0usize..40) {
        let p = parse_ranking(&s, n);
        prop_assert!(is_permutation(&p.order, n), "{:?} -> {:?}", s, p.order);
        prop_assert!(p.mentioned <= n);
        prop_assert_eq!(p.usable, p.mentioned > 0);
    }

    #[test]
    fn answer_like_strings_give_a_permutation(s in answerish(), n in 0usize..25) {
        let p = parse_ranking(&s, n);
        prop_assert!(is_permutation(&p.order, n), "{:?} -> {:?}", s, p.order);
        // Unmentioned candidates follow in their prior order.
        let tail = &p.order[p.mentioned..];
        prop_assert!(tail.windows(2).all(|w| w[0] < w[1]), "{:?} -> {:?}", s, p.order);
    }

    #[test]
    fn a_valid_json_ranking_is_followed_exactly(perm in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(), take in 1usize..12, noise in "[a-z .]{0,20}") {
        let marks: Vec<usize> = perm[..take].iter().map(|i| i + 1).collect();
        let answer = format!("{noise}{{\"ranking\": {marks:?}}}{noise}");
        let p = parse_ranking(&answer, 12);
        prop_assert_eq!(&p.order[..take], &perm[..take]);
        prop_assert_eq!(p.mentioned, take);
    }
}
