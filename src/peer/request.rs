//! The request types of a peer connection: every message a peer sends
//! becomes an [`Inbound`] request carrying the peer's identity
//! ([`PeerContext`]); the inbound service (the middleware stack over the
//! router) answers it with an [`Outcome`] or refuses it with a
//! [`Rejection`] that may name an [`Offence`].
//!
//! These types belong to the connection, not to any layer: the middleware,
//! the router and the network all speak them, and removing a layer from the
//! stack changes none of them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;
use tower::BoxError;

use super::Direction;
use crate::crypto::NodeId;
use crate::protocol::{DisconnectReason, Envelope, Message, MessageId, Verified};

/// Judges what a peer does outside its inbound stack: a request it let time
/// out, an answer nobody asked for, how fast it answered. The connection
/// task reports these here; the network decides what they cost (the
/// scoring layer's policy when it is in the stack, otherwise the score is
/// only recorded).
pub trait PeerJudge: Send + Sync + fmt::Debug {
    /// Charges `offence` to `peer`.
    fn penalize(&self, peer: &PeerContext, offence: Offence);
    /// Records that `peer` answered a request after `elapsed`.
    fn response_time(&self, peer: &PeerContext, elapsed: Duration);
}

/// A connection's type-erased inbound service: the middleware stack over the
/// router (or a bare handler).
pub type InboundService = BoxCloneService<Inbound, Outcome, BoxError>;

/// The peer an inbound request came from.
#[derive(Debug)]
pub struct PeerContext {
    /// Its authenticated node id.
    pub node_id: NodeId,
    /// The connection's remote address.
    pub addr: SocketAddr,
    /// Who dialed.
    pub direction: Direction,
    /// The node-unique connection id (also in the tracing span).
    pub conn_id: u64,
    /// The peer's score.
    pub score: ScoreHandle,
    /// Cancelled to close the connection (by scoring, the blacklist or the
    /// node); use [`PeerContext::close`] to say why.
    pub disconnect: CancellationToken,
    /// Why the connection was closed by our side, if it was.
    pub close_reason: std::sync::OnceLock<DisconnectReason>,
    /// The `detail` text of our `Disconnect`, if one was given.
    pub close_detail: std::sync::OnceLock<String>,
    /// Per-connection counters, for `getpeerinfo`.
    pub stats: PeerStats,
    /// When the connection was established, seconds since the Unix epoch.
    pub connected_unix: u64,
}

impl PeerContext {
    /// Creates the context of a new connection.
    pub fn new(
        node_id: NodeId,
        addr: SocketAddr,
        direction: Direction,
        conn_id: u64,
        score: ScoreHandle,
    ) -> Self {
        PeerContext {
            node_id,
            addr,
            direction,
            conn_id,
            score,
            disconnect: CancellationToken::new(),
            close_reason: std::sync::OnceLock::new(),
            close_detail: std::sync::OnceLock::new(),
            stats: PeerStats::default(),
            connected_unix: crate::protocol::version::unix_now().as_secs(),
        }
    }

    /// Closes the connection (with a `Disconnect(reason)` message); the
    /// first reason given wins.
    pub fn close(&self, reason: DisconnectReason) {
        let _ = self.close_reason.set(reason);
        self.disconnect.cancel();
    }

    /// Closes the connection with `reason` and a `detail` text telling the
    /// peer why (e.g. its score and when it may come back).
    pub fn close_with(&self, reason: DisconnectReason, detail: String) {
        if self.close_reason.set(reason).is_ok() {
            let _ = self.close_detail.set(detail);
        }
        self.disconnect.cancel();
    }

