//! Real `timed` processes for the end-to-end tests: spawning with a guard
//! that kills them, waiting for them to exit, JSON-RPC calls over plain
//! HTTP/1.1, polling with deadlines, and node and devnet configs written by
//! the test itself.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use timed::chain::genesis::Genesis;
use timed::crypto::NodeIdentity;
use timed::params::Network;
use timed::wallet::Wallet;

/// Kills (and reaps) a child when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits for the process to
    /// exit; returns its status.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        self.0.wait().unwrap()
    }
}

/// Waits at most `limit` for `child` to exit; `None` if it is still
/// running then.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` to completion with its stdout and stderr captured; the child
/// is killed (by its guard) and the test fails if it has not exited after
/// `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let mut guard = Guard(child);
    let status = wait_exit(&mut guard.0, limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not exit within {limit:?}"));
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `program` with the environment of a `timed` child in these tests: no
/// colours, no `TIMED_RPC_*` credentials or `RUST_LOG` from the caller's
/// shell, and a `HOME` that does not exist, so that `timed rpc` never sends
/// the cookie of a developer's node under `~/.timecoin` (a test that wants
/// a home sets its own).
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NO_COLOR", "1")
        .env("HOME", "/nonexistent/timed-test-home")
        .env_remove("TIMED_RPC_TOKEN")
        .env_remove("TIMED_RPC_USER")
        .env_remove("TIMED_RPC_PASSWORD")
        .env_remove("RUST_LOG");
    cmd
}

/// The `timed` binary, with stdin piped (nodes stop when it closes).
pub fn timed() -> Command {
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_timed"));
    cmd.stdin(Stdio::piped());
    cmd
}

/// The `timed` binary, with stdin null (for one-shot commands, and nodes
/// that must not stop on its end of file).
pub fn timed_stdin_null() -> Command {
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_timed"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Starts `timed run --config CONFIG --stop-on-stdin-eof` (stdin piped),
/// its stdout and stderr going to `log`.
pub fn run_node(config: &Path, log: File) -> Guard {
    Guard(
        timed()
            .args(["run", "--config"])
            .arg(config)
            .arg("--stop-on-stdin-eof")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// One JSON-RPC call over a fresh HTTP/1.1 connection; `Err` carries the
/// error object (as JSON text) or the transport failure.
pub fn call(rpc: SocketAddr, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream =
        TcpStream::connect_timeout(&rpc, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let json_start = response.find("\r\n\r\n").ok_or("no body")? + 4;
    let reply: Value = serde_json::from_str(&response[json_start..]).map_err(|e| e.to_string())?;
    match reply.get("error") {
        Some(e) if !e.is_null() => Err(e.to_string()),
        _ => Ok(reply["result"].clone()),
    }
}

/// `GET /metrics` on `addr`: the sum of the samples of `name` whose labels
/// include every one of `labels` (e.g. `kind="blocks"`), 0 if there is
/// none; `None` if the endpoint did not answer.
pub fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
pub fn poll<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_every(what, limit, Duration::from_millis(100), f)
}

/// Polls `f` every `every` until it returns `Some`, failing after `limit`.
pub fn poll_every<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// The chain height a node reports.
pub fn height(rpc: SocketAddr) -> Option<u64> {
    call(rpc, "getblockcount", json!([])).ok()?.as_u64()
}

/// One node of a test devnet.
pub struct DevnetNode {
    /// Its data dir (holding its config, keys and log).
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its RPC address.
    pub rpc: SocketAddr,
    /// Its wallet address, as text.
    pub address: String,
}

impl DevnetNode {
    /// Starts the node, appending its output to `timed.log` in its dir.
    pub fn start(&self) -> Guard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("timed.log"))
            .unwrap();
        run_node(&self.config, log)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("timed.log")).unwrap_or_default()
    }
}

/// Writes the configs of an `n`-node devnet on `ip_base`.1..n (every node a
/// masternode of a shared genesis that funds every wallet, each node
/// dialling the ones before it), with `block_interval` seconds per slot.
pub fn write_devnet(root: &Path, ip_base: [u8; 3], n: u8, block_interval: u64) -> Vec<DevnetNode> {
    write_devnet_with(root, ip_base, n, block_interval, Topology::Mesh)
}

/// How a test devnet's nodes learn of each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Each node keeps the ones before it connected (`peers`).
    Mesh,
    /// Node 1 is every other node's only seed; peer exchange does the
    /// rest (each address its own netgroup).
    Seed,
}

