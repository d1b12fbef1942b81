//! `timed devnet`: N local nodes sharing one genesis, started as child
//! processes and stopped with SIGINT (then SIGKILL after a deadline).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::{check_keys_present, ensure_dir, init_logging, Failure};
use crate::chain::genesis::Genesis;
use crate::config::{Config, LogFormat};
use crate::constants::NODE_KEY_FILE;
use crate::crypto::NodeIdentity;
use crate::params::Network;
use crate::wallet::Wallet;

/// How devnet nodes learn of each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Every node has node 1 as its only seed; peer exchange does the rest.
    Seed,
    /// Every node keeps every node before it connected.
    Mesh,
}

/// The address of devnet node `i` (1-based) from `first`.
fn devnet_ip(first: Ipv4Addr, i: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first).wrapping_add(u32::from(i) - 1))
}

pub(super) async fn devnet(
    nodes: u8,
    dir: &Path,
    first_ip: Ipv4Addr,
    block_interval: u64,
    topology: Topology,
) -> Result<(), Failure> {
    init_logging("warn", LogFormat::Human);
    ensure_dir(dir)?;
    let network = Network::Devnet;
    let defaults = Config::for_network(network);
    let (p2p_port, rpc_port, metrics_port) = (
        defaults.p2p_listen().port(),
        defaults.rpc_listen().port(),
        defaults.metrics_listen().port(),
    );
    // Keys first: every node lists the ids of the nodes before it, and the
    // shared genesis lists every node as a masternode and funds every
    // node's wallet.
    let mut members = Vec::new();
    let mut masternodes = Vec::new();
    let mut wallets = Vec::new();
    for i in 1..=nodes {
        let node_dir = dir.join(format!("node{i}"));
        ensure_dir(&node_dir)?;
        check_keys_present(&node_dir, false)?;
        let identity = NodeIdentity::load_or_generate(&node_dir.join(NODE_KEY_FILE))
            .map_err(Failure::usage)?;
        let wallet = Wallet::load_or_create(&node_dir).map_err(Failure::usage)?;
        masternodes.push(*identity.public_key().as_bytes());
        wallets.push(wallet.address());
        let ip = devnet_ip(first_ip, i);
        members.push((i, node_dir, identity.node_id(), ip));
    }
    let genesis =
        Genesis::devnet(block_interval, &masternodes, &wallets).map_err(Failure::usage)?;
    let chain_section = devnet_chain_section(&genesis);
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("cannot find the timed binary: {e}")))?;
    let mut children = Vec::new();
    let mut scrape = Vec::new();
    println!(
        "{:<5} {:<18} {:<22} {:<22} {:<22}",
        "node", "node id", "p2p", "rpc", "metrics"
    );
    for (i, node_dir, node_id, ip) in &members {
        let absolute = std::fs::canonicalize(node_dir).unwrap_or_else(|_| node_dir.clone());
        let p2p = SocketAddr::from((*ip, p2p_port));
        let rpc = SocketAddr::from((*ip, rpc_port));
        let metrics = SocketAddr::from((*ip, metrics_port));
        let (peers, seeds) = match topology {
            Topology::Mesh => (
                members
                    .iter()
                    .filter(|(j, ..)| j < i)
                    .map(|(_, _, id, peer_ip)| {
                        format!("\"{id}@{}\"", SocketAddr::from((*peer_ip, p2p_port)))
                    })
                    .collect::<Vec<_>>(),
                Vec::new(),
            ),
            Topology::Seed => (
                Vec::new(),
                members
                    .iter()
                    .filter(|(j, ..)| *j == 1 && *i != 1)
                    .map(|(.., seed_ip)| format!("\"{}\"", SocketAddr::from((*seed_ip, p2p_port))))
                    .collect(),
            ),
        };
        // Each devnet address is its own netgroup (the default /16 would
        // make all of 127.0.0.x one group, allowing one outbound peer).
        let config = format!(
            "# Written by `timed devnet`.\n[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{p2p}\"\npeers = [{}]\nseeds = [{}]\nnetgroup_ipv4_bits = 32\n\n[rpc]\nlisten = \"{rpc}\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n{chain_section}",
            absolute.display(),
            peers.join(", "),
            seeds.join(", ")
        );
        let config_path = node_dir.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| Failure::usage(format!("{}: cannot write: {e}", config_path.display())))?;
        let log_path = node_dir.join("timed.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Failure::usage(format!("{}: cannot create: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Failure::runtime(format!("{}: {e}", log_path.display())))?;
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--stop-on-stdin-eof")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::runtime(format!("cannot start node {i}: {e}")))?;
        children.push(child);
        scrape.push(format!("'{metrics}'"));
        println!(
            "{:<5} {:<18} {:<22} {:<22} {:<22}",
            i,
            format!("{}…", &node_id.to_string()[..16]),
            p2p.to_string(),
            format!("http://{rpc}/"),
            format!("http://{metrics}/metrics")
        );
    }
    let prometheus = format!(
        "# Written by `timed devnet`: scrapes every devnet node.\nglobal:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nscrape_configs:\n  - job_name: timed\n    static_configs:\n      - targets: [{}]\n",
        scrape.join(", ")
    );
    let prometheus_path = dir.join("prometheus.yml");
    std::fs::write(&prometheus_path, prometheus)
        .map_err(|e| Failure::usage(format!("{}: cannot write: {e}", prometheus_path.display())))?;
    println!("logs:       {}/node*/timed.log", dir.display());
    println!("prometheus: {}", prometheus_path.display());
    println!(
        "try:        timed rpc --rpc-url http://{}:{rpc_port}/ getpeerinfo",
        devnet_ip(first_ip, 1)
    );
    println!("Ctrl-C stops every node.");
    // Wait for Ctrl-C / SIGTERM, or for a node to exit on its own.
    let exited = async {
        loop {
            for (i, child) in children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    return (i + 1, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            println!("{signal}: stopping every node");
            None
        }
        (i, status) = exited => Some((i, status)),
    };
    for line in stop_nodes(&mut children, DEVNET_STOP_DEADLINE).await {
        println!("{line}");
    }
    match outcome {
        None => {
            println!("stopped {} nodes", children.len());
            Ok(())
        }
        Some((i, status)) => Err(Failure::runtime(format!(
            "node {i} exited ({status}); see {}/node{i}/timed.log",
            dir.display()
        ))),
    }
}

