//! Peer exchange: signed records of where nodes listen, asked for with
//! `GetPeers`, announced and relayed as `Address` envelopes.
//!
//! * **Self-announcement.** A node signs a record of its announced listen
//!   address (see [`crate::protocol::record`]) and sends it to every peer
//!   right after admission, and a freshly signed one to all peers every
//!   [`crate::constants::SELF_ANNOUNCE_INTERVAL`].
//! * **Relay.** A record that is new to the book and younger than
//!   [`RECORD_RELAY_MAX_AGE_SECS`] is relayed to [`RECORD_RELAY_FANOUT`]
//!   random peers (never to its sender or its node), like Bitcoin's addr
//!   relay; the `rate_limit` layer's `addr` budget bounds what each peer
//!   may send, and `dedup` drops copies.
//! * **`GetPeers`.** A node asks each of its outbound peers once, right
//!   after the handshake, and answers each connection at most once, from a
//!   cache ([`PexCache`]) of at most [`PEX_MAX_SHARE_PERCENT`]% of its book
//!   (at least [`PEX_MIN_ANSWER`] records of a small book, at most
//!   [`MAX_PEER_ADDRESSES`]), rebuilt every [`PEX_CACHE_TTL`] or when the
//!   book has doubled since: every asker of one period gets the same
//!   sample, so reconnecting does not scrape the table.
//!
//! # Security
//! Every record is checked by [`record::open`]: a bad signature is charged
//! `invalid_signature`, a malformed record or one from the far future
//! `malformed` (see [`RecordError::is_charged`]), and a `Peers` answer
//! holding any such record is dropped whole; a record only a little ahead
//! of our clock is skipped free. A repeated `GetPeers` on one connection gets no answer (a node
//! asks once per connection), and a flood of them meets the `rate_limit`
//! layer's abuse budget like any other kind; a `Peers` message that
//! answers no request is charged `protocol_violation` by the router like
//! any unsolicited answer. Addresses the local policy cannot use
//! (loopback or private ranges on a public node, our own address) are
//! dropped without a charge, since honest relays may hold other policies.
//! What a record may do to the book is bounded by the book itself: one
//! source netgroup reaches a bounded number of new buckets.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rand::seq::SliceRandom;
use tower::{BoxError, Service};

use super::{Network, WeakNetwork};
use crate::constants::{
    MAX_PEER_ADDRESSES, PEX_CACHE_TTL, PEX_MAX_SHARE_PERCENT, PEX_MIN_ANSWER, RECORD_RELAY_FANOUT,
    RECORD_RELAY_MAX_AGE_SECS,
};
use crate::crypto::NodeId;
use crate::peer::set::PeerHandle;
use crate::peer::{Inbound, Offence, Outcome, Rejection};
use crate::protocol::record::{self, OpenedRecord, RecordError};
use crate::protocol::{Envelope, GossipKind, Message};
use tokio::time::Instant;

/// How long our signed record is reused before it is signed again: half
/// the relay freshness window, so the record a new peer gets is always
/// fresh enough to be relayed and to pass an `auth` layer's age check.
const OWN_RECORD_REFRESH: std::time::Duration =
    std::time::Duration::from_secs(RECORD_RELAY_MAX_AGE_SECS / 2);

/// The name of the peer-exchange handler in rejections and metrics.
pub const NAME: &str = "pex";

/// The sample `GetPeers` is answered from.
#[derive(Debug)]
pub struct PexCache {
    records: Vec<Envelope>,
    built: Instant,
    book_len: usize,
}

/// Peer-exchange state of the network.
#[derive(Debug, Default)]
pub(super) struct PexState {
    cache: Mutex<Option<PexCache>>,
    /// Connections whose `GetPeers` was answered.
    answered: Mutex<HashSet<u64>>,
    /// Our own current record and when it was signed.
    own: Mutex<Option<(Envelope, Instant)>>,
}

impl PexState {
    /// Forgets a closed connection.
    pub(super) fn closed(&self, conn_id: u64) {
        crate::locks::lock(&self.answered).remove(&conn_id);
    }
}

/// Which addresses the node can use, by range: a node listening on a
/// loopback address also takes loopback, private and public addresses; on
/// a private address, private and public ones; otherwise only public
/// (globally routable) ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    loopback: bool,
    private: bool,
}

impl AddressPolicy {
    /// The policy of a node listening on `listen`.
    pub fn for_listen(listen: IpAddr) -> Self {
        let (loopback, private) = match class(listen) {
            Class::Loopback => (true, true),
            Class::Private => (false, true),
            Class::Public | Class::Unusable => (false, false),
        };
        AddressPolicy { loopback, private }
    }

