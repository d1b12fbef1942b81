//! The pool journal: group commit of mempool and vote changes.
//!
//! Every change of the pool is appended, under the chain's state lock, as a
//! [`PoolOp`] with a sequence number. A writer thread takes whatever has
//! accumulated and commits it in one redb write transaction (one fsync for
//! the group, never one per transaction on the hot path), then publishes the
//! highest sequence number that is durable. Callers that must not claim more
//! than the disk holds (the RPC's "accepted", "final") wait for the sequence
//! number of their change.
//!
//! # Correctness
//! Appends happen under the state lock, so the journal's order is the order
//! of the state changes; one thread commits, group after group, so the store
//! sees them in that order. A failed commit keeps its group and is retried
//! (every second); the durable number does not advance meanwhile, so nothing
//! is reported durable that is not.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::{PoolOp, Store};

/// Delay before retrying a failed group commit.
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Queue {
    ops: Vec<PoolOp>,
    /// Sequence number of the last op appended.
    last: u64,
    closed: bool,
}

/// The journal shared by the chain and its writer thread.
#[derive(Debug)]
pub(crate) struct Journal {
    queue: Mutex<Queue>,
    wake: Condvar,
    durable: watch::Sender<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// A journal whose writer thread commits into `store`.
    pub(crate) fn start(store: Arc<Store>) -> Arc<Journal> {
        let (durable, _) = watch::channel(0);
        let journal = Arc::new(Journal {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            durable,
            writer: Mutex::new(None),
        });
        let writer = journal.clone();
        match std::thread::Builder::new()
            .name("timed-pool-journal".into())
            .spawn(move || writer.run(&store))
        {
            Ok(handle) => *crate::locks::lock(&journal.writer) = Some(handle),
            Err(error) => {
                tracing::error!(%error, "cannot start the pool journal thread: the pool is not persisted")
            }
        }
        journal
    }

    /// Appends `op`; returns its sequence number.
    pub(crate) fn append(&self, op: PoolOp) -> u64 {
        let mut queue = crate::locks::lock(&self.queue);
        queue.ops.push(op);
        queue.last += 1;
        let seq = queue.last;
        drop(queue);
        self.wake.notify_one();
        seq
    }

    /// The sequence number of the last op appended.
    pub(crate) fn last(&self) -> u64 {
        crate::locks::lock(&self.queue).last
    }

    /// The highest sequence number committed to disk.
    pub(crate) fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until `seq` is durable; false if the journal closed first.
    pub(crate) async fn wait_durable(&self, seq: u64) -> bool {
        let mut rx = self.durable.subscribe();
        let reached = rx.wait_for(|d| *d >= seq).await.is_ok();
        reached
    }

    /// Blocks until everything appended so far is durable, or `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let target = self.last();
        let deadline = std::time::Instant::now() + timeout;
        while self.durable() < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Stops the writer after it committed what is queued, and waits for
    /// it.
    pub(crate) fn close(&self) {
        crate::locks::lock(&self.queue).closed = true;
        self.wake.notify_one();
        let handle = crate::locks::lock(&self.writer).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    fn run(&self, store: &Store) {
        let mut failed_group: Vec<PoolOp> = Vec::new();
        loop {
            let (group, seq, closed) = {
                let mut queue = crate::locks::lock(&self.queue);
                while queue.ops.is_empty() && failed_group.is_empty() && !queue.closed {
                    queue = self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                let mut group = std::mem::take(&mut failed_group);
                group.append(&mut queue.ops);
                (group, queue.last, queue.closed)
            };
            if !group.is_empty() {
                match store.apply_pool_ops(&group) {
                    Ok(()) => {
                        self.durable.send_replace(seq);
                    }
                    Err(error) => {
                        if crate::logging::allow("pool_journal_failed") {
                            tracing::error!(%error, ops = group.len(), "cannot persist the mempool; retrying");
                        }
                        failed_group = group;
                        if closed {
                            return;
                        }
                        std::thread::sleep(RETRY_DELAY);
                        continue;
                    }
                }
            }
            if closed {
                return;
            }
        }
    }
}