    /// The remote IP.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// Counters of one connection.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Messages received.
    pub messages_in: AtomicU64,
    /// Messages sent.
    pub messages_out: AtomicU64,
    /// Requests refused by a layer.
    pub rejected: AtomicU64,
    /// Smoothed round-trip time in microseconds (0 until measured).
    pub rtt_us: AtomicU64,
    /// Bytes received on the wire.
    pub bytes_in: AtomicU64,
    /// Bytes sent on the wire.
    pub bytes_out: AtomicU64,
    /// Lowest round trip seen, microseconds (0 until measured).
    pub min_rtt_us: AtomicU64,
    /// Smoothed time to answer our requests, microseconds (0: none yet).
    pub latency_us: AtomicU64,
    /// When it last delivered a new transaction, Unix milliseconds (0:
    /// never).
    pub last_tx_ms: AtomicU64,
    /// When it last delivered a new block, Unix milliseconds (0: never).
    pub last_block_ms: AtomicU64,
    /// New envelopes (transactions, votes, blocks) it delivered first.
    pub first_deliveries: AtomicU64,
    /// Offences charged to it on this connection.
    pub offences: AtomicU64,
}

impl PeerStats {
    /// Folds the time the peer took to answer a request into the smoothed
    /// value (EWMA, weight 1/4).
    pub fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            (old * 3 + sample) / 4
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Folds a new RTT sample into the smoothed value (EWMA, weight 1/4).
    pub fn record_rtt(&self, rtt: Duration) {
        let sample = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.rtt_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            (old * 3 + sample) / 4
        };
        self.rtt_us.store(new.max(1), Ordering::Relaxed);
        let min = self.min_rtt_us.load(Ordering::Relaxed);
        if min == 0 || sample.max(1) < min {
            self.min_rtt_us.store(sample.max(1), Ordering::Relaxed);
        }
    }
}

/// An inbound message and where it came from.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The sender.
    pub peer: Arc<PeerContext>,
    /// The message.
    pub message: Arc<Message>,
    /// The proof that the envelope was verified, once it was (by the
    /// `auth` layer, or by the router when no `auth` layer ran).
    verified: Option<Verified>,
}

impl Inbound {
    /// A message from `peer`, not yet authenticated.
    pub fn new(peer: Arc<PeerContext>, message: Arc<Message>) -> Self {
        Inbound {
            peer,
            message,
            verified: None,
        }
    }

    /// The request with `proof` attached; a proof of another envelope is
    /// ignored.
    pub fn with_proof(mut self, proof: Verified) -> Self {
        if let Message::Gossip(envelope) = &*self.message {
            if proof.proves(envelope) {
                self.verified = Some(proof);
            }
        }
        self
    }

    /// The envelope, if the message is one and its signature was verified:
    /// the only way a handler reads an originator it can trust.
    pub fn verified_envelope(&self) -> Option<&Envelope> {
        match (&*self.message, &self.verified) {
            (Message::Gossip(envelope), Some(proof)) if proof.proves(envelope) => Some(envelope),
            _ => None,
        }
    }

    /// Whether the message is an envelope still waiting for verification.
    pub fn unverified_envelope(&self) -> Option<&Envelope> {
        match &*self.message {
            Message::Gossip(envelope) if self.verified_envelope().is_none() => Some(envelope),
            _ => None,
        }
    }

    /// The gossip id if the message is a signed envelope.
    pub fn gossip_id(&self) -> Option<MessageId> {
        match &*self.message {
            Message::Gossip(envelope) => Some(envelope.id()),
            _ => None,
        }
    }
}

/// What the handlers made of an inbound request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New and useful (a first delivery of a valid envelope); relayed.
    Accepted,
    /// Handled; nothing to report.
    Handled,
    /// Handled; send this message back to the peer.
    Reply(Message),
}

/// Misbehaviour that costs a peer score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offence {
    /// A signature that does not verify, or an unsigned envelope.
    InvalidSignature,
    /// A message that is malformed for its kind.
    Malformed,
    /// More messages than the rate limit allows.
    RateLimitExceeded,
    /// A message not allowed in the current state.
    ProtocolViolation,
    /// No answer to a request in time.
    Timeout,
    /// A block or transaction that breaks the chain rules (bad producer,
    /// linkage, merkle root, signature, overspend, ...): the sender either
    /// failed to validate what it relayed or made it up.
    InvalidData,
    /// A double spend or a competing block: honest peers send these too
    /// during races, so it costs little.
    Conflicting,
}

