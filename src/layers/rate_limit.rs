//! `rate_limit`: GCRA budgets (governor) per peer and message kind, plus
//! one aggregate budget per IP shared by all its connections.
//!
//! # Honest load is never an offence
//! A budget says how fast a peer's messages of one kind are *handled*, not
//! what the peer may be punished for. A message over its budget is
//! throttled, never charged:
//!
//! 1. if a token comes free within `max_delay_ms`, the message waits for
//!    it. The connection does not read while a message is in the stack, so
//!    the wait is backpressure: TCP slows the sender down and nothing is
//!    lost (an honest burst is smoothed, not dropped);
//! 2. otherwise (a kind whose budget refills slower than that, like `ping`
//!    or `get_peers`) the message is dropped with the benign reason
//!    `throttled`.
//!
//! Both count in `timed_gossip_throttled_total{kind}`. Only traffic *far*
//! beyond any honest rate is an offence: every message also draws from an
//! abuse budget `abuse_factor` times the kind's budget, and a message that
//! finds it empty is refused with [`Offence::RateLimitExceeded`].
//!
//! # Defaults
//! The transaction and vote budgets are sized from the network the node
//! follows ([`GossipScale`]: masternode count and mempool size), see
//! [`crate::constants::GOSSIP_TX_RATE`]; the other kinds have fixed
//! budgets (count per period, burst = count unless `burst` is given):
//!
//! | kind | budget |
//! |---|---|
//! | `tx` | [`crate::constants::GOSSIP_TX_RATE`] per second, burst: the mempool's transaction limit |
//! | `vote` | the `tx` budget times the number of masternodes |
//! | `block` | 10 per second |
//! | `addr` (address announcements) | 10 per minute |
//! | `get_peers` | 5 per minute |
//! | `peers` (unsolicited address lists) | 5 per minute |
//! | `ping` | 6 per 10 seconds |
//! | `get_blocks` (sync requests) | 50 per second |
//! | `get_mempool` | 5 per minute |
//! | anything else | 20 per second |
//! | all kinds together, per IP | the sum of the kinds' budgets |
//!
//! The per-IP budget is keyed by the IPv4 address or the IPv6 /64, so many
//! connections from one host (or one IPv6 subscriber) share it.
//!
//! # Security
//! A flooder gains nothing from throttling: it is slowed to the budget (or
//! dropped), and charged once it exceeds `abuse_factor` times it.
//! Per-connection buckets live and die with the connection. The per-IP
//! table is pruned of idle entries by the node's housekeeping timer and
//! whenever it exceeds [`MAX_TRACKED_IPS`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tower::{BoxError, Layer, Service};

use super::blacklist::ip_key;
use super::{Inbound, LayerCounters, Offence, Outcome, Rejection};
use crate::constants::{GOSSIP_ABUSE_FACTOR, GOSSIP_TX_RATE, THROTTLE_MAX_DELAY};
use crate::protocol::{GossipKind, Message};

/// The layer's name in the config and in metrics.
pub const NAME: &str = "rate_limit";

/// The per-IP table is pruned at once when it tracks more IPs than this.
pub const MAX_TRACKED_IPS: usize = 100_000;

/// A governor clock on tokio's time, so that paused-time tests drive the
/// budgets like every other timer of the node.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One budget on tokio's clock.
type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;
/// Budgets keyed by IP on tokio's clock.
type IpBuckets =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// The node-wide per-IP budget (IPv6 by /64), shared by every connection
/// and kept by the network (see [`super::shared`]).
pub struct IpLimiter {
    buckets: IpBuckets,
}

impl std::fmt::Debug for IpLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpLimiter")
            .field("tracked_ips", &self.len())
            .finish()
    }
}

impl IpLimiter {
    /// A table of budgets of `limit` each.
    pub fn new(limit: KindLimit) -> IpLimiter {
        IpLimiter {
            buckets: RateLimiter::dashmap_with_clock(quota_or_one(limit), TokioClock),
        }
    }

    /// IPs in the table.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.buckets.len() == 0
    }

    /// Forgets IPs whose bucket is full again (idle).
    pub fn prune(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

/// What the node follows, for sizing the gossip budgets: the honest rate of
/// transaction and vote gossip grows with both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipScale {
    /// Masternodes that vote on every transaction (at least 1 is assumed).
    pub masternodes: usize,
    /// Most transactions a mempool holds: the largest burst an honest peer
    /// relays at once (e.g. re-announcing its pool after a restart).
    pub mempool_max_txs: usize,
}