/// The `[chain]` section of every devnet node's config: `genesis` in
/// config form (every node given it derives the same genesis hash).
pub fn devnet_chain_section(genesis: &Genesis) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "[chain]\nblock_interval_secs = {}\ngenesis_timestamp = {}\ngenesis_hash = \"{}\"\n",
        genesis.block_interval_secs,
        genesis.timestamp,
        hex::encode(genesis.hash())
    );
    for m in genesis.masternodes() {
        let _ = write!(
            out,
            "\n[[chain.masternodes]]\npublic_key = \"{}\"\ntier = \"free\"\n",
            hex::encode(m.public_key)
        );
    }
    let mut seen = Vec::new();
    for a in &genesis.allocations {
        if seen.contains(&a.address) {
            continue;
        }
        seen.push(a.address);
        let outputs = genesis
            .allocations
            .iter()
            .filter(|b| b.address == a.address)
            .count();
        let _ = write!(
            out,
            "\n[[chain.allocations]]\naddress = \"{}\"\namount = \"{}\"\noutputs = {outputs}\n",
            a.address.to_text(Network::Devnet),
            crate::wallet::format_amount(a.value)
        );
    }
    out
}

/// How long devnet nodes have to stop after SIGINT before they are killed:
/// a node stops in well under a second (it sends `Disconnect` to its peers
/// and closes its database); 10 s covers a busy machine.
pub const DEVNET_STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Stops every node: SIGINT first, so that each says `Disconnect(Shutdown)`
/// to its peers and closes its database, then SIGKILL for any still running
/// after `deadline`. Returns one line per node saying how it stopped.
async fn stop_nodes(children: &mut [tokio::process::Child], deadline: Duration) -> Vec<String> {
    let mut how: Vec<Option<String>> = vec![None; children.len()];
    for (i, child) in children.iter_mut().enumerate() {
        if let Ok(Some(status)) = child.try_wait() {
            how[i] = Some(format!("node {}: had exited ({status})", i + 1));
        } else if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            }
        }
    }
    let until = tokio::time::Instant::now() + deadline;
    for (i, child) in children.iter_mut().enumerate() {
        if how[i].is_some() {
            continue;
        }
        how[i] = Some(match tokio::time::timeout_at(until, child.wait()).await {
            Ok(Ok(status)) => format!("node {}: stopped by SIGINT ({status})", i + 1),
            Ok(Err(e)) => format!("node {}: cannot wait for it: {e}", i + 1),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                format!(
                    "node {}: still running {} s after SIGINT: killed (SIGKILL)",
                    i + 1,
                    deadline.as_secs()
                )
            }
        });
    }
    how.into_iter().flatten().collect()
}

/// Waits for Ctrl-C or SIGTERM; returns which.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnet_ips_count_up() {
        let first: Ipv4Addr = "127.0.0.1".parse().unwrap();
        assert_eq!(devnet_ip(first, 1), first);
        assert_eq!(
            devnet_ip(first, 3),
            "127.0.0.3".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            devnet_ip("127.0.60.250".parse().unwrap(), 10),
            "127.0.61.3".parse::<Ipv4Addr>().unwrap()
        );
    }
}
