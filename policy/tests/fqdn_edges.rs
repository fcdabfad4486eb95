//! The FQDN matcher at its edges: several stars in one label, names and
//! patterns at and over the length limit, empty names, and what a selector
//! says of itself in error messages. (Each of these was a change to the
//! matcher that no other test noticed; see TESTING.md.)

use policy::fqdn::{normalize_name, FqdnMatcherBuilder, FqdnSelector, MAX_NAME_LEN};

fn matches(pattern: &str, name: &str) -> bool {
    let mut b = FqdnMatcherBuilder::default();
    b.insert(FqdnSelector::pattern(pattern).unwrap());
    !b.build().matches(name).is_empty()
}

#[test]
fn a_label_with_two_stars_needs_each_literal_part_in_order() {
    let p = "*a*ab.example.com";
    assert!(matches(p, "aab.example.com"));
    assert!(matches(p, "xaxab.example.com"));
    assert!(matches(p, "aaab.example.com"));
    assert!(
        !matches(p, "ab.example.com"),
        "'a' and 'ab' cannot share the a"
    );
    assert!(!matches(p, "ba.example.com"));
    let p = "*foo*bar.example.com";
    assert!(matches(p, "foobar.example.com"));
    assert!(matches(p, "xfooybar.example.com"));
    assert!(!matches(p, "barfoo.example.com"), "order matters");
    assert!(!matches(p, "fobar.example.com"));
}

/// A name of `len` characters: labels of nine `a`s joined by dots (no
/// trailing dot for the lengths used here).
fn name_of_len(len: usize) -> String {
    (0..len)
        .map(|i| if i % 10 == 9 { '.' } else { 'a' })
        .collect()
}

#[test]
fn names_up_to_255_characters_are_valid_and_longer_or_empty_ones_are_not() {
    assert_eq!(name_of_len(MAX_NAME_LEN).len(), 255);
    assert!(normalize_name(&name_of_len(255)).is_some());
    assert!(
        normalize_name(&format!("{}.", name_of_len(255))).is_some(),
        "plus the root dot"
    );
    assert!(normalize_name(&name_of_len(256)).is_none());
    assert!(normalize_name(&name_of_len(300)).is_none());
    assert!(normalize_name("").is_none());
    assert!(
        normalize_name(".").is_none(),
        "the root alone is no name to match"
    );
}

#[test]
fn patterns_up_to_255_characters_are_accepted_and_longer_ones_rejected() {
    assert!(FqdnSelector::pattern(&name_of_len(255)).is_ok());
    let err = FqdnSelector::pattern(&name_of_len(256)).unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");
    assert!(FqdnSelector::name(&name_of_len(256)).is_err());
}

#[test]
fn a_selector_names_its_kind_and_text() {
    assert_eq!(
        FqdnSelector::name("API.example.com.").unwrap().to_string(),
        "matchName: api.example.com"
    );
    assert_eq!(
        FqdnSelector::pattern("*.example.com").unwrap().to_string(),
        "matchPattern: *.example.com"
    );
}

#[test]
fn the_matcher_counts_its_distinct_selectors() {
    let empty = FqdnMatcherBuilder::default().build();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    let mut b = FqdnMatcherBuilder::default();
    b.insert(FqdnSelector::name("a.test").unwrap());
    b.insert(FqdnSelector::pattern("*.test").unwrap());
    b.insert(FqdnSelector::name("A.TEST.").unwrap()); // the same as the first
    let m = b.build();
    assert!(!m.is_empty());
    assert_eq!(m.len(), 2);
}
