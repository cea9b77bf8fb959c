//! The throttle on failed logins: by (user, source) and by source, never by user alone, so
//! that nobody can lock an owner out from elsewhere. A source is an IPv4 address or an IPv6
//! /64 (what one host or one site holds). Each attempt counts before its password is checked;
//! a right password takes its count back. The table is bounded: entries quiet for
//! [`MAX_LOCKOUT`] go, and when full the quietest entry makes room.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures of one (user, source) allowed before the throttle starts.
pub const PAIR_FREE: u32 = 5;
/// Failures of one source (any user names) allowed before the throttle starts: more, since
/// several people may share one address.
pub const SOURCE_FREE: u32 = 20;
/// Longest wait the throttle imposes; also how long a quiet entry is kept.
pub const MAX_LOCKOUT: Duration = Duration::from_mins(15);
/// Entries kept at most.
pub const CAPACITY: usize = 20_000;

/// Whom a count is of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A user name (checked: at most 32 characters) from a source.
    Pair(String, String),
    /// A source.
    Source(String),
}

/// Failed logins in a row.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    until: Option<Instant>,
    last: Instant,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<Key, Failures>>,
}

/// The source a remote address counts as: IPv4 (also IPv4-mapped IPv6) as it is, IPv6 by /64.
pub fn source_of(from: &str) -> String {
    match from.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or_else(
            || {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            },
            |v4| v4.to_string(),
        ),
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => from.to_owned(),
    }
}

/// The wait after `count` failures in a row of which `free` are allowed.
pub fn lockout(count: u32, free: u32) -> Option<Duration> {
    let over = count.checked_sub(free)?;
    Some(Duration::from_secs(1u64 << over.min(20)).min(MAX_LOCKOUT))
}

impl Throttle {
    fn keys(user: Option<&str>, from: &str) -> (Option<Key>, Key) {
        let source = source_of(from);
        (user.map(|u| Key::Pair(u.to_owned(), source.clone())), Key::Source(source))
    }

    /// How long a login of `user` (a valid name, or `None`) from `from` must wait, if at all.
    pub fn wait(&self, user: Option<&str>, from: &str, now: Instant) -> Option<Duration> {
        let (pair, source) = Self::keys(user, from);
        let entries = self.entries.lock().expect("lock");
        [pair, Some(source)]
            .into_iter()
            .flatten()
            .filter_map(|k| entries.get(&k)?.until)
            .filter(|u| *u > now)
            .max()
            .map(|u| u - now)
    }

    /// Counts an attempt as failed (before it is checked: [`Self::succeeded`] takes it back).
    pub fn failed(&self, user: Option<&str>, from: &str, now: Instant) {
        let (pair, source) = Self::keys(user, from);
        let mut entries = self.entries.lock().expect("lock");
        for (key, free) in [(pair, PAIR_FREE), (Some(source), SOURCE_FREE)] {
            let Some(key) = key else { continue };
            if !entries.contains_key(&key) && entries.len() >= CAPACITY {
                make_room(&mut entries, now);
            }
            let e = entries.entry(key).or_insert(Failures { count: 0, until: None, last: now });
            // A count ends after a quiet spell as long as the longest wait.
            if now.duration_since(e.last) > MAX_LOCKOUT {
                e.count = 0;
            }
            e.count += 1;
            e.last = now;
            e.until = lockout(e.count, free).map(|d| now + d);
        }
    }

    /// A right password: the pair's count ends, and the source's loses this attempt.
    pub fn succeeded(&self, user: &str, from: &str) {
        let (pair, source) = Self::keys(Some(user), from);
        let mut entries = self.entries.lock().expect("lock");
        if let Some(pair) = pair {
            entries.remove(&pair);
        }
        if let Some(e) = entries.get_mut(&source) {
            e.count = e.count.saturating_sub(1);
            e.until = lockout(e.count, SOURCE_FREE).map(|d| e.last + d);
            if e.count == 0 {
                entries.remove(&source);
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }
}

/// Drops the entries quiet for [`MAX_LOCKOUT`]; if none is, the quietest one.
fn make_room(entries: &mut HashMap<Key, Failures>, now: Instant) {
    entries.retain(|_, e| now.duration_since(e.last) <= MAX_LOCKOUT);
    if entries.len() >= CAPACITY
        && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
    {
        entries.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(source_of("192.0.2.7"), "192.0.2.7");
        assert_eq!(source_of("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(source_of("2001:db8:1:2:aaaa::1"), source_of("2001:db8:1:2::99"));
        assert_eq!(source_of("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(source_of("2001:db8:1:2::1"), source_of("2001:db8:1:3::1"));
    }

    #[test]
    fn failures_lock_the_pair_and_the_source_never_the_user_elsewhere() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(Some("admin"), "192.0.2.1", now);
        }
        assert!(t.wait(Some("admin"), "192.0.2.1", now).is_some(), "the pair waits");
        assert_eq!(t.wait(Some("admin"), "192.0.2.2", now), None, "the owner elsewhere does not");
        assert_eq!(t.wait(Some("other"), "192.0.2.1", now), None, "10 < the source's free 20");
        for i in 0..20 {
            t.failed(Some(&format!("u{i}")), "2001:db8::1", now);
        }
        assert!(t.wait(Some("fresh"), "2001:db8::ffff", now).is_some(), "a spraying /64 waits");
        assert_eq!(t.wait(Some("fresh"), "2001:db8:0:1::1", now), None);
        // A right password ends the pair's count.
        t.failed(Some("ops"), "192.0.2.9", now);
        t.succeeded("ops", "192.0.2.9");
        assert_eq!(t.len(), 1 + 20 + 2, "the /64, its 20 pairs, admin's pair and source");
        // A quiet spell ends a count.
        let later = now + MAX_LOCKOUT + Duration::from_secs(1);
        t.failed(Some("admin"), "192.0.2.1", later);
        assert_eq!(t.wait(Some("admin"), "192.0.2.1", later), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..(CAPACITY + 500) {
            let from = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            t.failed(None, &from, now + Duration::from_micros(i as u64));
        }
        assert!(t.len() <= CAPACITY, "{}", t.len());
    }

    #[test]
    fn the_wait_grows_to_a_cap() {
        assert_eq!(lockout(PAIR_FREE - 1, PAIR_FREE), None);
        assert_eq!(lockout(PAIR_FREE, PAIR_FREE), Some(Duration::from_secs(1)));
        assert_eq!(lockout(PAIR_FREE + 3, PAIR_FREE), Some(Duration::from_secs(8)));
        assert_eq!(lockout(PAIR_FREE + 40, PAIR_FREE), Some(MAX_LOCKOUT));
    }
}
