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
//! least [`MIN_FEE`](crate::chain::transaction::MIN_FEE) and it does not spend an output a pooled transaction
//! already spends (no replace-by-fee). A masternode then signs an `Accept`
//! vote for it; for a valid transaction that conflicts with one it accepted
//! first it signs a `Reject` vote.
//!
//! # Votes and finality
//! A vote travels in a `Vote` envelope signed by the masternode's node key:
//! the envelope's originator *is* the voter. A transaction is final once
//! masternodes holding at least 2/3 of the total weight accepted it; see
//! [`crate::chain::votes`] for why conflicting transactions cannot both be final.
//! A vote that overtakes its transaction is held (bounded by
//! [`MAX_PENDING_VOTES`](crate::constants::MAX_PENDING_VOTES)) and counted when the transaction arrives.
//!
//! # Blocks
//! The masternode scheduled for the current slot (see [`crate::chain::genesis`])
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

use crate::chain::block::{Block, BlockHash, MAX_BLOCK_BYTES};
use crate::chain::genesis::Genesis;
use crate::chain::mempool::{Mempool, MempoolError};
use crate::chain::transaction::{OutPoint, Transaction, TxError, TxOut, Txid, UtxoView};
use crate::chain::votes::{Vote, VoteBook, VoteError, VoteOutcome};
use crate::constants::{MAX_BLOCK_FUTURE_DRIFT_SECS, MAX_REORG_DEPTH};
use crate::crypto::signature::{PublicKey, Signature, SignatureScheme};
use crate::crypto::NodeIdentity;
use crate::encoding;
use crate::storage::{Store, StoreError, DB_FILE};

mod blocks;
mod error;
mod journal;
mod pool;
mod reindex;
pub mod service;

pub use error::{BlockError, ChainError, Fault};

pub use pool::{Coin, CoinStatus};
pub use reindex::Rebuilt;
pub use service::{ChainRequest, ChainResponse, ChainService};

/// What the chain hands out to be published or announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// An encoded transaction.
    Transaction,
    /// An encoded vote.
    Vote,
    /// An encoded block.
    Block,
}

/// Publishes an encoded item as this node (the application signs it and
/// gossips it).
pub type Publisher = Arc<dyn Fn(ItemKind, Vec<u8>) + Send + Sync>;

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
            mempool_max_txs: crate::chain::mempool::DEFAULT_MAX_TXS,
            mempool_max_bytes: crate::chain::mempool::DEFAULT_MAX_BYTES,
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
    /// The tip, also readable (and watchable) without the state lock,
    /// which the chain's worker may hold for a long validation: set
    /// together with `State::tip`, under the state lock.
    tip: tokio::sync::watch::Sender<Tip>,
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
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
                tip: tokio::sync::watch::Sender::new(state.tip),
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
        crate::locks::lock(&self.inner.state)
    }

    /// Sets how this node publishes its votes and blocks (once).
    pub fn set_publisher(&self, publisher: Publisher) {
        let _ = self.inner.publisher.set(publisher);
    }

    fn publish(&self, kind: ItemKind, payload: Vec<u8>) {
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
        *self.inner.tip.borrow()
    }

    /// The tip as it changes.
    pub fn watch_tip(&self) -> tokio::sync::watch::Receiver<Tip> {
        self.inner.tip.subscribe()
    }

    /// Moves the tip (under the state lock).
    fn set_tip(&self, state: &mut State, tip: Tip) {
        state.tip = tip;
        self.inner.tip.send_replace(tip);
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
            let Ok(b) = encoding::encode_value(&e.tx) else {
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
