//! The TOML config file: `[node]`, `[p2p]`, `[rpc]`, `[metrics]`,
//! `[logging]`, `[chain]` and the ordered `[[middleware]]` list.
//!
//! Every section and key is optional; defaults depend on the network (TIME
//! Coin's ports: mainnet P2P 24000 / RPC 24001, testnet 24100 / 24101; timed
//! adds devnet 24200 / 24201 and metrics on P2P + 2). Unknown keys are
//! errors, and every error names the file and the key or entry.
//! `docs/CONFIG.md` documents each key; [`TEMPLATE`] is the commented file
//! `timed init` writes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::layers::stack::{parse_entries, MiddlewareConfig, StackError};
use crate::network::Network;
use crate::node::{ConnectionLimits, NodeConfig, PeerTarget};
use crate::peer::{ConnectionConfig, HandshakeConfig};
use crate::protocol::VersionParams;
use crate::transport::{CryptoBackend, RekeyPolicy};

/// Largest config file read, in bytes.
pub const MAX_CONFIG_FILE_LEN: u64 = 1024 * 1024;

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a config file.
    #[error("config file {path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The file is not valid TOML or has an unknown or badly typed key.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, naming the key and line.
        message: String,
    },
    /// A `[[middleware]]` entry is wrong.
    #[error("config file {path}: {source}")]
    Middleware {
        /// The file.
        path: PathBuf,
        /// The entry's error.
        #[source]
        source: StackError,
    },
    /// A value is out of range.
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `p2p.max_inbound`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// `mainnet`, `testnet` or `devnet`.
    pub network: Network,
    /// Data directory (default `~/.timecoin/<network>`).
    pub data_dir: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            network: Network::Devnet,
            data_dir: None,
        }
    }
}

/// `[p2p]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// Listen address (default: 0.0.0.0 on mainnet and testnet, 127.0.0.1 on
    /// devnet, at the network's P2P port).
    pub listen: Option<SocketAddr>,
    /// The address announced to peers (default: the listen address).
    pub external_addr: Option<SocketAddr>,
    /// Peers to keep connected, `HOST:PORT` or `NODE_ID@HOST:PORT`.
    #[serde(deserialize_with = "peer_targets", serialize_with = "peer_targets_out")]
    pub peers: Vec<PeerTarget>,
    /// Most established (authenticated) inbound connections.
    pub max_inbound: usize,
    /// Most inbound handshakes in progress; a new one evicts the oldest.
    pub max_pending_handshakes: usize,
    /// Most outbound connections.
    pub max_outbound: usize,
    /// Most inbound connections per IP (IPv6: per /64).
    pub max_per_ip: usize,
    /// Accepted connections per IP per minute.
    pub accepts_per_ip_per_minute: u32,
    /// Deadline of Noise plus version exchange, seconds.
    pub handshake_timeout_secs: u64,
    /// Seconds between keepalive pings (at least 2).
    pub ping_interval_secs: u64,
    /// Seconds a keepalive pong may take.
    pub pong_timeout_secs: u64,
    /// Seconds a request may take.
    pub request_timeout_secs: u64,
    /// Largest frame accepted after the version exchange, bytes.
    pub max_frame_bytes: usize,
    /// Rotate the sending key after this many messages.
    pub rekey_after_messages: u64,
    /// Rotate the sending key after this many bytes.
    pub rekey_after_bytes: u64,
    /// Byte budget of each peer's send queue.
    pub send_queue_bytes: usize,
    /// snow backend: `ring` or `rustcrypto`.
    pub crypto_backend: CryptoBackend,
}

fn peer_targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerTarget>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn peer_targets_out<S: serde::Serializer>(peers: &[PeerTarget], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(peers.iter().map(ToString::to_string))
}

impl Default for P2pSection {
    fn default() -> Self {
        let limits = ConnectionLimits::default();
        let connection = ConnectionConfig::default();
        let rekey = RekeyPolicy::default();
        P2pSection {
            listen: None,
            external_addr: None,
            peers: Vec::new(),
            max_inbound: limits.max_inbound,
            max_pending_handshakes: limits.max_pending_handshakes,
            max_outbound: limits.max_outbound,
            max_per_ip: limits.max_per_ip,
            accepts_per_ip_per_minute: limits.accepts_per_ip_per_minute,
            handshake_timeout_secs: crate::constants::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
            ping_interval_secs: connection.ping_interval.as_secs(),
            pong_timeout_secs: connection.pong_timeout.as_secs(),
            request_timeout_secs: connection.request_timeout.as_secs(),
            max_frame_bytes: crate::constants::DEFAULT_MAX_FRAME_LEN,
            rekey_after_messages: rekey.after_messages,
            rekey_after_bytes: rekey.after_bytes,
            send_queue_bytes: crate::peer::queue::DEFAULT_QUEUE_BYTES,
            crypto_backend: CryptoBackend::default(),
        }
    }
}

