//! The vote handler: tallies masternode votes by weight, finalizes
//! transactions, reports equivocations.
//!
//! # Security
//! The voter is the envelope's originator, so the vote is only as good as
//! the envelope's signature. The handler reads the originator only from
//! [`Inbound::verified_envelope`], which needs the proof the `auth` layer
//! (or, without it, the router) attaches after verifying.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::{ready, refuse, BoxFuture};
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::{GossipKind, Message};
use crate::state::{Chain, ChainRequest, ChainResponse, ChainService, VoteHandled};

/// The handler's name in rejections and metrics.
pub const NAME: &str = "votes";

/// Told the key of a masternode caught equivocating.
pub type EquivocationHook = Arc<dyn Fn([u8; 32]) + Send + Sync>;

/// Handles vote envelopes.
#[derive(Clone)]
pub struct VoteHandler {
    chain: ChainService,
    on_equivocation: Option<EquivocationHook>,
}

impl std::fmt::Debug for VoteHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteHandler").finish_non_exhaustive()
    }
}

impl VoteHandler {
    /// A handler over `chain`.
    pub fn new(chain: ChainService, on_equivocation: Option<EquivocationHook>) -> Self {
        VoteHandler {
            chain,
            on_equivocation,
        }
    }
}

impl Service<Inbound> for VoteHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<Outcome>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        metrics::counter!("timed_handler_messages_total", "handler" => NAME).increment(1);
        if !matches!(&*request.message, Message::Gossip(e) if e.kind == GossipKind::Vote) {
            return ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into()));
        }
        // The originator is the voter: only a verified envelope names one
        // (the `auth` layer or the router verified it).
        let Some(envelope) = request.verified_envelope() else {
            if crate::logging::allow("unverified_vote") {
                tracing::info!(peer = %request.peer.node_id, "unverified vote refused");
            }
            return ready(Err(Rejection::offence(
                NAME,
                "bad_signature",
                Offence::InvalidSignature,
            )
            .into()));
        };
        let voter = envelope.originator;
        let vote = match Chain::decode_vote(&envelope.payload) {
            Ok(vote) => vote,
            Err(e) => return ready(Err(refuse(NAME, &request, &e))),
        };
        let mut chain = self.chain.clone();
        let on_equivocation = self.on_equivocation.clone();
        Box::pin(async move {
            match chain.call(ChainRequest::Vote { voter, vote }).await {
                Ok(ChainResponse::Vote(VoteHandled::Counted(_) | VoteHandled::Pending)) => {
                    Ok(Outcome::Accepted)
                }
                Ok(ChainResponse::Vote(VoteHandled::Equivocation)) => {
                    if let Some(hook) = &on_equivocation {
                        hook(voter);
                    }
                    // Relayed: every node should record the evidence.
                    Ok(Outcome::Accepted)
                }
                Ok(_) => Ok(Outcome::Handled),
                Err(e) => Err(refuse(NAME, &request, &e)),
            }
        })
    }
}
