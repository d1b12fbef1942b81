#![allow(clippy::unwrap_used, missing_docs)]
//! Ban persistence: the cost of a ban with 0 and with 4,500 bans already
//! stored, as the node stores them (one row per change, batched by the
//! store's `BanWriter` off the caller's path) next to what schema 1 did
//! (the whole list rewritten on every ban), and the size of `chain.redb`
//! after 4,500 bans each way.
//!
//! Groups (each with 0 and 4,500 existing bans):
//! - `bans/middleware_path`: `Blacklist::ban_ip` with the writer as its
//!   sink, the time until it returns (what a connection's middleware pays);
//! - `bans/stored_burst`: bans made back to back, until all are committed
//!   (bans made and on disk per second);
//! - `bans/stored_each`: one ban, then wait until it is committed, then the
//!   next (sequential `setban` calls);
//! - `bans/rewrite_whole_list`: schema 1's way, the whole list plus the new
//!   ban rewritten in one transaction per ban.
//!
//! A summary table with both columns side by side and the file sizes is
//! printed at the end.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use tempfile::TempDir;

use timed::layers::blacklist::{BanChange, BanSink, Blacklist, BlacklistConfig, PersistedBan};
use timed::storage::{BanWrite, BanWriter, Store, StoredBan, DB_FILE};

/// Existing bans of each case.
const EXISTING: [usize; 2] = [0, 4_500];

/// Longest wait for the writer in a sample.
const SYNC: Duration = Duration::from_secs(300);

/// Total time and bans per (group, existing bans), for the summary.
type Totals = BTreeMap<(&'static str, usize), (Duration, u64)>;

static SUMMARY: Mutex<Totals> = Mutex::new(BTreeMap::new());

fn note(group: &'static str, existing: usize, elapsed: Duration, bans: u64) {
    let mut summary = SUMMARY.lock().unwrap();
    let entry = summary.entry((group, existing)).or_default();
    entry.0 += elapsed;
    entry.1 += bans;
}

/// A fresh address for every ban of the run (11.0.0.0 upward).
fn next_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0x0b00_0000);
    IpAddr::V4(Ipv4Addr::from(NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn stored(ban: PersistedBan) -> StoredBan {
    StoredBan {
        subnet: ban.subnet.to_string(),
        expires_unix: ban.expires_unix,
        reason: ban.reason,
    }
}

/// The node's sink (see `Node::persist_bans`).
struct WriterSink(BanWriter);

impl BanSink for WriterSink {
    fn changed(&self, change: BanChange) {
        self.0.send(match change {
            BanChange::Set(ban) => BanWrite::Put(stored(ban)),
            BanChange::Removed(net) => BanWrite::Delete(net.to_string()),
            BanChange::Cleared => BanWrite::Clear,
        });
    }

    fn operator_changed(&self) {
        self.0.sync(SYNC);
    }
}

struct Setup {
    _dir: TempDir,
    store: Store,
    list: Arc<Blacklist>,
    writer: BanWriter,
    existing: Vec<PersistedBan>,
}

impl Setup {
    /// A store and a ban list holding `existing` one-hour bans, wired as in
    /// the node.
    fn new(existing: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let list = Arc::new(Blacklist::new(&BlacklistConfig {
            max_entries: 1_000_000,
            ..BlacklistConfig::default()
        }));
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let existing: Vec<PersistedBan> = (0..existing)
            .map(|_| PersistedBan {
                subnet: next_ip().into(),
                expires_unix: Some(expires),
                reason: "score".into(),
            })
            .collect();
        let weak = Arc::downgrade(&list);
        let writer = store
            .ban_writer(move || {
                weak.upgrade()
                    .map(|l| l.persisted().into_iter().map(stored).collect())
            })
            .unwrap();
        list.set_sink(Arc::new(WriterSink(writer.clone())));
        let setup = Setup {
            _dir: dir,
            store,
            list,
            writer,
            existing,
        };
        setup.reset();
        setup
    }

    /// Back to exactly the existing bans, in memory and stored.
    fn reset(&self) {
        self.list.clear();
        self.list.restore(&self.existing);
        let rows: Vec<StoredBan> = self.existing.iter().cloned().map(stored).collect();
        self.store.replace_bans(&rows).unwrap();
        assert_eq!(self.store.ban_count().unwrap(), self.existing.len() as u64);
    }

    fn ban(&self) {
        self.list
            .ban_ip(next_ip(), Some(Duration::from_secs(3600)), "score");
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("bans");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for existing in EXISTING {
        let s = Setup::new(existing);
        group.bench_with_input(
            BenchmarkId::new("middleware_path", existing),
            &existing,
            |b, &existing| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.ban();
                    }
                    let elapsed = start.elapsed();
                    assert!(s.writer.sync(SYNC));
                    s.reset();
                    note("middleware_path", existing, elapsed, iters);
                    elapsed
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("stored_burst", existing),
            &existing,
            |b, &existing| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.ban();
                    }
                    assert!(s.writer.sync(SYNC));
                    let elapsed = start.elapsed();
                    s.reset();
                    note("stored_burst", existing, elapsed, iters);
                    elapsed
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("stored_each", existing),
            &existing,
            |b, &existing| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.ban();
                        assert!(s.writer.sync(SYNC));
                    }
                    let elapsed = start.elapsed();
                    s.reset();
                    note("stored_each", existing, elapsed, iters);
                    elapsed
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("rewrite_whole_list", existing),
            &existing,
            |b, &existing| {
                let mut rows: Vec<StoredBan> = s.existing.iter().cloned().map(stored).collect();
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rows.push(StoredBan {
                            subnet: format!("{}/32", next_ip()),
                            expires_unix: None,
                            reason: "score".into(),
                        });
                        s.store.replace_bans(&rows).unwrap();
                        rows.pop();
                    }
                    let elapsed = start.elapsed();
                    note("rewrite_whole_list", existing, elapsed, iters);
                    elapsed
                })
            },
        );
    }
    group.finish();
}

