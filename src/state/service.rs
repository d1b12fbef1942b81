//! The chain as a service: [`ChainService`] is a `tower::Service<ChainRequest>`
//! whose state changes run on one dedicated worker thread.
//!
//! # Correctness
//! Block validation, reorgs, pool changes and their redb commits (with
//! fsync) are slow and hold the chain's state lock. They run on the worker,
//! never on an async worker thread, so a block of the largest size
//! ([`crate::chain::block::MAX_BLOCK_BYTES`]) being validated stalls no
//! connection, ping or RPC call: the async caller awaits a reply instead
//! (`tests/blocking.rs`).
//! One thread applies changes in arrival order, as the lock did before.
//!
//! Signatures are checked before a request reaches the worker: a block's
//! header first (one signature, so a block from the wrong producer costs
//! one check), then every input signature of its transactions in parallel
//! over the cores, on tokio's blocking pool; a transaction's signatures
//! likewise. The worker then checks only what needs the UTXO set. Reads
//! that take no state lock ([`Chain::tip`], the store) stay direct calls on
//! [`ChainService::chain`]; other reads from async code go through
//! [`ChainService::run`].
//!
//! # Security
//! The queue is bounded ([`QUEUE`]): a caller waits for room, so a flood
//! of work slows its senders (connections stop reading while their
//! handler waits) instead of growing memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tower::Service;

use super::{BlockOutcome, Chain, ChainError, VoteHandled};
use crate::chain::block::Block;
use crate::chain::transaction::{Transaction, Txid};
use crate::chain::verified::{VerifiedBlock, VerifiedTx};
use crate::chain::votes::Vote;

/// Jobs waiting for the worker, at most: a few hundred blocks or payments
/// in flight; past that, callers wait (backpressure to their peers).
pub const QUEUE: usize = 256;

type Job = Box<dyn FnOnce(&Chain) + Send>;

/// A request to the chain.
#[derive(Clone, Debug)]
pub enum ChainRequest {
    /// A block from a peer (gossip or sync), named by `source` in logs and
    /// metrics.
    Block {
        /// The block.
        block: Block,
        /// `gossip` or `sync`.
        source: &'static str,
    },
    /// A transaction for the mempool.
    Transaction(Transaction),
    /// A vote signed by `voter` (the envelope's verified originator).
    Vote {
        /// The voter's ed25519 key.
        voter: [u8; 32],
        /// The vote.
        vote: Vote,
    },
    /// Produce this node's block if its slot has come (`now` in Unix
    /// seconds).
    Produce {
        /// The current time.
        now: u64,
    },
}

/// The chain's answer to a [`ChainRequest`].
#[derive(Clone, Debug)]
pub enum ChainResponse {
    /// What happened to the block.
    Block(BlockOutcome),
    /// The transaction entered the mempool with this fee; `journal_seq` is
    /// the pool change to wait for before calling it durable.
    Transaction {
        /// Its id.
        txid: Txid,
        /// Its fee.
        fee: u64,
        /// The pool change that holds it ([`Chain::wait_durable`]).
        journal_seq: u64,
    },
    /// What the vote did.
    Vote(VoteHandled),
    /// The block produced, if the slot was this node's.
    Produced(Option<Block>),
}

/// The chain service: cheap to clone; every clone feeds one worker thread.
#[derive(Clone, Debug)]
pub struct ChainService {
    chain: Chain,
    jobs: mpsc::Sender<Job>,
    /// Blocks handed to [`ChainService::block`] and not yet applied or
    /// refused (their signatures may still be being checked).
    blocks_in_flight: Arc<AtomicUsize>,
}

