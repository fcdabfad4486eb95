//! Golden decision tables (testdata/golden/*.decisions.yaml) checked through
//! the CLI exactly as a user runs it: `tollgate policy explain --output json`.
//! The tables are hand-written expectations, not recorded output.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    policies: Vec<String>,
    endpoints: String,
    /// `--cluster-name` (default: the CLI's default, `default`).
    #[serde(default)]
    cluster: Option<String>,
    flows: Vec<Flow>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Flow {
    from: String,
    to: String,
    port: String,
    verdict: String,
    /// Deciding rule (`ns/name spec.egress[0]`) or reason (`default-deny`).
    egress: Option<String>,
    ingress: Option<String>,
    /// The L7 restrictions of both ends, as `policy explain` lists them
    /// (`tls sni api.test`, `http method=GET`); `[]`: none.
    #[serde(default)]
    l7: Option<Vec<String>>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn decided_by(check: &serde_json::Value) -> String {
    match check.get("rule").filter(|r| !r.is_null()) {
        Some(rule) => {
            let name = rule["policy"].as_str().unwrap_or_default();
            let policy = match (rule["namespace"].as_str(), rule["kind"].as_str()) {
                (Some(ns), Some("NetworkPolicy")) => format!("{ns}/{name} (NetworkPolicy)"),
                (Some(ns), _) => format!("{ns}/{name}"),
                (None, _) => format!("{name} (clusterwide)"),
            };
            format!("{policy} {}", rule["rule"].as_str().unwrap_or_default())
        }
        None => check["reason"].as_str().unwrap_or_default().to_string(),
    }
}

fn check_flow(table: &Table, flow: &Flow) -> Result<(), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["policy", "explain", "--output", "json"]);
    for p in &table.policies {
        cmd.arg("--policies").arg(testdata().join(p));
    }
    cmd.arg("--endpoints")
        .arg(testdata().join(&table.endpoints));
    if let Some(cluster) = &table.cluster {
        cmd.args(["--cluster-name", cluster]);
    }
    cmd.args(["--from", &flow.from, "--to", &flow.to, "--port", &flow.port]);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run tollgate: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut problems = Vec::new();
    if json["verdict"] != flow.verdict {
        problems.push(format!(
            "verdict {} (want {})",
            json["verdict"], flow.verdict
        ));
    }
    let want_code = if flow.verdict == "denied" { 1 } else { 0 };
    if out.status.code() != Some(want_code) {
        problems.push(format!(
            "exit code {:?} (want {want_code})",
            out.status.code()
        ));
    }
    for (direction, want) in [("egress", &flow.egress), ("ingress", &flow.ingress)] {
        let Some(want) = want else { continue };
        let got = json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["direction"] == direction)
            .map(decided_by);
        if got.as_deref() != Some(want.as_str()) {
            problems.push(format!("{direction} decided by {got:?} (want {want:?})"));
        }
    }
    if let Some(want) = &flow.l7 {
        let got: Vec<String> = json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["l7"].as_array().cloned().unwrap_or_default())
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        if got != *want {
            problems.push(format!("l7 {got:?} (want {want:?})"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[test]
fn golden_decision_tables() {
    let dir = testdata().join("golden");
    let mut tables: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata/golden exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".decisions.yaml"))
        .collect();
    tables.sort();
    assert!(
        tables.len() >= 2,
        "expected the seed and semantics tables in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &tables {
        let table: Table = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for flow in &table.flows {
            checked += 1;
            if let Err(problem) = check_flow(&table, flow) {
                failures.push(format!(
                    "{}: {} -> {} {}: {problem}",
                    path.file_name().unwrap().to_string_lossy(),
                    flow.from,
                    flow.to,
                    flow.port
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} golden flows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
