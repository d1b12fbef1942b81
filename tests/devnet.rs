#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `timed devnet` and the ways a node stops: devnet starts connected nodes
//! and stops them with SIGINT (peers get `Disconnect(Shutdown)`, SIGKILL only
//! after a deadline), and a node started with `--stop-on-stdin-eof` (as
//! devnet starts them) exits when told `stop` over RPC although its
//! standard input stays open.
//!
//! Every child process is killed by a guard; every address is on 127.3.x.x.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::procs::{poll_every, timed_stdin_null, wait_exit, Guard};
use common::RawSession;
use serde_json::Value;
use timed::params::Network;
use timed::protocol::{DisconnectReason, Message, VersionParams};

/// How often the waits here poll (each `rpc_json` is a `timed rpc` process).
const POLL: Duration = Duration::from_millis(250);

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// `timed rpc --rpc-url URL METHOD` (bounded), returning the parsed JSON
/// result, or `None` on failure.
fn rpc_json(url: &str, method: &str) -> Option<Value> {
    let mut child = timed_stdin_null()
        .args(["rpc", "--rpc-url", url, method])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let mut guard = Guard(child);
    let status = wait_exit(&mut guard.0, Duration::from_secs(30))?;
    let bytes = reader.join().unwrap();
    if !status.success() {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// The pids of processes (other than this one) whose command line mentions
/// `needle` (Linux: read from /proc).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The `timed devnet` process: on drop, Ctrl-C (SIGINT), then SIGKILL, then
/// SIGKILL for any leftover process mentioning its directory.
struct Devnet {
    child: Child,
    dir: PathBuf,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "-INT");
            if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for pid in processes_mentioning(&p(&self.dir)) {
            signal(pid, "-KILL");
        }
    }
}

