//! The block handler: validates and applies gossiped blocks, serves
//! `GetBlocks`.

use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::{ready, refuse, BoxFuture, SyncHandle};
use crate::constants::{MAX_BLOCKS_PER_RESPONSE, MAX_BLOCKS_RESPONSE_BYTES};
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::message::Blocks;
use crate::protocol::{GossipKind, Message};
use crate::state::{BlockOutcome, Chain, ChainError, ChainService};

/// The handler's name in rejections and metrics.
pub const NAME: &str = "blocks";

/// Handles block envelopes and `GetBlocks`.
#[derive(Clone, Debug)]
pub struct BlockHandler {
    chain: ChainService,
    sync: SyncHandle,
}

impl BlockHandler {
    /// A handler over `chain`; blocks ahead of the tip wake `sync`.
    pub fn new(chain: ChainService, sync: SyncHandle) -> Self {
        BlockHandler { chain, sync }
    }

    fn gossip(&self, request: Inbound, payload: &[u8]) -> BoxFuture<Outcome> {
        let block = match Chain::decode_block(payload) {
            Ok(b) => b,
            Err(e) => return ready(Err(refuse(NAME, &request, &ChainError::Block(e)))),
        };
        let height = block.header.height;
        let chain = self.chain.clone();
        let sync = self.sync.clone();
        Box::pin(async move {
            match chain.block(block, "gossip").await {
                Ok(BlockOutcome::Applied | BlockOutcome::ReplacedTip) => Ok(Outcome::Accepted),
                Ok(BlockOutcome::Known) => Ok(Outcome::Handled),
                Ok(BlockOutcome::Ahead) => {
                    tracing::debug!(
                        height,
                        tip = chain.chain().tip().height,
                        "block ahead of the tip: syncing"
                    );
                    sync.wake();
                    Ok(Outcome::Handled)
                }
                Err(e) => Err(refuse(NAME, &request, &e)),
            }
        })
    }

    fn get_blocks(&self, start: u64, count: u32) -> Result<Outcome, BoxError> {
        let count = (count as usize).min(MAX_BLOCKS_PER_RESPONSE);
        let blocks = self
            .chain
            .chain()
            .store()
            .raw_blocks(start, count, MAX_BLOCKS_RESPONSE_BYTES)
            .map_err(|e| {
                if crate::logging::allow("serve_blocks_failed") {
                    tracing::error!(error = %e, "cannot read blocks for a peer");
                }
                BoxError::from(Rejection::benign(NAME, "storage"))
            })?;
        // A damaged block of ours (never served, re-fetched by sync) caps
        // what we can claim: announcing the real tip with blocks missing
        // below it would be a false claim the requester rightly charges.
        let tip = self.chain.chain().tip().height;
        let servable = self
            .chain
            .chain()
            .store()
            .damaged_heights()
            .into_iter()
            .find(|h| *h >= start && *h <= tip)
            .map_or(tip, |h| h.saturating_sub(1));
        Ok(Outcome::Reply(Message::Blocks(Blocks {
            tip_height: servable,
            blocks: blocks.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        })))
    }
}

impl Service<Inbound> for BlockHandler {
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
            Message::Gossip(e) if e.kind == GossipKind::Block => self.gossip(request, &e.payload),
            Message::GetBlocks(g) => ready(self.get_blocks(g.start, g.count)),
            _ => ready(Err(Rejection::offence(
                NAME,
                "unexpected_message",
                Offence::ProtocolViolation,
            )
            .into())),
        }
    }
}
