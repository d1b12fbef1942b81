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

use crate::chain::state::Chain;
use crate::chain::sync::{Penalizer, SyncHandle, Syncer};
use crate::constants::{MAX_MEMPOOL_RESPONSE_BYTES, MAX_MEMPOOL_RESPONSE_TXS};
use crate::crypto::{NodeId, NodeIdentity};
use crate::handlers::{Handlers, Router};
use crate::layers::blacklist::{ip_key, Blacklist, PersistedBan};
use crate::layers::rate_limit::GossipScale;
use crate::layers::stack::{BuiltLayer, MiddlewareConfig, MiddlewareStack};
use crate::layers::{Inbound, Offence, PeerContext, ScoreHandle};
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

/// First delay before redialling a configured peer.
pub const REDIAL_INITIAL_DELAY: Duration = Duration::from_secs(5);
/// Largest delay between redials.
pub const REDIAL_MAX_DELAY: Duration = Duration::from_secs(300);
/// A session at least this long resets the redial delay.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Jitter: each delay is multiplied by a factor in this range.
pub const REDIAL_JITTER: (f64, f64) = (0.75, 1.25);
/// How often the housekeeping task prunes limiter and ban state.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// A peer to dial: an address and, optionally, the node id it must prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    /// Where to dial.
    pub addr: SocketAddr,
    /// The node id the peer must authenticate as, if known.
    pub node_id: Option<NodeId>,
}

impl fmt::Display for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => self.addr.fmt(f),
        }
    }
}

/// Error for a peer given as text.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer {0:?}: expected HOST:PORT or NODE_ID@HOST:PORT")]
pub struct InvalidPeerTarget(pub String);

impl FromStr for PeerTarget {
    type Err = InvalidPeerTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidPeerTarget(s.to_owned());
        let (node_id, addr) = match s.split_once('@') {
            Some((id, addr)) => (Some(id.parse().map_err(|_| bad())?), addr),
            None => (None, s),
        };
        Ok(PeerTarget {
            addr: addr.parse().map_err(|_| bad())?,
            node_id,
        })
    }
}

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

/// Node configuration (the full TOML config arrives with step 3).
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

