#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator-facing contracts of the `timed` binary, checked by running
//! it: bad configs fail early with one line naming the key or path, ports
//! in use and unusable data dirs fail with the address or path, `init` and
//! `keygen` write 0600 keys and never overwrite, `run` + `rpc` start, query
//! and stop a node, and `devnet` starts three connected nodes and stops them
//! on Ctrl-C.
//!
//! Every child process is killed by a guard when a test ends (or panics),
//! and every address is on 127.0.90.x-127.0.99.x so a developer's node on
//! 127.0.0.1:24200-24202 is never disturbed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any one-shot `timed` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A `timed` command with a clean environment for these tests.
fn timed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_timed"));
    cmd.env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("TIMED_RPC_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// Kills (and reaps) a child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
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
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `timed ARGS` (bounded) and returns its output.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut cmd = timed();
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

/// Polls `f` every 250 ms until it returns `Some`, failing after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits at most `limit` for `child` to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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
                .map(|c| text(&c).replace('\0', " ").contains(needle))
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
        let mut cmd = timed();
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

    let mut cmd = timed();
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
        timed()
            .args(["run", "--config", &p(&config)])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let url = format!("http://{rpc_addr}/");

    let uptime = wait_for("the node's RPC", Duration::from_secs(20), || {
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
// 7. devnet
// ---------------------------------------------------------------------------

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
/// within 20 s, and stops every node on Ctrl-C.
#[test]
fn devnet_connects_three_nodes_and_stops_them_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("devnet");
    let mut devnet = Devnet {
        child: timed()
            .args([
                "devnet",
                "--nodes",
                "3",
                "--dir",
                &p(&dir),
                "--first-ip",
                "127.0.95.1",
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
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
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
            format!("127.0.95.{i}:24200"),
            format!("http://127.0.95.{i}:24201/"),
            format!("http://127.0.95.{i}:24202/metrics"),
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
        assert!(yml.contains(&format!("127.0.95.{i}:24202")), "{yml}");
    }
    assert_eq!(yml.matches(":24202").count(), 3, "{yml}");

    // Full node ids, matching the printed prefixes.
    let urls: Vec<String> = (1..=3)
        .map(|i| format!("http://127.0.95.{i}:24201/"))
        .collect();
    let ids: Vec<String> = urls
        .iter()
        .zip(&prefixes)
        .map(|(url, prefix)| {
            let info = wait_for(
                &format!("{url} getnetworkinfo"),
                Duration::from_secs(20),
                || rpc_json(url, "getnetworkinfo"),
            );
            let id = info["node_id"].as_str().unwrap().to_owned();
            assert!(id.starts_with(prefix.as_str()), "{id} vs printed {prefix}");
            id
        })
        .collect();

    // A triangle: two connections each, node 1's peers are nodes 2 and 3.
    wait_for(
        "two connections on every node",
        Duration::from_secs(20).saturating_sub(started.elapsed()) + Duration::from_secs(1),
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

    // Ctrl-C stops the devnet and its nodes.
    assert!(
        !processes_mentioning(&p(&dir)).is_empty() || !cfg!(target_os = "linux"),
        "no node process mentions {}",
        dir.display()
    );
    signal(devnet.child.id(), "-INT");
    let status = wait_exit(&mut devnet.child, Duration::from_secs(10))
        .expect("devnet did not exit within 10 s of SIGINT");
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
    wait_for("the node processes to go", Duration::from_secs(5), || {
        processes_mentioning(&p(&dir)).is_empty().then_some(())
    });
    for url in &urls {
        let out = rpc(url, "uptime");
        assert_eq!(out.status.code(), Some(1), "{url} still answers");
    }
    eprintln!("devnet connected in {devnet_start:?}");
}
