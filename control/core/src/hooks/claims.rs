//! Rules several plugins hold on overlapping prefixes, and the one entry the dataplane gets for
//! each prefix. Within one plugin the longest match decides; across plugins the strictest
//! verdict does: for each prefix any plugin holds, the entry written carries the strictest of
//! every plugin's own longest match for it. A plugin's more specific `count` so never undoes
//! another's `drop`, and two plugins may hold the same prefix (the stricter rule is in force;
//! removing one leaves the other's).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_common::Counter;

use super::{Action, Direction};

/// A rule's key: a prefix, and what else tells tables apart.
pub(super) trait PrefixKey: Ord + Copy {
    fn net(&self) -> IpNet;
    fn with_net(&self, net: IpNet) -> Self;
}

impl PrefixKey for IpNet {
    fn net(&self) -> IpNet {
        *self
    }
    fn with_net(&self, net: IpNet) -> Self {
        net
    }
}

impl PrefixKey for (Direction, IpNet) {
    fn net(&self) -> IpNet {
        self.1
    }
    fn with_net(&self, net: IpNet) -> Self {
        (self.0, net)
    }
}

/// Verdicts ordered by how much they hold back.
pub(super) trait Strictness: Clone + PartialEq {
    /// The stricter of two verdicts (both when they are not ordered: a rate rule's smaller rate
    /// and smaller burst).
    fn stricter(&self, other: &Self) -> Self;
}

impl Action {
    /// How much the action holds a packet back: `drop` over `pass` (to the kernel, whose own
    /// rules then apply) over `count` (forwarded as usual).
    pub const fn strictness(self) -> u8 {
        match self {
            Self::Drop => 2,
            Self::Pass => 1,
            Self::Count => 0,
        }
    }
}

impl Strictness for Action {
    fn stricter(&self, other: &Self) -> Self {
        if other.strictness() > self.strictness() { *other } else { *self }
    }
}

impl Strictness for (u32, u32) {
    fn stricter(&self, other: &Self) -> Self {
        (self.0.min(other.0), self.1.min(other.1))
    }
}

/// An entry written for a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry<V> {
    /// The merged verdict.
    pub(super) value: V,
    /// Its rule id: its counter's slot.
    pub(super) rule: u32,
    /// What the ids the entry had before `rule` counted: its counts are this plus `rule`'s
    /// counter, so they never go down while the entry exists.
    pub(super) base: Counter,
}

impl<V> Entry<V> {
    /// An entry's counts, given its id's counter.
    pub(super) fn counts(&self, counter: Counter) -> Counter {
        Counter {
            packets: self.base.packets.saturating_add(counter.packets),
            bytes: self.base.bytes.saturating_add(counter.bytes),
        }
    }
}

/// What each plugin asked for in one table, and what the table holds.
#[derive(Debug)]
pub(super) struct Claims<K, V> {
    asked: BTreeMap<K, BTreeMap<String, V>>,
    /// How many keys of `asked` have each prefix length: [`Self::merged`] looks up those only.
    lengths: [usize; 129],
    /// The entries written.
    pub(super) written: BTreeMap<K, Entry<V>>,
}

impl<K: PrefixKey, V: Strictness> Claims<K, V> {
    pub(super) fn new() -> Self {
        Self { asked: BTreeMap::new(), lengths: [0; 129], written: BTreeMap::new() }
    }

    /// `owner`'s rule on `key`.
    pub(super) fn get(&self, key: &K, owner: &str) -> Option<&V> {
        self.asked.get(key)?.get(owner)
    }

