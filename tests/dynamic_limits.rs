#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The dynamic inbound cap, with real `timed` processes: lowering a running
//! node's open-file limit (`prlimit`) close to what it has open shrinks
//! its inbound cap to `min_peers` while it keeps serving its peers (its
//! connections stay, blocks keep arriving); raising the limit again lets
//! the cap grow back.
//!
//! Addresses are on 127.15.1.x. Every child is killed by a guard.

mod common;

use std::process::Command;
use std::time::Duration;

use common::procs::{call, height, poll, write_devnet_with, Topology};
use serde_json::json;

fn inbound_cap(rpc: std::net::SocketAddr) -> Option<u64> {
    call(rpc, "getnetworkinfo", json!([])).ok()?["inbound_cap"].as_u64()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn hard_nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().to_owned()
}

fn set_soft_nofile(pid: u32, soft: &str, hard: &str) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed: {status}");
}

#[test]
fn the_inbound_cap_shrinks_near_the_fd_limit_and_grows_back() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet_with(dir.path(), [127, 15, 1], 3, 1, Topology::Seed);
    let guards: Vec<_> = nodes.iter().map(|n| n.start()).collect();
    for node in &nodes {
        poll("2 connections each", Duration::from_secs(60), || {
            (call(node.rpc, "getconnectioncount", json!([]))
                .ok()?
                .as_u64()?
                >= 2)
                .then_some(())
        });
    }
    let rpc = nodes[0].rpc;
    let full = poll("the inbound cap", Duration::from_secs(30), || {
        inbound_cap(rpc)
    });
    assert!(full > 8, "{full}");

    // Squeeze: the soft limit 20 descriptors above what is open (fewer
    // free than the 32 the node wants in reserve).
    let pid = guards[0].0.id();
    let hard = hard_nofile(pid);
    let open = open_fds(pid);
    let soft = open + 20;
    eprintln!("node 1 has {open} files open; soft limit set to {soft}");
    set_soft_nofile(pid, &soft.to_string(), &hard);
    poll(
        "the cap shrinks to min_peers",
        Duration::from_secs(60),
        || (inbound_cap(rpc)? == 8).then_some(()),
    );
    // Still serving: its peers stay and new blocks keep arriving.
    assert_eq!(
        call(rpc, "getconnectioncount", json!([])).unwrap().as_u64(),
        Some(2)
    );
    let h = height(rpc).unwrap();
    poll("new blocks under pressure", Duration::from_secs(60), || {
        (height(rpc)? > h + 1).then_some(())
    });

    // Room again: the cap grows back to the configured one.
    set_soft_nofile(pid, &hard, &hard);
    poll("the cap grows back", Duration::from_secs(60), || {
        (inbound_cap(rpc)? == full).then_some(())
    });
    drop(guards);
}