/// Counts a connection slot and frees it on drop.
struct Slot {
    counter: Option<Arc<AtomicUsize>>,
    per_ip: Option<(IpCounts, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(counter) = &self.counter {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some((map, ip)) = &self.per_ip {
            let mut map = crate::sync::lock(map);
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

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
    /// Inbound handshakes in progress, oldest (lowest connection id)
    /// first, with the switch that evicts each.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
}

/// Removes a pending handshake from the registry when it ends, however it
/// ends.
struct PendingHandshake {
    inner: Arc<Inner>,
    conn_id: u64,
    evicted: CancellationToken,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        crate::sync::lock(&self.inner.pending).remove(&self.conn_id);
    }
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

    /// Wires `chain` to the node: votes and blocks are published as this
    /// node, bans persist in its store, and the producer and sync tasks
    /// run until shutdown.
    fn start_chain(&self, chain: Chain) {
        let weak = Arc::downgrade(&self.inner);
        let local_addr = self.local_addr;
        chain.set_publisher(Arc::new(move |kind, payload| {
            if let Some(inner) = weak.upgrade() {
                Node { inner, local_addr }.publish(kind, payload);
            }
        }));
        self.persist_bans(&chain);
        let weak = Arc::downgrade(&self.inner);
        let penalize: Penalizer = Arc::new(move |peer, offence: Offence| {
            if let Some(inner) = weak.upgrade() {
                penalize_peer(&inner, &peer.context, offence);
            }
        });
        let syncer = Syncer::new(
            chain.clone(),
            self.inner.peers.clone(),
            penalize,
            self.inner.sync.clone(),
        );
        tokio::spawn(syncer.run(self.inner.shutdown.clone()));
        tokio::spawn(produce_loop(
            chain,
            self.inner.peers.clone(),
            self.inner.shutdown.clone(),
        ));
    }

    /// Restores the bans stored in the chain's database, makes the stored
    /// list match the bans in force (expired ones and those the list had no
    /// room for are dropped), and hands every later change to the store's
    /// ban writer, which commits them in batches off the caller's path. An
    /// operator's change (`setban`, `clearbanned`) is waited for, so it is
    /// on disk when the RPC call returns; a ban the middleware makes is on
    /// disk within the writer's debounce (50 ms) and one commit.
    fn persist_bans(&self, chain: &Chain) {
        use crate::layers::blacklist::{BanChange, BanSink};
        use crate::storage::{BanWrite, BanWriter};

        /// Longest wait for an operator's change to reach the disk.
        const OPERATOR_SYNC: Duration = Duration::from_secs(5);

        fn stored(ban: PersistedBan) -> StoredBan {
            StoredBan {
                subnet: ban.subnet.to_string(),
                expires_unix: ban.expires_unix,
                reason: ban.reason,
            }
        }

        struct StoreSink(BanWriter);

        impl BanSink for StoreSink {
            fn changed(&self, change: BanChange) {
                self.0.send(match change {
                    BanChange::Set(ban) => BanWrite::Put(stored(ban)),
                    BanChange::Removed(subnet) => BanWrite::Delete(subnet.to_string()),
                    BanChange::Cleared => BanWrite::Clear,
                });
            }

            fn operator_changed(&self) {
                let wait = || self.0.sync(OPERATOR_SYNC);
                // The RPC handler runs on an async worker: hand the worker's
                // other tasks to another thread while waiting for the disk.
                let durable = match tokio::runtime::Handle::try_current() {
                    Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(wait)
                    }
                    _ => wait(),
                };
                if !durable {
                    tracing::warn!(
                        timeout_s = OPERATOR_SYNC.as_secs(),
                        "ban change not yet stored"
                    );
                }
            }
        }

        let blacklist = &self.inner.blacklist;
        let store = chain.store();
        // The sink before the restore, and the stored list rewritten through
        // the writer after it: a ban made meanwhile (connections are already
        // accepted) is neither lost nor overwritten.
        let list = Arc::downgrade(blacklist);
        let snapshot = move || {
            list.upgrade()
                .map(|b| b.persisted().into_iter().map(stored).collect())
        };
        let writer = match store.ban_writer(snapshot) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::error!(%error, "bans will not be stored");
                return;
            }
        };
        blacklist.set_sink(Arc::new(StoreSink(writer.clone())));
        match store.load_bans() {
            Ok(rows) => {
                let bans: Vec<PersistedBan> = rows
                    .into_iter()
                    .filter_map(|b| {
                        Some(PersistedBan {
                            subnet: b.subnet.parse().ok()?,
                            expires_unix: b.expires_unix,
                            reason: b.reason,
                        })
                    })
                    .collect();
                let restored = blacklist.restore(&bans);
                if restored > 0 {
                    tracing::info!(restored, "bans restored from the store");
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the stored bans"),
        }
        // Expired bans, and those the list had no room for, leave the store.
        writer.resync();
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
        crate::sync::read(&self.inner.stack).clone()
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
        self.middleware()
            .layers()
            .iter()
            .map(|l| match l {
                BuiltLayer::Scoring(s) => s.book().forgive(&pred),
                _ => 0,
            })
            .sum()
    }

    /// The half-life of peer scores (the scoring layer's, or its default).
    pub fn score_half_life(&self) -> Duration {
        self.middleware()
            .layers()
            .iter()
            .find_map(|l| match l {
                BuiltLayer::Scoring(s) => Some(s.config().half_life()),
                _ => None,
            })
            .unwrap_or_else(|| crate::layers::scoring::ScoringConfig::default().half_life())
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
        *crate::sync::write(&self.inner.stack) = stack;
        tracing::info!(middleware = %described, "middleware reloaded for new connections");
        described
    }

    /// Keeps `target` connected (redialling with backoff) until
    /// [`Node::remove_peer`]; false if it is already kept.
    pub fn add_peer(&self, target: PeerTarget) -> bool {
        let token = self.inner.shutdown.child_token();
        {
            let mut dialers = crate::sync::lock(&self.inner.dialers);
            if dialers.contains_key(&target.addr) {
                return false;
            }
            dialers.insert(target.addr, token.clone());
        }
        tokio::spawn(self.clone().dial_loop(target, token));
        true
    }

    /// Stops redialling the peer at `addr` (an established connection
    /// stays); false if it was not kept.
    pub fn remove_peer(&self, addr: SocketAddr) -> bool {
        let token = crate::sync::lock(&self.inner.dialers).remove(&addr);
        token.map(|t| t.cancel()).is_some()
    }

    /// The addresses whose peers are kept connected.
    pub fn kept_peers(&self) -> Vec<SocketAddr> {
        crate::sync::lock(&self.inner.dialers)
            .keys()
            .copied()
            .collect()
    }

    /// Closes the connections to peers whose node id or address matches;
    /// returns how many.
    pub fn disconnect(&self, matches: impl Fn(&PeerInfo) -> bool) -> usize {
        let mut n = 0;
        for handle in self.inner.peers.snapshot() {
            if matches(&handle.info) {
                handle.context.close(DisconnectReason::Shutdown);
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

    /// Sends `peer` (only) what the chain wants re-announced: the pooled
    /// transactions, parents first, and this masternode's own votes on
    /// them, each in a fresh envelope signed by this node. Signing runs off
    /// the async workers.
    fn announce_pool(&self, chain: &Chain, queue: &Arc<SendQueue>, peer: &Arc<PeerContext>) {
        let chain = chain.clone();
        let node = self.clone();
        let queue = queue.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let signed = tokio::task::spawn_blocking(move || {
                chain
                    .announcements(MAX_MEMPOOL_RESPONSE_TXS, MAX_MEMPOOL_RESPONSE_BYTES)
                    .into_iter()
                    .map(|(kind, payload)| node.sign(kind, payload))
                    .collect::<Vec<Envelope>>()
            })
            .await
            .unwrap_or_default();
            let count = signed.len();
            for envelope in signed {
                if !connection::enqueue(&queue, &peer, &Message::Gossip(envelope)) {
                    break;
                }
            }
            if count > 0 {
                tracing::debug!(peer = %peer.node_id, count, "pool announced to a new peer");
            }
        });
    }

    /// Signs `payload` as this node in a fresh envelope and marks its id as
    /// seen, so the echo from the network is dropped.
    fn sign(&self, kind: GossipKind, payload: Vec<u8>) -> Envelope {
        let timestamp_ms = crate::protocol::version::unix_now().as_millis() as u64;
        let magic = self.inner.config.handshake.version.network.magic();
        let envelope = Envelope::sign(&self.inner.identity, magic, kind, timestamp_ms, payload);
        let id = envelope.id();
        for layer in self.middleware().layers() {
            if let BuiltLayer::Dedup(dedup) = layer {
                if dedup.cache().reserve(id) {
                    dedup.cache().commit(id);
                }
            }
        }
        envelope
    }

    /// Dials `target` once; on success the connection runs in its own task.
    ///
    /// # Errors
    /// Why the connection could not be established.
    pub async fn connect(&self, target: &PeerTarget) -> Result<Arc<PeerInfo>, Arc<ConnectError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = self.clone();
        let target = target.clone();
        tokio::spawn(async move {
            node.outbound(&target, Some(tx)).await;
        });
        rx.await
            .unwrap_or_else(|_| Err(Arc::new(ConnectError::Closed)))
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

    /// The pre-handshake gate; returns the per-IP slot or why not.
    fn admit_inbound(&self, addr: SocketAddr) -> Result<Slot, &'static str> {
        let inner = &self.inner;
        let ip = addr.ip();
        if inner.blacklist.is_banned(ip) {
            return Err("banned");
        }
        let key = ip_key(ip);
        if inner.accept_limiter.check_key(&key).is_err() {
            return Err("accept_rate");
        }
        if inner.config.limits.max_inbound == 0 {
            return Err("max_inbound");
        }
        let mut per_ip = crate::sync::lock(&inner.per_ip);
        let count = per_ip.entry(key).or_insert(0);
        if *count >= inner.config.limits.max_per_ip {
            return Err("max_per_ip");
        }
        *count += 1;
        Ok(Slot {
            counter: None,
            per_ip: Some((inner.per_ip.clone(), key)),
        })
    }

    /// Registers the inbound handshake `conn_id` as pending; when
    /// `max_pending_handshakes` are already pending, the oldest is evicted
    /// to make room (see the module docs).
    fn register_pending(&self, conn_id: u64) -> PendingHandshake {
        let evicted = CancellationToken::new();
        let max = self.inner.config.limits.max_pending_handshakes.max(1);
        let mut pending = crate::sync::lock(&self.inner.pending);
        while pending.len() >= max {
            let Some((old, token)) = pending.pop_first() else {
                break;
            };
            token.cancel();
            metrics::counter!("timed_handshakes_total", "result" => "evicted").increment(1);
            if crate::logging::allow("handshake_evicted") {
                tracing::info!(
                    evicted.conn_id = old,
                    max_pending = max,
                    "pending handshakes full: evicting the oldest"
                );
            }
        }
        pending.insert(conn_id, evicted.clone());
        PendingHandshake {
            inner: self.inner.clone(),
            conn_id,
            evicted,
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => match self.admit_inbound(addr) {
                    Ok(slot) => {
                        let (conn_id, span) = self.span(addr, Direction::Inbound);
                        let pending = self.register_pending(conn_id);
                        let node = self.clone();
                        tokio::spawn(
                            async move {
                                let _slot = slot;
                                node.handle(
                                    stream,
                                    addr,
                                    Direction::Inbound,
                                    None,
                                    None,
                                    conn_id,
                                    Some(pending),
                                )
                                .await
                            }
                            .instrument(span),
                        );
                    }
                    Err(reason) => {
                        // Dropping the stream closes it before any byte is read.
                        drop(stream);
                        if crate::logging::allow_for("connection_refused", reason) {
                            tracing::info!(peer.addr = %addr, reason, "connection refused before the handshake");
                        }
                        metrics::counter!("timed_connections_refused_total", "reason" => reason)
                            .increment(1);
                        self.emit(NodeEvent::Refused { addr, reason });
                    }
                },
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    if crate::logging::allow("accept_failed") {
                        tracing::warn!(%error, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn housekeeping(self) {
        let mut ticker = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.inner.blacklist.prune();
            crate::logging::flush();
            for layer in self.middleware().layers() {
                if let BuiltLayer::RateLimit(l) = layer {
                    l.prune();
                }
            }
            self.inner.accept_limiter.retain_recent();
        }
    }

    /// True when already connected to the target (by node id or address).
    fn connected_to(&self, target: &PeerTarget) -> bool {
        match target.node_id {
            Some(id) => self.inner.peers.contains(&id),
            None => self.inner.peers.snapshot().iter().any(|h| {
                h.info.addr == target.addr
                    || h.info.version.listen_addr.map(SocketAddr::from) == Some(target.addr)
            }),
        }
    }

    async fn dial_loop(self, target: PeerTarget, stop: CancellationToken) {
        let mut backoff = Backoff::new();
        while !stop.is_cancelled() {
            if self.connected_to(&target) {
                // Connected the other way round: check again later.
                backoff.reset();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REDIAL_INITIAL_DELAY) => {}
                }
                continue;
            }
            self.emit(NodeEvent::DialAttempt {
                target: target.clone(),
            });
            let started = Instant::now();
            let established = self.outbound(&target, None).await;
            if established && started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            if stop.is_cancelled() {
                return;
            }
            let delay = backoff.next_delay();
            tracing::info!(peer = %target, delay_ms = delay.as_millis() as u64, "redialling later");
            self.emit(NodeEvent::DialRetry {
                target: target.clone(),
                retry_in: delay,
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens a TCP connection to `addr`. When the node listens on a specific
    /// IP, outbound connections leave from that IP too, so peers see one
    /// address per node (as with several nodes on 127.0.0.x).
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let local = self.inner.config.listen.ip();
        if local.is_unspecified() || local.is_ipv4() != addr.is_ipv4() {
            return TcpStream::connect(addr).await;
        }
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local, 0))?;
        socket.connect(addr).await
    }

    /// Dials and runs one outbound connection; true if it was established.
    async fn outbound(&self, target: &PeerTarget, report: Option<Report>) -> bool {
        let (conn_id, span) = self.span(target.addr, Direction::Outbound);
        async {
            let fail = |error: ConnectError, report: Option<Report>| {
                let error = Arc::new(error);
                tracing::info!(error = %error, error.kind = error.kind(), "dial failed");
                if let Some(report) = report {
                    let _ = report.send(Err(error));
                }
                false
            };
            let inner = &self.inner;
            if inner.outbound.load(Ordering::Relaxed) >= inner.config.limits.max_outbound {
                return fail(ConnectError::Limit("max_outbound"), report);
            }
            inner.outbound.fetch_add(1, Ordering::Relaxed);
            let _slot = Slot {
                counter: Some(inner.outbound.clone()),
                per_ip: None,
            };
            let stream =
                match tokio::time::timeout(inner.config.handshake.timeout, self.dial(target.addr))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return fail(ConnectError::Io(e), report),
                    Err(_) => {
                        return fail(
                            ConnectError::Timeout(inner.config.handshake.timeout),
                            report,
                        )
                    }
                };
            self.handle(
                stream,
                target.addr,
                Direction::Outbound,
                target.node_id,
                report,
                conn_id,
                None,
            )
            .await
        }
        .instrument(span)
        .await
    }

    /// Runs setup and then the connection; true if it was established.
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        direction: Direction,
        expected: Option<NodeId>,
        mut report: Option<Report>,
        conn_id: u64,
        pending: Option<PendingHandshake>,
    ) -> bool {
        let inner = &self.inner;
        let config = &inner.config;
        let evicted = pending
            .as_ref()
            .map(|p| p.evicted.clone())
            .unwrap_or_default();
        let setup = tokio::select! {
            _ = inner.shutdown.cancelled() => return false,
            _ = evicted.cancelled() => {
                // A newer socket took this pending slot (dropping the
                // stream closes it).
                return false;
            }
            r = establish(stream, direction, expected, &inner.keys, &config.handshake, self.best_height()) => r,
        };
        drop(pending);
        let conn = match setup {
            Ok(conn) => conn,
            Err(error) => {
                self.setup_failed(error, addr, direction, report);
                return false;
            }
        };
        let info = Arc::new(conn.info.clone());
        metrics::counter!("timed_handshakes_total", "result" => "ok").increment(1);
        tracing::Span::current().record("node.id", field::display(info.node_id));
        // The inbound limit counts authenticated connections only.
        let inbound_full = direction == Direction::Inbound
            && inner.inbound.load(Ordering::Relaxed) >= config.limits.max_inbound;
        let _established = (direction == Direction::Inbound && !inbound_full).then(|| {
            inner.inbound.fetch_add(1, Ordering::Relaxed);
            Slot {
                counter: Some(inner.inbound.clone()),
                per_ip: None,
            }
        });

        // The peer's context, stack, queue and client.
        let stack = self.middleware();
        let scoring = stack.layers().iter().find_map(|l| match l {
            BuiltLayer::Scoring(s) => Some(s.clone()),
            _ => None,
        });
        let score = scoring
            .as_ref()
            .map(|s| s.book().handle(info.node_id, addr.ip()))
            .unwrap_or_else(ScoreHandle::default);
        let context = Arc::new(PeerContext::new(
            info.node_id,
            addr,
            direction,
            conn_id,
            score,
        ));
        let queue = Arc::new(SendQueue::new(config.send_queue_bytes));
        let (request_tx, request_rx) = mpsc::channel(1);
        let client = Client::new(request_tx, context.clone());
        let handle = Arc::new(crate::peer::set::PeerHandle {
            info: info.clone(),
            context: context.clone(),
            client,
            queue: queue.clone(),
        });
        if inbound_full {
            // Said with a Disconnect after our Version (the connection task
            // sends it and ends at once).
            metrics::counter!("timed_connections_refused_total", "reason" => "max_inbound")
                .increment(1);
            if crate::logging::allow("inbound_full") {
                tracing::info!(
                    max_inbound = config.limits.max_inbound,
                    "inbound connections full: refusing"
                );
            }
            context.close_with(
                DisconnectReason::TooManyPeers,
                format!("{} inbound connections already", config.limits.max_inbound),
            );
        }
        let refused_by_score =
            inbound_full || scoring.as_ref().is_some_and(|s| !s.readmit(&context));
        if refused_by_score {
            // The context is closed: the connection task says goodbye and
            // ends at once; the peer never enters the set.
            if let Some(report) = report.take() {
                let _ = report.send(Err(Arc::new(ConnectError::Limit(if inbound_full {
                    "max_inbound"
                } else {
                    "score below the disconnect threshold"
                }))));
            }
        }
        let admission = if refused_by_score {
            Admission::Refused
        } else {
            inner.peers.admit(handle)
        };
        let admitted = !matches!(admission, Admission::Refused);
        match admission {
            Admission::Admitted => {}
            Admission::Replaced(old) => {
                tracing::info!(
                    old.conn_id = old.context.conn_id,
                    "replacing a duplicate connection"
                );
                old.context.close(DisconnectReason::Duplicate);
            }
            Admission::Refused if refused_by_score => {}
            Admission::Refused => {
                tracing::info!("already connected to this node: closing the duplicate");
                context.close(DisconnectReason::Duplicate);
                if let Some(report) = report.take() {
                    let _ = report.send(Err(Arc::new(ConnectError::Duplicate(info.node_id))));
                }
                // Run the connection anyway so it says goodbye properly.
            }
        }
        if crate::logging::allow("peer_connected") {
            tracing::info!(
                user_agent = %info.version.user_agent,
                best_height = info.version.best_height,
                capabilities = info.version.capabilities,
                "peer connected"
            );
        }
        self.emit(NodeEvent::Connected(info.clone()));
        if let (Some(chain), true) = (&config.chain, admitted) {
            if info.version.best_height > chain.tip().height {
                chain.saw_height(info.version.best_height);
                inner.sync.wake();
            }
            // What we hold that the peer may have missed (our pool after a
            // restart, payments made while we had no peers).
            self.announce_pool(chain, &queue, &context);
        }
        let stack = stack.wrap(BoxCloneService::new(inner.router.clone()));
        let parts = ConnectionParts {
            conn,
            context: context.clone(),
            stack,
            queue,
            requests: request_rx,
            scoring,
        };
        if let Some(report) = report {
            let _ = report.send(Ok(info.clone()));
        }
        let events = inner.events.clone();
        let error = connection::run(
            parts,
            config.connection.clone(),
            move |e| {
                let _ = events.send(NodeEvent::Connection(e));
            },
            inner.shutdown.clone(),
        )
        .await;
        inner.peers.remove(info.node_id, conn_id);
        if direction == Direction::Inbound && error.is_misbehaviour() {
            inner.blacklist.record_violation(addr.ip(), error.kind());
        }
        if crate::logging::allow_for("peer_disconnected", error.kind()) {
            match &error {
                ConnectionError::Shutdown
                | ConnectionError::Closed
                | ConnectionError::Policy(DisconnectReason::Duplicate)
                | ConnectionError::PeerDisconnected {
                    reason: DisconnectReason::Shutdown | DisconnectReason::Duplicate,
                    ..
                } => {
                    tracing::info!(reason = %error, reason.kind = error.kind(), "peer disconnected")
                }
                _ => tracing::warn!(error = %error, error.kind = error.kind(), "peer disconnected"),
            }
        }
        self.emit(NodeEvent::Disconnected {
            peer: info,
            error: Arc::new(error),
        });
        true
    }

    fn setup_failed(
        &self,
        error: ConnectError,
        addr: SocketAddr,
        direction: Direction,
        report: Option<Report>,
    ) {
        let error = Arc::new(error);
        if crate::logging::allow_for("handshake_failed", error.kind()) {
            tracing::warn!(error = %error, error.kind = error.kind(), "handshake failed");
        }
        metrics::counter!("timed_handshakes_total", "result" => error.kind()).increment(1);
        if direction == Direction::Inbound && error.is_misbehaviour() {
            self.inner
                .blacklist
                .record_violation(addr.ip(), error.kind());
        }
        self.emit(NodeEvent::HandshakeFailed {
            addr,
            direction,
            error: error.clone(),
        });
        if let Some(report) = report {
            let _ = report.send(Err(error));
        }
    }
}

/// Charges `offence` to a connected peer through the scoring layer of the
/// current stack (which disconnects or bans at its thresholds).
fn penalize_peer(inner: &Inner, peer: &PeerContext, offence: Offence) {
    let stack = crate::sync::read(&inner.stack).clone();
    for layer in stack.layers() {
        if let BuiltLayer::Scoring(scoring) = layer {
            scoring.penalize(peer, offence);
        }
    }
}

/// Penalises the masternode with key `voter` if it is connected: it signed
/// accept votes for two transactions spending one output.
fn penalize_masternode(inner: &Inner, voter: [u8; 32]) {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&voter) else {
        return;
    };
    if let Some(handle) = inner.peers.get(&NodeId::from_public_key(&key)) {
        tracing::warn!(peer = %handle.info.node_id, "penalising an equivocating masternode");
        penalize_peer(inner, &handle.context, Offence::InvalidData);
    }
}

