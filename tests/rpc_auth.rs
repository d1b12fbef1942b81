#![allow(clippy::unwrap_used, clippy::expect_used)]
//! RPC authentication against real `timed run` processes, as bitcoind does
//! it: the cookie file (written at start, 0600, removed at stop, new at
//! every start), `[rpc] user` / `password` and the bearer token; a default
//! node serves calls without credentials but refuses wrong ones; `timed
//! rpc` finds the cookie by itself; config errors name their key.
//!
//! Every address is on 127.17.x.y; every child is killed by a guard when a
//! test ends, and every wait polls with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine;
use common::procs::{metric, output_within, poll, run_node, timed_stdin_null, wait_exit, Guard};
use common::WAIT;
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery";
const TOKEN: &str = "token-0123456789abcdef";

/// A node's files and addresses.
struct TestNode {
    dir: PathBuf,
    config: PathBuf,
    rpc: SocketAddr,
    metrics: SocketAddr,
}

impl TestNode {
    /// Writes the config of a one-node devnet on `ip` with data in
    /// `data_dir`, `rpc_extra` lines in `[rpc]`, metrics on.
    fn write(dir: &Path, data_dir: &Path, ip: [u8; 4], rpc_extra: &str) -> TestNode {
        std::fs::create_dir_all(dir).unwrap();
        let rpc = SocketAddr::from((ip, 24_201));
        let metrics = SocketAddr::from((ip, 24_202));
        let text = format!(
            "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{}\"\n\n\
             [rpc]\nlisten = \"{rpc}\"\n{rpc_extra}\n[metrics]\nlisten = \"{metrics}\"\n",
            data_dir.display(),
            SocketAddr::from((ip, 24_200)),
        );
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        TestNode {
            dir: data_dir.to_owned(),
            config,
            rpc,
            metrics,
        }
    }

    fn cookie_path(&self) -> PathBuf {
        self.dir.join(".cookie")
    }

    /// The `Authorization` value of the node's cookie, once it exists.
    fn cookie_header(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.cookie_path()).ok()?;
        Some(format!("Basic {}", b64(&text)))
    }

    fn start(&self) -> Guard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.with_file_name("timed.log"))
            .unwrap();
        run_node(&self.config, log)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("timed.log")).unwrap_or_default()
    }

    /// Waits until the node answers `uptime` with its cookie.
    fn wait_up(&self) {
        poll("the node answering with its cookie", WAIT, || {
            let auth = self.cookie_header()?;
            let (status, _) = post(self.rpc, Some(&auth), "uptime")?;
            (status == 200).then_some(())
        });
    }

    /// `stop` (with the cookie), then waits for a clean exit.
    fn stop(&self, guard: &mut Guard) {
        let auth = self.cookie_header().unwrap();
        let (status, body) = post(self.rpc, Some(&auth), "stop").unwrap();
        assert_eq!(status, 200, "{body}");
        let exit = wait_exit(&mut guard.0, WAIT).expect("the node did not stop");
        assert!(exit.success(), "{exit:?}\n{}", self.log());
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(&format!("{user}:{password}")))
}

/// One POST of `method` with an optional `Authorization` value: the HTTP
/// status and the body (as JSON); `None` if the node cannot be reached.
/// A 401 must also name Basic in `WWW-Authenticate`.
fn post(rpc: SocketAddr, authorization: Option<&str>, method: &str) -> Option<(u16, Value)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).to_string();
    let mut stream = TcpStream::connect_timeout(&rpc, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    if status == 401 {
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"jsonrpc\""),
            "{head}"
        );
    }
    Some((status, serde_json::from_str(body).ok()?))
}

/// Asserts HTTP 401 with JSON-RPC error -32001.
fn assert_refused(rpc: SocketAddr, authorization: Option<&str>, what: &str) {
    let (status, body) = post(rpc, authorization, "uptime").unwrap();
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error"]["code"], -32001, "{what}: {body}");
}

