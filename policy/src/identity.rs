//! Numeric security identities: one per distinct label set, plus Cilium's
//! reserved ones.
//!
//! Allocation is a pure function of the *set* of label sets: each set's
//! number is derived from a hash of its canonical text, with collisions
//! resolved in sorted order. The same pods therefore get the same numbers on
//! every node and after every restart, without a shared allocator.

use std::collections::BTreeMap;
use std::fmt;

use crate::labels::Labels;
use crate::model::Entity;

/// A security identity as the datapath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identity(pub u32);

impl Identity {
    pub const UNKNOWN: Identity = Identity(0);
    pub const HOST: Identity = Identity(1);
    pub const WORLD: Identity = Identity(2);
    pub const UNMANAGED: Identity = Identity(3);
    pub const HEALTH: Identity = Identity(4);
    pub const INIT: Identity = Identity(5);
    pub const REMOTE_NODE: Identity = Identity(6);
    pub const KUBE_APISERVER: Identity = Identity(7);
    pub const INGRESS: Identity = Identity(8);
    /// First identity handed to label sets.
    pub const FIRST_ALLOCATED: u32 = 256;
    /// Allocated identities stay below this (24 bits, like Cilium's).
    pub const LIMIT: u32 = 1 << 24;

    /// The reserved identities, with the `reserved:` label that selects each.
    pub const RESERVED: [(Identity, &'static str); 8] = [
        (Self::HOST, "host"),
        (Self::WORLD, "world"),
        (Self::UNMANAGED, "unmanaged"),
        (Self::HEALTH, "health"),
        (Self::INIT, "init"),
        (Self::REMOTE_NODE, "remote-node"),
        (Self::KUBE_APISERVER, "kube-apiserver"),
        (Self::INGRESS, "ingress"),
    ];

    pub fn is_reserved(self) -> bool {
        self.0 < Self::FIRST_ALLOCATED
    }

    /// The labels a reserved identity carries (`reserved:host=`), so that
    /// endpoint selectors written with a `reserved:` key can select it.
    pub fn reserved_labels(self) -> Option<Labels> {
        Self::RESERVED
            .iter()
            .find(|(id, _)| *id == self)
            .map(|(_, name)| {
                [(format!("reserved:{name}"), String::new())]
                    .into_iter()
                    .collect()
            })
    }

    /// Whether `entity` covers this identity. `world-ipv4`/`world-ipv6` also
    /// need the peer's address family, given by `ipv4`.
    pub fn in_entity(self, entity: Entity, ipv4: Option<bool>) -> bool {
        match entity {
            Entity::All => true,
            Entity::None => false,
            Entity::World => self == Self::WORLD,
            Entity::WorldIpv4 => self == Self::WORLD && ipv4 == Some(true),
            Entity::WorldIpv6 => self == Self::WORLD && ipv4 == Some(false),
            Entity::Cluster => self != Self::WORLD && self != Self::UNKNOWN,
            Entity::Host => self == Self::HOST,
            Entity::RemoteNode => self == Self::REMOTE_NODE,
            Entity::KubeApiserver => self == Self::KUBE_APISERVER,
            Entity::Health => self == Self::HEALTH,
            Entity::Init => self == Self::INIT,
            Entity::Unmanaged => self == Self::UNMANAGED,
            Entity::Ingress => self == Self::INGRESS,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::RESERVED.iter().find(|(id, _)| id == self) {
            Some((_, name)) => write!(f, "{}(reserved:{name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Assigns identities to label sets; see the module docs for why it is a
/// pure function of the whole set.
pub fn allocate<'a>(
    label_sets: impl IntoIterator<Item = &'a Labels>,
) -> BTreeMap<Labels, Identity> {
    let sets: Vec<(String, &Labels)> = label_sets.into_iter().map(|l| (l.canonical(), l)).collect();
    let ids = allocate_canonical(sets.iter().map(|(text, _)| text.as_str()));
    sets.iter()
        .map(|(text, labels)| ((*labels).clone(), ids[text.as_str()]))
        .collect()
}

/// [`allocate`] for label sets given by their canonical text
/// ([`Labels::canonical`]), for a caller that keeps the text rather than
/// making it again each time.
pub fn allocate_canonical<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> std::collections::HashMap<&'a str, Identity> {
    let mut canonical: Vec<&str> = texts.into_iter().collect();
    canonical.sort_unstable();
    canonical.dedup();
    let span = u64::from(Identity::LIMIT - Identity::FIRST_ALLOCATED);
    let mut taken = std::collections::HashSet::with_capacity(canonical.len());
    let mut out = std::collections::HashMap::with_capacity(canonical.len());
    for text in canonical {
        let mut slot = fnv1a(text.as_bytes()) % span;
        while !taken.insert(slot) {
            slot = (slot + 1) % span;
        }
        out.insert(text, Identity(Identity::FIRST_ALLOCATED + slot as u32));
    }
    out
}

/// FNV-1a, 64 bit: tiny, stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn identities_are_stable_and_distinct() {
        let a = labels(&[("app", "web")]);
        let b = labels(&[("app", "db")]);
        let c = labels(&[("app", "cache")]);
        let one = allocate([&a, &b]);
        let two = allocate([&c, &b, &a, &a]);
        assert_eq!(
            one[&a], two[&a],
            "adding a label set must not renumber others here"
        );
        assert_eq!(one[&b], two[&b]);
        assert_ne!(two[&a], two[&b]);
        assert!(two
            .values()
            .all(|id| !id.is_reserved() && id.0 < Identity::LIMIT));
    }
}
