//! The node: a listener, dialers for configured peers, and one task per
//! connection.
//!
//! Every connection runs inside a tracing span `conn` with the fields
//! `conn.id`, `peer.addr`, `direction` and (once authenticated) `node.id`.
//! Observers (tests, and later metrics and RPC) subscribe to [`NodeEvent`]s.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument};

use crate::crypto::{NodeId, NodeIdentity};
use crate::peer::connection::{self, ConnectionConfig, ConnectionError, ConnectionEvent};
use crate::peer::handshake::{establish, ConnectError, Direction, HandshakeConfig, PeerInfo};
use crate::protocol::DisconnectReason;
use crate::transport::noise::{CryptoBackend, HandshakeError, LocalKeys};

/// Capacity of the event channel; slow observers miss events rather than
/// slowing the node.
const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// First delay before redialling a configured peer.
const REDIAL_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// Largest delay between redials.
const REDIAL_MAX_DELAY: Duration = Duration::from_secs(60);

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
}

/// Something the node did, for observers.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// A connection completed Noise and the version exchange.
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

struct Inner {
    keys: LocalKeys,
    config: NodeConfig,
    events: broadcast::Sender<NodeEvent>,
    shutdown: CancellationToken,
    next_conn_id: AtomicU64,
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
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
    pub async fn start(identity: &NodeIdentity, config: NodeConfig) -> Result<Node, NodeError> {
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
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let node = Node {
            inner: Arc::new(Inner {
                keys,
                config,
                events,
                shutdown: CancellationToken::new(),
                next_conn_id: AtomicU64::new(1),
            }),
            local_addr,
        };
        tracing::info!(
            node.id = %node.node_id(),
            listen = %local_addr,
            network = %node.inner.config.handshake.version.network,
            "listening for peers"
        );
        tokio::spawn(node.clone().accept_loop(listener));
        for target in node.inner.config.peers.clone() {
            tokio::spawn(node.clone().dial_loop(target));
        }
        Ok(node)
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

    /// Stops accepting, closes every connection (with a `Disconnect`
    /// message) and stops redialling.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
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

    fn span(&self, addr: SocketAddr, direction: Direction) -> tracing::Span {
        let id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        tracing::info_span!(
            "conn",
            conn.id = id,
            peer.addr = %addr,
            direction = direction.as_str(),
            node.id = field::Empty,
        )
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let span = self.span(addr, Direction::Inbound);
                    let node = self.clone();
                    tokio::spawn(
                        async move {
                            node.handle(stream, addr, Direction::Inbound, None, None)
                                .await
                        }
                        .instrument(span),
                    );
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn dial_loop(self, target: PeerTarget) {
        let mut delay = REDIAL_INITIAL_DELAY;
        while !self.inner.shutdown.is_cancelled() {
            let healthy = self.outbound(&target, None).await;
            if healthy {
                delay = REDIAL_INITIAL_DELAY;
            }
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            tracing::info!(peer = %target, delay_ms = delay.as_millis() as u64, "redialling later");
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(REDIAL_MAX_DELAY);
        }
    }

    /// Dials and runs one outbound connection; true if it was established.
    async fn outbound(
        &self,
        target: &PeerTarget,
        report: Option<tokio::sync::oneshot::Sender<Result<Arc<PeerInfo>, Arc<ConnectError>>>>,
    ) -> bool {
        let span = self.span(target.addr, Direction::Outbound);
        async {
            let stream = match tokio::time::timeout(
                self.inner.config.handshake.timeout,
                self.dial(target.addr),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let error = Arc::new(ConnectError::Io(e));
                    tracing::info!(error = %error, error.kind = error.kind(), "dial failed");
                    if let Some(report) = report {
                        let _ = report.send(Err(error));
                    }
                    return false;
                }
                Err(_) => {
                    let error =
                        Arc::new(ConnectError::Timeout(self.inner.config.handshake.timeout));
                    tracing::info!(error = %error, error.kind = error.kind(), "dial failed");
                    if let Some(report) = report {
                        let _ = report.send(Err(error));
                    }
                    return false;
                }
            };
            self.handle(
                stream,
                target.addr,
                Direction::Outbound,
                target.node_id,
                report,
            )
            .await
        }
        .instrument(span)
        .await
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

    /// Runs setup and then the connection; true if setup succeeded.
    async fn handle(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        direction: Direction,
        expected: Option<NodeId>,
        report: Option<tokio::sync::oneshot::Sender<Result<Arc<PeerInfo>, Arc<ConnectError>>>>,
    ) -> bool {
        let config = &self.inner.config;
        let conn = tokio::select! {
            _ = self.inner.shutdown.cancelled() => return false,
            r = establish(stream, direction, expected, &self.inner.keys, &config.handshake, 0) => r,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                let error = Arc::new(error);
                tracing::warn!(error = %error, error.kind = error.kind(), "handshake failed");
                self.emit(NodeEvent::HandshakeFailed {
                    addr,
                    direction,
                    error: error.clone(),
                });
                if let Some(report) = report {
                    let _ = report.send(Err(error));
                }
                return false;
            }
        };
        let info = Arc::new(conn.info.clone());
        tracing::Span::current().record("node.id", field::display(info.node_id));
        tracing::info!(
            user_agent = %info.version.user_agent,
            best_height = info.version.best_height,
            "peer connected"
        );
        self.emit(NodeEvent::Connected(info.clone()));
        if let Some(report) = report {
            let _ = report.send(Ok(info.clone()));
        }
        let events = self.inner.events.clone();
        let error = connection::run(
            conn,
            config.connection.clone(),
            move |e| {
                let _ = events.send(NodeEvent::Connection(e));
            },
            self.inner.shutdown.clone(),
        )
        .await;
        match &error {
            ConnectionError::Shutdown
            | ConnectionError::Closed
            | ConnectionError::PeerDisconnected {
                reason: DisconnectReason::Shutdown,
                ..
            } => {
                tracing::info!(reason = %error, reason.kind = error.kind(), "peer disconnected")
            }
            _ => tracing::warn!(error = %error, error.kind = error.kind(), "peer disconnected"),
        }
        self.emit(NodeEvent::Disconnected {
            peer: info,
            error: Arc::new(error),
        });
        true
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
}
