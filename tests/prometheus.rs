//! A real Prometheus scrapes a 3-node devnet; `promtool check metrics` must
//! accept a scrape, and the README's claim about the Grafana dashboard must
//! hold: on the fresh devnet every panel has data except the ones the README
//! names as needing a payment ([`NEED_A_PAYMENT`]), whose series exist
//! but whose quantiles are undefined (NaN) without a sample; after a payment
//! from node 1 to node 2, final by votes, every panel has data.
//!
//! Needs the `prometheus` and `promtool` binaries (Debian's `prometheus`
//! package; `.ci/run` installs it). Without them the test is skipped with a
//! message, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killer(Vec<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        // SIGINT first, so the devnet stops its nodes; then SIGKILL whatever
        // is left (the nodes also stop when the devnet's pipe closes).
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(name: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A blocking HTTP GET on loopback; returns the body.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

fn encode_query(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What an instant query returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    /// Series in the result.
    series: usize,
    /// Series whose value is a number (not NaN): what a panel can draw.
    numbers: usize,
}

/// Runs an instant query.
fn query(prometheus: SocketAddr, expr: &str) -> Option<Answer> {
    let body = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode_query(expr)),
    )?;
    let v: Value = serde_json::from_str(&body).ok()?;
    if v["status"] != "success" {
        panic!("query {expr:?} failed: {body}");
    }
    let result = v["data"]["result"].as_array()?;
    let numbers = result
        .iter()
        .filter(|r| {
            r["value"][1]
                .as_str()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|x| !x.is_nan())
        })
        .count();
    Some(Answer {
        series: result.len(),
        numbers,
    })
}

/// The number of series `expr` returns (0 if the query did not answer).
fn series(prometheus: SocketAddr, expr: &str) -> usize {
    query(prometheus, expr).map_or(0, |a| a.series)
}

/// Whether `expr` gives a panel something to draw.
fn has_data(prometheus: SocketAddr, expr: &str) -> bool {
    query(prometheus, expr).is_some_and(|a| a.numbers > 0)
}

/// The dashboard panels that have no data on a fresh devnet until a
/// payment is final, as the README says: a quantile of no samples is
/// undefined.
const NEED_A_PAYMENT: &[&str] = &["Time to finality (p50, p99)"];

