//! Loading as users meet it: which files of a policy directory are read,
//! entity names as written, and what a wrongly typed port says. (Mutation
//! testing found these unpinned; see TESTING.md.)

use std::path::PathBuf;

use policy::model::Entity;
use policy::rules::{Peer, Peers};
use policy::{load_paths, parse_str};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cnp(name: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\n\
         spec: {{endpointSelector: {{}}, egress: [{{toEntities: [world]}}]}}\n"
    )
}

#[test]
fn a_policy_directory_reads_its_yaml_and_json_files_only_in_name_order() {
    let dir = TempDir::new("policy-dir");
    std::fs::write(dir.0.join("b.yaml"), cnp("b")).unwrap();
    std::fs::write(dir.0.join("a.yml"), cnp("a")).unwrap();
    std::fs::write(dir.0.join("c.json"), "{\"apiVersion\": \"cilium.io/v2\", \"kind\": \"CiliumNetworkPolicy\", \"metadata\": {\"name\": \"c\", \"namespace\": \"prod\"}, \"spec\": {\"endpointSelector\": {}, \"egress\": [{\"toEntities\": [\"world\"]}]}}").unwrap();
    // Not policies: a README, an editor's backup, a directory named like a file.
    std::fs::write(dir.0.join("README.md"), "# not: [valid").unwrap();
    std::fs::write(dir.0.join("b.yaml~"), "not: [valid").unwrap();
    std::fs::create_dir(dir.0.join("old.yaml")).unwrap();
    std::fs::write(dir.0.join("old.yaml/x.yaml"), cnp("old")).unwrap();

    let files = policy::load::policy_files(&dir.0).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.yml", "b.yaml", "c.json"]);
    let report = load_paths(&[&dir.0]);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let loaded: Vec<&str> = report
        .policies
        .iter()
        .map(|p| p.name.name.as_str())
        .collect();
    assert_eq!(loaded, ["a", "b", "c"]);
    // A file named directly is read whatever its name.
    assert_eq!(
        policy::load::policy_files(&dir.0.join("README.md")).unwrap(),
        [dir.0.join("README.md")]
    );
}

#[test]
fn every_entity_is_known_by_the_name_users_write() {
    for name in [
        "all",
        "world",
        "world-ipv4",
        "world-ipv6",
        "cluster",
        "host",
        "remote-node",
        "kube-apiserver",
        "health",
        "init",
        "unmanaged",
        "ingress",
        "none",
    ] {
        let yaml = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec: {{endpointSelector: {{}}, egress: [{{toEntities: [{name}]}}]}}\n"
        );
        let report = parse_str(&yaml, None);
        assert!(!report.has_errors(), "{name}: {:?}", report.diagnostics);
        let rule = &report.policies[0].specs[0].egress.as_ref().unwrap()[0];
        let Peers::Listed(peers) = &rule.peers else {
            panic!("{name}: listed peers");
        };
        let entity: Vec<Entity> = peers
            .iter()
            .filter_map(|p| match p {
                Peer::Entity(e) => Some(*e),
                _ => None,
            })
            .collect();
        // `all` may be compiled to "any peer" rather than an entity.
        if let [e] = entity[..] {
            assert_eq!(e.as_str(), name);
        } else {
            assert_eq!(name, "all", "{name}: {peers:?}");
        }
    }
}

#[test]
fn a_wrongly_typed_port_says_what_was_expected() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
        spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: [443]}]}]}]}\n";
    let report = parse_str(yaml, None);
    let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("a port number such as 443 or \"443\"")),
        "{errors:?}"
    );
}

#[test]
fn a_negative_port_is_reported_as_written() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
        spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: -1}]}]}]}\n";
    let errors: Vec<String> = parse_str(yaml, None)
        .errors()
        .map(|d| d.to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"-1\" is neither a port number")),
        "{errors:?}"
    );
}