/// `[rpc]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Serve JSON-RPC.
    pub enabled: bool,
    /// Listen address (default 127.0.0.1 at the network's RPC port).
    pub listen: Option<SocketAddr>,
    /// If set, requests must carry `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait.
    pub max_concurrent: usize,
}

impl Default for RpcSection {
    fn default() -> Self {
        RpcSection {
            enabled: true,
            listen: None,
            bearer_token: None,
            max_body_bytes: 1024 * 1024,
            max_concurrent: 64,
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Listen address (default 127.0.0.1 at the P2P port + 2).
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: None,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// `RUST_LOG`-style filter (the `RUST_LOG` variable overrides it).
    pub filter: String,
    /// `human` or `json`.
    pub format: LogFormat,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            filter: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// `[chain]`: the genesis parameters and the node's part in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainSection {
    /// Genesis hash (64 hex digits). When set, the genesis described here
    /// must hash to it (a guard against a mistyped masternode list).
    pub genesis_hash: Option<String>,
    /// Seconds per block slot (default 600; 2 on devnet).
    pub block_interval_secs: Option<u64>,
    /// Genesis timestamp, seconds since the Unix epoch (default: the
    /// devnet's 2026-01-01 on devnet, 0 elsewhere).
    pub genesis_timestamp: Option<u64>,
    /// Vote and produce blocks when this node's key is a masternode.
    pub masternode: bool,
    /// Most transactions in the mempool.
    pub mempool_max_txs: usize,
    /// Most bytes in the mempool.
    pub mempool_max_bytes: usize,
    /// The genesis masternodes. Empty on devnet: this node alone, its
    /// wallet funded (a one-node chain).
    pub masternodes: Vec<MasternodeEntry>,
    /// The genesis allocations.
    pub allocations: Vec<AllocationEntry>,
}

impl Default for ChainSection {
    fn default() -> Self {
        ChainSection {
            genesis_hash: None,
            block_interval_secs: None,
            genesis_timestamp: None,
            masternode: true,
            mempool_max_txs: crate::chain::mempool::DEFAULT_MAX_TXS,
            mempool_max_bytes: crate::chain::mempool::DEFAULT_MAX_BYTES,
            masternodes: Vec::new(),
            allocations: Vec::new(),
        }
    }
}

/// `[[chain.masternodes]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasternodeEntry {
    /// The masternode's ed25519 node key, 64 hex digits.
    pub public_key: String,
    /// `free`, `bronze`, `silver` or `gold`.
    pub tier: crate::chain::votes::Tier,
}

/// `[[chain.allocations]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationEntry {
    /// The address (`TIME1...` on mainnet, `TIME0...` elsewhere).
    pub address: String,
    /// Amount in TIME, as decimal text (`"1000"`, `"0.5"`).
    pub amount: String,
    /// How many outputs of `amount` (default 1), so a wallet can make
    /// several payments before the first is in a block.
    #[serde(default = "one")]
    pub outputs: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    p2p: P2pSection,
    #[serde(default)]
    rpc: RpcSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    logging: LoggingSection,
    #[serde(default)]
    chain: ChainSection,
    middleware: Option<Vec<toml::Value>>,
}

