//! The set of connected peers: one connection per node id, broadcast for
//! gossip, and a `tower::Service<Request>` that balances requests over the
//! peers with power-of-two-choices on round-trip time.
//!
//! # One connection per node id
//! When a second connection to a node id arrives, both sides keep the
//! connection *dialed by the node with the smaller node id*; if both
//! connections were dialed by the same side (a reconnect racing a stale
//! connection), the newer one wins. Both ends evaluate the same rule on the
//! same facts, so simultaneous dials converge on one connection without
//! negotiation; the loser is closed with `Disconnect(Duplicate)`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rand::seq::SliceRandom;
use tower::{BoxError, Service, ServiceExt};

use super::client::{Client, Request, Response};
use super::connection::{enqueue_encoded, priority_of};
use super::handshake::{Direction, PeerInfo};
use super::queue::SendQueue;
use crate::crypto::NodeId;
use crate::peer::PeerContext;
use crate::protocol::codec::encode_message;
use crate::protocol::{Message, PeerAddress};

/// RTT assumed for a peer not measured yet (it gets tried, not avoided).
pub const DEFAULT_RTT: Duration = Duration::from_millis(50);

/// A connected peer.
#[derive(Debug)]
pub struct PeerHandle {
    /// What it told us in the handshake.
    pub info: Arc<PeerInfo>,
    /// Its context (score, counters, close switch).
    pub context: Arc<PeerContext>,
    /// Its request service.
    pub client: Client,
    /// Its send queue.
    pub queue: Arc<SendQueue>,
}

impl PeerHandle {
    /// The smoothed RTT, or [`DEFAULT_RTT`] when not measured yet.
    pub fn rtt(&self) -> Duration {
        match self
            .context
            .stats
            .rtt_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => DEFAULT_RTT,
            us => Duration::from_micros(us),
        }
    }
}

/// What [`PeerSet::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// The peer is in the set.
    Admitted,
    /// The peer is in the set and replaced this connection (close it).
    Replaced(Arc<PeerHandle>),
    /// An existing connection to the node is preferred (close the new one).
    Refused,
}

/// All connected peers.
#[derive(Debug)]
pub struct PeerSet {
    local: NodeId,
    peers: RwLock<HashMap<NodeId, Arc<PeerHandle>>>,
}

