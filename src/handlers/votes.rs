//! The vote handler: tallies masternode votes by weight, finalizes
//! transactions, reports equivocations.
//!
//! # Security
//! The voter is the envelope's originator, so the vote is only as good as
//! the envelope's signature. When no `auth` layer verified it on the way in
//! (it can be removed from the config), this handler verifies it itself.

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
        let Message::Gossip(envelope) = &*request.message else {
            return ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into()));
        };
        if envelope.kind != GossipKind::Vote {
            return ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into()));
        }
        if !request.authenticated && envelope.verify(self.chain.chain().magic()).is_err() {
            if crate::logging::allow("forged_vote") {
                tracing::info!(peer = %request.peer.node_id, "forged vote refused");
            }
            return ready(Err(Rejection::offence(
                NAME,
                "bad_signature",
                Offence::InvalidSignature,
            )
            .into()));
        }
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