    /// Sets (or with `None` removes) `owner`'s rule on `key`; returns the one it had.
    pub(super) fn set(&mut self, key: K, owner: &str, value: Option<V>) -> Option<V> {
        let len = usize::from(key.net().prefix_len());
        let owners = match self.asked.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                self.lengths[len] += 1;
                e.insert(BTreeMap::new())
            }
        };
        let old = match value {
            Some(v) => owners.insert(owner.to_owned(), v),
            None => owners.remove(owner),
        };
        if owners.is_empty() {
            self.asked.remove(&key);
            self.lengths[len] -= 1;
        }
        old
    }

    /// The rules `owner` holds.
    pub(super) fn owned_by<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = (&'a K, &'a V)> {
        self.asked.iter().filter_map(move |(k, owners)| owners.get(owner).map(|v| (k, v)))
    }

    /// How many rules `owner` holds.
    pub(super) fn count(&self, owner: &str) -> usize {
        self.owned_by(owner).count()
    }

    /// Every rule: key, owner, verdict.
    pub(super) fn all(&self) -> impl Iterator<Item = (&K, &str, &V)> {
        self.asked
            .iter()
            .flat_map(|(k, owners)| owners.iter().map(move |(o, v)| (k, o.as_str(), v)))
    }

    /// The entry `key` should have: `None` when no plugin holds it, else the strictest of each
    /// plugin's longest match for it.
    pub(super) fn merged(&self, key: &K) -> Option<V> {
        if !self.asked.contains_key(key) {
            return None;
        }
        let net = key.net();
        let mut seen = BTreeSet::new();
        let mut out: Option<V> = None;
        for len in (0..=net.prefix_len()).rev() {
            if self.lengths[usize::from(len)] == 0 {
                continue;
            }
            let Ok(q) = IpNet::new(net.addr(), len) else { continue };
            let Some(owners) = self.asked.get(&key.with_net(q.trunc())) else { continue };
            for (owner, v) in owners {
                if seen.insert(owner.as_str()) {
                    out = Some(match out {
                        None => v.clone(),
                        Some(cur) => cur.stricter(v),
                    });
                }
            }
        }
        out
    }

    /// The keys, held or written, whose prefix lies within `key`'s (itself included): those a
    /// change on `key` may change.
    pub(super) fn inside(&self, key: &K) -> Vec<K> {
        let net = key.net();
        let last = match net {
            IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.broadcast(), 32).unwrap_or(n)),
            IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.broadcast(), 128).unwrap_or(n)),
        };
        let (lo, hi) = (key.with_net(net), key.with_net(last));
        let mut out: BTreeSet<K> = BTreeSet::new();
        out.extend(self.asked.range(lo..=hi).map(|(k, _)| *k));
        out.extend(self.written.range(lo..=hi).map(|(k, _)| *k));
        out.into_iter().filter(|k| net.contains(&k.net())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> (Direction, IpNet) {
        (Direction::Src, s.parse().unwrap())
    }

    #[test]
    fn per_plugin_the_longest_match_across_plugins_the_strictest() {
        let mut c: Claims<(Direction, IpNet), Action> = Claims::new();
        c.set(key("10.0.0.0/8"), "a", Some(Action::Drop));
        c.set(key("10.1.0.0/16"), "a", Some(Action::Count));
        c.set(key("10.1.2.3/32"), "b", Some(Action::Count));
        c.set(key("10.9.0.0/16"), "b", Some(Action::Pass));
        // a's own /16 count beats its /8 drop; b's /32 count does not undo anything of a's.
        assert_eq!(c.merged(&key("10.1.0.0/16")), Some(Action::Count));
        assert_eq!(c.merged(&key("10.1.2.3/32")), Some(Action::Count));
        // b's /16 pass lies inside a's /8 drop: drop.
        assert_eq!(c.merged(&key("10.9.0.0/16")), Some(Action::Drop));
        assert_eq!(c.merged(&key("10.0.0.0/8")), Some(Action::Drop));
        assert_eq!(c.merged(&key("10.2.0.0/16")), None, "no entry where nobody holds one");
        // The same prefix from both: the stricter is in force; removing it leaves the other.
        c.set(key("10.1.2.3/32"), "a", Some(Action::Pass));
        assert_eq!(c.merged(&key("10.1.2.3/32")), Some(Action::Pass));
        c.set(key("10.1.2.3/32"), "a", None);
        assert_eq!(c.merged(&key("10.1.2.3/32")), Some(Action::Count));
        assert_eq!(c.count("a"), 2);
        assert_eq!(c.count("b"), 2);
    }

    #[test]
    fn rate_rules_merge_to_the_smaller_rate_and_burst() {
        let mut c: Claims<IpNet, (u32, u32)> = Claims::new();
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        c.set(n("2001:db8::/32"), "a", Some((100, 10)));
        c.set(n("2001:db8:1::/48"), "b", Some((1000, 5)));
        assert_eq!(c.merged(&n("2001:db8:1::/48")), Some((100, 5)));
        assert_eq!(c.merged(&n("2001:db8::/32")), Some((100, 10)));
    }

    #[test]
    fn inside_finds_exactly_the_keys_within_a_prefix() {
        let mut c: Claims<(Direction, IpNet), Action> = Claims::new();
        for (k, d) in [
            ("10.0.0.0/8", Direction::Src),
            ("10.255.255.255/32", Direction::Src),
            ("10.1.0.0/16", Direction::Src),
            ("11.0.0.0/8", Direction::Src),
            ("9.255.0.0/16", Direction::Src),
            ("0.0.0.0/0", Direction::Src),
            ("10.1.0.0/16", Direction::Dst),
            ("::/0", Direction::Src),
        ] {
            c.set((d, k.parse().unwrap()), "a", Some(Action::Drop));
        }
        let got: Vec<String> =
            c.inside(&key("10.0.0.0/8")).iter().map(|k| k.1.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/8", "10.1.0.0/16", "10.255.255.255/32"]);
        assert_eq!(c.inside(&key("0.0.0.0/0")).len(), 6, "every IPv4 source key");
    }
}
