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
//!   └─ pre-handshake gate: bans, accept rate,        node, layers::blacklist
//!      connection limits per node and per IP
//!   └─ Noise XX handshake, ed25519 identity bound     transport::noise
//!      to the Noise static key
//!   └─ encrypted length-delimited frames, rekeying    transport::frame
//!   └─ bincode messages (one codec module)            protocol::codec
//!   └─ version exchange under one deadline            peer::handshake
//!   └─ one connection per node id                     peer::set
//!   └─ connection task: send queue, pings, requests   peer::connection, peer::queue
//!        inbound ─► middleware stack from the config  layers::stack
//!                   blacklist ─► scoring ─► rate_limit ─► dedup ─► auth
//!                   ─► router ─► handlers             handlers
//!        outbound ◄─ Client (tower Service)           peer::client
//!                    PeerSet: admission, broadcast    peer::set
//!                    tower p2c Balance over PeakEwma, peer::balance
//!                    Discover from the set, Retry
//!                    on another peer
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
//! * [`peer`]: connection setup, the per-connection task with its
//!   prioritised bounded send queue, the request [`peer::Client`], the
//!   [`peer::PeerSet`] and its request balancer ([`peer::PeerSetService`]:
//!   tower's power of two choices on peak-EWMA load over the connected
//!   peers, a timeout per attempt, a retry on another peer).
//! * [`layers`]: the tower middleware (one module per layer with its config,
//!   metrics and tests) and the stack built from the config's ordered
//!   `[[middleware]]` list.
//! * [`handlers`]: the router and the block, transaction, vote, address and
//!   peer handlers, shared by all connections.
//! * [`config`]: the TOML config file. [`node`]: the listener with its
//!   pre-handshake gate and bounded pending handshakes, dialers, connection
//!   setup, node events, and the chain's wiring (publishing, pool
//!   announcements to new peers, ban persistence, block production).
//! * [`chain`]: the chain model and state (mempool with chained payments,
//!   votes and finality, blocks, fork choice), the durable pool journal and
//!   sync; [`storage`]: the one redb file with its integrity checks;
//!   [`wallet`]: the node's key, coin selection and amounts.
//! * [`logging`]: per-kind budgets for log lines a remote party can
//!   trigger, with summary lines.
//! * [`http`]: bounded HTTP/1.1 serving (connection cap, per-phase
//!   deadlines) for [`rpc`] and [`metrics`]; [`fds`]: the open-file budget
//!   that keeps descriptors for peers before sizing the HTTP caps.
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
//! * Every limit lives in [`constants`] (or next to the layer that owns it)
//!   with its justification.
//! * Backpressure instead of buffering: a connection stops reading while its
//!   middleware stack is busy; a peer that does not drain its send queue is
//!   disconnected.
//! * Honest load is never an offence: gossip over its budget is slowed or
//!   dropped for free, and only what no honest peer produces is charged.
//! * What the node calls final is durable: pooled payments and their votes
//!   are in the same file as the blocks, written in groups before the node
//!   acknowledges them or reports them final.

pub mod app;
pub mod chain;
pub mod cli;
pub mod config;
pub mod constants;
pub mod crypto;
pub mod encoding;
pub mod fds;
pub mod handlers;
pub mod http;
pub mod layers;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod params;
pub mod peer;
pub mod protocol;
pub mod rpc;
pub mod state;
pub mod storage;
pub mod sync;
pub mod tasks;
pub mod transport;
pub mod wallet;
