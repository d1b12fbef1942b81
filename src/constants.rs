//! Every protocol constant and resource limit of `timed`, each with its reason.
//!
//! Values that an operator may tune have a default here and a field in the
//! relevant config struct; values that are part of the wire protocol are fixed
//! and documented in `docs/PROTOCOL.md`. Comparison figures come from
//! `shared/REFERENCES.md` (Bitcoin Core, Zebra, libp2p, Lighthouse, CometBFT).

use std::time::Duration;

/// The wire protocol version this build speaks.
///
/// Sent in every `Version` message. Bumped when a message's layout changes
/// incompatibly; appending a new `Message` variant does not bump it, because
/// old peers refuse an unknown variant with a typed error anyway. Version 2:
/// `Peers` carries signed peer records instead of bare addresses.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest protocol version this build accepts from a peer: version 1
/// peers would send and expect bare addresses in `Peers`.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// The Noise protocol name.
///
/// X25519 for Diffie-Hellman, ChaCha20-Poly1305 for the AEAD and SHA-256 for
/// the handshake hash: the same suite as rust-libp2p, supported both by snow's
/// RustCrypto resolver and by its ring-accelerated resolver (ring has no
/// BLAKE2s), so the faster backend can be chosen at run time.
pub const NOISE_PROTOCOL_NAME: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Prefix of the Noise prologue; the 4 network magic bytes follow it.
///
/// # Security
/// Both sides mix the prologue into the handshake hash, so a peer on another
/// network (other magic) or speaking another protocol fails the handshake at
/// the first authenticated message instead of later.
pub const NOISE_PROLOGUE_PREFIX: &[u8] = b"timed/noise/1";

/// Domain separation string for the identity signature over the Noise static
/// key (followed by the 32-byte X25519 public key).
pub const IDENTITY_SIGNATURE_DOMAIN: &[u8] = b"timed/noise-static-key/1:";

/// Version byte of the Noise handshake payload layout.
pub const HANDSHAKE_PAYLOAD_VERSION: u8 = 1;

/// Largest Noise message (ciphertext, including the 16-byte tag), fixed by the
/// Noise specification and by our 2-byte length prefix.
pub const MAX_NOISE_MESSAGE_LEN: usize = 65_535;

/// Length of the ChaCha20-Poly1305 authentication tag.
pub const NOISE_TAG_LEN: usize = 16;

/// Largest plaintext carried by one Noise transport message.
pub const MAX_NOISE_PLAINTEXT_LEN: usize = MAX_NOISE_MESSAGE_LEN - NOISE_TAG_LEN;

/// Largest Noise *handshake* message we accept.
///
/// # Security
/// The three XX messages of this protocol are 32, 193 and 161 bytes long.
/// Anything longer before authentication is refused before it is buffered,
/// like Zebra's 1,024-byte pre-handshake cap.
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 1_024;

/// Default upper bound on one application frame (one encoded message).
///
/// Bitcoin caps messages at 4,000,000 bytes, Zebra at 2 MiB, the old TIME
/// Coin node at 8 MiB. 4 MiB leaves room for a full block with its
/// transactions while keeping the worst-case buffer per connection small.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Upper bound on a frame before the version handshake has completed.
///
/// # Security
/// Only a `Version` message (well under 1 KiB) is legal then; an
/// unauthenticated-version peer cannot make us buffer more than this.
pub const PRE_VERSION_MAX_FRAME_LEN: usize = 4 * 1024;

/// Default deadline for the whole connection setup: Noise XX and the version
/// exchange together.
///
/// Zebra uses 3 s, geth 5 s, CometBFT 20 s, Bitcoin 60 s. Three loopback or
/// LAN round trips take milliseconds; 5 s tolerates slow links while a
/// slow-loris dialer (1 byte/s) is cut off after at most 5 bytes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default number of Noise transport messages sent under one key before the
/// sender rotates it (`REKEY` record).
///
/// BIP324 rekeys every 224 packets. Rekeying is one ChaCha20 block, so a low
/// value costs nothing measurable; 4,096 messages bounds what a later key
/// compromise of one direction can decrypt.
pub const DEFAULT_REKEY_AFTER_MESSAGES: u64 = 4_096;

