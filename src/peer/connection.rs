//! The task that owns one established connection.
//!
//! It answers pings, pings the peer on an interval and measures the round
//! trip, and reports every message it receives. Step 2 of the roadmap puts
//! the tower middleware stack between this task and the handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand_core::RngCore;
use tokio_util::sync::CancellationToken;

use super::handshake::{Connection, PeerInfo};
use crate::constants::{DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT};
use crate::protocol::version::unix_now;
use crate::protocol::{Disconnect, DisconnectReason, Message, Ping, Pong, WireError};

/// Parameters of an established connection.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// How often we ping.
    pub ping_interval: Duration,
    /// How long a pong may take.
    pub pong_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A frame or message was bad, or the socket failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer did not answer a ping in time.
    #[error("no pong within {0:?}")]
    PongTimeout(Duration),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer said goodbye.
    #[error("peer disconnected: {reason:?} {detail:?}")]
    PeerDisconnected {
        /// Its reason code.
        reason: DisconnectReason,
        /// Its text.
        detail: String,
    },
    /// The peer sent a message that is not allowed now.
    #[error("protocol violation: unexpected {0} message")]
    Unexpected(&'static str),
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
}

impl ConnectionError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::Wire(e) => e.kind(),
            ConnectionError::PongTimeout(_) => "pong_timeout",
            ConnectionError::Closed => "closed",
            ConnectionError::PeerDisconnected { .. } => "peer_disconnected",
            ConnectionError::Unexpected(_) => "unexpected_message",
            ConnectionError::Shutdown => "shutdown",
        }
    }
}

/// Something that happened on a connection, for the node's observers.
#[derive(Clone, Debug)]
pub enum ConnectionEvent {
    /// A pong answered our ping.
    Pong {
        /// The peer.
        peer: Arc<PeerInfo>,
        /// The measured round trip.
        rtt: Duration,
    },
    /// A message other than ping/pong arrived.
    Received {
        /// The peer.
        peer: Arc<PeerInfo>,
        /// The message.
        message: Arc<Message>,
    },
}

/// Runs the connection until it fails, the peer leaves or `shutdown` fires.
///
/// Returns why it ended; the socket is closed when this returns.
pub async fn run(
    conn: Connection,
    config: ConnectionConfig,
    on_event: impl Fn(ConnectionEvent) + Send,
    shutdown: CancellationToken,
) -> ConnectionError {
    let Connection { mut framed, info } = conn;
    let peer = Arc::new(info);
    let mut ticker = tokio::time::interval(config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outstanding: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let bye = Message::Disconnect(Disconnect {
                    reason: DisconnectReason::Shutdown,
                    detail: String::new(),
                });
                let _ = framed.send(&bye).await;
                return ConnectionError::Shutdown;
            }
            _ = ticker.tick() => {
                if let Some((_, sent)) = outstanding {
                    if sent.elapsed() >= config.pong_timeout {
                        return ConnectionError::PongTimeout(config.pong_timeout);
                    }
                    continue;
                }
                let nonce = rand_core::OsRng.next_u64();
                let ping = Message::Ping(Ping {
                    nonce,
                    timestamp_ms: unix_now().as_millis() as u64,
                });
                if let Err(e) = framed.send(&ping).await {
                    return e.into();
                }
                outstanding = Some((nonce, Instant::now()));
            }
            next = framed.next() => {
                let message = match next {
                    None => return ConnectionError::Closed,
                    Some(Err(e)) => return e.into(),
                    Some(Ok(m)) => m,
                };
                match message {
                    Message::Ping(p) => {
                        let pong = Message::Pong(Pong {
                            nonce: p.nonce,
                            timestamp_ms: unix_now().as_millis() as u64,
                        });
                        if let Err(e) = framed.send(&pong).await {
                            return e.into();
                        }
                    }
                    Message::Pong(p) => match outstanding {
                        Some((nonce, sent)) if nonce == p.nonce => {
                            let rtt = sent.elapsed();
                            outstanding = None;
                            tracing::info!(
                                rtt_us = rtt.as_micros() as u64,
                                nonce = p.nonce,
                                "pong received"
                            );
                            on_event(ConnectionEvent::Pong { peer: peer.clone(), rtt });
                        }
                        _ => return ConnectionError::Unexpected("unsolicited pong"),
                    },
                    Message::Disconnect(d) => {
                        return ConnectionError::PeerDisconnected {
                            reason: d.reason,
                            detail: d.detail,
                        }
                    }
                    Message::Version(_) => return ConnectionError::Unexpected("version"),
                    other => {
                        tracing::debug!(kind = other.kind(), "message received");
                        on_event(ConnectionEvent::Received {
                            peer: peer.clone(),
                            message: Arc::new(other),
                        });
                    }
                }
            }
        }
    }
}