impl Offence {
    /// A short stable name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Offence::InvalidSignature => "invalid_signature",
            Offence::Malformed => "malformed",
            Offence::RateLimitExceeded => "rate_limit_exceeded",
            Offence::ProtocolViolation => "protocol_violation",
            Offence::Timeout => "timeout",
            Offence::InvalidData => "invalid_data",
            Offence::Conflicting => "conflicting",
        }
    }
}

/// A layer refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{layer} rejected the message: {reason}")]
pub struct Rejection {
    /// The layer that refused.
    pub layer: &'static str,
    /// Why, as a stable label (`duplicate`, `banned`, `bad_signature`, ...).
    pub reason: &'static str,
    /// The offence, if the peer misbehaved.
    pub offence: Option<Offence>,
}

impl Rejection {
    /// A rejection that costs the peer score.
    pub const fn offence(layer: &'static str, reason: &'static str, offence: Offence) -> Self {
        Rejection {
            layer,
            reason,
            offence: Some(offence),
        }
    }

    /// A rejection that costs nothing (e.g. a duplicate).
    pub const fn benign(layer: &'static str, reason: &'static str) -> Self {
        Rejection {
            layer,
            reason,
            offence: None,
        }
    }

    /// Finds a rejection in a boxed error.
    pub fn find(error: &tower::BoxError) -> Option<&Rejection> {
        error.downcast_ref::<Rejection>()
    }
}

/// A peer's score, shared by the scoring layer, the connection task and the
/// RPC.
///
/// The value decays exponentially towards 0 with the half-life the caller
/// passes; it is kept in `[-100, 100]`.
#[derive(Clone, Debug)]
pub struct ScoreHandle(Arc<Mutex<(f64, Instant)>>);

impl Default for ScoreHandle {
    fn default() -> Self {
        ScoreHandle(Arc::new(Mutex::new((0.0, Instant::now()))))
    }
}

/// Lowest and highest score.
pub const SCORE_RANGE: (f64, f64) = (-100.0, 100.0);

fn decayed(value: f64, since: Instant, now: Instant, half_life: Duration) -> f64 {
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    let half = half_life.as_secs_f64();
    if half <= 0.0 {
        return value;
    }
    value * 0.5f64.powf(elapsed / half)
}

impl ScoreHandle {
    /// Whether `self` and `other` are the same score (clones of one handle).
    pub fn same_as(&self, other: &ScoreHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The current value after decay.
    pub fn value(&self, half_life: Duration) -> f64 {
        let guard = crate::locks::lock(&self.0);
        decayed(guard.0, guard.1, Instant::now(), half_life)
    }

    /// Sets the score back to 0 (an operator forgave the peer).
    pub fn reset(&self) {
        *crate::locks::lock(&self.0) = (0.0, Instant::now());
    }

    /// Decays, adds `delta`, clamps, and returns the new value.
    pub fn add(&self, delta: f64, half_life: Duration) -> f64 {
        let mut guard = crate::locks::lock(&self.0);
        let now = Instant::now();
        let value =
            (decayed(guard.0, guard.1, now, half_life) + delta).clamp(SCORE_RANGE.0, SCORE_RANGE.1);
        *guard = (value, now);
        value
    }
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn score_decays_with_the_half_life_and_clamps() {
        let s = ScoreHandle::default();
        let hl = Duration::from_secs(600);
        assert_eq!(s.add(-40.0, hl), -40.0);
        tokio::time::advance(hl).await;
        assert!((s.value(hl) + 20.0).abs() < 1e-6);
        assert_eq!(s.add(-500.0, hl), -100.0);
        assert_eq!(s.add(1000.0, hl), 100.0);
    }
}
