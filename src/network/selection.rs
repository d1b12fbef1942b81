//! Which peers the node keeps: inbound eviction when inbound is full,
//! rotation of the weakest outbound peer, and the peer-quality record
//! kept in the address book (see [`super::eviction`] and
//! [`super::quality`] for the rules themselves).
//!
//! # Peer quality
//! Each address in the book carries a [`PeerQuality`]: dial successes and
//! failures, and, folded in when a connection ends, its round trip, the
//! latency of its answers to our requests, the bytes it sent, the new
//! transactions, votes and blocks it delivered first, and the offences
//! charged to it. A connected peer's quality is the stored record with the
//! live connection folded in. Quality is separate from the misbehaviour
//! score (which drives disconnects and bans): it ranks peers, it never
//! punishes one.
//!
//! # Rotation
//! Every [`ROTATION_INTERVAL`], when the outbound target is met, the
//! lowest-quality automatic outbound peer connected for at least
//! [`super::eviction::OUTBOUND_ROTATION_MIN_AGE`] is closed if its quality
//! is below [`NEUTRAL_QUALITY`] (the value of an address never tried) and
//! the book offers another address to dial: the manager then fills the
//! slot with a fresh address. A peer that does as well as an unknown one
//! stays, so honest peers are not churned.

use super::eviction::{self, EvictionCandidate, OutboundCandidate};
use super::quality::PeerQuality;
use super::*;

/// How often the weakest outbound peer is considered for rotation.
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The quality of an address with no history: an outbound peer below it
/// is worth replacing by a fresh address.
pub const NEUTRAL_QUALITY: f64 = 0.5;

/// The most offences one connection adds to a quality record (the score
/// layer deals with the rest).
const MAX_OFFENCES_FOLDED: u64 = 100;

fn elapsed_since_ms(then_ms: u64, now_ms: u64) -> Option<Duration> {
    (then_ms > 0).then(|| Duration::from_millis(now_ms.saturating_sub(then_ms)))
}

fn micros(value: u64) -> Option<Duration> {
    (value > 0).then(|| Duration::from_micros(value))
}

impl Network {
    /// The book entry a connected peer's quality is kept under: the
    /// address we dialled, or for an inbound peer the address it listens
    /// on (its IP and announced port).
    fn quality_key(info: &PeerInfo) -> Option<SocketAddr> {
        match info.direction {
            Direction::Outbound => Some(info.addr),
            Direction::Inbound => info
                .version
                .listen_addr
                .map(|l| SocketAddr::new(info.addr.ip(), l.port))
                .filter(|a| a.port() != 0),
        }
    }

    /// `stored` with the live statistics of `handle`'s connection folded
    /// in.
    fn fold(mut stored: PeerQuality, handle: &PeerHandle) -> PeerQuality {
        let stats = &handle.context.stats;
        if let Some(rtt) = micros(stats.rtt_us.load(Ordering::Relaxed)) {
            stored.record_rtt(rtt);
        }
        if let Some(latency) = micros(stats.latency_us.load(Ordering::Relaxed)) {
            stored.record_latency(latency);
        }
        stored.record_bytes(stats.bytes_in.load(Ordering::Relaxed));
        stored.first_deliveries = stored
            .first_deliveries
            .saturating_add(stats.first_deliveries.load(Ordering::Relaxed));
        let offences = stats
            .offences
            .load(Ordering::Relaxed)
            .min(MAX_OFFENCES_FOLDED);
        stored.misbehaviour = stored.misbehaviour.saturating_add(offences as u32);
        stored
    }

    /// A connected peer's quality: its stored record with the live
    /// connection folded in.
    pub fn peer_quality(&self, handle: &PeerHandle) -> PeerQuality {
        let stored = Self::quality_key(&handle.info)
            .and_then(|key| {
                crate::locks::lock(&self.inner.config.address_book)
                    .get(&key)
                    .map(|info| info.quality.clone())
            })
            .unwrap_or_default();
        Self::fold(stored, handle)
    }

    /// Folds an ended connection into its address's stored quality.
    pub(super) fn connection_ended(&self, handle: &PeerHandle) {
        let Some(key) = Self::quality_key(&handle.info) else {
            return;
        };
        let mut book = crate::locks::lock(&self.inner.config.address_book);
        if let Some(quality) = book.quality_mut(&key) {
            *quality = Self::fold(std::mem::take(quality), handle);
        }
    }

    /// Records the outcome of a dial of `addr` in its quality.
    pub(super) fn dial_outcome(&self, addr: &SocketAddr, ok: bool) {
        let mut book = crate::locks::lock(&self.inner.config.address_book);
        if let Some(quality) = book.quality_mut(addr) {
            if ok {
                quality.record_success();
            } else {
                quality.record_failure();
            }
        }
    }

