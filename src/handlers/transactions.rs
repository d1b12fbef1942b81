//! The transaction handler: validates gossiped transactions into the
//! mempool (a masternode votes on each), serves `GetMempool`.

use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::{ready, refuse, BoxFuture};
use crate::chain::mempool::MempoolError;
use crate::constants::{MAX_MEMPOOL_RESPONSE_BYTES, MAX_MEMPOOL_RESPONSE_TXS};
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::{GossipKind, Message};
use crate::state::{Chain, ChainError, ChainService};

/// The handler's name in rejections and metrics.
pub const NAME: &str = "transactions";

/// Handles transaction envelopes and `GetMempool`.
#[derive(Clone, Debug)]
pub struct TransactionHandler {
    chain: ChainService,
}

impl TransactionHandler {
    /// A handler over `chain`.
    pub fn new(chain: ChainService) -> Self {
        TransactionHandler { chain }
    }

    fn gossip(&self, request: Inbound, payload: &[u8]) -> BoxFuture<Outcome> {
        let tx = match Chain::decode_tx(payload) {
            Ok(tx) => tx,
            Err(e) => return ready(Err(refuse(NAME, &request, &e))),
        };
        let chain = self.chain.clone();
        Box::pin(async move {
            match chain.transaction(tx).await {
                Ok(_) => Ok(Outcome::Accepted),
                // Seen already (in another envelope): nothing new, no fault.
                Err(ChainError::Mempool(MempoolError::Duplicate) | ChainError::AlreadyInChain) => {
                    Ok(Outcome::Handled)
                }
                Err(e) => Err(refuse(NAME, &request, &e)),
            }
        })
    }
}

impl Service<Inbound> for TransactionHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<Outcome>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        metrics::counter!("timed_handler_messages_total", "handler" => NAME).increment(1);
        let message = request.message.clone();
        match &*message {
            Message::Gossip(e) if e.kind == GossipKind::Transaction => {
                self.gossip(request, &e.payload)
            }
            Message::GetMempool => {
                let chain = self.chain.clone();
                Box::pin(async move {
                    let txs = chain
                        .run(|c| {
                            c.mempool_encoded(MAX_MEMPOOL_RESPONSE_TXS, MAX_MEMPOOL_RESPONSE_BYTES)
                        })
                        .await
                        .map_err(|_| BoxError::from(Rejection::benign(NAME, "stopped")))?;
                    Ok(Outcome::Reply(Message::Mempool(
                        txs.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                    )))
                })
            }
            _ => ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into())),
        }
    }
}