impl PeerSet {
    /// An empty set for the node `local`.
    pub fn new(local: NodeId) -> Self {
        PeerSet {
            local,
            peers: RwLock::new(HashMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<PeerHandle>>> {
        crate::locks::read(&self.peers)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Arc<PeerHandle>>> {
        crate::locks::write(&self.peers)
    }

    fn dialer(&self, handle: &PeerHandle) -> NodeId {
        match handle.info.direction {
            Direction::Outbound => self.local,
            Direction::Inbound => handle.info.node_id,
        }
    }

    /// Adds a peer, applying the one-connection-per-node-id rule.
    pub fn admit(&self, handle: Arc<PeerHandle>) -> Admission {
        let mut peers = self.write();
        let id = handle.info.node_id;
        let Some(old) = peers.get(&id) else {
            peers.insert(id, handle);
            return Admission::Admitted;
        };
        let (old_dialer, new_dialer) = (self.dialer(old), self.dialer(&handle));
        let new_wins = if old_dialer == new_dialer {
            true
        } else {
            new_dialer < old_dialer
        };
        if new_wins {
            let old = old.clone();
            peers.insert(id, handle);
            Admission::Replaced(old)
        } else {
            Admission::Refused
        }
    }

    /// Removes the connection `conn_id` of `node_id` (if it is still the
    /// one in the set).
    pub fn remove(&self, node_id: NodeId, conn_id: u64) {
        let mut peers = self.write();
        if peers
            .get(&node_id)
            .is_some_and(|h| h.context.conn_id == conn_id)
        {
            peers.remove(&node_id);
        }
    }

    /// The peer with `node_id`, if connected.
    pub fn get(&self, node_id: &NodeId) -> Option<Arc<PeerHandle>> {
        self.read().get(node_id).cloned()
    }

    /// True when connected to `node_id`.
    pub fn contains(&self, node_id: &NodeId) -> bool {
        self.read().contains_key(node_id)
    }

    /// Connected peers.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Connected peers in `direction`.
    pub fn count(&self, direction: Direction) -> usize {
        self.read()
            .values()
            .filter(|h| h.info.direction == direction)
            .count()
    }

    /// Every connected peer.
    pub fn snapshot(&self) -> Vec<Arc<PeerHandle>> {
        self.read().values().cloned().collect()
    }

    /// The addresses peers listen on, for `GetPeers` answers.
    pub fn listen_addresses(&self, limit: usize) -> Vec<PeerAddress> {
        self.read()
            .values()
            .filter_map(|h| h.info.version.listen_addr)
            .take(limit)
            .collect()
    }

    /// Sends `message` to every peer except `except`, encoding it once.
    /// Peers whose queue is full are disconnected. Returns how many peers
    /// it was queued for.
    pub fn broadcast(&self, message: &Message, except: Option<NodeId>) -> usize {
        let bytes = match encode_message(message) {
            Ok(b) => Bytes::from(b),
            Err(error) => {
                tracing::warn!(%error, "cannot encode broadcast");
                return 0;
            }
        };
        let priority = priority_of(message);
        let mut sent = 0;
        for handle in self.snapshot() {
            if Some(handle.info.node_id) == except {
                continue;
            }
            if enqueue_encoded(&handle.queue, &handle.context, bytes.clone(), priority) {
                sent += 1;
            }
        }
        metrics::counter!("timed_gossip_relayed_total", "kind" => if let Message::Gossip(e) = message { e.kind.name() } else { message.kind() })
            .increment(sent as u64);
        sent
    }

    /// A request service over the set (see [`PeerSetService`]).
    pub fn service(self: &Arc<Self>) -> PeerSetService {
        PeerSetService { set: self.clone() }
    }
}

/// Errors of the peer set service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerSetError {
    /// No peer is connected.
    #[error("no connected peer")]
    NoPeers,
}

/// Routes each request to one peer: of two peers picked at random, the one
/// with the lower smoothed RTT that is ready (power of two choices, as
/// tower's `p2c` balancer with a peak-EWMA load).
///
/// # Security
/// Low latency alone decides among the two, so a low-latency attacker gets
/// more requests (Zebra's weak spot); the random pick of candidates keeps
/// it from getting all of them, and sync verifies every answer.
#[derive(Clone, Debug)]
pub struct PeerSetService {
    set: Arc<PeerSet>,
}

impl PeerSetService {
    /// Picks the peer for one request, as described on the type.
    pub fn pick(&self) -> Option<Arc<PeerHandle>> {
        self.set.pick_excluding(&std::collections::HashSet::new())
    }
}

impl PeerSet {
    /// Picks a peer for one request by power of two choices (see
    /// [`PeerSetService`]), leaving out the node ids in `exclude` (peers
    /// that already failed this request).
    pub fn pick_excluding(
        &self,
        exclude: &std::collections::HashSet<NodeId>,
    ) -> Option<Arc<PeerHandle>> {
        self.pick_where(exclude, |_| true)
    }

    /// Like [`PeerSet::pick_excluding`], among the peers that announced
    /// they serve chain data (`FULL_NODE`): a peer is never asked for what
    /// it did not offer to serve.
    pub fn pick_serving(
        &self,
        exclude: &std::collections::HashSet<NodeId>,
    ) -> Option<Arc<PeerHandle>> {
        self.pick_where(exclude, |h| {
            h.info.version.capabilities & crate::protocol::message::capabilities::FULL_NODE != 0
        })
    }

    fn pick_where(
        &self,
        exclude: &std::collections::HashSet<NodeId>,
        eligible: impl Fn(&PeerHandle) -> bool,
    ) -> Option<Arc<PeerHandle>> {
        let mut peers: Vec<Arc<PeerHandle>> = self
            .snapshot()
            .into_iter()
            .filter(|h| !h.client.is_closed() && !exclude.contains(&h.info.node_id) && eligible(h))
            .collect();
        let mut rng = rand::thread_rng();
        peers.shuffle(&mut rng);
        let mut two: Vec<Arc<PeerHandle>> = peers.into_iter().take(2).collect();
        two.sort_by_key(|h| h.rtt());
        // Prefer the faster one if it can take a request now.
        for handle in &two {
            let mut client = handle.client.clone();
            if let Some(Ok(_)) = client.ready().now_or_never() {
                return Some(handle.clone());
            }
        }
        two.into_iter().next()
    }
}

impl Service<Request> for PeerSetService {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let picked = self.pick();
        Box::pin(async move {
            let handle = picked.ok_or(PeerSetError::NoPeers)?;
            let mut client = handle.client.clone();
            client.ready().await?.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeIdentity;
    use crate::params::Network;
    use crate::peer::client::ClientRequest;
    use crate::peer::ScoreHandle;
    use crate::protocol::VersionParams;
    use std::net::SocketAddr;
    use tokio::sync::mpsc;

    fn handle(
        local: NodeId,
        remote: NodeId,
        direction: Direction,
        conn_id: u64,
        rtt_us: u64,
    ) -> (Arc<PeerHandle>, mpsc::Receiver<ClientRequest>) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + conn_id as u16));
        let context = Arc::new(PeerContext::new(
            remote,
            addr,
            direction,
            conn_id,
            ScoreHandle::default(),
        ));
        context
            .stats
            .rtt_us
            .store(rtt_us, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        let identity = NodeIdentity::generate();
        let info = Arc::new(PeerInfo {
            node_id: remote,
            public_key: identity.public_key(),
            addr,
            direction,
            version: VersionParams::new(Network::Devnet).build(remote, 0),
        });
        let _ = local;
        (
            Arc::new(PeerHandle {
                info,
                client: Client::new(tx, context.clone()),
                context,
                queue: Arc::new(SendQueue::new(1 << 20)),
            }),
            rx,
        )
    }

    fn ids() -> (NodeId, NodeId) {
        let a = NodeIdentity::generate().node_id();
        let b = NodeIdentity::generate().node_id();
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    }

    #[test]
    fn simultaneous_dials_converge_on_the_smaller_ids_connection() {
        let (small, large) = ids();
        // Seen from the smaller node: its outbound connection wins, in
        // either arrival order.
        for outbound_first in [true, false] {
            let set = PeerSet::new(small);
            let (out, _r1) = handle(small, large, Direction::Outbound, 1, 0);
            let (inb, _r2) = handle(small, large, Direction::Inbound, 2, 0);
            let (first, second) = if outbound_first {
                (out, inb)
            } else {
                (inb, out)
            };
            assert!(matches!(set.admit(first), Admission::Admitted));
            let decision = set.admit(second);
            assert_eq!(set.get(&large).unwrap().context.conn_id, 1);
            assert!(matches!(
                (outbound_first, decision),
                (true, Admission::Refused) | (false, Admission::Replaced(_))
            ));
        }
        // Seen from the larger node: the inbound connection (dialed by the
        // smaller node) wins.
        let set = PeerSet::new(large);
        let (out, _r1) = handle(large, small, Direction::Outbound, 3, 0);
        let (inb, _r2) = handle(large, small, Direction::Inbound, 4, 0);
        set.admit(out);
        assert!(matches!(set.admit(inb), Admission::Replaced(_)));
        assert_eq!(set.get(&small).unwrap().context.conn_id, 4);
        // Same dialer twice (a reconnect): the newer one wins.
        let (again, _r3) = handle(large, small, Direction::Inbound, 5, 0);
        assert!(matches!(set.admit(again), Admission::Replaced(_)));
        set.remove(small, 4);
        assert!(
            set.contains(&small),
            "removing a replaced connection keeps the new one"
        );
        set.remove(small, 5);
        assert!(set.is_empty());
    }

    #[test]
    fn p2c_prefers_the_faster_of_two_and_spreads_over_three() {
        let (local, _) = ids();
        let set = Arc::new(PeerSet::new(local));
        let mut receivers = Vec::new();
        let fast_id = NodeIdentity::generate().node_id();
        let slow_id = NodeIdentity::generate().node_id();
        for (id, rtt, conn) in [(fast_id, 200, 1), (slow_id, 90_000, 2)] {
            let (h, rx) = handle(local, id, Direction::Outbound, conn, rtt);
            set.admit(h);
            receivers.push(rx);
        }
        let svc = set.service();
        for _ in 0..50 {
            assert_eq!(svc.pick().unwrap().info.node_id, fast_id);
        }
        let third = NodeIdentity::generate().node_id();
        let (h, rx) = handle(local, third, Direction::Outbound, 3, 5_000);
        set.admit(h);
        receivers.push(rx);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..3000 {
            *counts.entry(svc.pick().unwrap().info.node_id).or_insert(0) += 1;
        }
        // Fast wins whenever drawn (2/3), middle when drawn with slow (1/3),
        // slow never.
        assert!(
            counts[&fast_id] > 1800 && counts[&fast_id] < 2200,
            "{counts:?}"
        );
        assert!(counts[&third] > 800 && counts[&third] < 1200, "{counts:?}");
        assert!(!counts.contains_key(&slow_id));
    }
}
