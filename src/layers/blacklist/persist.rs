//! Persistence of the ban list: what is stored, the changes reported to a
//! [`BanSink`], and the restore at start-up.
//!
//! # Correctness
//! Each change is reported while the list's lock is held, so a sink sees
//! the changes in the order they happened, each stating the new stored
//! value of one subnet ([`BanChange::Set`] or [`BanChange::Removed`]): a
//! sink that applies them in order holds exactly what
//! [`Blacklist::persisted`] lists. Every way a ban leaves the list is
//! reported (lifted, expired at [`Blacklist::prune`], evicted to make room),
//! so a stored copy stays as bounded as the list.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ip_key, key_net, single_key, BanEntry, BanUntil, Blacklist, IpRecord, State};

/// A ban as stored across restarts: wall-clock expiry, owned reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedBan {
    /// The banned IP (its /64 for IPv6) or subnet.
    pub subnet: IpNet,
    /// End of the ban in seconds since the Unix epoch; `None`: permanent.
    pub expires_unix: Option<u64>,
    /// Why (the [`BanEntry::reason`] label).
    pub reason: String,
}

/// One change to the stored ban list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanChange {
    /// The ban stored for `subnet` is now this one (new, extended,
    /// shortened or with another reason).
    Set(PersistedBan),
    /// No ban is stored for exactly this subnet any more (lifted, expired
    /// or evicted).
    Removed(IpNet),
    /// Every ban was lifted ([`Blacklist::clear`]; config bans are never
    /// stored).
    Cleared,
}

/// Receives the changes to the stored ban list (see the module docs).
pub trait BanSink: Send + Sync {
    /// One change. Called with the ban list's lock held, in the order the
    /// changes happen: it must return quickly (queue the change, never wait
    /// for a disk) and must not call the [`Blacklist`].
    fn changed(&self, change: BanChange);

    /// Called after an operator's change ([`Blacklist::ban_subnet`],
    /// [`Blacklist::unban`], [`Blacklist::clear`]) once the lock is
    /// released: the sink may wait here until the changes are durable, so
    /// that the operator's command returns after they are. Does nothing by
    /// default.
    fn operator_changed(&self) {}
}

impl<F: Fn(BanChange) + Send + Sync> BanSink for F {
    fn changed(&self, change: BanChange) {
        self(change)
    }
}

/// The static label for a persisted reason; unknown labels (and `config`,
/// which is never persisted) become `restored`.
fn static_reason(reason: &str) -> &'static str {
    match reason {
        "escalation" => "escalation",
        "score" => "score",
        "manual" => "manual",
        _ => "restored",
    }
}

/// Time since the Unix epoch (zero if the clock is before it).
pub(super) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Wall-clock expiry of `until`, in whole seconds rounded up.
fn expires_unix(until: BanUntil) -> Option<u64> {
    match until {
        BanUntil::Permanent => None,
        BanUntil::Until(t) => {
            let end = unix_now().saturating_add(t.saturating_duration_since(Instant::now()));
            Some(
                end.as_secs()
                    .saturating_add(u64::from(end.subsec_nanos() > 0)),
            )
        }
    }
}

/// The [`BanUntil`] of a wall-clock expiry; `None` once it has passed.
fn until_from_unix(expires_unix: Option<u64>, now_unix: Duration) -> Option<BanUntil> {
    match expires_unix {
        None => Some(BanUntil::Permanent),
        Some(secs) => {
            let end = Duration::from_secs(secs);
            (end > now_unix).then(|| BanUntil::after(Some(end - now_unix)))
        }
    }
}

/// The ban to store for exactly `net`: the longer of the per-IP ban (when
/// `net` is an IP's key) and a ban on exactly that subnet, config bans
/// aside; `None` when neither is in force.
fn stored_ban(state: &State, net: IpNet, now: Instant) -> Option<(BanUntil, &'static str)> {
    let key = ip_key(net.addr());
    let per_ip = if key_net(key) == net {
        state
            .ips
            .get(&key)
            .and_then(|r: &IpRecord| r.ban)
            .filter(|(until, _)| until.active(now))
    } else {
        None
    };
    state
        .subnets
        .iter()
        .filter(|b| b.subnet == net && b.reason != "config" && b.until.active(now))
        .map(|b| (b.until, b.reason))
        .chain(per_ip)
        .reduce(|a, b| if a.0.outlasts(&b.0) { a } else { b })
}

/// The change that brings a stored copy of `net` up to date.
pub(super) fn stored_change(state: &State, net: IpNet, now: Instant) -> BanChange {
    match stored_ban(state, net, now) {
        Some((until, reason)) => BanChange::Set(PersistedBan {
            subnet: net,
            expires_unix: expires_unix(until),
            reason: reason.to_owned(),
        }),
        None => BanChange::Removed(net),
    }
}