/// Counts a block in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ChainService {
    /// Starts the worker thread for `chain`. The thread finishes the jobs
    /// already queued and ends when the last clone of the service is
    /// dropped; nothing it does needs waiting for at exit (every change it
    /// makes is one atomic redb commit, and what the node called final is
    /// on disk before it said so).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(chain: Chain) -> std::io::Result<ChainService> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let worker_chain = chain.clone();
        std::thread::Builder::new()
            .name("chain-worker".into())
            .spawn(move || {
                while let Some(job) = queue.blocking_recv() {
                    // A panicking job loses its reply, not the worker.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&worker_chain)
                    }));
                    if outcome.is_err() {
                        metrics::counter!("timed_task_panics_total", "task" => "chain_worker")
                            .increment(1);
                        tracing::error!(task = "chain_worker", "a chain job panicked");
                    }
                }
            })?;
        Ok(ChainService {
            chain,
            jobs,
            blocks_in_flight: Arc::default(),
        })
    }

    /// The chain, for reads that take no state lock ([`Chain::tip`],
    /// [`Chain::genesis`], the store).
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Runs `job` on the worker and returns its result.
    ///
    /// # Errors
    /// [`ChainError::Stopped`] if the worker has ended.
    pub async fn run<R, F>(&self, job: F) -> Result<R, ChainError>
    where
        R: Send + 'static,
        F: FnOnce(&Chain) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |chain| {
            let _ = reply.send(job(chain));
        });
        self.jobs.send(job).await.map_err(|_| ChainError::Stopped)?;
        answer.await.map_err(|_| ChainError::Stopped)
    }

    /// Verifies `block`'s header and transaction signatures on the blocking
    /// pool, then applies it on the worker.
    ///
    /// # Errors
    /// The block's flaw, or [`ChainError::Stopped`].
    pub async fn block(
        &self,
        block: Block,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let chain = self.chain.clone();
        let counter = self.blocks_in_flight.clone();
        // Counted in flight once its header shows it comes from the slot's
        // producer: junk cannot hold block production back.
        let (verified, in_flight): (VerifiedBlock, InFlight) =
            tokio::task::spawn_blocking(move || {
                chain.verify_header(&block)?;
                let in_flight = InFlight::new(&counter);
                chain
                    .verify_transactions(block)
                    .map(|verified| (verified, in_flight))
            })
            .await
            .map_err(|_| ChainError::Stopped)??;
        let outcome = self
            .run(move |chain| chain.handle_verified_block(verified, source))
            .await?;
        drop(in_flight);
        outcome
    }

    /// Blocks received and not yet applied or refused.
    ///
    /// # Correctness
    /// Block production waits while this is not zero: a block from the
    /// slot before ours may be having its signatures checked, and building
    /// on the old tip would only make a competitor that loses.
    pub fn blocks_in_flight(&self) -> usize {
        self.blocks_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a batch of blocks (sync) in flight until the guard drops.
    pub fn track_blocks(&self) -> impl Drop + Send + use<> {
        InFlight::new(&self.blocks_in_flight)
    }

    /// Verifies `tx`'s signatures on the blocking pool, then offers it to
    /// the mempool on the worker; returns its id, fee and journal position.
    ///
    /// # Errors
    /// Why it was refused, or [`ChainError::Stopped`].
    pub async fn transaction(&self, tx: Transaction) -> Result<(Txid, u64, u64), ChainError> {
        let magic = self.chain.magic();
        let verified = tokio::task::spawn_blocking(move || VerifiedTx::verify(tx, magic))
            .await
            .map_err(|_| ChainError::Stopped)?;
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                metrics::counter!("timed_transactions_total", "result" => e.kind()).increment(1);
                return Err(e.into());
            }
        };
        self.run(move |chain| {
            chain
                .submit_verified(verified)
                .map(|(txid, fee)| (txid, fee, chain.journal_seq()))
        })
        .await?
    }
}

impl Service<ChainRequest> for ChainService {
    type Response = ChainResponse;
    type Error = ChainError;
    type Future = Pin<Box<dyn Future<Output = Result<ChainResponse, ChainError>> + Send>>;

    /// Always ready: the bounded queue applies backpressure inside the
    /// response future, where the caller awaits room.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ChainError>> {
        if self.jobs.is_closed() {
            Poll::Ready(Err(ChainError::Stopped))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, request: ChainRequest) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            match request {
                ChainRequest::Block { block, source } => {
                    service.block(block, source).await.map(ChainResponse::Block)
                }
                ChainRequest::Transaction(tx) => {
                    service
                        .transaction(tx)
                        .await
                        .map(|(txid, fee, journal_seq)| ChainResponse::Transaction {
                            txid,
                            fee,
                            journal_seq,
                        })
                }
                ChainRequest::Vote { voter, vote } => service
                    .run(move |chain| chain.handle_vote(voter, vote))
                    .await?
                    .map(ChainResponse::Vote),
                ChainRequest::Produce { now } => service
                    .run(move |chain| chain.produce_if_scheduled(now))
                    .await?
                    .map(ChainResponse::Produced),
            }
        })
    }
}
