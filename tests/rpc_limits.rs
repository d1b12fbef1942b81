//! The RPC's limits under abuse, against in-process servers and real
//! `timed` processes: idle-connection floods are capped and closed at once,
//! slow bodies and silent clients hit deadlines, body memory is bounded by
//! the worker permits, and under a low open-file limit an RPC flood cannot
//! keep an honest peer out.
//!
//! The RSS figures are printed (run with `--nocapture`), never asserted.
//! Every wait polls with a deadline; nothing sleeps to synchronise. Every
//! address is on 127.3.x.x; every child process is killed by a guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procs::{clean_command, Guard};
use serde_json::Value;
use timed::config::RpcSection;
use timed::crypto::NodeIdentity;
use timed::rpc::{serve, RpcContext};
use timed::wallet::Wallet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Upper bound for waits involving whole processes on a busy machine.
const LONG: Duration = Duration::from_secs(90);

/// A `timed run` process with its addresses and log.
struct Proc {
    guard: Guard,
    rpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.guard.0.try_wait().unwrap() {
            panic!("the node exited ({status}):\n{}", self.log());
        }
    }
}

/// Starts `timed run` with `config` (TOML) in `dir`, optionally under
/// `prlimit --nofile=N:N`, and waits for its RPC to answer.
async fn start(dir: &Path, name: &str, config: &str, nofile: Option<u64>) -> Proc {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let exe = env!("CARGO_BIN_EXE_timed");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = clean_command("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(exe);
            c
        }
        None => clean_command(exe),
    };
    cmd.args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let parse = |key: &str| -> SocketAddr {
        let section = config.split(&format!("[{key}]")).nth(1).unwrap();
        let line = section.lines().find(|l| l.starts_with("listen")).unwrap();
        line.split('"').nth(1).unwrap().parse().unwrap()
    };
    let mut proc = Proc {
        guard: Guard(cmd.spawn().unwrap()),
        rpc: parse("rpc"),
        metrics: parse("metrics"),
        log,
    };
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        proc.assert_running();
        if call(proc.rpc, "uptime").await.is_some() {
            return proc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node's RPC did not answer:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node config on `ip` with ports 24300-24302 and `rpc_extra` TOML
/// appended to the `[rpc]` section.
fn node_config(dir: &Path, ip: &str, rpc_extra: &str) -> String {
    format!(
        "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{ip}:24300\"\n\n[rpc]\nlisten = \"{ip}:24301\"\n{rpc_extra}\n\n[metrics]\nlisten = \"{ip}:24302\"\n",
        dir.display()
    )
}

/// One JSON-RPC call on a fresh connection (`Connection: close`); the
/// result, or `None` if the server closed or answered without a result.
async fn call(addr: SocketAddr, method: &str) -> Option<Value> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
    let (status, answer) = post(addr, body.as_bytes()).await?;
    let answer: Value = serde_json::from_str(&answer).ok()?;
    (status == 200).then(|| answer.get("result").cloned())?
}

/// POSTs `body`; returns the status and body of the answer, or `None` if
/// the connection failed or closed without one.
async fn post(addr: SocketAddr, body: &[u8]) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        let _ = s.write_all(body).await;
        let mut response = Vec::new();
        let _ = s.read_to_end(&mut response).await;
        parse_response(&response)
    };
    tokio::time::timeout(common::WAIT, exchange).await.ok()?
}

fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// `GET /metrics`; the sum of the series of `name` carrying every one of
/// `labels` (0 if none), or `None` if the endpoint did not answer.
async fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> Option<f64> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.ok()?;
        let (status, body) = parse_response(&response)?;
        if status != 200 {
            return None;
        }
        Some(
            body.lines()
                .filter(|l| {
                    l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))
                })
                .filter(|l| labels.iter().all(|label| l.contains(label)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    };
    tokio::time::timeout(common::WAIT, exchange).await.ok()?
}

