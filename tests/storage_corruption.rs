#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A damaged `chain.redb` with real `timed run` processes: each case has a
//! pinned outcome, asserted by exit code and message, and nothing panics
//! (no exit code 101, no "panicked" on stderr).
//!
//! | damage | outcome |
//! |---|---|
//! | truncated to 0 bytes | exit 1, "is damaged: the file is empty (0 bytes)", file not re-initialised |
//! | truncated to half | exit 1, "is damaged: the database library failed an internal check" |
//! | 1 MiB of garbage appended | redb recovers it on a second open attempt: the node starts with its whole chain |
//! | 1,000 bytes appended (not whole pages) | exit 1, "is damaged: ... internal check" |
//! | bytes flipped inside a stored block | exit 1, "is damaged: redb's integrity check failed" |
//! | a block row rewritten with another block (redb's checks pass) | the node starts, refuses to serve that block (RPC error, a syncing peer stops below it), logs it as damaged |
//! | `chain.tip` far above the store, or `chain.redb` deleted | exit 1, "has lost data" |
//! | the file cannot grow while running (RLIMIT_FSIZE) | exit 1, "the database ... failed while running" |
//!
//! `timed run --resync` moves the damaged file aside and starts from
//! genesis.
//!
//! Data dirs are built in-process (a chain of [`BLOCKS`] blocks with one
//! payment each); nodes listen on 127.4.x.x only. Every child is killed by
//! a guard; waits have deadlines.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::chains::seed_chain;
use common::procs::{
    call, clean_command, height, metric, poll, timed_stdin_null, wait_exit, write_config, Guard,
};
use serde_json::json;
use timed::crypto::NodeIdentity;

/// Blocks in each prepared chain, genesis aside.
const BLOCKS: u64 = 40;

/// Upper bound for a node to start, answer or exit.
const DEADLINE: Duration = Duration::from_secs(30);

/// A prepared data dir: config, chain, the stored blocks' bytes.
struct Prepared {
    dir: PathBuf,
    config: PathBuf,
    rpc: SocketAddr,
    /// `[chain]` and the rest of the config, for another node to follow.
    chain_section: String,
    raw_blocks: Vec<Vec<u8>>,
}

impl Prepared {
    fn db(&self) -> PathBuf {
        self.dir.join("chain.redb")
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("chain.tip")
    }
}

/// A data dir under `root` holding a chain of [`BLOCKS`] blocks produced by
/// its own node key (the only masternode), and a config on `ip`.
fn prepare(root: &Path, ip: [u8; 4]) -> Prepared {
    let dir = root.join(format!("node-{}-{}", ip[2], ip[3]));
    let seed = seed_chain(&dir, 1, BLOCKS);
    assert_eq!(seed.raw_blocks.len() as u64, BLOCKS + 1);
    let chain_section = seed.chain_section();
    let (config, rpc) = write_config(&dir, ip, &[], &chain_section);
    Prepared {
        dir,
        config,
        rpc,
        chain_section,
        raw_blocks: seed.raw_blocks,
    }
}

/// `timed run --config ...` with stdout (the log) and stderr in files.
fn run_node(p: &Prepared, extra: &[&str], name: &str) -> (Guard, PathBuf, PathBuf) {
    let (log, err) = (
        p.dir.join(format!("{name}.log")),
        p.dir.join(format!("{name}.err")),
    );
    let child = timed_stdin_null()
        .args(["run", "--config"])
        .arg(&p.config)
        .args(extra)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    (Guard(child), log, err)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for the process to exit.
fn exited(guard: &mut Guard) -> ExitStatus {
    wait_exit(&mut guard.0, DEADLINE)
        .unwrap_or_else(|| panic!("the node did not exit within {DEADLINE:?}"))
}

/// Stops the node with SIGTERM and returns its exit status.
fn terminate(guard: &mut Guard) -> ExitStatus {
    guard.signal("TERM");
    exited(guard)
}

/// Runs the node on `p` and expects it to refuse to start: exit code 1 and
/// a one-line error naming the problem; nothing panics.
fn expect_refusal(p: &Prepared, name: &str, expected: &[&str]) -> String {
    let (mut node, log, err) = run_node(p, &[], name);
    let status = exited(&mut node);
    let stderr = read(&err);
    let all = format!("stderr:\n{stderr}\nlog:\n{}", read(&log));
    assert_eq!(status.code(), Some(1), "{name}: {all}");
    assert!(!stderr.contains("panicked"), "{name}: {all}");
    let line = stderr.trim();
    assert!(
        line.starts_with("error: ") && !line.contains('\n'),
        "{name}: one line: {all}"
    );
    for text in expected {
        assert!(line.contains(text), "{name}: {text:?} missing: {all}");
    }
    assert!(
        line.contains("timed run --resync"),
        "{name}: what to do: {all}"
    );
    line.to_string()
}

/// Flips one byte in the middle of every copy of `needle` in `bytes`
/// (redb keeps old copies in free pages; the live one is among them).
fn flip_every_copy(bytes: &mut [u8], needle: &[u8]) -> usize {
    let mut at = 0;
    let mut copies = 0;
    while let Some(found) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        let start = at + found;
        bytes[start + needle.len() / 2] ^= 0x5a;
        copies += 1;
        at = start + needle.len();
    }
    copies
}

