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

use crate::chain::genesis::Genesis;
use crate::chain::state::{Chain, ChainError, ChainOptions};
use crate::config::{render_template, Config, LogFormat};
use crate::constants::NODE_KEY_FILE;
use crate::crypto::NodeIdentity;
use crate::network::Network;
use crate::node::{Node, PeerTarget};
use crate::rpc::{self, RpcContext};
use crate::storage::{Store, StoreError, DB_FILE};
use crate::wallet::Wallet;

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
    /// Write a commented config.toml and a node key into a data dir.
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
    Rpc {
        /// The node's RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:24201/")]
        rpc_url: String,
        /// Bearer token, if the node requires one (or TIMED_RPC_TOKEN).
        #[arg(long, env = "TIMED_RPC_TOKEN")]
        token: Option<String>,
        /// The method, e.g. getpeerinfo.
        method: String,
        /// Parameters: each is parsed as JSON, or taken as a string.
        params: Vec<String>,
    },
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
    /// A peer to keep connected, HOST:PORT or NODE_ID@HOST:PORT (repeatable;
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
    /// Start over: move the chain database aside (as
    /// chain.redb.damaged-<unix time>, with its chain.tip marker), start
    /// from genesis and sync the chain again from peers. Bans stored in the
    /// old file are not restored. For a database reported damaged or
    /// incomplete at start-up.
    #[arg(long)]
    resync: bool,
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
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(args))),
        Command::Init { data_dir, network } => init(&data_dir, network),
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Keygen { out } => keygen(out.as_deref()),
        Command::Rpc {
            rpc_url,
            token,
            method,
            params,
        } => runtime()
            .and_then(|rt| rt.block_on(rpc_command(&rpc_url, token.as_deref(), &method, &params))),
        Command::Devnet {
            nodes,
            dir,
            first_ip,
            block_interval,
        } => runtime().and_then(|rt| rt.block_on(devnet(nodes, &dir, first_ip, block_interval))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))
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

async fn run(args: RunArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(Failure::usage)?,
        None => Config::for_network(args.network.unwrap_or(Network::Devnet)),
    };
    if let Some(network) = args.network {
        config.node.network = network;
    }
    if let Some(dir) = args.data_dir {
        config.node.data_dir = Some(dir);
    }
    if let Some(listen) = args.listen {
        config.p2p.listen = Some(listen);
    }
    config.p2p.peers.extend(args.peers);
    if let Some(secs) = args.ping_interval {
        if secs < 2 {
            return Err(Failure::usage(
                "--ping-interval: must be at least 2 (peers allow 6 pings per 10 s)",
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
    let data_dir = config.data_dir();
    ensure_dir(&data_dir)?;
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
    crate::metrics::register_defaults(config.network().name());
    let wallet = Wallet::load_or_create(&data_dir).map_err(Failure::usage)?;
    let genesis = config
        .genesis(identity.public_key().as_bytes(), Some(wallet.address()))
        .map_err(Failure::usage)?;
    if args.resync {
        move_database_aside(&data_dir)?;
    }
    let chain = Chain::open(
        &data_dir,
        genesis,
        &identity,
        ChainOptions {
            mempool_max_txs: config.chain.mempool_max_txs,
            mempool_max_bytes: config.chain.mempool_max_bytes,
            masternode: config.chain.masternode,
        },
    )
    .map_err(|e| Failure::runtime(chain_open_failure(&data_dir, &e)))?;
    let store = chain.store().clone();
    let tip = chain.tip();
    tracing::info!(
        genesis = %hex::encode(chain.genesis_hash()),
        height = tip.height,
        tip = %hex::encode(tip.hash),
        masternode = chain.is_masternode(),
        masternodes = chain.genesis().masternodes().len(),
        block_interval_s = chain.genesis().block_interval_secs,
        wallet = %wallet.address().to_text(config.network()),
        "chain opened"
    );
    let mut node_config = config.node_config();
    node_config.chain = Some(chain);
    let node = Node::start(&identity, node_config)
        .await
        .map_err(Failure::runtime)?;
    if let Some(handle) = metrics_handle {
        crate::metrics::serve(config.metrics_listen(), handle, stop.clone())
            .await
            .map_err(Failure::runtime)?;
        tokio::spawn(crate::metrics::refresh(
            node.clone(),
            Duration::from_secs(2),
            stop.clone(),
        ));
    }
    if args.stop_on_stdin_eof {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
            tracing::info!("standard input closed: stopping");
            stop.cancel();
        });
    }
    let rpc_ctx = RpcContext::new(
        node.clone(),
        config.rpc.clone(),
        args.config.clone(),
        stop.clone(),
    )
    .with_wallet(wallet);
    if config.rpc.enabled {
        rpc::serve(config.rpc_listen(), rpc_ctx.clone(), stop.clone())
            .await
            .map_err(Failure::runtime)?;
    }
    let failure = wait_for_stop(&stop, &rpc_ctx, &store).await;
    match &failure {
        None => tracing::info!("shutting down"),
        Some(error) => tracing::error!(%error, "the database failed: stopping the node"),
    }
    node.shutdown();
    stop.cancel();
    // Let connections send their Disconnect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match failure {
        None => {
            // Buffered ban changes and the tip marker, for a clean stop.
            tokio::task::spawn_blocking(move || store.close(Duration::from_secs(5)))
                .await
                .map_err(|e| Failure::runtime(format!("closing the database: {e}")))?;
            Ok(())
        }
        Some(error) => Err(Failure::runtime(format!(
            "the database {} failed while running ({error}); the node stopped rather than serve errors. \
             Check the disk (free space, I/O errors in the system log) and start again; \
             if the file is damaged, restore it from a backup or start over with `timed run --resync`",
            store.path().display()
        ))),
    }
}

