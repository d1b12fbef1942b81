//! The per-IP table of the ban list, with O(1) eviction of the record the
//! policy names.
//!
//! # Eviction
//! Records without a ban are kept in an [`lru::LruCache`] (the crate the
//! score book and dedup use) in the order of their last violation, so the
//! one to evict first, the oldest violation without a ban, is its oldest
//! entry: O(1). Records with a ban (in force, or expired and not yet
//! pruned) are kept apart, in a map, with their timed bans indexed by end
//! in a `BTreeSet`: the ban that ends first is its first element, in
//! O(log n) (about 14 comparisons at 10,000 bans), and is only ever looked
//! for when no record without a ban is left. Permanent bans are not
//! indexed, so they are never evicted.
//!
//! A record whose ban expired (seen at prune) goes back among the records
//! without a ban at the newest end, so a repeat offender's count is among
//! the last things forgotten; after an operator's unban, which clears the
//! count, the record goes to the oldest end ([`Records::put_oldest`]).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use super::{BanUntil, IpRecord};

/// The per-IP records, bounded by the caller (see the module docs).
///
/// Every record is in exactly one of `clean` and `banned`; `ends` holds
/// `(end, key)` for exactly the timed bans in `banned`. Maps are keyed with
/// the standard library's randomly seeded SipHash: the keys are addresses
/// peers choose.
#[derive(Debug)]
pub(super) struct Records {
    /// Records without a ban, oldest violation first.
    clean: LruCache<IpAddr, IpRecord, RandomState>,
    /// Records with a ban, in force or expired and not yet pruned.
    banned: HashMap<IpAddr, IpRecord>,
    /// The timed bans of `banned`, by end.
    ends: BTreeSet<(Instant, IpAddr)>,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            clean: LruCache::unbounded_with_hasher(RandomState::new()),
            banned: HashMap::new(),
            ends: BTreeSet::new(),
        }
    }
}

impl Records {
    /// The record of `key`.
    pub(super) fn get(&self, key: &IpAddr) -> Option<&IpRecord> {
        self.banned.get(key).or_else(|| self.clean.peek(key))
    }

    /// True when `key` has a record.
    pub(super) fn contains_key(&self, key: &IpAddr) -> bool {
        self.banned.contains_key(key) || self.clean.contains(key)
    }

    /// Records held.
    pub(super) fn len(&self) -> usize {
        self.clean.len() + self.banned.len()
    }

    /// The records holding a ban (in force or expired, not yet pruned).
    pub(super) fn bans(&self) -> impl Iterator<Item = (&IpAddr, &IpRecord)> {
        self.banned.iter()
    }

    /// Takes the record of `key` out, to be changed and [put](Self::put)
    /// back.
    pub(super) fn take(&mut self, key: &IpAddr) -> Option<IpRecord> {
        if let Some(record) = self.banned.remove(key) {
            if let Some((BanUntil::Until(end), _)) = record.ban {
                self.ends.remove(&(end, *key));
            }
            return Some(record);
        }
        self.clean.pop(key)
    }

    /// Stores `record` (whose key has none): with the bans if it holds
    /// one, else as the newest record without a ban.
    pub(super) fn put(&mut self, key: IpAddr, record: IpRecord) {
        match record.ban {
            Some((until, _)) => {
                if let BanUntil::Until(end) = until {
                    self.ends.insert((end, key));
                }
                self.banned.insert(key, record);
            }
            None => {
                self.clean.push(key, record);
            }
        }
    }

    /// Stores `record` (no ban; its key has no record) as the first to be
    /// evicted.
    pub(super) fn put_oldest(&mut self, key: IpAddr, record: IpRecord) {
        self.put(key, record);
        self.clean.demote(&key);
    }

    /// Removes the record to evict first that holds no ban in force: the
    /// oldest violation without a ban, else a ban that has already ended.
    /// O(1) unless only bans are left (then O(log n)).
    pub(super) fn evict_unbanned(&mut self, now: Instant) -> Option<(IpAddr, IpRecord)> {
        if let Some(victim) = self.clean.pop_lru() {
            return Some(victim);
        }
        let &(end, key) = self.ends.first()?;
        if end > now {
            return None;
        }
        self.take(&key).map(|record| (key, record))
    }

    /// Removes the record to evict first: as
    /// [`evict_unbanned`](Self::evict_unbanned), else the ban that ends
    /// first; never a permanent ban.
    pub(super) fn evict(&mut self, now: Instant) -> Option<(IpAddr, IpRecord)> {
        if let Some(victim) = self.evict_unbanned(now) {
            return Some(victim);
        }
        let &(_, key) = self.ends.first()?;
        self.take(&key).map(|record| (key, record))
    }

    /// Ends the bans that expired by `now` and drops the records without a
    /// ban whose last violation is `decay` old; returns the keys whose ban
    /// ended. A walk over the table, run on the node's timer.
    pub(super) fn prune(&mut self, now: Instant, decay: Duration) -> Vec<IpAddr> {
        let mut ended = Vec::new();
        while let Some(&(end, key)) = self.ends.first() {
            if end > now {
                break;
            }
            self.ends.pop_first();
            if let Some(mut record) = self.take(&key) {
                record.ban = None;
                ended.push(key);
                self.put(key, record);
            }
        }
        self.clean
            .retain(|_, r| now.saturating_duration_since(r.last_violation) < decay);
        ended
    }

    /// Removes every record.
    pub(super) fn clear(&mut self) {
        self.clean.clear();
        self.banned.clear();
        self.ends.clear();
    }
}
