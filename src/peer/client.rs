//! The outbound side of a connection: a `tower::Service<Request>`.
//!
//! A [`Client`] hands requests to its connection task through a channel of
//! capacity one, and the task keeps at most one request in flight (responses
//! are matched by kind, and pongs by nonce, as in Zebra). So `poll_ready`
//! is honest: it is pending while the connection is busy with a request and
//! fails once the connection is gone. The task applies the request timeout
//! and penalises a peer that misses it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tower::{BoxError, Service};

use crate::peer::PeerContext;
use crate::protocol::message::{Blocks, GetBlocks};

/// A request to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Measure the round trip.
    Ping,
    /// Ask for the peer's known addresses.
    GetPeers,
    /// Ask for blocks (chain sync).
    GetBlocks(GetBlocks),
    /// Ask for the peer's mempool.
    GetMempool,
}

impl Request {
    /// A short stable name, for logs and metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::GetPeers => "get_peers",
            Request::GetBlocks(_) => "get_blocks",
            Request::GetMempool => "get_mempool",
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The ping came back after this long.
    Pong(Duration),
    /// The peer's signed records (not yet verified: the caller does that).
    Peers(Vec<crate::protocol::Envelope>),
    /// Blocks (not yet decoded or validated: the caller does that).
    Blocks(Blocks),
    /// Encoded mempool transactions (not yet decoded or validated).
    Mempool(Vec<serde_bytes::ByteBuf>),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// No response within the timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The send queue was full.
    #[error("send queue full")]
    QueueFull,
}

/// A request on its way to the connection task.
#[derive(Debug)]
pub(crate) struct ClientRequest {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Result<Response, ClientError>>,
}

/// The sending half of a connection, as a tower service.
#[derive(Debug)]
pub struct Client {
    tx: PollSender<ClientRequest>,
    peer: Arc<PeerContext>,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Client {
            tx: self.tx.clone(),
            peer: self.peer.clone(),
        }
    }
}

impl Client {
    pub(crate) fn new(tx: mpsc::Sender<ClientRequest>, peer: Arc<PeerContext>) -> Self {
        Client {
            tx: PollSender::new(tx),
            peer,
        }
    }

    /// The peer this client talks to.
    pub fn peer(&self) -> &Arc<PeerContext> {
        &self.peer
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Gives back the slot a successful `poll_ready` reserved, without
    /// sending: the peer set's balancer checks that a connection has room
    /// without holding the slot while the peer waits for a request (see
    /// `peer::balance`).
    pub(crate) fn release(&mut self) {
        self.tx.abort_send();
    }
}

impl Service<Request> for Client {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tx
            .poll_reserve(cx)
            .map_err(|_| Box::new(ClientError::Closed) as BoxError)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send_item(ClientRequest { request, reply });
        Box::pin(async move {
            if sent.is_err() {
                return Err(ClientError::Closed.into());
            }
            match rx.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(ClientError::Closed.into()),
            }
        })
    }
}
