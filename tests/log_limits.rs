#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Logs a remote party can trigger are rate-limited: a flood of refused
//! sockets from one IP writes a few lines per kind and window and a summary
//! of the rest, not a line per socket. Address: 127.5.20.x.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::procs::*;
use timed::logging::LINES_PER_WINDOW;

#[test]
fn a_flood_of_refused_sockets_writes_a_sample_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 5, 20], 1, 2);
    let _node = nodes[0].start();
    poll("the node answers", Duration::from_secs(60), || {
        height(nodes[0].rpc)
    });
    let p2p = SocketAddr::from(([127, 5, 20, 1], 24_200));
    // 400 sockets from one IP: beyond 30 accepts a minute and 4 at once,
    // each is refused before the handshake.
    const FLOOD: usize = 400;
    let mut open = Vec::new();
    for _ in 0..FLOOD {
        let socket = std::net::TcpStream::connect_timeout(&p2p, Duration::from_secs(5));
        if let Ok(s) = socket {
            open.push(s);
        }
        // Keep at most a few open ourselves (the refused ones close at once).
        if open.len() > 8 {
            open.remove(0);
        }
    }
    drop(open);
    let found = std::panic::catch_unwind(|| {
        poll("the summary line", Duration::from_secs(30), || {
            let log = nodes[0].log();
            log.lines()
                .find(|l| {
                    l.contains("suppressed similar log lines") && l.contains("connection_refused")
                })
                .map(str::to_owned)
        })
    });
    let summary = found.unwrap_or_else(|_| panic!("no summary line in:\n{}", nodes[0].log()));
    let log = nodes[0].log();
    let lines = log
        .lines()
        .filter(|l| l.contains("connection refused before the handshake"))
        .count();
    // Two reasons (accept_rate, max_per_ip), each at most its budget per
    // window; the flood may straddle two windows.
    let bound = 2 * 2 * LINES_PER_WINDOW as usize;
    assert!(
        lines <= bound,
        "{lines} refusal lines for {FLOOD} refused sockets (at most {bound})"
    );
    assert!(lines > 0, "a sample is logged");
    eprintln!("{FLOOD} sockets: {lines} refusal lines; {summary}");
    let _ = TcpStream::connect_timeout(&p2p, Duration::from_secs(1));
}
