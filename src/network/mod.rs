//! The network service: the listener with its pre-handshake gate, dialers
//! for configured peers, one task per connection, the peer set and the
//! middleware stack.
//!
//! The network knows nothing of the chain. The application hands it an
//! inbound service (the router over its handlers, see [`Network::start`]),
//! a [`PeerObserver`] told about every admitted peer, and data: the best
//! height for `Version` messages through a `watch` channel, and the
//! capabilities and genesis hash in the version parameters.
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
pub mod address_book;
mod dial;
pub mod diversity;
pub mod eviction;
mod manager;
mod pex;
pub mod quality;
mod selection;
mod setup;

pub use pex::{AddressPolicy, PexHandler};
pub use selection::{NEUTRAL_QUALITY, ROTATION_INTERVAL};

use accept::{PendingHandshake, Slot};
use address_book::AddressBook;

pub use dial::{
    Backoff, InvalidPeerTarget, PeerTarget, HEALTHY_SESSION, REDIAL_INITIAL_DELAY, REDIAL_JITTER,
    REDIAL_MAX_DELAY,
};

use std::collections::{BTreeMap, HashMap, HashSet};
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
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::{BoxCloneService, BoxCloneSyncService};
use tower::BoxError;
use tracing::{field, Instrument};

use crate::crypto::{NodeId, NodeIdentity};
use crate::layers::blacklist::{ip_key, Blacklist};
use crate::layers::rate_limit::GossipScale;
use crate::layers::stack::{MiddlewareConfig, MiddlewareStack};
use crate::peer::client::Client;
use crate::peer::connection::{
    self, ConnectionConfig, ConnectionError, ConnectionEvent, ConnectionParts,
};
use crate::peer::handshake::{establish, ConnectError, Direction, HandshakeConfig, PeerInfo};
use crate::peer::queue::{SendQueue, DEFAULT_QUEUE_BYTES};
use crate::peer::set::{Admission, ConnectionType, PeerHandle, PeerSet};
use crate::peer::{Inbound, Offence, PeerContext};
use crate::protocol::message::capabilities;
use crate::protocol::{DisconnectReason, Envelope, GossipKind, Message, MessageId};
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
    /// Floor of the dynamic inbound cap (`[p2p] min_peers`).
    pub min_peers: usize,
    /// Most connections in all (`[p2p] max_peers`): inbound connections
    /// are capped at this minus the outbound ones.
    pub max_peers: usize,
    /// Automatic outbound connections the connection manager keeps.
    pub target_outbound: usize,
}

impl Default for ConnectionLimits {
    /// Zebra targets 25 peers (×5 inbound), CometBFT 40 inbound / 10
    /// outbound, Bitcoin ~114 inbound / 10 outbound. 50 peers in all (the
    /// old TIME Coin node's upper bound), of them 8 automatic outbound
    /// (Bitcoin's count, see [`crate::constants::DEFAULT_TARGET_OUTBOUND`])
    /// and so 42 inbound, keep a small network well meshed on modest
    /// hardware; up to 16 outbound leaves room for manual peers and
    /// feelers; 4 per IP lets a few nodes share a NAT while one host cannot
    /// fill the slots.
    fn default() -> Self {
        use crate::constants::{DEFAULT_MAX_PEERS, DEFAULT_MIN_PEERS, DEFAULT_TARGET_OUTBOUND};
        ConnectionLimits {
            max_inbound: DEFAULT_MAX_PEERS - DEFAULT_TARGET_OUTBOUND,
            max_pending_handshakes: crate::constants::DEFAULT_MAX_PENDING_HANDSHAKES,
            max_outbound: 16,
            max_per_ip: 4,
            accepts_per_ip_per_minute: 30,
            min_peers: DEFAULT_MIN_PEERS,
            max_peers: DEFAULT_MAX_PEERS,
            target_outbound: DEFAULT_TARGET_OUTBOUND,
        }
    }
}

/// Network configuration (built from the TOML config by `Config::node_config`).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Peers to dial and keep dialling.
    pub peers: Vec<PeerTarget>,
    /// `HOST:PORT` of seed nodes, resolved (DNS names too) when the
    /// address book has nothing to dial.
    pub seeds: Vec<String>,
    /// Outbound peers saved at the last shutdown, dialled first.
    pub anchors: Vec<PeerTarget>,
    /// Country and ASN look-ups for peer diversity (none by default).
    pub diversity: Arc<diversity::Diversity>,
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
    /// What the gossip budgets of `rate_limit` are sized for (the
    /// application sets it from its chain).
    pub gossip: GossipScale,
    /// The best height announced in `Version` messages, kept current by
    /// the application.
    pub best_height: watch::Receiver<u64>,
    /// The address book (the application loads and saves it): peers'
    /// announced listen addresses are added, dials and handshakes recorded.
    pub address_book: Arc<Mutex<AddressBook>>,
}

