#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator-facing contracts of the `timed` binary, checked by running
//! it: bad configs fail early with one line naming the key or path, ports
//! in use and unusable data dirs fail with the address or path, `init` and
//! `keygen` write 0600 keys and never overwrite, `run` + `rpc` start, query
//! and stop a node, and a data dir that lost a key refuses to start
//! (`devnet` is covered by tests/devnet.rs).
//!
//! Every child process is killed by a guard when a test ends (or panics),
//! and every address is on 127.0.90.x-127.0.99.x or 127.3.10.x so a
//! developer's node on 127.0.0.1:24200-24202 is never disturbed.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::procs::{output_within, poll_every, timed_stdin_null, wait_exit, Guard};
use serde_json::Value;

/// Longest any one-shot `timed` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// How often the waits here poll (each `rpc` is a `timed rpc` process).
const POLL: Duration = Duration::from_millis(250);

/// Runs `timed ARGS` (bounded) and returns its output.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut cmd = timed_stdin_null();
    cmd.args(args);
    output_within(cmd, COMMAND_LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// Asserts a failure with `code` and exactly one line on stderr,
/// `error: ...`, containing every one of `needles`; returns that line.
fn assert_one_line_error(out: &Output, code: i32, needles: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line on stderr:\n{}",
        show(out)
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{}", show(out));
    for needle in needles {
        assert!(
            line.contains(needle),
            "error line does not name {needle:?}: {line}"
        );
    }
    line.to_owned()
}

/// The names of the entries of `dir`.
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_node_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The node id from a `node id: <hex>` line of `stdout`.
fn node_id_line(stdout: &str) -> String {
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("node id:"))
        .unwrap_or_else(|| panic!("no `node id:` line in {stdout:?}"))
        .trim()
        .to_owned();
    assert!(is_node_id(&id), "not a node id: {id:?}");
    id
}

/// `timed rpc --rpc-url URL METHOD`.
fn rpc(url: &str, method: &str) -> Output {
    run(&["rpc", "--rpc-url", url, method])
}

/// `timed rpc` returning the parsed JSON result, or `None` on failure.
fn rpc_json(url: &str, method: &str) -> Option<Value> {
    let out = rpc(url, method);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out))))
}

/// A blocking `GET /metrics`; returns the body of a 200 answer.
fn get_metrics(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_owned())
}

// ---------------------------------------------------------------------------
// 1. Bad configs
// ---------------------------------------------------------------------------

/// Every bad config is refused by `config check` and by `run` with exit code
/// 2 and one stderr line naming the file and the key, before anything is
/// created (no data dir, nothing under HOME).
#[test]
fn bad_configs_exit_2_with_one_line_naming_the_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown_top_level", "colour = 1\n", &["colour"]),
        (
            "unknown_p2p_key",
            "[p2p]\nmax_inbund = 3\n",
            &["max_inbund"],
        ),
        (
            "wrong_type",
            "[p2p]\nmax_inbound = \"many\"\n",
            &["max_inbound", "line 2"],
        ),
        (
            "unknown_layer",
            "[[middleware]]\nname = \"blacklist\"\n\n[[middleware]]\nname = \"firewall\"\n",
            &["middleware[1]", "firewall"],
        ),
        (
            "bad_address",
            "[p2p]\nlisten = \"nowhere\"\n",
            &["listen", "nowhere"],
        ),
        (
            "bad_peer",
            "[p2p]\npeers = [\"bad peer\"]\n",
            &["peers", "bad peer"],
        ),
        (
            "ping_interval",
            "[p2p]\nping_interval_secs = 1\n",
            &["p2p.ping_interval_secs"],
        ),
        (
            "huge_pong_timeout",
            "[p2p]\npong_timeout_secs = 9223372036854775807\n",
            &["p2p.pong_timeout_secs", "86400"],
        ),
        (
            "huge_request_timeout",
            "[p2p]\nrequest_timeout_secs = 9223372036854775807\n",
            &["p2p.request_timeout_secs"],
        ),
        (
            "no_rpc_workers",
            "[rpc]\nmax_concurrent = 0\n",
            &["rpc.max_concurrent"],
        ),
        (
            "min_above_max_peers",
            "[p2p]\nmin_peers = 60\nmax_peers = 50\n",
            &["p2p.min_peers", "p2p.max_peers (50)", "60"],
        ),
        (
            "bad_seed",
            "[p2p]\nseeds = [\"seed.example\"]\n",
            &["p2p.seeds", "seed.example"],
        ),
        (
            "missing_country_db",
            "[p2p.diversity]\ncountry_db = \"/nonexistent/country.mmdb\"\n",
            &["p2p.diversity.country_db", "/nonexistent/country.mmdb"],
        ),
    ];
    for (name, body, needles) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&file, body).unwrap();
        let mut needles = needles.to_vec();
        let file_s = p(&file);
        needles.push(&file_s);

        let out = run(&["config", "check", &file_s]);
        assert_one_line_error(&out, 2, &needles);
        assert!(out.stdout.is_empty(), "{name}: {}", show(&out));

        let data = tmp.path().join("data");
        let mut cmd = timed_stdin_null();
        cmd.env("HOME", tmp.path().join("home")).args([
            "run",
            "--config",
            &file_s,
            "--data-dir",
            &p(&data),
            "--listen",
            "127.0.90.1:0",
            "--rpc-listen",
            "127.0.90.1:0",
            "--metrics-listen",
            "127.0.90.1:0",
        ]);
        let out = output_within(cmd, COMMAND_LIMIT);
        assert_one_line_error(&out, 2, &needles);
        assert!(out.stdout.is_empty(), "{name}: {}", show(&out));
        assert_eq!(
            entries(tmp.path()),
            BTreeSet::from([format!("{name}.toml")]),
            "{name}: `run` with a bad config created files"
        );
    }
}

