//! One request against the rule sets a connection is subject to.

use policy::rules::HeaderEdit;

use crate::RuleSet;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    /// Every set has a matching rule; the label of the (last) deciding one,
    /// and the header changes (`headerMatches` mismatch actions) to make
    /// before forwarding, in order.
    Allowed {
        rule: Option<String>,
        edits: Vec<HeaderEdit>,
    },
    /// No rule of this set matches.
    Denied { set: String },
}

/// A request must match at least one rule of every set: the source's egress
/// rules and the destination's ingress rules both apply. No sets: allowed.
///
/// `path` is the request target (path and query) as normalised, which is
/// what is forwarded and what Cilium's path regexes are matched against.
///
/// In a set with mismatch actions every matching rule runs its actions, as
/// cilium-envoy does (`PortNetworkPolicyRule::allowed` stops at the first
/// match only when no rule has header matches); later rules and sets see
/// the headers as the earlier actions left them.
pub fn check_request(
    sets: &[RuleSet],
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> RequestCheck {
    let mut rule = None;
    let mut edits = Vec::new();
    // Owned once an action may change them.
    let mut edited: Option<Vec<(String, String)>> = None;
    for set in sets {
        let acts = set.rules.iter().any(|r| !r.header_actions.is_empty());
        let mut first = None;
        for (i, r) in set.rules.iter().enumerate() {
            let matches = match &edited {
                Some(current) => {
                    let view: Vec<(&str, &str)> = current
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    r.matches(method, path, host, &view)
                }
                None => r.matches(method, path, host, headers),
            };
            if !matches {
                continue;
            }
            first.get_or_insert(i);
            if !acts {
                break;
            }
            let current = edited.get_or_insert_with(|| {
                headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            });
            edits.extend(r.apply_header_actions(current));
        }
        match first {
            Some(i) => rule = Some(rule_label(&set.label, i)),
            None => {
                return RequestCheck::Denied {
                    set: set.label.clone(),
                }
            }
        }
    }
    RequestCheck::Allowed { rule, edits }
}

/// `{set} http[{i}]`, built without `format!` (on every allowed request
/// it was a tenth of the check's instructions), and without the formatter
/// at all for the first ten rules of a set.
fn rule_label(set: &str, i: usize) -> String {
    use std::fmt::Write;
    let mut label = String::with_capacity(set.len() + 10);
    label.push_str(set);
    label.push_str(" http[");
    match u8::try_from(i) {
        Ok(digit @ 0..=9) => label.push(char::from(b'0' + digit)),
        _ => {
            let _ = write!(label, "{i}");
        }
    }
    label.push(']');
    label
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::rules::{HeaderAction, HeaderMatch, HttpRule, MismatchAction};
    use regex::Regex;

    #[test]
    fn rule_labels_number_every_rule() {
        for (i, want) in [
            (0, "s http[0]"),
            (9, "s http[9]"),
            (10, "s http[10]"),
            (123, "s http[123]"),
        ] {
            assert_eq!(rule_label("s", i), want);
        }
    }

    fn anchored(s: &str) -> Option<Regex> {
        Some(Regex::new(&format!("^(?:{s})$")).unwrap())
    }

    fn rule(method: &str, path: &str) -> HttpRule {
        HttpRule {
            method: anchored(method),
            path: anchored(path),
            host: None,
            headers: vec![],
            header_actions: vec![],
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
                rule: Some("ingress http[0]".into()),
                edits: vec![]
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
            RequestCheck::Allowed {
                rule: None,
                edits: vec![]
            }
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
                header_actions: vec![],
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

    fn with_action(path: &str, name: &str, value: &str, on_mismatch: MismatchAction) -> HttpRule {
        HttpRule {
            header_actions: vec![HeaderAction {
                name: name.into(),
                value: Some(value.into()),
                on_mismatch,
            }],
            ..rule("GET", path)
        }
    }

    /// cilium-envoy runs the actions of every matching rule of a port, not
    /// only the first (`PortNetworkPolicyRule::allowed`), each seeing what
    /// the previous left; the first match names the rule.
    #[test]
    fn every_matching_rule_runs_its_actions_in_order() {
        let sets = [
            set(
                "egress",
                vec![
                    with_action("/a.*", "X-Env", "prod", MismatchAction::Replace),
                    with_action("/b", "X-Skip", "1", MismatchAction::Add),
                    with_action("/.*", "X-Env", "prod", MismatchAction::Log),
                    with_action("/.*", "X-Team", "blue", MismatchAction::Add),
                ],
            ),
            set(
                "ingress",
                vec![with_action("/.*", "X-Team", "blue", MismatchAction::Delete)],
            ),
        ];
        let RequestCheck::Allowed {
            rule: decided,
            edits,
        } = check_request(&sets, "GET", "/a", None, &[("x-env", "dev")])
        else {
            panic!("allowed")
        };
        assert_eq!(decided.as_deref(), Some("ingress http[0]"));
        let edits: Vec<String> = edits.iter().map(ToString::to_string).collect();
        assert_eq!(
            edits,
            [
                "X-Env: replaced by \"prod\"",
                // Rule 2 sees X-Env already replaced: nothing to log.
                "X-Team: added \"blue\"",
                // The ingress set sees the added X-Team: it matches.
            ]
        );
        // Without any action in a set, the first match decides alone.
        let plain = [set(
            "s",
            vec![
                rule("GET", "/.*"),
                with_action("/.*", "X", "1", MismatchAction::Add),
            ],
        )];
        let RequestCheck::Allowed {
            rule: decided,
            edits,
        } = check_request(&plain, "GET", "/", None, &[])
        else {
            panic!("allowed")
        };
        assert_eq!(
            (decided.as_deref(), edits.len()),
            (Some("s http[0]"), 1),
            "a set with an action runs every match"
        );
        let none = [set("s", vec![rule("GET", "/.*"), rule("GET", "/x")])];
        assert_eq!(
            check_request(&none, "GET", "/x", None, &[]),
            RequestCheck::Allowed {
                rule: Some("s http[0]".into()),
                edits: vec![]
            }
        );
    }

    #[test]
    fn an_action_never_allows_what_the_rest_of_the_rule_denies() {
        let sets = [set(
            "s",
            vec![with_action("/a", "X-Env", "prod", MismatchAction::Add)],
        )];
        assert_eq!(
            check_request(&sets, "POST", "/a", None, &[]),
            RequestCheck::Denied { set: "s".into() }
        );
        assert_eq!(
            check_request(&sets, "GET", "/b", None, &[]),
            RequestCheck::Denied { set: "s".into() }
        );
    }
}
