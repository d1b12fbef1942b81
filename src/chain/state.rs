//! The chain state a node owns: the store, the mempool, the vote book and
//! the rules that tie them together.
//!
//! [`Chain`] is what the block, transaction and vote handlers, the block
//! producer, sync and the RPC share. Every method takes `&self`; one mutex
//! orders mempool, votes and block application, so a block and the
//! transactions it removes from the mempool change together.
//!
//! # Transactions
//! A transaction is accepted into the mempool when its structure, its
//! signatures and its inputs check out against the UTXO set, its fee is at
//! least [`MIN_FEE`](super::transaction::MIN_FEE) and it does not spend an output a pooled transaction
//! already spends (no replace-by-fee). A masternode then signs an `Accept`
//! vote for it; for a valid transaction that conflicts with one it accepted
//! first it signs a `Reject` vote.
//!
//! # Votes and finality
//! A vote travels in a `Vote` envelope signed by the masternode's node key:
//! the envelope's originator *is* the voter. A transaction is final once
//! masternodes holding at least 2/3 of the total weight accepted it; see
//! [`super::votes`] for why conflicting transactions cannot both be final.
//! A vote that overtakes its transaction is held (bounded by
//! [`MAX_PENDING_VOTES`]) and counted when the transaction arrives.
//!
//! # Blocks
//! The masternode scheduled for the current slot (see [`super::genesis`])
//! produces a block on its tip holding the final transactions of its
//! mempool. Every node checks, for a block extending its tip: the version,
//! size, height and `prev_hash`, that its slot is later than its parent's
//! and not in the future, that the producer is the slot's scheduled
//! masternode and signed the header, the merkle root, and every transaction
//! against the UTXO set as updated by the transactions before it in the
//! block.
//!
//! # Competing chains (fork choice)
//! Two valid branches from one parent resolve deterministically: the
//! **longer** wins; at equal length the first differing block decides: the
//! one in the **earlier slot** wins, and in the same slot (which only a
//! misbehaving producer signs twice) the **lower block hash**. A node on
//! the losing branch rolls its blocks back (one atomic write each, from the
//! blocks' undo records), applies the winning branch block by block with
//! full validation (restoring its own chain if a block is invalid), and
//! returns the abandoned transactions to the mempool. Forks deeper than
//! [`MAX_REORG_DEPTH`] blocks are refused: transactions are final by votes
//! long before that, and a deeper rewrite is an attack or a partition that
//! needs an operator.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::block::{Block, BlockHash, MAX_BLOCK_BYTES};
use super::genesis::Genesis;
use super::mempool::{Mempool, MempoolError};
use super::transaction::{OutPoint, Transaction, TxError, TxOut, Txid, UtxoView};
use super::votes::{Vote, VoteBook, VoteError, VoteOutcome};
use crate::constants::{MAX_BLOCK_FUTURE_DRIFT_SECS, MAX_REORG_DEPTH};
use crate::crypto::signature::{PublicKey, Signature, SignatureScheme};
use crate::crypto::NodeIdentity;
use crate::layers::Offence;
use crate::protocol::{codec, GossipKind};
use crate::storage::{Store, StoreError, DB_FILE};

mod journal;
mod pool;

pub use pool::{Coin, CoinStatus};

/// Publishes a payload as a signed envelope of this node.
pub type Publisher = Arc<dyn Fn(GossipKind, Vec<u8>) + Send + Sync>;

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
        }
    }

    /// What the peer that sent the offending data did wrong, if anything.
    pub fn offence(&self) -> Option<Offence> {
        match self {
            ChainError::Encoding { .. } => Some(Offence::Malformed),
            // An honest relay under load sends these too: a child that
            // overtook its parent on another path, one of two conflicting
            // payments (each node relays the one it saw first), a block
            // that lost a race, a vote seen twice. Never charged.
            ChainError::Tx(TxError::MissingInput { .. })
            | ChainError::Mempool(_)
            | ChainError::AlreadyInChain
            | ChainError::Block(BlockError::Stale { .. })
            | ChainError::Vote(VoteError::Duplicate | VoteError::Equivocation { .. }) => None,
            ChainError::Tx(_) => Some(Offence::InvalidData),
            ChainError::Block(_) => Some(Offence::InvalidData),
            ChainError::Vote(VoteError::NotMasternode) => Some(Offence::ProtocolViolation),
            ChainError::WrongGenesis { .. } | ChainError::Store(_) => None,
        }
    }
}

