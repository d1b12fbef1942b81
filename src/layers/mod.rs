//! The inbound middleware: tower layers between a peer connection and the
//! handlers.
//!
//! Every message a peer sends becomes an [`Inbound`] request that carries the
//! peer's identity ([`PeerContext`]) and goes through the connection's stack,
//! built from the config's ordered `[[middleware]]` list (see [`stack`]).
//! Each layer lives in its own module with its config, its metrics and its
//! tests:
//!
//! | layer | refuses | shared state it reads ([`shared::SharedState`], owned by the network) |
//! |---|---|---|
//! | [`blacklist`] | banned IPs and subnets; escalating bans from violations | the ban list |
//! | [`scoring`] | nothing itself: scores outcomes, disconnects and bans | the score book |
//! | [`rate_limit`] | excess per peer and kind, and per IP (IPv6 /64) | the per-IP limiter |
//! | [`dedup`] | messages seen within the TTL | the id cache |
//! | [`auth`] | unsigned, stale or forged envelopes | (its own batch verifier) |
//!
//! What the node does without each layer is said by the layer's
//! [`stack::Middleware::WITHOUT`] and listed in `docs/CONFIG.md`.
//!
//! A layer refuses a request with a [`Rejection`] error (boxed as
//! [`tower::BoxError`]) that names the layer, the reason and the
//! [`Offence`] if the peer misbehaved; the scoring layer turns offences into
//! penalties. A duplicate is a rejection without an offence: it is normal in
//! gossip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::peer::{Inbound, Offence, Outcome, PeerContext, Rejection};

pub mod auth;
pub mod blacklist;
pub mod dedup;
pub mod rate_limit;
pub mod scoring;
pub mod shared;
pub mod stack;

/// Per-layer decision counters: kept in memory for `getmiddleware` and
/// exported as `timed_layer_decisions_total{layer, decision, reason}`.
#[derive(Debug, Default)]
pub struct LayerCounters {
    accepted: AtomicU64,
    rejected: Mutex<Vec<(&'static str, u64)>>,
}

impl LayerCounters {
    /// Records a request passed on by `layer`.
    pub fn accept(&self, layer: &'static str) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "timed_layer_decisions_total",
            "layer" => layer,
            "decision" => "accepted",
            "reason" => "none"
        )
        .increment(1);
    }

    /// Records a request refused by `layer` for `reason`.
    pub fn reject(&self, layer: &'static str, reason: &'static str) {
        {
            let mut guard = crate::locks::lock(&self.rejected);
            match guard.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => guard.push((reason, 1)),
            }
        }
        metrics::counter!(
            "timed_layer_decisions_total",
            "layer" => layer,
            "decision" => "rejected",
            "reason" => reason
        )
        .increment(1);
    }

    /// How many requests were passed on.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// How many requests were refused for `reason`.
    pub fn rejected(&self, reason: &str) -> u64 {
        let guard = crate::locks::lock(&self.rejected);
        guard
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Every rejection reason with its count.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        crate::locks::lock(&self.rejected).clone()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the layers' unit tests.
    use super::*;
    use crate::crypto::NodeId;
    use crate::peer::Direction;
    use crate::peer::ScoreHandle;
    use crate::protocol::Message;
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// A peer context for `ip`.
    pub fn peer(ip: [u8; 4]) -> Arc<PeerContext> {
        Arc::new(PeerContext::new(
            NodeId(blake3::hash(&ip).into()),
            SocketAddr::from((ip, 24_200)),
            Direction::Inbound,
            1,
            ScoreHandle::default(),
        ))
    }

    /// An inbound request.
    pub fn inbound(peer: &Arc<PeerContext>, message: Message) -> Inbound {
        Inbound::new(peer.clone(), Arc::new(message))
    }

    /// A handler that accepts everything and counts calls.
    #[derive(Clone, Default)]
    pub struct CountingHandler(pub Arc<AtomicU64>);

    impl tower::Service<Inbound> for CountingHandler {
        type Response = Outcome;
        type Error = tower::BoxError;
        type Future = std::future::Ready<Result<Outcome, tower::BoxError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Inbound) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(Outcome::Accepted))
        }
    }
}
