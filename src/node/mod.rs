//! The node: the listener with its pre-handshake gate, dialers for
//! configured peers, one task per connection, the peer set and the
//! middleware stack.
//!
//! # Inbound connections
//! 1. Pre-handshake gate, before a single byte is read: the ban list (IPs,
//!    IPv6 /64s and subnets), the accept rate per IP and the per-IP limit.
//!    A refused socket is closed at once.
//! 2. Noise and version exchange under one deadline (`peer::handshake`), as
//!    one of at most `max_pending_handshakes` pending handshakes.
//! 3. The inbound limit (established connections only) and one connection
//!    per node id (see [`crate::peer::set`]).
//! 4. The connection task runs the peer's messages through a middleware
//!    stack built for it from the config.
//!
//! # Security
//! Unauthenticated sockets cannot hold the slots honest peers need: a
//! connection counts against `max_inbound` only once it has authenticated,
//! and pending handshakes have their own bound. When that bound is reached,
//! a new socket evicts the *oldest* pending handshake instead of being
//! refused: a flood of sockets that never send a byte (or stall after the
//! first Noise message) then only shortens how long each stalled socket
//! lives, while an honest handshake, which completes in a few round trips,
//! gets through. Lines a remote party can trigger are rate-limited
//! ([`crate::logging`]).
//!
//! Misbehaviour during setup (garbage, forged identity, stalling, broken
//! frames) and on the wire counts as a violation of the peer's IP in the
//! ban list, whose escalation bans repeat offenders.
//!
//! # Outbound connections
//! Each configured peer has a dialer that keeps it connected: after a
//! failure or a disconnect it waits 5 s, doubling to at most 300 s, each
//! delay multiplied by a random factor in [0.75, 1.25) so that restarts do
//! not synchronise; a session that lasted at least 60 s resets the delay.
//!
//! Every connection runs inside a tracing span `conn` with the fields
//! `conn.id`, `peer.addr`, `direction` and (once authenticated) `node.id`.

mod accept;
mod chain;
mod dial;
mod setup;

use accept::{PendingHandshake, Slot};
use chain::penalize_masternode;

pub use dial::{
    Backoff, InvalidPeerTarget, PeerTarget, HEALTHY_SESSION, REDIAL_INITIAL_DELAY, REDIAL_JITTER,
    REDIAL_MAX_DELAY,
};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota};
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;
use tracing::{field, Instrument};

use crate::state::Chain;
use crate::sync::{Penalizer, SyncHandle, Syncer};
use crate::constants::{MAX_MEMPOOL_RESPONSE_BYTES, MAX_MEMPOOL_RESPONSE_TXS};
use crate::crypto::{NodeId, NodeIdentity};
use crate::handlers::{Handlers, Router};
use crate::layers::blacklist::{ip_key, Blacklist, PersistedBan};
use crate::layers::rate_limit::GossipScale;
use crate::layers::stack::{BuiltLayer, MiddlewareConfig, MiddlewareStack};
use crate::peer::{Inbound, Offence, PeerContext};
use crate::peer::client::Client;
use crate::peer::connection::{
    self, ConnectionConfig, ConnectionError, ConnectionEvent, ConnectionParts,
};
use crate::peer::handshake::{establish, ConnectError, Direction, HandshakeConfig, PeerInfo};
use crate::peer::queue::{SendQueue, DEFAULT_QUEUE_BYTES};
use crate::peer::set::{Admission, PeerSet};
use crate::protocol::message::capabilities;
use crate::protocol::{DisconnectReason, Envelope, GossipKind, Message, MessageId};
use crate::storage::StoredBan;
use crate::transport::noise::{CryptoBackend, HandshakeError, LocalKeys};

/// Capacity of the event channel; slow observers miss events rather than
/// slowing the node.
const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Connection limits of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most established (authenticated) inbound connections.
    pub max_inbound: usize,
    /// Most inbound handshakes in progress; a new one evicts the oldest.
    pub max_pending_handshakes: usize,
    /// Most outbound connections.
    pub max_outbound: usize,
    /// Most inbound connections from one IP (IPv6: one /64).
    pub max_per_ip: usize,
    /// Accepted connections per IP per minute, before the handshake.
    pub accepts_per_ip_per_minute: u32,
}