/// Polls `f` every 100 ms until it yields `Some`, failing after `limit`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Idle connections held open until `release`; `closed` counts those the
/// server closed.
struct Flood {
    opened: usize,
    closed: Arc<AtomicUsize>,
    release: CancellationToken,
    tasks: JoinSet<()>,
}

impl Flood {
    /// Opens up to `n` idle connections to `addr`, one after another (a
    /// burst would only overflow the listen backlog).
    async fn open(addr: SocketAddr, n: usize) -> Flood {
        let closed = Arc::new(AtomicUsize::new(0));
        let release = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut opened = 0;
        for _ in 0..n {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                break;
            };
            opened += 1;
            let closed = closed.clone();
            let release = release.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 64];
                tokio::select! {
                    _ = release.cancelled() => {}
                    _ = stream.read(&mut buf) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Flood {
            opened,
            closed,
            release,
            tasks,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }

    /// Closes every connection still open.
    async fn stop(mut self) {
        self.release.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Raises this process's open-file soft limit; returns it.
fn raise_own_limit() -> u64 {
    timed::fds::raise_nofile_limit().soft.unwrap_or(1 << 20)
}

/// An in-process node with an RPC server on `ip` under `settings`.
async fn rpc_server(ip: [u8; 4], settings: RpcSection) -> (SocketAddr, CancellationToken) {
    let (node, _) = common::start(common::config(ip)).await;
    let stop = CancellationToken::new();
    let ctx = RpcContext::new(node, settings, None, stop.clone());
    let addr = serve(SocketAddr::from((ip, 0)), ctx, stop.clone())
        .await
        .unwrap();
    (addr, stop)
}

/// Reads until the server closes `stream` (EOF or reset); returns what it
/// sent, or `None` if it did not close within the wait bound.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    tokio::time::timeout(common::WAIT, async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
}

/// Silent clients, slow heads, slow bodies and idle keep-alive connections
/// are closed by their deadlines; a body over the limit is refused while it
/// streams; with every worker busy a request gets 503 after its bounded
/// wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_body_limits_and_the_work_queue() {
    let settings = RpcSection {
        header_timeout_secs: 1,
        body_timeout_secs: 1,
        idle_timeout_secs: 1,
        queue_timeout_secs: 1,
        max_concurrent: 1,
        max_body_bytes: 1000,
        ..RpcSection::default()
    };
    let (addr, _stop) = rpc_server([127, 3, 4, 1], settings).await;

    // A client that never sends a byte, and one that stops mid-head.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut silent).await.is_some());
    assert!(read_until_closed(&mut slow_head).await.is_some());

    // A body that stops halfway: 408, connection closed.
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_body).await.unwrap();
    assert_eq!(parse_response(&answer).unwrap().0, 408);

    // A keep-alive connection is answered, then closed once idle.
    let mut keep = TcpStream::connect(addr).await.unwrap();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"uptime"}"#;
    keep.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    keep.write_all(body).await.unwrap();
    let answer = read_until_closed(&mut keep).await.unwrap();
    assert_eq!(parse_response(&answer).unwrap().0, 200);

    // A chunked body (no Content-Length) over the limit: 413 while it streams.
    let mut chunked = TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        let _ = chunked.write_all(b"200\r\n").await;
        let _ = chunked.write_all(&[b' '; 0x200]).await;
        let _ = chunked.write_all(b"\r\n").await;
    }
    let answer = read_until_closed(&mut chunked).await.unwrap();
    assert_eq!(parse_response(&answer).unwrap().0, 413);

    // One worker: a request whose body never comes holds it; the next
    // request waits its bounded time and gets 503.
    let settings = RpcSection {
        queue_timeout_secs: 1,
        max_concurrent: 1,
        ..RpcSection::default()
    };
    let (addr, _stop) = rpc_server([127, 3, 4, 2], settings).await;
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (status, text) = wait_for("a 503 while the worker is held", LONG, || async {
        let (status, text) = post(addr, body).await?;
        (status == 503).then_some((status, text))
    })
    .await;
    assert_eq!(status, 503);
    assert!(text.contains("work queue depth exceeded"), "{text}");
    drop(holder);
    wait_for("an answer once the worker is free", LONG, || {
        call(addr, "uptime")
    })
    .await;
}

