//! The tip marker: a small text file next to the database (`chain.tip`
//! next to `chain.redb`) recording a height and hash the store had reached.
//!
//! It lets [`Store::open`](super::Store::open) tell a database that lost
//! data (truncated, replaced by an empty file, restored from an old copy by
//! mistake) from one that is simply young: a store whose tip is more than
//! [`MAX_REORG_DEPTH`](crate::constants::MAX_REORG_DEPTH) blocks below the
//! marker, or that holds no block while the marker names a height above 0,
//! is refused at start-up ([`StoreError::LostData`](super::StoreError)).
//!
//! # Format
//! Two lines of text: `height <decimal>` and `hash <64 hex digits>`.
//!
//! # Correctness
//! The marker is a lower bound, never a claim the store cannot back:
//! * it is written only after the commit that made `height` the tip has
//!   returned, and redb commits are durable when `commit` returns, so a
//!   crash between the commit and the marker write leaves the marker at an
//!   older height, which the store has or exceeds;
//! * a rollback lowers the tip by at most `MAX_REORG_DEPTH` below any tip
//!   the marker recorded (deeper forks are refused), which the check at
//!   open tolerates;
//! * it is replaced atomically (written to `chain.tip.tmp`, then renamed),
//!   so a reader sees the old or the new content; without an fsync a power
//!   loss may leave an older, empty or missing file, which is again a lower
//!   bound (an unreadable marker is logged and rewritten, not fatal).
//!
//! Writes are rate-limited to one per [`MIN_WRITE_INTERVAL`]: a commit
//! sooner than that leaves its tip pending, written by the next commit after
//! the interval or by `TipMarker::flush` at a clean close.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::chain::block::BlockHash;

/// Least time between two marker writes.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The marker file of the database at `db_path`: the same name with the
/// extension `tip` (`chain.tip` for `chain.redb`).
pub fn marker_path(db_path: &Path) -> PathBuf {
    db_path.with_extension("tip")
}

/// A tip as the marker records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkedTip {
    /// The height the store had reached.
    pub height: u64,
    /// The hash of the block at that height then.
    pub hash: BlockHash,
}

impl MarkedTip {
    fn render(&self) -> String {
        format!("height {}\nhash {}\n", self.height, hex::encode(self.hash))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut height = None;
        let mut hash = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.trim().split_once(' ') {
                Some(("height", v)) => {
                    height = Some(
                        v.trim()
                            .parse::<u64>()
                            .map_err(|e| format!("height: {e}"))?,
                    )
                }
                Some(("hash", v)) => {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(v.trim(), &mut h).map_err(|e| format!("hash: {e}"))?;
                    hash = Some(h);
                }
                _ => return Err(format!("unexpected line {:?}", truncate(line))),
            }
        }
        match (height, hash) {
            (Some(height), Some(hash)) => Ok(MarkedTip { height, hash }),
            _ => Err("height or hash missing".to_string()),
        }
    }
}

/// At most 40 characters of `s`, for messages about a damaged file.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[derive(Debug, Default)]
struct State {
    last_write: Option<Instant>,
    pending: Option<MarkedTip>,
}

/// Reads and writes the marker of one database.
#[derive(Debug)]
pub(super) struct TipMarker {
    path: PathBuf,
    state: Mutex<State>,
}

impl TipMarker {
    /// The marker of the database at `db_path`.
    pub(super) fn next_to(db_path: &Path) -> Self {
        TipMarker {
            path: marker_path(db_path),
            state: Mutex::new(State::default()),
        }
    }

