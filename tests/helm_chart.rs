//! The Helm chart `deploy/helm/tollgate` renders the objects
//! `kubectl apply -k deploy/` applies, and sets every agent flag.
//!
//! No helm CLI can be had on this machine, so the chart is rendered here
//! with gtmpl (Go's text/template in Rust) plus the few Helm/sprig
//! functions the chart uses (`quote`, `default`, `toYaml`, `nindent`),
//! written to Helm's semantics, and Helm's `<no value>` -> "" rule. The
//! chart keeps to that subset; a template using anything else fails to
//! render here. The kustomize side is `deploy/kustomization.yaml`'s
//! resources with its `images:` tag applied (the only transformer it uses;
//! the test refuses a kustomization that uses another).
//!
//! When deploy/ changes (a new RBAC rule, a new flag in the ConfigMap, a
//! DaemonSet field) and the chart does not, this fails and names the object
//! and the difference, so the chart is brought in step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use gtmpl::{Context, Template};
use gtmpl_value::{FuncError, Number, Value as G};
use serde_yaml::{Mapping, Value as Y};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/helm/tollgate")
}

// --- The Helm functions the chart uses, as Helm/sprig define them. ---

/// sprig `quote`: each non-nil argument as a Go `%q` string, joined by spaces.
fn quote(args: &[G]) -> Result<G, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|a| !matches!(a, G::Nil | G::NoValue))
        .map(|a| serde_json::to_string(&scalar_text(a)).unwrap())
        .collect();
    Ok(G::String(quoted.join(" ")))
}

