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
//! the ban that expires first; permanent bans are never evicted. Finding
//! that entry costs O(1) whatever the size (O(log n) for a ban, needed only
//! once no entry without a ban is left; see the `records` module): a peer
//! rotating through addresses cannot make each new violation scan the
//! table, nor push a ban out before every record without one has gone.
//!
//! # Persistence
//! [`Blacklist::persisted`] lists the active bans (config bans aside) with
//! wall-clock expiries, [`Blacklist::restore`] re-installs such a list at
//! start-up, and a [`BanSink`] set with [`Blacklist::set_sink`] is told of
//! every change to that list, one subnet at a time, so that a node killed
//! without warning comes back with its bans (see [`persist`]).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::{Inbound, LayerCounters, Outcome, Rejection};
use crate::protocol::DisconnectReason;

pub mod persist;
mod records;

use persist::stored_change;
pub use persist::{BanChange, BanSink, PersistedBan};

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
    ips: records::Records,
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
    /// Told of every change to the stored list; locked after `state`.
    sink: Mutex<Option<Arc<dyn BanSink>>>,
}

impl fmt::Debug for Blacklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blacklist")
            .field("state", &self.state)
            .field("escalation", &self.escalation)
            .field("decay", &self.decay)
            .field("max_entries", &self.max_entries)
            // `try_lock`: the sink itself may format the list while its
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
                ips: records::Records::default(),
                subnets,
            }),
            escalation: config.escalation.clone(),
            decay: Duration::from_secs(config.violation_decay_secs),
            max_entries: config.max_entries,
            sink: Mutex::new(None),
        }
    }

    /// Sets (or replaces) the sink told of every change to the stored
    /// list (see [`persist`]): a ban by escalation,
    /// [`ban_ip`](Blacklist::ban_ip), [`ban_subnet`](Blacklist::ban_subnet),
    /// a successful [`unban`](Blacklist::unban), [`clear`](Blacklist::clear),
    /// a ban evicted to make room, and bans expired at
    /// [`prune`](Blacklist::prune). [`restore`](Blacklist::restore) does not
    /// report.
    pub fn set_sink(&self, sink: Arc<dyn BanSink>) {
        *crate::locks::lock(&self.sink) = Some(sink);
    }

    /// Reports the stored value of each of `nets` to the sink, if any.
    ///
    /// # Correctness
    /// Called with the state lock held (`state` is its guard), so the sink
    /// sees changes in the order they happen.
    fn report(&self, state: &State, nets: &[IpNet], now: Instant) {
        if nets.is_empty() {
            return;
        }
        if let Some(sink) = crate::locks::lock(&self.sink).as_ref() {
            for net in nets {
                sink.changed(stored_change(state, *net, now));
            }
        }
    }

    /// Lets the sink make an operator's change durable; called without the
    /// state lock.
    fn operator_changed(&self) {
        let sink = crate::locks::lock(&self.sink).clone();
        if let Some(sink) = sink {
            sink.operator_changed();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::locks::lock(&self.state)
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
        let mut record = state.ips.take(&key).unwrap_or(IpRecord {
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
        let mut changed: Vec<IpNet> = evicted.map(key_net).into_iter().collect();
        let Some(step) = self
            .escalation
            .iter()
            .rev()
            .find(|s| s.violations == violations)
        else {
            state.ips.put(key, record);
            self.report(&state, &changed, now);
            return None;
        };
        let until = BanUntil::after(step.ban_secs.map(Duration::from_secs));
        // A longer ban already in force stays.
        let longer = matches!(record.ban, Some((BanUntil::Permanent, _)))
            || matches!((record.ban, until), (Some((BanUntil::Until(a), _)), BanUntil::Until(b)) if a > b);
        if !longer {
            record.ban = Some((until, "escalation"));
            changed.push(key_net(key));
        }
        state.ips.put(key, record);
        self.report(&state, &changed, now);
        drop(state);
        if crate::logging::allow("escalation_ban") {
            tracing::warn!(
                peer.ip = %ip,
                violations,
                ban_secs = until.remaining_secs(),
                "ip banned after repeated violations"
            );
        }
        metrics::counter!("timed_bans_total", "reason" => "escalation").increment(1);
        Some(until)
    }

    /// Bans `ip` (its /64 for IPv6) for `duration` (`None`: permanently).
    pub fn ban_ip(&self, ip: IpAddr, duration: Option<Duration>, reason: &'static str) {
        let now = Instant::now();
        let key = ip_key(ip);
        let mut state = self.lock();
        let evicted = self.make_room(&mut state, key, now);
        let mut record = state.ips.take(&key).unwrap_or(IpRecord {
            violations: 0,
            last_violation: now,
            ban: None,
        });
        record.ban = Some((BanUntil::after(duration), reason));
        state.ips.put(key, record);
        let changed: Vec<IpNet> = evicted.into_iter().chain([key]).map(key_net).collect();
        self.report(&state, &changed, now);
        drop(state);
        metrics::counter!("timed_bans_total", "reason" => reason).increment(1);
    }

    /// Bans a subnet (manual bans, `setban`): an operator's change (see
    /// [`BanSink::operator_changed`]).
    pub fn ban_subnet(&self, subnet: IpNet, duration: Option<Duration>, reason: &'static str) {
        let now = Instant::now();
        let subnet = subnet.trunc();
        let mut state = self.lock();
        state.subnets.retain(|b| b.subnet != subnet);
        state.subnets.push(BanEntry {
            subnet,
            until: BanUntil::after(duration),
            reason,
        });
        self.report(&state, &[subnet], now);
        drop(state);
        metrics::counter!("timed_bans_total", "reason" => reason).increment(1);
        self.operator_changed();
    }

    /// Lifts every ban on exactly `subnet` (or on the IP it names); true if
    /// one was lifted. An operator's change (see
    /// [`BanSink::operator_changed`]).
    pub fn unban(&self, subnet: IpNet) -> bool {
        let now = Instant::now();
        let subnet = subnet.trunc();
        let mut state = self.lock();
        let before = state.subnets.len();
        state.subnets.retain(|b| b.subnet != subnet);
        let mut lifted = state.subnets.len() != before;
        let single = matches!(
            (subnet, subnet.prefix_len()),
            (IpNet::V4(_), 32) | (IpNet::V6(_), 64..=128)
        );
        let mut changed = vec![subnet];
        if single {
            let key = ip_key(subnet.addr());
            if let Some(mut record) = state.ips.take(&key) {
                lifted |= record.ban.take().is_some();
                record.violations = 0;
                state.ips.put_oldest(key, record);
            }
            changed.push(key_net(key));
        }
        if !lifted {
            return false;
        }
        changed.dedup();
        self.report(&state, &changed, now);
        drop(state);
        self.operator_changed();
        true
    }

    /// Removes every ban and violation record, except bans from the config.
    /// An operator's change (see [`BanSink::operator_changed`]).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.ips.clear();
        state.subnets.retain(|b| b.reason == "config");
        if let Some(sink) = crate::locks::lock(&self.sink).as_ref() {
            sink.changed(BanChange::Cleared);
        }
        drop(state);
        self.operator_changed();
    }

    /// Every active ban.
    pub fn list(&self) -> Vec<BanEntry> {
        let now = Instant::now();
        let state = self.lock();
        let mut out: Vec<BanEntry> = state
            .ips
            .bans()
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

    /// Drops expired bans (reported to the sink as removed) and decayed
    /// violation records; the node calls it on a timer.
    pub fn prune(&self) {
        let now = Instant::now();
        let decay = self.decay;
        let mut state = self.lock();
        let mut expired: Vec<IpNet> = state
            .ips
            .prune(now, decay)
            .into_iter()
            .map(key_net)
            .collect();
        state.subnets.retain(|b| {
            let active = b.until.active(now);
            if !active && b.reason != "config" {
                expired.push(b.subnet);
            }
            active
        });
        expired.sort();
        expired.dedup();
        self.report(&state, &expired, now);
    }

    /// IPs tracked (violations or bans).
    pub fn tracked(&self) -> usize {
        self.lock().ips.len()
    }

    /// Evicts one record if the table is full and `key` is new; returns
    /// the evicted key when its record held a ban (which the caller
    /// reports as removed).
    fn make_room(&self, state: &mut State, key: IpAddr, now: Instant) -> Option<IpAddr> {
        if state.ips.len() < self.max_entries || state.ips.contains_key(&key) {
            return None;
        }
        // Oldest violation without an active ban first, then the ban that
        // ends first; never a permanent ban.
        let (victim, record) = state.ips.evict(now)?;
        record.ban.map(|_| victim)
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

impl crate::layers::stack::Middleware for BlacklistConfig {
    const NAME: &'static str = NAME;
    const WITHOUT: &'static str = "Banned IPs and subnets are still refused when they connect (the ban list is checked at accept, before the handshake) and violations still escalate to bans; a connection made before its IP was banned is no longer refused message by message.";
    type Layer = BlacklistLayer;

    fn validate(&self) -> Result<(), String> {
        BlacklistConfig::validate(self)
    }

    fn build(&self, shared: &crate::layers::shared::SharedState) -> BlacklistLayer {
        BlacklistLayer::new(shared.blacklist.clone())
    }
}

#[cfg(test)]
mod tests;