/// 2,000 idle connections (or as many as the open-file limit allows): the
/// ones beyond `rpc.max_connections` are closed at once, the metrics
/// endpoint keeps answering, and once the flood closes an honest call is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_is_capped_and_does_not_outlive_itself() {
    let soft = raise_own_limit();
    let n = 2000.min(
        usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(200),
    );
    let cap = 100;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = node_config(
        &data,
        "127.3.1.1",
        // Long deadlines: only the cap closes connections here.
        &format!("max_connections = {cap}\nheader_timeout_secs = 600\nidle_timeout_secs = 600"),
    );
    let mut node = start(tmp.path(), "node", &config, None).await;
    let rss_before = node.rss_kib();

    let flood = Flood::open(node.rpc, n).await;
    assert_eq!(flood.opened, n, "could not open {n} connections");
    wait_for(
        "the connections beyond the cap to be closed",
        LONG,
        || async { (flood.closed() >= n - cap).then_some(()) },
    )
    .await;
    assert_eq!(flood.closed(), n - cap, "connections within the cap closed");
    // While the flood holds every slot, a new connection is closed at once
    // (no answer), and the metrics endpoint still answers.
    assert_eq!(call(node.rpc, "uptime").await, None);
    let refused = metric(
        node.metrics,
        "timed_http_connections_refused_total",
        &["reason=\"max_connections\"", "server=\"rpc\""],
    )
    .await
    .expect("the metrics endpoint must answer during an RPC flood");
    assert!(refused >= (n - cap) as f64, "refused {refused}");
    let rss_during = node.rss_kib();
    node.assert_running();

    flood.stop().await;
    wait_for("an honest RPC call after the flood", LONG, || {
        call(node.rpc, "uptime")
    })
    .await;
    let rss_after = node.rss_kib();
    eprintln!(
        "idle flood: {n} connections, cap {cap}, {} closed at once; RSS KiB before {rss_before}, during {rss_during}, after {rss_after}",
        n - cap
    );
}

/// One client sending a `len`-byte body (valid JSON padded with spaces) in
/// 16 KiB pieces; returns the HTTP status, or 0 if the server closed the
/// connection without an answer.
async fn slow_body(addr: SocketAddr, len: usize) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"uptime"}"#;
    let mut body = vec![b' '; len];
    body[..call.len()].copy_from_slice(call);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).await.is_ok() {
        for piece in body.chunks(16 * 1024) {
            if s.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut response)).await;
    parse_response(&response).map_or(0, |(status, _)| status)
}

