//! `InventoryFile::settle_addresses`, beyond its unit tests (who keeps a
//! shared address): what else a cluster's report can hold for a moment,
//! and that settling changes nothing else.

use policy::inventory::InventoryFile;

fn file(yaml: &str) -> InventoryFile {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn a_pod_listed_twice_keeps_its_first_entry_and_is_no_conflict_with_itself() {
    let mut f = file(
        "
endpoints:
  - {namespace: prod, name: web, ips: [10.0.1.5]}
  - {namespace: prod, name: web, ips: [10.0.1.5, 10.0.1.6]}
  - {namespace: prod, name: db, ips: [10.0.1.8]}
",
    );
    let conflicts = f.settle_addresses(|_, _| 0);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let entries: Vec<(&str, usize)> = f
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.ips.len()))
        .collect();
    assert_eq!(entries, [("web", 1), ("db", 1)]);
}

#[test]
fn a_pod_without_an_address_yet_stays_and_the_order_is_kept() {
    let mut f = file(
        "
endpoints:
  - {namespace: prod, name: job-done, ips: [10.0.1.7]}
  - {namespace: prod, name: starting, ips: []}
  - {namespace: prod, name: new-pod, ips: [10.0.1.7]}
",
    );
    let conflicts = f.settle_addresses(|_, e| e.name != "new-pod");
    assert_eq!(conflicts.len(), 1);
    let names: Vec<&str> = f.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["starting", "new-pod"]);
}

#[test]
fn without_a_shared_address_nothing_changes() {
    let yaml = "
endpoints:
  - {namespace: prod, name: web, ips: [10.0.1.5]}
  - {namespace: prod, name: db, ips: [10.0.1.8]}
nodes:
  - {name: n1, local: true, ips: [10.0.0.1]}
  - {name: n0, ips: [10.0.0.2]}
";
    let mut f = file(yaml);
    assert!(f.settle_addresses(|_, _| 0).is_empty());
    let names: Vec<&str> = f.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["n1", "n0"],
        "the local node first (the order claims go in)"
    );
    assert_eq!(f.endpoints, file(yaml).endpoints);
}
