//! FQDN selectors (`matchName` / `matchPattern`) and the matcher that answers
//! "which selectors match this name?" for a whole policy set at once.
//!
//! Semantics (Cilium's; docs/policy-semantics.md §9 has the full language
//! and where it differs from Cilium): names and patterns are compared
//! case-insensitively with the trailing dot optional. In a pattern, `*` alone
//! matches every valid name; `*` inside a label matches zero or more of
//! `[-a-z0-9_]` and never crosses a dot; a leading `**.` matches one or more
//! whole labels. Nothing else is special.
//!
//! Cost: exact names live in a hash map; patterns live in a trie keyed by
//! labels from the right (`io` -> `x` -> `*`), with literal labels hashed and
//! in-label globs kept in a short per-node list. A lookup walks the name's
//! labels once, so it does not grow with the number of selectors.

use std::collections::HashMap;
use std::fmt;

/// Longest pattern or name accepted, in characters (DNS's limit).
pub const MAX_NAME_LEN: usize = 255;

/// Why a `matchName` or `matchPattern` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The value is empty (or only a dot).
    #[error("is empty; expected a DNS name such as `api.example.com`")]
    Empty,
    /// The value is longer than a DNS name may be.
    #[error("is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[-a-zA-Z0-9_.*]` (or `*` in a `matchName`).
    #[error("has invalid character {ch:?} at position {pos}; allowed are letters, digits, `-`, `_`, `.`{star}")]
    InvalidChar {
        ch: char,
        pos: usize,
        star: &'static str,
    },
    /// `**` somewhere other than a leading `**.` label.
    #[error(
        "uses `**` at {0}; `**` is only valid as a whole leading label, as in `**.example.com`"
    )]
    MisplacedDoubleStar(String),
    /// Two dots in a row, or a leading dot.
    #[error("has an empty label (`..` or a leading `.`)")]
    EmptyLabel,
}

/// A validated, canonical (lowercase, no trailing dot) FQDN selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FqdnSelector {
    /// `matchName`: exactly this name.
    Name(String),
    /// `matchPattern`: a wildcard pattern.
    Pattern(String),
}

impl FqdnSelector {
    /// Validates a `matchName` value.
    pub fn name(raw: &str) -> Result<Self, PatternError> {
        let canonical = canonicalize(raw, false)?;
        Ok(Self::Name(canonical))
    }

    /// Validates a `matchPattern` value.
    pub fn pattern(raw: &str) -> Result<Self, PatternError> {
        let canonical = canonicalize(raw, true)?;
        let labels: Vec<&str> = canonical.split('.').collect();
        for (i, label) in labels.iter().enumerate() {
            if label.contains("**") && !(i == 0 && *label == "**" && labels.len() > 1) {
                return Err(PatternError::MisplacedDoubleStar(format!(
                    "label {} (`{label}`)",
                    i + 1
                )));
            }
        }
        Ok(Self::Pattern(canonical))
    }

    /// The canonical text, as written in policy YAML (without trailing dot).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Name(s) | Self::Pattern(s) => s,
        }
    }

    /// Whether this one selector matches `name`; the slow, obviously-right
    /// path, used by `tollgate fqdn match` and as a cross-check in tests.
    pub fn matches(&self, name: &str) -> bool {
        let mut m = FqdnMatcherBuilder::default();
        m.insert(self.clone());
        !m.build().matches(name).is_empty()
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(s) => write!(f, "matchName: {s}"),
            Self::Pattern(s) => write!(f, "matchPattern: {s}"),
        }
    }
}