/// Asserts an answer with a result.
fn assert_served(rpc: SocketAddr, authorization: Option<&str>, what: &str) {
    let (status, body) = post(rpc, authorization, "uptime").unwrap();
    assert_eq!(status, 200, "{what}: {body}");
    assert!(body["result"].is_u64(), "{what}: {body}");
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `timed rpc ARGS` (in the tests' environment: no credentials, a `HOME`
/// that does not exist), with `env` added.
fn timed_rpc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = timed_stdin_null();
    cmd.arg("rpc").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(cmd, WAIT)
}

#[test]
fn a_default_node_serves_no_credentials_and_its_cookie_but_refuses_wrong_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::write(tmp.path(), &tmp.path().join("data"), [127, 17, 0, 1], "");
    let mut guard = node.start();
    node.wait_up();

    // TIME Coin's time-cli sends no credentials: served.
    assert_served(node.rpc, None, "no credentials");

    // The cookie: bitcoind's format, readable by the node's user only.
    let cookie = std::fs::read_to_string(node.cookie_path()).unwrap();
    let secret = cookie.strip_prefix("__cookie__:").expect(&cookie);
    assert_eq!(secret.len(), 64, "{cookie}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{cookie}");
    let mode = std::fs::metadata(node.cookie_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert!(!node.dir.join(".cookie.tmp").exists());
    assert!(!node.log().contains(secret), "the log shows the cookie");

    assert_served(node.rpc, Some(&basic("__cookie__", secret)), "the cookie");
    // Credentials that are sent must be right, even where none are needed.
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &secret[..63]);
    assert_refused(
        node.rpc,
        Some(&basic("__cookie__", &wrong)),
        "a wrong cookie",
    );
    assert_refused(
        node.rpc,
        Some(&format!("Bearer {secret}")),
        "a bearer token",
    );
    assert_refused(node.rpc, Some("Basic not-base64!"), "garbage");
    let refused = poll("the refusals counted", WAIT, || {
        let n = metric(
            node.metrics,
            "timed_rpc_requests_refused_total",
            &["reason=\"unauthorized\""],
        )?;
        (n >= 3.0).then_some(n)
    });
    assert_eq!(refused, 3.0);

    // A clean stop removes the cookie; the next start writes a new one.
    node.stop(&mut guard);
    assert!(!node.cookie_path().exists(), "the cookie outlived the node");
    let mut guard = node.start();
    node.wait_up();
    let again = std::fs::read_to_string(node.cookie_path()).unwrap();
    assert_ne!(again, cookie, "the cookie did not change at restart");
    assert_refused(
        node.rpc,
        Some(&basic("__cookie__", secret)),
        "the old cookie",
    );
    node.stop(&mut guard);
    assert!(!node.cookie_path().exists());
}

#[test]
fn a_node_with_user_and_password_requires_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::write(
        tmp.path(),
        &tmp.path().join("data"),
        [127, 17, 1, 1],
        &format!("user = \"{USER}\"\npassword = \"{PASSWORD}\"\nbearer_token = \"{TOKEN}\"\n"),
    );
    let mut guard = node.start();
    node.wait_up();

    assert_refused(node.rpc, None, "no credentials");
    assert_served(node.rpc, Some(&basic(USER, PASSWORD)), "user and password");
    assert_served(node.rpc, node.cookie_header().as_deref(), "the cookie");
    assert_served(node.rpc, Some(&format!("Bearer {TOKEN}")), "the token");
    assert_refused(
        node.rpc,
        Some(&basic(USER, "correct-horse-battery-")),
        "a wrong password",
    );
    assert_refused(node.rpc, Some(&basic("bob", PASSWORD)), "a wrong user");
    assert_refused(
        node.rpc,
        Some(&basic("__cookie__", PASSWORD)),
        "the password as a cookie",
    );
    assert_refused(
        node.rpc,
        Some(&format!("Bearer {PASSWORD}")),
        "a wrong token",
    );
    let log = node.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains(TOKEN),
        "the log shows a secret"
    );
    node.stop(&mut guard);
}

