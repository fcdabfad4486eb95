//! The cluster's policy objects, checked as their events arrive.
//!
//! A watch cache of policy objects kept each one as a JSON tree: at 5,000
//! small CiliumNetworkPolicies that was 30 MiB (about 6 KiB an object, a
//! map node per JSON object), beside the checked policies built from it.
//! Here each watch event checks its object once and the table keeps only
//! the outcome: the policy in force and, for an invalid version, what is
//! wrong with it. A snapshot takes the outcomes as they are.
//!
//! An invalid edit must not widen or drop what was enforced: the table
//! keeps the last valid version of the same object (same uid; a re-created
//! object inherits nothing) in force beside the report of the invalid one.
//!
//! A relist (the first list, and the one after every reconnect) builds a
//! new table beside the old, reusing the outcome of every object whose
//! version did not change, and replaces the old one when it is complete.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::Resource;
use policy::load::{Diagnostic, Severity};
use policy::Policy;

use crate::kube::{EventTable, InvalidObject};

/// The policy kinds watched: (kind, plural).
pub const POLICY_KINDS: [(&str, &str); 4] = [
    ("CiliumNetworkPolicy", "ciliumnetworkpolicies"),
    (
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
    ),
    ("NetworkPolicy", "networkpolicies"),
    ("CiliumCIDRGroup", "ciliumcidrgroups"),
];

