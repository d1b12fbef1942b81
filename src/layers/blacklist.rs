//! `blacklist`: the node-wide ban list, and the layer that refuses banned
//! peers.
//!
//! The [`Blacklist`] is consulted twice: at accept, before a single
//! handshake byte is read (see `node`), and by the layer on every message, so
//! a peer banned while connected is cut off at its next message.
//!
//! # Escalation
//! Misbehaviour that closes a connection (scoring's disconnect threshold, a
//! bad frame, a forged handshake) is a *violation* of the peer's IP. The
//! default escalation, after TIME Coin's: the 3rd violation bans for 5
//! minutes, the 5th for an hour, the 10th permanently. Violations are
//! forgotten after an hour without a new one.
//!
//! # Security
//! IPv6 addresses are keyed by their /64, the block one subscriber usually
//! gets, so rotating addresses inside it does not escape a ban (Zebra's known
//! weak spot). The table holds at most `max_entries` IPs; when full, the
//! entry with the oldest violation that is not banned is evicted first, then
//! the ban that expires first; permanent bans are never evicted.
//!
//! # Persistence
//! [`Blacklist::persisted`] lists the active bans (config bans aside) with
//! wall-clock expiries, [`Blacklist::restore`] re-installs such a list at
//! start-up, and a [`BanSink`] set with [`Blacklist::set_sink`] is handed
//! the new list each time the set of bans changes, so a node killed without
//! warning comes back with its bans.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::{Inbound, LayerCounters, Outcome, Rejection};
use crate::protocol::DisconnectReason;

/// The layer's name in the config and in metrics.
pub const NAME: &str = "blacklist";

/// Default cap on tracked IPs (violations and bans).
///
/// Each entry is under 100 bytes: 10,000 entries stay under 1 MB.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Default time without violations after which an IP's count resets.
pub const DEFAULT_VIOLATION_DECAY: Duration = Duration::from_secs(3600);

/// One step of the escalation: from this many violations, ban this long
/// (`ban_secs` absent: permanently).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// Violation count that triggers the step.
    pub violations: u32,
    /// Ban length in seconds; absent means permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_secs: Option<u64>,
}

/// Configuration of the ban list and the `blacklist` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlacklistConfig {
    /// Escalation steps, in increasing `violations`.
    pub escalation: Vec<EscalationStep>,
    /// Seconds without a violation after which the count resets.
    pub violation_decay_secs: u64,
    /// Most IPs tracked.
    pub max_entries: usize,
    /// Subnets (CIDR) banned permanently from start-up.
    pub banned_subnets: Vec<IpNet>,
}

impl Default for BlacklistConfig {
    fn default() -> Self {
        BlacklistConfig {
            escalation: vec![
                EscalationStep {
                    violations: 3,
                    ban_secs: Some(300),
                },
                EscalationStep {
                    violations: 5,
                    ban_secs: Some(3600),
                },
                EscalationStep {
                    violations: 10,
                    ban_secs: None,
                },
            ],
            violation_decay_secs: DEFAULT_VIOLATION_DECAY.as_secs(),
            max_entries: DEFAULT_MAX_ENTRIES,
            banned_subnets: Vec::new(),
        }
    }
}

impl BlacklistConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_entries == 0 {
            return Err("max_entries must be at least 1".into());
        }
        if self.violation_decay_secs == 0 {
            return Err("violation_decay_secs must be at least 1".into());
        }
        let mut last = 0;
        for step in &self.escalation {
            if step.violations <= last {
                return Err(
                    "escalation steps must have strictly increasing `violations` (≥ 1)".into(),
                );
            }
            last = step.violations;
        }
        Ok(())
    }
}

/// How long a ban lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanUntil {
    /// Until this instant.
    Until(Instant),
    /// Until removed by hand.
    Permanent,
}

impl BanUntil {
    /// `duration` from now; `None`, or a duration too long to represent,
    /// is permanent.
    fn after(duration: Option<Duration>) -> Self {
        match duration.and_then(|d| Instant::now().checked_add(d)) {
            Some(t) => BanUntil::Until(t),
            None => BanUntil::Permanent,
        }
    }