impl NetworkConfig {
    /// Defaults for a node listening on `listen` with `handshake`.
    pub fn new(listen: SocketAddr, handshake: HandshakeConfig) -> Self {
        NetworkConfig {
            listen,
            peers: Vec::new(),
            seeds: Vec::new(),
            anchors: Vec::new(),
            diversity: Arc::new(diversity::Diversity::none()),
            handshake,
            connection: ConnectionConfig::default(),
            backend: CryptoBackend::default(),
            limits: ConnectionLimits::default(),
            middleware: MiddlewareConfig::default_stack(),
            send_queue_bytes: DEFAULT_QUEUE_BYTES,
            gossip: GossipScale::default(),
            best_height: watch::channel(0).1,
            address_book: Arc::default(),
        }
    }
}

/// Something the node did, for observers.
#[derive(Clone, Debug)]
pub enum NetworkEvent {
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
pub enum NetworkError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread of the application could not be started.
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
    /// The Noise keys could not be created.
    #[error(transparent)]
    Keys(#[from] HandshakeError),
}

/// Inbound connections per IP key.
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Where `connect` learns how its dial ended.
type Report = tokio::sync::oneshot::Sender<Result<Arc<PeerInfo>, Arc<ConnectError>>>;

/// What the application serves peers with: the router over its handlers.
pub type InboundHandler = BoxCloneSyncService<Inbound, crate::peer::Outcome, BoxError>;

/// Told about every peer the network admits, before the peer's first
/// message is read (e.g. to announce what it may have missed, or to learn
/// its best height).
pub trait PeerObserver: Send + Sync {
    /// `peer` was admitted to the peer set.
    fn admitted(&self, network: &Network, peer: &Arc<PeerHandle>);
}

/// What the application hands the network when it starts.
pub struct Application {
    /// Serves every peer's messages (behind the middleware stack).
    pub inbound: InboundHandler,
    /// Told about admitted peers.
    pub observer: Option<Arc<dyn PeerObserver>>,
}

struct Inner {
    identity: NodeIdentity,
    keys: LocalKeys,
    config: NetworkConfig,
    stack: RwLock<Arc<MiddlewareStack>>,
    blacklist: Arc<Blacklist>,
    dialers: Mutex<HashMap<SocketAddr, CancellationToken>>,
    started: Instant,
    peers: Arc<PeerSet>,
    inbound: std::sync::OnceLock<InboundHandler>,
    observer: std::sync::OnceLock<Arc<dyn PeerObserver>>,
    events: broadcast::Sender<NetworkEvent>,
    shutdown: CancellationToken,
    next_conn_id: AtomicU64,
    inbound_count: Arc<AtomicUsize>,
    outbound: Arc<AtomicUsize>,
    per_ip: IpCounts,
    accept_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Every long-lived task of the network.
    tasks: TaskTracker,
    /// Inbound handshakes in progress, oldest (lowest connection id)
    /// first, with the switch that evicts each.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
    /// Peer exchange: the `GetPeers` cache and our own record.
    pex: pex::PexState,
    /// The connection manager's state.
    manager: manager::ManagerState,
}

/// A running node. Clones share it; call [`Network::shutdown`] to stop it.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

/// A handle to the network that does not keep it alive (for callbacks the
/// network itself holds, e.g. inside its inbound service).
#[derive(Clone, Debug)]
pub struct WeakNetwork {
    inner: std::sync::Weak<Inner>,
    local_addr: SocketAddr,
}

impl WeakNetwork {
    /// The network, if it still exists.
    pub fn upgrade(&self) -> Option<Network> {
        Some(Network {
            inner: self.inner.upgrade()?,
            local_addr: self.local_addr,
        })
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("node_id", &self.inner.keys.node_id())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Binds the listener, asks `app` for the application's inbound service
    /// and observer (it gets the network, e.g. to relay through its peer
    /// set), then starts accepting and dials the configured peers.
    ///
    /// # Errors
    /// [`NetworkError::Bind`] if the listen address is unavailable.
    pub async fn start(
        identity: &NodeIdentity,
        mut config: NetworkConfig,
        app: impl FnOnce(&Network) -> Application,
    ) -> Result<Network, NetworkError> {
        config.handshake.version.capabilities |= capabilities::RELAY;
        let keys = LocalKeys::new(identity, config.backend)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NetworkError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| NetworkError::Bind {
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
        let accept_quota = Quota::per_minute(
            NonZeroU32::new(config.limits.accepts_per_ip_per_minute).unwrap_or(NonZeroU32::MIN),
        );
        let network = Network {
            inner: Arc::new(Inner {
                identity: identity.clone(),
                keys,
                stack: RwLock::new(Arc::new(stack)),
                blacklist,
                dialers: Mutex::new(HashMap::new()),
                started: Instant::now(),
                peers,
                inbound: std::sync::OnceLock::new(),
                observer: std::sync::OnceLock::new(),
                events,
                shutdown: CancellationToken::new(),
                next_conn_id: AtomicU64::new(1),
                inbound_count: Arc::new(AtomicUsize::new(0)),
                outbound: Arc::new(AtomicUsize::new(0)),
                per_ip: Arc::new(Mutex::new(HashMap::new())),
                accept_limiter: DefaultKeyedRateLimiter::keyed(accept_quota),
                pending: Mutex::new(BTreeMap::new()),
                pex: pex::PexState::default(),
                manager: manager::ManagerState::new(),
                tasks: TaskTracker::new(),
                config,
            }),
            local_addr,
        };
        let app = app(&network);
        let _ = network.inner.inbound.set(app.inbound);
        if let Some(observer) = app.observer {
            let _ = network.inner.observer.set(observer);
        }
        tracing::info!(
            node.id = %network.node_id(),
            listen = %local_addr,
            network = %network.inner.config.handshake.version.network,
            middleware = %network.middleware().describe(),
            "listening for peers"
        );
        network.spawn("accept", network.clone().accept_loop(listener));
        network.spawn("housekeeping", network.clone().housekeeping());
        network.spawn("connection_manager", network.clone().manage());
        for target in network.inner.config.peers.clone() {
            network.add_peer(target);
        }
        Ok(network)
    }

    /// Runs `task` as one of the network's tracked tasks (see
    /// [`crate::tasks`]): [`Network::stopped`] waits for it, and a panic in
    /// it is logged with `name` and counted.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::tasks::spawn(&self.inner.tasks, name, task);
    }

    /// Waits until every task of the network has ended (after
    /// [`Network::shutdown`]).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Signs `payload` as this node in a fresh envelope and marks its id as
    /// seen, so the echo from the network is dropped.
    pub fn sign(&self, kind: GossipKind, payload: Vec<u8>) -> Envelope {
        let timestamp_ms = crate::protocol::version::unix_now().as_millis() as u64;
        let magic = self.inner.config.handshake.version.network.magic();
        let envelope = Envelope::sign(&self.inner.identity, magic, kind, timestamp_ms, payload);
        let id = envelope.id();
        // Marked in the shared cache whether or not `dedup` is in the stack.
        let seen = self.middleware().shared().dedup.clone();
        if seen.reserve(id) {
            seen.commit(id);
        }
        envelope
    }

    /// Charges `offence` to the connected peer `node_id`, if any, through
    /// the stack's judge (the scoring layer disconnects or bans at its
    /// thresholds; without it the score is only recorded).
    pub fn penalize(&self, node_id: &NodeId, offence: Offence) -> bool {
        match self.inner.peers.get(node_id) {
            Some(handle) => {
                self.penalize_peer(&handle.context, offence);
                true
            }
            None => false,
        }
    }

    /// Charges `offence` to a connected peer through the stack's judge.
    pub fn penalize_peer(&self, peer: &PeerContext, offence: Offence) {
        self.middleware().judge().penalize(peer, offence);
    }

    /// Tells subscribers that a handler accepted a new envelope from
    /// `request`'s peer (before it was relayed).
    pub fn delivered(&self, request: &Inbound) {
        if let Message::Gossip(envelope) = &*request.message {
            // What eviction protects and peer quality rewards.
            let stats = &request.peer.stats;
            stats.first_deliveries.fetch_add(1, Ordering::Relaxed);
            let now_ms = crate::protocol::version::unix_now().as_millis() as u64;
            match envelope.kind {
                GossipKind::Transaction => stats.last_tx_ms.store(now_ms, Ordering::Relaxed),
                GossipKind::Block => stats.last_block_ms.store(now_ms, Ordering::Relaxed),
                GossipKind::Vote | GossipKind::Address => {}
            }
            self.emit(NetworkEvent::Delivered {
                id: envelope.id(),
                kind: envelope.kind,
                from: request.peer.node_id,
            });
        }
    }

    /// The address book.
    pub fn address_book(&self) -> &Arc<Mutex<AddressBook>> {
        &self.inner.config.address_book
    }

    /// A handle that does not keep the network alive.
    pub fn downgrade(&self) -> WeakNetwork {
        WeakNetwork {
            inner: Arc::downgrade(&self.inner),
            local_addr: self.local_addr,
        }
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
    pub fn subscribe(&self) -> broadcast::Receiver<NetworkEvent> {
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
    pub fn config(&self) -> &NetworkConfig {
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
        // The network's shared state survives the reload (see
        // `layers::shared`).
        let shared = self.middleware().shared().reconfigure(configs);
        let stack = Arc::new(MiddlewareStack::build_with(configs, shared));
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

    /// Like [`Network::disconnect`], telling the peers `reason` (e.g.
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

    fn emit(&self, event: NetworkEvent) {
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