/// Default number of plaintext bytes sent under one key before rotation.
pub const DEFAULT_REKEY_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// Default interval between pings on an idle-or-busy connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default time a pong may take before the peer is considered dead.
///
/// Zebra's request timeout is 20 s.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest accepted user agent string in a `Version` message, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 256;

/// Largest accepted network name in a `Version` message, in bytes.
pub const MAX_NETWORK_NAME_LEN: usize = 32;

/// Largest clock difference tolerated in a `Version` message.
///
/// Bitcoin only warns about skew; we refuse beyond 2 hours because envelope
/// timestamps and block timestamps are checked against the local clock too.
pub const MAX_VERSION_CLOCK_SKEW: Duration = Duration::from_secs(2 * 60 * 60);

/// Largest payload of a signed gossip envelope, in bytes.
///
/// Kept below [`DEFAULT_MAX_FRAME_LEN`] so an envelope always fits a frame
/// with its header.
pub const MAX_ENVELOPE_PAYLOAD_LEN: usize = 2 * 1024 * 1024;

/// Largest number of peer records in one `Peers` message.
///
/// Bitcoin answers GETADDR with at most 1,000 addresses. A record is about
/// 150 bytes, so a full answer is about 150 KB, far below a frame.
pub const MAX_PEER_ADDRESSES: usize = 1_000;

/// Most addresses in one signed peer record: a node listens on a few
/// addresses at most (one per family and maybe one more).
pub const MAX_RECORD_ADDRESSES: usize = 4;

/// How far a peer record's timestamp may be ahead of the local clock.
///
/// Ten minutes, Bitcoin's tolerance for addresses from the future; a
/// record further ahead would outrank its node's honest later records.
/// Such a record is refused; its sender is charged only when the record is
/// more than [`MAX_VERSION_CLOCK_SKEW`] further ahead still, since an
/// honest relay whose clock is that far ahead of ours (the version
/// exchange allows it) may have accepted it.
pub const MAX_RECORD_FUTURE_SECS: u64 = 10 * 60;

/// Share of the address book (in percent) one `GetPeers` answer may show.
///
/// Bitcoin's 23%: a spy needs many connections over many cache periods to
/// learn the table, while honest nodes learn plenty in one answer.
pub const PEX_MAX_SHARE_PERCENT: usize = 23;

/// Below this many records a `GetPeers` answer may show the whole book.
///
/// A book this small reveals nothing a spy could not see by connecting to
/// its few nodes; a young network needs every address it can get.
pub const PEX_MIN_ANSWER: usize = 32;

/// How long the `GetPeers` answer cache is kept before it is rebuilt.
///
/// Every asker within the period gets the same sample, so reconnecting
/// does not scrape more of the table. Bitcoin keeps its cache about a day;
/// ten minutes keeps a young network's answers current, and a cache is
/// also rebuilt early when the book has doubled since (at most about 17
/// extra rebuilds up to the book's size bound).
pub const PEX_CACHE_TTL: Duration = Duration::from_secs(10 * 60);

/// How often a node signs and sends a fresh record of itself to its peers.
///
/// Bitcoin re-announces its address about once a day; half an hour keeps
/// records within the relay freshness window often enough that new nodes
/// hear of old ones quickly, at one ~150-byte message per peer.
pub const SELF_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// A record younger than this is relayed on; older ones are only stored.
///
/// Bitcoin relays addresses whose timestamp is under 10 minutes old.
pub const RECORD_RELAY_MAX_AGE_SECS: u64 = 10 * 60;

/// Peers a fresh record is relayed to (Bitcoin's addr relay uses 2).
pub const RECORD_RELAY_FANOUT: usize = 2;

/// Outbound connections the connection manager keeps.
///
/// Bitcoin keeps 8 full-relay outbound connections: with at most one per
/// netgroup, an attacker must control 8 netgroups to surround a node, and
/// 8 random peers keep a network of thousands connected with overwhelming
/// probability.
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;

/// Lower bound of the dynamic connection limit (`[p2p] min_peers`).
pub const DEFAULT_MIN_PEERS: usize = 8;

