//! `toPorts[].serverNames`: the TLS server names (SNI) a port rule allows.
//!
//! Cilium's forms, and only those: its CRD accepts an exact name or a name
//! behind a leading `*.` or `**.` (`pkg/policy/api/l4.go`, `ServerName`:
//! `^(\*?\*\.)?([-a-zA-Z0-9_]+\.?)+$`, at most 255 characters), and its
//! proxy matches them (`cilium/network_policy.h` in cilium/proxy,
//! `SniPattern`) case-insensitively:
//!
//! - `api.example.com`: exactly that name;
//! - `*.example.com`: one more label in front (`www.example.com`, not
//!   `example.com`, not `a.b.example.com`);
//! - `**.example.com`: one or more labels in front (`a.b.example.com`, not
//!   `example.com`).
//!
//! A trailing dot is rejected (Cilium's proxy rejects such a pattern, and an
//! SNI never carries one). A name sent by a client matches only if it is a
//! valid DNS name without a trailing dot: anything else matches nothing.

use std::fmt;

use crate::fqdn::{normalize_name, MAX_NAME_LEN};

/// Why a `serverNames` element was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerNameError {
    /// `""` (Cilium: "empty server name is not allowed").
    #[error("is empty; expected a TLS server name such as `api.example.com`")]
    Empty,
    /// Longer than a DNS name may be (Cilium's CRD: MaxLength 255).
    #[error("is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[-a-zA-Z0-9_.]` (after an optional leading `*.` / `**.`).
    #[error(
        "has invalid character {ch:?} at position {pos}; allowed are letters, digits, `-`, `_`, \
         `.` and a leading `*.` or `**.`"
    )]
    InvalidChar { ch: char, pos: usize },
    /// A `*` anywhere but a leading `*.` or `**.`.
    #[error(
        "uses `*` in the middle; only a whole leading label may be a wildcard: `*.example.com` \
         (one label) or `**.example.com` (one or more)"
    )]
    MisplacedStar,
    /// `..`, a leading dot, or a wildcard with nothing after it.
    #[error("has an empty label (`..`, a leading `.`, or nothing after the wildcard)")]
    EmptyLabel,
    /// A trailing dot.
    #[error("ends with `.`; TLS server names are written without the trailing dot")]
    TrailingDot,
}

/// How a [`ServerName`] matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Form {
    /// Exactly this name.
    Exact,
    /// `*.rest`: exactly one label in front of `rest`.
    OneLabel,
    /// `**.rest`: one or more labels in front of `rest`.
    AnyDepth,
}

/// A checked `serverNames` element, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName {
    form: Form,
    /// The name (for [`Form::Exact`]) or the part after the wildcard.
    name: String,
}

impl ServerName {
    /// Checks one `serverNames` element as Cilium's CRD does.
    pub fn parse(raw: &str) -> Result<Self, ServerNameError> {
        if raw.is_empty() {
            return Err(ServerNameError::Empty);
        }
        let len = raw.chars().count();
        if len > MAX_NAME_LEN {
            return Err(ServerNameError::TooLong(len));
        }
        let (form, rest, offset) = if let Some(rest) = raw.strip_prefix("**.") {
            (Form::AnyDepth, rest, 3)
        } else if let Some(rest) = raw.strip_prefix("*.") {
            (Form::OneLabel, rest, 2)
        } else {
            (Form::Exact, raw, 0)
        };
        for (pos, ch) in rest.chars().enumerate() {
            match ch {
                '*' => return Err(ServerNameError::MisplacedStar),
                c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => {}
                ch => {
                    return Err(ServerNameError::InvalidChar {
                        ch,
                        pos: pos + offset,
                    })
                }
            }
        }
        if rest.ends_with('.') && !rest.is_empty() && !rest[..rest.len() - 1].ends_with('.') {
            return Err(ServerNameError::TrailingDot);
        }
        if rest.split('.').any(str::is_empty) {
            return Err(ServerNameError::EmptyLabel);
        }
        Ok(Self {
            form,
            name: rest.to_ascii_lowercase(),
        })
    }