    /// Whether the node can use `addr`.
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        if record::is_unusable(addr) {
            return false;
        }
        match class(addr.ip()) {
            Class::Loopback => self.loopback,
            Class::Private => self.private,
            Class::Public => true,
            Class::Unusable => false,
        }
    }
}

enum Class {
    Loopback,
    Private,
    Public,
    Unusable,
}

fn class(ip: IpAddr) -> Class {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Class::Loopback
            } else if v4.is_private()
                || v4.is_link_local()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
            {
                // RFC 1918, link-local and carrier-grade NAT (100.64/10).
                Class::Private
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 0
                || v4.octets()[0] >= 240
            {
                Class::Unusable
            } else {
                Class::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Class::Loopback
            } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                // Unique local (fc00::/7) and link-local (fe80::/10).
                Class::Private
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || first == 0x2001 && v6.segments()[1] == 0x0db8
            {
                Class::Unusable
            } else {
                Class::Public
            }
        }
    }
}

/// Unix time in seconds and milliseconds.
fn now() -> (u64, u64) {
    let now = crate::protocol::version::unix_now();
    (now.as_secs(), now.as_millis() as u64)
}

impl Network {
    /// Our current signed record, re-signed when older than
    /// `OWN_RECORD_REFRESH` (so a new peer's `auth` layer, which drops
    /// envelopes older than 10 minutes, never finds it stale); `None` when
    /// the node announces no usable listen address.
    pub fn own_record(&self) -> Option<Envelope> {
        let listen = self.announced_addr()?;
        if record::is_unusable(&listen) {
            return None;
        }
        let mut own = crate::locks::lock(&self.inner.pex.own);
        if let Some((envelope, signed)) = own.as_ref() {
            if signed.elapsed() < OWN_RECORD_REFRESH {
                return Some(envelope.clone());
            }
        }
        let envelope = record::sign(
            &self.inner.identity,
            self.magic(),
            &[listen],
            self.inner.config.handshake.version.capabilities,
            now().1,
        );
        *own = Some((envelope.clone(), Instant::now()));
        Some(envelope)
    }

    /// The network magic.
    pub(super) fn magic(&self) -> [u8; 4] {
        self.inner.config.handshake.version.network.magic()
    }

    /// The policy deciding which announced addresses this node keeps.
    pub fn address_policy(&self) -> AddressPolicy {
        AddressPolicy::for_listen(self.inner.config.listen.ip())
    }

    /// Sends our record to a newly admitted peer and, for an outbound
    /// peer, asks it for its records once.
    pub(super) fn exchange_on_connect(&self, handle: &Arc<PeerHandle>, ask: bool) {
        if let Some(own) = self.own_record() {
            handle.send(&Message::Gossip(own));
            metrics::counter!("timed_pex_messages_total", "kind" => "announce", "direction" => "sent").increment(1);
        }
        if !ask {
            return;
        }
        let network = self.downgrade();
        let handle = handle.clone();
        self.spawn("get_peers", async move {
            metrics::counter!("timed_pex_messages_total", "kind" => "get_peers", "direction" => "sent").increment(1);
            let request = tower::ServiceExt::oneshot(
                handle.client.clone(),
                crate::peer::client::Request::GetPeers,
            );
            let Ok(crate::peer::client::Response::Peers(records)) = request.await else {
                return;
            };
            if let Some(network) = network.upgrade() {
                network.take_peers(&handle, records).await;
            }
        });
    }

