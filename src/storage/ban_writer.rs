//! The background writer of the persisted ban list.
//!
//! [`BanWriter::send`] hands a change to a thread over a bounded channel and
//! returns at once: it never blocks, never waits for a commit, so the
//! middleware that bans a peer does not wait for the disk. The thread takes
//! the first change, collects what arrives within [`DEBOUNCE`] (or until a
//! [`BanWriter::sync`] asks for a commit), and commits the batch in one
//! write transaction ([`Store::write_bans`]).
//!
//! # Correctness
//! * Changes are committed in the order they were sent; the caller sends
//!   them in the order they happened (the ban list sends while holding its
//!   own lock).
//! * When the channel is full, the change is dropped and the writer is
//!   marked "resync needed": at its next batch it discards what is queued,
//!   takes a snapshot of the whole list, and replaces the table with it
//!   ([`Store::replace_bans`]). Every change sent before the snapshot was
//!   taken is in the snapshot (the ban list changes and sends under one
//!   lock, and the snapshot takes that lock); changes still queued after it
//!   are replayed on top, which is harmless because each change states the
//!   new value of its row.
//! * A failed commit marks a resync too, retried every [`RETRY_INTERVAL`];
//!   once the store has failed ([`Store::failure`]) the writer stops.
//! * [`BanWriter::sync`] waits until every change sent before the call is
//!   committed (or covered by a committed snapshot).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BanWrite, Store, StoreError, StoredBan};

/// Changes the channel holds before the writer falls back to a resync.
pub const CHANNEL_CAPACITY: usize = 4096;

/// How long the writer collects changes after the first of a batch.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Most changes in one batch.
const MAX_BATCH: usize = 4096;

/// Delay before retrying after a failed commit.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Produces the whole list to store for a resync; `None` when there is no
/// list any more (its owner is gone), and nothing is written.
type Snapshot = Box<dyn Fn() -> Option<Vec<StoredBan>> + Send>;

enum Msg {
    Change(u64, BanWrite),
    Flush,
}

#[derive(Debug, Default)]
struct Progress {
    /// Every change with a sequence number up to this one is committed.
    committed: u64,
    batches: u64,
    resyncs: u64,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Status {
    /// Sequence number of the last change sent (the first is 1).
    sent: AtomicU64,
    resync: AtomicBool,
    progress: Mutex<Progress>,
    changed: Condvar,
}

/// The state shared by the clones of a [`BanWriter`].
pub(super) struct Handle {
    /// `None` once closed; the lock also orders sequence numbers and sends.
    tx: Mutex<Option<SyncSender<Msg>>>,
    status: Arc<Status>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What a [`BanWriter`] has done so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanWriterStats {
    /// Changes sent.
    pub sent: u64,
    /// Changes committed (or covered by a committed snapshot).
    pub committed: u64,
    /// Write transactions committed.
    pub batches: u64,
    /// Whole-list rewrites.
    pub resyncs: u64,
}

/// Writes ban changes to the store in batches, on a thread of its own.
/// Clones share the thread; it stops when the last clone is dropped or at
/// [`BanWriter::close`] (also called by [`Store::close`]).
#[derive(Clone)]
pub struct BanWriter {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for BanWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BanWriter")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Store {
    /// Starts a writer for the persisted ban list; `snapshot` gives the
    /// whole list when the writer has to rewrite it (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::Db`] if the thread cannot be started.
    pub fn ban_writer(
        &self,
        snapshot: impl Fn() -> Option<Vec<StoredBan>> + Send + 'static,
    ) -> Result<BanWriter, StoreError> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let status = Arc::new(Status::default());
        let thread = {
            let (store, status) = (self.clone(), status.clone());
            let snapshot: Snapshot = Box::new(snapshot);
            std::thread::Builder::new()
                .name("ban-writer".into())
                .spawn(move || run(&rx, &status, &store, &snapshot))
                .map_err(|e| StoreError::Db {
                    context: "start the ban writer",
                    message: e.to_string(),
                })?
        };
        let handle = Arc::new(Handle {
            tx: Mutex::new(Some(tx)),
            status,
            thread: Mutex::new(Some(thread)),
        });
        let mut writers = crate::locks::lock(&self.shared.ban_writers);
        writers.retain(|w| w.strong_count() > 0);
        writers.push(Arc::downgrade(&handle));
        Ok(BanWriter { handle })
    }
}

impl BanWriter {
    /// Queues `write`; never blocks. When the queue is full the change is
    /// dropped and the whole list is rewritten at the next batch instead.
    pub fn send(&self, write: BanWrite) {
        self.handle.send(write);
    }

