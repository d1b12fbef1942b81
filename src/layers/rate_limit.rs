//! `rate_limit`: GCRA token buckets (governor) per peer and message kind,
//! plus one aggregate budget per IP shared by all its connections.
//!
//! # Defaults
//! Sized from the old TIME Coin node's limits:
//!
//! | kind | limit (burst = count) |
//! |---|---|
//! | `tx` | 50 per second |
//! | `vote` | 100 per second |
//! | `block` | 10 per second |
//! | `addr` (address announcements) | 10 per minute |
//! | `get_peers` | 5 per minute |
//! | `peers` (unsolicited address lists) | 5 per minute |
//! | `ping` | 6 per 10 seconds |
//! | `get_blocks` (sync requests) | 50 per second |
//! | `get_mempool` | 5 per minute |
//! | anything else | 20 per second |
//! | all kinds together, per IP | 500 per second |
//!
//! The per-IP budget is keyed by the IPv4 address or the IPv6 /64, so many
//! connections from one host (or one IPv6 subscriber) share it.
//!
//! # Security
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

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use tower::{BoxError, Layer, Service};

use super::blacklist::ip_key;
use super::{Inbound, LayerCounters, Offence, Outcome, Rejection};
use crate::protocol::{GossipKind, Message};

/// The layer's name in the config and in metrics.
pub const NAME: &str = "rate_limit";

/// The per-IP table is pruned at once when it tracks more IPs than this.
pub const MAX_TRACKED_IPS: usize = 100_000;

/// `count` messages per `per_secs` seconds, with a burst of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindLimit {
    /// Messages allowed per period (and the burst).
    pub count: u32,
    /// The period in seconds.
    pub per_secs: u64,
}

impl KindLimit {
    const fn new(count: u32, per_secs: u64) -> Self {
        KindLimit { count, per_secs }
    }

    fn quota(&self) -> Option<Quota> {
        let count = NonZeroU32::new(self.count)?;
        let period = Duration::from_secs(self.per_secs).checked_div(self.count)?;
        Quota::with_period(period).map(|q| q.allow_burst(count))
    }
}

/// Configuration of the `rate_limit` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Transaction envelopes.
    pub tx: KindLimit,
    /// Vote envelopes.
    pub vote: KindLimit,
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
    /// All kinds together, per IP (IPv6: per /64).
    pub per_ip: KindLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            tx: KindLimit::new(50, 1),
            vote: KindLimit::new(100, 1),
            block: KindLimit::new(10, 1),
            addr: KindLimit::new(10, 60),
            get_peers: KindLimit::new(5, 60),
            peers: KindLimit::new(5, 60),
            ping: KindLimit::new(6, 10),
            get_blocks: KindLimit::new(50, 1),
            get_mempool: KindLimit::new(5, 60),
            other: KindLimit::new(20, 1),
            per_ip: KindLimit::new(500, 1),
        }
    }
}

/// The message kinds with their own bucket.
const KINDS: [&str; 10] = [
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

impl RateLimitConfig {
    fn limit(&self, kind: &str) -> KindLimit {
        match kind {
            "tx" => self.tx,
            "vote" => self.vote,
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

    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        for kind in KINDS.iter().copied().chain(["per_ip"]) {
            let limit = if kind == "per_ip" {
                self.per_ip
            } else {
                self.limit(kind)
            };
            if limit.quota().is_none() {
                return Err(format!(
                    "{kind}: count and per_secs must be at least 1 (got count = {}, per_secs = {})",
                    limit.count, limit.per_secs
                ));
            }
        }
        Ok(())
    }
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

/// The `rate_limit` layer: node-wide per-IP budget, per-connection buckets.
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<RateLimitConfig>,
    per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    counters: Arc<LayerCounters>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.config)
            .field("tracked_ips", &self.per_ip.len())
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a fresh per-IP table.
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimitLayer {
            per_ip: Arc::new(DefaultKeyedRateLimiter::keyed(quota_or_one(config.per_ip))),
            config: Arc::new(config.clone()),
            counters: Arc::new(LayerCounters::default()),
        }
    }

    /// The decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// Forgets IPs whose bucket is full again (idle).
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
    }

    /// IPs in the per-IP table.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        let buckets = KINDS
            .iter()
            .map(|&k| {
                (
                    k,
                    DefaultDirectRateLimiter::direct(quota_or_one(self.config.limit(k))),
                )
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
    buckets: Arc<HashMap<&'static str, DefaultDirectRateLimiter>>,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    fn refuse(&self, kind: &'static str, scope: &'static str) -> Rejection {
        let reason = if scope == "ip" {
            "ip_limit"
        } else {
            "peer_limit"
        };
        self.layer.counters.reject(NAME, reason);
        metrics::counter!("timed_rate_limit_hits_total", "kind" => kind, "scope" => scope)
            .increment(1);
        Rejection::offence(NAME, reason, Offence::RateLimitExceeded)
    }
}