#[test]
fn truncated_or_appended_files_are_clear_errors_or_recovered() {
    let root = tempfile::tempdir().unwrap();

    // Truncated to 0 bytes: not a new, empty chain.
    let p = prepare(root.path(), [127, 4, 1, 1]);
    std::fs::write(p.db(), b"").unwrap();
    expect_refusal(
        &p,
        "zero",
        &["chain.redb is damaged", "empty (0 bytes)", "backup"],
    );
    assert_eq!(
        std::fs::metadata(p.db()).unwrap().len(),
        0,
        "not re-initialised"
    );

    // Truncated to half.
    let p = prepare(root.path(), [127, 4, 1, 2]);
    let bytes = std::fs::read(p.db()).unwrap();
    std::fs::write(p.db(), &bytes[..bytes.len() / 2]).unwrap();
    expect_refusal(&p, "half", &["chain.redb is damaged", "internal check"]);

    // A tail that is not whole pages.
    let p = prepare(root.path(), [127, 4, 1, 3]);
    let mut bytes = std::fs::read(p.db()).unwrap();
    bytes.extend([0x33; 1000]);
    std::fs::write(p.db(), &bytes).unwrap();
    expect_refusal(&p, "odd tail", &["chain.redb is damaged", "internal check"]);

    // 1 MiB of garbage appended: recovered, the whole chain is there.
    let p = prepare(root.path(), [127, 4, 1, 4]);
    let mut bytes = std::fs::read(p.db()).unwrap();
    bytes.extend((0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(p.db(), &bytes).unwrap();
    let (mut node, log, err) = run_node(&p, &[], "garbage");
    let h = poll("the node answers", DEADLINE, || height(p.rpc));
    assert!(h >= BLOCKS, "height {h} after recovery");
    let hash = call(p.rpc, "getblock", json!([BLOCKS])).unwrap()["hash"].clone();
    assert!(hash.is_string());
    let status = terminate(&mut node);
    assert_eq!(status.code(), Some(0), "{}", read(&err));
    assert!(read(&log).contains("trying once more"), "{}", read(&log));
    assert!(!read(&err).contains("panicked"));
}

#[test]
fn flipped_bytes_in_a_block_fail_redbs_check_at_start() {
    let root = tempfile::tempdir().unwrap();
    let p = prepare(root.path(), [127, 4, 2, 1]);
    let mut bytes = std::fs::read(p.db()).unwrap();
    let copies = flip_every_copy(&mut bytes, &p.raw_blocks[(BLOCKS / 2) as usize]);
    assert!(copies >= 1, "the block's bytes are in the file");
    std::fs::write(p.db(), &bytes).unwrap();
    expect_refusal(
        &p,
        "flipped",
        &["chain.redb is damaged", "integrity check failed"],
    );
}

#[test]
fn a_wrong_block_that_passes_redbs_check_is_never_served() {
    let root = tempfile::tempdir().unwrap();
    let p = prepare(root.path(), [127, 4, 3, 1]);
    let bad = BLOCKS / 2;
    // Valid redb pages, wrong content: another block's bytes at `bad`.
    damage_block(&p, bad);
    let (_node, log, _err) = run_node(&p, &[], "served");
    poll("the node answers", DEADLINE, || height(p.rpc));
    let refused = call(p.rpc, "getblock", json!([bad])).unwrap_err();
    assert!(
        refused.contains(&format!("height {bad} is damaged")),
        "{refused}"
    );
    assert!(call(p.rpc, "getblock", json!([bad - 1])).is_ok());
    assert!(call(p.rpc, "getblock", json!([bad + 1])).is_ok());

    // A fresh node syncing from it gets every block below, and never the
    // damaged one (nor anything after it from this peer).
    let fresh = root.path().join("fresh");
    let (config, rpc) = write_config(
        &fresh,
        [127, 4, 3, 2],
        &["127.4.3.1:24200".to_owned()],
        &p.chain_section,
    );
    // The follower serves metrics, to count the block answers it gets.
    let follower_metrics = SocketAddr::from(([127, 4, 3, 2], 24_202));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[metrics]\nenabled = false",
        &format!("[metrics]\nenabled = true\nlisten = \"{follower_metrics}\""),
    );
    std::fs::write(&config, text).unwrap();
    let follower = Prepared {
        dir: fresh.clone(),
        config,
        rpc,
        chain_section: String::new(),
        raw_blocks: Vec::new(),
    };
    let (_follower, flog, _ferr) = run_node(&follower, &[], "follower");
    poll(
        "the follower syncs up to the damaged block",
        DEADLINE,
        || (height(rpc)? == bad - 1).then_some(()),
    );
    // Wait until the follower has asked for more and been answered: a
    // connection has at most one request outstanding, so of the answers
    // from now on the second one answers a request made with the tip at
    // `bad - 1` at least, i.e. for the damaged block onwards. The sync
    // asks again every few seconds and whenever a new block is announced.
    let blocks_in = || {
        metric(
            follower_metrics,
            "timed_messages_total",
            &["kind=\"blocks\"", "direction=\"in\""],
        )
    };
    let answers = poll("the follower's metrics", DEADLINE, blocks_in);
    poll(
        "the follower to ask past the damaged block",
        DEADLINE,
        || (blocks_in()? >= answers + 2.0).then_some(()),
    );
    // Answered, and still below the damaged block.
    assert_eq!(height(rpc), Some(bad - 1), "{}", read(&flog));
    assert!(call(rpc, "getblock", json!([bad])).is_err());
    let text = read(&log);
    assert!(
        text.contains("stored block is damaged") && text.contains(&format!("height={bad}")),
        "{text}"
    );
}

/// Rewrites the stored block at `height` with the bytes of another one:
/// valid redb pages, wrong content.
fn damage_block(p: &Prepared, height: u64) {
    let db = redb::Database::open(p.db()).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let blocks: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("blocks");
        let mut table = tx.open_table(blocks).unwrap();
        table
            .insert(height, p.raw_blocks[(height + 1) as usize].as_slice())
            .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_damaged_block_is_refetched_from_a_peer() {
    let root = tempfile::tempdir().unwrap();
    let p = prepare(root.path(), [127, 4, 9, 1]);
    // A peer holding a good copy of the same chain, under its own identity.
    let copy = root.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["chain.redb", "chain.tip", "wallet_key"] {
        std::fs::copy(p.dir.join(file), copy.join(file)).unwrap();
    }
    NodeIdentity::generate()
        .save(&copy.join("node_key"))
        .unwrap();
    let (config, rpc) = write_config(&copy, [127, 4, 9, 2], &[], &p.chain_section);
    let peer = Prepared {
        dir: copy,
        config,
        rpc,
        chain_section: String::new(),
        raw_blocks: Vec::new(),
    };
    // The damaged node dials it.
    let bad = BLOCKS / 2;
    damage_block(&p, bad);
    let (config, _) = write_config(
        &p.dir,
        [127, 4, 9, 1],
        &["127.4.9.2:24200".to_owned()],
        &p.chain_section,
    );
    assert_eq!(config, p.config);
    let (_peer, _plog, _perr) = run_node(&peer, &[], "good");
    let (_node, log, _err) = run_node(&p, &[], "damaged");
    poll("the nodes connect", DEADLINE, || {
        (call(p.rpc, "getconnectioncount", json!([])).ok()? == json!(1)).then_some(())
    });
    // Reading the block finds the damage (and never serves it) ...
    let refused = call(p.rpc, "getblock", json!([bad])).unwrap_err();
    assert!(refused.contains("damaged"), "{refused}");
    // ... and the next sync round re-fetches it from the peer.
    let good = call(peer.rpc, "getblock", json!([bad])).unwrap();
    let repaired = poll("the block is repaired", DEADLINE, || {
        call(p.rpc, "getblock", json!([bad])).ok()
    });
    assert_eq!(repaired["hash"], good["hash"]);
    let text = read(&log);
    assert!(
        text.contains("damaged block re-fetched from a peer"),
        "{text}"
    );
}

#[test]
fn a_store_below_its_marker_is_lost_data_and_resync_starts_over() {
    let root = tempfile::tempdir().unwrap();

    // The marker says the node had gone much further than the store.
    let p = prepare(root.path(), [127, 4, 4, 1]);
    let marker = read(&p.marker());
    assert!(
        marker.starts_with(&format!("height {BLOCKS}\n")),
        "{marker}"
    );
    std::fs::write(
        p.marker(),
        format!("height {}\nhash {}\n", BLOCKS + 500, "00".repeat(32)),
    )
    .unwrap();
    let line = expect_refusal(&p, "marker", &["chain.redb has lost data"]);
    assert!(line.contains(&format!("ends at height {BLOCKS}")), "{line}");
    assert!(
        line.contains(&format!("reached height {}", BLOCKS + 500)),
        "{line}"
    );
    assert!(line.contains("chain.tip"), "{line}");

    // The database deleted: not a silent new chain either.
    std::fs::write(p.marker(), &marker).unwrap();
    std::fs::remove_file(p.db()).unwrap();
    let line = expect_refusal(
        &p,
        "deleted",
        &["chain.redb has lost data", "holds no block"],
    );
    assert!(line.contains(&format!("reached height {BLOCKS}")), "{line}");
    assert!(!p.db().exists(), "not created");

    // --resync on a damaged file: moved aside, a fresh chain from genesis.
    let p = prepare(root.path(), [127, 4, 4, 2]);
    let bytes = std::fs::read(p.db()).unwrap();
    std::fs::write(p.db(), &bytes[..bytes.len() / 2]).unwrap();
    let (mut node, log, err) = run_node(&p, &["--resync"], "resync");
    poll("the node answers", DEADLINE, || height(p.rpc));
    let opened = chain_opened_line(&read(&log));
    assert!(
        opened.contains(" height=0 "),
        "starts from genesis: {opened}"
    );
    let aside: Vec<String> = std::fs::read_dir(&p.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    let moved = aside
        .iter()
        .find(|n| n.starts_with("chain.redb.damaged-"))
        .unwrap();
    assert_eq!(
        std::fs::read(p.dir.join(moved)).unwrap().len(),
        bytes.len() / 2,
        "the damaged file is kept as it was"
    );
    assert!(aside.iter().any(|n| n.starts_with("chain.tip.damaged-")));
    assert!(
        read(&log).contains("STARTING OVER FROM GENESIS"),
        "{}",
        read(&log)
    );
    assert_eq!(terminate(&mut node).code(), Some(0), "{}", read(&err));
    // The next start is an ordinary one.
    let (mut node, log, err) = run_node(&p, &[], "after");
    poll("the node answers", DEADLINE, || height(p.rpc));
    assert!(!read(&log).contains("STARTING OVER"));
    assert_eq!(terminate(&mut node).code(), Some(0), "{}", read(&err));
}

/// The "chain opened" line of a node's log.
fn chain_opened_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("chain opened"))
        .unwrap_or_else(|| panic!("no chain opened line: {log}"))
        .to_owned()
}

#[test]
fn a_database_that_fails_while_running_stops_the_node() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: needs prlimit (util-linux) to limit the file size of a running node");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let p = prepare(root.path(), [127, 4, 5, 1]);
    let err = p.dir.join("fsize.err");
    // SIGXFSZ ignored (inherited through exec), so that a write beyond the
    // file size limit fails with EFBIG instead of killing the process.
    let mut node = Guard(
        timed_sh("trap '' XFSZ; exec \"$0\" run --config \"$1\"")
            .arg(env!("CARGO_BIN_EXE_timed"))
            .arg(&p.config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut out = node.0.stdout.take().unwrap();
    let collected = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    poll("the node answers", DEADLINE, || height(p.rpc));
    // From now on no file of the node may grow past 4 KiB: the next commit
    // fails (the header page aside, every page of chain.redb is beyond).
    let limited = Command::new("prlimit")
        .args(["--pid", &node.0.id().to_string(), "--fsize=4096"])
        .status()
        .unwrap();
    assert!(limited.success());
    // A ban is written to the database (as is any block the node makes).
    let _ = call(p.rpc, "setban", json!(["192.0.2.1", "add", 3600]));
    let status = exited(&mut node);
    let log = collected.join().unwrap();
    let stderr = read(&err);
    assert_eq!(status.code(), Some(1), "{stderr}\n{log}");
    assert!(log.contains("File too large"), "{log}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr.trim();
    assert!(
        line.starts_with("error: the database") && !line.contains('\n'),
        "{stderr}"
    );
    assert!(
        line.contains("failed while running") && line.contains("Check the disk"),
        "{stderr}"
    );
}

/// `sh -c script` with the usual environment of a `timed` child.
fn timed_sh(script: &str) -> Command {
    let mut cmd = clean_command("sh");
    cmd.stdin(Stdio::null()).args(["-c", script]);
    cmd
}
