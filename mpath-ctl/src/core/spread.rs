//! Consistent assignment of a group's spreading buckets to its usable NICs.
//!
//! When a NIC leaves, only its buckets move (to the NICs with the fewest); when one joins, it
//! takes buckets from the NICs with the most. Flows hashing to untouched buckets stay on their
//! NIC, so a failover reorders nothing that did not have to move.

use std::collections::BTreeMap;

use mpath_common::BUCKETS_PER_GROUP;

/// A group's table: the ifindex owning each bucket, 0 for "no NIC".
pub type Table = [u32; BUCKETS_PER_GROUP as usize];

/// Returns the table for the `usable` NICs that keeps as many buckets of `current` in place as
/// an even spread allows. Shares differ by at most one bucket. Deterministic: the same inputs
/// give the same table. With no usable NIC the table is empty, and the kernel's own route
/// choice stands.
pub fn rebalance(current: &Table, usable: &[u32]) -> Table {
    let mut table = [0u32; BUCKETS_PER_GROUP as usize];
    let mut owners: Vec<u32> = usable.iter().copied().filter(|&i| i != 0).collect();
    owners.sort_unstable();
    owners.dedup();
    if owners.is_empty() {
        return table;
    }

    // Buckets each usable NIC holds now, in bucket order.
    let mut held: BTreeMap<u32, Vec<usize>> = owners.iter().map(|&i| (i, Vec::new())).collect();
    for (bucket, owner) in current.iter().enumerate() {
        if let Some(list) = held.get_mut(owner) {
            list.push(bucket);
        }
    }

    // Quotas: everyone gets the floor; the remainder goes to the NICs holding the most now
    // (ties to the lower ifindex), which minimises moves.
    let base = BUCKETS_PER_GROUP as usize / owners.len();
    let extra = BUCKETS_PER_GROUP as usize % owners.len();
    let mut by_holding = owners.clone();
    by_holding.sort_by_key(|i| (std::cmp::Reverse(held[i].len()), *i));
    let quota: BTreeMap<u32, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, &i)| (i, base + usize::from(rank < extra)))
        .collect();

    // Keep each NIC's first `quota` buckets; everything else is free.
    for (&nic, buckets) in &held {
        for &bucket in buckets.iter().take(quota[&nic]) {
            table[bucket] = nic;
        }
    }
    let free: Vec<usize> = (0..table.len()).filter(|&b| table[b] == 0).collect();
    let mut free = free.into_iter();
    for &nic in &owners {
        let missing = quota[&nic] - held[&nic].len().min(quota[&nic]);
        for bucket in free.by_ref().take(missing) {
            table[bucket] = nic;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(table: &Table) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for &i in table {
            *m.entry(i).or_default() += 1;
        }
        m
    }

    fn moved(a: &Table, b: &Table) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn fills_evenly_from_empty() {
        for n in 1..=7u32 {
            let nics: Vec<u32> = (1..=n).collect();
            let t = rebalance(&[0; 256], &nics);
            let s = shares(&t);
            assert_eq!(s.len(), n as usize, "every NIC gets buckets, none empty");
            let (min, max) = (s.values().min().unwrap(), s.values().max().unwrap());
            assert!(max - min <= 1, "{n} NICs: shares {s:?}");
        }
    }

    #[test]
    fn leaving_nic_moves_only_its_buckets() {
        let t4 = rebalance(&[0; 256], &[10, 11, 12, 13]);
        let t3 = rebalance(&t4, &[10, 11, 13]);
        for (b, (&before, &after)) in t4.iter().zip(&t3).enumerate() {
            if before != 12 {
                assert_eq!(before, after, "bucket {b} moved although its NIC stayed");
            } else {
                assert_ne!(after, 12);
            }
        }
        let s = shares(&t3);
        assert!(s.values().max().unwrap() - s.values().min().unwrap() <= 1);
    }

    #[test]
    fn joining_nic_takes_only_its_share() {
        let t2 = rebalance(&[0; 256], &[10, 11]);
        let t3 = rebalance(&t2, &[10, 11, 12]);
        let s = shares(&t3);
        assert!(s[&12] == 85 || s[&12] == 86, "{s:?}");
        assert_eq!(
            moved(&t2, &t3),
            s[&12],
            "only buckets given to the new NIC move"
        );
        for (a, b) in t2.iter().zip(&t3) {
            assert!(a == b || *b == 12);
        }
    }

    #[test]
    fn fail_and_repair_round_trip_restores_shares() {
        let t = rebalance(&[0; 256], &[1, 2]);
        let failed = rebalance(&t, &[2]);
        assert!(failed.iter().all(|&i| i == 2));
        let repaired = rebalance(&failed, &[1, 2]);
        assert_eq!(shares(&repaired)[&1], 128);
        assert_eq!(moved(&failed, &repaired), 128);
    }

    #[test]
    fn no_usable_nic_empties_the_table() {
        let t = rebalance(&[0; 256], &[1, 2]);
        assert!(rebalance(&t, &[]).iter().all(|&i| i == 0));
    }

    #[test]
    fn stable_when_nothing_changes_and_deterministic() {
        let t = rebalance(&[0; 256], &[3, 1, 2]);
        assert_eq!(rebalance(&t, &[1, 2, 3]), t);
        assert_eq!(
            rebalance(&[0; 256], &[1, 2, 3, 3]),
            t,
            "order and duplicates do not matter"
        );
    }
}
