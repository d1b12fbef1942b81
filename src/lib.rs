//! # timed: a node for the TIME Coin network
//!
//! `timed` replaces the old TIME Coin node's plain-TCP network layer with an
//! authenticated, encrypted, observable one, built as a tower service stack.
//!
//! ## Architecture: two services and the wiring between them
//!
//! The node is two halves that know nothing of each other, after Zebra's
//! split between its network and its state, and one place that wires them:
//!
//! ```text
//! app: config -> chain -> network(inbound = router) -> sync, production,
//!      ban persistence -> metrics, RPC; stopped in reverse     app
//!      order (the `timed` binary only parses the command line) cli
//!
//! network half (knows nothing of the chain)
//!   TCP accept / dial, pre-handshake gate (bans, accept     network
//!     rate, pending-handshake bound)
//!   Noise XX, ed25519 identity bound to the static key      transport
//!   encrypted frames, bincode messages, version exchange    transport, protocol, peer
//!   connection task: send queue, pings, requests            peer
//!     inbound  -> middleware stack from the config           layers
//!                 blacklist -> scoring -> rate_limit -> dedup -> auth
//!                 -> the application's inbound service (the router)
//!     outbound <- peer Client (tower Service), PeerSet:      peer
//!                 tower p2c Balance over PeakEwma, Discover
//!                 from the set, Retry on another peer
//!
//! chain half (knows nothing of the network)
//!   types and rules: addresses, transactions, blocks,       chain
//!     votes, mempool, genesis
//!   the chain state: pool, finality, fork choice, journal   state
//!   one redb file: blocks, UTXOs, indexes, pool, bans       storage
//!
//! between them
//!   router and handlers: network messages to chain calls,   handlers
//!     chain verdicts (Fault) to peer offences (Offence)
//!   block sync over the peer set                            sync
//! ```
//!
//! ## Who may import whom
//!
//! Each top-level module may import (with `crate::` paths) only the modules
//! listed on its row; the test in `import_rules` reads every non-test
//! source file and fails on any other import, and on any loop in this
//! table. Shared leaves (locks, constants, parameters, encoding, logging,
//! tasks, crypto) come first; then the chain half, the network half, what
//! sits between them, and the operator surfaces.
//!
//! | module | may import |
//! |---|---|
//! | [`locks`] | |
//! | [`constants`] | |
//! | [`params`] | |
//! | [`tasks`] | |
//! | [`fds`] | |
//! | [`http`] | tasks |
//! | [`logging`] | locks |
//! | [`encoding`] | constants |
//! | [`crypto`] | constants |
//! | [`chain`] | constants, crypto, encoding, params, locks, logging |
//! | [`storage`] | chain, constants, crypto, encoding, params, locks, logging |
//! | [`state`] | chain, storage, constants, crypto, encoding, params, locks, logging |
//! | [`wallet`] | chain, constants, crypto, encoding, params |
//! | [`transport`] | constants, crypto, locks, logging |
//! | [`protocol`] | transport, constants, crypto, encoding, params |
//! | [`peer`] | protocol, transport, constants, crypto, encoding, params, locks, logging |
//! | [`layers`] | peer, protocol, constants, crypto, encoding, params, locks, logging |
//! | [`network`] | layers, peer, protocol, transport, constants, crypto, encoding, params, locks, logging, tasks, fds |
//! | [`sync`] | state, chain, peer, protocol, constants, crypto, locks, logging |
//! | [`handlers`] | sync, state, chain, peer, protocol, constants, crypto, encoding, locks, logging |
//! | [`metrics`] | network, layers, peer, http, constants, locks |
//! | [`config`] | network, layers, peer, protocol, transport, chain, wallet, http, constants, params |
//! | [`rpc`] | config, network, layers, peer, protocol, state, chain, wallet, http, constants, crypto, encoding, params, locks, logging |
//! | [`app`] | rpc, metrics, config, wallet, handlers, sync, network, layers, peer, protocol, state, storage, chain, constants, crypto, params, locks, logging, tasks |
//! | [`cli`] | app, config, rpc, metrics, network, protocol, state, storage, chain, wallet, fds, constants, crypto, params |
//!
//! * [`crypto`]: the node identity (ed25519, key file with mode 0600,
//!   zeroized secrets), the node id (blake3), and the signature-scheme enum
//!   (ed25519 or secp256k1 ECDSA) used by transaction inputs.
//! * [`encoding`]: the bincode value encoding shared by the chain, its
//!   storage and the wire; [`params`]: the networks (mainnet, testnet,
//!   devnet) and their magic bytes.
//! * [`transport`]: snow's `Noise_XX_25519_ChaChaPoly_SHA256` with a
//!   prologue binding the protocol and network magic; frames of at most
//!   [`constants::DEFAULT_MAX_FRAME_LEN`] bytes split over 65,535-byte Noise
//!   messages; each direction rekeys on its own schedule.
//! * [`protocol`]: the versioned [`protocol::Message`] enum, its codec, the
//!   `Version` rules and signed gossip envelopes with batch verification.
//! * [`peer`]: connection setup, the per-connection task with its
//!   prioritised bounded send queue, the request types every layer and
//!   handler speaks ([`peer::Inbound`], [`peer::Outcome`],
//!   [`peer::Offence`]), the request [`peer::Client`] and the
//!   [`peer::PeerSet`].
//! * [`layers`]: the tower middleware (one module per layer with its config,
//!   metrics and tests) and the stack built from the config's ordered
//!   `[[middleware]]` list.
//! * [`network`]: the network service: listener with its pre-handshake gate
//!   and bounded pending handshakes, dialers, connection setup, events,
//!   publishing as this node, penalties through the stack's judge.
//! * [`chain`]: the chain's types and rules; [`state`]: the chain state
//!   (mempool with chained payments, votes and finality, blocks, fork
//!   choice) with its durable pool journal; [`storage`]: the one redb file
//!   with its integrity checks; [`wallet`]: the node's key, coin selection
//!   and amounts.
//! * [`handlers`]: the router and the block, transaction, vote, address and
//!   peer handlers; [`sync`]: block sync; [`app`]: the wiring.
//! * [`config`]: the TOML config file; [`rpc`]: JSON-RPC; [`metrics`]:
//!   Prometheus; [`cli`]: the `timed` binary's subcommands.
//! * [`logging`]: per-kind budgets for log lines a remote party can
//!   trigger, with summary lines; [`tasks`]: tracked tasks, with panics
//!   logged and counted; [`locks`]: lock helpers.
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

#[cfg(test)]
mod import_rules;