impl<S> Service<Inbound> for RateLimit<S>
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
        let kind = kind_of(&request.message);
        if let Some(bucket) = self.buckets.get(kind) {
            if bucket.check().is_err() {
                let rejection = self.refuse(kind, "peer");
                return Box::pin(std::future::ready(Err(rejection.into())));
            }
        }
        let per_ip = &self.layer.per_ip;
        if per_ip.check_key(&ip_key(request.peer.ip())).is_err() {
            let rejection = self.refuse(kind, "ip");
            return Box::pin(std::future::ready(Err(rejection.into())));
        }
        if per_ip.len() > MAX_TRACKED_IPS {
            per_ip.retain_recent();
        }
        self.layer.counters.accept(NAME);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_support::{inbound, peer, CountingHandler};
    use crate::protocol::Ping;
    use std::sync::atomic::Ordering;

    fn ping() -> Message {
        Message::Ping(Ping {
            nonce: 1,
            timestamp_ms: 0,
        })
    }

    #[tokio::test]
    async fn per_peer_buckets_allow_the_burst_then_refuse() {
        let layer = RateLimitLayer::new(&RateLimitConfig::default());
        let handler = CountingHandler::default();
        let mut svc = layer.layer(handler.clone());
        let p = peer([127, 0, 0, 1]);
        let mut refused = 0;
        for _ in 0..10 {
            if let Err(e) = svc.call(inbound(&p, ping())).await {
                let r = Rejection::find(&e).unwrap();
                assert_eq!(
                    (r.reason, r.offence),
                    ("peer_limit", Some(Offence::RateLimitExceeded))
                );
                refused += 1;
            }
        }
        assert_eq!(refused, 4, "6 pings per 10 s");
        assert_eq!(handler.0.load(Ordering::Relaxed), 6);
        // Other kinds have their own buckets.
        svc.call(inbound(&p, Message::GetPeers)).await.unwrap();
        // A second connection from another IP has fresh buckets.
        let mut other = layer.layer(handler.clone());
        other
            .call(inbound(&peer([127, 0, 0, 2]), ping()))
            .await
            .unwrap();
        assert_eq!(layer.counters().rejected("peer_limit"), 4);
    }

    #[tokio::test]
    async fn connections_from_one_ip_share_the_per_ip_budget() {
        let config = RateLimitConfig {
            per_ip: KindLimit::new(10, 1),
            ..RateLimitConfig::default()
        };
        let layer = RateLimitLayer::new(&config);
        let handler = CountingHandler::default();
        // Five connections from one IPv4 address, 3 messages each.
        let mut ok = 0;
        for _ in 0..5 {
            let mut svc = layer.layer(handler.clone());
            let p = peer([127, 0, 0, 3]);
            for _ in 0..3 {
                if svc.call(inbound(&p, Message::GetPeers)).await.is_ok() {
                    ok += 1;
                }
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(layer.counters().rejected("ip_limit"), 5);
        assert_eq!(layer.tracked_ips(), 1);
    }

    #[test]
    fn zero_limits_are_config_errors() {
        let config = RateLimitConfig {
            vote: KindLimit::new(0, 1),
            ..RateLimitConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("vote"));
        assert!(RateLimitConfig::default().validate().is_ok());
    }
}