/// The one-line message for a chain that cannot be opened.
fn chain_open_failure(data_dir: &Path, error: &ChainError) -> String {
    match error {
        // These name the file and say what to do.
        ChainError::Store(e @ (StoreError::Damaged { .. } | StoreError::LostData { .. })) => {
            e.to_string()
        }
        ChainError::Store(e @ StoreError::BadBlock { .. }) => format!(
            "chain in {}: {e}; the node cannot start without it: restore {DB_FILE} from a backup, \
             or start over with `timed run --resync`",
            data_dir.display()
        ),
        other => format!("chain in {}: {other}", data_dir.display()),
    }
}

/// `--resync`: moves the chain database and its tip marker aside, so that
/// the chain starts again from genesis.
fn move_database_aside(data_dir: &Path) -> Result<(), Failure> {
    let db = data_dir.join(DB_FILE);
    let stamp = crate::protocol::version::unix_now().as_secs();
    for file in [db.clone(), crate::storage::marker_path(&db)] {
        if !file.exists() {
            continue;
        }
        let mut aside = file.clone().into_os_string();
        aside.push(format!(".damaged-{stamp}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(&file, &aside).map_err(|e| {
            Failure::runtime(format!(
                "--resync: cannot move {} aside: {e}",
                file.display()
            ))
        })?;
        tracing::warn!(
            from = %file.display(),
            to = %aside.display(),
            "--resync: moved aside"
        );
    }
    tracing::warn!(
        data_dir = %data_dir.display(),
        "--resync: STARTING OVER FROM GENESIS; the chain will be synced again from peers, \
         stored bans are not restored; the old files are kept under *.damaged-{stamp}"
    );
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM or the `stop` RPC, or for the database to fail
/// (polled every second; returns the failure); SIGHUP reloads the config's
/// middleware list.
async fn wait_for_stop(
    stop: &CancellationToken,
    rpc_ctx: &RpcContext,
    store: &Store,
) -> Option<String> {
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::warn!("cannot install signal handlers; stop with the `stop` RPC");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = poll.tick() => if let Some(failure) = store.failure() {
                        return Some(failure);
                    },
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::signal::ctrl_c() => return None,
                _ = term.recv() => return None,
                _ = poll.tick() => if let Some(failure) = store.failure() {
                    return Some(failure);
                },
                _ = hup.recv() => match rpc_ctx.reload() {
                    Ok(stack) => tracing::info!(middleware = %stack, "SIGHUP: config reloaded"),
                    Err(error) => tracing::warn!(%error, "SIGHUP: config reload failed; keeping the old stack"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = rpc_ctx;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::signal::ctrl_c() => return None,
                _ = poll.tick() => if let Some(failure) = store.failure() {
                    return Some(failure);
                },
            }
        }
    }
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
    println!("config:  {}", config_path.display());
    println!("key:     {}", data_dir.join(NODE_KEY_FILE).display());
    println!("node id: {}", identity.node_id());
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

async fn rpc_command(
    url: &str,
    token: Option<&str>,
    method: &str,
    params: &[String],
) -> Result<(), Failure> {
    let params: Vec<Value> = params
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|_| Value::String(p.clone())))
        .collect();
    match rpc::client::call(url, token, method, Value::Array(params)).await {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string())
            );
            Ok(())
        }
        Err(e) => Err(Failure::runtime(e)),
    }
}

/// The address of devnet node `i` (1-based) from `first`.
fn devnet_ip(first: Ipv4Addr, i: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first).wrapping_add(u32::from(i) - 1))
}

async fn devnet(
    nodes: u8,
    dir: &Path,
    first_ip: Ipv4Addr,
    block_interval: u64,
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
        let peers: Vec<String> = members
            .iter()
            .filter(|(j, ..)| j < i)
            .map(|(_, _, id, peer_ip)| {
                format!("\"{id}@{}\"", SocketAddr::from((*peer_ip, p2p_port)))
            })
            .collect();
        let config = format!(
            "# Written by `timed devnet`.\n[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{p2p}\"\npeers = [{}]\n\n[rpc]\nlisten = \"{rpc}\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n{chain_section}",
            absolute.display(),
            peers.join(", ")
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
        _ = shutdown_signal() => None,
        (i, status) = exited => Some((i, status)),
    };
    for child in &mut children {
        let _ = child.start_kill();
    }
    for child in &mut children {
        let _ = child.wait().await;
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

/// The `[chain]` section of every devnet node's config.
fn devnet_chain_section(genesis: &Genesis) -> String {
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
        assert!(Cli::try_parse_from(["timed", "run", "--network", "moon"]).is_err());
        assert!(Cli::try_parse_from(["timed", "devnet", "--nodes", "0"]).is_err());
    }
}