    /// True when `self` lasts at least as long as `other`.
    fn outlasts(&self, other: &BanUntil) -> bool {
        match (self, other) {
            (BanUntil::Permanent, _) => true,
            (BanUntil::Until(_), BanUntil::Permanent) => false,
            (BanUntil::Until(a), BanUntil::Until(b)) => a >= b,
        }
    }

    fn active(&self, now: Instant) -> bool {
        match self {
            BanUntil::Until(t) => *t > now,
            BanUntil::Permanent => true,
        }
    }

    /// Seconds left, `None` when permanent.
    pub fn remaining_secs(&self) -> Option<u64> {
        match self {
            BanUntil::Until(t) => Some(t.saturating_duration_since(Instant::now()).as_secs()),
            BanUntil::Permanent => None,
        }
    }
}

/// A ban, as listed by [`Blacklist::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    /// The banned IP (or /64) or subnet.
    pub subnet: IpNet,
    /// Until when.
    pub until: BanUntil,
    /// Why (`escalation`, `score`, `manual`, `config`).
    pub reason: &'static str,
}

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

/// Receives the full list of bans to persist (as [`Blacklist::persisted`])
/// each time the set of active bans changes.
///
/// It is called synchronously from the method that changed the list, after
/// the list's lock is released; calls are serialized, so the last call
/// always carries the latest list. It may read the blacklist but must not
/// call its mutating methods or [`Blacklist::set_sink`] (that would
/// deadlock).
pub type BanSink = Arc<dyn Fn(Vec<PersistedBan>) + Send + Sync>;

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
fn unix_now() -> Duration {
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

/// The per-IP key of a ban that names a single address (/32, /128, or the
/// /64 key of an IPv6 address).
fn single_key(subnet: IpNet) -> Option<IpAddr> {
    match subnet {
        IpNet::V4(net) if net.prefix_len() == 32 => Some(ip_key(subnet.addr())),
        IpNet::V6(net) if matches!(net.prefix_len(), 64 | 128) => Some(ip_key(subnet.addr())),
        _ => None,
    }
}

#[derive(Debug)]
struct IpRecord {
    violations: u32,
    last_violation: Instant,
    ban: Option<(BanUntil, &'static str)>,
}

#[derive(Debug, Default)]
struct State {
    ips: HashMap<IpAddr, IpRecord>,
    subnets: Vec<BanEntry>,
}

/// The key an IP is tracked under: IPv4 as is, IPv6 by its /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn key_net(key: IpAddr) -> IpNet {
    match key {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new(v6, 64).unwrap_or_else(|_| Ipv6Net::from(v6))),
    }
}

/// The node-wide ban list.
pub struct Blacklist {
    state: Mutex<State>,
    escalation: Vec<EscalationStep>,
    decay: Duration,
    max_entries: usize,
    /// Change hook; its lock also serializes the calls.
    sink: Mutex<Option<BanSink>>,
}

impl fmt::Debug for Blacklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blacklist")
            .field("state", &self.state)
            .field("escalation", &self.escalation)
            .field("decay", &self.decay)
            .field("max_entries", &self.max_entries)
            // `try_lock`: the sink itself may format the list while the
            // lock is held (shown as `None` then).
            .field("sink", &self.sink.try_lock().map(|s| s.is_some()).ok())
            .finish()
    }
}

impl Blacklist {
    /// A ban list with `config`'s escalation and its configured subnets.
    pub fn new(config: &BlacklistConfig) -> Self {
        let subnets = config
            .banned_subnets
            .iter()
            .map(|net| BanEntry {
                subnet: net.trunc(),
                until: BanUntil::Permanent,
                reason: "config",
            })
            .collect();
        Blacklist {
            state: Mutex::new(State {
                ips: HashMap::new(),
                subnets,
            }),
            escalation: config.escalation.clone(),
            decay: Duration::from_secs(config.violation_decay_secs),
            max_entries: config.max_entries,
            sink: Mutex::new(None),
        }
    }