/// sprig `default DEFAULT GIVEN`: GIVEN unless it is empty.
fn default(args: &[G]) -> Result<G, FuncError> {
    match args {
        [d, given] if !empty(given) => {
            let _ = d;
            Ok(given.clone())
        }
        [d, _] | [d] => Ok(d.clone()),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

/// Helm `toYaml`: the value as YAML, the trailing newline trimmed.
fn to_yaml(args: &[G]) -> Result<G, FuncError> {
    let [v] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let text =
        serde_yaml::to_string(&to_serde(v)).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(G::String(text.trim_end_matches('\n').to_string()))
}

/// sprig `nindent N TEXT`: a newline, then TEXT with every line indented.
fn nindent(args: &[G]) -> Result<G, FuncError> {
    let [n, text] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let n: usize = scalar_text(n)
        .parse()
        .map_err(|_| FuncError::Generic(format!("nindent: not a number: {n}")))?;
    let pad = " ".repeat(n);
    let indented: Vec<String> = scalar_text(text)
        .split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect();
    Ok(G::String(format!("\n{}", indented.join("\n"))))
}

fn empty(v: &G) -> bool {
    match v {
        G::NoValue | G::Nil => true,
        G::Bool(b) => !b,
        G::String(s) => s.is_empty(),
        G::Number(n) => n.as_f64() == Some(0.0),
        G::Array(a) => a.is_empty(),
        G::Map(m) | G::Object(m) => m.is_empty(),
        G::Function(_) => false,
    }
}

/// A scalar as Go's `%v` prints it.
fn scalar_text(v: &G) -> String {
    match v {
        G::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn to_gtmpl(v: &Y) -> G {
    match v {
        Y::Null => G::Nil,
        Y::Bool(b) => G::Bool(*b),
        Y::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => G::Number(Number::from(i)),
            (None, Some(f)) => G::Number(Number::from(f)),
            _ => G::Nil,
        },
        Y::String(s) => G::String(s.clone()),
        Y::Sequence(s) => G::Array(s.iter().map(to_gtmpl).collect()),
        Y::Mapping(m) => G::Map(
            m.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_gtmpl(v)))
                .collect(),
        ),
        Y::Tagged(t) => to_gtmpl(&t.value),
    }
}

fn to_serde(v: &G) -> Y {
    match v {
        G::NoValue | G::Nil | G::Function(_) => Y::Null,
        G::Bool(b) => Y::Bool(*b),
        G::String(s) => Y::String(s.clone()),
        G::Number(n) => serde_yaml::from_str(&n.to_string()).unwrap(),
        G::Array(a) => Y::Sequence(a.iter().map(to_serde).collect()),
        G::Map(m) | G::Object(m) => {
            let sorted: BTreeMap<&String, &G> = m.iter().collect();
            Y::Mapping(
                sorted
                    .into_iter()
                    .map(|(k, v)| (Y::String(k.clone()), to_serde(v)))
                    .collect(),
            )
        }
    }
}

/// Deep merge, as Helm merges `--set`/`-f` values over the chart's.
fn merge(base: &mut Y, over: &Y) {
    match (base, over) {
        (Y::Mapping(b), Y::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_mapping() && v.is_mapping() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `helm template tollgate deploy/helm/tollgate -n NAMESPACE -f overrides`:
/// every object of the chart (crds/ included).
fn render_chart(namespace: &str, overrides: &str) -> Vec<Y> {
    let dir = chart_dir();
    let chart: Y = serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap())
        .expect("Chart.yaml");
    let mut values: Y =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap())
            .expect("values.yaml");
    let over: Y = serde_yaml::from_str(overrides).unwrap();
    if !over.is_null() {
        merge(&mut values, &over);
    }
    let mut top = HashMap::new();
    top.insert("Values".to_string(), to_gtmpl(&values));
    let mut release = HashMap::new();
    release.insert("Name".to_string(), G::from("tollgate"));
    release.insert("Namespace".to_string(), G::from(namespace));
    release.insert("Service".to_string(), G::from("Helm"));
    top.insert("Release".to_string(), G::Map(release));
    let mut c = HashMap::new();
    for (k, key) in [
        ("name", "Name"),
        ("version", "Version"),
        ("appVersion", "AppVersion"),
    ] {
        c.insert(key.to_string(), G::from(chart[k].as_str().unwrap()));
    }
    top.insert("Chart".to_string(), G::Map(c));
    let context = Context::from(G::Map(top));

    let mut objects = Vec::new();
    for f in sorted_files(&dir.join("crds")) {
        objects.extend(yaml_docs(&std::fs::read_to_string(&f).unwrap(), &f));
    }
    for f in sorted_files(&dir.join("templates")) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('_') || !name.ends_with(".yaml") {
            continue;
        }
        let mut t = Template::with_name(name.clone());
        t.add_funcs(&[
            ("quote", quote as gtmpl_value::Func),
            ("default", default as gtmpl_value::Func),
            ("toYaml", to_yaml as gtmpl_value::Func),
            ("nindent", nindent as gtmpl_value::Func),
        ]);
        t.parse(std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not a template gtmpl parses: {e}"));
        let text = t
            .render(&context)
            .unwrap_or_else(|e| panic!("{name}: rendering failed: {e}"))
            .replace("<no value>", "");
        objects.extend(yaml_docs(&text, &f));
    }
    objects
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn yaml_docs(text: &str, file: &Path) -> Vec<Y> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            Y::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}\n{text}", file.display()))
        })
        .filter(|d| !d.is_null())
        .collect()
}

