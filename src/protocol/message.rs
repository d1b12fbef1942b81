//! The messages peers exchange, as one versioned serde enum.
//!
//! # Versioning
//! [`Message`] variants are identified on the wire by their index (a `u32`).
//! Variants are only ever appended; a peer that receives an index it does not
//! know refuses it with [`super::CodecError::UnknownVariant`]. A change to an
//! existing variant's layout bumps [`crate::constants::PROTOCOL_VERSION`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;
use crate::crypto::NodeId;

/// Every message of protocol version 2, in wire order (index 0 first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// 0: the first message on every connection, sent by both sides.
    Version(Version),
    /// 1: liveness probe; the peer answers with a [`Pong`] of the same nonce.
    Ping(Ping),
    /// 2: answer to a [`Ping`].
    Pong(Pong),
    /// 3: the sender is closing the connection, and why.
    Disconnect(Disconnect),
    /// 4: a signed envelope relayed beyond one hop (tx, block, vote, address).
    Gossip(Envelope),
    /// 5: asks for known peer addresses.
    GetPeers,
    /// 6: signed peer records (at most
    /// [`crate::constants::MAX_PEER_ADDRESSES`]), each an `Address`
    /// envelope (see [`super::record`]); the answer to `GetPeers`.
    Peers(Vec<Envelope>),
    /// Asks for blocks from a height upward (chain sync, section 9.6).
    GetBlocks(GetBlocks),
    /// The answer to `GetBlocks`: the responder's tip and encoded blocks.
    Blocks(Blocks),
    /// Asks for the transactions in the peer's mempool.
    GetMempool,
    /// The answer to `GetMempool`: encoded transactions.
    Mempool(Vec<serde_bytes::ByteBuf>),
}

/// Number of [`Message`] variants this build knows.
pub const MESSAGE_VARIANT_COUNT: u32 = 11;

impl Message {
    /// A short stable name of the message kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Version(_) => "version",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Disconnect(_) => "disconnect",
            Message::Gossip(_) => "gossip",
            Message::GetPeers => "get_peers",
            Message::Peers(_) => "peers",
            Message::GetBlocks(_) => "get_blocks",
            Message::Blocks(_) => "blocks",
            Message::GetMempool => "get_mempool",
            Message::Mempool(_) => "mempool",
        }
    }
}

/// The version message: what a node is and what it follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The network magic (also bound in the Noise prologue).
    pub magic: [u8; 4],
    /// The sender's protocol version.
    pub protocol_version: u32,
    /// The network name: `mainnet`, `testnet` or `devnet`.
    pub network: String,
    /// The hash of the genesis block the sender follows.
    pub genesis_hash: [u8; 32],
    /// The sender's node id; must equal the id authenticated by Noise.
    pub node_id: NodeId,
    /// The address the sender accepts connections on, if any.
    pub listen_addr: Option<PeerAddress>,
    /// Capability bits (see [`capabilities`]).
    pub capabilities: u64,
    /// Software name and version, e.g. `/timed:0.1.0/`.
    pub user_agent: String,
    /// The height of the sender's best block.
    pub best_height: u64,
    /// The sender's clock, seconds since the Unix epoch.
    pub timestamp: u64,
}

/// Capability bits of [`Version::capabilities`].
pub mod capabilities {
    /// Serves blocks to syncing peers.
    pub const FULL_NODE: u64 = 1 << 0;
    /// Relays gossip envelopes.
    pub const RELAY: u64 = 1 << 1;
    /// Is a masternode that votes.
    pub const MASTERNODE: u64 = 1 << 2;
}

/// A request for blocks `start, start + 1, ...`, at most `count` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GetBlocks {
    /// The first height wanted.
    pub start: u64,
    /// The most blocks wanted (at most
    /// [`crate::constants::MAX_BLOCKS_PER_RESPONSE`]).
    pub count: u32,
}

/// Blocks in answer to [`GetBlocks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    /// The responder's best height when it answered.
    pub tip_height: u64,
    /// Consecutive encoded blocks from the requested height (fewer than
    /// asked for when the tip or the byte budget is reached; none when the
    /// responder has no block at that height).
    pub blocks: Vec<serde_bytes::ByteBuf>,
}

/// A liveness probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Random nonce echoed by the pong.
    pub nonce: u64,
    /// The sender's clock in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The answer to a [`Ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the ping being answered.
    pub nonce: u64,
    /// The responder's clock in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A goodbye with a reason code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Why (see [`DisconnectReason`]).
    pub reason: DisconnectReason,
    /// Free text for the operator on the other side (at most 256 bytes).
    pub detail: String,
}

/// Reason codes of [`Disconnect`]; index on the wire as a `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisconnectReason {
    /// 0: shutting down or otherwise going away.
    Shutdown,
    /// 1: the version message was refused.
    IncompatibleVersion,
    /// 2: already connected to this node id.
    Duplicate,
    /// 3: too many peers.
    TooManyPeers,
    /// 4: the peer broke the protocol.
    ProtocolViolation,
    /// 5: the peer is banned.
    Banned,
    /// 6: the peer did not drain its send queue.
    SendQueueFull,
}

/// A peer address on the wire: 16 IP bytes (IPv4 as `::ffff:a.b.c.d`) and a
/// port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerAddress {
    /// IPv6 address bytes, IPv4 mapped.
    pub ip: [u8; 16],
    /// TCP port.
    pub port: u16,
}

impl From<SocketAddr> for PeerAddress {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        PeerAddress {
            ip: ip.octets(),
            port: addr.port(),
        }
    }
}

impl From<PeerAddress> for SocketAddr {
    fn from(addr: PeerAddress) -> Self {
        let v6 = Ipv6Addr::from(addr.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, addr.port)
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_round_trips_v4_and_v6() {
        for s in ["127.0.0.2:24200", "[::1]:9", "[2001:db8::7]:24000"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(SocketAddr::from(PeerAddress::from(a)), a);
        }
    }
}