    /// Checks a `Peers` answer from `peer` and adds its records to the
    /// book; a bad record costs the peer one charge and the whole answer.
    pub(super) async fn take_peers(&self, peer: &Arc<PeerHandle>, records: Vec<Envelope>) {
        metrics::counter!("timed_pex_messages_total", "kind" => "peers", "direction" => "received")
            .increment(1);
        let magic = self.magic();
        let checked = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Envelope> = records.iter().collect();
            let signatures = crate::protocol::verify_batch(&refs, magic);
            let now_ms = now().1;
            let opened: Vec<Result<OpenedRecord, RecordError>> = records
                .iter()
                .zip(signatures)
                .map(|(envelope, signature)| {
                    signature?;
                    record::open_verified(envelope, now_ms)
                })
                .collect();
            (records, opened)
        })
        .await;
        let Ok((records, opened)) = checked else {
            return;
        };
        let mut kept_records = Vec::with_capacity(records.len());
        let mut kept = Vec::with_capacity(records.len());
        for (envelope, result) in records.into_iter().zip(opened) {
            match result {
                Ok(opened) => {
                    kept_records.push(envelope);
                    kept.push(opened);
                }
                Err(error) => {
                    self.refused_record(&peer.context.node_id, peer.context.addr, &error);
                    if error.is_charged() {
                        // One bad record: the whole answer is untrusted.
                        self.penalize_peer(&peer.context, offence_of(&error));
                        return;
                    }
                }
            }
        }
        let added = self.add_records(peer.context.addr.ip(), &kept_records, &kept);
        tracing::debug!(peer = %peer.context.node_id, records = kept.len(), added, "peer records received");
    }

    /// Adds checked records to the book; returns how many addresses were
    /// new or refreshed.
    fn add_records(&self, source: IpAddr, records: &[Envelope], opened: &[OpenedRecord]) -> usize {
        let policy = self.address_policy();
        let own_id = self.node_id();
        let own_addr = self.announced_addr();
        let now = now().0;
        let mut book = crate::locks::lock(&self.inner.config.address_book);
        let mut added = 0;
        for (envelope, opened) in records.iter().zip(opened) {
            if opened.node_id == own_id {
                continue;
            }
            added += book.add_record(opened, envelope, source, now, |addr| {
                policy.allows(addr) && Some(*addr) != own_addr
            });
        }
        added
    }

    /// The listen address this node announces, if any.
    pub(super) fn announced_addr(&self) -> Option<SocketAddr> {
        self.inner
            .config
            .handshake
            .version
            .listen_addr
            .map(SocketAddr::from)
    }

    fn refused_record(&self, node: &NodeId, addr: SocketAddr, error: &RecordError) {
        metrics::counter!("timed_pex_records_refused_total", "reason" => error.kind()).increment(1);
        if crate::logging::allow_for("peer_record_refused", error.kind()) {
            tracing::info!(peer = %node, peer.addr = %addr, reason = error.kind(), %error, "peer record refused");
        }
    }

    /// Signs a fresh record and sends it to every peer (the periodic
    /// self-announcement).
    pub(super) fn announce_self(&self) {
        *crate::locks::lock(&self.inner.pex.own) = None;
        if let Some(own) = self.own_record() {
            let sent = self.inner.peers.broadcast(&Message::Gossip(own), None);
            metrics::counter!("timed_pex_messages_total", "kind" => "announce", "direction" => "sent").increment(sent as u64);
        }
    }

    /// The records a `GetPeers` from `asker` is answered with.
    fn answer(&self, asker: &NodeId) -> Vec<Envelope> {
        let book_len = crate::locks::lock(&self.inner.config.address_book).len();
        let mut cache = crate::locks::lock(&self.inner.pex.cache);
        let stale = cache.as_ref().is_none_or(|c| {
            c.built.elapsed() >= PEX_CACHE_TTL || book_len >= 2 * c.book_len.max(1)
        });
        if stale {
            let count = (book_len * PEX_MAX_SHARE_PERCENT / 100)
                .max(book_len.min(PEX_MIN_ANSWER))
                .min(MAX_PEER_ADDRESSES);
            let records = crate::locks::lock(&self.inner.config.address_book)
                .sample_records(count, &mut rand::thread_rng());
            *cache = Some(PexCache {
                records,
                built: Instant::now(),
                book_len,
            });
        }
        let own = self.own_record();
        cache
            .as_ref()
            .map(|c| {
                c.records
                    .iter()
                    .filter(|r| r.originator_id().as_ref() != Some(asker))
                    .cloned()
                    .chain(own)
                    .take(MAX_PEER_ADDRESSES)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Handles a verified `Address` envelope from `request`'s peer.
    fn take_announcement(
        &self,
        request: &Inbound,
        envelope: &Envelope,
    ) -> Result<Outcome, BoxError> {
        let peer = &request.peer;
        metrics::counter!("timed_pex_messages_total", "kind" => "announce", "direction" => "received").increment(1);
        let (now_secs, now_ms) = now();
        let opened = match record::open_verified(envelope, now_ms) {
            Ok(opened) => opened,
            Err(error) => {
                self.refused_record(&peer.node_id, peer.addr, &error);
                if !error.is_charged() {
                    return Err(Rejection::benign(NAME, error.kind()).into());
                }
                return Err(Rejection::offence(NAME, error.kind(), offence_of(&error)).into());
            }
        };
        let added = self.add_records(
            peer.addr.ip(),
            std::slice::from_ref(envelope),
            std::slice::from_ref(&opened),
        );
        let fresh = now_secs.saturating_sub(opened.timestamp_ms / 1000) < RECORD_RELAY_MAX_AGE_SECS;
        if added > 0 && fresh {
            self.relay_record(envelope, &[peer.node_id, opened.node_id]);
        }
        Ok(Outcome::Handled)
    }

    /// Sends `envelope` to [`RECORD_RELAY_FANOUT`] random peers not in
    /// `except`.
    fn relay_record(&self, envelope: &Envelope, except: &[NodeId]) {
        let mut peers: Vec<Arc<PeerHandle>> = self
            .inner
            .peers
            .snapshot()
            .into_iter()
            .filter(|h| !except.contains(&h.info.node_id))
            .collect();
        peers.shuffle(&mut rand::thread_rng());
        let message = Message::Gossip(envelope.clone());
        for handle in peers.iter().take(RECORD_RELAY_FANOUT) {
            handle.send(&message);
        }
        metrics::counter!("timed_pex_messages_total", "kind" => "relay", "direction" => "sent")
            .increment(peers.len().min(RECORD_RELAY_FANOUT) as u64);
    }

    /// The handler of `GetPeers` and `Address` envelopes, for the router.
    pub fn pex_handler(&self) -> PexHandler {
        PexHandler {
            network: self.downgrade(),
        }
    }
}

/// The offence of the peer that sent a record refused with `error`.
fn offence_of(error: &RecordError) -> Offence {
    if error.is_signature() {
        Offence::InvalidSignature
    } else {
        Offence::Malformed
    }
}

/// Answers `GetPeers` (once per connection) and takes `Address` envelopes
/// (signed peer records) into the address book.
#[derive(Clone, Debug)]
pub struct PexHandler {
    network: WeakNetwork,
}

impl Service<Inbound> for PexHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        metrics::counter!("timed_handler_messages_total", "handler" => NAME).increment(1);
        let Some(network) = self.network.upgrade() else {
            return std::future::ready(Ok(Outcome::Handled));
        };
        let result = match &*request.message {
            Message::GetPeers => {
                metrics::counter!("timed_pex_messages_total", "kind" => "get_peers", "direction" => "received").increment(1);
                let first =
                    crate::locks::lock(&network.inner.pex.answered).insert(request.peer.conn_id);
                if first {
                    let records = network.answer(&request.peer.node_id);
                    metrics::counter!("timed_pex_messages_total", "kind" => "peers", "direction" => "sent").increment(1);
                    Ok(Outcome::Reply(Message::Peers(records)))
                } else {
                    // Bitcoin's rule: one answer per connection; a repeat
                    // goes unanswered. Floods meet the rate limit's abuse
                    // budget like any other kind.
                    Err(Rejection {
                        layer: NAME,
                        reason: "already_answered",
                        offence: None,
                    }
                    .into())
                }
            }
            Message::Gossip(gossip) if gossip.kind == GossipKind::Address => {
                match request.verified_envelope() {
                    Some(envelope) => network.take_announcement(&request, envelope),
                    // The router verifies every envelope before a handler
                    // sees it; an unverified one is refused, not trusted.
                    None => Err(
                        Rejection::offence(NAME, "unverified", Offence::InvalidSignature).into(),
                    ),
                }
            }
            _ => Err(
                Rejection::offence(NAME, "unexpected_message", Offence::ProtocolViolation).into(),
            ),
        };
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(listen: &str, addr: &str) -> bool {
        AddressPolicy::for_listen(listen.parse().unwrap()).allows(&addr.parse().unwrap())
    }

    #[test]
    fn the_address_policy_follows_the_listen_address() {
        // A loopback node (tests, devnets) takes everything usable.
        assert!(allows("127.0.0.1", "127.0.5.9:24100"));
        assert!(allows("127.0.0.1", "10.0.0.1:24100"));
        assert!(allows("127.0.0.1", "8.8.8.8:24100"));
        // A private node takes private and public addresses.
        assert!(!allows("10.0.0.2", "127.0.0.1:24100"));
        assert!(allows("10.0.0.2", "192.168.1.1:24100"));
        // A public node (or one on 0.0.0.0) only public ones.
        assert!(!allows("0.0.0.0", "127.0.0.1:24100"));
        assert!(!allows("0.0.0.0", "172.16.0.1:24100"));
        assert!(!allows("0.0.0.0", "100.64.0.1:24100"));
        assert!(!allows("0.0.0.0", "[fd00::1]:24100"));
        assert!(allows("0.0.0.0", "1.1.1.1:24100"));
        assert!(allows("0.0.0.0", "[2a00:1450::1]:24100"));
        // Never port 0, documentation, multicast or reserved ranges.
        for bad in [
            "1.1.1.1:0",
            "192.0.2.1:1",
            "240.0.0.1:1",
            "[2001:db8::1]:1",
            "224.0.0.1:1",
        ] {
            assert!(!allows("127.0.0.1", bad), "{bad}");
        }
    }
}