/// Upper bound on all connections (`[p2p] max_peers`): the old TIME Coin
/// node's limit range was 8 to 50.
pub const DEFAULT_MAX_PEERS: usize = 50;

/// How often the connection manager looks at its outbound set.
pub const CONNECTION_MANAGER_TICK: Duration = Duration::from_secs(2);

/// Outbound dials the connection manager runs at once.
///
/// Bitcoin dials one at a time; four fill the target four times faster at
/// start and still cannot be used to flood anyone.
pub const MAX_CONCURRENT_DIALS: usize = 4;

/// The longest an address the connection manager dialled waits before it
/// is dialled again. The wait doubles with each failed dial since the
/// last success, from 2 s (a node whose seed was not listening yet at
/// start retries in seconds) to this cap (a dead address costs one dial a
/// minute until the book drops it as terrible). Bitcoin skips addresses
/// tried in the last 10 minutes for the first 30 selections.
pub const REDIAL_ADDRESS_AFTER_SECS: u64 = 60;

/// Mean interval of feeler connections (Bitcoin's 2 minutes): a feeler
/// dials a new-table address, completes the handshake and closes, so the
/// address moves to tried.
pub const FEELER_INTERVAL: Duration = Duration::from_secs(2 * 60);

/// Outbound peers saved at shutdown and dialled first at start (Bitcoin's
/// two block-relay anchors), so a restart cannot be steered into an
/// attacker's nodes.
pub const ANCHOR_COUNT: usize = 2;

/// Number of envelopes verified together by batch verification.
///
/// ed25519 batch verification of 64 signatures runs at about twice the
/// single-signature rate (REFERENCES.md); larger batches gain little more.
pub const SIGNATURE_BATCH_SIZE: usize = 64;

/// Mode bits that must not be set on a secret key file (group and world
/// access).
pub const KEY_FILE_FORBIDDEN_MODE_BITS: u32 = 0o077;

/// File name of the node identity key inside the data dir.
pub const NODE_KEY_FILE: &str = "node_key";

/// File name of the RPC cookie inside the data dir (bitcoind's).
pub const RPC_COOKIE_FILE: &str = ".cookie";

/// User name of the RPC cookie's credentials (bitcoind's); no configured
/// `rpc.user` may take it.
pub const RPC_COOKIE_USER: &str = "__cookie__";

/// User agent sent in `Version` messages.
pub const USER_AGENT: &str = concat!("/timed:", env!("CARGO_PKG_VERSION"), "/");

/// Most blocks one `GetBlocks` may ask for and one `Blocks` may carry.
///
/// Zebra asks for 500 block hashes per `FindBlocks`; Bitcoin Core keeps at
/// most 16 blocks in flight per peer with 1 MiB each. Our blocks are small on
/// a quiet chain (an empty block is about 200 bytes), so the byte budget
/// below is what bounds a response in practice.
pub const MAX_BLOCKS_PER_RESPONSE: usize = 500;

/// Byte budget of the blocks in one `Blocks` message.
///
/// Leaves room below [`DEFAULT_MAX_FRAME_LEN`] for the message header; a
/// single block is at most `chain::block::MAX_BLOCK_BYTES` (2 MiB) and is
/// always sent alone when it does not fit with others.
pub const MAX_BLOCKS_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Most transactions one `Mempool` message carries.
pub const MAX_MEMPOOL_RESPONSE_TXS: usize = 1_000;

/// Byte budget of the transactions in one `Mempool` message.
pub const MAX_MEMPOOL_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// How long a block's timestamp may lie ahead of the local clock.
///
/// Bitcoin allows 2 hours; our slots are short (1 to 600 s), so a larger
/// drift would let a producer claim a future slot. 15 s tolerates ordinary
/// NTP error.
pub const MAX_BLOCK_FUTURE_DRIFT_SECS: u64 = 15;

/// How often a node compares its height with its peers' when idle.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// How long one attempt of a request on one peer may take (the peer set's
/// `tower::timeout`), including waiting for a connection busy with another
/// request of ours.
///
/// The connection's own request timeout (20 s by default) is what fails a
/// slow answer and charges the peer, once; this longer deadline is never
/// charged and only keeps a caller from waiting forever on a stuck
/// connection (two request timeouts: one for the request ahead of ours, one
/// for ours).
pub const PEER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);