/// Produces this node's blocks in its slots until `shutdown`.
///
/// Checks the clock ten times per slot (at most every second, at least
/// every 50 ms), so a block comes within a tenth of a slot of its start.
///
/// # Correctness
/// A masternode of a multi-masternode chain does not produce while it has
/// no peer (alone, it would only build a branch the others abandon) or
/// while it is behind the best height it heard of (it would fork off a
/// stale tip).
async fn produce_loop(chain: Chain, peers: Arc<PeerSet>, shutdown: CancellationToken) {
    if !chain.is_masternode() {
        return;
    }
    let interval = chain.genesis().block_interval_secs;
    let tick = Duration::from_millis((interval * 100).clamp(50, 1000));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let alone = peers.is_empty() && chain.genesis().masternodes().len() > 1;
        if alone || chain.tip().height < chain.best_seen() {
            continue;
        }
        let now = crate::protocol::version::unix_now().as_secs();
        if let Err(error) = chain.produce_if_scheduled(now) {
            tracing::error!(%error, "cannot produce a block");
        }
    }
}

/// The redial schedule: 5 s doubling to 300 s, times a random factor in
/// [0.75, 1.25); [`Backoff::reset`] after a healthy session.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A fresh schedule.
    pub fn new() -> Self {
        Backoff {
            base: REDIAL_INITIAL_DELAY,
        }
    }

    /// The next delay (with jitter); the base doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let factor = rand::thread_rng().gen_range(REDIAL_JITTER.0..REDIAL_JITTER.1);
        let delay = self.base.mul_f64(factor);
        self.base = (self.base * 2).min(REDIAL_MAX_DELAY);
        delay
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.base = REDIAL_INITIAL_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_targets_parse() {
        let t: PeerTarget = "127.0.0.2:24200".parse().unwrap();
        assert_eq!(t.node_id, None);
        let id = NodeIdentity::generate().node_id();
        let t: PeerTarget = format!("{id}@127.0.0.2:24200").parse().unwrap();
        assert_eq!(t.node_id, Some(id));
        assert_eq!(t.to_string().parse::<PeerTarget>().unwrap(), t);
        assert!("nope".parse::<PeerTarget>().is_err());
        assert!("zz@127.0.0.1:1".parse::<PeerTarget>().is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new();
        let mut base = 5.0f64;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64();
            assert!(d >= base * 0.75 - 1e-9 && d < base * 1.25, "{d} vs {base}");
            base = (base * 2.0).min(300.0);
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_secs(7));
    }
}
