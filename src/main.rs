//! The `timed` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use timed::config::Config;
use timed::crypto::NodeIdentity;
use timed::network::Network;
use timed::node::{Node, NodeConfig, PeerTarget};
use timed::peer::{ConnectionConfig, HandshakeConfig};
use timed::protocol::VersionParams;

/// timed: a node for the TIME Coin network.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node (the default when no subcommand is given).
    Run(RunArgs),
    /// Print a new node key and its node id (writes nothing).
    Keygen,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Network to join.
    #[arg(long, default_value = "devnet")]
    network: Network,
    /// Config file (TOML); without it the embedded defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default: ~/.timecoin/<network>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on for peers (default: 127.0.0.1:<network P2P port>).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Peer to connect to, HOST:PORT or NODE_ID@HOST:PORT (repeatable).
    #[arg(long = "peer")]
    peers: Vec<PeerTarget>,
    /// Seconds between pings (at least 2: peers allow 6 pings per 10 s).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..))]
    ping_interval: u64,
}

fn default_data_dir(network: Network) -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".timecoin").join(network.name())
}

async fn run(args: RunArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| default_data_dir(args.network));
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    let identity = NodeIdentity::load_or_generate(&data_dir.join(timed::constants::NODE_KEY_FILE))
        .map_err(|e| e.to_string())?;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], args.network.default_p2p_port())));
    let mut version = VersionParams::new(args.network);
    version.listen_addr = Some(listen.into());
    let mut config = NodeConfig::new(listen, HandshakeConfig::new(version));
    config.middleware = file.middleware;
    config.peers = args.peers;
    config.connection = ConnectionConfig {
        ping_interval: Duration::from_secs(args.ping_interval.max(1)),
        ..ConnectionConfig::default()
    };
    tracing::info!(data_dir = %data_dir.display(), node.id = %identity.node_id(), "starting timed");
    let node = Node::start(&identity, config)
        .await
        .map_err(|e| e.to_string())?;
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    tracing::info!("shutting down");
    node.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // No subcommand: `run` with every default (an embedded devnet node).
    let command = match cli.command {
        Some(command) => command,
        None => match Cli::parse_from(["timed", "run"]).command {
            Some(command) => command,
            None => Command::Keygen,
        },
    };
    let result = match command {
        Command::Keygen => {
            let id = NodeIdentity::generate();
            tracing::info!(node.id = %id.node_id(), "generated a node key (not saved)");
            Ok(())
        }
        Command::Run(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(run(args)),
            Err(e) => Err(format!("cannot start the async runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
