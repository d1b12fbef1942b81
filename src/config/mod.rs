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
use crate::network::{ConnectionLimits, NetworkConfig, PeerTarget};
use crate::params::Network;
use crate::peer::{ConnectionConfig, HandshakeConfig};
use crate::protocol::VersionParams;
use crate::transport::{CryptoBackend, RekeyPolicy};

mod template;
mod validate;
pub use template::{render_template, TEMPLATE};
pub use validate::{ConfigWarning, MAX_DURATION_SECS, MAX_HTTP_CONNECTIONS};

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
    /// Peers to keep connected, `IP:PORT` or `NODE_ID@IP:PORT` (an IP address, not a DNS name).
    #[serde(deserialize_with = "peer_targets", serialize_with = "peer_targets_out")]
    pub peers: Vec<PeerTarget>,
    /// Seed nodes, `HOST:PORT` (DNS names resolved when used), dialled
    /// only when the address book has nothing to dial.
    pub seeds: Vec<String>,
    /// Floor of the dynamic inbound cap.
    pub min_peers: usize,
    /// Most connections in all, inbound and outbound.
    pub max_peers: usize,
    /// Automatic outbound connections kept (one per netgroup).
    pub target_outbound: usize,
    /// Leading bits of an IPv4 address that make its netgroup.
    pub netgroup_ipv4_bits: u8,
    /// Leading bits of an IPv6 address that make its netgroup.
    pub netgroup_ipv6_bits: u8,
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
    /// Country and ASN databases (`[p2p.diversity]`).
    pub diversity: crate::network::diversity::DiversityConfig,
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
            seeds: Vec::new(),
            min_peers: limits.min_peers,
            max_peers: limits.max_peers,
            target_outbound: limits.target_outbound,
            netgroup_ipv4_bits: crate::network::address_book::GroupBits::default().v4,
            netgroup_ipv6_bits: crate::network::address_book::GroupBits::default().v6,
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
            diversity: Default::default(),
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
    /// If set, requests must carry credentials, and
    /// `Authorization: Bearer <token>` is one (docs/CONFIG.md,
    /// "Authentication").
    pub bearer_token: Option<String>,
    /// With `password`: HTTP Basic credentials, in the manner of bitcoind's
    /// `rpcuser`. If set, requests must carry credentials.
    pub user: Option<String>,
    /// With `user`: HTTP Basic credentials (16+ characters), in the manner
    /// of bitcoind's `rpcpassword`.
    pub password: Option<String>,
    /// Largest request body, bytes. 1 MiB holds any honest call (the
    /// largest, `sendrawtransaction` of a 100 kB transaction, is 200 kB of
    /// hex); memory for bodies is bounded by `max_concurrent` times this.
    pub max_body_bytes: usize,
    /// Requests handled at once (reading their bodies included); more wait
    /// up to `queue_timeout_secs`. Bitcoin Core runs 4 RPC threads with a
    /// queue of 16; 16 here keeps a wallet, an exchange's payout loop and
    /// monitoring busy (a call takes milliseconds) while bounding body
    /// memory to 16 MiB, which the allocator then keeps at most.
    pub max_concurrent: usize,
    /// Most open RPC connections; a connection beyond is closed at once.
    /// 128 is twice `max_concurrent`: room for keep-alive clients that wait
    /// between calls. The open-file limit may lower it at start-up.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head, from the
    /// connection's start or the first byte of a keep-alive request (the
    /// slowloris bound; nginx's client_header_timeout is 60 s, 10 s is
    /// ample on the loopback or a LAN).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a complete request body (Bitcoin Core's
    /// rpcservertimeout is 30 s: 1 MiB at 35 kB/s).
    pub body_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay open without a request
    /// (Bitcoin Core's rpcservertimeout, 30 s).
    pub idle_timeout_secs: u64,
    /// Seconds a request may wait for one of the `max_concurrent` workers
    /// before HTTP 503 "work queue depth exceeded" (0: refuse at once, as
    /// Bitcoin Core does when its work queue is full). 5 s rides out a
    /// burst without letting waiting clients pile up.
    pub queue_timeout_secs: u64,
}

impl Default for RpcSection {
    fn default() -> Self {
        RpcSection {
            enabled: true,
            listen: None,
            bearer_token: None,
            user: None,
            password: None,
            max_body_bytes: 1024 * 1024,
            max_concurrent: 16,
            max_connections: 128,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 30,
            queue_timeout_secs: 5,
        }
    }
}

impl RpcSection {
    /// The HTTP limits of the RPC server.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
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
    /// Most open connections to the metrics endpoint; more are closed at
    /// once. A Prometheus server or two and a curl need 16 at most.
    pub max_connections: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: None,
            max_connections: 16,
        }
    }
}

impl MetricsSection {
    /// Seconds a scraper has to send its request head.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Seconds a scraper's keep-alive connection may stay idle (Prometheus
    /// scrapes every 15 s by default and keeps its connection open, so
    /// 30 s keeps that connection alive).
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

    /// The HTTP limits of the metrics server.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: Self::HEADER_TIMEOUT,
            idle_timeout: Self::IDLE_TIMEOUT,
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

    /// How the address book groups addresses (`[p2p] netgroup_*_bits`).
    pub fn group_bits(&self) -> crate::network::address_book::GroupBits {
        crate::network::address_book::GroupBits {
            v4: self.p2p.netgroup_ipv4_bits,
            v6: self.p2p.netgroup_ipv6_bits,
        }
    }

    /// The node configuration this file describes.
    pub fn node_config(&self) -> NetworkConfig {
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
        let mut node = NetworkConfig::new(listen, handshake);
        node.peers = p.peers.clone();
        node.seeds = p.seeds.clone();
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
            min_peers: p.min_peers,
            max_peers: p.max_peers,
            target_outbound: p.target_outbound,
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

/// Parses 64 hex digits of an ed25519 public key.
fn parse_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
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
