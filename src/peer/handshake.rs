//! Connection setup: TCP stream → Noise XX → version exchange, under one
//! deadline.
//!
//! # Order
//! 1. Noise XX (see [`crate::transport::noise`]) authenticates both node ids.
//! 2. Both sides send a `Version` message at once, then read the peer's.
//!    Until the peer's `Version` is accepted, frames are capped at
//!    [`PRE_VERSION_MAX_FRAME_LEN`]; afterwards at the configured maximum.
//! 3. A refused `Version` is answered with `Disconnect(IncompatibleVersion)`
//!    and the connection is closed.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::constants::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_FRAME_LEN, PRE_VERSION_MAX_FRAME_LEN,
};
use crate::crypto::NodeId;
use crate::protocol::{
    Disconnect, DisconnectReason, Message, MessageCodec, Version, VersionError, VersionParams,
    WireError,
};
use crate::transport::noise::{self, HandshakeError, LocalKeys};
use crate::transport::{FrameCodec, RekeyPolicy};

/// Which side opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of connection setup.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// What we announce and accept in the version exchange.
    pub version: VersionParams,
    /// Deadline for Noise and version exchange together.
    pub timeout: Duration,
    /// Frame limit once the version exchange is done.
    pub max_frame_len: usize,
    /// When this side rotates its sending key.
    pub rekey: RekeyPolicy,
}

impl HandshakeConfig {
    /// Defaults around the given version parameters.
    pub fn new(version: VersionParams) -> Self {
        HandshakeConfig {
            version,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            rekey: RekeyPolicy::default(),
        }
    }
}

/// What we know about an authenticated peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its node id (authenticated).
    pub node_id: NodeId,
    /// Its ed25519 identity key.
    pub public_key: ed25519_dalek::VerifyingKey,
    /// The socket address of the connection.
    pub addr: SocketAddr,
    /// Who dialed.
    pub direction: Direction,
    /// Its version message.
    pub version: Version,
}

/// An established, authenticated, version-checked connection.
pub struct Connection {
    /// The encrypted message stream.
    pub framed: Framed<TcpStream, MessageCodec>,
    /// The peer.
    pub info: PeerInfo,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Why connection setup failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The deadline passed (stalled or slow-loris peer).
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The Noise handshake failed.
    #[error(transparent)]
    Noise(#[from] HandshakeError),
    /// A frame or message of the version exchange was bad.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer's version was refused.
    #[error("version refused: {0}")]
    Version(#[from] VersionError),
    /// The peer sent something other than `Version` first.
    #[error("expected a version message, got {0}")]
    UnexpectedMessage(&'static str),
    /// The peer closed the connection before sending its version.
    #[error("connection closed before the version exchange completed")]
    Closed,
    /// The peer refused us with a `Disconnect` message.
    #[error("peer disconnected during the handshake: {reason:?} {detail:?}")]
    Refused {
        /// Its reason code.
        reason: DisconnectReason,
        /// Its text.
        detail: String,
    },
    /// The socket could not be set up.
    #[error("socket error: {0}")]
    Io(#[source] std::io::Error),
    /// Already connected to this node id by a preferred connection.
    #[error("already connected to node {0}")]
    Duplicate(NodeId),
    /// A connection limit is reached.
    #[error("connection limit reached: {0}")]
    Limit(&'static str),
}

impl ConnectError {
    /// True when the remote side misbehaved during setup (the node then
    /// records a violation against its IP): garbage, forged identities,
    /// broken frames, stalling. Honest misconfiguration (other network,
    /// version or genesis) and plain disconnects are not.
    pub fn is_misbehaviour(&self) -> bool {
        use crate::transport::FrameError;
        match self {
            ConnectError::Timeout(_) | ConnectError::UnexpectedMessage(_) => true,
            ConnectError::Noise(e) => matches!(
                e,
                HandshakeError::MessageTooLarge { .. }
                    | HandshakeError::Noise(_)
                    | HandshakeError::BadPayload(_)
                    | HandshakeError::InvalidIdentityKey
                    | HandshakeError::ForgedIdentity
            ),
            ConnectError::Wire(WireError::Frame(FrameError::Io(_) | FrameError::Truncated)) => {
                false
            }
            ConnectError::Wire(_) => true,
            _ => false,
        }
    }

    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "timeout",
            ConnectError::Noise(e) => e.kind(),
            ConnectError::Wire(e) => e.kind(),
            ConnectError::Version(e) => e.kind(),
            ConnectError::UnexpectedMessage(_) => "unexpected_message",
            ConnectError::Closed => "closed",
            ConnectError::Refused { .. } => "refused",
            ConnectError::Io(_) => "io",
            ConnectError::Duplicate(_) => "duplicate",
            ConnectError::Limit(_) => "limit",
        }
    }
}

/// Runs Noise and the version exchange on `stream` within the deadline.
///
/// `expected` is the node id a dialer expects, if it knows it.
///
/// # Errors
/// A [`ConnectError`]; the stream is dropped (closed) on error.
pub async fn establish(
    stream: TcpStream,
    direction: Direction,
    expected: Option<NodeId>,
    keys: &LocalKeys,
    config: &HandshakeConfig,
    best_height: u64,
) -> Result<Connection, ConnectError> {
    let addr = stream.peer_addr().map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    tokio::time::timeout(
        config.timeout,
        establish_inner(stream, addr, direction, expected, keys, config, best_height),
    )
    .await
    .unwrap_or(Err(ConnectError::Timeout(config.timeout)))
}

async fn establish_inner(
    mut stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    expected: Option<NodeId>,
    keys: &LocalKeys,
    config: &HandshakeConfig,
    best_height: u64,
) -> Result<Connection, ConnectError> {
    let magic = config.version.network.magic();
    let initiator = direction == Direction::Outbound;
    let (session, remote) = noise::handshake(&mut stream, keys, magic, initiator, expected).await?;
    let frames = FrameCodec::new(session, PRE_VERSION_MAX_FRAME_LEN, config.rekey);
    let mut framed = Framed::new(stream, MessageCodec::new(frames));
    let ours = config.version.build(keys.node_id(), best_height);
    framed.send(&Message::Version(ours)).await?;
    let theirs = match framed.next().await {
        Some(Ok(Message::Version(v))) => v,
        Some(Ok(Message::Disconnect(d))) => {
            return Err(ConnectError::Refused {
                reason: d.reason,
                detail: d.detail,
            })
        }
        Some(Ok(other)) => return Err(ConnectError::UnexpectedMessage(other.kind())),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ConnectError::Closed),
    };
    if let Err(e) = config.version.check(&theirs, remote.node_id) {
        let goodbye = Message::Disconnect(Disconnect {
            reason: DisconnectReason::IncompatibleVersion,
            detail: e.to_string().chars().take(200).collect(),
        });
        // Best effort: the peer may already be gone.
        let _ = framed.send(&goodbye).await;
        return Err(e.into());
    }
    framed
        .codec_mut()
        .frames_mut()
        .set_max_frame_len(config.max_frame_len);
    Ok(Connection {
        framed,
        info: PeerInfo {
            node_id: remote.node_id,
            public_key: remote.public_key,
            addr,
            direction,
            version: theirs,
        },
    })
}
