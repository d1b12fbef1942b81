//! Peers: connection setup (Noise + version exchange) and the task that owns
//! an established connection.

pub mod connection;
pub mod handshake;

pub use connection::{ConnectionConfig, ConnectionError, ConnectionEvent};
pub use handshake::{establish, ConnectError, Connection, Direction, HandshakeConfig, PeerInfo};
