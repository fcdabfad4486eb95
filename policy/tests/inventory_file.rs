//! The endpoints file as a user writes it (local mode, `policy explain`):
//! defaults, names, the cluster a file is loaded for, and errors that name
//! the file.

use policy::inventory::{EndpointKey, InventoryError};
use policy::Inventory;

#[test]
fn an_endpoint_without_a_namespace_is_in_default() {
    let inv = Inventory::parse("endpoints:\n  - {name: web, ips: [10.0.1.5]}\n", "e.yaml").unwrap();
    let web = &inv.endpoints()[0];
    assert_eq!(web.key.namespace, "default");
    assert_eq!(
        web.labels.get("io.kubernetes.pod.namespace"),
        Some("default")
    );
}

#[test]
fn an_endpoint_key_prints_as_namespace_slash_name() {
    let key = EndpointKey {
        namespace: "prod".into(),
        name: "web".into(),
    };
    assert_eq!(key.to_string(), "prod/web");
}

/// Named ports are matched by name case-insensitively (as Kubernetes
/// port names are lowercase): the file's spelling is lowercased.
#[test]
fn named_ports_are_lowercased_and_keep_number_and_protocol() {
    let inv = Inventory::parse(
        "endpoints:\n  - {name: web, ips: [10.0.1.5], ports: [{name: HTTP-Alt, port: 8080, protocol: UDP}]}\n",
        "e.yaml",
    )
    .unwrap();
    let port = &inv.endpoints()[0].ports[0];
    assert_eq!(port.name, "http-alt");
    assert_eq!(port.port, 8080);
    assert_eq!(port.protocol, policy::model::ProtocolSpec::Udp);
}

/// `--cluster-name`: every endpoint of a file loaded for a cluster carries
/// its name as the cluster label; errors name the file.
#[test]
fn a_file_loaded_for_a_cluster_labels_its_endpoints_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(
        &path,
        "endpoints:\n  - {namespace: prod, name: web, ips: [10.0.1.5]}\n",
    )
    .unwrap();
    let inv = Inventory::load_in_cluster(&path, "east").unwrap();
    assert_eq!(inv.endpoints().len(), 1);
    assert_eq!(
        inv.endpoints()[0]
            .labels
            .get(policy::inventory::CLUSTER_LABEL),
        Some("east")
    );
    let plain = Inventory::load(&path).unwrap();
    assert_eq!(
        plain.endpoints()[0]
            .labels
            .get(policy::inventory::CLUSTER_LABEL),
        Some(policy::inventory::DEFAULT_CLUSTER)
    );

    let missing = dir.path().join("missing.yaml");
    let err = Inventory::load_in_cluster(&missing, "east").unwrap_err();
    assert!(matches!(err, InventoryError::Read { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );

    std::fs::write(&path, "endpoints:\n  - {name: web, ips: [not-an-ip]}\n").unwrap();
    let err = Inventory::load_in_cluster(&path, "east").unwrap_err();
    assert!(matches!(err, InventoryError::Format { .. }), "{err}");
    assert!(err.to_string().contains("endpoints[0]"), "{err}");

    std::fs::write(
        &path,
        "endpoints:\n  - {name: a, ips: [10.0.0.1]}\n  - {name: b, ips: [10.0.0.1]}\n",
    )
    .unwrap();
    let err = Inventory::load_in_cluster(&path, "east").unwrap_err();
    assert!(matches!(err, InventoryError::Conflict { .. }), "{err}");
}

/// The node's and other nodes' addresses are `host` and `remote-node`; the
/// API server's are `kube-apiserver` unless a node already owns one (the
/// datapath writes every one of them with its identity).
#[test]
fn reserved_addresses_are_the_nodes_and_the_api_servers() {
    use policy::Identity;
    let inv = Inventory::parse(
        "
nodes:
  - {name: this, local: true, ips: [10.0.0.1]}
  - {name: other, ips: [10.0.0.2]}
kubeApiserver: [10.0.0.1, 10.96.0.1]
",
        "e.yaml",
    )
    .unwrap();
    let mut reserved: Vec<(String, Identity)> = inv
        .reserved_addresses()
        .map(|(ip, id)| (ip.to_string(), id))
        .collect();
    reserved.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        reserved,
        [
            ("10.0.0.1".to_string(), Identity::HOST),
            ("10.0.0.2".to_string(), Identity::REMOTE_NODE),
            ("10.96.0.1".to_string(), Identity::KUBE_APISERVER),
        ]
    );
}