impl Default for GossipScale {
    fn default() -> Self {
        GossipScale {
            masternodes: 1,
            mempool_max_txs: crate::constants::DEFAULT_MEMPOOL_MAX_TXS,
        }
    }
}

/// `count` messages per `per_secs` seconds, with a burst of `burst` (or
/// `count` when not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindLimit {
    /// Messages allowed per period.
    pub count: u32,
    /// The period in seconds.
    pub per_secs: u64,
    /// Messages allowed at once (default: `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl KindLimit {
    const fn new(count: u32, per_secs: u64) -> Self {
        KindLimit {
            count,
            per_secs,
            burst: None,
        }
    }

    fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.count)
    }

    fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.burst())?;
        NonZeroU32::new(self.count)?;
        if self.per_secs == 0 {
            return None;
        }
        // Above 10^9 per second the period rounds to 0 ns, which governor
        // refuses: such a budget means "no limit", so it gets the finest
        // period there is rather than falling back to the tightest.
        let period = Duration::from_secs(self.per_secs)
            .checked_div(self.count)?
            .max(Duration::from_nanos(1));
        Quota::with_period(period).map(|q| q.allow_burst(burst))
    }

    /// The same budget `factor` times larger (rate and burst).
    fn scaled(&self, factor: u32) -> KindLimit {
        KindLimit {
            count: self.count.saturating_mul(factor),
            per_secs: self.per_secs,
            burst: Some(self.burst().saturating_mul(factor)),
        }
    }

    /// Messages per second.
    fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per_secs.max(1) as f64
    }
}

/// Configuration of the `rate_limit` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Transaction envelopes (default: sized from the network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx: Option<KindLimit>,
    /// Vote envelopes (default: sized from the network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote: Option<KindLimit>,
    /// Block envelopes.
    pub block: KindLimit,
    /// Address announcement envelopes.
    pub addr: KindLimit,
    /// `GetPeers` requests.
    pub get_peers: KindLimit,
    /// `Peers` messages.
    pub peers: KindLimit,
    /// Pings.
    pub ping: KindLimit,
    /// `GetBlocks` requests (sync).
    pub get_blocks: KindLimit,
    /// `GetMempool` requests.
    pub get_mempool: KindLimit,
    /// Every other message kind.
    pub other: KindLimit,
    /// All kinds together, per IP (IPv6: per /64); default: the sum of
    /// the kinds' budgets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<KindLimit>,
    /// Traffic beyond this many times a budget is charged as an offence.
    pub abuse_factor: u32,
    /// Longest wait for a token before an excess message is dropped, in
    /// milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            tx: None,
            vote: None,
            block: KindLimit::new(10, 1),
            addr: KindLimit::new(10, 60),
            get_peers: KindLimit::new(5, 60),
            peers: KindLimit::new(5, 60),
            ping: KindLimit::new(6, 10),
            get_blocks: KindLimit::new(50, 1),
            get_mempool: KindLimit::new(5, 60),
            other: KindLimit::new(20, 1),
            per_ip: None,
            abuse_factor: GOSSIP_ABUSE_FACTOR,
            max_delay_ms: THROTTLE_MAX_DELAY.as_millis() as u64,
        }
    }
}

/// The message kinds with their own bucket.
pub const KINDS: [&str; 10] = [
    "tx",
    "vote",
    "block",
    "addr",
    "get_peers",
    "peers",
    "ping",
    "get_blocks",
    "get_mempool",
    "other",
];

/// Largest `abuse_factor` accepted.
const MAX_ABUSE_FACTOR: u32 = 1_000;

/// Longest `max_delay_ms` accepted: a message held longer than this would
/// hold the connection's keepalive pong too.
const MAX_DELAY_MS: u64 = 10_000;

impl RateLimitConfig {
    /// The transaction budget for `scale`: [`GOSSIP_TX_RATE`] per second,
    /// with a burst of a whole mempool.
    pub fn tx_limit(&self, scale: &GossipScale) -> KindLimit {
        self.tx.unwrap_or(KindLimit {
            count: GOSSIP_TX_RATE,
            per_secs: 1,
            burst: Some(clamp_u32(scale.mempool_max_txs.max(1))),
        })
    }

    /// The vote budget for `scale`: every masternode votes once on every
    /// transaction, so the transaction budget times the masternode count.
    pub fn vote_limit(&self, scale: &GossipScale) -> KindLimit {
        self.vote.unwrap_or_else(|| {
            self.tx_limit(scale)
                .scaled(clamp_u32(scale.masternodes.max(1)))
        })
    }

