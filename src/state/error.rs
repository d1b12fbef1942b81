//! Why a block, a transaction or a vote was refused, and what that says
//! about the peer that sent it.

use super::*;

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The bytes are not a block.
    #[error("not a block: {0}")]
    Encoding(String),
    /// More than [`MAX_BLOCK_BYTES`].
    #[error("block of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Unknown version.
    #[error("unsupported block version {0}")]
    Version(u32),
    /// `prev_hash` is not the parent's hash.
    #[error("block at height {height} does not link to the block before it")]
    Linkage {
        /// The block's height.
        height: u64,
    },
    /// The slot is not after the parent's, or lies in the future.
    #[error("bad timestamp: {0}")]
    Timestamp(&'static str),
    /// Not the slot's scheduled producer.
    #[error("producer is not scheduled for slot {slot}")]
    WrongProducer {
        /// The block's slot.
        slot: u64,
    },
    /// The header signature does not verify.
    #[error("bad producer signature")]
    Signature,
    /// The merkle root does not match the transactions.
    #[error("merkle root does not match the transactions")]
    MerkleRoot,
    /// A transaction is invalid.
    #[error("transaction {index} is invalid: {error}")]
    Transaction {
        /// Its position.
        index: usize,
        /// Why.
        error: TxError,
    },
    /// Two transactions of the block spend one output, or one is already in
    /// the chain.
    #[error("transaction {index} double-spends or repeats a transaction")]
    DoubleSpend {
        /// Its position.
        index: usize,
    },
    /// The block competes with an ancestor of the tip, or lost to the tip.
    #[error("stale block at height {height} (tip {tip})")]
    Stale {
        /// The block's height.
        height: u64,
        /// The tip's height.
        tip: u64,
    },
}

impl BlockError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BlockError::Encoding(_) => "encoding",
            BlockError::TooLarge(_) => "too_large",
            BlockError::Version(_) => "version",
            BlockError::Linkage { .. } => "linkage",
            BlockError::Timestamp(_) => "timestamp",
            BlockError::WrongProducer { .. } => "wrong_producer",
            BlockError::Signature => "signature",
            BlockError::MerkleRoot => "merkle_root",
            BlockError::Transaction { .. } => "transaction",
            BlockError::DoubleSpend { .. } => "double_spend",
            BlockError::Stale { .. } => "stale",
        }
    }
}

/// Errors of the chain state.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The bytes are not a transaction or vote.
    #[error("malformed {what}: {message}")]
    Encoding {
        /// What was decoded.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The transaction is invalid.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// The mempool refused it.
    #[error(transparent)]
    Mempool(#[from] MempoolError),
    /// The transaction is already in a block.
    #[error("transaction already in the chain")]
    AlreadyInChain,
    /// The block is invalid.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The vote is refused.
    #[error(transparent)]
    Vote(#[from] VoteError),
    /// The chain's worker has stopped (the node is shutting down).
    #[error("the chain has stopped")]
    Stopped,
    /// The data dir holds another chain.
    #[error("the data dir holds a chain with genesis {found}, this node follows {expected}")]
    WrongGenesis {
        /// Ours.
        expected: String,
        /// The store's.
        found: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChainError {
    /// A stable label for logs, metrics and RPC errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::Encoding { .. } => "malformed",
            ChainError::Tx(e) => e.kind(),
            ChainError::Mempool(e) => e.kind(),
            ChainError::AlreadyInChain => "already_in_chain",
            ChainError::Block(e) => e.kind(),
            ChainError::Vote(e) => e.kind(),
            ChainError::WrongGenesis { .. } => "wrong_genesis",
            ChainError::Store(_) => "storage",
            ChainError::Stopped => "stopped",
        }
    }

    /// What the sender of the offending data did wrong, if anything (the
    /// router turns it into a peer offence).
    pub fn fault(&self) -> Option<Fault> {
        match self {
            ChainError::Encoding { .. } => Some(Fault::Malformed),
            // An honest relay under load sends these too: a child that
            // overtook its parent on another path, one of two conflicting
            // payments (each node relays the one it saw first), a block
            // that lost a race, a vote seen twice. Never charged.
            ChainError::Tx(TxError::MissingInput { .. })
            | ChainError::Mempool(_)
            | ChainError::AlreadyInChain
            | ChainError::Block(BlockError::Stale { .. })
            | ChainError::Vote(VoteError::Duplicate | VoteError::Equivocation { .. }) => None,
            ChainError::Tx(_) => Some(Fault::Invalid),
            ChainError::Block(_) => Some(Fault::Invalid),
            ChainError::Vote(VoteError::NotMasternode) => Some(Fault::NotPermitted),
            ChainError::WrongGenesis { .. } | ChainError::Store(_) | ChainError::Stopped => None,
        }
    }
}

/// What the sender of bad chain data did wrong, in the chain's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The bytes do not decode.
    Malformed,
    /// A transaction or block that breaks the rules.
    Invalid,
    /// Something only a masternode may send, from one that is not.
    NotPermitted,
}
