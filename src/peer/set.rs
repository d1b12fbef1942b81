//! The set of connected peers: one connection per node id, broadcast for
//! gossip, and the changes that feed the request balancer (tower's
//! power-of-two-choices over a peak-EWMA load, see [`super::balance`]).
//!
//! # One connection per node id
//! When a second connection to a node id arrives, both sides keep the
//! connection *dialed by the node with the smaller node id*; if both
//! connections were dialed by the same side (a reconnect racing a stale
//! connection), the newer one wins. Both ends evaluate the same rule on the
//! same facts, so simultaneous dials converge on one connection without
//! negotiation; the loser is closed with `Disconnect(Duplicate)`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;

use super::balance::{Feed, PeerDiscover, PeerSetService};
use super::client::Client;
use super::connection::{enqueue_encoded, priority_of};
use super::handshake::{Direction, PeerInfo};
use super::queue::SendQueue;
use crate::crypto::NodeId;
use crate::peer::PeerContext;
use crate::protocol::codec::encode_message;
use crate::protocol::{Message, PeerAddress};

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
    /// Why the connection exists.
    pub kind: ConnectionType,
}

/// Why a connection exists (Bitcoin's connection types, as far as they
/// apply here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    /// The peer dialled us.
    Inbound,
    /// A peer the operator named (`[p2p] peers`, RPC `addnode`), kept
    /// connected whatever its quality.
    Manual,
    /// Dialled by the connection manager from the address book.
    OutboundFull,
    /// A short connection to test a new address; closed after the
    /// handshake.
    Feeler,
    /// An outbound peer saved at the last shutdown, dialled first.
    Anchor,
}

impl ConnectionType {
    /// A short stable name, for `getpeerinfo`, logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Inbound => "inbound",
            ConnectionType::Manual => "manual",
            ConnectionType::OutboundFull => "outbound-full",
            ConnectionType::Feeler => "feeler",
            ConnectionType::Anchor => "anchor",
        }
    }

    /// Who dialled.
    pub const fn direction(self) -> Direction {
        match self {
            ConnectionType::Inbound => Direction::Inbound,
            _ => Direction::Outbound,
        }
    }

    /// Whether the connection manager counts it toward its outbound
    /// target (automatic full-relay outbound connections).
    pub const fn is_automatic_outbound(self) -> bool {
        matches!(self, ConnectionType::OutboundFull | ConnectionType::Anchor)
    }
}

impl PeerHandle {
    /// Encodes and queues `message` for this peer (closing it if its queue
    /// is full); false if it could not be queued.
    pub fn send(&self, message: &Message) -> bool {
        crate::peer::connection::enqueue(&self.queue, &self.context, message)
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
    /// The discovery streams of the request balancers, told of every
    /// admission and removal while the `peers` lock is held (so each sees
    /// the changes in the set's order).
    feeds: Mutex<Vec<Weak<Feed>>>,
    /// One request balancer per capability mask, created on first use.
    services: Mutex<HashMap<u64, PeerSetService>>,
}

impl PeerSet {
    /// An empty set for the node `local`.
    pub fn new(local: NodeId) -> Self {
        PeerSet {
            local,
            peers: RwLock::new(HashMap::new()),
            feeds: Mutex::new(Vec::new()),
            services: Mutex::new(HashMap::new()),
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
            self.tell_feeds(|feed| feed.inserted(&handle));
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
            self.tell_feeds(|feed| feed.inserted(&handle));
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
            self.tell_feeds(|feed| feed.removed(node_id));
        }
    }

    /// Tells every live balancer feed of a change (the caller holds the
    /// `peers` write lock); forgets the feeds of dropped balancers.
    fn tell_feeds(&self, tell: impl Fn(&Feed)) {
        crate::locks::lock(&self.feeds).retain(|feed| match feed.upgrade() {
            Some(feed) => {
                tell(&feed);
                true
            }
            None => false,
        });
    }

    /// A `tower::discover::Discover` stream of the peers that announced
    /// every bit of `capabilities`: the connected ones first, then each
    /// admission and removal (coalesced per node id, see
    /// [`super::balance`]).
    pub fn discover(&self, capabilities: u64) -> PeerDiscover {
        let peers = self.read();
        let feed = Arc::new(Feed::new(capabilities, peers.values().cloned()));
        crate::locks::lock(&self.feeds).push(Arc::downgrade(&feed));
        drop(peers);
        PeerDiscover::new(feed)
    }

    /// The request service over the peers that announced every bit of
    /// `capabilities` (e.g. `FULL_NODE` for chain data): tower's p2c
    /// balancer with retries on other peers (see [`PeerSetService`]). All
    /// callers asking for one mask share one balancer, so its loads see all
    /// their requests.
    pub fn service(self: &Arc<Self>, capabilities: u64) -> PeerSetService {
        crate::locks::lock(&self.services)
            .entry(capabilities)
            .or_insert_with(|| PeerSetService::new(self, capabilities))
            .clone()
    }

    /// True when a connected peer announcing `capabilities` is not in
    /// `exclude`.
    pub fn has_eligible(&self, capabilities: u64, exclude: &HashSet<NodeId>) -> bool {
        self.read().values().any(|h| {
            h.info.version.capabilities & capabilities == capabilities
                && !exclude.contains(&h.info.node_id)
                && !h.client.is_closed()
        })
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::NodeIdentity;
    use crate::params::Network;
    use crate::peer::client::ClientRequest;
    use crate::peer::ScoreHandle;
    use crate::protocol::VersionParams;
    use std::net::SocketAddr;
    use tokio::sync::mpsc;

    /// A peer handle over a channel-backed client: the test holds the
    /// connection's end of the request channel.
    pub(crate) fn handle(
        local: NodeId,
        remote: NodeId,
        direction: Direction,
        conn_id: u64,
    ) -> (Arc<PeerHandle>, mpsc::Receiver<ClientRequest>) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + conn_id as u16));
        let context = Arc::new(PeerContext::new(
            remote,
            addr,
            direction,
            conn_id,
            ScoreHandle::default(),
        ));
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
                kind: match direction {
                    Direction::Inbound => ConnectionType::Inbound,
                    Direction::Outbound => ConnectionType::Manual,
                },
            }),
            rx,
        )
    }

    pub(crate) fn ids() -> (NodeId, NodeId) {
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
            let (out, _r1) = handle(small, large, Direction::Outbound, 1);
            let (inb, _r2) = handle(small, large, Direction::Inbound, 2);
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
        let (out, _r1) = handle(large, small, Direction::Outbound, 3);
        let (inb, _r2) = handle(large, small, Direction::Inbound, 4);
        set.admit(out);
        assert!(matches!(set.admit(inb), Admission::Replaced(_)));
        assert_eq!(set.get(&small).unwrap().context.conn_id, 4);
        // Same dialer twice (a reconnect): the newer one wins.
        let (again, _r3) = handle(large, small, Direction::Inbound, 5);
        assert!(matches!(set.admit(again), Admission::Replaced(_)));
        set.remove(small, 4);
        assert!(
            set.contains(&small),
            "removing a replaced connection keeps the new one"
        );
        set.remove(small, 5);
        assert!(set.is_empty());
    }
}