    /// The budget of `kind` for `scale`.
    pub fn limit(&self, kind: &str, scale: &GossipScale) -> KindLimit {
        match kind {
            "tx" => self.tx_limit(scale),
            "vote" => self.vote_limit(scale),
            "block" => self.block,
            "addr" => self.addr,
            "get_peers" => self.get_peers,
            "peers" => self.peers,
            "ping" => self.ping,
            "get_blocks" => self.get_blocks,
            "get_mempool" => self.get_mempool,
            _ => self.other,
        }
    }

    /// The per-IP budget for `scale`: as configured, or one peer using
    /// every kind's whole budget.
    pub fn per_ip_limit(&self, scale: &GossipScale) -> KindLimit {
        self.per_ip.unwrap_or_else(|| {
            let rate: f64 = KINDS
                .iter()
                .map(|k| self.limit(k, scale).per_second())
                .sum();
            let burst: u64 = KINDS
                .iter()
                .map(|k| u64::from(self.limit(k, scale).burst()))
                .sum();
            KindLimit {
                count: clamp_u32(rate.ceil() as usize),
                per_secs: 1,
                burst: Some(clamp_u32(burst as usize)),
            }
        })
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        let scale = GossipScale::default();
        for kind in KINDS.iter().copied() {
            check_limit(kind, &self.limit(kind, &scale))?;
        }
        if let Some(per_ip) = &self.per_ip {
            check_limit("per_ip", per_ip)?;
        }
        if !(1..=MAX_ABUSE_FACTOR).contains(&self.abuse_factor) {
            return Err(format!(
                "abuse_factor must be between 1 and {MAX_ABUSE_FACTOR} (got {})",
                self.abuse_factor
            ));
        }
        if self.max_delay_ms > MAX_DELAY_MS {
            return Err(format!(
                "max_delay_ms must be at most {MAX_DELAY_MS} (got {})",
                self.max_delay_ms
            ));
        }
        Ok(())
    }
}

fn check_limit(kind: &str, limit: &KindLimit) -> Result<(), String> {
    if limit.quota().is_none() {
        return Err(format!(
            "{kind}: count, per_secs and burst must be at least 1 (got count = {}, per_secs = {}, burst = {})",
            limit.count,
            limit.per_secs,
            limit.burst()
        ));
    }
    Ok(())
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The bucket a message is counted in.
pub fn kind_of(message: &Message) -> &'static str {
    match message {
        Message::Gossip(e) => match e.kind {
            GossipKind::Transaction => "tx",
            GossipKind::Vote => "vote",
            GossipKind::Block => "block",
            GossipKind::Address => "addr",
        },
        Message::GetPeers => "get_peers",
        Message::Peers(_) => "peers",
        Message::Ping(_) => "ping",
        Message::GetBlocks(_) => "get_blocks",
        Message::GetMempool => "get_mempool",
        _ => "other",
    }
}

fn quota_or_one(limit: KindLimit) -> Quota {
    // validate() guarantees a quota; fall back to 1/s rather than panic.
    limit
        .quota()
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
}

fn bucket(limit: KindLimit) -> Bucket {
    RateLimiter::direct_with_clock(quota_or_one(limit), TokioClock)
}

/// Waits (at most `max_delay`) for a token of `take`; false if none came
/// free in time.
async fn acquire(
    max_delay: Duration,
    mut take: impl FnMut() -> Result<(), Duration>,
) -> Result<bool, Duration> {
    let mut waited = Duration::ZERO;
    loop {
        match take() {
            Ok(()) => return Ok(waited > Duration::ZERO),
            Err(wait) => {
                if waited + wait > max_delay {
                    return Err(wait);
                }
                // Never spin on a zero wait.
                let wait = wait.max(Duration::from_millis(1));
                tokio::time::sleep(wait).await;
                waited += wait;
            }
        }
    }
}

/// The `rate_limit` layer: node-wide per-IP budget, per-connection buckets.
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<RateLimitConfig>,
    scale: GossipScale,
    per_ip: Arc<IpLimiter>,
    counters: Arc<LayerCounters>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.config)
            .field("scale", &self.scale)
            .field("tracked_ips", &self.per_ip.len())
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a fresh per-IP table, its gossip budgets sized for
    /// `scale`.
    pub fn new(config: &RateLimitConfig, scale: GossipScale) -> Self {
        Self::with_limiter(
            config,
            scale,
            Arc::new(IpLimiter::new(config.per_ip_limit(&scale))),
        )
    }

    /// A layer over the network's per-IP table.
    pub fn with_limiter(
        config: &RateLimitConfig,
        scale: GossipScale,
        per_ip: Arc<IpLimiter>,
    ) -> Self {
        RateLimitLayer {
            per_ip,
            config: Arc::new(config.clone()),
            scale,
            counters: Arc::new(LayerCounters::default()),
        }
    }

    /// The decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// The budget of `kind` in effect.
    pub fn limit(&self, kind: &str) -> KindLimit {
        self.config.limit(kind, &self.scale)
    }

    /// Forgets IPs whose bucket is full again (idle).
    pub fn prune(&self) {
        self.per_ip.prune();
    }

    /// IPs in the per-IP table.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