    /// Waits until every change sent before this call is committed, at most
    /// `timeout`; true when it is.
    pub fn sync(&self, timeout: Duration) -> bool {
        self.handle.sync(timeout)
    }

    /// Rewrites the whole stored list from the snapshot at the next batch
    /// (at start-up, to make the stored list match the one in memory while
    /// changes may already be flowing).
    pub fn resync(&self) {
        self.handle.status.resync.store(true, Ordering::SeqCst);
        if let Some(tx) = crate::locks::lock(&self.handle.tx).as_ref() {
            // Wakes the writer; a full queue means it is awake anyway.
            let _ = tx.try_send(Msg::Flush);
        }
    }

    /// Commits what is queued (waiting at most `timeout`) and stops the
    /// thread; later changes are ignored.
    pub fn close(&self, timeout: Duration) {
        self.handle.close(timeout);
    }

    /// Counters.
    pub fn stats(&self) -> BanWriterStats {
        let progress = crate::locks::lock(&self.handle.status.progress);
        BanWriterStats {
            sent: self.handle.status.sent.load(Ordering::SeqCst),
            committed: progress.committed,
            batches: progress.batches,
            resyncs: progress.resyncs,
        }
    }
}

impl Handle {
    fn send(&self, write: BanWrite) {
        let tx = crate::locks::lock(&self.tx);
        let Some(tx) = tx.as_ref() else {
            tracing::debug!(?write, "ban writer closed: change not stored");
            return;
        };
        let seq = self.status.sent.fetch_add(1, Ordering::SeqCst) + 1;
        match tx.try_send(Msg::Change(seq, write)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.status.resync.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        capacity = CHANNEL_CAPACITY,
                        "ban writer behind: the whole ban list will be rewritten"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                if !self.status.resync.swap(true, Ordering::SeqCst) {
                    tracing::error!("ban writer stopped: ban changes are not stored");
                }
            }
        }
    }