impl Blacklist {
    /// Every active ban except those from the config (re-read from the
    /// config file at each start), with wall-clock expiries, for storage:
    /// one entry per subnet (the longer ban when an address is banned both
    /// by IP and as a subnet), ordered by subnet.
    pub fn persisted(&self) -> Vec<PersistedBan> {
        let now = Instant::now();
        let state = self.lock();
        // Subnet bans first, then per-IP ones, the longer kept on a tie of
        // keys: the same choice as `stored_ban`, in one pass.
        let mut longest: BTreeMap<IpNet, (BanUntil, &'static str)> = BTreeMap::new();
        let subnets = state
            .subnets
            .iter()
            .filter(|b| b.reason != "config" && b.until.active(now))
            .map(|b| (b.subnet, (b.until, b.reason)));
        let per_ip = state.ips.bans().filter_map(|(key, r)| {
            r.ban
                .filter(|(until, _)| until.active(now))
                .map(|ban| (key_net(*key), ban))
        });
        for (net, ban) in subnets.chain(per_ip) {
            let kept = longest.entry(net).or_insert(ban);
            if !kept.0.outlasts(&ban.0) {
                *kept = ban;
            }
        }
        drop(state);
        longest
            .into_iter()
            .map(|(subnet, (until, reason))| PersistedBan {
                subnet,
                expires_unix: expires_unix(until),
                reason: reason.to_owned(),
            })
            .collect()
    }

    /// Re-installs stored bans (as from [`Blacklist::persisted`]) that have
    /// not expired: permanent ones stay permanent, timed ones get the time
    /// left. Returns how many are in force afterwards.
    ///
    /// A ban on a single address (/32, /128 or an IPv6 /64) goes back to the
    /// per-IP table, where escalation and [`unban`](Blacklist::unban) treat
    /// it as before; other subnets to the subnet list. Where a ban on the
    /// same key already exists, the longer one stays. Reasons other than
    /// `escalation`, `score` and `manual` become `restored`. Each table is
    /// held to `max_entries`: permanent bans are restored first, then the
    /// ones that end last, and a ban that finds no room (only records
    /// without an active ban are evicted for it) is dropped. The sink is not
    /// called: the caller stores [`Blacklist::persisted`] afterwards if the
    /// stored copy must match.
    pub fn restore(&self, bans: &[PersistedBan]) -> usize {
        let now_unix = unix_now();
        let mut active: Vec<(IpNet, BanUntil, &'static str)> = bans
            .iter()
            .filter_map(|b| {
                let until = until_from_unix(b.expires_unix, now_unix)?;
                Some((b.subnet.trunc(), until, static_reason(&b.reason)))
            })
            .collect();
        // Longest first, so the ones dropped for room are those ending first.
        active.sort_by(|(_, a, _), (_, b, _)| match (a, b) {
            (BanUntil::Permanent, BanUntil::Permanent) => std::cmp::Ordering::Equal,
            (BanUntil::Permanent, _) => std::cmp::Ordering::Less,
            (_, BanUntil::Permanent) => std::cmp::Ordering::Greater,
            (BanUntil::Until(a), BanUntil::Until(b)) => b.cmp(a),
        });
        let now = Instant::now();
        let mut restored = 0;
        let mut state = self.lock();
        for (subnet, until, reason) in active {
            let installed = match single_key(subnet) {
                Some(key) => self.restore_ip(&mut state, key, until, reason, now),
                None => self.restore_subnet(&mut state, subnet, until, reason),
            };
            restored += usize::from(installed);
        }
        drop(state);
        tracing::info!(restored, stored = bans.len(), "bans restored");
        restored
    }

    /// Installs a restored per-IP ban; false when there was no room.
    fn restore_ip(
        &self,
        state: &mut State,
        key: IpAddr,
        until: BanUntil,
        reason: &'static str,
        now: Instant,
    ) -> bool {
        if let Some(mut record) = state.ips.take(&key) {
            let keep = record
                .ban
                .is_some_and(|(current, _)| current.active(now) && current.outlasts(&until));
            if !keep {
                record.ban = Some((until, reason));
            }
            state.ips.put(key, record);
            return true;
        }
        // Only a record without an active ban makes room for a restored
        // one: the bans already in place outlast it.
        if state.ips.len() >= self.max_entries && state.ips.evict_unbanned(now).is_none() {
            return false;
        }
        state.ips.put(
            key,
            IpRecord {
                violations: 0,
                last_violation: now,
                ban: Some((until, reason)),
            },
        );
        true
    }

    /// Installs a restored subnet ban; false when there was no room.
    fn restore_subnet(
        &self,
        state: &mut State,
        subnet: IpNet,
        until: BanUntil,
        reason: &'static str,
    ) -> bool {
        let now = Instant::now();
        if let Some(existing) = state.subnets.iter_mut().find(|b| b.subnet == subnet) {
            if !(existing.until.active(now) && existing.until.outlasts(&until)) {
                existing.until = until;
                existing.reason = reason;
            }
            return true;
        }
        if state.subnets.len() >= self.max_entries {
            return false;
        }
        state.subnets.push(BanEntry {
            subnet,
            until,
            reason,
        });
        true
    }
}
