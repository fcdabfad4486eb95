//! Identities as the rest of Tollgate relies on them: which numbers are
//! reserved, which entity covers which identity, and how they print.
//! (Mutation testing found these unpinned; see TESTING.md.)

use policy::model::Entity;
use policy::Identity;

#[test]
fn the_first_allocated_identity_belongs_to_pods_not_to_the_reserved_range() {
    let first = Identity(Identity::FIRST_ALLOCATED);
    assert!(!first.is_reserved());
    assert!(Identity(Identity::FIRST_ALLOCATED - 1).is_reserved());
    assert!(Identity::HOST.is_reserved() && Identity::WORLD.is_reserved());
    assert_eq!(first.reserved_labels(), None);
}

#[test]
fn each_entity_covers_exactly_its_identities() {
    let pod = Identity(Identity::FIRST_ALLOCATED + 7);
    let all = [
        Identity::UNKNOWN,
        Identity::HOST,
        Identity::WORLD,
        Identity::UNMANAGED,
        Identity::HEALTH,
        Identity::INIT,
        Identity::REMOTE_NODE,
        Identity::KUBE_APISERVER,
        Identity::INGRESS,
        pod,
    ];
    let covered = |entity: Entity, ipv4: Option<bool>| -> Vec<Identity> {
        all.iter()
            .copied()
            .filter(|id| id.in_entity(entity, ipv4))
            .collect()
    };
    assert_eq!(covered(Entity::All, None), all);
    assert!(covered(Entity::None, None).is_empty());
    assert_eq!(covered(Entity::World, None), [Identity::WORLD]);
    assert_eq!(covered(Entity::WorldIpv4, Some(true)), [Identity::WORLD]);
    assert!(covered(Entity::WorldIpv4, Some(false)).is_empty());
    assert!(
        covered(Entity::WorldIpv4, None).is_empty(),
        "family unknown"
    );
    assert_eq!(covered(Entity::WorldIpv6, Some(false)), [Identity::WORLD]);
    assert!(covered(Entity::WorldIpv6, Some(true)).is_empty());
    assert!(covered(Entity::WorldIpv6, None).is_empty());
    let cluster = covered(Entity::Cluster, None);
    assert!(!cluster.contains(&Identity::WORLD) && !cluster.contains(&Identity::UNKNOWN));
    assert_eq!(cluster.len(), all.len() - 2);
    for (entity, id) in [
        (Entity::Host, Identity::HOST),
        (Entity::RemoteNode, Identity::REMOTE_NODE),
        (Entity::KubeApiserver, Identity::KUBE_APISERVER),
        (Entity::Health, Identity::HEALTH),
        (Entity::Init, Identity::INIT),
        (Entity::Unmanaged, Identity::UNMANAGED),
        (Entity::Ingress, Identity::INGRESS),
    ] {
        assert_eq!(covered(entity, None), [id], "{entity:?}");
    }
}

#[test]
fn identities_print_with_their_reserved_name() {
    assert_eq!(Identity::HOST.to_string(), "1(reserved:host)");
    assert_eq!(Identity::REMOTE_NODE.to_string(), "6(reserved:remote-node)");
    assert_eq!(Identity(300).to_string(), "300");
    let labels = Identity::KUBE_APISERVER.reserved_labels().unwrap();
    assert_eq!(labels.to_string(), "reserved:kube-apiserver=");
}

/// Sum of the identities of `app=a0` .. `app=a99999` (pinned; see below).
const DIGEST: u64 = 835_526_398_472;
/// The identity of `app=a0`.
const FIRST: u32 = 12_710_274;

#[test]
fn identities_stay_in_the_allocated_range_however_many_pods() {
    // Above the range start the CIDR identities (`Identity::LIMIT` on): a
    // pod's identity must never be one of them.
    let sets: Vec<policy::Labels> = (0..100_000)
        .map(|i| [("app".to_string(), format!("a{i}"))].into_iter().collect())
        .collect();
    let ids = policy::identity::allocate(&sets);
    assert_eq!(ids.len(), sets.len(), "one identity per label set");
    let distinct: std::collections::HashSet<_> = ids.values().collect();
    assert_eq!(distinct.len(), sets.len(), "all distinct");
    assert!(ids
        .values()
        .all(|id| (Identity::FIRST_ALLOCATED..Identity::LIMIT).contains(&id.0)));
    // The numbers are a fixed function of the label sets (hash, then linear
    // probing over collisions — a few hundred among 100k): every node and
    // every release computes the same ones.
    let digest: u64 = ids.values().map(|id| u64::from(id.0)).sum();
    assert_eq!(digest, DIGEST);
    assert_eq!(ids[&sets[0]].0, FIRST);
}

#[test]
fn labels_read_back_with_normalised_keys_in_order() {
    let labels: policy::Labels = [("k8s:app", "web"), ("any:tier", "front"), ("env", "prod")]
        .into_iter()
        .collect();
    assert!(!labels.is_empty());
    assert!(policy::Labels::new().is_empty());
    assert_eq!(
        labels.iter().collect::<Vec<_>>(),
        [("app", "web"), ("env", "prod"), ("tier", "front")]
    );
    assert_eq!(labels.get("k8s:tier"), Some("front"));
}

#[test]
fn an_empty_selector_selects_everything_and_says_so() {
    let all = policy::Selector::all();
    assert!(all.is_empty());
    assert!(all.matches(&policy::Labels::new()));
    let web = policy::Selector::all().with_label("app", "web");
    assert!(!web.is_empty());
    assert!(!web.matches(&policy::Labels::new()));
}

#[test]
fn selectors_print_as_kubectl_writes_them() {
    use policy::labels::Requirement;
    use std::collections::BTreeSet;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(policy::Selector::all().to_string(), "{}");
    let s = policy::Selector::all()
        .with_label("k8s:app", "web")
        .with(Requirement::In("tier".into(), set(&["a", "b"])))
        .with(Requirement::NotIn("env".into(), set(&["dev"])))
        .with(Requirement::Exists("team".into()))
        .with(Requirement::DoesNotExist("legacy".into()));
    assert_eq!(
        s.to_string(),
        "app=web,tier in (a,b),env notin (dev),team,!legacy"
    );
}
