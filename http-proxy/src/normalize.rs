//! The request target as rules see it, and as the destination gets it.
//!
//! A path rule like `/api/v1/.*` means "under /api/v1/" only if the path it
//! is matched against is the one the destination will act on. Servers
//! resolve `..`, decode `%2e` and merge `//`; so the proxy does the same
//! first (as Envoy does in front of Cilium's HTTP rules: RFC 3986 section 6
//! normalisation, `merge_slashes`), matches the normalised form, and
//! forwards that form — the destination never sees a path the rules did not.
//!
//! What cannot be normalised safely is refused (400): an encoded `/`, `\` or
//! NUL in the path (servers disagree on whether `%2F` separates segments),
//! a malformed escape, a relative path, and what some servers read as a
//! separator or a dot segment where others do not: a raw `\` (IIS and
//! WHATWG URL parsers take it for `/`) or a dot segment with parameters
//! (`..;x`: Tomcat and Spring drop `;x` and climb).
//!
//! The query is left as sent (it is matched with the path, as in Cilium).

use std::borrow::Cow;
use std::fmt;

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadTarget {
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2F`, `%5C` or `%00` in the path.
    EncodedSeparator,
    /// Not `/...` (and not `*`).
    NotAbsolutePath,
    /// A `\`, or a `.` or `..` segment with `;` parameters.
    AmbiguousSegment,
}

impl fmt::Display for BadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadTarget::MalformedEscape => "malformed percent-escape in the path",
            BadTarget::EncodedSeparator => "encoded '/', '\\' or NUL in the path",
            BadTarget::NotAbsolutePath => "the path does not start with '/'",
            BadTarget::AmbiguousSegment => {
                "a '\\' or a dot segment with parameters ('..;') in the path"
            }
        })
    }
}

/// `path` (with its query, as in the request line) normalised: unreserved
/// characters percent-decoded, other escapes upper-cased, `//` merged, `.`
/// and `..` segments removed. `*` (OPTIONS) is kept. A target that is
/// already normal (most are) is returned as it is, without a copy.
pub fn normalize_target(target: &str) -> Result<Cow<'_, str>, BadTarget> {
    if target == "*" {
        return Ok(Cow::Borrowed(target));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(BadTarget::NotAbsolutePath);
    }
    if is_plain(path) {
        return Ok(Cow::Borrowed(target));
    }
    let out = if is_normal(path) {
        Cow::Borrowed(target)
    } else {
        Cow::Owned(normalized(path, query)?)
    };
    // Checked on the result: an escape may have spelt it (`%2e%2e;`).
    let result_path = out.split('?').next().unwrap_or("");
    if result_path.split('/').any(is_ambiguous) {
        return Err(BadTarget::AmbiguousSegment);
    }
    Ok(out)
}

/// Whether some servers would read `segment` as a separator or a dot
/// segment where the rules do not.
fn is_ambiguous(segment: &str) -> bool {
    segment.contains('\\')
        || segment
            .split_once(';')
            .is_some_and(|(name, _)| name == "." || name == "..")
}