/// `kubectl kustomize deploy/` for what deploy/kustomization.yaml uses:
/// resources, and images (a new tag or name for a container image).
fn render_kustomize() -> Vec<Y> {
    let deploy = Path::new(ROOT).join("deploy");
    let k: Mapping =
        serde_yaml::from_str(&std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap())
            .unwrap();
    let known: BTreeSet<&str> = ["apiVersion", "kind", "resources", "images"].into();
    for key in k.keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(key),
            "deploy/kustomization.yaml uses `{key}`: teach tests/helm_chart.rs's \
             render_kustomize what it does, and the chart the same"
        );
    }
    let mut objects = Vec::new();
    for r in k["resources"].as_sequence().unwrap() {
        let path = deploy.join(r.as_str().unwrap());
        objects.extend(yaml_docs(&std::fs::read_to_string(&path).unwrap(), &path));
    }
    let images = k
        .get("images")
        .and_then(Y::as_sequence)
        .cloned()
        .unwrap_or_default();
    for o in &mut objects {
        for list in ["containers", "initContainers"] {
            let Some(containers) = o
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
                .and_then(|s| s.get_mut(list))
                .and_then(Y::as_sequence_mut)
            else {
                continue;
            };
            for c in containers {
                let image = c["image"].as_str().unwrap().to_string();
                let name = image.split(':').next().unwrap();
                for i in &images {
                    if i["name"].as_str() == Some(name) {
                        let new_name = i["newName"].as_str().unwrap_or(name);
                        let tag = i["newTag"]
                            .as_str()
                            .map(String::from)
                            .unwrap_or_else(|| image.split(':').nth(1).unwrap_or("").into());
                        c["image"] = Y::String(format!("{new_name}:{tag}"));
                    }
                }
            }
        }
    }
    objects
}

/// Labels Helm charts put on every object; kustomize's objects lack them.
const HELM_LABELS: &[&str] = &[
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "helm.sh/chart",
];

fn without_helm_labels(mut o: Y) -> Y {
    if let Some(labels) = o
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Y::as_mapping_mut)
    {
        for l in HELM_LABELS {
            labels.remove(*l);
        }
        if labels.is_empty() {
            o["metadata"].as_mapping_mut().unwrap().remove("labels");
        }
    }
    o
}

fn key(o: &Y) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objects: Vec<Y>) -> BTreeMap<String, Y> {
    objects
        .into_iter()
        .map(|o| (key(&o), without_helm_labels(o)))
        .collect()
}

/// The differences between two values, as `path: left != right` lines.
fn diff(path: &str, a: &Y, b: &Y, out: &mut Vec<String>) {
    match (a, b) {
        (Y::Mapping(x), Y::Mapping(y)) => {
            let keys: BTreeSet<String> = x
                .keys()
                .chain(y.keys())
                .map(|k| k.as_str().unwrap_or("?").to_string())
                .collect();
            for k in keys {
                diff(
                    &format!("{path}.{k}"),
                    x.get(k.as_str()).unwrap_or(&Y::Null),
                    y.get(k.as_str()).unwrap_or(&Y::Null),
                    out,
                );
            }
        }
        (Y::Sequence(x), Y::Sequence(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!(
            "{path}: deploy/ has {} but the chart renders {}",
            serde_json::to_string(b).unwrap(),
            serde_json::to_string(a).unwrap()
        )),
    }
}

/// Each agent flag's environment variable and its default, from `tollgate
/// agent --help` (clap prints `[env: NAME=]` and `[default: V]` per flag).
fn agent_flags() -> BTreeMap<String, Option<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["agent", "--help"])
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let env = regex::Regex::new(r"\[env: ([A-Z_]+)=[^\]]*\]").unwrap();
    let default = regex::Regex::new(r"\[default: ([^\]]*)\]").unwrap();
    let mut flags = BTreeMap::new();
    // One block per option: from a line starting with `-`/`--` to the next.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push(' ');
        }
    }
    for b in blocks {
        if let Some(e) = env.captures(&b) {
            let d = default.captures(&b).map(|d| d[1].to_string());
            flags.insert(e[1].to_string(), d);
        }
    }
    assert!(
        flags.len() > 20,
        "parsed the agent's flags from --help: {flags:?}"
    );
    flags
}

fn configmap(objects: &BTreeMap<String, Y>, ns: &str) -> Mapping {
    objects[&format!("ConfigMap {ns}/tollgate-config")]["data"]
        .as_mapping()
        .unwrap()
        .clone()
}