/// What happened to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// It extends the tip and was applied.
    Applied,
    /// It beat the tip, which was rolled back.
    ReplacedTip,
    /// Already in the chain.
    Known,
    /// It is ahead of the tip: sync must fetch what lies between.
    Ahead,
}

/// What happened to a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteHandled {
    /// Counted (or finalized the transaction).
    Counted(VoteOutcome),
    /// Held until its transaction arrives.
    Pending,
    /// About a transaction already in a block.
    Late,
    /// An equivocation, recorded: the voter is penalised.
    Equivocation,
    /// Counted before (the same voter's vote on the same transaction, e.g.
    /// re-announced): nothing new.
    Duplicate,
}

/// The tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: BlockHash,
    /// Its timestamp.
    pub timestamp: u64,
}

/// Where a transaction is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// In a block at this height.
    InBlock(u64, Transaction),
    /// In the mempool.
    Pooled(Transaction),
}

/// A transaction's votes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Tally {
    /// Weight of accept votes.
    pub accept: u64,
    /// Weight of reject votes.
    pub reject: u64,
    /// Distinct voters.
    pub voters: usize,
    /// Final by votes.
    pub finalized: bool,
    /// Seconds from first sight to finality, if seen finalizing here.
    pub finality_secs: Option<f64>,
}

/// Options of the chain state.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Most transactions in the mempool.
    pub mempool_max_txs: usize,
    /// Most bytes in the mempool.
    pub mempool_max_bytes: usize,
    /// Vote and produce blocks when this node is a masternode.
    pub masternode: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            mempool_max_txs: super::mempool::DEFAULT_MAX_TXS,
            mempool_max_bytes: super::mempool::DEFAULT_MAX_BYTES,
            masternode: true,
        }
    }
}

/// A finality seen here: the tally when it happened and the journal
/// sequence number its votes were written under.
#[derive(Clone, Copy, Debug)]
struct FinalityRecord {
    tally: Tally,
    seq: u64,
}

struct State {
    tip: Tip,
    mempool: Mempool,
    votes: VoteBook,
    pending_votes: HashMap<Txid, Vec<([u8; 32], Vote)>>,
    pending_order: VecDeque<Txid>,
    pending_count: usize,
    first_seen: HashMap<Txid, Instant>,
    /// Pooled transactions that are final: by votes, with every pooled
    /// parent final too.
    final_txs: HashSet<Txid>,
    finality: HashMap<Txid, FinalityRecord>,
    finality_order: VecDeque<Txid>,
    conflicts: HashMap<Txid, Vec<OutPoint>>,
    conflict_order: VecDeque<Txid>,
    last_produced_slot: Option<u64>,
}

/// The chain state of a node. Clones share it.
#[derive(Clone)]
pub struct Chain {
    inner: Arc<Inner>,
}

struct Inner {
    genesis: Genesis,
    genesis_hash: BlockHash,
    magic: [u8; 4],
    store: Arc<Store>,
    journal: Arc<journal::Journal>,
    identity: NodeIdentity,
    masternode: bool,
    state: Mutex<State>,
    publisher: OnceLock<Publisher>,
    best_seen: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Commit what is journaled and stop the writer thread.
        self.journal.close();
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("genesis", &hex::encode(self.inner.genesis_hash))
            .field("tip", &self.tip())
            .finish_non_exhaustive()
    }
}

/// The UTXO set as a block's earlier transactions leave it.
struct Overlay<'a> {
    store: &'a Store,
    created: HashMap<OutPoint, TxOut>,
    spent: HashSet<OutPoint>,
}

impl UtxoView for Overlay<'_> {
    fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        if self.spent.contains(outpoint) {
            return None;
        }
        self.created
            .get(outpoint)
            .copied()
            .or_else(|| self.store.utxo(outpoint))
    }
}

impl<'a> Overlay<'a> {
    fn new(store: &'a Store) -> Self {
        Overlay {
            store,
            created: HashMap::new(),
            spent: HashSet::new(),
        }
    }

