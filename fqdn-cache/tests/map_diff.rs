//! The diff vocabulary the cache hands the datapath: what a diff holds,
//! how many writes it is, and that applying it reaches the target state.
//! (The datapath crate relies on these; mutation testing found them
//! unpinned in this crate's own tests — see TESTING.md.)

use std::collections::BTreeMap;

use fqdn_cache::MapDiff;

fn map(entries: &[(u32, &'static str)]) -> BTreeMap<u32, &'static str> {
    entries.iter().copied().collect()
}

#[test]
fn a_diff_is_empty_only_without_puts_and_deletes_and_counts_both() {
    let none: MapDiff<u32, &str> = MapDiff::default();
    assert!(none.is_empty());
    assert_eq!(none.len(), 0);
    let put_only = MapDiff::between(&map(&[]), &map(&[(1, "a"), (2, "b")]));
    assert!(!put_only.is_empty());
    assert_eq!(put_only.len(), 2);
    let del_only = MapDiff::between(&map(&[(1, "a")]), &map(&[]));
    assert!(!del_only.is_empty());
    assert_eq!(del_only.len(), 1);
    let both = MapDiff::between(&map(&[(1, "a"), (3, "c")]), &map(&[(2, "b"), (3, "C")]));
    assert_eq!(both.put, vec![(2, "b"), (3, "C")]);
    assert_eq!(both.del, vec![1]);
    assert_eq!(both.len(), 3, "two puts and a delete");
    assert!(MapDiff::between(&map(&[(1, "a")]), &map(&[(1, "a")])).is_empty());
}

#[test]
fn applying_a_diff_reaches_the_target_and_extend_adds_writes() {
    let old = map(&[(1, "a"), (3, "c")]);
    let new = map(&[(2, "b"), (3, "C")]);
    let mut m = old.clone();
    MapDiff::between(&old, &new).apply_to(&mut m);
    assert_eq!(m, new);
    let mut d = MapDiff::between(&map(&[]), &map(&[(1, "a")]));
    d.extend(MapDiff::between(&map(&[(9, "z")]), &map(&[])));
    assert_eq!(d.len(), 2);
    let mut m = map(&[(9, "z")]);
    d.apply_to(&mut m);
    assert_eq!(m, map(&[(1, "a")]));
}

#[test]
fn rekeying_a_diff_keeps_its_writes_and_drops_unmapped_keys() {
    let d = MapDiff::between(&map(&[(1, "a"), (4, "d")]), &map(&[(2, "b"), (3, "c")]));
    // Odd keys have no new key (e.g. an endpoint without a local interface).
    let rekeyed = d.map_keys(|k| (k % 2 == 0).then_some(k * 10));
    assert_eq!(rekeyed.put, vec![(20, "b")]);
    assert_eq!(rekeyed.del, vec![40]);
}
