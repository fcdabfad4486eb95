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

/// The plain statement of the rule, as settling was first written: every
/// endpoint sorted by (rank, namespace, name), then each claims its
/// addresses in that order after the nodes. `settle_addresses` ranks only
/// the claimants of contested addresses and names; it must agree.
fn settle_by_sorting_everyone(
    f: &mut InventoryFile,
    rank: impl Fn(usize) -> u8,
) -> Vec<policy::inventory::AddressConflict> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let nodes = f.nodes.len();
    let mut owner: HashMap<std::net::IpAddr, usize> = HashMap::new();
    let mut lost: BTreeMap<std::net::IpAddr, Vec<usize>> = BTreeMap::new();
    let mut claim = |ip, who| match owner.entry(ip) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(who);
            true
        }
        std::collections::hash_map::Entry::Occupied(_) => {
            lost.entry(ip).or_default().push(who);
            false
        }
    };
    f.nodes
        .sort_by(|a, b| (!a.local, &a.name).cmp(&(!b.local, &b.name)));
    for (i, node) in f.nodes.iter_mut().enumerate() {
        node.ips.retain(|ip| claim(*ip, i));
    }
    let mut order: Vec<usize> = (0..f.endpoints.len()).collect();
    order.sort_by_key(|&i| {
        (
            rank(i),
            f.endpoints[i].namespace.clone(),
            f.endpoints[i].name.clone(),
        )
    });
    let mut seen = HashSet::new();
    order.retain(|&i| {
        seen.insert((
            f.endpoints[i].namespace.clone(),
            f.endpoints[i].name.clone(),
        ))
    });
    let mut keep = vec![false; f.endpoints.len()];
    for i in order {
        let claimed: Vec<bool> = f.endpoints[i]
            .ips
            .clone()
            .into_iter()
            .map(|ip| claim(ip, nodes + i))
            .collect();
        let mut left = claimed.iter();
        std::sync::Arc::make_mut(&mut f.endpoints[i])
            .ips
            .retain(|_| *left.next().unwrap());
        keep[i] = claimed.is_empty() || claimed.contains(&true);
    }
    let name = |who: usize| match who.checked_sub(nodes) {
        None => format!("node {}", f.nodes[who].name),
        Some(i) => format!("{}/{}", f.endpoints[i].namespace, f.endpoints[i].name),
    };
    let conflicts = lost
        .into_iter()
        .map(|(ip, dropped)| policy::inventory::AddressConflict {
            ip,
            kept: name(owner[&ip]),
            dropped: dropped.into_iter().map(name).collect(),
        })
        .collect();
    let mut i = 0;
    f.endpoints.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    conflicts
}

proptest::proptest! {
    /// Whatever a cluster reports (addresses shared between nodes and
    /// pods, pods listed twice, an address listed twice by one pod),
    /// settling gives what sorting every endpoint gives.
    #[test]
    fn settling_contested_claims_only_is_settling_everyone(
        nodes in proptest::collection::vec((0u8..3, proptest::collection::vec(0u8..6, 0..3), proptest::bool::ANY), 0..3),
        endpoints in proptest::collection::vec((0u8..5, proptest::collection::vec(0u8..6, 0..3), 0u8..3), 0..10),
    ) {
        let ip = |n: u8| std::net::IpAddr::from([10, 0, 0, n]);
        let mut f = InventoryFile::default();
        for (name, ips, local) in &nodes {
            f.nodes.push(policy::inventory::NodeSpec {
                name: format!("node-{name}"),
                ips: ips.iter().map(|n| ip(*n)).collect(),
                local: *local,
                labels: Default::default(),
            });
        }
        for (name, ips, _) in &endpoints {
            f.endpoints.push(std::sync::Arc::new(policy::inventory::EndpointSpec {
                name: format!("pod-{name}"),
                namespace: "prod".into(),
                labels: Default::default(),
                ips: ips.iter().map(|n| ip(*n)).collect(),
                audit: false,
                interface: None,
                service_account: None,
                ports: vec![],
            }));
        }
        let ranks: Vec<u8> = endpoints.iter().map(|(_, _, r)| *r).collect();
        let mut reference = f.clone();
        let expected = settle_by_sorting_everyone(&mut reference, |i| ranks[i]);
        let conflicts = f.settle_addresses(|i, _| ranks[i]);
        proptest::prop_assert_eq!(conflicts, expected);
        proptest::prop_assert_eq!(f, reference);
    }
}
