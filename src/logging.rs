//! Rate-limited logging for events a remote party can trigger.
//!
//! A refused socket, a failed handshake, a refused message: each is worth a
//! log line when it is rare, and a disk-filling flood when an attacker
//! repeats it. Every such call site asks [`allow`] with a stable kind name
//! first. Each kind gets [`LINES_PER_WINDOW`] lines per [`WINDOW`]; beyond
//! that lines are counted, not written, and one summary line per kind
//! ("suppressed N similar log lines") follows when the window ends (at the
//! next event of that kind or at the next [`flush`], which the node's
//! housekeeping calls). Metrics keep the exact counts; the log keeps a
//! sample and the totals.
//!
//! # Security
//! The table holds one entry per *kind* (`&'static str`s chosen in the
//! code), never per remote address, so it cannot grow with the attacker's
//! address space.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// How long a kind's line budget lasts.
///
/// Ten seconds keeps a burst's first lines (usually the informative ones)
/// and bounds a sustained flood to a few lines per window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines of one kind written per window; the rest are summarised.
///
/// At about 150 bytes a line, 10 lines per 10 s is 150 bytes/s per kind at
/// worst, instead of one line per event (0.7 MB/s from one IP was measured
/// for refused sockets before this limit).
pub const LINES_PER_WINDOW: u32 = 10;

#[derive(Debug)]
struct KindState {
    window_start: Instant,
    written: u32,
    suppressed: u64,
}

/// A kind and its sub-kind ("" when none).
type Key = (&'static str, &'static str);

fn table() -> &'static Mutex<HashMap<Key, KindState>> {
    static TABLE: OnceLock<Mutex<HashMap<Key, KindState>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Ends `state`'s window if it is over: logs the summary of what it
/// suppressed and starts a new one.
fn roll(key: Key, state: &mut KindState, now: Instant) {
    if now.saturating_duration_since(state.window_start) < WINDOW {
        return;
    }
    if state.suppressed > 0 {
        // Not `log.kind`: tracing's formatter hides `log.*` fields.
        tracing::info!(
            kind = key.0,
            sub_kind = key.1,
            suppressed = state.suppressed,
            window_s = WINDOW.as_secs(),
            "suppressed similar log lines"
        );
    }
    state.window_start = now;
    state.written = 0;
    state.suppressed = 0;
}

/// True if a line of `kind` may be written now; false means the caller
/// skips its log line (it is counted for the summary).
pub fn allow(kind: &'static str) -> bool {
    allow_for(kind, "")
}

/// Like [`allow`], with a separate budget per `sub_kind` of `kind`.
pub fn allow_for(kind: &'static str, sub_kind: &'static str) -> bool {
    let now = Instant::now();
    let key = (kind, sub_kind);
    let mut table = crate::locks::lock(table());
    let state = table.entry(key).or_insert(KindState {
        window_start: now,
        written: 0,
        suppressed: 0,
    });
    roll(key, state, now);
    if state.written < LINES_PER_WINDOW {
        state.written += 1;
        true
    } else {
        state.suppressed += 1;
        false
    }
}

/// Writes the summary of every kind whose window has ended with lines
/// suppressed (called periodically, so a flood that stopped still gets its
/// summary line).
pub fn flush() {
    let now = Instant::now();
    let mut table = crate::locks::lock(table());
    for (key, state) in table.iter_mut() {
        roll(*key, state, now);
    }
}

/// Lines of `kind` suppressed in its current window (for tests).
pub fn suppressed(kind: &'static str) -> u64 {
    crate::locks::lock(table())
        .get(&(kind, ""))
        .map_or(0, |s| s.suppressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_kind_gets_its_budget_per_window_then_is_counted() {
        let kind = "test_budget_kind";
        let allowed = (0..100).filter(|_| allow(kind)).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        assert_eq!(suppressed(kind), 100 - u64::from(LINES_PER_WINDOW));
        // Another kind has its own budget.
        assert!(allow("test_other_kind"));
        tokio::time::advance(WINDOW).await;
        flush();
        assert_eq!(suppressed(kind), 0, "the summary resets the count");
        assert!(allow(kind), "a new window has a fresh budget");
    }
}
