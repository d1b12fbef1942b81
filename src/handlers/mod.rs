//! The handlers: tower services shared by all connections, behind a router.
//!
//! The [`Router`] is the innermost service of every connection's stack. It
//! dispatches by message kind to the block, transaction, vote, address and
//! peer handlers, and relays every envelope a handler accepts as new
//! ([`Outcome::Accepted`]) to all other peers.
//!
//! With a chain ([`Handlers::chain`]) the block, transaction and vote
//! handlers own the chain state ([`crate::state::Chain`]): they
//! validate, store and relay what is new, and answer `GetBlocks` and
//! `GetMempool`. Without one ([`Handlers::minimal`], for network-only
//! nodes and the network layer's tests) gossip is accepted and counted.
//! `GetPeers` and `Address` envelopes (signed peer records) go to the
//! network's peer-exchange handler, handed in by the application.
//!
//! A handler refuses bad data with a [`Rejection`] whose reason is the
//! chain error's kind and whose offence (if any) the scoring layer charges
//! to the sending peer; nothing is stored then.

pub mod blocks;
pub mod transactions;
pub mod votes;

pub use crate::sync::SyncHandle;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::peer::set::PeerSet;
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::{GossipKind, Message};
use crate::state::{ChainError, ChainService, Fault};

/// The router's name in rejections and metrics.
pub const NAME: &str = "router";

/// A callback told about every envelope a handler accepted as new.
pub type DeliveryHook = Arc<dyn Fn(&Inbound) + Send + Sync>;

/// A handler that accepts every envelope of its kind and counts it.
#[derive(Clone, Debug)]
pub struct CountingHandler {
    name: &'static str,
    count: Arc<AtomicU64>,
}

impl CountingHandler {
    /// A handler labelled `name` in metrics.
    pub fn new(name: &'static str) -> Self {
        CountingHandler {
            name,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Messages handled.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Service<Inbound> for CountingHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Inbound) -> Self::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("timed_handler_messages_total", "handler" => self.name).increment(1);
        std::future::ready(Ok(Outcome::Accepted))
    }
}

/// A handler's response future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A response future that is already complete.
pub(crate) fn ready<T: Send + 'static>(result: Result<T, BoxError>) -> BoxFuture<T> {
    Box::pin(std::future::ready(result))
}

/// The router's mapping from a chain verdict to a peer offence.
impl From<Fault> for Offence {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Malformed => Offence::Malformed,
            Fault::Invalid => Offence::InvalidData,
            Fault::NotPermitted => Offence::ProtocolViolation,
        }
    }
}

/// The offence of the peer that sent data the chain refused with `error`.
pub fn offence(error: &ChainError) -> Option<Offence> {
    error.fault().map(Offence::from)
}

/// Logs why a handler refused `request` and turns the error into a
/// [`Rejection`] carrying its offence.
pub(crate) fn refuse(handler: &'static str, request: &Inbound, error: &ChainError) -> BoxError {
    if crate::logging::allow_for(handler, error.kind()) {
        tracing::info!(
            handler,
            peer = %request.peer.node_id,
            peer.addr = %request.peer.addr,
            reason = error.kind(),
            offence = offence(error).map(|o| o.as_str()),
            error = %error,
            "message refused by its handler"
        );
    }
    Rejection {
        layer: handler,
        reason: error.kind(),
        offence: offence(error),
    }
    .into()
}

/// A handler: shared by every connection, so `Sync` too.
pub type HandlerService = BoxCloneSyncService<Inbound, Outcome, BoxError>;

/// The handlers of a node, one service per kind.
#[derive(Clone)]
pub struct Handlers {
    /// Block envelopes.
    pub blocks: HandlerService,
    /// Transaction envelopes.
    pub transactions: HandlerService,
    /// Vote envelopes.
    pub votes: HandlerService,
    /// Address announcement envelopes (signed peer records).
    pub addresses: HandlerService,
    /// `GetPeers`.
    pub peers: HandlerService,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers").finish_non_exhaustive()
    }
}

impl Handlers {
    /// Counting gossip handlers and the peer-exchange handler `pex`.
    pub fn minimal(pex: HandlerService) -> Self {
        Handlers {
            blocks: BoxCloneSyncService::new(CountingHandler::new("blocks")),
            transactions: BoxCloneSyncService::new(CountingHandler::new("transactions")),
            votes: BoxCloneSyncService::new(CountingHandler::new("votes")),
            addresses: pex.clone(),
            peers: pex,
        }
    }