    /// The marker file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded tip: `Ok(None)` without a marker file, `Err` with a
    /// description when the file exists but cannot be read or parsed.
    pub(super) fn read(&self) -> Result<Option<MarkedTip>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| "not text".to_string())?;
                MarkedTip::parse(&text).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Notes a committed tip: written now when the last write is at least
    /// [`MIN_WRITE_INTERVAL`] old, otherwise kept pending.
    pub(super) fn committed(&self, tip: MarkedTip) {
        let mut state = crate::locks::lock(&self.state);
        let due = state
            .last_write
            .is_none_or(|at| at.elapsed() >= MIN_WRITE_INTERVAL);
        if due {
            state.pending = None;
            state.last_write = Some(Instant::now());
            self.write_logged(tip);
        } else {
            state.pending = Some(tip);
        }
    }

    /// Writes `tip` now, whatever the rate limit (at open).
    pub(super) fn write_now(&self, tip: MarkedTip) {
        let mut state = crate::locks::lock(&self.state);
        state.pending = None;
        state.last_write = Some(Instant::now());
        self.write_logged(tip);
    }

    /// Writes the pending tip, if any (at a clean close).
    pub(super) fn flush(&self) {
        let mut state = crate::locks::lock(&self.state);
        if let Some(tip) = state.pending.take() {
            state.last_write = Some(Instant::now());
            self.write_logged(tip);
        }
    }

    fn write_logged(&self, tip: MarkedTip) {
        if let Err(error) = self.write(tip) {
            // The marker only guards against lost data; failing to update
            // it leaves an older lower bound, which is safe.
            tracing::warn!(
                path = %self.path.display(),
                height = tip.height,
                %error,
                "cannot write the tip marker"
            );
        }
    }

    /// Replaces the file atomically: a temporary file, then a rename.
    fn write(&self, tip: MarkedTip) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tip.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(tip.render().as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(height: u64) -> MarkedTip {
        MarkedTip {
            height,
            hash: [height as u8; 32],
        }
    }

    #[test]
    fn the_marker_round_trips_and_sits_next_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chain.redb");
        assert_eq!(marker_path(&db), dir.path().join("chain.tip"));
        let marker = TipMarker::next_to(&db);
        assert_eq!(marker.read(), Ok(None), "no file yet");
        marker.write_now(tip(468));
        assert_eq!(marker.read(), Ok(Some(tip(468))));
        let text = std::fs::read_to_string(marker.path()).unwrap();
        assert_eq!(text, format!("height 468\nhash {}\n", "d4".repeat(32)));
        assert!(!dir.path().join("chain.tip.tmp").exists(), "renamed away");
    }

    #[test]
    fn writes_are_rate_limited_and_flush_writes_the_pending_tip() {
        let dir = tempfile::tempdir().unwrap();
        let marker = TipMarker::next_to(&dir.path().join("chain.redb"));
        marker.committed(tip(1));
        assert_eq!(
            marker.read(),
            Ok(Some(tip(1))),
            "the first write is immediate"
        );
        marker.committed(tip(2));
        marker.committed(tip(3));
        assert_eq!(
            marker.read(),
            Ok(Some(tip(1))),
            "within the interval: pending"
        );
        marker.flush();
        assert_eq!(marker.read(), Ok(Some(tip(3))), "flush writes the latest");
        marker.flush();
        assert_eq!(
            marker.read(),
            Ok(Some(tip(3))),
            "nothing pending: unchanged"
        );
        // After the interval the next commit writes at once.
        crate::locks::lock(&marker.state).last_write =
            Some(Instant::now() - MIN_WRITE_INTERVAL - Duration::from_millis(1));
        marker.committed(tip(4));
        assert_eq!(marker.read(), Ok(Some(tip(4))));
    }

    #[test]
    fn a_damaged_marker_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let marker = TipMarker::next_to(&dir.path().join("chain.redb"));
        for bad in [
            &b""[..],
            b"height 12\n",
            b"height x\nhash 00\n",
            b"height 5\nhash 1234\n",
            b"\xff\xfe",
            b"tip 5\n",
        ] {
            std::fs::write(marker.path(), bad).unwrap();
            assert!(marker.read().is_err(), "{bad:?}");
        }
        // A rewrite replaces the damaged file.
        marker.write_now(tip(9));
        assert_eq!(marker.read(), Ok(Some(tip(9))));
    }
}