    /// Sets (or replaces) the hook called with [`Blacklist::persisted`]
    /// each time the set of active bans changes: a ban by escalation,
    /// [`ban_ip`](Blacklist::ban_ip), [`ban_subnet`](Blacklist::ban_subnet),
    /// a successful [`unban`](Blacklist::unban), [`clear`](Blacklist::clear).
    /// [`prune`](Blacklist::prune) and [`restore`](Blacklist::restore) do
    /// not call it.
    pub fn set_sink(&self, sink: BanSink) {
        *crate::sync::lock(&self.sink) = Some(sink);
    }

    /// Hands the current list to the sink, if any. Must be called without
    /// the state lock held.
    fn notify(&self) {
        let sink = crate::sync::lock(&self.sink);
        if let Some(sink) = sink.as_ref() {
            // The snapshot is taken under the sink lock, so calls deliver
            // lists in the order the changes happened.
            sink(self.persisted());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The active ban covering `ip`, if any.
    pub fn banned(&self, ip: IpAddr) -> Option<BanEntry> {
        let now = Instant::now();
        let key = ip_key(ip);
        let state = self.lock();
        if let Some(IpRecord {
            ban: Some((until, reason)),
            ..
        }) = state.ips.get(&key)
        {
            if until.active(now) {
                return Some(BanEntry {
                    subnet: key_net(key),
                    until: *until,
                    reason,
                });
            }
        }
        state
            .subnets
            .iter()
            .find(|b| b.until.active(now) && b.subnet.contains(&key))
            .cloned()
    }

    /// True when `ip` is banned.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.banned(ip).is_some()
    }

    /// Counts a violation by `ip` and applies the escalation; returns the
    /// ban it caused, if any.
    pub fn record_violation(&self, ip: IpAddr, reason: &'static str) -> Option<BanUntil> {
        let now = Instant::now();
        let key = ip_key(ip);
        let decay = self.decay;
        let mut state = self.lock();
        let evicted = self.make_room(&mut state, key, now);
        let record = state.ips.entry(key).or_insert(IpRecord {
            violations: 0,
            last_violation: now,
            ban: None,
        });
        if now.saturating_duration_since(record.last_violation) >= decay {
            record.violations = 0;
        }
        record.violations = record.violations.saturating_add(1);
        record.last_violation = now;
        metrics::counter!("timed_blacklist_violations_total", "reason" => reason).increment(1);
        let violations = record.violations;
        let Some(step) = self
            .escalation
            .iter()
            .rev()
            .find(|s| s.violations == violations)
        else {
            drop(state);
            if evicted {
                self.notify();
            }
            return None;
        };
        let until = BanUntil::after(step.ban_secs.map(Duration::from_secs));
        // A longer ban already in force stays.
        let longer = matches!(record.ban, Some((BanUntil::Permanent, _)))
            || matches!((record.ban, until), (Some((BanUntil::Until(a), _)), BanUntil::Until(b)) if a > b);
        if !longer {
            record.ban = Some((until, "escalation"));
        }
        drop(state);
        tracing::warn!(
            peer.ip = %ip,
            violations,
            ban_secs = until.remaining_secs(),
            "ip banned after repeated violations"
        );
        metrics::counter!("timed_bans_total", "reason" => "escalation").increment(1);
        if evicted || !longer {
            self.notify();
        }
        Some(until)
    }

    /// Bans `ip` (its /64 for IPv6) for `duration` (`None`: permanently).
    pub fn ban_ip(&self, ip: IpAddr, duration: Option<Duration>, reason: &'static str) {
        let now = Instant::now();
        let key = ip_key(ip);
        let mut state = self.lock();
        self.make_room(&mut state, key, now);
        let record = state.ips.entry(key).or_insert(IpRecord {
            violations: 0,
            last_violation: now,
            ban: None,
        });
        record.ban = Some((BanUntil::after(duration), reason));
        drop(state);
        metrics::counter!("timed_bans_total", "reason" => reason).increment(1);
        self.notify();
    }

    /// Bans a subnet (manual bans, `setban`).
    pub fn ban_subnet(&self, subnet: IpNet, duration: Option<Duration>, reason: &'static str) {
        let subnet = subnet.trunc();
        let mut state = self.lock();
        state.subnets.retain(|b| b.subnet != subnet);
        state.subnets.push(BanEntry {
            subnet,
            until: BanUntil::after(duration),
            reason,
        });
        drop(state);
        metrics::counter!("timed_bans_total", "reason" => reason).increment(1);
        self.notify();
    }

    /// Lifts every ban on exactly `subnet` (or on the IP it names); true if
    /// one was lifted.
    pub fn unban(&self, subnet: IpNet) -> bool {
        let subnet = subnet.trunc();
        let mut state = self.lock();
        let before = state.subnets.len();
        state.subnets.retain(|b| b.subnet != subnet);
        let mut lifted = state.subnets.len() != before;
        let single = matches!(
            (subnet, subnet.prefix_len()),
            (IpNet::V4(_), 32) | (IpNet::V6(_), 64..=128)
        );
        if single {
            let key = ip_key(subnet.addr());
            if let Some(record) = state.ips.get_mut(&key) {
                lifted |= record.ban.take().is_some();
                record.violations = 0;
            }
        }
        drop(state);
        if lifted {
            self.notify();
        }
        lifted
    }

    /// Removes every ban and violation record, except bans from the config.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.ips.clear();
        state.subnets.retain(|b| b.reason == "config");
        drop(state);
        self.notify();
    }