/// With its default values the chart renders what deploy/ applies: the
/// same objects, field by field, except that the chart's ConfigMap sets
/// every flag (the extra ones to the agent's own defaults) and its objects
/// carry Helm's labels.
#[test]
fn the_chart_renders_the_objects_of_deploy() {
    let chart = by_key(render_chart("tollgate", "namespace: {create: true}"));
    let kustomize = by_key(render_kustomize());
    let (c_keys, k_keys): (BTreeSet<&String>, BTreeSet<&String>) =
        (chart.keys().collect(), kustomize.keys().collect());
    assert_eq!(
        c_keys, k_keys,
        "the chart and deploy/ do not have the same objects (kind namespace/name)"
    );
    let flags = agent_flags();
    let mut problems = Vec::new();
    for (k, kust) in &kustomize {
        let mut ours = chart[k].clone();
        if kust["kind"] == "ConfigMap" {
            // Keys deploy/ leaves out must be at the agent's defaults.
            let data = ours["data"].as_mapping_mut().unwrap();
            let theirs = kust["data"].as_mapping().unwrap();
            let extra: Vec<Y> = data
                .keys()
                .filter(|key| !theirs.contains_key(*key))
                .cloned()
                .collect();
            for key in extra {
                let name = key.as_str().unwrap();
                let value = data.remove(&key).unwrap();
                let value = value.as_str().unwrap_or("?");
                let expected = match flags.get(name) {
                    Some(Some(d)) => d.as_str(),
                    Some(None) => "false",
                    None => {
                        problems.push(format!("{k}: {name} is not a flag of `tollgate agent`"));
                        continue;
                    }
                };
                if value != expected {
                    problems.push(format!(
                        "{k}: {name}={value:?}, but the agent's default is {expected:?} and deploy/ does not set it"
                    ));
                }
            }
        }
        diff(k, &ours, kust, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "deploy/helm/tollgate has drifted from deploy/ (bring the chart in step):\n{}",
        problems.join("\n")
    );
}

/// Every flag the agent has can be set through the chart's values.
#[test]
fn every_agent_flag_has_a_value_in_the_chart() {
    let flags = agent_flags();
    let default = by_key(render_chart("tollgate", ""));
    let with_kubeconfig = by_key(render_chart(
        "tollgate",
        "agent: {kubeconfig: /etc/tollgate/kubeconfig}",
    ));
    let mut set: BTreeSet<String> = configmap(&default, "tollgate")
        .keys()
        .chain(configmap(&with_kubeconfig, "tollgate").keys())
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    // NODE_NAME comes from the pod's spec.nodeName.
    let ds = &default["DaemonSet tollgate/tollgate"]["spec"]["template"]["spec"]["containers"][0];
    for e in ds["env"].as_sequence().unwrap() {
        set.insert(e["name"].as_str().unwrap().to_string());
    }
    let missing: Vec<&String> = flags.keys().filter(|f| !set.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "agent flags the chart cannot set: {missing:?}: add each to values.yaml (agent:) \
         and templates/configmap.yaml"
    );
    // Helm prints numbers of a million and more in exponent form ("1e+06"),
    // which the agent would not parse.
    let values: Y =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    for (k, v) in values["agent"].as_mapping().unwrap() {
        if let Some(n) = v.as_f64() {
            assert!(n < 1e6, "values.yaml agent.{k:?} = {n}: quote it");
        }
    }
}

/// The values a user sets reach the objects.
#[test]
fn values_reach_the_objects() {
    let o = by_key(render_chart(
        "edge",
        r#"
image: {repository: registry.example/tollgate, tag: "1.2.3", pullPolicy: Always}
nodeSelector: {kubernetes.io/os: linux, tollgate: "yes"}
tolerations: [{key: dedicated, operator: Equal, value: edge, effect: NoSchedule}]
resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 1Gi}}
metrics: {address: 0.0.0.0, port: 9100}
agent: {audit: true, minTtl: 30, denyResponse: nxdomain, stateDir: /var/lib/tg}
rbac: {create: false}
serviceAccount: {create: false, name: existing}
"#,
    ));
    let pod = &o["DaemonSet edge/tollgate"]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/tollgate:1.2.3");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["nodeSelector"]["tollgate"], "yes");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["value"], "edge");
    assert_eq!(pod["serviceAccountName"], "existing");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    // No host ports: they would keep the successor off the node during a
    // handover (docs/upgrades.md).
    assert!(c["ports"].is_null(), "ports: {:?}", c["ports"]);
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 9100);
    // Readiness: this pod's agent serves (TOLLGATE_METRICS_ADDR from the
    // ConfigMap tells the probe where).
    assert_eq!(
        c["readinessProbe"]["exec"]["command"][1], "healthz",
        "{:?}",
        c["readinessProbe"]
    );
    assert_eq!(pod["volumes"][2]["hostPath"]["path"], "/var/lib/tg");
    let data = configmap(&o, "edge");
    assert_eq!(data["TOLLGATE_AUDIT"], "true");
    assert_eq!(data["TOLLGATE_MIN_TTL"], "30");
    assert_eq!(data["TOLLGATE_DENY_RESPONSE"], "nxdomain");
    assert_eq!(data["TOLLGATE_METRICS_ADDR"], "0.0.0.0:9100");
    assert_eq!(data["TOLLGATE_STATE_DIR"], "/var/lib/tg");
    assert!(
        !o.keys().any(|k| k.starts_with("ClusterRole")
            || k.starts_with("Role")
            || k.starts_with("ServiceAccount")),
        "rbac.create=false and serviceAccount.create=false render neither: {:?}",
        o.keys()
    );
    assert!(
        !o.keys().any(|k| k.starts_with("Namespace ")),
        "no Namespace unless namespace.create"
    );
}

