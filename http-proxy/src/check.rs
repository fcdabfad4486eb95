//! One request against the rule sets a connection is subject to.

use crate::RuleSet;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    /// Every set has a matching rule; the label of the (last) deciding one.
    Allowed { rule: Option<String> },
    /// No rule of this set matches.
    Denied { set: String },
}

/// A request must match at least one rule of every set: the source's egress
/// rules and the destination's ingress rules both apply. No sets: allowed.
///
/// `path` is the request target as sent (path and query), which is what
/// Cilium's path regexes are matched against.
pub fn check_request(
    sets: &[RuleSet],
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> RequestCheck {
    let mut rule = None;
    for set in sets {
        let matched = set
            .rules
            .iter()
            .position(|r| r.matches(method, path, host, headers));
        match matched {
            Some(i) => rule = Some(format!("{} http[{i}]", set.label)),
            None => {
                return RequestCheck::Denied {
                    set: set.label.clone(),
                }
            }
        }
    }
    RequestCheck::Allowed { rule }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::rules::{HeaderMatch, HttpRule};
    use regex::Regex;

    fn anchored(s: &str) -> Option<Regex> {
        Some(Regex::new(&format!("^(?:{s})$")).unwrap())
    }

    fn rule(method: &str, path: &str) -> HttpRule {
        HttpRule {
            method: anchored(method),
            path: anchored(path),
            host: None,
            headers: vec![],
        }
    }

    fn set(label: &str, rules: Vec<HttpRule>) -> RuleSet {
        RuleSet {
            label: label.into(),
            rules,
        }
    }

    #[test]
    fn method_and_path_are_anchored_regexes() {
        let sets = [set("db", vec![rule("GET", "/api/v1/public-data")])];
        let ok = |m, p| {
            matches!(
                check_request(&sets, m, p, None, &[]),
                RequestCheck::Allowed { .. }
            )
        };
        assert!(ok("GET", "/api/v1/public-data"));
        assert!(!ok("POST", "/api/v1/public-data"));
        assert!(!ok("DELETE", "/api/v1/public-data"));
        assert!(!ok("GET", "/api/v1/admin"));
        assert!(!ok("GET", "/api/v1/public-data/x"), "anchored at the end");
        assert!(!ok("GET", "/x/api/v1/public-data"), "anchored at the start");
        assert!(!ok("GETX", "/api/v1/public-data"));
    }

    #[test]
    fn every_set_must_allow_and_the_denying_set_is_named() {
        let sets = [
            set("egress", vec![rule("GET|POST", "/.*")]),
            set("ingress", vec![rule("GET", "/public")]),
        ];
        assert_eq!(
            check_request(&sets, "GET", "/public", None, &[]),
            RequestCheck::Allowed {
                rule: Some("ingress http[0]".into())
            }
        );
        assert_eq!(
            check_request(&sets, "POST", "/public", None, &[]),
            RequestCheck::Denied {
                set: "ingress".into()
            }
        );
        assert_eq!(
            check_request(&sets, "PUT", "/public", None, &[]),
            RequestCheck::Denied {
                set: "egress".into()
            }
        );
        assert_eq!(
            check_request(&[], "PUT", "/anything", None, &[]),
            RequestCheck::Allowed { rule: None }
        );
    }

    #[test]
    fn host_and_header_rules() {
        let sets = [set(
            "r",
            vec![HttpRule {
                method: None,
                path: None,
                host: anchored("api\\.test(:80)?"),
                headers: vec![HeaderMatch {
                    name: "X-Team".into(),
                    value: Some("blue".into()),
                }],
            }],
        )];
        let ok = |host, headers: &[(&str, &str)]| {
            matches!(
                check_request(&sets, "GET", "/", host, headers),
                RequestCheck::Allowed { .. }
            )
        };
        assert!(ok(Some("api.test"), &[("x-team", "blue")]));
        assert!(ok(Some("api.test:80"), &[("X-TEAM", "blue")]));
        assert!(!ok(Some("evil.test"), &[("x-team", "blue")]));
        assert!(!ok(None, &[("x-team", "blue")]), "a host rule needs a host");
        assert!(!ok(Some("api.test"), &[("x-team", "red")]));
        assert!(!ok(Some("api.test"), &[]));
    }
}
