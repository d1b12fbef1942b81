//! Peers: connection setup (Noise + version exchange), the task that owns
//! an established connection, its send queue and request client, and the
//! set of all connected peers with its request balancer.

pub mod balance;
pub mod client;
pub mod connection;
pub mod handshake;
pub mod queue;
pub mod request;
pub mod set;

pub use balance::{PeerAnswer, PeerRequest, PeerSetError, PeerSetService};
pub use client::{Client, ClientError, Request, Response};
pub use connection::{ConnectionConfig, ConnectionError, ConnectionEvent};
pub use handshake::{establish, ConnectError, Connection, Direction, HandshakeConfig, PeerInfo};
pub use request::{
    Inbound, InboundService, Offence, Outcome, PeerContext, PeerJudge, PeerStats, Rejection,
    ScoreHandle, SCORE_RANGE,
};
pub use set::PeerSet;