/// A loaded, validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[node]`.
    pub node: NodeSection,
    /// `[p2p]`.
    pub p2p: P2pSection,
    /// `[rpc]`.
    pub rpc: RpcSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[logging]`.
    pub logging: LoggingSection,
    /// `[chain]`.
    pub chain: ChainSection,
    /// The middleware stack, outermost first (the default stack when the
    /// file has no `[[middleware]]` entry).
    pub middleware: Vec<MiddlewareConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeSection::default(),
            p2p: P2pSection::default(),
            rpc: RpcSection::default(),
            metrics: MetricsSection::default(),
            logging: LoggingSection::default(),
            chain: ChainSection::default(),
            middleware: MiddlewareConfig::default_stack(),
        }
    }
}

impl Config {
    /// The defaults for `network`.
    pub fn for_network(network: Network) -> Self {
        let mut c = Config::default();
        c.node.network = network;
        c
    }

    /// Parses config text; `path` is only used in error messages.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad key or entry.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        let middleware = match raw.middleware {
            Some(entries) => parse_entries(&entries).map_err(|source| ConfigError::Middleware {
                path: path.to_owned(),
                source,
            })?,
            None => MiddlewareConfig::default_stack(),
        };
        let config = Config {
            node: raw.node,
            p2p: raw.p2p,
            rpc: raw.rpc,
            metrics: raw.metrics,
            logging: raw.logging,
            chain: raw.chain,
            middleware,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the bad key or entry.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_FILE_LEN {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                max: MAX_CONFIG_FILE_LEN,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        let p = &self.p2p;
        if p.max_outbound == 0 && !p.peers.is_empty() {
            return Err(invalid(
                "p2p.max_outbound",
                "must be at least 1 when peers are configured",
            ));
        }
        if p.max_per_ip == 0 {
            return Err(invalid("p2p.max_per_ip", "must be at least 1"));
        }
        if p.max_pending_handshakes == 0 {
            return Err(invalid("p2p.max_pending_handshakes", "must be at least 1"));
        }
        if p.handshake_timeout_secs == 0 {
            return Err(invalid("p2p.handshake_timeout_secs", "must be at least 1"));
        }
        if p.ping_interval_secs < 2 {
            return Err(invalid(
                "p2p.ping_interval_secs",
                "must be at least 2 (peers allow 6 pings per 10 s)",
            ));
        }
        if p.pong_timeout_secs == 0 || p.request_timeout_secs == 0 {
            return Err(invalid(
                "p2p.pong_timeout_secs",
                "timeouts must be at least 1",
            ));
        }
        if !(crate::constants::PRE_VERSION_MAX_FRAME_LEN..=crate::constants::DEFAULT_MAX_FRAME_LEN)
            .contains(&p.max_frame_bytes)
        {
            return Err(invalid(
                "p2p.max_frame_bytes",
                "must be between 4096 and 4194304 (the protocol's message limit)",
            ));
        }
        if p.rekey_after_messages == 0 || p.rekey_after_bytes == 0 {
            return Err(invalid(
                "p2p.rekey_after_messages",
                "rekey thresholds must be at least 1",
            ));
        }
        if p.send_queue_bytes == 0 {
            return Err(invalid("p2p.send_queue_bytes", "must be at least 1"));
        }
        if self.rpc.max_body_bytes == 0 || self.rpc.max_concurrent == 0 {
            return Err(invalid("rpc.max_body_bytes", "limits must be at least 1"));
        }
        if let Some(token) = &self.rpc.bearer_token {
            if token.len() < 16 {
                return Err(invalid(
                    "rpc.bearer_token",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.genesis_hash().is_none() {
            return Err(invalid("chain.genesis_hash", "must be 64 hex digits"));
        }
        let c = &self.chain;
        if let Some(secs) = c.block_interval_secs {
            if secs == 0 || secs > crate::chain::genesis::MAX_BLOCK_INTERVAL_SECS {
                return Err(invalid(
                    "chain.block_interval_secs",
                    "must be between 1 and 86400",
                ));
            }
        }
        if c.mempool_max_txs == 0 || c.mempool_max_bytes < crate::chain::transaction::MAX_TX_BYTES {
            return Err(invalid(
                "chain.mempool_max_txs",
                "the mempool must hold at least one transaction of the largest size (100000 bytes)",
            ));
        }
        for (i, m) in c.masternodes.iter().enumerate() {
            if parse_key(&m.public_key).is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.masternodes",
                    message: format!(
                        "entry {i}: public_key = {:?} is not 64 hex digits of an ed25519 key",
                        m.public_key
                    ),
                });
            }
        }
        for (i, a) in c.allocations.iter().enumerate() {
            if let Err(e) = crate::chain::Address::parse(&a.address, self.network()) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.allocations",
                    message: format!("entry {i}: address = {:?}: {e}", a.address),
                });
            }
            if let Err(e) = crate::wallet::parse_amount(&a.amount) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.allocations",
                    message: format!("entry {i}: amount = {:?}: {e}", a.amount),
                });
            }
        }
        if !c.masternodes.is_empty() {
            // Without the node's own key the genesis is complete: check it now.
            self.genesis(&[0u8; 32], None)
                .map_err(|message| ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain",
                    message,
                })?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.filter).is_err() {
            return Err(invalid(
                "logging.filter",
                "is not a valid RUST_LOG-style filter",
            ));
        }
        Ok(())
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.node.network
    }

    /// The genesis hash (`None` only if `chain.genesis_hash` is malformed,
    /// which [`Config::parse`] refuses).
    pub fn genesis_hash(&self) -> Option<[u8; 32]> {
        match &self.chain.genesis_hash {
            None => Some(self.network().default_genesis_hash()),
            Some(text) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out).ok().map(|_| out)
            }
        }
    }

    /// The block interval: `[chain] block_interval_secs`, else 2 s on
    /// devnet and 600 s elsewhere.
    pub fn block_interval_secs(&self) -> u64 {
        self.chain
            .block_interval_secs
            .unwrap_or(match self.network() {
                Network::Devnet => 2,
                _ => 600,
            })
    }

    /// The genesis this config describes. With no masternodes listed, a
    /// devnet node is the only masternode of its own chain and `wallet` (if
    /// given) is funded; on other networks the chain then has no
    /// masternodes (the node follows and relays but nothing finalizes).
    ///
    /// # Errors
    /// A message naming the problem: a bad entry, or a genesis that does
    /// not hash to `chain.genesis_hash`.
    pub fn genesis(
        &self,
        own_key: &[u8; 32],
        wallet: Option<crate::chain::Address>,
    ) -> Result<crate::chain::genesis::Genesis, String> {
        use crate::chain::genesis::{Genesis, GenesisMasternode, DEVNET_GENESIS_TIMESTAMP};
        let c = &self.chain;
        let network = self.network();
        let interval = self.block_interval_secs();
        let genesis = if c.masternodes.is_empty() && network == Network::Devnet {
            let wallets: Vec<_> = wallet.into_iter().collect();
            let mut g =
                Genesis::devnet(interval, &[*own_key], &wallets).map_err(|e| e.to_string())?;
            if let Some(ts) = c.genesis_timestamp {
                g.timestamp = ts;
            }
            g
        } else {
            let mut masternodes = Vec::with_capacity(c.masternodes.len());
            for (i, m) in c.masternodes.iter().enumerate() {
                let key = parse_key(&m.public_key)
                    .ok_or_else(|| format!("chain.masternodes entry {i}: bad public_key"))?;
                masternodes.push(GenesisMasternode {
                    public_key: key,
                    tier: m.tier,
                });
            }
            let mut allocations = Vec::with_capacity(c.allocations.len());
            for (i, a) in c.allocations.iter().enumerate() {
                let address = crate::chain::Address::parse(&a.address, network)
                    .map_err(|e| format!("chain.allocations entry {i}: {e}"))?;
                let value = crate::wallet::parse_amount(&a.amount)
                    .map_err(|e| format!("chain.allocations entry {i}: {e}"))?;
                if a.outputs == 0 || a.outputs > crate::chain::transaction::MAX_OUTPUTS {
                    return Err(format!(
                        "chain.allocations entry {i}: outputs must be between 1 and 1000"
                    ));
                }
                allocations.extend(std::iter::repeat_n(
                    crate::chain::TxOut { value, address },
                    a.outputs,
                ));
            }
            let timestamp = c.genesis_timestamp.unwrap_or(match network {
                Network::Devnet => DEVNET_GENESIS_TIMESTAMP,
                _ => 0,
            });
            Genesis::new(network, timestamp, interval, masternodes, allocations)
                .map_err(|e| e.to_string())?
        };
        if let Some(expected) = &c.genesis_hash {
            let hash = hex::encode(genesis.hash());
            if !hash.eq_ignore_ascii_case(expected) && !c.masternodes.is_empty() {
                return Err(format!(
                    "chain.genesis_hash = {expected:?} but the genesis described in [chain] hashes to {hash}"
                ));
            }
        }
        Ok(genesis)
    }

    /// The data directory: `[node] data_dir`, or `~/.timecoin/<network>`.
    pub fn data_dir(&self) -> PathBuf {
        self.node.data_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".timecoin").join(self.network().name())
        })
    }

    /// The P2P listen address.
    pub fn p2p_listen(&self) -> SocketAddr {
        self.p2p.listen.unwrap_or_else(|| {
            let ip = match self.network() {
                Network::Devnet => IpAddr::V4(Ipv4Addr::LOCALHOST),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            SocketAddr::new(ip, self.network().default_p2p_port())
        })
    }

    /// The RPC listen address (loopback by default).
    pub fn rpc_listen(&self) -> SocketAddr {
        self.rpc.listen.unwrap_or_else(|| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                self.network().default_rpc_port(),
            )
        })
    }

    /// The metrics listen address (loopback by default).
    pub fn metrics_listen(&self) -> SocketAddr {
        self.metrics.listen.unwrap_or_else(|| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                self.network().default_p2p_port() + 2,
            )
        })
    }

    /// The node configuration this file describes.
    pub fn node_config(&self) -> NodeConfig {
        let p = &self.p2p;
        let listen = self.p2p_listen();
        let mut version = VersionParams::new(self.network());
        if let Some(genesis) = self.genesis_hash() {
            version.genesis_hash = genesis;
        }
        let announced = p.external_addr.unwrap_or(listen);
        if !announced.ip().is_unspecified() {
            version.listen_addr = Some(announced.into());
        }
        let mut handshake = HandshakeConfig::new(version);
        handshake.timeout = Duration::from_secs(p.handshake_timeout_secs);
        handshake.max_frame_len = p.max_frame_bytes;
        handshake.rekey = RekeyPolicy {
            after_messages: p.rekey_after_messages,
            after_bytes: p.rekey_after_bytes,
        };
        let mut node = NodeConfig::new(listen, handshake);
        node.peers = p.peers.clone();
        node.connection = ConnectionConfig {
            ping_interval: Duration::from_secs(p.ping_interval_secs),
            pong_timeout: Duration::from_secs(p.pong_timeout_secs),
            request_timeout: Duration::from_secs(p.request_timeout_secs),
        };
        node.backend = p.crypto_backend;
        node.limits = ConnectionLimits {
            max_inbound: p.max_inbound,
            max_pending_handshakes: p.max_pending_handshakes,
            max_outbound: p.max_outbound,
            max_per_ip: p.max_per_ip,
            accepts_per_ip_per_minute: p.accepts_per_ip_per_minute,
        };
        node.middleware = self.middleware.clone();
        node.send_queue_bytes = p.send_queue_bytes;
        node
    }
}

/// One line for a TOML error: where it is, which key, and what is wrong.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, value)) if !key.trim().starts_with('[') => {
            let value: String = value.trim().chars().take(60).collect();
            format!(
                "line {line_no}, column {column}, `{} = {value}`: {message}",
                key.trim()
            )
        }
        _ => format!("line {line_no}, column {column}: {message}"),
    }
}

/// The commented config `timed init` writes; `{network}`, `{listen}`,
/// `{rpc}`, `{metrics}` and `{data_dir}` are filled in.
pub const TEMPLATE: &str = r#"# timed configuration. Every key is optional; docs/CONFIG.md explains each.
# Unknown keys are errors.

[node]
network = "{network}"              # mainnet | testnet | devnet
data_dir = "{data_dir}"

[p2p]
listen = "{listen}"
# external_addr = "203.0.113.7:24000"  # address announced to peers
peers = []                          # "HOST:PORT" or "NODE_ID@HOST:PORT"
max_inbound = 64
max_pending_handshakes = 32         # a new handshake evicts the oldest beyond this
max_outbound = 16
max_per_ip = 4
accepts_per_ip_per_minute = 30
handshake_timeout_secs = 5
ping_interval_secs = 30
pong_timeout_secs = 20
request_timeout_secs = 20
max_frame_bytes = 4194304
rekey_after_messages = 4096
rekey_after_bytes = 67108864
send_queue_bytes = 16777216
crypto_backend = "ring"             # ring | rustcrypto

[rpc]
enabled = true
listen = "{rpc}"                    # loopback: the RPC has no TLS
# bearer_token = "a long random secret"  # require Authorization: Bearer <token>
max_body_bytes = 1048576
max_concurrent = 64

[metrics]
enabled = true
listen = "{metrics}"                # GET /metrics (Prometheus text format)

[logging]
filter = "info"                     # RUST_LOG syntax; RUST_LOG overrides it
format = "human"                    # human | json

[chain]
# block_interval_secs = 600         # default: 600 (devnet: 2)
# genesis_timestamp = 0             # slot 0 starts here (devnet: 2026-01-01)
masternode = true                   # vote and produce if our key is listed below
mempool_max_txs = 5000
mempool_max_bytes = 20971520
# genesis_hash = "..."              # checked against the genesis below
# Without masternodes a devnet node runs a one-node chain of its own.
# [[chain.masternodes]]
# public_key = "64 hex digits of the node key"
# tier = "free"                     # free | bronze | silver | gold
# [[chain.allocations]]
# address = "TIME0..."
# amount = "1000"                   # TIME, decimal

# The inbound middleware, outermost first. Remove, reorder or tune layers
# here; docs/CONFIG.md lists every parameter and why this is the default order.
[[middleware]]
name = "blacklist"

[[middleware]]
name = "scoring"

[[middleware]]
name = "rate_limit"

[[middleware]]
name = "dedup"

[[middleware]]
name = "auth"
"#;

/// Parses 64 hex digits of an ed25519 public key.
fn parse_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
}

/// The template filled in for `network` and `data_dir`.
pub fn render_template(network: Network, data_dir: &Path) -> String {
    let c = Config::for_network(network);
    TEMPLATE
        .replace("{network}", network.name())
        .replace(
            "{data_dir}",
            &data_dir.display().to_string().replace('\\', "\\\\"),
        )
        .replace("{listen}", &c.p2p_listen().to_string())
        .replace("{rpc}", &c.rpc_listen().to_string())
        .replace("{metrics}", &c.metrics_listen().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.p2p_listen(), "127.0.0.1:24200".parse().unwrap());
        assert_eq!(c.rpc_listen(), "127.0.0.1:24201".parse().unwrap());
        assert_eq!(c.metrics_listen(), "127.0.0.1:24202".parse().unwrap());
        let m = Config::for_network(Network::Mainnet);
        assert_eq!(m.p2p_listen(), "0.0.0.0:24000".parse().unwrap());
        assert_eq!(m.rpc_listen(), "127.0.0.1:24001".parse().unwrap());
        assert_eq!(
            Config::for_network(Network::Testnet).rpc_listen().port(),
            24101
        );
    }

    #[test]
    fn the_template_parses_to_the_defaults() {
        for network in [Network::Mainnet, Network::Testnet, Network::Devnet] {
            let text = render_template(network, Path::new("/var/lib/timed"));
            let c = Config::parse(&text, Path::new("t")).unwrap();
            let mut expected = Config::for_network(network);
            expected.node.data_dir = Some("/var/lib/timed".into());
            expected.p2p.listen = Some(expected.p2p_listen());
            expected.rpc.listen = Some(expected.rpc_listen());
            expected.metrics.listen = Some(expected.metrics_listen());
            assert_eq!(c, expected);
        }
    }

    #[test]
    fn errors_name_the_key_or_layer() {
        let e = Config::parse("colour = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Config::parse("[p2p]\nmax_inbund = 3\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("max_inbund"), "{e}");
        let e = Config::parse("[p2p]\nmax_inbound = \"many\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("max_inbound"), "{e}");
        let e = Config::parse("[p2p]\nlisten = \"nowhere\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = Config::parse("[p2p]\npeers = [\"bad peer\"]\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("bad peer"), "{e}");
        let e = Config::parse("[p2p]\nping_interval_secs = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("p2p.ping_interval_secs"), "{e}");
        let e = Config::parse("[node]\nnetwork = \"moon\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("moon"), "{e}");
        let e = Config::parse("[chain]\ngenesis_hash = \"ab\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("chain.genesis_hash"), "{e}");
        let e = Config::parse("[[middleware]]\nname = \"firewall\"\n", Path::new("c.toml"))
            .unwrap_err();
        assert!(
            e.to_string().contains("firewall") && e.to_string().contains("c.toml"),
            "{e}"
        );
        let e = Config::parse(
            "[[middleware]]\nname = \"auth\"\nmax_batch = 0\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_batch"), "{e}");
    }

    #[test]
    fn node_config_follows_the_file() {
        let c = Config::parse(
            "[p2p]\nlisten = \"127.0.0.3:5000\"\npeers = [\"127.0.0.1:5000\"]\nmax_inbound = 7\n",
            Path::new("x"),
        )
        .unwrap();
        let n = c.node_config();
        assert_eq!(n.listen, "127.0.0.3:5000".parse().unwrap());
        assert_eq!(n.limits.max_inbound, 7);
        assert_eq!(n.peers.len(), 1);
        assert_eq!(
            n.handshake.version.listen_addr.map(SocketAddr::from),
            Some("127.0.0.3:5000".parse().unwrap())
        );
    }
}
