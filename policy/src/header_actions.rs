//! `headerMatches` with a `mismatch` action: a header a rule wants, and what
//! the proxy does to the request when the header is missing or differs —
//! instead of denying it. Cilium's semantics (cilium-envoy's
//! `HeaderMatch::allowed` in `cilium/network_policy.cc`, translated from
//! `pkg/policy/api/http.go`):
//!
//! - the header *matches* when it is present (no `value`) or when all its
//!   copies joined with `,` equal `value` exactly;
//! - on a mismatch the rule still matches, and: `LOG` only reports it, `ADD`
//!   adds a copy with `value`, `DELETE` removes every copy of a header that
//!   is present with another value (nothing for a presence match or an
//!   absent header), `REPLACE` sets the header to `value` (adding it if
//!   absent).
//!
//! A `headerMatches` entry without `mismatch` is a plain requirement and
//! lives in [`crate::rules::HttpRule::headers`].

use std::fmt;

/// Headers no action may add, remove or replace: they say where a
/// request's body ends and what the connection does (the proxy forwards
/// the body as the client framed it, so an edit here would let the
/// destination read the rest as a request no rule saw), or which host the
/// rules judged.
pub const UNEDITABLE_HEADERS: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// Whether an action may change header `name` (see [`UNEDITABLE_HEADERS`]).
pub fn editable(name: &str) -> bool {
    !UNEDITABLE_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// What a `headerMatches.mismatch` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchAction {
    Log,
    Add,
    Delete,
    Replace,
}

impl MismatchAction {
    /// Cilium's spelling (`LOG`, `ADD`, `DELETE`, `REPLACE`); anything else
    /// is `None` (Cilium's validation: "Invalid header action").
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "LOG" => Self::Log,
            "ADD" => Self::Add,
            "DELETE" => Self::Delete,
            "REPLACE" => Self::Replace,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "LOG",
            Self::Add => "ADD",
            Self::Delete => "DELETE",
            Self::Replace => "REPLACE",
        }
    }
}

/// A header a rule wants, and what to do when the request does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAction {
    pub name: String,
    /// `None`: presence is enough.
    pub value: Option<String>,
    pub on_mismatch: MismatchAction,
}

/// One change a matching rule makes to a request (or only reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// `LOG`: the header was missing or had another value; nothing changed.
    Logged { name: String },
    /// `ADD`: a copy `name: value` appended.
    Added { name: String, value: String },
    /// `DELETE`: every copy of `name` removed.
    Removed { name: String },
    /// `REPLACE`: every copy of `name` replaced by one `name: value`.
    Replaced { name: String, value: String },
}

impl HeaderAction {
    /// The edit this header asks for on `headers`, or `None` when the
    /// request already matches (or a `DELETE` has nothing to remove).
    pub fn edit(&self, headers: &[(String, String)]) -> Option<HeaderEdit> {
        let copies: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.name))
            .map(|(_, v)| v.as_str())
            .collect();
        let matches = match &self.value {
            None => !copies.is_empty(),
            Some(want) => !copies.is_empty() && copies.join(",") == *want,
        };
        if matches {
            return None;
        }
        let name = self.name.clone();
        let value = self.value.clone().unwrap_or_default();
        Some(match self.on_mismatch {
            MismatchAction::Log => HeaderEdit::Logged { name },
            MismatchAction::Add => HeaderEdit::Added { name, value },
            MismatchAction::Delete if self.value.is_none() || copies.is_empty() => return None,
            MismatchAction::Delete => HeaderEdit::Removed { name },
            MismatchAction::Replace => HeaderEdit::Replaced { name, value },
        })
    }
}

impl HeaderEdit {
    /// Applies the edit to a header list (names compare case-insensitively).
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        match self {
            Self::Logged { .. } => {}
            Self::Added { name, value } => headers.push((name.clone(), value.clone())),
            Self::Removed { name } => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Self::Replaced { name, value } => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                headers.push((name.clone(), value.clone()));
            }
        }
    }
}