#[test]
fn timed_rpc_finds_the_cookie_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    // The node keeps its data where `timed rpc` looks by default.
    let home = tmp.path().join("home");
    let data = home.join(".timecoin").join("devnet");
    let node = TestNode::write(
        &tmp.path().join("conf"),
        &data,
        [127, 17, 2, 1],
        &format!("user = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
    );
    let mut guard = node.start();
    node.wait_up();
    let url = format!("http://{}/", node.rpc);
    let ok = |out: Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", show(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(result.is_u64(), "{what}: {}", show(&out));
    };
    let home_s = home.to_str().unwrap();

    // No flags but the URL: ~/.timecoin/devnet/.cookie.
    ok(
        timed_rpc(&["--rpc-url", &url, "getblockcount"], &[("HOME", home_s)]),
        "the default cookie",
    );
    // The config alone: its rpc.listen and data dir.
    let config = node.config.to_str().unwrap();
    ok(
        timed_rpc(&["--config", config, "getblockcount"], &[]),
        "--config",
    );
    let cookie = node.cookie_path();
    ok(
        timed_rpc(
            &[
                "--rpc-url",
                &url,
                "--rpc-cookie-file",
                cookie.to_str().unwrap(),
                "getblockcount",
            ],
            &[],
        ),
        "--rpc-cookie-file",
    );
    ok(
        timed_rpc(
            &[
                "--rpc-url",
                &url,
                "--rpc-user",
                USER,
                "--rpc-password",
                PASSWORD,
                "getblockcount",
            ],
            &[],
        ),
        "--rpc-user/--rpc-password",
    );
    ok(
        timed_rpc(
            &["--rpc-url", &url, "getblockcount"],
            &[("TIMED_RPC_USER", USER), ("TIMED_RPC_PASSWORD", PASSWORD)],
        ),
        "TIMED_RPC_USER/TIMED_RPC_PASSWORD",
    );

    // Without a cookie (the tests' HOME does not exist) or with a wrong
    // password: refused, and the error says what was sent.
    let out = timed_rpc(&["--rpc-url", &url, "getblockcount"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("-32001") && stderr.contains("no credentials"),
        "{stderr}"
    );
    let out = timed_rpc(
        &[
            "--rpc-url",
            &url,
            "--rpc-user",
            USER,
            "--rpc-password",
            "wrong-password-wrong",
            "getblockcount",
        ],
        &[("HOME", home_s)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-32001"), "{stderr}");
    assert!(!stderr.contains("wrong-password-wrong"), "{stderr}");

    let out = timed_rpc(
        &["--rpc-url", &url, "--rpc-user", USER, "getblockcount"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));

    node.stop(&mut guard);
}

/// `timed config check FILE` and `timed run --config FILE` exit 2 with an
/// error naming `key`.
fn assert_config_error(tmp: &Path, name: &str, rpc: &str, key: &str) {
    let file = tmp.join(format!("{name}.toml"));
    std::fs::write(&file, format!("[rpc]\n{rpc}")).unwrap();
    let file_s = file.to_str().unwrap();
    let mut check = timed_stdin_null();
    check.args(["config", "check", file_s]);
    let mut run = timed_stdin_null();
    run.args(["run", "--config", file_s, "--data-dir"])
        .arg(tmp.join(format!("{name}-data")))
        .args([
            "--listen",
            "127.17.3.1:0",
            "--rpc-listen",
            "127.17.3.1:0",
            "--metrics-listen",
            "127.17.3.1:0",
        ]);
    for cmd in [check, run] {
        let out = output_within(cmd, WAIT);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{name}: {stderr}");
        assert!(stderr.contains(file_s), "{name}: {stderr}");
    }
}

#[test]
fn config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    assert_config_error(
        tmp.path(),
        "user_alone",
        "user = \"alice\"\n",
        "rpc.password",
    );
    assert_config_error(
        tmp.path(),
        "password_alone",
        &format!("password = \"{PASSWORD}\"\n"),
        "rpc.user",
    );
    assert_config_error(
        tmp.path(),
        "short_password",
        "user = \"alice\"\npassword = \"short\"\n",
        "rpc.password",
    );
}

#[test]
fn an_unwritable_cookie_stops_the_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A directory where the cookie goes: the rename over it fails.
    std::fs::create_dir_all(data.join(".cookie").join("x")).unwrap();
    let node = TestNode::write(tmp.path(), &data, [127, 17, 4, 1], "");
    let mut cmd = timed_stdin_null();
    cmd.args(["run", "--config", node.config.to_str().unwrap()]);
    let out = output_within(cmd, WAIT);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = data.join(".cookie");
    assert!(
        stderr.contains(&format!("cookie file {}", path.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