    fn apply(&mut self, tx: &Transaction) {
        for input in &tx.inputs {
            self.spent.insert(input.prevout);
            self.created.remove(&input.prevout);
        }
        let txid = tx.txid();
        for (i, out) in tx.outputs.iter().enumerate() {
            self.created.insert(
                OutPoint {
                    txid,
                    index: i as u32,
                },
                *out,
            );
        }
    }
}

fn now_secs() -> u64 {
    crate::protocol::version::unix_now().as_secs()
}

impl Chain {
    /// Opens (or creates) the chain in `data_dir` for `genesis`, as
    /// `identity`.
    ///
    /// # Errors
    /// A storage error, or [`ChainError::WrongGenesis`] when the data dir
    /// holds another chain.
    pub fn open(
        data_dir: &Path,
        genesis: Genesis,
        identity: &NodeIdentity,
        options: ChainOptions,
    ) -> Result<Chain, ChainError> {
        let store = Store::open(&data_dir.join(DB_FILE))?;
        let genesis_block = genesis.block();
        let genesis_hash = genesis_block.hash();
        match store.block(0)? {
            None => store.apply_block(&genesis_block)?,
            Some(b) if b.hash() == genesis_hash => {}
            Some(b) => {
                return Err(ChainError::WrongGenesis {
                    expected: hex::encode(genesis_hash),
                    found: hex::encode(b.hash()),
                })
            }
        }
        let (height, hash) = store.tip()?.unwrap_or((0, genesis_hash));
        let timestamp = store
            .block(height)?
            .map_or(genesis.timestamp, |b| b.header.timestamp);
        let own_key = *identity.public_key().as_bytes();
        let masternode = options.masternode
            && genesis
                .masternodes()
                .iter()
                .any(|m| m.public_key == own_key);
        let state = State {
            tip: Tip {
                height,
                hash,
                timestamp,
            },
            mempool: Mempool::new(options.mempool_max_txs, options.mempool_max_bytes),
            votes: VoteBook::new(genesis.masternode_set()),
            pending_votes: HashMap::new(),
            pending_order: VecDeque::new(),
            pending_count: 0,
            first_seen: HashMap::new(),
            final_txs: HashSet::new(),
            finality: HashMap::new(),
            finality_order: VecDeque::new(),
            conflicts: HashMap::new(),
            conflict_order: VecDeque::new(),
            last_produced_slot: None,
        };
        metrics::gauge!("timed_chain_height").set(height as f64);
        let store = Arc::new(store);
        let chain = Chain {
            inner: Arc::new(Inner {
                magic: genesis.network.magic(),
                genesis,
                genesis_hash,
                journal: journal::Journal::start(store.clone()),
                store,
                identity: identity.clone(),
                masternode,
                state: Mutex::new(state),
                publisher: OnceLock::new(),
                best_seen: std::sync::atomic::AtomicU64::new(height),
            }),
        };
        let (restored, dropped) = chain.restore_pool()?;
        if restored + dropped > 0 {
            tracing::info!(
                restored,
                dropped,
                final_txs = chain.state().final_txs.len(),
                "mempool restored from the store"
            );
        }
        Ok(chain)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.inner.state)
    }

    /// Sets how this node publishes its votes and blocks (once).
    pub fn set_publisher(&self, publisher: Publisher) {
        let _ = self.inner.publisher.set(publisher);
    }

    fn publish(&self, kind: GossipKind, payload: Vec<u8>) {
        if let Some(p) = self.inner.publisher.get() {
            p(kind, payload);
        }
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.inner.genesis
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> BlockHash {
        self.inner.genesis_hash
    }

    /// The network magic.
    pub fn magic(&self) -> [u8; 4] {
        self.inner.magic
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// True when this node votes and produces.
    pub fn is_masternode(&self) -> bool {
        self.inner.masternode
    }

    /// The tip.
    pub fn tip(&self) -> Tip {
        self.state().tip
    }

    /// The best height heard of from peers (at least our own).
    pub fn best_seen(&self) -> u64 {
        self.inner
            .best_seen
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(self.tip().height)
    }

    /// Notes that a peer has a chain of `height`.
    pub fn saw_height(&self, height: u64) {
        self.inner
            .best_seen
            .fetch_max(height, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replaces the best height heard of with what a peer's answer showed
    /// (never below our own tip), so that a stale or false claim does not
    /// keep sync asking.
    pub fn settle_best_seen(&self, height: u64) {
        let tip = self.tip().height;
        self.inner
            .best_seen
            .store(height.max(tip), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sync progress in `[0, 1]`.
    pub fn progress(&self) -> f64 {
        let best = self.best_seen();
        if best == 0 {
            return 1.0;
        }
        (self.tip().height as f64 / best as f64).min(1.0)
    }

    // ----- blocks -------------------------------------------------------

    /// Decodes a block payload.
    ///
    /// # Errors
    /// [`BlockError::TooLarge`] or [`BlockError::Encoding`].
    pub fn decode_block(bytes: &[u8]) -> Result<Block, BlockError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge(bytes.len()));
        }
        codec::decode_value(bytes).map_err(|e| BlockError::Encoding(e.to_string()))
    }

    /// Checks `block` as a child of `parent` (its hash, height and
    /// timestamp) against the current UTXO set.
    /// The checks that need no parent: version, a timestamp not before the
    /// genesis nor in the future, a height its slot allows (every block is
    /// in a later slot than its parent), the slot's scheduled producer and
    /// its signature. Run on every block first, so that a block ahead of the
    /// tip costs its sender as much as any other forgery and never moves the
    /// sync target.
    fn check_header(&self, block: &Block) -> Result<(), BlockError> {
        let header = &block.header;
        if header.version != 1 {
            return Err(BlockError::Version(header.version));
        }
        let genesis = &self.inner.genesis;
        if header.timestamp < genesis.timestamp {
            return Err(BlockError::Timestamp("before the genesis"));
        }
        if header.timestamp > now_secs() + MAX_BLOCK_FUTURE_DRIFT_SECS {
            return Err(BlockError::Timestamp("in the future"));
        }
        let slot = genesis.slot(header.timestamp);
        if header.height > slot {
            return Err(BlockError::Timestamp("height beyond what its slot allows"));
        }
        if genesis.producer(slot) != Some(&header.producer) {
            return Err(BlockError::WrongProducer { slot });
        }
        let key = PublicKey::from_bytes(SignatureScheme::Ed25519, &header.producer)
            .map_err(|_| BlockError::Signature)?;
        let signature = Signature::from_bytes(SignatureScheme::Ed25519, &header.signature)
            .map_err(|_| BlockError::Signature)?;
        key.verify(&header.signing_digest(self.inner.magic), &signature)
            .map_err(|_| BlockError::Signature)
    }

    /// [`Chain::check_header`], then [`Chain::validate_body`].
    fn validate_block(&self, block: &Block, parent: &Tip) -> Result<(), BlockError> {
        self.check_header(block)?;
        self.validate_body(block, parent)
    }

    /// The checks that need the parent and the UTXO set, for a block whose
    /// header passed [`Chain::check_header`].
    fn validate_body(&self, block: &Block, parent: &Tip) -> Result<(), BlockError> {
        let header = &block.header;
        let size = codec::encode_value(block).map_or(usize::MAX, |b| b.len());
        if size > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge(size));
        }
        if header.height != parent.height + 1 || header.prev_hash != parent.hash {
            return Err(BlockError::Linkage {
                height: header.height,
            });
        }
        let genesis = &self.inner.genesis;
        if genesis.slot(header.timestamp) <= genesis.slot(parent.timestamp) {
            return Err(BlockError::Timestamp("slot not after the parent's"));
        }
        if !block.merkle_matches() {
            return Err(BlockError::MerkleRoot);
        }
        let mut overlay = Overlay::new(&self.inner.store);
        let mut txids = HashSet::with_capacity(block.transactions.len());
        for (index, tx) in block.transactions.iter().enumerate() {
            let txid = tx.txid();
            let repeated =
                !txids.insert(txid) || matches!(self.inner.store.tx_height(&txid), Ok(Some(_)));
            if repeated || tx.inputs.iter().any(|i| overlay.spent.contains(&i.prevout)) {
                return Err(BlockError::DoubleSpend { index });
            }
            tx.validate(self.inner.magic, &overlay)
                .map_err(|error| BlockError::Transaction { index, error })?;
            overlay.apply(tx);
        }
        Ok(())
    }

    /// Handles a block from a peer (gossip or sync).
    ///
    /// # Errors
    /// An invalid or stale block; nothing is stored then.
    pub fn handle_block(
        &self,
        block: Block,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        self.check_header(&block)
            .inspect_err(Self::count_rejected)?;
        let mut state = self.state();
        let tip = state.tip;
        let height = block.header.height;
        if height > tip.height + 1 {
            self.saw_height(height);
            return Ok(BlockOutcome::Ahead);
        }
        let hash = block.hash();
        if height == tip.height + 1 {
            if block.header.prev_hash != tip.hash {
                // Maybe it extends a competitor of our tip we have not seen.
                if height >= 2 {
                    self.saw_height(height);
                    return Ok(BlockOutcome::Ahead);
                }
                return Err(BlockError::Linkage { height }.into());
            }
            // The header was checked above.
            self.validate_body(&block, &tip)
                .inspect_err(Self::count_rejected)?;
            self.apply_locked(&mut state, &block, source)?;
            return Ok(BlockOutcome::Applied);
        }
        if self.inner.store.height_of(&hash)?.is_some() {
            return Ok(BlockOutcome::Known);
        }
        if height == tip.height && height > 0 {
            return self.compete_locked(&mut state, block, source);
        }
        Err(BlockError::Stale {
            height,
            tip: tip.height,
        }
        .into())
    }

    fn count_rejected(e: &BlockError) {
        metrics::counter!("timed_blocks_rejected_total", "reason" => e.kind()).increment(1);
    }

    /// A block at the tip's height: it replaces the tip if it wins.
    fn compete_locked(
        &self,
        state: &mut State,
        block: Block,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        self.reorg_locked(state, vec![block], source)
    }

    /// Replaces a damaged stored block (see
    /// [`crate::storage::Store::damaged_heights`]) with `block` from a peer,
    /// if it is the block our chain holds at its height: the store checks
    /// the recorded hash and the merkle root; the signatures, which neither
    /// covers, are checked here first. Returns whether it was written.
    ///
    /// # Errors
    /// The block's own flaw (a bad producer or input signature) or a
    /// storage error.
    pub fn repair_block(&self, block: &Block) -> Result<bool, ChainError> {
        if block.header.height == 0 {
            // Our genesis is built from the config, not taken from a peer.
            let genesis = self.inner.genesis.block();
            return Ok(self.inner.store.repair_block(&genesis)?);
        }
        self.check_header(block)?;
        for (index, tx) in block.transactions.iter().enumerate() {
            tx.verify_signatures(self.inner.magic)
                .map_err(|error| BlockError::Transaction { index, error })?;
        }
        Ok(self.inner.store.repair_block(block)?)
    }

    /// The hash of our block at `height`.
    ///
    /// # Errors
    /// A storage error.
    pub fn hash_at(&self, height: u64) -> Result<Option<BlockHash>, ChainError> {
        Ok(self.inner.store.block(height)?.map(|b| b.hash()))
    }

    /// Switches to `branch` (consecutive blocks whose first one forks off our
    /// chain) when it wins by the fork-choice rule; see the module docs.
    ///
    /// # Errors
    /// [`BlockError::Stale`] when our chain wins or the fork is deeper than
    /// [`MAX_REORG_DEPTH`]; the error of an invalid branch block (our
    /// chain is restored then); a storage error.
    pub fn reorg(
        &self,
        branch: Vec<Block>,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let mut state = self.state();
        self.reorg_locked(&mut state, branch, source)
    }

    fn reorg_locked(
        &self,
        state: &mut State,
        branch: Vec<Block>,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let tip = state.tip;
        let store = &self.inner.store;
        let Some(first) = branch.first() else {
            return Ok(BlockOutcome::Known);
        };
        let fork = first.header.height;
        let stale = || -> ChainError {
            let e = BlockError::Stale {
                height: fork,
                tip: tip.height,
            };
            Self::count_rejected(&e);
            e.into()
        };
        if fork == 0 || fork > tip.height || tip.height - fork + 1 > MAX_REORG_DEPTH {
            return Err(stale());
        }
        let Some(parent_block) = store.block(fork - 1)? else {
            return Err(stale());
        };
        if first.header.prev_hash != parent_block.hash() {
            return Err(stale());
        }
        let Some(ours) = store.block(fork)? else {
            return Err(stale());
        };
        if ours.hash() == first.hash() {
            return Ok(BlockOutcome::Known);
        }
        // Longer wins; at equal length the first differing block decides:
        // earlier slot, then lower hash.
        let new_height = fork + branch.len() as u64 - 1;
        let genesis = &self.inner.genesis;
        let rank = |b: &Block| (genesis.slot(b.header.timestamp), b.hash());
        let wins =
            new_height > tip.height || (new_height == tip.height && rank(first) < rank(&ours));
        if !wins {
            return Err(stale());
        }
        // Roll back to the fork's parent, keeping what we remove.
        let mut removed = Vec::new();
        while state.tip.height >= fork {
            let block = store.rollback_tip()?;
            let height = block.header.height;
            let prev = store
                .block(height - 1)?
                .map_or(genesis.timestamp, |b| b.header.timestamp);
            state.tip = Tip {
                height: height - 1,
                hash: block.header.prev_hash,
                timestamp: prev,
            };
            removed.push(block);
        }
        removed.reverse();
        let mut applied = 0usize;
        let mut failure = None;
        for block in &branch {
            if let Err(e) = self.validate_block(block, &state.tip) {
                Self::count_rejected(&e);
                failure = Some(ChainError::Block(e));
                break;
            }
            if let Err(e) = self.apply_locked(state, block, source) {
                failure = Some(e);
                break;
            }
            applied += 1;
        }
        if let Some(error) = failure {
            // Put our chain back: it was valid.
            for _ in 0..applied {
                store.rollback_tip()?;
            }
            for block in &removed {
                store.apply_block(block)?;
            }
            state.tip = tip;
            metrics::gauge!("timed_chain_height").set(tip.height as f64);
            return Err(error);
        }
        tracing::warn!(
            fork_height = fork,
            old_tip = %hex::encode(tip.hash),
            new_tip = %hex::encode(state.tip.hash),
            rolled_back = removed.len(),
            applied,
            "switched to a better chain"
        );
        metrics::counter!("timed_tip_replacements_total").increment(1);
        // Transactions of the abandoned blocks go back to the pool when
        // still valid.
        for tx in removed.into_iter().flat_map(|b| b.transactions) {
            let _ = self.resubmit_locked(state, tx);
        }
        // Pooled transactions that spent outputs of the abandoned blocks
        // that did not come back are invalid now.
        let invalid = self.revalidate_pool(state);
        if invalid > 0 {
            tracing::info!(invalid, "pooled transactions invalidated by the reorg");
        }
        self.update_mempool_gauges(state);
        Ok(BlockOutcome::ReplacedTip)
    }

    fn apply_locked(
        &self,
        state: &mut State,
        block: &Block,
        source: &'static str,
    ) -> Result<(), ChainError> {
        self.inner.store.apply_block(block)?;
        let hash = block.hash();
        state.tip = Tip {
            height: block.header.height,
            hash,
            timestamp: block.header.timestamp,
        };
        let mut confirmed = Vec::new();
        let mut orphans_of_confirmed = Vec::new();
        for tx in &block.transactions {
            let txid = tx.txid();
            if state.mempool.get(&txid).is_some() {
                confirmed.push(txid);
                orphans_of_confirmed.extend(state.mempool.children_of(&txid));
            } else {
                // Never pooled here: forget its votes all the same.
                state.first_seen.remove(&txid);
                state.votes.forget(&txid);
            }
            if let Some(v) = state.pending_votes.remove(&txid) {
                state.pending_count = state.pending_count.saturating_sub(v.len());
            }
        }
        let conflicts = state.mempool.remove_block(&block.transactions);
        self.dropped_from_pool(state, &confirmed);
        self.dropped_from_pool(state, &conflicts);
        // A child waiting for this parent's finality may be final now.
        for child in orphans_of_confirmed {
            self.try_finalize(state, child);
        }
        self.update_mempool_gauges(state);
        metrics::gauge!("timed_chain_height").set(block.header.height as f64);
        metrics::counter!("timed_blocks_applied_total", "source" => source).increment(1);
        tracing::debug!(
            height = block.header.height,
            hash = %hex::encode(hash),
            txs = block.transactions.len(),
            source,
            "block applied"
        );
        Ok(())
    }

    /// Produces, applies and publishes this slot's block when this node is
    /// its producer and has not produced it yet; returns it.
    ///
    /// # Errors
    /// A storage error.
    pub fn produce_if_scheduled(&self, now: u64) -> Result<Option<Block>, ChainError> {
        if !self.inner.masternode {
            return Ok(None);
        }
        let genesis = &self.inner.genesis;
        let slot = genesis.slot(now);
        if genesis.producer(slot) != Some(&self.own_key()) {
            return Ok(None);
        }
        let mut state = self.state();
        let tip = state.tip;
        if now < genesis.timestamp
            || slot <= genesis.slot(tip.timestamp)
            || state.last_produced_slot == Some(slot)
        {
            return Ok(None);
        }
        // Final transactions, parents before children, then highest fee
        // rate first, each valid after the ones before it (a child whose
        // parent did not fit is skipped by that check).
        let candidates: Vec<Transaction> = state
            .mempool
            .txids_parents_first()
            .into_iter()
            .filter(|id| state.final_txs.contains(id))
            .filter_map(|id| state.mempool.get(&id).map(|e| e.tx.clone()))
            .collect();
        let mut overlay = Overlay::new(&self.inner.store);
        let mut transactions = Vec::new();
        let mut bytes = 512usize;
        for tx in candidates {
            let size = tx.size();
            if bytes + size > MAX_BLOCK_BYTES {
                continue;
            }
            if tx.validate(self.inner.magic, &overlay).is_ok() {
                overlay.apply(&tx);
                bytes += size;
                transactions.push(tx);
            }
        }
        let block = Block::produce(
            &self.inner.identity,
            self.inner.magic,
            (tip.hash, tip.height),
            now,
            transactions,
        );
        state.last_produced_slot = Some(slot);
        self.apply_locked(&mut state, &block, "produced")?;
        drop(state);
        tracing::info!(
            height = block.header.height,
            slot,
            txs = block.transactions.len(),
            hash = %hex::encode(block.hash()),
            "block produced"
        );
        if let Ok(bytes) = codec::encode_value(&block) {
            self.publish(GossipKind::Block, bytes);
        }
        Ok(Some(block))
    }

    // ----- queries ------------------------------------------------------

    /// Where `txid` is: in a block or in the mempool.
    ///
    /// # Errors
    /// A storage error.
    pub fn transaction(&self, txid: &Txid) -> Result<Option<TxStatus>, ChainError> {
        if let Some(e) = self.state().mempool.get(txid) {
            return Ok(Some(TxStatus::Pooled(e.tx.clone())));
        }
        Ok(self
            .inner
            .store
            .tx_location(txid)?
            .map(|(h, tx)| TxStatus::InBlock(h, tx)))
    }

    /// The mempool's txids, highest fee rate first.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.state().mempool.txids()
    }

    /// `(transactions, bytes)` in the mempool.
    pub fn mempool_size(&self) -> (usize, usize) {
        let state = self.state();
        (state.mempool.len(), state.mempool.bytes())
    }

    /// Encoded mempool transactions, within the given bounds.
    pub fn mempool_encoded(&self, max_count: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let state = self.state();
        let mut out = Vec::new();
        let mut bytes = 0;
        // Parents first, so the receiver can validate them in order.
        for id in state.mempool.txids_parents_first() {
            let Some(e) = state.mempool.get(&id) else {
                continue;
            };
            let Ok(b) = codec::encode_value(&e.tx) else {
                continue;
            };
            if out.len() >= max_count || bytes + b.len() > max_bytes {
                break;
            }
            bytes += b.len();
            out.push(b);
        }
        out
    }
}

#[cfg(test)]
mod tests;
