//! Networks (mainnet, testnet, devnet) and their fixed parameters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A TIME Coin network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The production network.
    Mainnet,
    /// The public test network.
    Testnet,
    /// A local development network (`timed devnet`, `cargo run`).
    Devnet,
}

impl Network {
    /// The 4 magic bytes that open every Noise prologue and `Version` message.
    ///
    /// Mainnet and testnet keep the old TIME Coin node's values.
    pub const fn magic(self) -> [u8; 4] {
        match self {
            Network::Mainnet => [0xC0, 0x1D, 0x7E, 0x4D],
            Network::Testnet => *b"TIME",
            Network::Devnet => *b"TDEV",
        }
    }

    /// The lower-case name sent in `Version` messages.
    pub const fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Devnet => "devnet",
        }
    }

    /// The default P2P port (TIME Coin: mainnet 24000, testnet 24100).
    pub const fn default_p2p_port(self) -> u16 {
        match self {
            Network::Mainnet => 24_000,
            Network::Testnet => 24_100,
            Network::Devnet => 24_200,
        }
    }

    /// The default JSON-RPC port (TIME Coin: mainnet 24001, testnet 24101).
    pub const fn default_rpc_port(self) -> u16 {
        self.default_p2p_port() + 1
    }

    /// The genesis hash used until a chain configuration provides one.
    ///
    /// It is a blake3 derived key over the network name, so that nodes of
    /// different networks never agree on it.
    pub fn default_genesis_hash(self) -> [u8; 32] {
        blake3::derive_key("timed v1 default genesis", self.name().as_bytes())
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown network name.
#[derive(Debug, thiserror::Error)]
#[error("unknown network {0:?}: expected mainnet, testnet or devnet")]
pub struct UnknownNetwork(pub String);

impl FromStr for Network {
    type Err = UnknownNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" => Ok(Network::Mainnet),
            "testnet" => Ok(Network::Testnet),
            "devnet" => Ok(Network::Devnet),
            other => Err(UnknownNetwork(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_magics_differ() {
        for n in [Network::Mainnet, Network::Testnet, Network::Devnet] {
            assert_eq!(n.name().parse::<Network>().unwrap(), n);
        }
        assert_eq!(Network::Mainnet.magic(), [0xC0, 0x1D, 0x7E, 0x4D]);
        assert_eq!(&Network::Testnet.magic(), b"TIME");
        assert_ne!(
            Network::Mainnet.default_genesis_hash(),
            Network::Testnet.default_genesis_hash()
        );
        assert!("moon".parse::<Network>().is_err());
    }
}
