//! Labels and label selectors (`matchLabels` / `matchExpressions`).
//!
//! Keys are normalized so that what users write in Cilium YAML and what pods
//! carry compare equal: a `k8s:` or `any:` source prefix is dropped
//! (`k8s:app` and `app` are the same key). The `reserved:` source is kept: it
//! names Cilium's reserved identities (`reserved:host`) and never matches a pod
//! label.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The label every pod identity carries with its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which a pod identity carries its namespace's labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Drops a `k8s:` / `any:` source prefix from a label key.
pub fn normalize_key(key: &str) -> &str {
    key.strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key)
}

/// A set of labels with normalized keys, ordered so equal sets compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        self.0
            .insert(normalize_key(key).to_string(), value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(normalize_key(key)).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set as one unambiguous text, what identities are numbered from:
    /// `key=value` pairs in key order joined by `,`, with `\`, `,` and `=`
    /// inside a key or value escaped by `\`. Kubernetes allows none of
    /// them in labels, so a cluster's sets read as their `Display`; without
    /// the escapes an endpoints file could give `{a: "1,b=2"}` and
    /// `{a: "1", b: "2"}` one text, and so one identity.
    pub fn canonical(&self) -> String {
        fn push_escaped(out: &mut String, text: &str) {
            for c in text.chars() {
                if matches!(c, '\\' | ',' | '=') {
                    out.push('\\');
                }
                out.push(c);
            }
        }
        let mut out = String::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_escaped(&mut out, k);
            out.push('=');
            push_escaped(&mut out, v);
        }
        out
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut labels = Labels::new();
        for (k, v) in iter {
            labels.insert(k.as_ref(), v.as_ref());
        }
        labels
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Self::In(k, _) | Self::NotIn(k, _) | Self::Exists(k) | Self::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Self::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Self::Exists(k) => labels.get(k).is_some(),
            Self::DoesNotExist(k) => labels.get(k).is_none(),
        }
    }
}

/// A label selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn with(mut self, requirement: Requirement) -> Self {
        let requirement = match requirement {
            Requirement::In(k, v) => Requirement::In(normalize_key(&k).to_string(), v),
            Requirement::NotIn(k, v) => Requirement::NotIn(normalize_key(&k).to_string(), v),
            Requirement::Exists(k) => Requirement::Exists(normalize_key(&k).to_string()),
            Requirement::DoesNotExist(k) => {
                Requirement::DoesNotExist(normalize_key(&k).to_string())
            }
        };
        self.requirements.push(requirement);
        self
    }

    /// `matchLabels: {key: value}`.
    pub fn with_label(self, key: &str, value: &str) -> Self {
        self.with(Requirement::In(
            key.to_string(),
            BTreeSet::from([value.to_string()]),
        ))
    }

    /// Whether any requirement is about `key`.
    pub fn mentions(&self, key: &str) -> bool {
        let key = normalize_key(key);
        self.requirements.iter().any(|r| r.key() == key)
    }

    /// Whether any requirement uses the `reserved:` source, i.e. the selector
    /// is meant for a reserved identity rather than pods.
    pub fn mentions_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key().starts_with("reserved:"))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Both selectors' requirements: what `fromRequires` adds to a peer.
    pub fn and(&self, other: &Selector) -> Selector {
        let mut out = self.clone();
        out.requirements.extend(other.requirements.iter().cloned());
        out
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::In(k, v) if v.len() == 1 => {
                    format!("{k}={}", v.iter().next().unwrap())
                }
                Requirement::In(k, v) => format!("{k} in ({})", join(v)),
                Requirement::NotIn(k, v) => format!("{k} notin ({})", join(v)),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn join(values: &BTreeSet<String>) -> String {
    values.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k8s_prefix_is_the_same_key() {
        let labels: Labels = [("k8s:app", "web")].into_iter().collect();
        assert!(Selector::all().with_label("app", "web").matches(&labels));
        assert!(Selector::all()
            .with_label("any:app", "web")
            .matches(&labels));
        assert!(!Selector::all()
            .with_label("reserved:app", "web")
            .matches(&labels));
    }

    #[test]
    fn expressions() {
        let labels: Labels = [("app", "web"), ("tier", "front")].into_iter().collect();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let s = |r| Selector::all().with(r).matches(&labels);
        assert!(s(Requirement::In("app".into(), set(&["web", "db"]))));
        assert!(!s(Requirement::NotIn("app".into(), set(&["web"]))));
        assert!(s(Requirement::NotIn("missing".into(), set(&["x"]))));
        assert!(s(Requirement::Exists("tier".into())));
        assert!(!s(Requirement::DoesNotExist("tier".into())));
        assert!(s(Requirement::DoesNotExist("env".into())));
    }
}
