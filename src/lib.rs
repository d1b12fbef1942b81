//! # timed: a node for the TIME Coin network
//!
//! `timed` replaces the old TIME Coin node's plain-TCP network layer with an
//! authenticated, encrypted, observable one, built as a tower service stack.
//!
//! ## Architecture
//!
//! Data flows from the socket up to the handlers; the modules follow it:
//!
//! ```text
//! TCP accept / dial                                   node
//!   └─ Noise XX handshake, ed25519 identity bound     transport::noise
//!      to the Noise static key
//!   └─ encrypted length-delimited frames, rekeying    transport::frame
//!   └─ bincode messages (one codec module)            protocol::codec
//!   └─ version exchange under one deadline            peer::handshake
//!   └─ connection task: ping/pong, RTT, dispatch      peer::connection
//!        └─ (step 2) tower middleware layers and handlers
//! ```
//!
//! * [`crypto`]: the node identity (ed25519, key file with mode 0600,
//!   zeroized secrets), the node id (blake3), and the signature-scheme enum
//!   (ed25519 or secp256k1 ECDSA) used later by transaction inputs.
//! * [`transport`]: snow's `Noise_XX_25519_ChaChaPoly_SHA256` with a
//!   prologue binding the protocol and network magic; frames of at most
//!   [`constants::DEFAULT_MAX_FRAME_LEN`] bytes split over 65,535-byte Noise
//!   messages; each direction rekeys on its own schedule.
//! * [`protocol`]: the versioned [`protocol::Message`] enum, its bincode
//!   codec, the `Version` rules and signed gossip envelopes with
//!   batch verification.
//! * [`peer`]: connection setup and the per-connection task.
//! * [`node`]: the listener, dialers and node events.
//!
//! `docs/PROTOCOL.md` specifies every byte on the wire.
//!
//! ## Correctness and security principles
//!
//! * Nothing received from the network can panic the node: every decode,
//!   limit and state error is a typed error with a stable `kind()` name,
//!   logged with structured fields, and the connection is closed.
//! * Everything that grows from the network is bounded before allocation:
//!   handshake messages (1 KiB), frames before the version exchange (4 KiB)
//!   and after it (4 MiB by default).
//! * Every limit lives in [`constants`] with its justification.

pub mod config;
pub mod constants;
pub mod crypto;
pub mod handlers;
pub mod layers;
pub mod network;
pub mod node;
pub mod peer;
pub mod protocol;
pub mod transport;
