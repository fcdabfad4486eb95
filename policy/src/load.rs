//! Reading policy YAML (multi-document files and directories) into checked
//! [`Policy`] values, all-or-nothing per file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cidrgroup::validate_cidr_group;
use crate::model::{CidrGroupObject, NetworkPolicyObject, PolicyObject};
use crate::netpol::validate_network_policy;
use crate::rules::{CidrGroup, Policy, PolicyName};
use crate::validate::validate_object;

/// How bad a diagnostic is: errors reject the file, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a policy file, naming everything a user needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Option<PathBuf>,
    /// The policy's `metadata.name`, or `document N` when it has none.
    pub policy: Option<String>,
    /// Field path such as `spec.egress[0].toPorts[0].ports[0].port`; empty
    /// when the problem is the whole document (e.g. a YAML syntax error).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: ")?;
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(policy) = &self.policy {
            write!(f, "policy {policy}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// The outcome of reading one file or string.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Empty if there was any error: nothing from a bad file is applied.
    /// Cilium policies and translated Kubernetes NetworkPolicies alike.
    pub policies: Vec<Policy>,
    /// `CiliumCIDRGroup`s (also empty if there was any error).
    pub cidr_groups: Vec<CidrGroup>,
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    fn merge(&mut self, other: LoadReport) {
        self.policies.extend(other.policies);
        self.cidr_groups.extend(other.cidr_groups);
        self.diagnostics.extend(other.diagnostics);
    }
}

/// Error returned when a set of policy files is not entirely valid.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct InvalidPolicies(pub Vec<Diagnostic>);

/// Parses a (multi-document) YAML text. `source` is only used in messages.
pub fn parse_str(text: &str, source: Option<&Path>) -> LoadReport {
    let mut report = LoadReport::default();
    let mut seen: HashMap<PolicyName, String> = HashMap::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_label = format!("document {}", index + 1);
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                report.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: None,
                    policy: Some(doc_label),
                    field: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        // `kubectl get cnp -A -o yaml` writes one `List` of items.
        let is_list = value.get("kind").and_then(|k| k.as_str()).is_some_and(|k| {
            k == "List" || k.ends_with("PolicyList") || k == "CiliumCIDRGroupList"
        });
        let objects: Vec<(String, serde_yaml::Value)> = match (is_list, value.get("items")) {
            (true, Some(serde_yaml::Value::Sequence(items))) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{doc_label} item {}", i + 1), item.clone()))
                .collect(),
            _ => vec![(doc_label.clone(), value)],
        };
        for (doc_label, value) in objects {
            check_object(&mut report, &mut seen, doc_label, value, source);
        }
    }
    for d in &mut report.diagnostics {
        d.file = source.map(Path::to_path_buf);
    }
    if report.has_errors() {
        report.policies.clear();
        report.cidr_groups.clear();
    }
    report
}

/// Checks one object of a file (a document, or an item of a List).
fn check_object(
    report: &mut LoadReport,
    seen: &mut HashMap<PolicyName, String>,
    doc_label: String,
    value: serde_yaml::Value,
    source: Option<&Path>,
) {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| doc_label.clone());
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let serde_error = |report: &mut LoadReport,
                       e: serde_path_to_error::Error<serde_yaml::Error>| {
        let field = e.path().to_string();
        report.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: None,
            policy: Some(name.clone()),
            field: if field == "." { String::new() } else { field },
            message: explain_serde(e.inner()),
        });
    };
    let (policy, diagnostics) = match kind.as_str() {
        "NetworkPolicy" => {
            match serde_path_to_error::deserialize::<_, NetworkPolicyObject>(value) {
                Ok(o) => validate_network_policy(&o, &doc_label),
                Err(e) => return serde_error(report, e),
            }
        }
        "CiliumCIDRGroup" => {
            match serde_path_to_error::deserialize::<_, CidrGroupObject>(value) {
                Ok(o) => {
                    let (group, diagnostics) = validate_cidr_group(&o, &doc_label);
                    report.diagnostics.extend(diagnostics);
                    report.cidr_groups.extend(group);
                }
                Err(e) => serde_error(report, e),
            }
            return;
        }
        _ => match serde_path_to_error::deserialize::<_, PolicyObject>(value) {
            Ok(o) => validate_object(&o, &doc_label),
            Err(e) => return serde_error(report, e),
        },
    };
    report.diagnostics.extend(diagnostics);
    if let Some(mut policy) = policy {
        if let Some(first) = seen.insert(policy.name.clone(), doc_label) {
            report.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: None,
                policy: Some(policy.name.name.clone()),
                field: "metadata.name".into(),
                message: format!(
                    "{} is defined twice (first in {first}); names must be unique",
                    policy.name
                ),
            });
            return;
        }
        policy.source = source.map(Path::to_path_buf);
        report.policies.push(policy);
    }
}

/// serde's messages are good ("unknown field `toFQDN`, expected one of ...")
/// except that they sometimes carry a location we already report as a path.
fn explain_serde(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.split_once(" at line ") {
        Some((head, _)) => head.to_string(),
        None => msg,
    }
}

/// Reads one file.
pub fn load_file(path: &Path) -> LoadReport {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, Some(path)),
        Err(e) => LoadReport {
            policies: vec![],
            cidr_groups: vec![],
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: Some(path.to_path_buf()),
                policy: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }],
        },
    }
}

/// The policy files under `path`: the file itself, or a directory's
/// `*.yaml`, `*.yml` and `*.json` files (not recursive, sorted by name so the
/// order is stable).
pub fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        // Let the read report a missing file with its name.
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads files and directories. Each file is all-or-nothing; a policy defined
/// in two files is an error in the second.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> LoadReport {
    let mut report = LoadReport::default();
    let mut seen: HashMap<PolicyName, PathBuf> = HashMap::new();
    for path in paths {
        let path = path.as_ref();
        let files = match policy_files(path) {
            Ok(f) => f,
            Err(e) => {
                report.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: Some(path.to_path_buf()),
                    policy: None,
                    field: String::new(),
                    message: format!("cannot list directory: {e}"),
                });
                continue;
            }
        };
        for file in files {
            let mut one = load_file(&file);
            let mut dup = Vec::new();
            for p in &one.policies {
                if let Some(first) = seen.insert(p.name.clone(), file.clone()) {
                    dup.push(Diagnostic {
                        severity: Severity::Error,
                        file: Some(file.clone()),
                        policy: Some(p.name.name.clone()),
                        field: "metadata.name".into(),
                        message: format!(
                            "{} is already defined in {}; names must be unique",
                            p.name,
                            first.display()
                        ),
                    });
                }
            }
            if !dup.is_empty() {
                one.policies.clear();
                one.diagnostics.extend(dup);
            }
            report.merge(one);
        }
    }
    crate::cidrgroup::expand(&mut report.policies, &report.cidr_groups);
    report
}