    fn sync(&self, timeout: Duration) -> bool {
        let target = self.status.sent.load(Ordering::SeqCst);
        if let Some(tx) = crate::locks::lock(&self.tx).as_ref() {
            // A full queue means the writer is busy committing anyway.
            let _ = tx.try_send(Msg::Flush);
        }
        let deadline = Instant::now() + timeout;
        let mut progress = crate::locks::lock(&self.status.progress);
        loop {
            if progress.committed >= target {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if progress.stopped || left.is_zero() {
                return false;
            }
            progress = match self.status.changed.wait_timeout(progress, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    pub(super) fn close(&self, timeout: Duration) {
        let flushed = self.sync(timeout);
        let stopped = crate::locks::lock(&self.status.progress).stopped;
        // Dropping the sender ends the thread once the queue is empty.
        drop(crate::locks::lock(&self.tx).take());
        let thread = crate::locks::lock(&self.thread).take();
        match thread {
            // A thread that stopped on a failed database has said so.
            Some(thread) if flushed || stopped => {
                let _ = thread.join();
            }
            Some(_) => tracing::error!(
                timeout_ms = timeout.as_millis() as u64,
                "ban writer did not finish in time: the latest ban changes may be lost"
            ),
            None => {}
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close(Duration::from_secs(5));
    }
}

/// The writer thread: batches until the channel is closed and empty.
fn run(rx: &Receiver<Msg>, status: &Status, store: &Store, snapshot: &Snapshot) {
    let mut closing = false;
    while !closing {
        let mut batch = Batch::default();
        let first = if status.resync.load(Ordering::SeqCst) {
            match rx.recv_timeout(RETRY_INTERVAL) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            }
        } else {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => break,
            }
        };
        if let Some(first) = first {
            batch.take(first);
            let deadline = Instant::now() + DEBOUNCE;
            while !batch.flush && batch.writes.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(msg) => batch.take(msg),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
        }
        let resync = status.resync.swap(false, Ordering::SeqCst);
        let result = if resync {
            // The snapshot covers every change sent so far: drop the queue.
            while let Ok(msg) = rx.try_recv() {
                batch.take(msg);
            }
            batch.top = batch.top.max(status.sent.load(Ordering::SeqCst));
            match snapshot() {
                Some(list) => store.replace_bans(&list),
                None => Ok(()),
            }
        } else if batch.writes.is_empty() {
            Ok(())
        } else {
            store.write_bans(&batch.writes)
        };
        let mut progress = crate::locks::lock(&status.progress);
        match result {
            Ok(()) => {
                progress.committed = progress.committed.max(batch.top);
                if resync || !batch.writes.is_empty() {
                    progress.batches += 1;
                }
                progress.resyncs += u64::from(resync);
                drop(progress);
                status.changed.notify_all();
            }
            Err(error) => {
                drop(progress);
                if store.failure().is_some() {
                    // The database must be reopened: retrying is pointless.
                    tracing::error!(%error, "the database failed: ban changes are no longer stored");
                    break;
                }
                tracing::error!(%error, changes = batch.writes.len(), "cannot store ban changes; the whole list will be rewritten");
                status.resync.store(true, Ordering::SeqCst);
                if !closing {
                    std::thread::sleep(RETRY_INTERVAL);
                }
            }
        }
    }
    crate::locks::lock(&status.progress).stopped = true;
    status.changed.notify_all();
}

/// The changes of one batch.
#[derive(Default)]
struct Batch {
    writes: Vec<BanWrite>,
    /// The highest sequence number taken.
    top: u64,
    /// A sync asked for a commit now.
    flush: bool,
}

impl Batch {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Change(seq, write) => {
                self.top = self.top.max(seq);
                self.writes.push(write);
            }
            Msg::Flush => self.flush = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DB_FILE;

    fn ban(n: u32) -> StoredBan {
        StoredBan {
            subnet: format!("10.{}.{}.{}/32", n >> 16, (n >> 8) & 255, n & 255),
            expires_unix: None,
            reason: "score".into(),
        }
    }

    #[test]
    fn changes_are_committed_in_order_and_sync_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let writer = store.ban_writer(|| None).unwrap();
        for n in 0..1000 {
            writer.send(BanWrite::Put(ban(n)));
        }
        writer.send(BanWrite::Delete(ban(7).subnet));
        writer.send(BanWrite::Put(StoredBan {
            reason: "manual".into(),
            ..ban(8)
        }));
        assert!(writer.sync(Duration::from_secs(30)));
        let stats = writer.stats();
        assert_eq!((stats.sent, stats.committed), (1002, 1002));
        assert!(stats.batches >= 1);
        let stored = store.load_bans().unwrap();
        assert_eq!(stored.len(), 999);
        assert!(!stored.contains(&ban(7)));
        assert!(stored
            .iter()
            .any(|b| b.subnet == ban(8).subnet && b.reason == "manual"));
        writer.send(BanWrite::Clear);
        writer.close(Duration::from_secs(30));
        assert_eq!(store.ban_count().unwrap(), 0, "close commits the queue");
        writer.send(BanWrite::Put(ban(1)));
        assert_eq!(store.ban_count().unwrap(), 0, "ignored after close");
    }

    #[test]
    fn a_full_queue_falls_back_to_one_rewrite_of_the_whole_list() {
        use std::sync::atomic::AtomicU32;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        // The ban list this writer mirrors: 10 bans, plus each one the test
        // adds (added to the list before it is sent, as the blacklist does).
        let added = Arc::new(AtomicU32::new(0));
        let snapshot = {
            let added = added.clone();
            move || {
                let n = added.load(Ordering::SeqCst);
                Some((0..10).chain((0..n).map(|n| 1_000 + n)).map(ban).collect())
            }
        };
        let writer = store.ban_writer(snapshot).unwrap();
        // Hold the writer's store busy so that the queue fills: a write
        // transaction open here blocks the writer's commit.
        let busy = store.db().begin_write().unwrap();
        let total = (CHANNEL_CAPACITY + MAX_BATCH + 100) as u32;
        for n in 0..total {
            added.fetch_add(1, Ordering::SeqCst);
            writer.send(BanWrite::Put(ban(1_000 + n)));
        }
        drop(busy);
        assert!(writer.sync(Duration::from_secs(60)));
        // Whenever the snapshot was taken, it and the changes queued after
        // it leave exactly the list.
        let stats = writer.stats();
        assert!(
            stats.resyncs >= 1,
            "the overflow forced a rewrite: {stats:?}"
        );
        assert_eq!(stats.committed, u64::from(total));
        assert_eq!(store.load_bans().unwrap().len(), 10 + total as usize);
        writer.close(Duration::from_secs(30));
    }
}
