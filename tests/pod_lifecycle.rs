//! A pod that goes away, seen from the node's state (in-process, the fake
//! datapath): what a reload without the pod removes, and what it keeps.
//! Kubernetes mode reloads with the pod gone when it is deleted or finishes
//! (`src/kube.rs`); this is what happens next.

use egress_bpf::FakeDatapath;
use fqdn_cache::{Config, FqdnCache, PolicyView};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions};
use tollgate::node::{ActivePolicy, Node};

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: payments}}
  egress:
    - toFQDNs: [{matchPattern: "*.test"}]
"#;

fn key() -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: "payments".into(),
    }
}

fn active(endpoints: &str) -> ActivePolicy {
    let inventory = Inventory::parse(endpoints, "test").unwrap();
    let report = policy::parse_str(POLICY, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    ActivePolicy::new(resolved, inventory, |n| (n == "veth7").then_some(7))
}

const WITH_POD: &str = "endpoints:\n  - {namespace: prod, name: payments, labels: {app: payments}, ips: [10.0.1.10], interface: veth7}\n";
const WITHOUT_POD: &str = "endpoints: []\n";

#[test]
fn a_deleted_pods_map_entries_go_with_the_reload_that_drops_it() {
    let policy = active(WITH_POD);
    let view = PolicyView::from_resolved(policy.resolved());
    let (node, _) = Node::start(
        FakeDatapath::default(),
        policy,
        FqdnCache::new(Config::default(), view),
    )
    .unwrap();
    let ip = "203.0.113.10".parse().unwrap();
    node.learn(&key(), "api.test.", &[(ip, 300)]).unwrap();
    node.inspect(|dp, _| {
        assert!(
            dp.state.endpoints.contains_key(&7),
            "the pod's veth is enforced"
        );
        assert!(
            dp.state.fqdn.contains_key(&(7, ip)),
            "the learned IP is open"
        );
    });

    node.reload(active(WITHOUT_POD)).unwrap();
    node.inspect(|dp, _| {
        assert!(
            !dp.state.endpoints.contains_key(&7),
            "the endpoint entry of the deleted pod's veth is removed"
        );
        assert!(
            dp.state.fqdn.keys().all(|(ifindex, _)| *ifindex != 7),
            "its FQDN entries are removed: {:?}",
            dp.state.fqdn
        );
        assert!(
            dp.state.allow.is_empty() && dp.state.deny.is_empty(),
            "no policy entries are left for it"
        );
    });
}

/// A deleted pod's learned names go too: the cache is keyed by
/// namespace/name, so without this a pod re-created under the same name
/// before the TTLs ran out (a StatefulSet's) would be granted them again
/// without a lookup. `Node::reload` forgets the endpoints the new inventory
/// no longer has.
#[test]
fn a_deleted_pods_learned_names_go_and_a_same_named_pod_starts_empty() {
    let policy = active(WITH_POD);
    let view = PolicyView::from_resolved(policy.resolved());
    let (node, _) = Node::start(
        FakeDatapath::default(),
        policy,
        FqdnCache::new(Config::default(), view),
    )
    .unwrap();
    let ip = "203.0.113.10".parse().unwrap();
    node.learn(&key(), "api.test.", &[(ip, 300)]).unwrap();

    node.reload(active(WITHOUT_POD)).unwrap();
    assert!(
        node.names_for(&key(), ip).is_empty(),
        "the deleted pod's names are forgotten"
    );

    node.reload(active(WITH_POD)).unwrap();
    node.inspect(|dp, _| {
        assert!(
            !dp.state.fqdn.contains_key(&(7, ip)),
            "a re-created pod of the same name must look the name up itself"
        );
    });
}
