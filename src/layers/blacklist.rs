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

use std::collections::HashMap;
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
    fn after(duration: Option<Duration>) -> Self {
        match duration {
            Some(d) => BanUntil::Until(Instant::now() + d),
            None => BanUntil::Permanent,
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
#[derive(Debug)]
pub struct Blacklist {
    state: Mutex<State>,
    escalation: Vec<EscalationStep>,
    decay: Duration,
    max_entries: usize,
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
        self.make_room(&mut state, key, now);
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
        let step = self
            .escalation
            .iter()
            .rev()
            .find(|s| s.violations == record.violations)?;
        let until = BanUntil::after(step.ban_secs.map(Duration::from_secs));
        // A longer ban already in force stays.
        let longer = matches!(record.ban, Some((BanUntil::Permanent, _)))
            || matches!((record.ban, until), (Some((BanUntil::Until(a), _)), BanUntil::Until(b)) if a > b);
        if !longer {
            record.ban = Some((until, "escalation"));
        }
        tracing::warn!(
            peer.ip = %ip,
            violations = record.violations,
            ban_secs = until.remaining_secs(),
            "ip banned after repeated violations"
        );
        metrics::counter!("timed_bans_total", "reason" => "escalation").increment(1);
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
        lifted
    }

    /// Removes every ban and violation record, except bans from the config.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.ips.clear();
        state.subnets.retain(|b| b.reason == "config");
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

    fn make_room(&self, state: &mut State, key: IpAddr, now: Instant) {
        if state.ips.len() < self.max_entries || state.ips.contains_key(&key) {
            return;
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
        if let Some(victim) = victim {
            state.ips.remove(&victim);
        }
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