/// [`write_devnet`] with a choice of [`Topology`].
pub fn write_devnet_with(
    root: &Path,
    ip_base: [u8; 3],
    n: u8,
    block_interval: u64,
    topology: Topology,
) -> Vec<DevnetNode> {
    let mut keys = Vec::new();
    let mut wallets = Vec::new();
    let mut dirs = Vec::new();
    for i in 1..=n {
        let dir = root.join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = NodeIdentity::load_or_generate(&dir.join("node_key")).unwrap();
        let wallet = Wallet::load_or_create(&dir).unwrap();
        keys.push(*identity.public_key().as_bytes());
        wallets.push(wallet.address());
        dirs.push((dir, identity.node_id()));
    }
    let mut genesis = Genesis::devnet(block_interval, &keys, &wallets).unwrap();
    // Slots start now, so the first block comes one interval after start.
    genesis.timestamp = timed::protocol::version::unix_now().as_secs();
    let chain = timed::cli::devnet::devnet_chain_section(&genesis);
    let ip = |i: u8| [ip_base[0], ip_base[1], ip_base[2], i];
    let mut nodes = Vec::new();
    for (index, (dir, _)) in dirs.iter().enumerate() {
        let i = index as u8 + 1;
        let peers: Vec<String> = dirs[..index]
            .iter()
            .enumerate()
            .map(|(j, (_, id))| format!("{id}@{}", SocketAddr::from((ip(j as u8 + 1), 24_200))))
            .collect();
        let (config, rpc) = match topology {
            Topology::Mesh => write_config(dir, ip(i), &peers, &chain),
            Topology::Seed => {
                let seeds = if i == 1 {
                    String::new()
                } else {
                    format!("\"{}\"", SocketAddr::from((ip(1), 24_200)))
                };
                write_config_p2p(
                    dir,
                    ip(i),
                    &format!("seeds = [{seeds}]\nnetgroup_ipv4_bits = 32\n"),
                    &chain,
                )
            }
        };
        nodes.push(DevnetNode {
            dir: dir.clone(),
            config,
            rpc,
            address: wallets[index].to_text(Network::Devnet),
        });
    }
    nodes
}

/// Writes `dir/config.toml` for a devnet node on `ip` (P2P on port 24200,
/// RPC on 24201, metrics off) dialling `peers` (`id@addr` or `addr`), with
/// `chain` (a `[chain]` section and what follows) appended; returns the
/// config's path and the RPC address.
pub fn write_config(
    dir: &Path,
    ip: [u8; 4],
    peers: &[String],
    chain: &str,
) -> (PathBuf, SocketAddr) {
    let peers = format!(
        "peers = [{}]\n",
        peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    write_config_p2p(dir, ip, &peers, chain)
}

/// Like [`write_config`], with `p2p` (lines of the `[p2p]` section after
/// `listen`) instead of a peer list.
pub fn write_config_p2p(dir: &Path, ip: [u8; 4], p2p: &str, chain: &str) -> (PathBuf, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let rpc = SocketAddr::from((ip, 24_201));
    let config = format!(
        "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{}\"\n{p2p}\n[rpc]\nlisten = \"{rpc}\"\n\n[metrics]\nenabled = false\n\n{chain}",
        dir.display(),
        SocketAddr::from((ip, 24_200)),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    (path, rpc)
}

/// Waits until every node has `n - 1` peers.
pub fn wait_meshed(nodes: &[DevnetNode], limit: Duration) {
    let rpcs: Vec<SocketAddr> = nodes.iter().map(|n| n.rpc).collect();
    wait_peers(&rpcs, limit);
}

/// Waits until each of the `n` nodes answering RPC on `rpcs` has `n - 1`
/// peers.
pub fn wait_peers(rpcs: &[SocketAddr], limit: Duration) {
    let want = rpcs.len() as u64 - 1;
    for (i, rpc) in rpcs.iter().enumerate() {
        poll(
            &format!("node {} connected to {want} peers", i + 1),
            limit,
            || (call(*rpc, "getconnectioncount", json!([])).ok()?.as_u64()? == want).then_some(()),
        );
    }
}

/// `(peer node id, connection id)` of every connection of the node: the
/// same set later means no connection was dropped in between.
pub fn connections(rpc: SocketAddr) -> Vec<(String, u64)> {
    let peers = call(rpc, "getpeerinfo", json!([])).unwrap();
    let mut out: Vec<(String, u64)> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["conn_id"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}