    /// The chain handlers over the chain service, with the peer-exchange
    /// handler `pex`.
    pub fn chain(
        chain: ChainService,
        pex: HandlerService,
        sync: SyncHandle,
        on_equivocation: Option<votes::EquivocationHook>,
    ) -> Self {
        Handlers {
            blocks: BoxCloneSyncService::new(blocks::BlockHandler::new(chain.clone(), sync)),
            transactions: BoxCloneSyncService::new(transactions::TransactionHandler::new(
                chain.clone(),
            )),
            votes: BoxCloneSyncService::new(votes::VoteHandler::new(chain, on_equivocation)),
            addresses: pex.clone(),
            peers: pex,
        }
    }
}

/// Dispatches inbound messages to the handlers and relays accepted gossip.
#[derive(Clone)]
pub struct Router {
    handlers: Handlers,
    magic: [u8; 4],
    relay: Option<Arc<PeerSet>>,
    on_delivered: Option<DeliveryHook>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("relay", &self.relay.is_some())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `handlers` for the network with `magic`; accepted
    /// envelopes are relayed through `relay` (if any) to every peer but
    /// their sender.
    pub fn new(
        handlers: Handlers,
        magic: [u8; 4],
        relay: Option<Arc<PeerSet>>,
        on_delivered: Option<DeliveryHook>,
    ) -> Self {
        Router {
            handlers,
            magic,
            relay,
            on_delivered,
        }
    }
}

impl Service<Inbound> for Router {
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each handler is readied in `call`, on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        let handler = match &*request.message {
            Message::Gossip(envelope) => match envelope.kind {
                GossipKind::Block => self.handlers.blocks.clone(),
                GossipKind::Transaction => self.handlers.transactions.clone(),
                GossipKind::Vote => self.handlers.votes.clone(),
                GossipKind::Address => self.handlers.addresses.clone(),
            },
            Message::GetPeers => self.handlers.peers.clone(),
            Message::GetBlocks(_) => self.handlers.blocks.clone(),
            Message::GetMempool => self.handlers.transactions.clone(),
            // The connection answers pings once the stack let them through.
            Message::Ping(_) => return Box::pin(std::future::ready(Ok(Outcome::Handled))),
            other => {
                let kind = other.kind();
                tracing::debug!(kind, "message not allowed here");
                return Box::pin(std::future::ready(Err(Rejection::offence(
                    NAME,
                    "unexpected_message",
                    Offence::ProtocolViolation,
                )
                .into())));
            }
        };
        let relay = self.relay.clone();
        let hook = self.on_delivered.clone();
        let magic = self.magic;
        Box::pin(async move {
            // No `auth` layer ran: verify here, off the async workers, so
            // no handler ever sees an envelope whose signature nobody
            // checked.
            let request = match request.unverified_envelope() {
                Some(envelope) => {
                    let envelope = envelope.clone();
                    let verdict = tokio::task::spawn_blocking(move || envelope.verified(magic))
                        .await
                        .map_err(|e| BoxError::from(e.to_string()))?;
                    match verdict {
                        Ok(proof) => request.with_proof(proof),
                        Err(error) => {
                            metrics::counter!("timed_layer_decisions_total", "layer" => NAME, "decision" => "rejected", "reason" => "bad_signature").increment(1);
                            if crate::logging::allow("router_forged") {
                                tracing::info!(peer = %request.peer.node_id, %error, "forged envelope refused by the router");
                            }
                            return Err(Rejection::offence(
                                NAME,
                                "bad_signature",
                                Offence::InvalidSignature,
                            )
                            .into());
                        }
                    }
                }
                None => request,
            };
            let outcome = handler.oneshot(request.clone()).await?;
            if outcome == Outcome::Accepted {
                if let Message::Gossip(_) = &*request.message {
                    if let Some(hook) = &hook {
                        hook(&request);
                    }
                    if let Some(peers) = &relay {
                        peers.broadcast(&request.message, Some(request.peer.node_id));
                    }
                }
            }
            Ok(outcome)
        })
    }
}
