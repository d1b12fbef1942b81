//! Opening the database with checks (see the parent module's "Integrity").
//!
//! * A missing file is created; an existing one is opened with
//!   `Builder::open`, never `create`, which would silently turn an empty
//!   file into a new, empty database.
//! * redb repairs a file left by a crash while opening it (logged), then
//!   its integrity check (`Database::check_integrity`) verifies every page
//!   checksum: a repair is logged as a warning, a failure is
//!   [`StoreError::Damaged`].
//! * redb asserts on some damage (a truncated file, garbage appended)
//!   instead of returning an error: the whole open runs under
//!   `catch_unwind`, with a temporary panic hook that sends the message to
//!   tracing. After a panic the open is tried once more, because redb marks
//!   a file whose length disagrees with its header for recovery before it
//!   asserts, and recovers it on the next open (whole pages of garbage
//!   appended: the store opens with all its data, checked by the integrity
//!   check). A second panic is [`StoreError::Damaged`].
//! * The tables are prepared and migrated ([`super::migrate`]), then the
//!   tip is compared with the tip marker ([`super::marker`]).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redb::{Database, DatabaseError, StorageError};

use super::marker::{MarkedTip, TipMarker};
use super::migrate::{self, Prepared};
use super::{db_err, Store, StoreError};
use crate::constants::MAX_REORG_DEPTH;

/// Serialises the swaps of the process-wide panic hook.
static PANIC_HOOK: Mutex<()> = Mutex::new(());

/// The text of a panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    };
    // One line, bounded: it ends up in a one-line start-up error.
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

/// Runs `f`, turning a panic into `Err(message)`. While it runs, a panic
/// hook logs this thread's panics through tracing instead of printing them
/// to stderr; other threads' panics go to the previous hook.
fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let _serialised = crate::locks::lock(&PANIC_HOOK);
    let previous = Arc::new(panic::take_hook());
    let opener = std::thread::current().id();
    let others = previous.clone();
    panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != opener {
            return others(info);
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            %location,
            message = %panic_text(info.payload()),
            "the database library failed an internal check (caught)"
        );
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    // Dropping our hook drops its clone of `previous`.
    drop(panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => panic::set_hook(hook),
        Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
    }
    result.map_err(|payload| panic_text(&*payload))
}

/// The typed error for a redb error met while opening an existing file:
/// an unreadable header or structural damage is [`StoreError::Damaged`].
fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::Storage(StorageError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            damaged(path, format!("redb cannot read it ({e})"))
        }
        DatabaseError::Storage(StorageError::Corrupted(message)) => {
            damaged(path, format!("redb found it corrupted ({message})"))
        }
        other => db_err("open")(other),
    }
}

fn damaged(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Opens (or creates) the database and prepares its tables; `size` is the
/// existing file's length.
fn open_db(path: &Path, size: Option<u64>) -> Result<(Database, Prepared), StoreError> {
    let exists = size.is_some();
    let mut builder = Database::builder();
    builder.set_repair_callback(|session| {
        tracing::warn!(
            progress = session.progress(),
            "repairing the database after an unclean shutdown"
        );
    });
    let mut db = if exists {
        builder.open(path).map_err(|e| open_error(path, e))?
    } else {
        builder.create(path).map_err(db_err("create"))?
    };
    if exists {
        let started = Instant::now();
        let clean = db
            .check_integrity()
            .map_err(|e| damaged(path, format!("redb's integrity check failed ({e})")))?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if clean {
            tracing::info!(
                path = %path.display(),
                bytes = size.unwrap_or(0),
                elapsed_ms,
                "database integrity check passed"
            );
        } else {
            tracing::warn!(
                path = %path.display(),
                bytes = size.unwrap_or(0),
                elapsed_ms,
                "database integrity check found damage and repaired it"
            );
        }
    }
    let prepared = migrate::prepare(&db).map_err(|e| match e {
        StoreError::Corrupt { table, message } => damaged(path, format!("{table}: {message}")),
        other => other,
    })?;
    Ok((db, prepared))
}

impl Store {
    /// Opens the database at `path`, creating it only when no file exists,
    /// with the checks of the parent module's "Integrity" section.
    ///
    /// # Errors
    /// [`StoreError::Damaged`] when the file is empty, unreadable, fails
    /// redb's integrity check or makes redb panic;
    /// [`StoreError::LostData`] when the store ends more than
    /// `MAX_REORG_DEPTH` blocks below its tip marker (or holds no block
    /// while the marker names a height above 0);
    /// [`StoreError::Schema`] for another table layout; a database error
    /// (the file is locked by another process, cannot be read, ...).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let started = Instant::now();
        let marker = TipMarker::next_to(path);
        let marked = marker.read().unwrap_or_else(|problem| {
            tracing::warn!(
                marker = %marker.path().display(),
                problem,
                "the tip marker is unreadable: ignored, and rewritten"
            );
            None
        });
        let size = match std::fs::metadata(path) {
            Ok(meta) => Some(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(StoreError::Db {
                    context: "open",
                    message: format!("{}: {e}", path.display()),
                })
            }
        };
        let marker_file = marker.path().to_path_buf();
        let lost = |height: Option<u64>, marked: MarkedTip| StoreError::LostData {
            path: path.to_path_buf(),
            height,
            marker_height: marked.height,
            marker: marker_file.clone(),
        };
        match (size, marked) {
            (Some(0), _) => return Err(damaged(path, "the file is empty (0 bytes)")),
            (None, Some(m)) if m.height > 0 => return Err(lost(None, m)),
            _ => {}
        }
        let attempt = || catching_panics(|| open_db(path, size));
        let (db, prepared) = match attempt() {
            Ok(opened) => opened?,
            Err(first) => {
                // redb marks a file whose length does not match its header
                // for recovery before failing an assertion; the next open
                // recovers it (seen with whole pages appended).
                tracing::warn!(
                    path = %path.display(),
                    panic = %first,
                    "the database library failed an internal check while opening the file; trying once more"
                );
                attempt().map_err(|m| {
                    damaged(
                        path,
                        format!(
                            "the database library failed an internal check while opening it ({m})"
                        ),
                    )
                })??
            }
        };
        let store = Store::from_db(db, path, marker);
        for (height, problem) in prepared.damaged {
            store.damaged_block(height, problem);
        }
        let tip = store.tip()?;
        if let Some(m) = marked {
            let short = match tip {
                None => m.height > 0,
                Some((height, _)) => height.saturating_add(MAX_REORG_DEPTH) < m.height,
            };
            if short {
                return Err(lost(tip.map(|(h, _)| h), m));
            }
        }
        if let Some((height, hash)) = tip {
            // Keep a higher marker (a rollback within the reorg bound);
            // write a missing or lower one.
            if marked.is_none_or(|m| m.height < height) {
                store.shared.marker.write_now(MarkedTip { height, hash });
            }
        }
        tracing::info!(
            path = %path.display(),
            bytes = size.unwrap_or(0),
            created = size.is_none(),
            height = tip.map(|(h, _)| h),
            marker_height = marked.map(|m| m.height),
            migrated_from = prepared.migrated_from,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store opened"
        );
        Ok(store)
    }
}
