//! Building and checking `Version` messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::message::{PeerAddress, Version};
use crate::constants::{
    MAX_VERSION_CLOCK_SKEW, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, USER_AGENT,
};
use crate::crypto::NodeId;
use crate::params::Network;

/// What this node announces and expects in the version handshake.
#[derive(Clone, Debug)]
pub struct VersionParams {
    /// The network (magic and name).
    pub network: Network,
    /// The genesis hash this node follows.
    pub genesis_hash: [u8; 32],
    /// The protocol version announced (normally [`PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// The oldest protocol version accepted from peers.
    pub min_protocol_version: u32,
    /// The address announced for inbound connections.
    pub listen_addr: Option<PeerAddress>,
    /// Capability bits announced.
    pub capabilities: u64,
    /// The user agent announced.
    pub user_agent: String,
    /// Largest tolerated clock difference.
    pub max_clock_skew: Duration,
}

impl VersionParams {
    /// Defaults for `network` with its default genesis.
    pub fn new(network: Network) -> Self {
        VersionParams {
            network,
            genesis_hash: network.default_genesis_hash(),
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            listen_addr: None,
            capabilities: 0,
            user_agent: USER_AGENT.to_owned(),
            max_clock_skew: MAX_VERSION_CLOCK_SKEW,
        }
    }

    /// The `Version` message this node sends.
    pub fn build(&self, node_id: NodeId, best_height: u64) -> Version {
        Version {
            magic: self.network.magic(),
            protocol_version: self.protocol_version,
            network: self.network.name().to_owned(),
            genesis_hash: self.genesis_hash,
            node_id,
            listen_addr: self.listen_addr,
            capabilities: self.capabilities,
            user_agent: self.user_agent.clone(),
            best_height,
            timestamp: unix_now().as_secs(),
        }
    }

    /// Checks a peer's `Version` against ours and against the node id that
    /// Noise authenticated.
    ///
    /// # Errors
    /// The first mismatch, as its own [`VersionError`] variant.
    pub fn check(&self, v: &Version, authenticated: NodeId) -> Result<(), VersionError> {
        let magic = self.network.magic();
        if v.magic != magic {
            return Err(VersionError::WrongMagic {
                expected: magic,
                got: v.magic,
            });
        }
        if v.protocol_version < self.min_protocol_version {
            return Err(VersionError::UnsupportedProtocolVersion {
                got: v.protocol_version,
                min: self.min_protocol_version,
            });
        }
        if v.network != self.network.name() {
            return Err(VersionError::WrongNetwork {
                expected: self.network.name(),
                got: v.network.clone(),
            });
        }
        if v.genesis_hash != self.genesis_hash {
            return Err(VersionError::WrongGenesis {
                expected: hex::encode(self.genesis_hash),
                got: hex::encode(v.genesis_hash),
            });
        }
        if v.node_id != authenticated {
            return Err(VersionError::NodeIdMismatch {
                authenticated,
                claimed: v.node_id,
            });
        }
        let now = unix_now().as_secs();
        let skew = now.abs_diff(v.timestamp);
        if skew > self.max_clock_skew.as_secs() {
            return Err(VersionError::ClockSkew { seconds: skew });
        }
        Ok(())
    }
}

/// Time since the Unix epoch (zero if the clock is before it).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Why a peer's `Version` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Another network's magic.
    #[error("wrong network magic {got:02x?}, expected {expected:02x?}")]
    WrongMagic {
        /// Ours.
        expected: [u8; 4],
        /// Theirs.
        got: [u8; 4],
    },
    /// A protocol version older than we support.
    #[error("protocol version {got} is older than the minimum {min}")]
    UnsupportedProtocolVersion {
        /// Theirs.
        got: u32,
        /// Our minimum.
        min: u32,
    },
    /// Another network name.
    #[error("wrong network {got:?}, expected {expected:?}")]
    WrongNetwork {
        /// Ours.
        expected: &'static str,
        /// Theirs.
        got: String,
    },
    /// Another genesis block.
    #[error("wrong genesis hash {got}, expected {expected}")]
    WrongGenesis {
        /// Ours, hex.
        expected: String,
        /// Theirs, hex.
        got: String,
    },
    /// The version claims another node id than Noise authenticated.
    #[error("version claims node id {claimed} but the noise identity is {authenticated}")]
    NodeIdMismatch {
        /// Proven by the handshake.
        authenticated: NodeId,
        /// Claimed in the message.
        claimed: NodeId,
    },
    /// The peer's clock is too far from ours.
    #[error("peer clock differs from ours by {seconds} s")]
    ClockSkew {
        /// The difference.
        seconds: u64,
    },
}

impl VersionError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            VersionError::WrongMagic { .. } => "wrong_magic",
            VersionError::UnsupportedProtocolVersion { .. } => "unsupported_protocol_version",
            VersionError::WrongNetwork { .. } => "wrong_network",
            VersionError::WrongGenesis { .. } => "wrong_genesis",
            VersionError::NodeIdMismatch { .. } => "node_id_mismatch",
            VersionError::ClockSkew { .. } => "clock_skew",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeIdentity;

    #[test]
    fn each_mismatch_is_its_own_error() {
        let ours = VersionParams::new(Network::Devnet);
        let id = NodeIdentity::generate().node_id();
        let good = ours.build(id, 0);
        ours.check(&good, id).unwrap();

        let mut v = good.clone();
        v.magic = *b"TIME";
        assert!(matches!(
            ours.check(&v, id),
            Err(VersionError::WrongMagic { .. })
        ));
        let mut v = good.clone();
        v.protocol_version = 1;
        assert!(matches!(
            ours.check(&v, id),
            Err(VersionError::UnsupportedProtocolVersion { got: 1, min: 2 })
        ));
        let mut v = good.clone();
        v.network = "testnet".into();
        assert!(matches!(
            ours.check(&v, id),
            Err(VersionError::WrongNetwork { .. })
        ));
        let mut v = good.clone();
        v.genesis_hash = [9; 32];
        assert!(matches!(
            ours.check(&v, id),
            Err(VersionError::WrongGenesis { .. })
        ));
        let other = NodeIdentity::generate().node_id();
        assert!(matches!(
            ours.check(&good, other),
            Err(VersionError::NodeIdMismatch { .. })
        ));
        let mut v = good;
        v.timestamp -= 3 * 3600;
        assert!(matches!(
            ours.check(&v, id),
            Err(VersionError::ClockSkew { .. })
        ));
    }
}
