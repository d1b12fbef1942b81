//! The node-wide state the layers use, owned by the network rather than by
//! any layer: the ban list, the score book, the dedup cache and the per-IP
//! rate limiter.
//!
//! # Correctness
//! Removing a layer from the `[[middleware]]` list changes policy, never
//! bookkeeping: the ban list still refuses banned IPs at accept, the score
//! book still records offences judged outside the stack (see
//! [`super::stack::MiddlewareStack::judge`]), and the network still marks
//! its own envelopes as seen. A config reload keeps every handle whose
//! parameters did not change (scores, seen ids and per-IP budgets survive
//! it); the ban list always survives.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::blacklist::{Blacklist, BlacklistConfig};
use super::dedup::{DedupCache, DedupConfig};
use super::rate_limit::{GossipScale, IpLimiter, KindLimit, RateLimitConfig};
use super::scoring::{ScoreBook, ScoringConfig};
use super::stack::MiddlewareConfig;

/// The shared state of one network; cheap to clone (every field is a
/// handle).
#[derive(Clone, Debug)]
pub struct SharedState {
    /// The ban list (IPs, IPv6 /64s, subnets), with its escalation.
    pub blacklist: Arc<Blacklist>,
    /// Scores per node id (and the IP each was last seen from).
    pub scores: Arc<ScoreBook>,
    /// Envelope and request ids seen recently.
    pub dedup: Arc<DedupCache>,
    /// The per-IP rate limiter (IPv6 by /64).
    pub ip_limiter: Arc<IpLimiter>,
    /// The network's magic, for envelope verification.
    pub magic: [u8; 4],
    /// What the gossip budgets are sized for.
    pub scale: GossipScale,
    params: Params,
}

/// The parameters each handle was made with, to tell on a reload whether
/// it can be kept.
#[derive(Clone, Debug, PartialEq)]
struct Params {
    half_life: Duration,
    dedup: (Duration, usize),
    per_ip: KindLimit,
}

impl Params {
    fn of(configs: &[MiddlewareConfig], scale: &GossipScale) -> Params {
        let scoring = find::<ScoringConfig>(configs);
        let dedup = find::<DedupConfig>(configs);
        let rate = find::<RateLimitConfig>(configs);
        Params {
            half_life: scoring.half_life(),
            dedup: (Duration::from_secs(dedup.ttl_secs), dedup.capacity),
            per_ip: rate.per_ip_limit(scale),
        }
    }
}

/// The entry of layer `T` in `configs`, or its defaults: the state exists
/// whether or not the layer is in the stack.
fn find<T: super::stack::Middleware + Default>(configs: &[MiddlewareConfig]) -> T {
    configs
        .iter()
        .find_map(|c| c.get::<T>().cloned())
        .unwrap_or_default()
}

impl SharedState {
    /// The state for a network with `magic`, sized from the layers' entries
    /// in `configs` (defaults for layers not in the list).
    pub fn new(configs: &[MiddlewareConfig], magic: [u8; 4], scale: GossipScale) -> SharedState {
        let params = Params::of(configs, &scale);
        SharedState {
            blacklist: Arc::new(Blacklist::new(&find::<BlacklistConfig>(configs))),
            scores: Arc::new(ScoreBook::new(params.half_life)),
            dedup: Arc::new(DedupCache::new(params.dedup.0, params.dedup.1)),
            ip_limiter: Arc::new(IpLimiter::new(params.per_ip)),
            magic,
            scale,
            params,
        }
    }

    /// The state for a reloaded list: the ban list is kept; other handles
    /// are kept when their parameters are unchanged, else made anew.
    pub fn reconfigure(&self, configs: &[MiddlewareConfig]) -> SharedState {
        let params = Params::of(configs, &self.scale);
        SharedState {
            blacklist: self.blacklist.clone(),
            scores: if params.half_life == self.params.half_life {
                self.scores.clone()
            } else {
                Arc::new(ScoreBook::new(params.half_life))
            },
            dedup: if params.dedup == self.params.dedup {
                self.dedup.clone()
            } else {
                Arc::new(DedupCache::new(params.dedup.0, params.dedup.1))
            },
            ip_limiter: if params.per_ip == self.params.per_ip {
                self.ip_limiter.clone()
            } else {
                Arc::new(IpLimiter::new(params.per_ip))
            },
            magic: self.magic,
            scale: self.scale,
            params,
        }
    }

    /// Forgets idle per-IP budgets (housekeeping).
    pub fn prune(&self) {
        self.ip_limiter.prune();
    }

    /// IPs with a per-IP budget in use.
    pub fn tracked_ips(&self) -> usize {
        self.ip_limiter.len()
    }

    /// Whether `ip` is banned.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.blacklist.is_banned(ip)
    }
}
