//! Properties of the request-target normalisation, over arbitrary targets:
//! what a rule is matched against never contains a segment a server would
//! resolve differently, and normalising is idempotent.

use http_proxy::normalize::normalize_target;
use proptest::prelude::*;

/// Paths built from the pieces traversal tricks are made of.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("/.".to_string()),
        Just("/..".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%".to_string()),
        Just("%41".to_string()),
        Just("%7e".to_string()),
        Just("?".to_string()),
        Just("api".to_string()),
        Just("v1".to_string()),
        "[a-z0-9._~-]{0,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn normalised_paths_have_no_dot_segments_no_empty_segments_and_are_stable(
        raw in prop_oneof![tricky_path(), "\\PC{0,40}"]
    ) {
        if let Ok(out) = normalize_target(&raw) {
            let path = out.split_once('?').map_or(&*out, |(p, _)| p);
            if out != "*" {
                prop_assert!(path.starts_with('/'), "{raw:?} -> {out:?}");
                for seg in path[1..].split('/') {
                    prop_assert!(seg != "." && seg != "..", "{raw:?} -> {out:?}");
                }
                prop_assert!(!path.contains("//"), "{raw:?} -> {out:?}");
                let lower = path.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2e") && !lower.contains("%2f"), "{raw:?} -> {out:?}");
            }
            let again = normalize_target(&out);
            prop_assert_eq!(again.as_deref(), Ok(&*out), "idempotent: {:?}", raw);
        }
    }
}
