//! The `timed` command line: `run`, `init`, `config check`, `keygen`, `rpc`
//! and `devnet`.
//!
//! Exit codes: 0 success; 1 a runtime failure (a port in use, an
//! unreachable node, an RPC error, a damaged database at start-up or a
//! database that fails while running: the message says what to do); 2 a
//! usage or configuration error (the message names the flag, key or path to
//! fix). Every failure is one line on stderr: `error: ...`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{render_template, Config, LogFormat};
use crate::constants::NODE_KEY_FILE;
use crate::crypto::NodeIdentity;
use crate::network::PeerTarget;
use crate::params::Network;
use crate::rpc;
use crate::storage::DB_FILE;
use crate::wallet::{Wallet, WALLET_KEY_FILE};

pub mod devnet;

/// timed: a node for the TIME Coin network.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node (the default: an embedded devnet config).
    Run(RunArgs),
    /// Write a commented config.toml, a node key and a wallet key into a
    /// data dir.
    Init {
        /// The data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// The network.
        #[arg(long, default_value = "devnet")]
        network: Network,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a node key: print its node id, and write it with --out.
    Keygen {
        /// Write the key here (mode 0600; the file must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Call a JSON-RPC method and print the result as JSON.
    Rpc(RpcArgs),
    /// Start N local nodes on 127.0.0.1..N sharing one genesis.
    Devnet {
        /// How many nodes (1-50).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
        nodes: u8,
        /// Where configs, keys, logs and prometheus.yml go.
        #[arg(long, default_value = "timed-devnet")]
        dir: PathBuf,
        /// The first node's IP; node i gets the i-th address from it.
        #[arg(long, default_value = "127.0.0.1")]
        first_ip: Ipv4Addr,
        /// Seconds per block slot (1-5 make a lively devnet).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
        block_interval: u64,
        /// `seed`: every node knows only node 1 and finds the others by
        /// peer exchange; `mesh`: every node lists every node before it.
        #[arg(long, value_enum, default_value_t = devnet::Topology::Seed)]
        topology: devnet::Topology,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file and print the resolved middleware stack.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// Config file (TOML); without it the embedded defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides [node] data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Network (overrides [node] network).
    #[arg(long)]
    network: Option<Network>,
    /// P2P listen address (overrides [p2p] listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A peer to keep connected, IP:PORT or NODE_ID@IP:PORT (repeatable;
    /// added to [p2p] peers).
    #[arg(long = "peer")]
    peers: Vec<PeerTarget>,
    /// Seconds between pings (overrides [p2p] ping_interval_secs).
    #[arg(long)]
    ping_interval: Option<u64>,
    /// RPC listen address (overrides [rpc] listen).
    #[arg(long)]
    rpc_listen: Option<SocketAddr>,
    /// Metrics listen address (overrides [metrics] listen).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Stop when standard input closes (used by `timed devnet`, so that its
    /// nodes stop even if it is killed).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
    /// Create a new node_key or wallet_key when the data dir holds a chain
    /// but not the key (a new identity, or an empty wallet). Without it
    /// the node refuses to start, so that a lost key is noticed.
    #[arg(long)]
    allow_new_keys: bool,
    /// Start over: move the chain database aside (as
    /// chain.redb.damaged-<unix time>, with its chain.tip marker), start
    /// from genesis and sync the chain again from peers. Bans stored in the
    /// old file are not restored. For a database reported damaged or
    /// incomplete at start-up.
    #[arg(long)]
    resync: bool,
}

/// `timed rpc`. The node is found as `timed run` finds its settings:
/// `--config` (else the defaults of `--network`, devnet if none), then
/// `--data-dir`. Credentials, first found first used: `--token`,
/// `--rpc-user` with `--rpc-password`, the cookie file if it exists.
#[derive(clap::Args, Debug)]
struct RpcArgs {
    /// The node's RPC URL (default: http://<rpc.listen>/ of the config,
    /// e.g. http://127.0.0.1:24201/ on devnet).
    #[arg(long)]
    rpc_url: Option<String>,
    /// The node's config file: its network, data dir and rpc.listen.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's data directory (overrides [node] data_dir), where its
    /// cookie file is.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The node's network (overrides [node] network).
    #[arg(long)]
    network: Option<Network>,
    /// Bearer token (or TIMED_RPC_TOKEN); used before any other credential.
    #[arg(long, env = "TIMED_RPC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// RPC user, with --rpc-password (or TIMED_RPC_USER).
    #[arg(long, env = "TIMED_RPC_USER")]
    rpc_user: Option<String>,
    /// RPC password, with --rpc-user (or TIMED_RPC_PASSWORD).
    #[arg(long, env = "TIMED_RPC_PASSWORD", hide_env_values = true)]
    rpc_password: Option<String>,
    /// The node's cookie file (default: .cookie in the data dir), used
    /// when no token, user or password is given and the file exists.
    #[arg(long)]
    rpc_cookie_file: Option<PathBuf>,
    /// The method, e.g. getpeerinfo.
    method: String,
    /// Parameters: each is parsed as JSON, or taken as a string.
    params: Vec<String>,
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    let result = match command {
        Command::Run(args) => block_on(run(args)),
        Command::Init { data_dir, network } => init(&data_dir, network),
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Keygen { out } => keygen(out.as_deref()),
        Command::Rpc(args) => block_on(rpc_command(args)),
        Command::Devnet {
            nodes,
            dir,
            first_ip,
            block_interval,
            topology,
        } => block_on(devnet::devnet(
            nodes,
            &dir,
            first_ip,
            block_interval,
            topology,
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// How long the runtime may take to stop once a command has finished:
/// blocking tasks still running (a sync batch being applied) get this long
/// to end; nothing else may keep the process alive.
pub const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `command` on a fresh runtime, then stops the runtime within
/// [`RUNTIME_SHUTDOWN_GRACE`].
fn block_on(
    command: impl std::future::Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second initialisation (tests) is not an error worth failing for.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Creates `dir` (and parents), checking that it is a writable directory.
fn ensure_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::usage(format!("data dir {}: cannot create it: {e}", dir.display()))
    })?;
    let probe = dir.join(".timed-write-test");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| Failure::usage(format!("data dir {}: not writable: {e}", dir.display())))
}

/// The config `--config`, `--network` and `--data-dir` describe: the file
/// (else the defaults of the network, devnet if none) with the flags
/// applied.
fn resolve_config(
    path: Option<&Path>,
    network: Option<Network>,
    data_dir: Option<PathBuf>,
) -> Result<Config, Failure> {
    let mut config = match path {
        Some(path) => Config::load(path).map_err(Failure::usage)?,
        None => Config::for_network(network.unwrap_or(Network::Devnet)),
    };
    if let Some(network) = network {
        config.node.network = network;
    }
    if let Some(dir) = data_dir {
        config.node.data_dir = Some(dir);
    }
    Ok(config)
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let mut config = resolve_config(args.config.as_deref(), args.network, args.data_dir)?;
    if let Some(listen) = args.listen {
        config.p2p.listen = Some(listen);
    }
    config.p2p.peers.extend(args.peers);
    if let Some(secs) = args.ping_interval {
        if !(2..=crate::config::MAX_DURATION_SECS).contains(&secs) {
            return Err(Failure::usage(
                "--ping-interval: must be between 2 (peers allow 6 pings per 10 s) and 86400",
            ));
        }
        config.p2p.ping_interval_secs = secs;
    }
    if let Some(addr) = args.rpc_listen {
        config.rpc.listen = Some(addr);
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    init_logging(&config.logging.filter, config.logging.format);
    for warning in config.warnings() {
        tracing::warn!(
            key = warning.key,
            warning = warning.message,
            "config warning"
        );
    }
    let data_dir = config.data_dir();
    ensure_dir(&data_dir)?;
    check_keys_present(&data_dir, args.allow_new_keys)?;
    let identity =
        NodeIdentity::load_or_generate(&data_dir.join(NODE_KEY_FILE)).map_err(Failure::usage)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        node.id = %identity.node_id(),
        network = %config.network(),
        "starting timed"
    );
    let stop = CancellationToken::new();
    let metrics_handle = if config.metrics.enabled {
        Some(crate::metrics::install().map_err(Failure::runtime)?)
    } else {
        None
    };
    apply_fd_budget(&mut config)?;
    if args.stop_on_stdin_eof {
        stop_on_stdin_eof(stop.clone());
    }
    crate::app::run(crate::app::RunOptions {
        config,
        config_path: args.config,
        identity,
        data_dir,
        resync: args.resync,
        metrics: metrics_handle,
        stop,
    })
    .await
    .map_err(|e| match e {
        crate::app::RunError::Usage(m) => Failure::usage(m),
        crate::app::RunError::Runtime(m) => Failure::runtime(m),
    })
}

/// Cancels `stop` when standard input closes. The read blocks, so it runs
/// on a detached thread of its own: a blocked read on the runtime's
/// blocking pool would keep the runtime, and the process, alive after the
/// node stopped for another reason (the `stop` RPC, a signal).
fn stop_on_stdin_eof(stop: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            tracing::info!("standard input closed: stopping");
            stop.cancel();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch standard input; stop the node with a signal or the `stop` RPC");
    }
}

/// Refuses to start on a data dir that holds a chain but lost a key:
/// creating a new one would silently change the node's identity (no
/// longer the masternode it was) or empty its wallet.
fn check_keys_present(data_dir: &Path, allow_new_keys: bool) -> Result<(), Failure> {
    let present = |name: &str| std::fs::symlink_metadata(data_dir.join(name)).is_ok();
    if allow_new_keys || !present(DB_FILE) {
        return Ok(());
    }
    for (file, what) in [
        (
            NODE_KEY_FILE,
            "the node identity: node id and masternode key",
        ),
        (
            WALLET_KEY_FILE,
            "the wallet key: its coins are spendable only with it",
        ),
    ] {
        if !present(file) {
            return Err(Failure::usage(format!(
                "data dir {} holds {DB_FILE} but no {file} ({what}): restore {file} from a backup, \
                 or pass --allow-new-keys to create a new one",
                data_dir.display()
            )));
        }
    }
    Ok(())
}

/// Raises the open-file limit and fits the connection limits in it (see
/// [`crate::fds`]); logs the numbers in one line.
fn apply_fd_budget(config: &mut Config) -> Result<(), Failure> {
    use crate::fds::{plan, raise_nofile_limit, FdWants};
    let limit = raise_nofile_limit();
    let wants = FdWants {
        max_inbound: config.p2p.max_inbound,
        pending_handshakes: config.p2p.max_pending_handshakes,
        max_outbound: config.p2p.max_outbound,
        rpc_connections: if config.rpc.enabled {
            config.rpc.max_connections
        } else {
            0
        },
        metrics_connections: if config.metrics.enabled {
            config.metrics.max_connections
        } else {
            0
        },
    };
    let budget = plan(limit.soft, wants).map_err(Failure::usage)?;
    let show = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    if budget.lowered_p2p(&wants) {
        tracing::warn!(
            fd.soft = %show(limit.soft),
            p2p.max_inbound = budget.max_inbound,
            p2p.wanted_inbound = wants.max_inbound,
            p2p.max_outbound = budget.max_outbound,
            p2p.wanted_outbound = wants.max_outbound,
            "the open-file limit is too low for the configured peers: P2P limits lowered (raise the limit, e.g. ulimit -n 4096)"
        );
    }
    tracing::info!(
        fd.soft_before = %show(limit.soft_before),
        fd.soft = %show(limit.soft),
        fd.hard = %show(limit.hard),
        fd.p2p_reserve = budget.p2p_reserve,
        p2p.max_inbound = budget.max_inbound,
        p2p.max_outbound = budget.max_outbound,
        rpc.max_connections = budget.rpc_connections,
        metrics.max_connections = budget.metrics_connections,
        "file descriptor budget"
    );
    let gauge = |kind: &'static str, value: f64| {
        metrics::gauge!("timed_fd_limit", "kind" => kind).set(value);
    };
    gauge("soft", limit.soft.map_or(f64::INFINITY, |n| n as f64));
    gauge("hard", limit.hard.map_or(f64::INFINITY, |n| n as f64));
    gauge("p2p_reserve", budget.p2p_reserve as f64);
    gauge("rpc", budget.rpc_connections as f64);
    gauge("metrics", budget.metrics_connections as f64);
    config.p2p.max_inbound = budget.max_inbound;
    config.p2p.max_outbound = budget.max_outbound;
    if config.rpc.enabled {
        config.rpc.max_connections = budget.rpc_connections;
    }
    if config.metrics.enabled {
        config.metrics.max_connections = budget.metrics_connections;
    }
    Ok(())
}

fn init(data_dir: &Path, network: Network) -> Result<(), Failure> {
    ensure_dir(data_dir)?;
    let config_path = data_dir.join("config.toml");
    if config_path.exists() {
        return Err(Failure::usage(format!(
            "{} already exists: remove it or choose another --data-dir",
            config_path.display()
        )));
    }
    let absolute = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    std::fs::write(&config_path, render_template(network, &absolute))
        .map_err(|e| Failure::usage(format!("{}: cannot write: {e}", config_path.display())))?;
    let identity =
        NodeIdentity::load_or_generate(&data_dir.join(NODE_KEY_FILE)).map_err(Failure::usage)?;
    let wallet = Wallet::load_or_create(data_dir).map_err(Failure::usage)?;
    println!("config:  {}", config_path.display());
    println!("key:     {}", data_dir.join(NODE_KEY_FILE).display());
    println!("node id: {}", identity.node_id());
    println!("wallet:  {}", wallet.address().to_text(network));
    println!("run it:  timed run --config {}", config_path.display());
    Ok(())
}

fn check(file: &Path) -> Result<(), Failure> {
    let config = Config::load(file).map_err(Failure::usage)?;
    let node = config.node_config();
    println!("{}: ok", file.display());
    println!("network:    {}", config.network());
    println!("data dir:   {}", config.data_dir().display());
    println!(
        "p2p:        {} ({} peers configured)",
        node.listen,
        node.peers.len()
    );
    println!(
        "rpc:        {}",
        if config.rpc.enabled {
            config.rpc_listen().to_string()
        } else {
            "disabled".into()
        }
    );
    println!(
        "metrics:    {}",
        if config.metrics.enabled {
            config.metrics_listen().to_string()
        } else {
            "disabled".into()
        }
    );
    let names: Vec<&str> = config.middleware.iter().map(|m| m.name()).collect();
    println!("middleware: {}", names.join(" -> "));
    for (i, layer) in config.middleware.iter().enumerate() {
        let params = toml::to_string(layer)
            .unwrap_or_default()
            .replace('\n', " ");
        println!("  [{i}] {params}");
    }
    for warning in config.warnings() {
        println!("warning:    {warning}");
    }
    Ok(())
}

fn keygen(out: Option<&Path>) -> Result<(), Failure> {
    let identity = NodeIdentity::generate();
    if let Some(path) = out {
        identity.save(path).map_err(Failure::usage)?;
        println!("key:     {}", path.display());
    }
    println!("node id: {}", identity.node_id());
    Ok(())
}

/// The credentials `timed rpc` sends and where they came from (for the
/// error message of a refused call; never the secret itself).
fn rpc_auth(args: &RpcArgs, data_dir: &Path) -> Result<(rpc::client::Auth, String), Failure> {
    use rpc::client::Auth;
    if let Some(token) = &args.token {
        return Ok((Auth::Bearer(token.clone()), "a bearer token".into()));
    }
    match (&args.rpc_user, &args.rpc_password) {
        (Some(user), Some(password)) => {
            return Ok((
                Auth::Basic {
                    user: user.clone(),
                    password: password.clone(),
                },
                format!("the password of RPC user {user:?}"),
            ))
        }
        (None, None) => {}
        _ => return Err(Failure::usage("--rpc-user and --rpc-password go together")),
    }
    let (path, explicit) = match &args.rpc_cookie_file {
        Some(path) => (path.clone(), true),
        None => (data_dir.join(rpc::auth::COOKIE_FILE), false),
    };
    match Auth::from_cookie_file(&path) {
        Ok(auth) => Ok((auth, format!("the cookie in {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok((
            Auth::None,
            format!(
                "no credentials (no cookie file {}; pass --data-dir, --config, \
                 --rpc-cookie-file, --rpc-user/--rpc-password or --token)",
                path.display()
            ),
        )),
        Err(e) => Err(Failure::usage(format!(
            "RPC cookie file {}: {e}",
            path.display()
        ))),
    }
}

async fn rpc_command(args: RpcArgs) -> Result<(), Failure> {
    let config = resolve_config(args.config.as_deref(), args.network, args.data_dir.clone())?;
    let url = match &args.rpc_url {
        Some(url) => url.clone(),
        None => {
            // A node listening on every address is reached on loopback.
            let mut addr = config.rpc_listen();
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    std::net::IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}/")
        }
    };
    let (auth, sent) = rpc_auth(&args, &config.data_dir())?;
    let params: Vec<Value> = args
        .params
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|_| Value::String(p.clone())))
        .collect();
    match rpc::client::call(&url, &auth, &args.method, Value::Array(params)).await {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string())
            );
            Ok(())
        }
        Err(rpc::client::CallError::Rpc(e)) if e.code == rpc::codes::UNAUTHORIZED => {
            Err(Failure::runtime(format!("{e}; sent {sent}")))
        }
        Err(e) => Err(Failure::runtime(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        Cli::try_parse_from(["timed"]).unwrap();
        Cli::try_parse_from([
            "timed",
            "run",
            "--network",
            "testnet",
            "--peer",
            "127.0.0.2:24100",
        ])
        .unwrap();
        Cli::try_parse_from(["timed", "config", "check", "x.toml"]).unwrap();
        Cli::try_parse_from(["timed", "rpc", "setban", "10.0.0.0/8", "add", "60"]).unwrap();
        Cli::try_parse_from(["timed", "devnet", "--nodes", "3"]).unwrap();
        Cli::try_parse_from(["timed", "devnet", "--topology", "mesh"]).unwrap();
        assert!(Cli::try_parse_from(["timed", "devnet", "--topology", "ring"]).is_err());
        assert!(Cli::try_parse_from(["timed", "run", "--network", "moon"]).is_err());
        assert!(Cli::try_parse_from(["timed", "devnet", "--nodes", "0"]).is_err());
    }

    fn rpc_args(extra: &[&str]) -> RpcArgs {
        let mut argv = vec!["timed", "rpc"];
        argv.extend_from_slice(extra);
        argv.push("uptime");
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Rpc(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rpc_credentials_come_in_order_of_precedence() {
        use rpc::client::Auth;
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(rpc::auth::COOKIE_FILE);
        let basic = |user: &str, password: &str| Auth::Basic {
            user: user.into(),
            password: password.into(),
        };
        // Nothing: no credentials, and the message says where it looked.
        let (auth, sent) = rpc_auth(&rpc_args(&[]), dir.path()).unwrap();
        assert_eq!(auth, Auth::None);
        assert!(sent.contains(&cookie.display().to_string()), "{sent}");
        // The cookie file in the data dir, once it exists.
        std::fs::write(&cookie, "__cookie__:feed").unwrap();
        let (auth, sent) = rpc_auth(&rpc_args(&[]), dir.path()).unwrap();
        assert_eq!(auth, basic("__cookie__", "feed"));
        assert!(!sent.contains("feed"), "{sent}");
        // User and password before the cookie; a token before both.
        let user = ["--rpc-user", "alice", "--rpc-password", "secret-secret-16"];
        let (auth, sent) = rpc_auth(&rpc_args(&user), dir.path()).unwrap();
        assert_eq!(auth, basic("alice", "secret-secret-16"));
        assert!(!sent.contains("secret"), "{sent}");
        let mut both = user.to_vec();
        both.extend(["--token", "token-token-token"]);
        let (auth, _) = rpc_auth(&rpc_args(&both), dir.path()).unwrap();
        assert_eq!(auth, Auth::Bearer("token-token-token".into()));
        // One of user and password alone is a usage error.
        let e = rpc_auth(&rpc_args(&["--rpc-user", "alice"]), dir.path()).unwrap_err();
        assert_eq!(e.code, 2);
        // An explicit cookie file must exist.
        let missing = dir.path().join("missing");
        let missing = missing.to_str().unwrap();
        let e = rpc_auth(&rpc_args(&["--rpc-cookie-file", missing]), dir.path()).unwrap_err();
        assert!(e.message.contains(missing), "{}", e.message);
        let other = dir.path().join("other");
        std::fs::write(&other, "__cookie__:beef").unwrap();
        let (auth, _) = rpc_auth(
            &rpc_args(&["--rpc-cookie-file", other.to_str().unwrap()]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(auth, basic("__cookie__", "beef"));
    }
}