/// The size of a store's file, closed, empty and after 4,500 bans made one
/// at a time, stored each way.
fn file_sizes() -> Vec<(&'static str, u64, u64)> {
    let size = |dir: &TempDir| std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
    let mut out = Vec::new();
    let empty = {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(&dir.path().join(DB_FILE)).unwrap());
        size(&dir)
    };
    {
        let s = Setup::new(0);
        for _ in 0..4_500 {
            s.ban();
            assert!(s.writer.sync(SYNC));
        }
        assert_eq!(s.store.ban_count().unwrap(), 4_500);
        let Setup {
            _dir: dir,
            store,
            list,
            writer,
            ..
        } = s;
        writer.close(SYNC);
        drop((store, list, writer));
        out.push(("one row per ban, each committed", empty, size(&dir)));
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let mut rows = Vec::new();
        for _ in 0..4_500 {
            rows.push(StoredBan {
                subnet: format!("{}/32", next_ip()),
                expires_unix: None,
                reason: "score".into(),
            });
            store.replace_bans(&rows).unwrap();
        }
        drop(store);
        out.push(("whole list rewritten per ban (schema 1)", empty, size(&dir)));
    }
    out
}

fn print_summary(sizes: &[(&'static str, u64, u64)]) {
    let line = "-".repeat(78);
    eprintln!("\n{line}\nban persistence (bans per second; means over every timed call)\n{line}");
    eprintln!("{:<44} {:>15} {:>15}", "", "0 existing", "4,500 existing");
    let summary = SUMMARY.lock().unwrap();
    for (group, label) in [
        ("middleware_path", "ban_ip returns (middleware path)"),
        ("stored_burst", "burst, until all committed"),
        ("stored_each", "one at a time, each committed"),
        (
            "rewrite_whole_list",
            "whole list rewritten per ban (schema 1)",
        ),
    ] {
        let rate = |existing| {
            summary
                .get(&(group, existing))
                .filter(|(d, _)| !d.is_zero())
                .map_or("-".to_string(), |(d, n)| {
                    format!("{:.0}", *n as f64 / d.as_secs_f64())
                })
        };
        eprintln!("{label:<44} {:>15} {:>15}", rate(0), rate(4_500));
    }
    eprintln!("{line}\nchain.redb after 4,500 bans (an empty store first)");
    for (label, empty, size) in sizes {
        eprintln!(
            "{label:<44} {:>8.2} MB -> {:.2} MB",
            *empty as f64 / 1e6,
            *size as f64 / 1e6
        );
    }
    eprintln!("{line}");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    let sizes = file_sizes();
    print_summary(&sizes);
    c.final_summary();
}
