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

use super::refuse;
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::{GossipKind, Message};
use crate::state::{Chain, VoteHandled};

/// The handler's name in rejections and metrics.
pub const NAME: &str = "votes";

/// Told the key of a masternode caught equivocating.
pub type EquivocationHook = Arc<dyn Fn([u8; 32]) + Send + Sync>;

/// Handles vote envelopes.
#[derive(Clone)]
pub struct VoteHandler {
    chain: Chain,
    on_equivocation: Option<EquivocationHook>,
}

impl std::fmt::Debug for VoteHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteHandler").finish_non_exhaustive()
    }
}

impl VoteHandler {
    /// A handler over `chain`.
    pub fn new(chain: Chain, on_equivocation: Option<EquivocationHook>) -> Self {
        VoteHandler {
            chain,
            on_equivocation,
        }
    }
}

impl Service<Inbound> for VoteHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        metrics::counter!("timed_handler_messages_total", "handler" => NAME).increment(1);
        let Message::Gossip(envelope) = &*request.message else {
            return std::future::ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into()));
        };
        if envelope.kind != GossipKind::Vote {
            return std::future::ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into()));
        }
        if !request.authenticated && envelope.verify(self.chain.magic()).is_err() {
            if crate::logging::allow("forged_vote") {
                tracing::info!(peer = %request.peer.node_id, "forged vote refused");
            }
            return std::future::ready(Err(Rejection::offence(
                NAME,
                "bad_signature",
                Offence::InvalidSignature,
            )
            .into()));
        }
        let voter = envelope.originator;
        let result = Chain::decode_vote(&envelope.payload)
            .and_then(|vote| self.chain.handle_vote(voter, vote));
        let outcome = match result {
            Ok(VoteHandled::Counted(_) | VoteHandled::Pending) => Ok(Outcome::Accepted),
            Ok(VoteHandled::Late | VoteHandled::Duplicate) => Ok(Outcome::Handled),
            Ok(VoteHandled::Equivocation) => {
                if let Some(hook) = &self.on_equivocation {
                    hook(voter);
                }
                // Relayed: every node should record the evidence.
                Ok(Outcome::Accepted)
            }
            Err(e) => Err(refuse(NAME, &request, &e)),
        };
        std::future::ready(outcome)
    }
}