/// The chart's CRDs are deploy/'s, byte for byte.
#[test]
fn the_charts_crds_are_deploys() {
    let ours = sorted_files(&chart_dir().join("crds"));
    let theirs = sorted_files(&Path::new(ROOT).join("deploy/crds"));
    let names = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect()
    };
    assert_eq!(names(&ours), names(&theirs), "the same CRD files");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            std::fs::read_to_string(a).unwrap(),
            std::fs::read_to_string(b).unwrap(),
            "{} differs from {}: copy deploy/crds into the chart",
            a.display(),
            b.display()
        );
    }
}

/// The diff catches a drifted RBAC rule (the checker itself can fail).
#[test]
fn a_drifted_rule_is_reported() {
    let mut chart = by_key(render_chart("tollgate", ""));
    let kustomize = by_key(render_kustomize());
    let k = "ClusterRole /tollgate".to_string();
    chart.get_mut(&k).unwrap()["rules"][2]["resources"] =
        serde_yaml::from_str("[pods, namespaces]").unwrap();
    let mut problems = Vec::new();
    diff(&k, &chart[&k], &kustomize[&k], &mut problems);
    assert!(
        problems.iter().any(|p| p.contains("rules[2].resources")),
        "{problems:?}"
    );
}

/// `handover.releasePod` (Kubernetes < 1.22) renders the Role the real
/// node's manifests carry (`scripts/realnode/deploy/handover-role.yaml`),
/// and only then.
#[test]
fn the_release_role_is_the_real_nodes_and_opt_in() {
    let default = by_key(render_chart("tollgate", ""));
    assert!(
        !default.keys().any(|k| k.starts_with("Role ")),
        "no pod writes by default: {:?}",
        default.keys()
    );
    let o = by_key(render_chart("tollgate", "handover: {releasePod: true}"));
    let role = &o["Role tollgate/tollgate-handover"];
    let path = Path::new(ROOT).join("scripts/realnode/deploy/handover-role.yaml");
    let theirs = yaml_docs(&std::fs::read_to_string(&path).unwrap(), &path);
    assert_eq!(role["rules"], theirs[0]["rules"]);
    let binding = &o["RoleBinding tollgate/tollgate-handover"];
    assert_eq!(binding["roleRef"], theirs[1]["roleRef"]);
    assert_eq!(binding["subjects"], theirs[1]["subjects"]);
}