/// A missing config file is named in the error, by `config check` and `run`.
#[test]
fn a_missing_config_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = p(&tmp.path().join("nope.toml"));
    let out = run(&["config", "check", &file]);
    assert_one_line_error(&out, 2, &[&file]);

    let mut cmd = timed_stdin_null();
    cmd.env("HOME", tmp.path().join("home")).args([
        "run",
        "--config",
        &file,
        "--data-dir",
        &p(&tmp.path().join("data")),
        "--listen",
        "127.0.90.2:0",
        "--rpc-listen",
        "127.0.90.2:0",
        "--metrics-listen",
        "127.0.90.2:0",
    ]);
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_one_line_error(&out, 2, &[&file]);
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

/// `config check` on a good file exits 0 and prints the resolved stack.
#[test]
fn config_check_prints_the_resolved_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("good.toml");
    std::fs::write(
        &file,
        "[node]\nnetwork = \"devnet\"\n\n[p2p]\nlisten = \"127.0.90.3:24300\"\n\n[rpc]\nlisten = \"127.0.90.3:24301\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", &p(&file)]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("blacklist -> scoring -> rate_limit -> dedup -> auth"),
        "{stdout}"
    );
    assert!(stdout.contains("127.0.90.3:24300"), "{stdout}");
    assert!(stdout.contains("127.0.90.3:24301"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", show(&out));

    // A reordered list is printed in its order.
    std::fs::write(
        &file,
        "[[middleware]]\nname = \"blacklist\"\n\n[[middleware]]\nname = \"rate_limit\"\n\n[[middleware]]\nname = \"auth\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", &p(&file)]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out.stdout).contains("blacklist -> rate_limit -> auth"),
        "{}",
        show(&out)
    );

    // A config that keeps inbound peers out is legal, with a warning line.
    std::fs::write(&file, "[p2p]\nmax_inbound = 0\n").unwrap();
    let out = run(&["config", "check", &p(&file)]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("p2p.max_inbound")),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------
// 2. Ports in use
// ---------------------------------------------------------------------------

/// `timed run` on a P2P, RPC or metrics address already in use exits 1 with
/// an error naming the address.
#[test]
fn addresses_in_use_exit_1_naming_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, which) in ["--listen", "--rpc-listen", "--metrics-listen"]
        .into_iter()
        .enumerate()
    {
        let ip = [127, 0, 91, i as u8 + 1];
        let taken = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
        let busy = taken.local_addr().unwrap().to_string();
        let free = SocketAddr::from((ip, 0)).to_string();
        let mut args = vec![
            "run".to_owned(),
            "--data-dir".to_owned(),
            p(&tmp.path().join(format!("data{i}"))),
        ];
        for flag in ["--listen", "--rpc-listen", "--metrics-listen"] {
            args.push(flag.to_owned());
            args.push(if flag == which {
                busy.clone()
            } else {
                free.clone()
            });
        }
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{which}: {}", show(&out));
        let stderr = text(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{which}: {}", show(&out));
        assert!(errors[0].contains(&busy), "{which}: {}", show(&out));
        drop(taken);
    }
}

// ---------------------------------------------------------------------------
// 3. Unusable data dir
// ---------------------------------------------------------------------------

/// A data dir below a regular file cannot be created (even as root): `run`
/// and `init` exit 2 naming the path.
#[test]
fn a_data_dir_below_a_file_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data = p(&file.join("data"));
    let out = run(&[
        "run",
        "--data-dir",
        &data,
        "--listen",
        "127.0.92.1:0",
        "--rpc-listen",
        "127.0.92.1:0",
        "--metrics-listen",
        "127.0.92.1:0",
    ]);
    assert_one_line_error(&out, 2, &[&data]);

    let out = run(&["init", "--data-dir", &data]);
    assert_one_line_error(&out, 2, &[&data]);
    assert_eq!(entries(tmp.path()), BTreeSet::from(["file".to_owned()]));
}