/// Round-trip time the peer set's balancer assumes for a peer before its
/// first answer (the default of its `tower::load::PeakEwma`).
///
/// Between a measured healthy peer (tens of milliseconds on a regional
/// link, a few hundred for a full `Blocks` answer) and a slow one: a peer
/// that just connected is tried as soon as the proven peers have requests
/// in flight (the load is the RTT times the requests in flight plus one),
/// but does not take every request from them merely by being new, which
/// would reward an attacker for reconnecting.
pub const PEER_EWMA_DEFAULT_RTT: Duration = Duration::from_millis(500);

/// How fast the balancer forgets a peer's slow answers (the decay of its
/// `tower::load::PeakEwma`: an estimate falls to 1/e of its peak after this
/// long without a slower answer).
///
/// A request timeout (20 s) stays a peak for minutes (it falls below a
/// 100 ms peer's estimate after about 30 s × ln(200) ≈ 2.6 min), so a peer
/// that stalled once is avoided for several sync rounds; shorter decays
/// (Finagle's 10 s) would send the next round straight back to it, and
/// Zebra's 200 s would keep a peer with one bad moment out for half an hour.
pub const PEER_EWMA_DECAY: Duration = Duration::from_secs(30);

/// Peers the peer set asks for one request, at most: the first and up to
/// three others after failures (a connection error or timeout). A peer that
/// failed a request is never asked it again.
pub const PEER_REQUEST_ATTEMPTS: usize = 4;

/// How often a peer may decline a request it is excluded from before the
/// request gives up. The balancer never offers an excluded peer (it is not
/// ready for that request), so a decline only follows an exclusion that
/// changed between readiness and the call; the bound keeps even that from
/// looping.
pub const PEER_REQUEST_DECLINES: usize = 4;

/// How long sync waits for one request in all: for a serving peer to be
/// connected and ready, and for up to [`PEER_REQUEST_ATTEMPTS`] attempts of
/// [`PEER_ATTEMPT_TIMEOUT`] each. Never charged to a peer.
pub const SYNC_REQUEST_DEADLINE: Duration =
    Duration::from_secs(PEER_ATTEMPT_TIMEOUT.as_secs() * PEER_REQUEST_ATTEMPTS as u64);

/// Attempts on different peers for one batch before sync waits for the next
/// round.
pub const SYNC_MAX_ATTEMPTS: usize = 4;

/// Most votes held for transactions not (yet) known, e.g. a vote that
/// overtook its transaction on another path.
pub const MAX_PENDING_VOTES: usize = 10_000;

/// Deepest fork a node switches away from (see `chain::state`).
///
/// Bitcoin has no limit; Zebra treats 99 blocks as final (its
/// `MAX_BLOCK_REORG_HEIGHT`). Our transactions are final by votes in
/// seconds, so blocks only order them: 100 blocks covers any partition an
/// operator would not notice, and bounds the work and the undo data a fork
/// can make a node replay.
pub const MAX_REORG_DEPTH: u64 = 100;

/// Transactions per second one peer's gossip is handled at before it is
/// throttled (its burst is a whole mempool, see
/// the `rate_limit` layer's `GossipScale`).
///
/// # Correctness
/// Honest load is never an offence, so this budget only paces work; it
/// must sit above what an honest peer relays in steady state. A chain with
/// 2 MiB blocks of ~250-byte transactions clears about 8,000 transactions
/// per block, i.e. ~14/s with 600 s slots and ~4,000/s with the devnet's
/// 2 s slots; a payment burst from one wallet reaches the RPC's accept rate
/// (hundreds per second). 100/s with a burst of the whole mempool (5,000 by
/// default) lets the largest honest burst through at once and paces a
/// sustained stream without losing any of it (excess waits: backpressure).
///
/// # Security
/// A transaction costs about 65 µs (envelope verify ~30 µs, validation
/// ~35 µs): 100/s from each of 64 inbound peers is ~0.4 s of one core per
/// second at worst, and `dedup` drops the copies before the verify.
pub const GOSSIP_TX_RATE: u32 = 100;