/// The budget and the abuse budget of one kind on one connection.
struct KindBuckets {
    budget: Bucket,
    abuse: Bucket,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        let buckets = KINDS
            .iter()
            .map(|&k| {
                let limit = self.limit(k);
                let buckets = KindBuckets {
                    budget: bucket(limit),
                    abuse: bucket(limit.scaled(self.config.abuse_factor)),
                };
                (k, buckets)
            })
            .collect();
        RateLimit {
            inner,
            layer: self.clone(),
            buckets: Arc::new(buckets),
        }
    }
}

/// The `rate_limit` service of one connection.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
    buckets: Arc<HashMap<&'static str, KindBuckets>>,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}

/// Counts a message that exceeded its budget (delayed or dropped).
fn throttled(kind: &'static str) {
    metrics::counter!("timed_gossip_throttled_total", "kind" => kind).increment(1);
}

impl RateLimitLayer {
    /// What waiting for a token of `scope` (`peer` or `ip`) came to: on
    /// time, late (throttled, counted), or never (dropped, free).
    fn settle(
        &self,
        kind: &'static str,
        scope: &'static str,
        waited: Result<bool, Duration>,
    ) -> Result<(), BoxError> {
        match waited {
            Ok(false) => Ok(()),
            Ok(true) => {
                throttled(kind);
                Ok(())
            }
            Err(_) => {
                throttled(kind);
                let reason = if scope == "ip" {
                    "ip_limit"
                } else {
                    "peer_limit"
                };
                self.counters.reject(NAME, reason);
                metrics::counter!("timed_rate_limit_hits_total", "kind" => kind, "scope" => scope)
                    .increment(1);
                Err(Rejection::benign(NAME, reason).into())
            }
        }
    }
}

impl<S> Service<Inbound> for RateLimit<S>
where
    S: Service<Inbound, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        let kind = kind_of(&request.message);
        let layer = self.layer.clone();
        let buckets = self.buckets.clone();
        if buckets.get(kind).is_some_and(|b| b.abuse.check().is_err()) {
            // Far beyond any honest rate: the one case that is charged.
            layer.counters.reject(NAME, "abuse");
            metrics::counter!("timed_rate_limit_hits_total", "kind" => kind, "scope" => "abuse")
                .increment(1);
            return Box::pin(std::future::ready(Err(Rejection::offence(
                NAME,
                "abuse",
                Offence::RateLimitExceeded,
            )
            .into())));
        }
        // The inner service was made ready for this call: take it, leave a
        // clone (tower's readiness contract for services called later).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let max_delay = Duration::from_millis(layer.config.max_delay_ms);
            let clock = TokioClock;
            if let Some(b) = buckets.get(kind) {
                let waited = acquire(max_delay, || {
                    b.budget.check().map_err(|n| n.wait_time_from(clock.now()))
                })
                .await;
                layer.settle(kind, "peer", waited)?;
            }
            let key = ip_key(request.peer.ip());
            let per_ip = &layer.per_ip.buckets;
            let waited = acquire(max_delay, || {
                per_ip
                    .check_key(&key)
                    .map_err(|n| n.wait_time_from(clock.now()))
            })
            .await;
            layer.settle(kind, "ip", waited)?;
            if per_ip.len() > MAX_TRACKED_IPS {
                per_ip.retain_recent();
            }
            layer.counters.accept(NAME);
            inner.call(request).await
        })
    }
}

impl crate::layers::stack::Middleware for RateLimitConfig {
    const NAME: &'static str = NAME;
    const WITHOUT: &'static str = "No budget per peer, kind or IP: a flood reaches dedup, auth and the handlers, slowed only by each connection reading one message at a time while its stack is busy.";
    type Layer = RateLimitLayer;

    fn validate(&self) -> Result<(), String> {
        RateLimitConfig::validate(self)
    }

    fn build(&self, shared: &crate::layers::shared::SharedState) -> RateLimitLayer {
        RateLimitLayer::with_limiter(self, shared.scale, shared.ip_limiter.clone())
    }
}

#[cfg(test)]
mod tests;