    /// Whether a client's SNI (as sent in its ClientHello) is allowed by
    /// this name. Case-insensitive; an SNI that is not a valid DNS name
    /// (or has a trailing dot) matches nothing.
    pub fn matches(&self, sni: &str) -> bool {
        if sni.ends_with('.') {
            return false;
        }
        let Some(sni) = normalize_name(sni) else {
            return false;
        };
        match self.form {
            Form::Exact => *sni == self.name,
            Form::OneLabel | Form::AnyDepth => {
                let Some(front) = sni
                    .strip_suffix(self.name.as_str())
                    .and_then(|f| f.strip_suffix('.'))
                else {
                    return false;
                };
                // `front` is non-empty and made of whole labels: the name
                // was valid, so it has no empty label.
                !front.is_empty() && (self.form == Form::AnyDepth || !front.contains('.'))
            }
        }
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.form {
            Form::Exact => f.write_str(&self.name),
            Form::OneLabel => write!(f, "*.{}", self.name),
            Form::AnyDepth => write!(f, "**.{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    // Cilium's own examples (pkg/policy/api/l4.go `ServerName`, and
    // cilium/proxy's `SniPattern` comment) and its connectivity tests'
    // `*.one.one.one` / `**.one.one`.
    #[test]
    fn forms_match_as_in_cilium() {
        let table: &[(&str, &[&str], &[&str])] = &[
            (
                "api.stripe.com",
                &["api.stripe.com", "API.Stripe.COM"],
                &[
                    "stripe.com",
                    "x.api.stripe.com",
                    "api.stripe.com.",
                    "api.stripe.co",
                ],
            ),
            (
                "*.cilium.io",
                &["www.cilium.io", "blog.cilium.io", "WWW.CILIUM.IO"],
                &[
                    "cilium.io",
                    "foo.bar.cilium.io",
                    "kubernetes.io",
                    "xcilium.io",
                ],
            ),
            (
                "**.cilium.io",
                &["www.cilium.io", "test.app.cilium.io"],
                &["cilium.io", "evilcilium.io", "a.evilcilium.io"],
            ),
            ("*.one.one.one", &["one.one.one.one"], &["one.one.one"]),
            (
                "**.one.one",
                &["one.one.one.one", "x.one.one"],
                &["one.one"],
            ),
        ];
        for (pattern, yes, no) in table {
            let p = sn(pattern);
            for name in *yes {
                assert!(p.matches(name), "{pattern} must match {name}");
            }
            for name in *no {
                assert!(!p.matches(name), "{pattern} must not match {name}");
            }
        }
    }

    #[test]
    fn invalid_client_names_match_nothing() {
        let p = sn("**.test");
        for bad in [
            "", ".", "a..test", "a b.test", "a\0.test", "é.test", "a.test.",
        ] {
            assert!(!p.matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_ciliums_forms_are_accepted() {
        use ServerNameError::*;
        for (raw, err) in [
            ("", Empty),
            ("a.*.com", MisplacedStar),
            ("*a.com", MisplacedStar),
            ("***.a.com", MisplacedStar),
            ("*", MisplacedStar),
            ("*.", EmptyLabel),
            ("a..com", EmptyLabel),
            (".a.com", EmptyLabel),
            ("a.com.", TrailingDot),
            ("a.com/x", InvalidChar { ch: '/', pos: 5 }),
            ("*.a b", InvalidChar { ch: ' ', pos: 3 }),
        ] {
            assert_eq!(ServerName::parse(raw), Err(err), "{raw:?}");
        }
        assert!(matches!(
            ServerName::parse(&"a".repeat(256)),
            Err(TooLong(256))
        ));
        assert_eq!(sn("API.Test").to_string(), "api.test");
        assert_eq!(sn("**.X.io").to_string(), "**.x.io");
        assert_eq!(sn("*.x_y.io").to_string(), "*.x_y.io");
    }
}