/// Gossip beyond this many times a budget is charged as an offence.
///
/// An honest peer stays within 1× (it is slowed down by backpressure before
/// it could exceed it); 10× cannot come from load, only from a peer that
/// ignores flow control and keeps sending what is dropped.
pub const GOSSIP_ABUSE_FACTOR: u32 = 10;

/// Longest a message waits for its budget before it is dropped instead.
///
/// Waiting is backpressure: the connection reads nothing meanwhile, so TCP
/// slows the sender and nothing is lost. One second covers every budget that
/// refills at least once a second (transactions, votes, blocks, sync
/// requests) and stays far below the 20 s keepalive timeout the wait also
/// delays; slower budgets (pings, address requests) drop their excess.
pub const THROTTLE_MAX_DELAY: Duration = Duration::from_secs(1);

/// Default most inbound handshakes in progress at once.
///
/// Zebra caps handshakes in flight; geth allows 50 pending. A full Noise
/// plus version exchange takes three round trips (milliseconds on a LAN,
/// well under a second across the world), so 32 pending slots let 32 honest
/// peers in at once, while a flood of stalled sockets, each evicting the
/// oldest (see `node`), must open more than 32 sockets per handshake time
/// (e.g. 3,200 per second against a 10 ms handshake) to keep one honest
/// peer out: far beyond the per-IP accept rate of any number of addresses a
/// flooder normally holds.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 32;

/// Pool announcements to newly connected peers per minute, node-wide (a
/// burst of as many).
///
/// # Security
/// A new peer gets this node's pooled transactions (up to 1,000 and 3 MiB)
/// in fresh signed envelopes: about 30 ms of signing and the bandwidth.
/// Honest peers connect a few times a minute at most (a restart, a redial
/// every 5 s or slower); 12 a minute covers a whole small network coming
/// back at once, while a stream of new identities cannot turn its cheap
/// handshakes into more than 12 × 3 MiB a minute of our sending.
pub const POOL_ANNOUNCEMENTS_PER_MINUTE: u32 = 12;

/// Default most transactions in the mempool (`[chain] mempool_max_txs`).
/// The gossip budgets of `rate_limit` are sized from it: a peer may relay a
/// whole pool's worth of transactions in one burst, since that is what an
/// honest node with a full pool does to a new peer.
pub const DEFAULT_MEMPOOL_MAX_TXS: usize = 5_000;

/// Buckets of the address book's "new" table (Bitcoin Core's addrman:
/// 1,024 buckets of 64 slots, 65,536 addresses heard of but never tried).
pub const NEW_BUCKETS: u32 = 1_024;

/// Buckets of the address book's "tried" table (Bitcoin Core: 256 of 64,
/// 16,384 addresses the node has connected to).
pub const TRIED_BUCKETS: u32 = 256;

/// Slots per address-book bucket (Bitcoin Core's 64). With the bucket
/// counts this bounds the whole book at 81,920 addresses, about 12 MiB.
pub const BUCKET_SLOTS: u32 = 64;

/// New buckets one source netgroup can reach (Bitcoin Core's 64 of
/// 1,024): a flood of addresses from one place fills at most 1/16 of the
/// new table.
pub const NEW_BUCKETS_PER_SOURCE_GROUP: u32 = 64;

/// Tried buckets one address netgroup can reach (Bitcoin Core's 8 of 256):
/// no netgroup holds more than 1/32 of the tried table.
pub const TRIED_BUCKETS_PER_GROUP: u32 = 8;

/// An address not heard of for this long is dropped (Bitcoin Core's 30
/// days).
pub const ADDRESS_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

/// Dials of a never-reached address before it is dropped (Bitcoin Core's
/// 3).
pub const ADDRESS_MAX_RETRIES: u32 = 3;

/// Failed dials since the last success, when that success is older than
/// [`ADDRESS_MIN_FAIL_SECS`], before an address is dropped (Bitcoin
/// Core's 10 in a week).
pub const ADDRESS_MAX_FAILURES: u32 = 10;

/// See [`ADDRESS_MAX_FAILURES`] (one week).
pub const ADDRESS_MIN_FAIL_SECS: u64 = 7 * 24 * 3600;