/// The absolute `path` normalised, with `query` as sent.
fn normalized(path: &str, query: Option<&str>) -> Result<String, BadTarget> {
    let decoded = decode_unreserved(path)?;
    let merged = merge_slashes(&decoded);
    let mut out = remove_dot_segments(&merged);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Whether the absolute `path` is normal and unambiguous at a glance, in
/// one pass over its bytes: no escape, no backslash, no `;`, no `//` and no
/// segment that starts with a dot. Most paths are; the steps below (several
/// passes) are for the rest, and they would leave such a path as it is.
fn is_plain(path: &str) -> bool {
    let mut after_slash = false;
    path.bytes().all(|b| {
        let odd = matches!(b, b'%' | b'\\' | b';') || (after_slash && matches!(b, b'/' | b'.'));
        after_slash = b == b'/';
        !odd
    })
}

/// Whether each step below would leave the absolute `path` as it is: no
/// escape to decode, no `//` to merge, no `.` or `..` segment to remove.
fn is_normal(path: &str) -> bool {
    !path.contains('%')
        && !path.contains("//")
        && path[1..].split('/').all(|seg| seg != "." && seg != "..")
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` of unreserved characters; keeps (upper-cased) the rest.
fn decode_unreserved(path: &str) -> Result<String, BadTarget> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(BadTarget::MalformedEscape);
        };
        let b = hi << 4 | lo;
        if matches!(b, b'/' | b'\\' | 0) {
            return Err(BadTarget::EncodedSeparator);
        }
        if is_unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was added to what was a &str: still UTF-8.
    Ok(String::from_utf8(out).expect("UTF-8 in, unreserved ASCII added"))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 section 5.2.4, for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    segments.push(""); // "/a/." -> "/a/"
                }
            }
            ".." => {
                segments.pop();
                if i == last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// The one-pass shortcut is exact: the full steps, refusals
        /// included, leave each path it passes as it is.
        #[test]
        fn a_path_passed_as_plain_is_one_the_full_steps_keep(
            target in "/[a-z./%;?2e\\\\]{0,24}|/\\PC{0,24}"
        ) {
            let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
            if is_plain(path) {
                prop_assert!(is_normal(path));
                prop_assert!(!path.split('/').any(is_ambiguous));
            }
        }

        /// The shortcut for targets that are already normal is exact: the
        /// full normalisation leaves each such target as it is.
        #[test]
        fn a_target_passed_as_normal_is_one_the_full_steps_keep(
            target in "/[a-z./%?2e]{0,24}|/\\PC{0,24}"
        ) {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            if is_normal(path) {
                prop_assert_eq!(normalized(path, query), Ok(target.clone()));
            }
        }
    }

    #[test]
    fn traversal_in_every_spelling_resolves_before_matching() {
        for (raw, want) in [
            ("/api/v1/../../admin", "/admin"),
            ("/api/v1/%2e%2e/admin", "/api/admin"),
            ("/api/v1/%2E%2E/%2e%2e/admin", "/admin"),
            ("/api/v1/.%2e/admin", "/api/admin"),
            ("/api/./v1/./x", "/api/v1/x"),
            ("/api//v1///x", "/api/v1/x"),
            ("/api/v1/..", "/api/"),
            ("/api/v1/.", "/api/v1/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"), // RFC 3986 5.2.4's example
            ("/mid/content=5/../6", "/mid/6"),
        ] {
            assert_eq!(normalize_target(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_case() {
        assert_eq!(
            normalize_target("/%61pi/%7euser/%20x%3f").unwrap(),
            "/api/~user/%20x%3F"
        );
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        assert_eq!(
            normalize_target("/a/../b?x=/../y&z=%2e").unwrap(),
            "/b?x=/../y&z=%2e"
        );
    }

    #[test]
    fn what_cannot_be_normalised_safely_is_refused() {
        for (raw, why) in [
            ("/api/v1/..%2fadmin", BadTarget::EncodedSeparator),
            ("/api/v1/..%2Fadmin", BadTarget::EncodedSeparator),
            ("/api/v1/..%5cadmin", BadTarget::EncodedSeparator),
            ("/a%00b", BadTarget::EncodedSeparator),
            ("/a%zz", BadTarget::MalformedEscape),
            ("/a%4", BadTarget::MalformedEscape),
            ("a/b", BadTarget::NotAbsolutePath),
            // Tomcat and Spring drop `;x` and climb; IIS reads `\` as `/`.
            ("/public/..;/admin", BadTarget::AmbiguousSegment),
            ("/public/..;x=1/admin", BadTarget::AmbiguousSegment),
            ("/public/.;/admin", BadTarget::AmbiguousSegment),
            ("/public/%2e%2e;/admin", BadTarget::AmbiguousSegment),
            ("/public/..\\admin", BadTarget::AmbiguousSegment),
            ("/public\\x", BadTarget::AmbiguousSegment),
        ] {
            assert_eq!(normalize_target(raw), Err(why), "{raw}");
        }
        assert_eq!(normalize_target("*").unwrap(), "*");
        // Parameters elsewhere, and `;` or `\` in the query, are as sent.
        for kept in ["/a;v=1/b", "/a/..x;/b", "/a?x=..;/\\"] {
            assert_eq!(normalize_target(kept).as_deref(), Ok(kept), "{kept}");
        }
    }

    #[test]
    fn a_refusal_says_why_as_observe_shows_it() {
        let why = |raw: &str| normalize_target(raw).unwrap_err().to_string();
        assert_eq!(why("/a%zz"), "malformed percent-escape in the path");
        assert_eq!(why("/a%2fb"), "encoded '/', '\\' or NUL in the path");
        assert_eq!(why("a/b"), "the path does not start with '/'");
        assert_eq!(
            why("/a/..;/b"),
            "a '\\' or a dot segment with parameters ('..;') in the path"
        );
    }
}