impl Default for ConnectionLimits {
    /// Zebra targets 25 peers (×5 inbound), CometBFT 40 inbound / 10
    /// outbound, Bitcoin ~114 inbound / 10 outbound. 64 inbound and 16
    /// outbound keep a small network well meshed on modest hardware; 4 per
    /// IP lets a few nodes share a NAT while one host cannot fill the slots.
    fn default() -> Self {
        ConnectionLimits {
            max_inbound: 64,
            max_pending_handshakes: crate::constants::DEFAULT_MAX_PENDING_HANDSHAKES,
            max_outbound: 16,
            max_per_ip: 4,
            accepts_per_ip_per_minute: 30,
        }
    }
}

/// Node configuration (built from the TOML config by `Config::node_config`).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Peers to dial and keep dialling.
    pub peers: Vec<PeerTarget>,
    /// Connection setup parameters.
    pub handshake: HandshakeConfig,
    /// Established-connection parameters.
    pub connection: ConnectionConfig,
    /// snow's crypto backend.
    pub backend: CryptoBackend,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// The middleware stack, outermost first.
    pub middleware: Vec<MiddlewareConfig>,
    /// Byte budget of each peer's send queue.
    pub send_queue_bytes: usize,
    /// The chain this node follows, validates, stores and serves; `None`
    /// for a network-only node (gossip is accepted and counted).
    pub chain: Option<Chain>,
    /// What the gossip budgets of `rate_limit` are sized for (taken from
    /// the chain when there is one).
    pub gossip: GossipScale,
}

impl NodeConfig {
    /// Defaults for a node listening on `listen` with `handshake`.
    pub fn new(listen: SocketAddr, handshake: HandshakeConfig) -> Self {
        NodeConfig {
            listen,
            peers: Vec::new(),
            handshake,
            connection: ConnectionConfig::default(),
            backend: CryptoBackend::default(),
            limits: ConnectionLimits::default(),
            middleware: MiddlewareConfig::default_stack(),
            send_queue_bytes: DEFAULT_QUEUE_BYTES,
            chain: None,
            gossip: GossipScale::default(),
        }
    }
}

/// Something the node did, for observers.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// An inbound socket was closed by the pre-handshake gate.
    Refused {
        /// The remote address.
        addr: SocketAddr,
        /// `banned`, `accept_rate`, `max_inbound` or `max_per_ip`.
        reason: &'static str,
    },
    /// A connection completed Noise, the version exchange and admission.
    Connected(Arc<PeerInfo>),
    /// Connection setup failed.
    HandshakeFailed {
        /// The remote address.
        addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
        /// Why.
        error: Arc<ConnectError>,
    },
    /// An established connection ended.
    Disconnected {
        /// The peer.
        peer: Arc<PeerInfo>,
        /// Why.
        error: Arc<ConnectionError>,
    },
    /// A dialer is about to dial.
    DialAttempt {
        /// The target.
        target: PeerTarget,
    },
    /// A dialer's connection failed or ended; it retries after `retry_in`.
    DialRetry {
        /// The target.
        target: PeerTarget,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// A handler accepted a new envelope (before it was relayed).
    Delivered {
        /// The envelope's id.
        id: MessageId,
        /// Its kind.
        kind: GossipKind,
        /// The peer that delivered it.
        from: NodeId,
    },
    /// Something happened on an established connection.
    Connection(ConnectionEvent),
}

/// Errors starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The Noise keys could not be created.
    #[error(transparent)]
    Keys(#[from] HandshakeError),
}

/// Inbound connections per IP key.
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Where `connect` learns how its dial ended.
type Report = tokio::sync::oneshot::Sender<Result<Arc<PeerInfo>, Arc<ConnectError>>>;

struct Inner {
    identity: NodeIdentity,
    sync: SyncHandle,
    keys: LocalKeys,
    config: NodeConfig,
    stack: RwLock<Arc<MiddlewareStack>>,
    blacklist: Arc<Blacklist>,
    dialers: Mutex<HashMap<SocketAddr, CancellationToken>>,
    started: Instant,
    peers: Arc<PeerSet>,
    router: Router,
    events: broadcast::Sender<NodeEvent>,
    shutdown: CancellationToken,
    next_conn_id: AtomicU64,
    inbound: Arc<AtomicUsize>,
    outbound: Arc<AtomicUsize>,
    per_ip: IpCounts,
    accept_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Node-wide budget of pool announcements to new peers.
    announce_limiter: governor::DefaultDirectRateLimiter,
    /// Inbound handshakes in progress, oldest (lowest connection id)
    /// first, with the switch that evicts each.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
}

