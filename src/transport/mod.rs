//! The encrypted transport: Noise XX sessions over TCP and the frames they
//! carry.
//!
//! [`noise`] runs the handshake and authenticates the remote node id;
//! [`frame`] turns the session into a tokio-util codec of bounded,
//! length-prefixed frames with periodic rekeying. Message encoding lives one
//! level up, in the `protocol` module.

pub mod frame;
pub mod noise;

pub use frame::{FrameCodec, FrameError, RekeyPolicy};
pub use noise::{CryptoBackend, HandshakeError, LocalKeys, RemoteIdentity};