// ---------------------------------------------------------------------------
// 4. init
// ---------------------------------------------------------------------------

/// `init --network testnet` writes a commented config that `config check`
/// accepts (testnet, ports 24100/24101/24102, the data dir) and a 0600 key;
/// a second `init` refuses, naming config.toml, and changes nothing.
#[test]
fn init_writes_a_checked_config_and_a_private_key_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = run(&["init", "--data-dir", &p(&dir), "--network", "testnet"]);
    assert!(out.status.success(), "{}", show(&out));
    node_id_line(&text(&out.stdout));

    let config = dir.join("config.toml");
    let key = dir.join("node_key");
    let body = std::fs::read_to_string(&config).unwrap();
    assert!(
        body.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            >= 3,
        "config.toml is not commented:\n{body}"
    );
    assert!(body.contains("network = \"testnet\""), "{body}");
    assert_eq!(mode(&key), 0o600);

    let out = run(&["config", "check", &p(&config)]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = text(&out.stdout);
    let canonical = p(&std::fs::canonicalize(&dir).unwrap());
    for want in [
        "network:    testnet",
        ":24100",
        "127.0.0.1:24101",
        "127.0.0.1:24102",
        "blacklist -> scoring -> rate_limit -> dedup -> auth",
        canonical.as_str(),
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }

    // A second init refuses and leaves the config and the key alone.
    let key_before = std::fs::read(&key).unwrap();
    let out = run(&["init", "--data-dir", &p(&dir), "--network", "testnet"]);
    assert_one_line_error(&out, 2, &[&p(&config)]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), body);
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
}

// ---------------------------------------------------------------------------
// 5. keygen
// ---------------------------------------------------------------------------

/// `keygen` prints a fresh node id; `keygen --out F` writes F with mode 0600
/// and refuses to overwrite it.
#[test]
fn keygen_prints_an_id_and_writes_a_private_key_once() {
    let out = run(&["keygen"]);
    assert!(out.status.success(), "{}", show(&out));
    let a = node_id_line(&text(&out.stdout));
    let out = run(&["keygen"]);
    let b = node_id_line(&text(&out.stdout));
    assert_ne!(a, b, "two keygens gave the same id");

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("key");
    let out = run(&["keygen", "--out", &p(&file)]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = text(&out.stdout);
    node_id_line(&stdout);
    assert!(stdout.contains(&p(&file)), "{stdout}");
    assert_eq!(mode(&file), 0o600);
    let before = std::fs::read(&file).unwrap();

    let out = run(&["keygen", "--out", &p(&file)]);
    assert_one_line_error(&out, 2, &[&p(&file)]);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the key was overwritten"
    );
}

// ---------------------------------------------------------------------------
// 6. run + rpc
// ---------------------------------------------------------------------------