    /// Every active ban except those from the config (re-read from the
    /// config file at each start), with wall-clock expiries, for storage.
    pub fn persisted(&self) -> Vec<PersistedBan> {
        self.list()
            .into_iter()
            .filter(|b| b.reason != "config")
            .map(|b| PersistedBan {
                subnet: b.subnet,
                expires_unix: expires_unix(b.until),
                reason: b.reason.to_owned(),
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
    /// called.
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
        if let Some(record) = state.ips.get_mut(&key) {
            let keep = record
                .ban
                .is_some_and(|(current, _)| current.active(now) && current.outlasts(&until));
            if !keep {
                record.ban = Some((until, reason));
            }
            return true;
        }
        if state.ips.len() >= self.max_entries {
            // Only a record without an active ban makes room for a restored
            // one: the bans already in place outlast it.
            let victim = state
                .ips
                .iter()
                .filter(|(_, r)| !r.ban.is_some_and(|(u, _)| u.active(now)))
                .min_by_key(|(_, r)| r.last_violation)
                .map(|(k, _)| *k);
            match victim {
                Some(victim) => {
                    state.ips.remove(&victim);
                }
                None => return false,
            }
        }
        state.ips.insert(
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

    /// Every active ban.
    pub fn list(&self) -> Vec<BanEntry> {
        let now = Instant::now();
        let state = self.lock();
        let mut out: Vec<BanEntry> = state
            .ips
            .iter()
            .filter_map(|(key, r)| match r.ban {
                Some((until, reason)) if until.active(now) => Some(BanEntry {
                    subnet: key_net(*key),
                    until,
                    reason,
                }),
                _ => None,
            })
            .collect();
        out.extend(
            state
                .subnets
                .iter()
                .filter(|b| b.until.active(now))
                .cloned(),
        );
        out
    }

    /// Drops expired bans and decayed violation records; the node calls it
    /// on a timer.
    pub fn prune(&self) {
        let now = Instant::now();
        let decay = self.decay;
        let mut state = self.lock();
        state.ips.retain(|_, r| {
            if let Some((until, _)) = r.ban {
                if !until.active(now) {
                    r.ban = None;
                }
            }
            r.ban.is_some() || now.saturating_duration_since(r.last_violation) < decay
        });
        state.subnets.retain(|b| b.until.active(now));
    }

    /// IPs tracked (violations or bans).
    pub fn tracked(&self) -> usize {
        self.lock().ips.len()
    }

    /// Evicts one record if the table is full and `key` is new; true when
    /// the evicted record held an active ban.
    fn make_room(&self, state: &mut State, key: IpAddr, now: Instant) -> bool {
        if state.ips.len() < self.max_entries || state.ips.contains_key(&key) {
            return false;
        }
        // Oldest violation without an active ban first, then the ban that
        // ends first; never a permanent ban.
        let victim = state
            .ips
            .iter()
            .filter(|(_, r)| !r.ban.is_some_and(|(u, _)| u.active(now)))
            .min_by_key(|(_, r)| r.last_violation)
            .map(|(k, _)| *k)
            .or_else(|| {
                state
                    .ips
                    .iter()
                    .filter_map(|(k, r)| match r.ban {
                        Some((BanUntil::Until(t), _)) => Some((*k, t)),
                        _ => None,
                    })
                    .min_by_key(|(_, t)| *t)
                    .map(|(k, _)| k)
            });
        victim
            .and_then(|victim| state.ips.remove(&victim))
            .is_some_and(|r| r.ban.is_some_and(|(u, _)| u.active(now)))
    }
}

/// The `blacklist` layer: refuses every message from a banned IP and closes
/// the connection.
#[derive(Clone, Debug)]
pub struct BlacklistLayer {
    blacklist: Arc<Blacklist>,
    counters: Arc<LayerCounters>,
}

impl BlacklistLayer {
    /// A layer over the node-wide ban list.
    pub fn new(blacklist: Arc<Blacklist>) -> Self {
        BlacklistLayer {
            blacklist,
            counters: Arc::new(LayerCounters::default()),
        }
    }

    /// The decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }
}

impl<S> Layer<S> for BlacklistLayer {
    type Service = BlacklistService<S>;

    fn layer(&self, inner: S) -> BlacklistService<S> {
        BlacklistService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The `blacklist` service.
#[derive(Clone, Debug)]
pub struct BlacklistService<S> {
    inner: S,
    layer: BlacklistLayer,
}

impl<S> Service<Inbound> for BlacklistService<S>
where
    S: Service<Inbound, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        if self.layer.blacklist.is_banned(request.peer.ip()) {
            self.layer.counters.reject(NAME, "banned");
            request.peer.close(DisconnectReason::Banned);
            return Box::pin(std::future::ready(Err(
                Rejection::benign(NAME, "banned").into()
            )));
        }
        self.layer.counters.accept(NAME);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{inbound, peer, CountingHandler};
    use crate::protocol::Message;
    use std::sync::atomic::Ordering;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn escalation_follows_the_default_schedule() {
        let b = Blacklist::new(&BlacklistConfig::default());
        let a = ip("127.0.0.9");
        assert_eq!(b.record_violation(a, "test"), None);
        assert_eq!(b.record_violation(a, "test"), None);
        assert!(!b.is_banned(a));
        assert!(matches!(
            b.record_violation(a, "test"),
            Some(BanUntil::Until(_))
        ));
        assert!(b.is_banned(a));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(!b.is_banned(a), "5 minute ban expired");
        assert_eq!(b.record_violation(a, "test"), None, "4th violation");
        b.record_violation(a, "test");
        assert_eq!(b.banned(a).unwrap().until.remaining_secs(), Some(3600));
        for _ in 6..=10 {
            b.record_violation(a, "test");
        }
        assert_eq!(b.banned(a).unwrap().until, BanUntil::Permanent);
        tokio::time::advance(Duration::from_secs(100 * 24 * 3600)).await;
        assert!(b.is_banned(a));
    }

    #[tokio::test(start_paused = true)]
    async fn violations_decay_after_an_hour_clean() {
        let b = Blacklist::new(&BlacklistConfig::default());
        let a = ip("127.0.0.9");
        b.record_violation(a, "test");
        b.record_violation(a, "test");
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert_eq!(b.record_violation(a, "test"), None, "count restarted");
        b.prune();
        assert_eq!(b.tracked(), 1);
        tokio::time::advance(Duration::from_secs(3601)).await;
        b.prune();
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn ipv6_is_banned_by_its_64_and_subnets_work() {
        let b = Blacklist::new(&BlacklistConfig {
            banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
            ..BlacklistConfig::default()
        });
        b.ban_ip(ip("2001:db8:1:2::5"), None, "manual");
        assert!(b.is_banned(ip("2001:db8:1:2:ffff::1")));
        assert!(!b.is_banned(ip("2001:db8:1:3::5")));
        assert!(b.is_banned(ip("10.1.200.3")));
        assert!(b.is_banned(ip("::ffff:10.1.0.1")));
        assert!(!b.is_banned(ip("10.2.0.1")));
        b.ban_subnet("192.168.7.0/24".parse().unwrap(), None, "manual");
        assert!(b.is_banned(ip("192.168.7.77")));
        assert_eq!(b.list().len(), 3);
        assert!(b.unban("192.168.7.0/24".parse().unwrap()));
        assert!(b.unban("2001:db8:1:2::/64".parse().unwrap()));
        assert!(!b.is_banned(ip("2001:db8:1:2::5")));
        b.clear();
        assert!(b.is_banned(ip("10.1.200.3")), "config bans survive clear");
    }

    #[test]
    fn the_table_is_bounded_and_keeps_permanent_bans() {
        let b = Blacklist::new(&BlacklistConfig {
            max_entries: 3,
            ..BlacklistConfig::default()
        });
        b.ban_ip(ip("1.1.1.1"), None, "manual");
        for n in 0..50u8 {
            b.record_violation(IpAddr::from([2, 2, 2, n]), "test");
            assert!(b.tracked() <= 3);
        }
        assert!(b.is_banned(ip("1.1.1.1")));
    }

    #[tokio::test]
    async fn the_layer_refuses_banned_peers_and_disconnects_them() {
        let list = Arc::new(Blacklist::new(&BlacklistConfig::default()));
        let layer = BlacklistLayer::new(list.clone());
        let handler = CountingHandler::default();
        let mut svc = layer.layer(handler.clone());
        let good = peer([127, 0, 0, 1]);
        let bad = peer([127, 0, 0, 66]);
        list.ban_ip(bad.ip(), Some(Duration::from_secs(60)), "manual");
        svc.call(inbound(&good, Message::GetPeers)).await.unwrap();
        let err = svc
            .call(inbound(&bad, Message::GetPeers))
            .await
            .unwrap_err();
        assert_eq!(Rejection::find(&err).unwrap().reason, "banned");
        assert!(bad.disconnect.is_cancelled());
        assert!(!good.disconnect.is_cancelled());
        assert_eq!(handler.0.load(Ordering::Relaxed), 1);
        assert_eq!(layer.counters().rejected("banned"), 1);
    }

    fn now_unix_secs() -> u64 {
        unix_now().as_secs()
    }

    /// A sink that records every list it is handed.
    fn recording_sink(b: &Blacklist) -> Arc<Mutex<Vec<Vec<PersistedBan>>>> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        b.set_sink(Arc::new(move |bans| seen.lock().unwrap().push(bans)));
        calls
    }

    fn sorted(mut bans: Vec<PersistedBan>) -> Vec<PersistedBan> {
        bans.sort_by_key(|b| b.subnet);
        bans
    }

    #[test]
    fn persisted_round_trips_into_a_fresh_blacklist() {
        let config = BlacklistConfig {
            banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
            ..BlacklistConfig::default()
        };
        let b = Blacklist::new(&config);
        b.ban_ip(ip("203.0.113.7"), None, "manual");
        b.ban_ip(
            ip("2001:db8:1:2::5"),
            Some(Duration::from_secs(300)),
            "score",
        );
        b.ban_subnet(
            "198.51.100.0/24".parse().unwrap(),
            Some(Duration::from_secs(3600)),
            "manual",
        );
        let stored = b.persisted();
        assert_eq!(stored.len(), 3, "config bans are not persisted: {stored:?}");
        assert!(stored.iter().all(|p| p.reason != "config"));
        let v4 = stored
            .iter()
            .find(|p| p.subnet == "203.0.113.7/32".parse().unwrap())
            .unwrap();
        assert_eq!(v4.expires_unix, None);
        assert_eq!(v4.reason, "manual");
        let v6 = stored
            .iter()
            .find(|p| p.subnet == "2001:db8:1:2::/64".parse().unwrap())
            .unwrap();
        let expires = v6.expires_unix.unwrap();
        let now = now_unix_secs();
        assert!(
            (now + 299..=now + 301).contains(&expires),
            "{expires} vs {now}"
        );

        let fresh = Blacklist::new(&config);
        assert_eq!(fresh.restore(&stored), 3);
        assert!(fresh.is_banned(ip("203.0.113.7")));
        assert!(!fresh.is_banned(ip("203.0.113.8")));
        assert!(fresh.is_banned(ip("2001:db8:1:2:ffff::1")));
        assert!(!fresh.is_banned(ip("2001:db8:1:3::5")));
        assert!(fresh.is_banned(ip("198.51.100.200")));
        assert!(
            fresh.is_banned(ip("10.1.2.3")),
            "config ban from the config"
        );
        let v4 = fresh.banned(ip("203.0.113.7")).unwrap();
        assert_eq!((v4.until, v4.reason), (BanUntil::Permanent, "manual"));
        let v6 = fresh.banned(ip("2001:db8:1:2::9")).unwrap();
        assert_eq!(v6.reason, "score");
        let left = v6.until.remaining_secs().unwrap();
        assert!((298..=301).contains(&left), "{left}");
        let net = fresh.banned(ip("198.51.100.1")).unwrap();
        assert_eq!(net.subnet, "198.51.100.0/24".parse::<IpNet>().unwrap());
        assert!(net.until.remaining_secs().unwrap() > 3590);
        // Single addresses are back in the per-IP table.
        assert_eq!(fresh.tracked(), 2);
        assert_eq!(sorted(fresh.persisted()).len(), 3);
    }

    #[test]
    fn restored_ip_bans_behave_as_before() {
        let b = Blacklist::new(&BlacklistConfig::default());
        let restored = b.restore(&[
            PersistedBan {
                subnet: "203.0.113.7/32".parse().unwrap(),
                expires_unix: None,
                reason: "escalation".into(),
            },
            PersistedBan {
                subnet: "203.0.113.8/32".parse().unwrap(),
                expires_unix: Some(now_unix_secs() + 600),
                reason: "something new".into(),
            },
        ]);
        assert_eq!(restored, 2);
        let a = ip("203.0.113.7");
        for _ in 0..5 {
            b.record_violation(a, "test");
        }
        assert_eq!(
            b.banned(a).unwrap().until,
            BanUntil::Permanent,
            "escalation keeps the longer restored ban"
        );
        assert_eq!(b.banned(ip("203.0.113.8")).unwrap().reason, "restored");
        assert!(b.unban("203.0.113.7/32".parse().unwrap()));
        assert!(!b.is_banned(a));
        assert!(b.unban("203.0.113.8/32".parse().unwrap()));
        assert!(b.list().is_empty());
    }

    #[test]
    fn restore_skips_expired_bans() {
        let b = Blacklist::new(&BlacklistConfig::default());
        let now = now_unix_secs();
        let restored = b.restore(&[
            PersistedBan {
                subnet: "203.0.113.7/32".parse().unwrap(),
                expires_unix: Some(now.saturating_sub(10)),
                reason: "manual".into(),
            },
            PersistedBan {
                subnet: "198.51.100.0/24".parse().unwrap(),
                expires_unix: Some(0),
                reason: "manual".into(),
            },
            PersistedBan {
                subnet: "2001:db8::/64".parse().unwrap(),
                expires_unix: Some(now + 120),
                reason: "score".into(),
            },
        ]);
        assert_eq!(restored, 1);
        assert!(!b.is_banned(ip("203.0.113.7")));
        assert!(!b.is_banned(ip("198.51.100.1")));
        assert!(b.is_banned(ip("2001:db8::1")));
        assert_eq!(b.list().len(), 1);
    }

    #[test]
    fn restore_respects_max_entries_and_keeps_the_longest() {
        let b = Blacklist::new(&BlacklistConfig {
            max_entries: 2,
            ..BlacklistConfig::default()
        });
        let now = now_unix_secs();
        let ban = |s: &str, expires_unix| PersistedBan {
            subnet: s.parse().unwrap(),
            expires_unix,
            reason: "manual".into(),
        };
        let restored = b.restore(&[
            ban("192.0.2.1/32", Some(now + 60)),
            ban("192.0.2.2/32", Some(now + 6000)),
            ban("192.0.2.3/32", None),
        ]);
        assert_eq!(restored, 2);
        assert_eq!(b.tracked(), 2);
        assert!(!b.is_banned(ip("192.0.2.1")), "the shortest is dropped");
        assert!(b.is_banned(ip("192.0.2.2")));
        assert!(b.is_banned(ip("192.0.2.3")));
    }

    #[test]
    fn restore_does_not_call_the_sink() {
        let b = Blacklist::new(&BlacklistConfig::default());
        let calls = recording_sink(&b);
        b.restore(&[PersistedBan {
            subnet: "192.0.2.1/32".parse().unwrap(),
            expires_unix: None,
            reason: "manual".into(),
        }]);
        b.prune();
        assert!(calls.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sink_fires_once_per_change_with_the_new_list() {
        let b = Blacklist::new(&BlacklistConfig {
            banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
            ..BlacklistConfig::default()
        });
        let calls = recording_sink(&b);
        let count = || calls.lock().unwrap().len();
        let last = || sorted(calls.lock().unwrap().last().cloned().unwrap());
        let a = ip("127.0.0.9");

        b.record_violation(a, "test");
        b.record_violation(a, "test");
        assert_eq!(count(), 0, "violations below the threshold change nothing");
        b.record_violation(a, "test");
        assert_eq!(count(), 1, "the escalation ban");
        assert_eq!(last().len(), 1);
        assert_eq!(last()[0].subnet, "127.0.0.9/32".parse::<IpNet>().unwrap());
        assert_eq!(last()[0].reason, "escalation");
        assert!(last()[0].expires_unix.is_some());
        b.record_violation(a, "test");
        assert_eq!(count(), 1, "4th violation: no new ban");

        b.ban_ip(ip("2001:db8::1"), None, "manual");
        assert_eq!(count(), 2);
        assert_eq!(last().len(), 2);
        b.ban_subnet("192.168.7.0/24".parse().unwrap(), None, "manual");
        assert_eq!(count(), 3);
        assert_eq!(last().len(), 3);
        assert_eq!(last(), sorted(b.persisted()));

        assert!(!b.unban("192.168.8.0/24".parse().unwrap()));
        assert_eq!(count(), 3, "nothing lifted, no call");
        assert!(b.unban("192.168.7.0/24".parse().unwrap()));
        assert_eq!(count(), 4);
        assert_eq!(last().len(), 2);

        tokio::time::advance(Duration::from_secs(301)).await;
        b.prune();
        assert_eq!(count(), 4, "prune does not call the sink");

        b.clear();
        assert_eq!(count(), 5);
        assert!(last().is_empty(), "clear leaves only config bans");
        assert!(b.is_banned(ip("10.1.0.1")));
    }

    #[test]
    fn the_sink_fires_when_a_violation_evicts_a_ban() {
        let b = Blacklist::new(&BlacklistConfig {
            max_entries: 1,
            ..BlacklistConfig::default()
        });
        b.ban_ip(ip("192.0.2.1"), Some(Duration::from_secs(60)), "manual");
        let calls = recording_sink(&b);
        b.record_violation(ip("192.0.2.2"), "test");
        assert!(!b.is_banned(ip("192.0.2.1")));
        assert_eq!(*calls.lock().unwrap(), vec![Vec::new()]);
    }

    #[test]
    fn the_sink_may_read_the_blacklist() {
        let b = Arc::new(Blacklist::new(&BlacklistConfig::default()));
        let seen = Arc::new(Mutex::new(0));
        let (list, seen2) = (Arc::downgrade(&b), seen.clone());
        b.set_sink(Arc::new(move |bans| {
            let b = list.upgrade().unwrap();
            assert_eq!(b.list().len(), bans.len());
            *seen2.lock().unwrap() += 1;
        }));
        b.ban_ip(ip("192.0.2.1"), None, "manual");
        assert_eq!(*seen.lock().unwrap(), 1);
    }

    #[test]
    fn bad_escalation_is_a_config_error() {
        let config = BlacklistConfig {
            escalation: vec![
                EscalationStep {
                    violations: 5,
                    ban_secs: Some(1),
                },
                EscalationStep {
                    violations: 3,
                    ban_secs: Some(1),
                },
            ],
            ..BlacklistConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