    /// The key that picks the netgroups eviction protects: derived from
    /// the address book's secret, so it is stable and unknown outside.
    fn eviction_key(&self) -> [u8; 32] {
        crate::locks::lock(&self.inner.config.address_book).derived_key("timed eviction key")
    }

    /// Makes room for a new inbound peer: closes the inbound peer chosen
    /// by [`eviction::select_for_eviction`]; false when every inbound peer
    /// is protected (the new one is refused then).
    pub(super) fn evict_inbound(&self) -> bool {
        let now_ms = crate::protocol::version::unix_now().as_millis() as u64;
        let manual: HashSet<NodeId> = self
            .inner
            .config
            .peers
            .iter()
            .filter_map(|p| p.node_id)
            .collect();
        let inbound: Vec<Arc<PeerHandle>> = self
            .inner
            .peers
            .snapshot()
            .into_iter()
            .filter(|h| h.kind == ConnectionType::Inbound && !h.context.disconnect.is_cancelled())
            .collect();
        let candidates: Vec<EvictionCandidate> = {
            let book = crate::locks::lock(&self.inner.config.address_book);
            inbound
                .iter()
                .map(|h| {
                    let stats = &h.context.stats;
                    EvictionCandidate {
                        id: h.context.conn_id,
                        netgroup: book.netgroup(h.info.addr.ip()).as_bytes().to_vec(),
                        connected: Duration::from_secs(
                            (now_ms / 1000).saturating_sub(h.context.connected_unix),
                        ),
                        min_rtt: micros(stats.min_rtt_us.load(Ordering::Relaxed)),
                        last_tx: elapsed_since_ms(stats.last_tx_ms.load(Ordering::Relaxed), now_ms),
                        last_block: elapsed_since_ms(
                            stats.last_block_ms.load(Ordering::Relaxed),
                            now_ms,
                        ),
                        protected: manual.contains(&h.info.node_id),
                    }
                })
                .collect()
        };
        let Some(chosen) = eviction::select_for_eviction(&candidates, &self.eviction_key()) else {
            metrics::counter!("timed_evictions_total", "reason" => "all_protected").increment(1);
            return false;
        };
        let Some(victim) = inbound.iter().find(|h| h.context.conn_id == chosen.id) else {
            return false;
        };
        metrics::counter!("timed_evictions_total", "reason" => chosen.reason()).increment(1);
        if crate::logging::allow("inbound_eviction") {
            tracing::info!(
                evicted = %victim.info.node_id,
                evicted.addr = %victim.info.addr,
                reason = chosen.reason(),
                netgroup_size = chosen.netgroup_size,
                unprotected = chosen.unprotected,
                "inbound full: evicting a peer for a new one"
            );
        }
        victim.context.close_with(
            DisconnectReason::TooManyPeers,
            "evicted for a new inbound peer".to_owned(),
        );
        true
    }

    /// Closes the weakest automatic outbound peer when it is worse than an
    /// unknown address and the book has another address to dial (see the
    /// module docs); true if one was closed.
    pub(super) fn rotate_outbound(&self) -> bool {
        let now = crate::protocol::version::unix_now().as_secs();
        let outbound: Vec<(Arc<PeerHandle>, f64)> = self
            .inner
            .peers
            .snapshot()
            .into_iter()
            .filter(|h| h.kind.is_automatic_outbound())
            .map(|h| {
                let quality = self.peer_quality(&h).value();
                (h, quality)
            })
            .collect();
        let candidates: Vec<OutboundCandidate> = outbound
            .iter()
            .map(|(h, quality)| OutboundCandidate {
                id: h.context.conn_id,
                quality: *quality,
                connected: Duration::from_secs(now.saturating_sub(h.context.connected_unix)),
                protected: false,
            })
            .collect();
        let Some(id) = eviction::worst_outbound(&candidates) else {
            return false;
        };
        let Some((victim, quality)) = outbound.iter().find(|(h, _)| h.context.conn_id == id) else {
            return false;
        };
        if *quality >= NEUTRAL_QUALITY || self.pick(false).is_none() {
            return false;
        }
        metrics::counter!("timed_evictions_total", "reason" => "outbound_rotation").increment(1);
        tracing::info!(
            peer = %victim.info.node_id,
            peer.addr = %victim.info.addr,
            quality = *quality,
            "rotating out the weakest outbound peer"
        );
        victim.context.close(DisconnectReason::Shutdown);
        true
    }
}
