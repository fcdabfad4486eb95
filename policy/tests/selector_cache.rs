//! The agent keeps its peer selectors' selections between reloads
//! (`SelectorCache`, through `PolicySet::resolve_cached`): after any
//! sequence of pods appearing, changing labels and going, and of policy
//! sets changing, what it resolves is what a resolution from scratch gives.

use std::collections::BTreeMap;
use std::sync::Arc;

use policy::inventory::{EndpointSpec, InventoryFile, NodeSpec};
use policy::{Inventory, PolicySet, ResolveOptions, SelectorCache};
use proptest::prelude::*;

const POLICIES: [&str; 3] = [
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
    - fromEndpoints: [{matchExpressions: [{key: tier, operator: NotIn, values: [t1]}]}]
  egress:
    - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": dev}}]
    - toEndpoints: [{matchLabels: {"reserved:host": ""}}]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: prod}
spec:
  endpointSelector: {}
  egress:
    - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [web, db]}]}]
      toPorts: [{ports: [{port: "80"}]}]
"#,
    r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all}
spec:
  endpointSelector: {matchLabels: {tier: t0}}
  ingressDeny:
    - fromEndpoints: [{matchExpressions: [{key: app, operator: Exists}]}]
"#,
];

#[derive(Debug, Clone)]
enum Change {
    /// Pod `slot` (re)created or relabelled.
    Pod(usize, &'static str, u8, bool),
    Delete(usize),
    /// The policy set becomes these of `POLICIES`.
    Policies(Vec<bool>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (0usize..6, prop::sample::select(vec!["web", "api", "db"]), 0u8..3, any::<bool>())
            .prop_map(|(s, app, tier, dev)| Change::Pod(s, app, tier, dev)),
        2 => (0usize..6).prop_map(Change::Delete),
        1 => prop::collection::vec(any::<bool>(), POLICIES.len()).prop_map(Change::Policies),
    ]
}

fn pod(slot: usize, app: &str, tier: u8, dev: bool) -> Arc<EndpointSpec> {
    Arc::new(EndpointSpec {
        name: format!("pod-{slot}"),
        namespace: if dev { "dev" } else { "prod" }.into(),
        labels: BTreeMap::from([
            ("app".to_string(), app.to_string()),
            ("tier".to_string(), format!("t{tier}")),
        ])
        .into(),
        ips: vec![format!("10.0.0.{slot}").parse().unwrap()],
        audit: false,
        interface: None,
        service_account: None,
        ports: Vec::new(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn resolving_with_kept_selections_is_resolving_from_scratch(
        changes in prop::collection::vec(change(), 1..30),
    ) {
        let mut pods: BTreeMap<usize, Arc<EndpointSpec>> = BTreeMap::new();
        let mut chosen = vec![true; POLICIES.len()];
        let mut cache = SelectorCache::default();
        for change in changes {
            match change {
                Change::Pod(slot, app, tier, dev) => {
                    pods.insert(slot, pod(slot, app, tier, dev));
                }
                Change::Delete(slot) => {
                    pods.remove(&slot);
                }
                Change::Policies(c) => chosen = c,
            }
            let text: Vec<&str> = POLICIES.iter().zip(&chosen).filter(|(_, c)| **c).map(|(p, _)| *p).collect();
            let report = policy::parse_str(&text.join("---\n"), None);
            prop_assert!(!report.has_errors());
            let inventory = Inventory::from_spec(InventoryFile {
                endpoints: pods.values().cloned().collect(),
                nodes: vec![NodeSpec { name: "here".into(), ips: vec!["192.168.0.1".parse().unwrap()], local: true, labels: BTreeMap::new() }],
                ..InventoryFile::default()
            }).unwrap();
            let set = PolicySet::new(report.policies);
            let kept = set.resolve_cached(&inventory, ResolveOptions::default(), |_| true, &mut cache);
            let fresh = set.resolve(&inventory, ResolveOptions::default());
            prop_assert_eq!(format!("{:?}", kept.endpoints), format!("{:?}", fresh.endpoints));
        }
    }
}