fn canonicalize(raw: &str, allow_star: bool) -> Result<String, PatternError> {
    let len = raw.chars().count();
    if len > MAX_NAME_LEN {
        return Err(PatternError::TooLong(len));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(PatternError::Empty);
    }
    for (pos, ch) in trimmed.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric()
            || matches!(ch, '-' | '_' | '.')
            || (allow_star && ch == '*');
        if !ok {
            let star = if allow_star {
                ", `*`"
            } else {
                " (use matchPattern for `*`)"
            };
            return Err(PatternError::InvalidChar { ch, pos, star });
        }
    }
    if trimmed.split('.').any(str::is_empty) {
        return Err(PatternError::EmptyLabel);
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Index of a selector inside one [`FqdnMatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorId(pub u32);

/// Collects selectors, deduplicating equal ones, then builds the matcher.
#[derive(Debug, Default)]
pub struct FqdnMatcherBuilder {
    ids: HashMap<FqdnSelector, SelectorId>,
    selectors: Vec<FqdnSelector>,
}

impl FqdnMatcherBuilder {
    /// Adds a selector (or finds the equal one already added) and returns its id.
    pub fn insert(&mut self, selector: FqdnSelector) -> SelectorId {
        if let Some(id) = self.ids.get(&selector) {
            return *id;
        }
        let id = SelectorId(self.selectors.len() as u32);
        self.ids.insert(selector.clone(), id);
        self.selectors.push(selector);
        id
    }

    pub fn build(self) -> FqdnMatcher {
        let mut matcher = FqdnMatcher {
            exact: HashMap::new(),
            match_all: Vec::new(),
            nodes: vec![Node::default()],
            selectors: self.selectors,
        };
        for (i, selector) in matcher.selectors.clone().iter().enumerate() {
            matcher.add(SelectorId(i as u32), selector);
        }
        matcher
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    literal: HashMap<Box<str>, usize>,
    globs: Vec<(Glob, usize)>,
    /// Selectors whose pattern ends exactly here.
    terminal: Vec<SelectorId>,
    /// `**.`-selectors whose suffix ends here: they match when at least one
    /// more label remains.
    any_labels: Vec<SelectorId>,
}

/// One label of a pattern containing `*`, split at the stars.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    parts: Vec<Box<str>>,
}

impl Glob {
    fn new(label: &str) -> Self {
        Self {
            parts: label.split('*').map(Into::into).collect(),
        }
    }

    /// Classic star-only glob match; the text consumed by `*` must be label
    /// characters, which holds because `label` was checked by the caller.
    fn matches(&self, label: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("split yields one part");
        let Some(mut remaining) = label.strip_prefix(&**first) else {
            return false;
        };
        let (last, middle) = rest.split_last().expect("a glob has at least one star");
        for part in middle {
            match remaining.find(&**part) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(&**last)
    }
}

/// All FQDN selectors of a policy set, compiled for lookup.
#[derive(Debug, Clone)]
pub struct FqdnMatcher {
    exact: HashMap<Box<str>, Vec<SelectorId>>,
    match_all: Vec<SelectorId>,
    nodes: Vec<Node>,
    selectors: Vec<FqdnSelector>,
}

impl Default for FqdnMatcher {
    fn default() -> Self {
        FqdnMatcherBuilder::default().build()
    }
}

impl FqdnMatcher {
    fn add(&mut self, id: SelectorId, selector: &FqdnSelector) {
        let text = selector.as_str();
        if !text.contains('*') {
            self.exact.entry(text.into()).or_default().push(id);
            return;
        }
        if text == "*" {
            self.match_all.push(id);
            return;
        }
        let mut labels: Vec<&str> = text.split('.').collect();
        let double_star = labels.first() == Some(&"**");
        if double_star {
            labels.remove(0);
        }
        let mut node = 0;
        for label in labels.iter().rev() {
            node = self.child(node, label);
        }
        if double_star {
            self.nodes[node].any_labels.push(id);
        } else {
            self.nodes[node].terminal.push(id);
        }
    }

    fn child(&mut self, node: usize, label: &str) -> usize {
        let next = self.nodes.len();
        if label.contains('*') {
            let glob = Glob::new(label);
            if let Some((_, existing)) = self.nodes[node].globs.iter().find(|(g, _)| *g == glob) {
                return *existing;
            }
            self.nodes[node].globs.push((glob, next));
        } else {
            if let Some(existing) = self.nodes[node].literal.get(label) {
                return *existing;
            }
            self.nodes[node].literal.insert(label.into(), next);
        }
        self.nodes.push(Node::default());
        next
    }

    /// The selector behind an id.
    pub fn selector(&self, id: SelectorId) -> &FqdnSelector {
        &self.selectors[id.0 as usize]
    }

    /// Number of distinct selectors compiled in.
    pub fn len(&self) -> usize {
        self.selectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.selectors.is_empty()
    }

    /// The ids of every selector matching `name`, sorted and deduplicated.
    /// A name that is not a valid DNS name matches nothing (fail closed).
    pub fn matches(&self, name: &str) -> Vec<SelectorId> {
        let mut out = Vec::new();
        self.matches_into(name, &mut out);
        out
    }

    /// As [`Self::matches`], reusing the caller's buffer (cleared first).
    pub fn matches_into(&self, name: &str, out: &mut Vec<SelectorId>) {
        out.clear();
        let Some(name) = normalize_name(name) else {
            return;
        };
        out.extend_from_slice(&self.match_all);
        if let Some(ids) = self.exact.get(&*name) {
            out.extend_from_slice(ids);
        }
        if self.nodes.len() > 1 {
            let labels: Vec<&str> = name.rsplit('.').collect();
            self.walk(0, &labels, out);
        }
        out.sort_unstable();
        out.dedup();
    }

    fn walk(&self, node: usize, labels: &[&str], out: &mut Vec<SelectorId>) {
        let n = &self.nodes[node];
        let Some((label, rest)) = labels.split_first() else {
            out.extend_from_slice(&n.terminal);
            return;
        };
        out.extend_from_slice(&n.any_labels);
        if let Some(&next) = n.literal.get(*label) {
            self.walk(next, rest, out);
        }
        for (glob, next) in &n.globs {
            if glob.matches(label) {
                self.walk(*next, rest, out);
            }
        }
    }
}

/// Lowercases and drops one trailing dot; `None` if `name` is not a valid DNS
/// name (empty label, a character outside `[-a-z0-9_]`, too long).
pub fn normalize_name(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_LEN {
        return None;
    }
    let mut needs_lower = false;
    let mut label_len = 0usize;
    for b in trimmed.bytes() {
        match b {
            b'.' => {
                if label_len == 0 {
                    return None;
                }
                label_len = 0;
                continue;
            }
            b'A'..=b'Z' => needs_lower = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            _ => return None,
        }
        label_len += 1;
    }
    if label_len == 0 {
        return None;
    }
    Some(if needs_lower {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn pat(p: &str, name: &str) -> bool {
        FqdnSelector::pattern(p).unwrap().matches(name)
    }

    #[rstest]
    #[case("*", "a.b.c", true)]
    #[case("*", "x", true)]
    #[case("*.x.io", "a.x.io", true)]
    #[case("*.x.io", "x.io", false)]
    #[case("*.x.io", "a.b.x.io", false)]
    #[case("*x.io", "x.io", true)]
    #[case("*x.io", "ax.io", true)]
    #[case("*x.io", "a.x.io", false)]
    #[case("**.x.io", "a.x.io", true)]
    #[case("**.x.io", "a.b.x.io", true)]
    #[case("**.x.io", "x.io", false)]
    #[case("api.*.com", "api.stripe.com", true)]
    #[case("api.*.com", "api.a.b.com", false)]
    #[case("a*b*c.io", "abc.io", true)]
    #[case("a*b*c.io", "a-x-b_y_c.io", true)]
    #[case("a*b*c.io", "acb.io", false)]
    #[case("API.Stripe.COM.", "api.stripe.com", true)]
    #[case("api.stripe.com", "API.STRIPE.COM.", true)]
    #[case("sub_domain.*.io", "sub_domain.x.io", true)]
    #[case("*.x.io", "a..x.io", false)]
    #[case("*", "bad name.io", false)]
    fn pattern_semantics(#[case] p: &str, #[case] name: &str, #[case] expected: bool) {
        assert_eq!(pat(p, name), expected, "pattern {p:?} vs name {name:?}");
    }

    #[rstest]
    #[case("", "empty")]
    #[case(".", "empty")]
    #[case("a..b", "empty label")]
    #[case("exa mple.com", "invalid character ' '")]
    #[case("x.**", "`**`")]
    #[case("**", "`**`")]
    #[case("a.**.b", "`**`")]
    #[case("a**.b", "`**`")]
    #[case("***.b", "`**`")]
    fn invalid_patterns(#[case] p: &str, #[case] needle: &str) {
        let err = FqdnSelector::pattern(p).unwrap_err().to_string();
        assert!(err.contains(needle), "error for {p:?} was {err:?}");
    }

    #[test]
    fn overlong_pattern_is_rejected() {
        let long = format!("{}.io", "a".repeat(260));
        assert!(matches!(
            FqdnSelector::pattern(&long),
            Err(PatternError::TooLong(_))
        ));
    }

    #[test]
    fn match_name_rejects_star_with_hint() {
        let err = FqdnSelector::name("*.x.io").unwrap_err().to_string();
        assert!(err.contains("use matchPattern"), "{err}");
    }

    #[test]
    fn matcher_returns_every_matching_selector() {
        let mut b = FqdnMatcherBuilder::default();
        let exact = b.insert(FqdnSelector::name("api.x.io").unwrap());
        let star = b.insert(FqdnSelector::pattern("*.x.io").unwrap());
        let deep = b.insert(FqdnSelector::pattern("**.io").unwrap());
        let all = b.insert(FqdnSelector::pattern("*").unwrap());
        let other = b.insert(FqdnSelector::pattern("*.y.io").unwrap());
        assert_eq!(
            b.insert(FqdnSelector::name("API.x.io.").unwrap()),
            exact,
            "dedup"
        );
        let m = b.build();
        let mut want = vec![exact, star, deep, all];
        want.sort();
        assert_eq!(m.matches("api.x.io"), want);
        assert_eq!(m.matches("b.y.io"), vec![deep, all, other]);
        assert_eq!(m.matches("io"), vec![all]);
    }
}