pub fn policy_resource(kind: &str, plural: &str) -> ApiResource {
    let (group, version) = match kind {
        "NetworkPolicy" => ("networking.k8s.io", "v1"),
        _ => ("cilium.io", "v2"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// What a valid policy-like object contributes. The policy is shared by
/// every snapshot until its object changes.
#[derive(Debug, Clone)]
pub enum Checked {
    Policy(Arc<Policy>),
    CidrGroup(policy::rules::CidrGroup),
}

/// One object version as checked.
#[derive(Debug)]
pub struct CheckedObject {
    uid: String,
    /// Empty if the object had none (then nothing is reused for it).
    resource_version: String,
    /// What is enforced for the object: this version if valid, else the
    /// last valid version of the same object, if there was one.
    pub in_force: Option<Checked>,
    /// Why this version is not in force, if it is invalid.
    pub invalid: Option<InvalidObject>,
}

/// A policy object checked: the policy, or what is wrong with it.
fn check(kind: &str, object: &DynamicObject) -> Result<Checked, Vec<Diagnostic>> {
    let label = object_label(kind, object);
    let diagnostic = |field: String, message: String| {
        vec![Diagnostic {
            severity: Severity::Error,
            file: None,
            policy: Some(label.clone()),
            field,
            message,
        }]
    };
    let mut value =
        serde_json::to_value(object).map_err(|e| diagnostic(String::new(), e.to_string()))?;
    // DynamicObject omits apiVersion/kind when listed; put them back.
    value["apiVersion"] = policy_resource(kind, "").api_version.into();
    value["kind"] = kind.into();
    let serde_error = |e: serde_path_to_error::Error<serde_json::Error>| {
        diagnostic(e.path().to_string(), e.inner().to_string())
    };
    let (checked, diagnostics) = match kind {
        "NetworkPolicy" => {
            let obj = serde_path_to_error::deserialize(value).map_err(serde_error)?;
            let (p, d) = policy::netpol::validate_network_policy(&obj, &label);
            (p.map(|p| Checked::Policy(Arc::new(p))), d)
        }
        "CiliumCIDRGroup" => {
            let obj = serde_path_to_error::deserialize(value).map_err(serde_error)?;
            let (g, d) = policy::cidrgroup::validate_cidr_group(&obj, &label);
            (g.map(Checked::CidrGroup), d)
        }
        _ => {
            let obj = serde_path_to_error::deserialize(value).map_err(serde_error)?;
            let (p, d) = policy::validate::validate_object(&obj, &label);
            (p.map(|p| Checked::Policy(Arc::new(p))), d)
        }
    };
    checked.ok_or(diagnostics)
}

/// How an object is named in logs and diagnostics.
pub fn object_label(kind: &str, object: &DynamicObject) -> String {
    match (&object.metadata.namespace, &object.metadata.name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    }
}

/// An object's place in the table: namespace and name. One entry a name,
/// whatever the uid: an API server that sent a re-created object without
/// the old one's deletion must not leave both in force.
type ObjectKey = (String, String);

fn key(object: &DynamicObject) -> ObjectKey {
    let meta = &object.metadata;
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn uid(object: &DynamicObject) -> &str {
    object.metadata.uid.as_deref().unwrap_or_default()
}

/// The checked objects of one policy kind.
#[derive(Debug)]
pub struct PolicyTable {
    kind: &'static str,
    resource: ApiResource,
    objects: BTreeMap<ObjectKey, Arc<CheckedObject>>,
    /// A relist under way.
    relist: Option<BTreeMap<ObjectKey, Arc<CheckedObject>>>,
}

impl PolicyTable {
    /// An empty table of `kind` (one of [`POLICY_KINDS`]).
    pub fn new(kind: &'static str, resource: ApiResource) -> Self {
        PolicyTable {
            kind,
            resource,
            objects: BTreeMap::new(),
            relist: None,
        }
    }

    /// A table of `objects`, as one complete list.
    pub fn listed(
        kind: &'static str,
        resource: ApiResource,
        objects: impl IntoIterator<Item = DynamicObject>,
    ) -> Self {
        let mut table = PolicyTable::new(kind, resource);
        table.start_relist();
        for object in objects {
            table.relist_apply(&object);
        }
        table.finish_relist();
        table
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// `object` checked, given what the table held for it: an unchanged
    /// version is not checked again, and an invalid one keeps the last
    /// valid version in force.
    fn derive(
        &self,
        object: &DynamicObject,
        before: Option<&Arc<CheckedObject>>,
    ) -> Arc<CheckedObject> {
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        // What the table held for this object, not a predecessor of the
        // same name: a re-created object inherits nothing.
        let before = before.filter(|b| b.uid == uid(object));
        if let Some(before) = before
            .filter(|b| !b.resource_version.is_empty() && b.resource_version == resource_version)
        {
            return before.clone();
        }
        match check(self.kind, object) {
            Ok(checked) => Arc::new(CheckedObject {
                uid: uid(object).to_string(),
                resource_version,
                in_force: Some(checked),
                invalid: None,
            }),
            Err(diagnostics) => {
                let last_good = before.and_then(|b| b.in_force.clone());
                Arc::new(CheckedObject {
                    invalid: Some(InvalidObject {
                        reference: self.reference(object),
                        label: object_label(self.kind, object),
                        diagnostics,
                        kept_last_good: last_good.is_some(),
                    }),
                    uid: uid(object).to_string(),
                    resource_version,
                    in_force: last_good,
                })
            }
        }
    }

    /// The object version an invalid-policy event is about, with its
    /// resourceVersion (kube's `object_ref` leaves it out).
    fn reference(&self, object: &DynamicObject) -> ObjectReference {
        ObjectReference {
            resource_version: object.metadata.resource_version.clone(),
            ..object.object_ref(&self.resource)
        }
    }

    /// The checked objects, by namespace and name.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<CheckedObject>> {
        self.objects.values()
    }
}

impl EventTable<DynamicObject> for PolicyTable {
    /// An object created or changed.
    fn apply(&mut self, object: &DynamicObject) {
        let key = key(object);
        let checked = self.derive(object, self.objects.get(&key));
        self.objects.insert(key, checked);
    }

    /// An object deleted. A deletion naming another uid than the entry's
    /// (a predecessor's, out of order) leaves the entry alone; where
    /// either has no uid (never from an API server), the name decides.
    fn delete(&mut self, object: &DynamicObject) {
        let key = key(object);
        let deleted = uid(object);
        if self
            .objects
            .get(&key)
            .is_some_and(|e| deleted.is_empty() || e.uid.is_empty() || e.uid == deleted)
        {
            self.objects.remove(&key);
        }
    }

    /// A relist begins: what it lists replaces the table once it is done.
    fn start_relist(&mut self) {
        self.relist = Some(BTreeMap::new());
    }

    /// An object of the relist under way, checked against the table in
    /// force (an unchanged version is reused, an invalid one keeps the
    /// last valid version).
    fn relist_apply(&mut self, object: &DynamicObject) {
        if self.relist.is_none() {
            return self.apply(object); // not listing: an ordinary change
        }
        let key = key(object);
        let checked = self.derive(object, self.objects.get(&key));
        if let Some(relist) = &mut self.relist {
            relist.insert(key, checked);
        }
    }

    /// The relist is complete: it is the table now.
    fn finish_relist(&mut self) {
        if let Some(relist) = self.relist.take() {
            self.objects = relist;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// CiliumNetworkPolicy prod/p: `egress_key` `toFQDNs` is valid, any
    /// other is an unknown field.
    pub(crate) fn cnp(uid: &str, version: &str, egress_key: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "prod", "uid": uid, "resourceVersion": version},
            "spec": {"endpointSelector": {}, "egress": [{egress_key: [{"matchName": "a.test"}]}]},
        }))
        .unwrap()
    }

    fn table() -> PolicyTable {
        let (kind, plural) = POLICY_KINDS[0];
        PolicyTable::new(kind, policy_resource(kind, plural))
    }

    fn only(table: &PolicyTable) -> Arc<CheckedObject> {
        let objects: Vec<_> = table.objects().cloned().collect();
        assert_eq!(objects.len(), 1);
        objects[0].clone()
    }

    fn policy(object: &CheckedObject) -> &Arc<Policy> {
        match &object.in_force {
            Some(Checked::Policy(p)) => p,
            other => panic!("a policy in force: {other:?}"),
        }
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_of_that_object_only() {
        let mut table = table();
        table.apply(&cnp("u1", "1", "toFQDNs"));
        let valid = only(&table);
        assert!(valid.invalid.is_none());

        // The same object edited into something invalid: reported, and the
        // valid version stays.
        table.apply(&cnp("u1", "2", "toFQDN"));
        let edited = only(&table);
        assert!(Arc::ptr_eq(policy(&edited), policy(&valid)));
        let invalid = edited.invalid.as_ref().expect("reported");
        assert!(invalid.kept_last_good);
        assert_eq!(invalid.reference.name.as_deref(), Some("p"));
        assert_eq!(invalid.reference.resource_version.as_deref(), Some("2"));
        assert_eq!(invalid.label, "CiliumNetworkPolicy prod/p");
        assert!(invalid.diagnostics[0].to_string().contains("toFQDN"));
        // ...and it stays through a further invalid edit.
        table.apply(&cnp("u1", "3", "toFQDN"));
        assert!(Arc::ptr_eq(policy(&only(&table)), policy(&valid)));

        // Deleted and re-created invalid (a new uid): nothing inherited.
        table.delete(&cnp("u1", "3", "toFQDN"));
        assert_eq!(table.objects().count(), 0);
        table.apply(&cnp("u2", "1", "toFQDN"));
        let recreated = only(&table);
        assert!(recreated.in_force.is_none());
        assert!(!recreated.invalid.as_ref().unwrap().kept_last_good);
    }

    /// A relist is seen whole or not at all; an unchanged version keeps
    /// the outcome checked before (shared, not checked again); an edit made
    /// invalid while the agent was away keeps the last valid version.
    #[test]
    fn a_relist_takes_effect_when_done_reuses_unchanged_objects_and_keeps_the_last_good() {
        let mut table = table();
        table.apply(&cnp("u1", "1", "toFQDNs"));
        let before = only(&table);
        table.start_relist();
        table.relist_apply(&cnp("u1", "1", "toFQDNs"));
        table.finish_relist();
        assert!(Arc::ptr_eq(&only(&table), &before), "reused");

        table.start_relist();
        table.relist_apply(&cnp("u1", "7", "toFQDN"));
        assert!(
            Arc::ptr_eq(&only(&table), &before),
            "the old state until done"
        );
        table.finish_relist();
        let after = only(&table);
        assert!(after.invalid.as_ref().unwrap().kept_last_good);
        assert!(Arc::ptr_eq(policy(&after), policy(&before)));

        // Deleted while away: gone once the relist is done.
        table.start_relist();
        table.finish_relist();
        assert_eq!(table.objects().count(), 0);
    }

    /// One object's version: `valid` picks a rule the check accepts or one
    /// it rejects (an unknown field), `variant` which name it allows.
    fn version_of(slot: usize, uid: &str, version: u64, valid: bool, variant: u8) -> DynamicObject {
        let key = if valid { "toFQDNs" } else { "toFQDN" };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": format!("p{slot}"), "namespace": "prod", "uid": uid,
                         "resourceVersion": version.to_string()},
            "spec": {"endpointSelector": {},
                     "egress": [{key: [{"matchName": format!("v{variant}.test")}]}]},
        }))
        .unwrap()
    }

    /// An object in the cluster, as the model keeps it.
    #[derive(Debug, Clone, PartialEq)]
    struct Object {
        uid: String,
        version: u64,
        valid: bool,
        variant: u8,
    }

    /// What the table should hold for an object it has seen.
    #[derive(Debug, Clone)]
    struct Seen {
        object: Object,
        /// The variant of the last valid version of this uid the table saw.
        last_good: Option<u8>,
    }

    /// The model of the table seeing `object`, given what it saw before.
    fn see(object: &Object, before: Option<&Seen>) -> Seen {
        let inherited = before
            .filter(|b| b.object.uid == object.uid)
            .and_then(|b| b.last_good);
        Seen {
            object: object.clone(),
            last_good: if object.valid {
                Some(object.variant)
            } else {
                inherited
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The table follows watch events and relists: after any sequence
        /// of edits (valid or not), re-creations (with or without the old
        /// object's deletion seen), deletes, and changes made while the
        /// agent was away (several per outage, seen only through the next
        /// relist), each object has one entry for its current version; a
        /// valid version is in force as a fresh check gives it; an invalid
        /// one is reported with its version and keeps the last valid
        /// version of the same uid the table saw, or nothing.
        #[test]
        fn the_table_is_what_the_objects_and_their_last_valid_versions_say(
            steps in proptest::collection::vec(
                (0usize..4,
                 proptest::option::of((proptest::bool::ANY, 0u8..3, proptest::bool::weighted(0.2), proptest::bool::ANY)),
                 proptest::bool::weighted(0.3), proptest::bool::weighted(0.2)),
                1..40,
            ),
        ) {
            let mut table = table();
            let mut cluster: BTreeMap<usize, Object> = BTreeMap::new();
            let mut seen: BTreeMap<usize, Seen> = BTreeMap::new();
            let (mut version, mut uids) = (0u64, 0u64);
            let as_object = |slot: usize, o: &Object| version_of(slot, &o.uid, o.version, o.valid, o.variant);
            // Back from an outage: the cluster as it is now.
            let relisted = |table: &mut PolicyTable, cluster: &BTreeMap<usize, Object>, seen: &BTreeMap<usize, Seen>| {
                table.start_relist();
                for (slot, o) in cluster {
                    table.relist_apply(&as_object(*slot, o));
                }
                table.finish_relist();
                cluster.iter().map(|(slot, o)| (*slot, see(o, seen.get(slot)))).collect()
            };
            // Changes made while away, not seen yet: a watch sees nothing
            // more before its relist.
            let mut unseen = false;
            for (slot, change, away, relist) in steps {
                version += 1;
                if unseen && !away {
                    seen = relisted(&mut table, &cluster, &seen);
                    unseen = false;
                }
                unseen |= away;
                match change {
                    Some((valid, variant, recreate, deletion_seen)) => {
                        let same = cluster.get(&slot).filter(|_| !recreate).map(|o| o.uid.clone());
                        let uid = same.clone().unwrap_or_else(|| { uids += 1; format!("u{uids}") });
                        let o = Object { uid, version, valid, variant };
                        if !away {
                            if let (None, Some(old), true) = (&same, cluster.get(&slot), deletion_seen) {
                                table.delete(&as_object(slot, old));
                                seen.remove(&slot);
                            }
                            table.apply(&as_object(slot, &o));
                            let s = see(&o, seen.get(&slot));
                            seen.insert(slot, s);
                        }
                        cluster.insert(slot, o);
                    }
                    None => {
                        if let Some(old) = cluster.remove(&slot) {
                            if !away {
                                table.delete(&as_object(slot, &old));
                                seen.remove(&slot);
                            }
                        }
                    }
                }
                if relist {
                    seen = relisted(&mut table, &cluster, &seen);
                    unseen = false;
                }
                let objects: Vec<_> = table.objects().cloned().collect();
                proptest::prop_assert_eq!(objects.len(), seen.len());
                for (o, (slot, s)) in objects.iter().zip(&seen) {
                    proptest::prop_assert_eq!(&o.uid, &s.object.uid, "p{}", slot);
                    proptest::prop_assert_eq!(o.invalid.is_some(), !s.object.valid, "p{}", slot);
                    let expected = s.last_good.map(|v| {
                        let fresh = PolicyTable::listed(
                            POLICY_KINDS[0].0,
                            policy_resource(POLICY_KINDS[0].0, POLICY_KINDS[0].1),
                            [version_of(*slot, &s.object.uid, 1, true, v)],
                        );
                        policy(&only(&fresh)).clone()
                    });
                    let in_force = o.in_force.as_ref().map(|_| policy(o).clone());
                    proptest::prop_assert_eq!(&in_force, &expected, "p{}", slot);
                    if let Some(invalid) = &o.invalid {
                        proptest::prop_assert_eq!(invalid.kept_last_good, expected.is_some());
                        let reported = s.object.version.to_string();
                        proptest::prop_assert_eq!(
                            invalid.reference.resource_version.as_deref(),
                            Some(reported.as_str())
                        );
                    }
                }
            }
        }
    }

    /// An object without a version (never from the API server) is checked
    /// every time: an edit could not be told apart from the last version.
    #[test]
    fn an_object_without_a_version_is_checked_again() {
        let mut table = table();
        table.apply(&cnp("u1", "", "toFQDNs"));
        let valid = only(&table);
        table.apply(&cnp("u1", "", "toFQDN"));
        let edited = only(&table);
        assert!(edited.invalid.is_some());
        assert!(
            Arc::ptr_eq(policy(&edited), policy(&valid)),
            "the last valid version stays"
        );
    }

    /// One entry a name: an object re-created without its predecessor's
    /// deletion seen replaces it (inheriting nothing), and a late deletion
    /// of the predecessor leaves the new object alone.
    #[test]
    fn a_recreated_object_replaces_its_predecessor_even_unannounced() {
        let mut table = table();
        table.apply(&cnp("u1", "1", "toFQDNs"));
        table.apply(&cnp("u2", "2", "toFQDN"));
        let recreated = only(&table);
        assert!(recreated.in_force.is_none(), "nothing inherited");
        table.delete(&cnp("u1", "1", "toFQDNs"));
        assert!(Arc::ptr_eq(&only(&table), &recreated));
        table.delete(&cnp("u2", "2", "toFQDN"));
        assert_eq!(table.objects().count(), 0);
        // Without uids, the name decides.
        table.apply(&cnp("", "3", "toFQDNs"));
        table.delete(&cnp("u3", "3", "toFQDNs"));
        assert_eq!(table.objects().count(), 0);
        table.apply(&cnp("u4", "4", "toFQDNs"));
        table.delete(&cnp("", "4", "toFQDNs"));
        assert_eq!(table.objects().count(), 0);
    }
}
