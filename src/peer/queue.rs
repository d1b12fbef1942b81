//! The bounded, prioritised send queue of one connection.
//!
//! Messages are queued already encoded (a broadcast encodes once for all
//! peers). Four lanes are drained in strict priority order: control (pings,
//! pongs, replies, requests) before blocks, blocks before votes, votes
//! before transactions.
//!
//! # Security
//! Each lane holds at most a fixed number of messages and the queue at most
//! `max_bytes` in total. A push that does not fit fails with [`QueueFull`]:
//! the caller disconnects the peer, which is not draining its queue, instead
//! of buffering without bound.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// The lane a message is queued in; lower drains first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Pings, pongs, replies, requests, disconnects.
    Control = 0,
    /// Blocks.
    Block = 1,
    /// Votes.
    Vote = 2,
    /// Transactions and address announcements.
    Transaction = 3,
}

impl Priority {
    /// A label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Control => "control",
            Priority::Block => "block",
            Priority::Vote => "vote",
            Priority::Transaction => "tx",
        }
    }
}

/// Lane capacities in messages, by priority.
pub const LANE_CAPACITY: [usize; 4] = [256, 64, 2_048, 2_048];

/// Default byte budget of one queue: four maximal frames.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The queue is full: the peer is not draining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send queue full ({lane} lane): the peer is not draining it")]
pub struct QueueFull {
    /// The lane that overflowed.
    pub lane: &'static str,
}

#[derive(Debug, Default)]
struct Lanes {
    lanes: [VecDeque<Bytes>; 4],
    bytes: usize,
    closed: bool,
}

/// A connection's send queue.
#[derive(Debug)]
pub struct SendQueue {
    lanes: Mutex<Lanes>,
    notify: Notify,
    max_bytes: usize,
}

impl SendQueue {
    /// An empty queue holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        SendQueue {
            lanes: Mutex::new(Lanes::default()),
            notify: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        crate::locks::lock(&self.lanes)
    }

    /// Queues an encoded message.
    ///
    /// # Errors
    /// [`QueueFull`] if its lane or the byte budget is exhausted, or the
    /// queue is closed.
    pub fn push(&self, frame: Bytes, priority: Priority) -> Result<(), QueueFull> {
        let lane = priority as usize;
        let full = QueueFull {
            lane: priority.as_str(),
        };
        {
            let mut lanes = self.lock();
            if lanes.closed
                || lanes.lanes[lane].len() >= LANE_CAPACITY[lane]
                // An empty queue takes any one frame, so a budget below
                // the frame limit cannot make a message unsendable.
                || (lanes.bytes > 0 && lanes.bytes + frame.len() > self.max_bytes)
            {
                return Err(full);
            }
            lanes.bytes += frame.len();
            lanes.lanes[lane].push_back(frame);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Takes the highest-priority message, waiting for one; `None` once the
    /// queue is closed and empty.
    pub async fn pop(&self) -> Option<Bytes> {
        loop {
            let notified = self.notify.notified();
            {
                let mut lanes = self.lock();
                for lane in 0..4 {
                    if let Some(frame) = lanes.lanes[lane].pop_front() {
                        lanes.bytes -= frame.len();
                        return Some(frame);
                    }
                }
                if lanes.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Refuses further pushes; `pop` drains what is left, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.lock().lanes.iter().map(VecDeque::len).sum()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_drains_before_blocks_votes_and_transactions() {
        let q = SendQueue::new(1 << 20);
        q.push(Bytes::from_static(b"tx"), Priority::Transaction)
            .unwrap();
        q.push(Bytes::from_static(b"vote"), Priority::Vote).unwrap();
        q.push(Bytes::from_static(b"block"), Priority::Block)
            .unwrap();
        q.push(Bytes::from_static(b"ping"), Priority::Control)
            .unwrap();
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(q.pop().await.unwrap());
        }
        assert_eq!(
            order,
            ["ping", "block", "vote", "tx"].map(|s| Bytes::from(s.as_bytes()))
        );
        q.close();
        assert!(q.pop().await.is_none());
        assert!(q.push(Bytes::from_static(b"x"), Priority::Control).is_err());
    }

    #[test]
    fn lanes_and_bytes_are_bounded() {
        let q = SendQueue::new(1 << 30);
        for _ in 0..LANE_CAPACITY[1] {
            q.push(Bytes::from_static(b"b"), Priority::Block).unwrap();
        }
        assert_eq!(
            q.push(Bytes::from_static(b"b"), Priority::Block),
            Err(QueueFull { lane: "block" })
        );
        q.push(Bytes::from_static(b"v"), Priority::Vote).unwrap();
        let q = SendQueue::new(10);
        q.push(Bytes::from(vec![0u8; 8]), Priority::Transaction)
            .unwrap();
        assert!(q
            .push(Bytes::from(vec![0u8; 3]), Priority::Control)
            .is_err());
        assert_eq!(q.bytes(), 8);
    }
}