/// A running node. Clones share it; call [`Node::shutdown`] to stop it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.inner.keys.node_id())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Binds the listener, starts accepting and dials the configured peers.
    ///
    /// # Errors
    /// [`NodeError::Bind`] if the listen address is unavailable.
    pub async fn start(identity: &NodeIdentity, mut config: NodeConfig) -> Result<Node, NodeError> {
        let version = &mut config.handshake.version;
        version.capabilities |= capabilities::RELAY;
        if let Some(chain) = &config.chain {
            // Peers must follow the same genesis: the chain's, whatever the
            // version parameters said.
            version.genesis_hash = chain.genesis_hash();
            // This node serves blocks and its mempool, and votes if it is a
            // masternode; peers ask only what is announced here.
            version.capabilities |= capabilities::FULL_NODE;
            if chain.is_masternode() {
                version.capabilities |= capabilities::MASTERNODE;
            }
            config.gossip = GossipScale {
                masternodes: chain.genesis().masternodes().len().max(1),
                mempool_max_txs: chain.mempool_max_txs(),
            };
        }
        let keys = LocalKeys::new(identity, config.backend)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        // Listening on port 0 (any free port): announce the port we got.
        if let Some(announced) = config.handshake.version.listen_addr.as_mut() {
            if announced.port == 0 {
                announced.port = local_addr.port();
            }
        }
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let stack = MiddlewareStack::build(
            &config.middleware,
            config.handshake.version.network.magic(),
            config.gossip,
        );
        let blacklist = stack.blacklist().clone();
        let peers = Arc::new(PeerSet::new(identity.node_id()));
        let hook_events = events.clone();
        let sync = SyncHandle::default();
        let node_cell: Arc<std::sync::OnceLock<std::sync::Weak<Inner>>> = Arc::default();
        let handlers = match &config.chain {
            Some(chain) => {
                let node_cell = node_cell.clone();
                Handlers::chain(
                    chain.clone(),
                    peers.clone(),
                    sync.clone(),
                    Some(Arc::new(move |voter: [u8; 32]| {
                        if let Some(inner) = node_cell.get().and_then(std::sync::Weak::upgrade) {
                            penalize_masternode(&inner, voter);
                        }
                    })),
                )
            }
            None => Handlers::minimal(peers.clone()),
        };
        let router = Router::new(
            handlers,
            Some(peers.clone()),
            Some(Arc::new(move |request: &Inbound| {
                if let Message::Gossip(envelope) = &*request.message {
                    let _ = hook_events.send(NodeEvent::Delivered {
                        id: envelope.id(),
                        kind: envelope.kind,
                        from: request.peer.node_id,
                    });
                }
            })),
        );
        let accept_quota = Quota::per_minute(
            NonZeroU32::new(config.limits.accepts_per_ip_per_minute).unwrap_or(NonZeroU32::MIN),
        );
        let node = Node {
            inner: Arc::new(Inner {
                identity: identity.clone(),
                sync,
                keys,
                stack: RwLock::new(Arc::new(stack)),
                blacklist,
                dialers: Mutex::new(HashMap::new()),
                started: Instant::now(),
                peers,
                router,
                events,
                shutdown: CancellationToken::new(),
                next_conn_id: AtomicU64::new(1),
                inbound: Arc::new(AtomicUsize::new(0)),
                outbound: Arc::new(AtomicUsize::new(0)),
                per_ip: Arc::new(Mutex::new(HashMap::new())),
                accept_limiter: DefaultKeyedRateLimiter::keyed(accept_quota),
                announce_limiter: governor::DefaultDirectRateLimiter::direct(Quota::per_minute(
                    NonZeroU32::new(crate::constants::POOL_ANNOUNCEMENTS_PER_MINUTE)
                        .unwrap_or(NonZeroU32::MIN),
                )),
                pending: Mutex::new(BTreeMap::new()),
                config,
            }),
            local_addr,
        };
        tracing::info!(
            node.id = %node.node_id(),
            listen = %local_addr,
            network = %node.inner.config.handshake.version.network,
            middleware = %node.middleware().describe(),
            "listening for peers"
        );
        tokio::spawn(node.clone().accept_loop(listener));
        tokio::spawn(node.clone().housekeeping());
        let _ = node_cell.set(Arc::downgrade(&node.inner));
        if let Some(chain) = node.inner.config.chain.clone() {
            node.start_chain(chain);
        }
        for target in node.inner.config.peers.clone() {
            node.add_peer(target);
        }
        Ok(node)
    }

    /// The chain, if this node follows one.
    pub fn chain(&self) -> Option<&Chain> {
        self.inner.config.chain.as_ref()
    }

    /// The tip height announced to peers.
    fn best_height(&self) -> u64 {
        self.chain().map_or(0, |c| c.tip().height)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.keys.node_id()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Subscribes to the node's events.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// The connected peers.
    pub fn peers(&self) -> &Arc<PeerSet> {
        &self.inner.peers
    }

    /// The middleware stack new connections get.
    pub fn middleware(&self) -> Arc<MiddlewareStack> {
        crate::locks::read(&self.inner.stack).clone()
    }

    /// The node-wide ban list.
    pub fn blacklist(&self) -> &Arc<Blacklist> {
        &self.inner.blacklist
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Resets the negative scores of peers last seen from an IP matching
    /// `pred` (the operator lifted their bans); returns how many.
    pub fn forgive_scores(&self, pred: impl Fn(IpAddr) -> bool) -> usize {
        self.middleware().judge().book().forgive(&pred)
    }

    /// The half-life of peer scores (the scoring layer's, or its default).
    pub fn score_half_life(&self) -> Duration {
        self.middleware().judge().config().half_life()
    }

    /// How long the node has been running.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Rebuilds the middleware stack from `configs` for connections made
    /// from now on; established connections keep the stack they started
    /// with. Bans survive (the ban list is shared); scores, rate-limit and
    /// dedup state start afresh with the new layers.
    pub fn reload_middleware(&self, configs: &[MiddlewareConfig]) -> String {
        let magic = self.inner.config.handshake.version.network.magic();
        let stack = Arc::new(MiddlewareStack::build_with_blacklist(
            configs,
            magic,
            self.inner.config.gossip,
            self.inner.blacklist.clone(),
        ));
        let described = stack.describe();
        *crate::locks::write(&self.inner.stack) = stack;
        tracing::info!(middleware = %described, "middleware reloaded for new connections");
        described
    }

    /// Closes the connections to peers whose node id or address matches;
    /// returns how many.
    pub fn disconnect(&self, matches: impl Fn(&PeerInfo) -> bool) -> usize {
        self.disconnect_with(DisconnectReason::Shutdown, matches)
    }

    /// Like [`Node::disconnect`], telling the peers `reason` (e.g.
    /// `Banned` for a peer the operator just banned).
    pub fn disconnect_with(
        &self,
        reason: DisconnectReason,
        matches: impl Fn(&PeerInfo) -> bool,
    ) -> usize {
        let mut n = 0;
        for handle in self.inner.peers.snapshot() {
            if matches(&handle.info) {
                handle.context.close(reason);
                n += 1;
            }
        }
        n
    }

    /// Stops accepting, closes every connection (with a `Disconnect`
    /// message) and stops redialling.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Signs `payload` as this node and gossips it to every peer. The id is
    /// marked as seen so the echo from the network is dropped.
    pub fn publish(&self, kind: GossipKind, payload: Vec<u8>) -> MessageId {
        let envelope = self.sign(kind, payload);
        let id = envelope.id();
        let sent = self.inner.peers.broadcast(&Message::Gossip(envelope), None);
        tracing::debug!(%id, kind = kind.name(), peers = sent, "published");
        id
    }

    fn emit(&self, event: NodeEvent) {
        // No subscriber is not an error.
        let _ = self.inner.events.send(event);
    }

    fn span(&self, addr: SocketAddr, direction: Direction) -> (u64, tracing::Span) {
        let id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            conn.id = id,
            peer.addr = %addr,
            direction = direction.as_str(),
            node.id = field::Empty,
        );
        (id, span)
    }
}