/// For events and logs. Never shows the request's own value of the header:
/// it may be a credential.
impl fmt::Display for HeaderEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Logged { name } => write!(f, "{name}: mismatch logged"),
            Self::Added { name, value } => write!(f, "{name}: added {value:?}"),
            Self::Removed { name } => write!(f, "{name}: removed"),
            Self::Replaced { name, value } => write!(f, "{name}: replaced by {value:?}"),
        }
    }
}

impl fmt::Display for HeaderAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "header {}: {v}", self.name)?,
            None => write!(f, "header {}", self.name)?,
        }
        write!(f, " (else {})", self.on_mismatch.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn action(value: Option<&str>, on_mismatch: MismatchAction) -> HeaderAction {
        HeaderAction {
            name: "X-Env".into(),
            value: value.map(Into::into),
            on_mismatch,
        }
    }

    #[test]
    fn a_matching_header_is_left_alone_whatever_the_action() {
        for a in [
            MismatchAction::Log,
            MismatchAction::Add,
            MismatchAction::Delete,
            MismatchAction::Replace,
        ] {
            assert_eq!(action(Some("prod"), a).edit(&h(&[("x-env", "prod")])), None);
            assert_eq!(action(None, a).edit(&h(&[("X-ENV", "")])), None);
        }
    }

    #[test]
    fn copies_are_compared_joined_with_commas_as_envoy_does() {
        let a = action(Some("a,b"), MismatchAction::Log);
        assert_eq!(a.edit(&h(&[("X-Env", "a"), ("X-Env", "b")])), None);
        assert!(a.edit(&h(&[("X-Env", "a")])).is_some());
        assert!(a.edit(&h(&[("X-Env", "a,b"), ("X-Env", "c")])).is_some());
    }

    #[test]
    fn each_action_on_a_missing_and_on_a_different_header() {
        let missing = h(&[("Host", "x")]);
        let other = h(&[("Host", "x"), ("X-Env", "dev"), ("x-env", "test")]);
        let run = |a: MismatchAction, headers: &Vec<(String, String)>| {
            let mut out = headers.clone();
            let edit = action(Some("prod"), a).edit(headers);
            if let Some(e) = &edit {
                e.apply(&mut out);
            }
            (edit.map(|e| e.to_string()), out)
        };
        assert_eq!(
            run(MismatchAction::Log, &other),
            (Some("X-Env: mismatch logged".into()), other.clone())
        );
        assert_eq!(
            run(MismatchAction::Add, &missing),
            (
                Some("X-Env: added \"prod\"".into()),
                h(&[("Host", "x"), ("X-Env", "prod")])
            )
        );
        assert_eq!(
            run(MismatchAction::Add, &other).1,
            h(&[
                ("Host", "x"),
                ("X-Env", "dev"),
                ("x-env", "test"),
                ("X-Env", "prod")
            ])
        );
        assert_eq!(
            run(MismatchAction::Delete, &missing),
            (None, missing.clone())
        );
        assert_eq!(
            run(MismatchAction::Delete, &other),
            (Some("X-Env: removed".into()), h(&[("Host", "x")]))
        );
        assert_eq!(
            run(MismatchAction::Replace, &other),
            (
                Some("X-Env: replaced by \"prod\"".into()),
                h(&[("Host", "x"), ("X-Env", "prod")])
            )
        );
        assert_eq!(
            run(MismatchAction::Replace, &missing).1,
            h(&[("Host", "x"), ("X-Env", "prod")])
        );
    }

    #[test]
    fn a_presence_match_that_fails_adds_an_empty_copy_and_deletes_nothing() {
        let missing = h(&[("Host", "x")]);
        assert_eq!(
            action(None, MismatchAction::Add).edit(&missing),
            Some(HeaderEdit::Added {
                name: "X-Env".into(),
                value: String::new()
            })
        );
        assert_eq!(action(None, MismatchAction::Delete).edit(&missing), None);
    }

    #[test]
    fn actions_spell_as_in_cilium() {
        for s in ["LOG", "ADD", "DELETE", "REPLACE"] {
            assert_eq!(MismatchAction::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(MismatchAction::parse("log"), None);
        assert_eq!(MismatchAction::parse("DROP"), None);
    }
}