/// `devnet --nodes 3` prints three nodes with their addresses and the
/// prometheus.yml path, writes that file, connects the nodes into a triangle
/// within 20 s, and on Ctrl-C stops every node with SIGINT: each says
/// `Disconnect(Shutdown)` to its peers (seen by a raw peer of node 1) and
/// devnet prints how each node stopped.
#[test]
fn devnet_connects_three_nodes_and_stops_them_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("devnet");
    let mut devnet = Devnet {
        child: timed_stdin_null()
            .args([
                "devnet",
                "--nodes",
                "3",
                "--dir",
                &p(&dir),
                "--first-ip",
                "127.3.5.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        dir: dir.clone(),
    };
    let (tx, lines) = mpsc::channel::<String>();
    for pipe in [
        Box::new(devnet.child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(devnet.child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let started = Instant::now();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops every node"))
    {
        let left = Duration::from_secs(60).saturating_sub(started.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("devnet did not finish starting:\n{}", seen.join("\n")),
        }
    }
    let stdout = seen.join("\n");

    // Three node lines with P2P, RPC and metrics addresses.
    let mut prefixes = Vec::new();
    for i in 1..=3 {
        let line = seen
            .iter()
            .find(|l| l.split_whitespace().next() == Some(&i.to_string()))
            .unwrap_or_else(|| panic!("no line for node {i}:\n{stdout}"));
        for want in [
            format!("127.3.5.{i}:24200"),
            format!("http://127.3.5.{i}:24201/"),
            format!("http://127.3.5.{i}:24202/metrics"),
        ] {
            assert!(line.contains(&want), "node {i} line lacks {want}: {line}");
        }
        let prefix = line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('…')
            .to_owned();
        assert!(
            prefix.len() >= 8 && prefix.bytes().all(|b| b.is_ascii_hexdigit()),
            "node {i} line has no node id prefix: {line}"
        );
        prefixes.push(prefix);
    }
    let prometheus = dir.join("prometheus.yml");
    assert!(
        seen.iter()
            .any(|l| l.contains("prometheus") && l.contains(&p(&prometheus))),
        "no prometheus.yml path in:\n{stdout}"
    );
    let yml = std::fs::read_to_string(&prometheus).unwrap();
    for i in 1..=3 {
        assert!(yml.contains(&format!("127.3.5.{i}:24202")), "{yml}");
    }
    assert_eq!(yml.matches(":24202").count(), 3, "{yml}");

    // Full node ids, matching the printed prefixes.
    let urls: Vec<String> = (1..=3)
        .map(|i| format!("http://127.3.5.{i}:24201/"))
        .collect();
    let ids: Vec<String> = urls
        .iter()
        .zip(&prefixes)
        .map(|(url, prefix)| {
            let info = poll_every(
                &format!("{url} getnetworkinfo"),
                Duration::from_secs(60),
                POLL,
                || rpc_json(url, "getnetworkinfo"),
            );
            let id = info["node_id"].as_str().unwrap().to_owned();
            assert!(id.starts_with(prefix.as_str()), "{id} vs printed {prefix}");
            id
        })
        .collect();

    // A triangle: two connections each, node 1's peers are nodes 2 and 3.
    poll_every(
        "two connections on every node",
        Duration::from_secs(60).saturating_sub(started.elapsed()) + Duration::from_secs(1),
        POLL,
        || {
            urls.iter()
                .all(|url| rpc_json(url, "getconnectioncount") == Some(Value::from(2)))
                .then_some(())
        },
    );
    let peers = rpc_json(&urls[0], "getpeerinfo").expect("getpeerinfo failed");
    let peer_ids: BTreeSet<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| peer["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        peer_ids,
        BTreeSet::from([ids[1].as_str(), ids[2].as_str()]),
        "{peers:#}"
    );
    let devnet_start = started.elapsed();

    // A raw peer on node 1, through the version exchange with the devnet's
    // genesis.
    let info = rpc_json(&urls[0], "getnetworkinfo").expect("getnetworkinfo failed");
    let mut params = VersionParams::new(Network::Devnet);
    hex::decode_to_slice(
        info["genesis_hash"].as_str().unwrap(),
        &mut params.genesis_hash,
    )
    .unwrap();
    let p2p: SocketAddr = "127.3.5.1:24200".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = rt.block_on(RawSession::open(
        [127, 3, 5, 100],
        p2p,
        Network::Devnet.magic(),
    ));
    let version = params.build(raw.identity.node_id(), 0);
    rt.block_on(raw.send(&Message::Version(version)));
    match rt.block_on(raw.recv()) {
        Some(Message::Version(_)) => {}
        other => panic!("expected node 1's Version, got {other:?}"),
    }

    // Ctrl-C stops the devnet and its nodes.
    assert!(
        !processes_mentioning(&p(&dir)).is_empty() || !cfg!(target_os = "linux"),
        "no node process mentions {}",
        dir.display()
    );
    signal(devnet.child.id(), "-INT");
    let status = wait_exit(&mut devnet.child, Duration::from_secs(30))
        .expect("devnet did not exit within 30 s of SIGINT");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        status.success(),
        "devnet exited {status}:\n{}",
        rest.join("\n")
    );
    assert!(
        rest.iter().any(|l| l.contains("stopped 3 nodes")),
        "{}",
        rest.join("\n")
    );
    for i in 1..=3 {
        assert!(
            rest.iter()
                .any(|l| l.starts_with(&format!("node {i}: stopped by SIGINT"))),
            "no line says how node {i} stopped:\n{}",
            rest.join("\n")
        );
    }
    // The raw peer was told goodbye, not cut off.
    let goodbye = rt.block_on(async {
        loop {
            match raw.recv().await {
                Some(Message::Disconnect(d)) => return Some(d.reason),
                Some(_) => continue,
                None => return None,
            }
        }
    });
    assert_eq!(goodbye, Some(DisconnectReason::Shutdown));
    poll_every(
        "the node processes to go",
        Duration::from_secs(5),
        POLL,
        || processes_mentioning(&p(&dir)).is_empty().then_some(()),
    );
    for url in &urls {
        assert_eq!(rpc_json(url, "uptime"), None, "{url} still answers");
    }
    eprintln!("devnet connected in {devnet_start:?}");
}

/// A node started as devnet starts them (`--stop-on-stdin-eof`, standard
/// input a pipe that stays open) exits when told `stop` over RPC; its
/// config disables inbound connections, which it reports in a WARN line.
#[test]
fn stop_ends_a_node_whose_stdin_stays_open() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("timed.toml");
    let rpc_addr = "127.3.6.1:24301";
    std::fs::write(
        &config,
        format!(
            "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"127.3.6.1:24300\"\nmax_inbound = 0\n\n[rpc]\nlisten = \"{rpc_addr}\"\n\n[metrics]\nlisten = \"127.3.6.1:24302\"\n",
            p(&tmp.path().join("data"))
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("timed.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut node = Guard(
        timed_stdin_null()
            .args(["run", "--config", &p(&config), "--stop-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Held open for the whole test: the node must not wait for its EOF.
    let _stdin = node.0.stdin.take().unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let url = format!("http://{rpc_addr}/");
    poll_every("the node's RPC", Duration::from_secs(60), POLL, || {
        if let Some(status) = node.0.try_wait().unwrap() {
            panic!("the node exited ({status}):\n{}", log());
        }
        rpc_json(&url, "uptime")
    });
    let warning = log()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("p2p.max_inbound"))
        .map(str::to_owned);
    assert!(
        warning.is_some(),
        "no WARN line for max_inbound = 0:\n{}",
        log()
    );

    assert_eq!(rpc_json(&url, "stop"), Some(Value::from("timed stopping")));
    let status = wait_exit(&mut node.0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the node is still running after `stop`:\n{}", log()));
    assert!(status.success(), "exit {status}:\n{}", log());
}
