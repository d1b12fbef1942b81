#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Finding peers with real `timed` processes: a 30-node devnet where every
//! node knows only node 1 (its seed) and finds the rest by peer exchange.
//!
//! One scenario, in order:
//! 1. **Bootstrap**: every node reaches `min(8, N - 1)` connections, the
//!    connection graph is connected, every address book holds most of the
//!    network, and a payment sent on one node is final on all.
//! 2. **Seed outage**: node 1 stops; the rest stays connected and keeps 8
//!    connections each; a new node that knows one non-seed node joins and
//!    fills its address book.
//! 3. **Restart**: a node restarted with no seeds at all reconnects from its
//!    address book and anchors.
//!
//! Addresses are on 127.12.1.x, away from other tests. Every child is
//! killed by a guard. Waits are generous deadlines for things that do
//! happen; the times printed are for information (the figures).

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::procs::{
    call, poll, wait_exit, write_config_p2p, write_devnet_with, DevnetNode, Guard, Topology,
};
use serde_json::{json, Value};

const N: usize = 30;

fn node_id(rpc: SocketAddr) -> Option<String> {
    Some(
        call(rpc, "getnetworkinfo", json!([])).ok()?["node_id"]
            .as_str()?
            .to_owned(),
    )
}

fn peer_ids(rpc: SocketAddr) -> Option<Vec<String>> {
    let peers = call(rpc, "getpeerinfo", json!([])).ok()?;
    Some(
        peers
            .as_array()?
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

fn book_total(rpc: SocketAddr) -> Option<u64> {
    call(rpc, "getaddrmaninfo", json!([])).ok()?["all_networks"]["total"].as_u64()
}

/// Whether the graph of `edges` (node id to peer ids) over `ids` is
/// connected.
fn connected(ids: &[String], edges: &HashMap<String, Vec<String>>) -> bool {
    let Some(first) = ids.first() else {
        return true;
    };
    let wanted: HashSet<&String> = ids.iter().collect();
    let mut seen: HashSet<&String> = HashSet::from([first]);
    let mut queue = VecDeque::from([first]);
    while let Some(id) = queue.pop_front() {
        for next in edges.get(id).into_iter().flatten() {
            if wanted.contains(next) && seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen.len() == ids.len()
}

/// Waits until each node has at least `want` connections; returns the time
/// it took.
fn wait_connections(nodes: &[&DevnetNode], want: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    for node in nodes {
        poll(
            &format!("{} with {want} connections", node.rpc),
            limit
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1)),
            || {
                (call(node.rpc, "getconnectioncount", json!([]))
                    .ok()?
                    .as_u64()?
                    >= want)
                    .then_some(())
            },
        );
    }
    started.elapsed()
}

fn assert_connected(nodes: &[&DevnetNode]) {
    let ids: Vec<String> = nodes.iter().map(|n| node_id(n.rpc).unwrap()).collect();
    let edges: HashMap<String, Vec<String>> = nodes
        .iter()
        .zip(&ids)
        .map(|(n, id)| (id.clone(), peer_ids(n.rpc).unwrap()))
        .collect();
    assert!(
        connected(&ids, &edges),
        "the connection graph is split: {edges:?}"
    );
}

fn stop(node: &DevnetNode, guard: &mut Guard) {
    call(node.rpc, "stop", json!([])).unwrap();
    assert!(
        wait_exit(&mut guard.0, Duration::from_secs(30)).is_some(),
        "{} did not stop",
        node.rpc
    );
}

#[test]
fn thirty_nodes_find_each_other_from_one_seed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet_with(dir.path(), [127, 12, 1], N as u8, 2, Topology::Seed);
    let started = Instant::now();
    let mut guards: Vec<Option<Guard>> = nodes.iter().map(|n| Some(n.start())).collect();
    let all: Vec<&DevnetNode> = nodes.iter().collect();

    // 1. Bootstrap.
    let took = wait_connections(&all, 8.min(N as u64 - 1), Duration::from_secs(240));
    eprintln!(
        "{N} nodes: every node has 8 connections {:?} after start ({took:?} of waiting)",
        started.elapsed()
    );
    assert_connected(&all);
    for node in &all {
        poll(
            &format!("{} knows most of the network", node.rpc),
            Duration::from_secs(120),
            || (book_total(node.rpc)? > (N as u64 - 1) / 2).then_some(()),
        );
    }
    let books: Vec<u64> = all.iter().map(|n| book_total(n.rpc).unwrap()).collect();
    eprintln!("address book sizes: {books:?}");
    let txid = call(
        nodes[16].rpc,
        "sendtoaddress",
        json!([nodes[2].address, "1.5"]),
    )
    .unwrap_or_else(|e| panic!("sendtoaddress: {e}\n{}", nodes[16].log()));
    for node in &all {
        poll(
            &format!("payment final on {}", node.rpc),
            Duration::from_secs(120),
            || {
                let tx = call(node.rpc, "gettransaction", json!([txid])).ok()?;
                (tx["final"] == json!(true)).then_some(())
            },
        );
    }

    // 2. Seed outage: the seed stops, the rest stays connected.
    stop(&nodes[0], guards[0].as_mut().unwrap());
    guards[0] = None;
    let rest: Vec<&DevnetNode> = nodes[1..].iter().collect();
    wait_connections(&rest, 8, Duration::from_secs(120));
    assert_connected(&rest);
    // A newcomer that knows only node 5 joins and fills its book.
    let chain = {
        let text = std::fs::read_to_string(&nodes[1].config).unwrap();
        text[text.find("[chain]").unwrap()..].to_owned()
    };
    let newcomer_dir = dir.path().join("newcomer");
    let (config, rpc) = write_config_p2p(
        &newcomer_dir,
        [127, 12, 1, 40],
        &format!(
            "seeds = [\"{}\"]\nnetgroup_ipv4_bits = 32\n",
            SocketAddr::from(([127, 12, 1, 5], 24_200))
        ),
        &chain,
    );
    let newcomer = DevnetNode {
        dir: newcomer_dir,
        config,
        rpc,
        address: String::new(),
    };
    let _newcomer_guard = newcomer.start();
    wait_connections(&[&newcomer], 8, Duration::from_secs(120));
    poll(
        "the newcomer's book fills",
        Duration::from_secs(120),
        || (book_total(newcomer.rpc)? >= (N as u64 - 1) / 2).then_some(()),
    );

    // 3. Restart without seeds: the book and the anchors bring it back.
    let restarted = &nodes[9];
    stop(restarted, guards[9].as_mut().unwrap());
    let text = std::fs::read_to_string(&restarted.config).unwrap();
    let seeds_line = text
        .lines()
        .find(|l| l.starts_with("seeds"))
        .unwrap()
        .to_owned();
    std::fs::write(&restarted.config, text.replace(&seeds_line, "seeds = []")).unwrap();
    guards[9] = Some(restarted.start());
    wait_connections(&[restarted], 8, Duration::from_secs(120));
    let log = restarted.log();
    assert!(log.contains("anchors loaded"), "{log}");
    let info: Value = call(restarted.rpc, "getpeerinfo", json!([])).unwrap();
    let anchors = info
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connection_type"] == "anchor")
        .count();
    eprintln!("restarted node: {anchors} anchor connections");
    drop(guards);
}