/// Waits (at most `limit`) until every query of `queries` has data; fails
/// naming the ones that still have none.
fn wait_for_data(prometheus: SocketAddr, queries: &[&(String, String)], limit: Duration) {
    let mut empty: Vec<&&(String, String)> = queries.iter().collect();
    let deadline = Instant::now() + limit;
    loop {
        empty.retain(|(_, expr)| !has_data(prometheus, expr));
        if empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty
            .iter()
            .map(|(title, expr)| format!("{title}: {expr}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One JSON-RPC call through the crate's client (no token: devnet nodes
/// require none).
fn rpc(addr: SocketAddr, method: &str, params: Value) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(timed::rpc::client::call(
            &format!("http://{addr}/"),
            &timed::rpc::client::Auth::None,
            method,
            params,
        ))
        .map_err(|e| e.to_string())
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The chain metrics (docs/METRICS.md) the dashboard must show.
const CHAIN_METRICS: &[&str] = &[
    "timed_chain_height",
    "timed_blocks_applied_total",
    "timed_blocks_rejected_total",
    "timed_tip_replacements_total",
    "timed_sync_progress",
    "timed_sync_target_height",
    "timed_mempool_transactions",
    "timed_mempool_bytes",
    "timed_transactions_total",
    "timed_txs_finalized_total",
    "timed_finality_seconds_bucket",
    "timed_votes_total",
    "timed_vote_equivocations_total",
];

fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/timed.json"))
        .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_devnet() {
    let (Some(prometheus_bin), Some(promtool)) = (which("prometheus"), which("promtool")) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "prometheus/promtool not installed: .ci/run installs Debian's prometheus package"
            );
        }
        eprintln!("SKIPPED: prometheus/promtool not installed (apt-get install prometheus)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut killer = Killer(Vec::new());
    let devnet = Command::new(env!("CARGO_BIN_EXE_timed"))
        .args([
            "devnet",
            "--nodes",
            "3",
            "--block-interval",
            "1",
            "--first-ip",
            "127.0.80.1",
            "--dir",
        ])
        .arg(dir.path().join("devnet"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    killer.0.push(devnet);
    let metrics: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.80.{i}:24202").parse().unwrap())
        .collect();
    let rpc_addrs: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.80.{i}:24201").parse().unwrap())
        .collect();
    // Every node serves metrics and sees its two peers.
    wait_until("the devnet's metrics", Duration::from_secs(60), || {
        metrics.iter().all(|m| {
            http_get(*m, "/metrics").is_some_and(|t| {
                t.lines()
                    .filter(|l| l.starts_with("timed_peers{"))
                    .map(|l| {
                        l.rsplit(' ')
                            .next()
                            .unwrap_or("0")
                            .parse::<f64>()
                            .unwrap_or(0.0)
                    })
                    .sum::<f64>()
                    >= 2.0
            })
        })
    });

    // promtool accepts the exposition format.
    let scrape = http_get(metrics[0], "/metrics").unwrap();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The finality histogram is registered at start-up: its series exist
    // before any sample.
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("timed_finality_seconds_count ")),
        "no timed_finality_seconds_count in a fresh node's scrape"
    );

    // A real Prometheus scraping every node every 2 s.
    let port = TcpListener::bind("127.0.80.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prometheus: SocketAddr = format!("127.0.80.100:{port}").parse().unwrap();
    let server = Command::new(&prometheus_bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("devnet/prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    killer.0.push(server);
    wait_until(
        "Prometheus to scrape all 3 nodes",
        Duration::from_secs(60),
        || series(prometheus, "up{job=\"timed\"} == 1") == 3,
    );
    // rate() needs two samples of each series.
    wait_until("a second scrape", Duration::from_secs(60), || {
        series(prometheus, "count_over_time(up{job=\"timed\"}[1m]) >= 3") == 3
    });

    let queries = dashboard_queries();
    assert!(queries.len() >= 36, "{} queries", queries.len());
    for metric in CHAIN_METRICS {
        assert!(
            queries.iter().any(|(_, expr)| expr.contains(metric)),
            "no dashboard query uses {metric}"
        );
    }
    // The README names exactly these panels as needing a payment.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for title in NEED_A_PAYMENT {
        assert!(
            queries.iter().any(|(t, _)| t == title),
            "no dashboard panel {title:?}"
        );
        assert!(
            readme.contains(&format!("**{title}**")),
            "the README does not name {title:?} as needing a payment"
        );
    }
    let (later, fresh): (Vec<_>, Vec<_>) = queries
        .iter()
        .partition(|(title, _)| NEED_A_PAYMENT.contains(&title.as_str()));

    // Fresh devnet: every other panel gets data (new samples arrive every
    // 2 s; the ping quantiles need a keepalive round between two scrapes).
    wait_for_data(prometheus, &fresh, Duration::from_secs(120));
    // ... and the ones that need a payment have their series, but nothing
    // to draw yet.
    for (title, expr) in &later {
        let answer = query(prometheus, expr);
        assert!(
            answer.is_some_and(|a| a.series > 0 && a.numbers == 0),
            "{title}: {expr} before any payment gave {answer:?}"
        );
    }

    // Pay node 2 from node 1; the votes that finalize it record the first
    // sample of timed_finality_seconds, between two scrapes.
    let to = rpc(rpc_addrs[1], "listunspent", json!([]))
        .ok()
        .and_then(|u| Some(u.as_array()?.first()?["address"].as_str()?.to_owned()))
        .expect("node 2's wallet has genesis outputs");
    let mut txid = String::new();
    wait_until(
        "sendtoaddress on node 1",
        Duration::from_secs(60),
        || match rpc(rpc_addrs[0], "sendtoaddress", json!([to, "1.5"])) {
            Ok(id) => {
                txid = id.as_str().unwrap().to_owned();
                true
            }
            Err(e) => {
                eprintln!("sendtoaddress: {e}; retrying");
                false
            }
        },
    );
    let sent = Instant::now();

    let mut tx = Value::Null;
    wait_until(
        "the payment final on node 1",
        Duration::from_secs(60),
        || {
            tx = rpc(rpc_addrs[0], "gettransaction", json!([txid])).unwrap_or(Value::Null);
            tx["final"] == json!(true)
        },
    );
    eprintln!(
        "payment {txid}: final by votes {}, finality {} ms (checked {:?} after sendtoaddress)",
        tx["votes"]["finalized_by_votes"],
        tx["votes"]["finality_ms"],
        sent.elapsed()
    );

    // After the payment, every panel has data.
    let all: Vec<&(String, String)> = queries.iter().collect();
    wait_for_data(prometheus, &all, Duration::from_secs(120));
}
