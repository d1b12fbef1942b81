//! Two real `timed` processes on 127.0.0.1 and 127.0.0.2 complete the
//! handshake and exchange pings; their log lines show it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::procs::Guard;

/// A free port on `ip` (bound then released; the race is harmless on a
/// test machine because nothing else picks ports on 127.0.0.x here).
fn free_addr(ip: [u8; 4]) -> SocketAddr {
    TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `timed` process (killed when dropped) and the lines it prints.
struct Proc {
    _child: Guard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_timed"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
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
        Proc {
            _child: Guard(child),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 60 s) for a log line containing all of `needles`.
    fn wait_line(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = needles.iter().all(|n| line.contains(n));
                    self.seen.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needles:?} within 20 s; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

#[test]
fn two_processes_handshake_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    // Without a [chain] section each devnet node runs a one-node chain of
    // its own (and the two would refuse each other's genesis): share one
    // whose only masternode is neither of them.
    let config = dir.path().join("shared.toml");
    let masternode = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    std::fs::write(
        &config,
        format!(
            "[chain]\n[[chain.masternodes]]\npublic_key = \"{}\"\ntier = \"free\"\n",
            hex::encode(masternode.as_bytes())
        ),
    )
    .unwrap();
    let a_addr = free_addr([127, 0, 0, 1]);
    let b_addr = free_addr([127, 0, 0, 2]);
    let args = |name: &str, listen: SocketAddr| {
        let ip = match listen.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(_) => unreachable!("IPv4 loopback"),
        };
        vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--rpc-listen".to_owned(),
            free_addr(ip).to_string(),
            "--metrics-listen".to_owned(),
            free_addr(ip).to_string(),
            "--data-dir".to_owned(),
            dir.path().join(name).display().to_string(),
            "--listen".to_owned(),
            listen.to_string(),
            "--ping-interval".to_owned(),
            "2".to_owned(),
        ]
    };
    let mut a = Proc::spawn(&args("a", a_addr));
    let a_id = a.wait_line(&["listening for peers"]);
    let a_id = a_id
        .split("node.id=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let mut b_args = args("b", b_addr);
    b_args.extend(["--peer".to_owned(), format!("{a_id}@{a_addr}")]);
    let mut b = Proc::spawn(&b_args);

    let b_line = b.wait_line(&["peer connected", "direction=\"outbound\""]);
    assert!(b_line.contains(&a_id), "{b_line}");
    let a_line = a.wait_line(&["peer connected", "direction=\"inbound\""]);
    assert!(a_line.contains("127.0.0.2"), "{a_line}");
    // Each side pings every 2 s and logs the round trip.
    b.wait_line(&["pong received", "rtt_us="]);
    a.wait_line(&["pong received", "rtt_us="]);
    // Keys persist: the data dirs hold one 0600 node key each.
    for name in ["a", "b"] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(name).join("node_key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