/// Three rounds of 300 connections each sending a 1 MB - 1 body slowly:
/// every client gets an answer or a closed connection, the node keeps
/// serving (an honest call is answered after each round), and memory is
/// bounded by the worker permits (figures printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_one_megabyte_bodies_do_not_pile_up() {
    raise_own_limit();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = node_config(&data, "127.3.2.1", "");
    let mut node = start(tmp.path(), "node", &config, None).await;
    let rss_before = node.rss_kib();
    let mut figures = Vec::new();
    for round in 1..=3 {
        let peak = Arc::new(AtomicU64::new(0));
        let sampling = CancellationToken::new();
        let sampler = {
            let (peak, sampling, pid) = (peak.clone(), sampling.clone(), node.pid());
            tokio::spawn(async move {
                while !sampling.is_cancelled() {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let rss: u64 = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let mut clients = JoinSet::new();
        for _ in 0..300 {
            clients.spawn(slow_body(node.rpc, 1024 * 1024 - 1));
        }
        let mut statuses = std::collections::BTreeMap::new();
        let all = async {
            while let Some(status) = clients.join_next().await {
                *statuses.entry(status.unwrap()).or_insert(0) += 1;
            }
        };
        tokio::time::timeout(LONG * 2, all)
            .await
            .expect("every slow client must be answered or closed");
        node.assert_running();
        wait_for("an honest RPC call after the round", LONG, || {
            call(node.rpc, "uptime")
        })
        .await;
        sampling.cancel();
        sampler.await.unwrap();
        let after = node.rss_kib();
        figures.push(format!(
            "round {round}: statuses {statuses:?} (0 = closed), peak RSS {} KiB, after {after} KiB",
            peak.load(Ordering::Relaxed)
        ));
    }
    eprintln!("slow bodies: RSS before {rss_before} KiB");
    for line in figures {
        eprintln!("slow bodies: {line}");
    }
}

fn prlimit_available() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Under `prlimit --nofile=256:256` the node sizes its RPC cap from the
/// limit; a flood of idle RPC connections is refused beyond it, and an
/// honest peer (a second `timed` on the same genesis) still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_flood_under_a_low_fd_limit_does_not_keep_a_peer_out() {
    if !prlimit_available() {
        eprintln!("SKIPPED: util-linux `prlimit` is not installed");
        return;
    }
    raise_own_limit();
    let tmp = tempfile::tempdir().unwrap();
    // Node A's keys first: B describes A's one-masternode devnet genesis.
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_key = NodeIdentity::generate();
    a_key.save(&a_dir.join("node_key")).unwrap();
    let a_wallet = Wallet::load_or_create(&a_dir).unwrap();
    let genesis = timed::chain::genesis::Genesis::devnet(
        2,
        &[*a_key.public_key().as_bytes()],
        &[a_wallet.address()],
    )
    .unwrap();
    let long = "header_timeout_secs = 600\nidle_timeout_secs = 600";
    let a_config = node_config(&a_dir, "127.3.3.1", long);
    let mut a = start(tmp.path(), "a", &a_config, Some(256)).await;
    let rpc_cap = metric(a.metrics, "timed_fd_limit", &["kind=\"rpc\""])
        .await
        .expect("metrics") as usize;
    let log = a.log();
    assert!(
        log.contains("file descriptor budget") && log.contains("fd.soft=256"),
        "no budget line with the limit:\n{log}"
    );
    assert!(
        (1..128).contains(&rpc_cap),
        "rpc cap {rpc_cap} under 256 fds"
    );
    let rss_before = a.rss_kib();

    let flood = Flood::open(a.rpc, 1000).await;
    wait_for("the flood beyond the cap to be refused", LONG, || async {
        (flood.closed() >= flood.opened - rpc_cap).then_some(())
    })
    .await;

    let b_dir = tmp.path().join("b");
    let b_tail = format!(
        "peers = [\"{}@127.3.3.1:24300\"]\n\n{}",
        a_key.node_id(),
        timed::cli::devnet::devnet_chain_section(&genesis)
    );
    // The [chain] section must come last: move [rpc]/[metrics] before it.
    let b_config = format!(
        "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[rpc]\nlisten = \"127.3.3.2:24301\"\n\n[metrics]\nlisten = \"127.3.3.2:24302\"\n\n[p2p]\nlisten = \"127.3.3.2:24300\"\n{b_tail}",
        b_dir.display()
    );
    let b = start(tmp.path(), "b", &b_config, None).await;
    wait_for(
        "the honest peer to connect during the flood",
        LONG,
        || async {
            let n = call(b.rpc, "getconnectioncount").await?.as_u64()?;
            (n >= 1).then_some(())
        },
    )
    .await;
    let rss_during = a.rss_kib();
    a.assert_running();
    assert!(
        !a.log().contains("Too many open files"),
        "the node ran out of descriptors:\n{}",
        a.log()
    );

    let refused = flood.closed();
    let opened = flood.opened;
    flood.stop().await;
    let count = wait_for("node A's RPC after the flood", LONG, || {
        call(a.rpc, "getconnectioncount")
    })
    .await;
    assert!(count.as_u64() >= Some(1), "A has no peer: {count}");
    eprintln!(
        "fd limit 256: RPC cap {rpc_cap}, {opened} flood connections, {refused} refused at once; honest peer connected; RSS KiB before {rss_before}, during {rss_during}, after {}",
        a.rss_kib()
    );
}
