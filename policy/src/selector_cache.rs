//! Which identities each peer selector selects, kept between resolutions.
//!
//! Resolving a rule's `toEndpoints`/`fromEndpoints` means testing its
//! selector against every identity of the cluster: tens of thousands on a
//! large one, for every rule that applies to a local pod, on every change.
//! The cache keeps each selector's answer and, when the identities change,
//! tests only the identities that appeared or changed (Cilium's
//! SelectorCache does the same, pkg/policy/selectorcache.go). A selector no
//! resolution asked for in the last round is forgotten.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::identity::Identity;
use crate::labels::{Labels, Selector};

/// Selections by (selector, whether it selects reserved identities).
#[derive(Debug, Default)]
pub struct SelectorCache {
    /// The identities the entries are up to date with.
    identities: BTreeMap<Identity, Arc<Labels>>,
    entries: HashMap<(Selector, bool), Entry>,
    round: u64,
}

#[derive(Debug)]
struct Entry {
    selected: BTreeSet<Identity>,
    /// The last round that asked for it.
    used: u64,
}

impl SelectorCache {
    /// Starts a resolution against `identities`: entries nobody asked for
    /// last round go, and the others are brought up to date by testing
    /// only the identities added or relabelled since.
    pub(crate) fn sync(&mut self, identities: &BTreeMap<Identity, Arc<Labels>>) {
        let round = self.round;
        self.entries.retain(|_, e| e.used >= round);
        self.round += 1;
        if self.entries.is_empty() {
            self.identities = identities.clone();
            return;
        }
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for (id, labels) in &self.identities {
            match identities.get(id) {
                Some(now) if Arc::ptr_eq(now, labels) || now == labels => {}
                Some(_) => {
                    removed.push(*id);
                    added.push(*id);
                }
                None => removed.push(*id),
            }
        }
        added.extend(
            identities
                .keys()
                .filter(|id| !self.identities.contains_key(id)),
        );
        if !removed.is_empty() || !added.is_empty() {
            for ((sel, reserved), entry) in &mut self.entries {
                for id in &removed {
                    entry.selected.remove(id);
                }
                for id in &added {
                    if selects(sel, *reserved, *id, &identities[id]) {
                        entry.selected.insert(*id);
                    }
                }
            }
        }
        self.identities = identities.clone();
    }

    /// The identities `sel` selects among those of the last [`sync`]: pod
    /// identities, or reserved ones if `reserved` (a `reserved:` key).
    ///
    /// [`sync`]: SelectorCache::sync
    pub(crate) fn select(&mut self, sel: &Selector, reserved: bool) -> &BTreeSet<Identity> {
        let round = self.round;
        let identities = &self.identities;
        let entry = self
            .entries
            .entry((sel.clone(), reserved))
            .or_insert_with(|| Entry {
                selected: identities
                    .iter()
                    .filter(|(id, labels)| selects(sel, reserved, **id, labels))
                    .map(|(id, _)| *id)
                    .collect(),
                used: round,
            });
        entry.used = round;
        &entry.selected
    }
}

fn selects(sel: &Selector, reserved: bool, id: Identity, labels: &Labels) -> bool {
    id.is_reserved() == reserved && sel.matches(labels)
}