/// A node started from a config file listens where the file says, uses the
/// key in its data dir, answers `uptime` and `getnetworkinfo`, serves
/// metrics, and exits 0 on the `stop` RPC.
#[test]
fn run_from_a_config_answers_rpc_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = run(&["keygen", "--out", &p(&data.join("node_key"))]);
    assert!(out.status.success(), "{}", show(&out));
    let node_id = node_id_line(&text(&out.stdout));

    let (p2p, rpc_addr, metrics): (SocketAddr, SocketAddr, SocketAddr) = (
        "127.0.93.1:24310".parse().unwrap(),
        "127.0.93.1:24311".parse().unwrap(),
        "127.0.93.1:24312".parse().unwrap(),
    );
    let config = tmp.path().join("timed.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{p2p}\"\n\n[rpc]\nlisten = \"{rpc_addr}\"\n\n[metrics]\nlisten = \"{metrics}\"\n",
            p(&data)
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("timed.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut node = Guard(
        timed_stdin_null()
            .args(["run", "--config", &p(&config)])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let url = format!("http://{rpc_addr}/");

    let uptime = poll_every("the node's RPC", Duration::from_secs(60), POLL, || {
        if let Some(status) = node.0.try_wait().unwrap() {
            panic!("the node exited ({status}):\n{}", log());
        }
        let out = rpc(&url, "uptime");
        out.status.success().then(|| text(&out.stdout))
    });
    assert!(
        uptime.trim().parse::<u64>().is_ok(),
        "uptime is not a number: {uptime:?}"
    );

    let info = rpc_json(&url, "getnetworkinfo").expect("getnetworkinfo failed");
    assert_eq!(info["node_id"], node_id.as_str(), "{info}");
    assert_eq!(info["network"], "devnet", "{info}");
    assert_eq!(info["listen"], p2p.to_string(), "{info}");
    assert_eq!(
        info["middleware"], "blacklist -> scoring -> rate_limit -> dedup -> auth",
        "{info}"
    );

    let body = get_metrics(metrics).expect("no metrics at the configured address");
    assert!(body.contains("timed_"), "{body}");

    let out = rpc(&url, "stop");
    assert!(out.status.success(), "{}", show(&out));
    let status = wait_exit(&mut node.0, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the node did not stop within 5 s:\n{}", log()));
    assert!(
        status.success(),
        "the node exited with {status}:\n{}",
        log()
    );

    // Stopped: the RPC no longer answers.
    let out = rpc(&url, "uptime");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

/// `timed rpc` against an address where nothing listens exits 1 with one
/// line saying it cannot reach the URL.
#[test]
fn rpc_to_nothing_exits_1_with_a_clear_message() {
    let out = rpc("http://127.0.0.1:1/", "uptime");
    let line = assert_one_line_error(&out, 1, &["http://127.0.0.1:1/", "cannot reach"]);
    assert!(line.contains("is the node running"), "{line}");
    assert!(out.stdout.is_empty(), "{}", show(&out));
}

// ---------------------------------------------------------------------------
// 7. Lost keys
// ---------------------------------------------------------------------------

/// Starts `timed run --config CONFIG [extra]`, waits for its RPC at `url`,
/// stops it with the `stop` RPC and asserts it exited 0.
fn run_and_stop(config: &Path, url: &str, extra: &[&str], log_path: &Path) {
    let log = std::fs::File::create(log_path).unwrap();
    let mut node = Guard(
        timed_stdin_null()
            .args(["run", "--config", &p(config)])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(log_path).unwrap_or_default();
    poll_every("the node's RPC", Duration::from_secs(60), POLL, || {
        if let Some(status) = node.0.try_wait().unwrap() {
            panic!("the node exited ({status}):\n{}", log());
        }
        rpc_json(url, "uptime")
    });
    assert!(rpc(url, "stop").status.success());
    let status = wait_exit(&mut node.0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the node did not stop:\n{}", log()));
    assert!(status.success(), "exit {status}:\n{}", log());
}

/// A data dir that holds `chain.redb` but lost `node_key` or `wallet_key`
/// is refused (exit 2, naming the file and the way out) and no key is
/// created; `--allow-new-keys` creates the missing one and starts.
#[test]
fn a_lost_key_is_never_silently_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A genesis that does not depend on this node's keys (it follows
    // another masternode's chain), so new keys keep the same chain.
    let other = timed::crypto::NodeIdentity::generate();
    let other_wallet_dir = tmp.path().join("other");
    std::fs::create_dir(&other_wallet_dir).unwrap();
    let other_wallet = timed::wallet::Wallet::load_or_create(&other_wallet_dir).unwrap();
    let genesis = timed::chain::genesis::Genesis::devnet(
        2,
        &[*other.public_key().as_bytes()],
        &[other_wallet.address()],
    )
    .unwrap();
    let rpc_addr = "127.3.10.1:24311";
    let config = tmp.path().join("timed.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"127.3.10.1:24310\"\n\n[rpc]\nlisten = \"{rpc_addr}\"\n\n[metrics]\nlisten = \"127.3.10.1:24312\"\n\n{}",
            p(&data),
            timed::cli::devnet::devnet_chain_section(&genesis)
        ),
    )
    .unwrap();
    let url = format!("http://{rpc_addr}/");
    // A first run on an empty data dir creates both keys and the chain.
    run_and_stop(&config, &url, &[], &tmp.path().join("first.log"));
    for file in ["chain.redb", "node_key", "wallet_key"] {
        assert!(
            data.join(file).exists(),
            "{file} missing after the first run"
        );
    }

    for lost in ["node_key", "wallet_key"] {
        let saved = std::fs::read(data.join(lost)).unwrap();
        std::fs::remove_file(data.join(lost)).unwrap();
        let out = run(&["run", "--config", &p(&config)]);
        assert_one_line_error(
            &out,
            2,
            &[lost, "chain.redb", "restore", "--allow-new-keys"],
        );
        assert!(
            !data.join(lost).exists(),
            "{lost} was created despite the refusal"
        );
        std::fs::write(data.join(lost), &saved).unwrap();
        std::fs::set_permissions(data.join(lost), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // With the flag a lost wallet key is replaced by a new one.
    let old_wallet = std::fs::read(data.join("wallet_key")).unwrap();
    std::fs::remove_file(data.join("wallet_key")).unwrap();
    run_and_stop(
        &config,
        &url,
        &["--allow-new-keys"],
        &tmp.path().join("third.log"),
    );
    let new_wallet = std::fs::read(data.join("wallet_key")).unwrap();
    assert_ne!(new_wallet, old_wallet);
    assert_eq!(mode(&data.join("wallet_key")), 0o600);
}
