//! The connection manager: keeps the node's automatic outbound connections
//! filled from the address book, tests new addresses with feelers, dials
//! the anchors first, falls back to the seeds when the book has nothing to
//! dial, and re-announces the node's record.
//!
//! # Outbound selection
//! Every [`CONNECTION_MANAGER_TICK`] the manager counts its automatic
//! outbound connections (`outbound-full` and `anchor`, plus dials in
//! progress) and, below `target_outbound`, picks addresses from the book:
//! from the tried table or the new table with even odds, never an address
//! it is connected or dialling to, never one dialled less than 2 s
//! (doubling with each failure, at most [`REDIAL_ADDRESS_AFTER_SECS`]) ago,
//! never a banned one, never our own, and
//! **never a second one in a netgroup it already has an outbound
//! connection to**, so an attacker must hold as many netgroups as the node
//! has outbound peers to surround it. At most [`MAX_CONCURRENT_DIALS`]
//! dials run at once.
//!
//! # Feelers
//! Once the outbound target is met, every [`FEELER_INTERVAL`] (on
//! average, exponentially distributed) the manager dials one address of
//! the new table, completes the handshake and closes: the address moves
//! to tried, so the tried table keeps filling with working addresses.
//!
//! # Seeds and anchors
//! The anchors (the outbound peers saved at the last shutdown) are dialled
//! first at start. The seeds (`[p2p] seeds`, DNS names resolved each time)
//! are only used when the node has no outbound peer and the book offers
//! nothing to dial, again after 2 s, 4 s, ... at most once a minute while
//! that lasts: they fill an empty book, they are not kept connected.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::diversity::Location;
use super::*;
use crate::constants::{
    ANCHOR_COUNT, CONNECTION_MANAGER_TICK, FEELER_INTERVAL, MAX_CONCURRENT_DIALS,
    REDIAL_ADDRESS_AFTER_SECS, SELF_ANNOUNCE_INTERVAL,
};

/// Random picks the manager tries per dial before giving up for a tick:
/// enough to find the few honest addresses of a book an attacker flooded
/// (one netgroup excluded after its first dial), and still a few
/// microseconds of hashing.
const SELECTION_TRIES: usize = 256;

/// Candidates compared by location when diversity data is configured.
const DIVERSITY_CANDIDATES: usize = 8;

/// Longest time between two seed look-ups while the node has no outbound
/// peer; the first retry comes after [`SEED_RETRY_FIRST`], doubling up to
/// this.
const SEED_RETRY: Duration = Duration::from_secs(60);

/// The first delay before the seeds are used again.
const SEED_RETRY_FIRST: Duration = Duration::from_secs(2);

/// How long after its last dial an address that failed `attempts` times
/// since its last success may be dialled again: 2 s doubling per failure,
/// at most [`REDIAL_ADDRESS_AFTER_SECS`].
fn redial_wait(attempts: u32) -> u64 {
    1u64.checked_shl(attempts.min(16))
        .unwrap_or(u64::MAX)
        .min(REDIAL_ADDRESS_AFTER_SECS)
}

/// Free file descriptors below which the inbound cap shrinks: a tenth of
/// the limit, and at least 32 (what a burst of new connections, RPC calls
/// and database files may need at once).
const FD_HOT_FREE: (u64, u64) = (10, 32);
/// Free file descriptors from which a shrunk inbound cap grows back: a
/// quarter of the limit, and at least 64.
const FD_COOL_FREE: (u64, u64) = (4, 64);
/// Fill of all send queues together (bytes queued over the queues' total
/// budget) above which the inbound cap shrinks: peers are not draining
/// what we send, so more peers would only queue more.
const QUEUES_HOT: f64 = 0.5;
/// Fill below which a shrunk inbound cap grows back.
const QUEUES_COOL: f64 = 0.25;

/// What the connection manager keeps between ticks.
#[derive(Debug)]
pub(super) struct ManagerState {
    /// Addresses being dialled by the manager, with their netgroup.
    dialing: Mutex<HashMap<SocketAddr, ConnectionType>>,
    /// The inbound cap under resource pressure (`usize::MAX`: no
    /// pressure); see [`Network::update_pressure`].
    pressure_cap: AtomicUsize,
    /// Countries the peers-by-country gauge was last set for.
    countries_reported: Mutex<HashSet<String>>,
}

impl ManagerState {
    pub(super) fn new() -> Self {
        ManagerState {
            dialing: Mutex::default(),
            pressure_cap: AtomicUsize::new(usize::MAX),
            countries_reported: Mutex::default(),
        }
    }
}

/// Removes an address from the dialling set when its dial ends.
struct Dialing {
    network: Network,
    addr: SocketAddr,
}

impl Drop for Dialing {
    fn drop(&mut self) {
        crate::locks::lock(&self.network.inner.manager.dialing).remove(&self.addr);
    }
}

impl Network {
    /// The current cap on established inbound connections: the configured
    /// `max_inbound`, never more than `max_peers` minus the outbound
    /// connections, and under resource pressure the shrunk cap (see
    /// `Network::update_pressure`).
    pub fn inbound_cap(&self) -> usize {
        self.base_inbound_cap()
            .min(self.inner.manager.pressure_cap.load(Ordering::Relaxed))
    }

    fn base_inbound_cap(&self) -> usize {
        let limits = &self.inner.config.limits;
        let outbound = self.inner.outbound.load(Ordering::Relaxed);
        limits
            .max_inbound
            .min(limits.max_peers.saturating_sub(outbound))
    }

    /// The dynamic inbound limit: reads the two pressure signals, the
    /// free file descriptors under the open-file limit and the fill of all
    /// send queues together, and moves the inbound cap. When either is hot
    /// ([`FD_HOT_FREE`], [`QUEUES_HOT`]) the cap drops to a quarter below the
    /// inbound connections there are, never below `min_peers`; when both
    /// are cool ([`FD_COOL_FREE`], [`QUEUES_COOL`]) it grows back by one per
    /// tick (a quarter of itself, at least one) until it no longer binds. Established connections are not
    /// dropped: new inbound ones are refused until the count falls under
    /// the cap. Both signals and the cap are exported as metrics.
    pub(super) fn update_pressure(&self) {
        let (fd_ratio, fd_hot, fd_cool) = match crate::fds::usage() {
            Some((open, Some(limit))) if limit > 0 => {
                let free = limit.saturating_sub(open as u64);
                let floor = |(divisor, least): (u64, u64)| (limit / divisor).max(least);
                (
                    open as f64 / limit as f64,
                    free < floor(FD_HOT_FREE),
                    free >= floor(FD_COOL_FREE),
                )
            }
            _ => (0.0, false, true),
        };
        let peers = self.inner.peers.snapshot();
        let queued: usize = peers.iter().map(|h| h.queue.bytes()).sum();
        let budget = peers.len().max(1) * self.inner.config.send_queue_bytes.max(1);
        let queue_ratio = queued as f64 / budget as f64;
        metrics::gauge!("timed_pressure_ratio", "signal" => "fds").set(fd_ratio);
        metrics::gauge!("timed_pressure_ratio", "signal" => "send_queues").set(queue_ratio);
        let min = self.inner.config.limits.min_peers;
        let base = self.base_inbound_cap();
        let cap = &self.inner.manager.pressure_cap;
        let current = cap.load(Ordering::Relaxed).min(base);
        if fd_hot || queue_ratio >= QUEUES_HOT {
            let inbound = self.inner.inbound_count.load(Ordering::Relaxed);
            let shrunk = (inbound.min(current) * 3 / 4)
                .max(min)
                .min(current.max(min));
            if shrunk < current {
                tracing::warn!(
                    fd_ratio,
                    queue_ratio,
                    inbound_cap = shrunk,
                    "resource pressure: lowering the inbound cap"
                );
            }
            cap.store(shrunk, Ordering::Relaxed);
        } else if fd_cool && queue_ratio < QUEUES_COOL {
            let prev = cap.load(Ordering::Relaxed);
            if prev != usize::MAX {
                let grown = prev.saturating_add((prev / 4).max(1));
                if grown >= base {
                    tracing::info!(
                        inbound_cap = base,
                        "resource pressure gone: inbound cap restored"
                    );
                    cap.store(usize::MAX, Ordering::Relaxed);
                } else {
                    cap.store(grown, Ordering::Relaxed);
                }
            }
        }
    }

    /// The connected automatic outbound peers (`outbound-full` and
    /// `anchor`), longest connected first: the first
    /// [`ANCHOR_COUNT`] are saved as anchors at shutdown.
    pub fn anchor_candidates(&self) -> Vec<PeerTarget> {
        let mut outbound: Vec<Arc<PeerHandle>> = self
            .inner
            .peers
            .snapshot()
            .into_iter()
            .filter(|h| h.kind.is_automatic_outbound())
            .collect();
        outbound.sort_by_key(|h| h.context.connected_unix);
        outbound
            .iter()
            .take(ANCHOR_COUNT)
            .map(|h| PeerTarget {
                addr: h.info.addr,
                node_id: Some(h.info.node_id),
            })
            .collect()
    }

    /// Runs the connection manager until shutdown.
    pub(super) async fn manage(self) {
        // Counters that may stay at zero for long exist from the start, so
        // dashboards show a zero rather than no data.
        for reason in [
            "crowded_netgroup",
            "youngest",
            "all_protected",
            "outbound_rotation",
        ] {
            metrics::counter!("timed_evictions_total", "reason" => reason).increment(0);
        }
        for anchor in self.inner.config.anchors.clone() {
            self.dial_managed(anchor, ConnectionType::Anchor);
        }
        let mut ticker = tokio::time::interval(CONNECTION_MANAGER_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_feeler = Instant::now() + feeler_delay();
        let mut next_announce = Instant::now() + SELF_ANNOUNCE_INTERVAL;
        let mut next_prune = Instant::now() + SEED_RETRY;
        let mut next_rotation = Instant::now() + super::ROTATION_INTERVAL;
        let mut next_seeds = Instant::now();
        let mut seed_delay = SEED_RETRY_FIRST;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let (automatic, found) = self.fill_outbound();
            if automatic > 0 {
                seed_delay = SEED_RETRY_FIRST;
            } else if !found && Instant::now() >= next_seeds && !self.inner.config.seeds.is_empty()
            {
                next_seeds = Instant::now() + seed_delay;
                seed_delay = (seed_delay * 2).min(SEED_RETRY);
                self.use_seeds().await;
            }
            let now = Instant::now();
            if now >= next_feeler {
                next_feeler = now + feeler_delay();
                let target = self.inner.config.limits.target_outbound;
                if target > 0 && automatic >= target {
                    self.dial_feeler();
                }
            }
            if now >= next_rotation {
                next_rotation = now + super::ROTATION_INTERVAL;
                if automatic >= self.inner.config.limits.target_outbound
                    && self.inner.config.limits.target_outbound > 0
                {
                    self.rotate_outbound();
                }
            }
            if now >= next_announce {
                next_announce = now + SELF_ANNOUNCE_INTERVAL;
                self.announce_self();
            }
            if now >= next_prune {
                next_prune = now + SEED_RETRY;
                let now_secs = crate::protocol::version::unix_now().as_secs();
                let evicted =
                    crate::locks::lock(&self.inner.config.address_book).evict_terrible(now_secs);
                if evicted > 0 {
                    tracing::debug!(evicted, "terrible addresses dropped from the book");
                }
            }
            self.update_pressure();
            self.record_book_metrics();
        }
    }

    /// Starts dials toward the outbound target; returns the automatic
    /// outbound count (with dials in progress) and whether the book
    /// offered any address to dial.
    ///
    /// # Correctness
    /// At most [`MAX_CONCURRENT_DIALS`] dials start per call: a dial may
    /// end before it records its attempt (the runtime shutting down, the
    /// outbound limit), and its address would then be picked again at
    /// once, so a loop bounded only by the dials in progress could spin.
    fn fill_outbound(&self) -> (usize, bool) {
        let target = self.inner.config.limits.target_outbound;
        let mut found = false;
        for _ in 0..MAX_CONCURRENT_DIALS {
            let (automatic, dialing) = self.outbound_counts();
            if automatic >= target
                || dialing >= MAX_CONCURRENT_DIALS
                || self.inner.shutdown.is_cancelled()
            {
                return (automatic, found || automatic > 0);
            }
            let Some(pick) = self.pick(false) else {
                return (automatic, found);
            };
            found = true;
            self.dial_managed(pick, ConnectionType::OutboundFull);
        }
        let (automatic, _) = self.outbound_counts();
        (automatic, found || automatic > 0)
    }

    /// `(automatic outbound connections and dials, dials in progress)`.
    fn outbound_counts(&self) -> (usize, usize) {
        let dialing = crate::locks::lock(&self.inner.manager.dialing)
            .values()
            .filter(|k| k.is_automatic_outbound())
            .count();
        let connected = self
            .inner
            .peers
            .snapshot()
            .iter()
            .filter(|h| h.kind.is_automatic_outbound())
            .count();
        (connected + dialing, dialing)
    }

    /// An address worth dialling: from the new table only for a feeler.
    pub(super) fn pick(&self, feeler: bool) -> Option<PeerTarget> {
        let peers = self.inner.peers.snapshot();
        let own_id = self.node_id();
        let own_addr = self.announced_addr();
        let policy = self.address_policy();
        let dialing = crate::locks::lock(&self.inner.manager.dialing).clone();
        let book = crate::locks::lock(&self.inner.config.address_book);
        let mut connected_addrs: HashSet<SocketAddr> = HashSet::new();
        let mut connected_ids: HashSet<NodeId> = HashSet::new();
        let mut outbound_groups = HashSet::new();
        for h in &peers {
            connected_addrs.insert(h.info.addr);
            if let Some(listen) = h.info.version.listen_addr {
                connected_addrs.insert(SocketAddr::new(h.info.addr.ip(), listen.port));
            }
            connected_ids.insert(h.info.node_id);
            if h.info.direction == Direction::Outbound {
                outbound_groups.insert(book.netgroup(h.info.addr.ip()));
            }
        }
        for addr in dialing.keys() {
            outbound_groups.insert(book.netgroup(addr.ip()));
        }
        let now = crate::protocol::version::unix_now().as_secs();
        let wanted = |info: &address_book::AddrInfo| {
            info.node_id != Some(own_id)
                && Some(info.addr) != own_addr
                && policy.allows(&info.addr)
                && !connected_addrs.contains(&info.addr)
                && !info.node_id.is_some_and(|id| connected_ids.contains(&id))
                && !dialing.contains_key(&info.addr)
                && !outbound_groups.contains(&book.netgroup(info.addr.ip()))
                && now.saturating_sub(info.last_try) >= redial_wait(info.attempts)
                && !self.inner.blacklist.is_banned(info.addr.ip())
        };
        let mut rng = rand::thread_rng();
        if feeler {
            let info = book.select_new_where(SELECTION_TRIES, &mut rng, wanted)?;
            return Some(PeerTarget {
                addr: info.addr,
                node_id: info.node_id,
            });
        }
        // Several candidates when there is location data: the one in the
        // country and ASN with the fewest outbound peers wins.
        let diversity = &self.inner.config.diversity;
        let located = diversity.has_asn() || diversity.has_country();
        let want = if located { DIVERSITY_CANDIDATES } else { 1 };
        let mut candidates: Vec<&address_book::AddrInfo> = Vec::new();
        for _ in 0..want {
            let chosen: HashSet<SocketAddr> = candidates.iter().map(|c| c.addr).collect();
            match book.select_where(0.5, SELECTION_TRIES, &mut rng, |info| {
                !chosen.contains(&info.addr) && wanted(info)
            }) {
                Some(info) => candidates.push(info),
                None => break,
            }
        }
        let outbound: Vec<Location> = peers
            .iter()
            .filter(|h| h.info.direction == Direction::Outbound)
            .map(|h| diversity.lookup(h.info.addr.ip()))
            .collect();
        let info = least_crowded(candidates, &outbound, |ip| diversity.lookup(ip))?;
        Some(PeerTarget {
            addr: info.addr,
            node_id: info.node_id,
        })
    }

    /// Dials `target` as a connection of `kind` in its own task.
    fn dial_managed(&self, target: PeerTarget, kind: ConnectionType) {
        {
            let mut dialing = crate::locks::lock(&self.inner.manager.dialing);
            if dialing.contains_key(&target.addr) {
                return;
            }
            dialing.insert(target.addr, kind);
        }
        let guard = Dialing {
            network: self.clone(),
            addr: target.addr,
        };
        let node = self.clone();
        self.spawn("managed_connection", async move {
            let established = async {
                node.outbound(&target, kind, None).await;
            };
            // The address leaves the dialling set once the connection is
            // established or failed; the connection itself runs on.
            let watch = node.subscribe();
            tokio::pin!(established);
            let mut guard = Some(guard);
            let mut watch = watch;
            loop {
                tokio::select! {
                    _ = &mut established => break,
                    event = watch.recv() => match event {
                        Ok(NetworkEvent::Connected(info)) if info.addr == target.addr => {
                            guard.take();
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            guard.take();
                        }
                    },
                }
            }
        });
    }

    /// Dials `target` as a feeler: the connection completes the handshake
    /// (which moves the address to the tried table), then closes. The
    /// manager does this every [`FEELER_INTERVAL`] on average once its
    /// outbound target is met.
    pub fn feel(&self, target: PeerTarget) {
        self.dial_managed(target, ConnectionType::Feeler);
    }

    fn dial_feeler(&self) {
        if let Some(target) = self.pick(true) {
            tracing::debug!(peer = %target, "feeler connection");
            self.dial_managed(target, ConnectionType::Feeler);
        }
    }

    /// Resolves the seeds and adds what they resolve to to the book (as
    /// their own source), dialling them at once.
    async fn use_seeds(&self) {
        let now = crate::protocol::version::unix_now().as_secs();
        for seed in self.inner.config.seeds.clone() {
            let resolved = match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(error) => {
                    metrics::counter!("timed_seed_lookups_total", "result" => "error").increment(1);
                    if crate::logging::allow("seed_lookup") {
                        tracing::warn!(seed, %error, "cannot resolve seed");
                    }
                    continue;
                }
            };
            metrics::counter!("timed_seed_lookups_total", "result" => "ok").increment(1);
            tracing::info!(seed, addresses = resolved.len(), "using seed");
            for addr in resolved {
                if Some(addr) == self.announced_addr() {
                    continue;
                }
                crate::locks::lock(&self.inner.config.address_book).add(
                    addr,
                    None,
                    0,
                    addr.ip(),
                    now,
                );
                self.dial_managed(
                    PeerTarget {
                        addr,
                        node_id: None,
                    },
                    ConnectionType::OutboundFull,
                );
            }
        }
    }

    fn record_book_metrics(&self) {
        // Without databases every peer is in country "unknown" and no ASN
        // is known: the gauges say so rather than vanish.
        let diversity = &self.inner.config.diversity;
        {
            let mut countries: HashMap<String, usize> = HashMap::new();
            let mut asns = HashSet::new();
            for h in self.inner.peers.snapshot() {
                let here = diversity.lookup(h.info.addr.ip());
                *countries
                    .entry(here.country.unwrap_or_else(|| "unknown".to_owned()))
                    .or_default() += 1;
                asns.extend(here.asn);
            }
            let mut reported = crate::locks::lock(&self.inner.manager.countries_reported);
            for country in reported.iter() {
                if !countries.contains_key(country) {
                    metrics::gauge!("timed_peers_by_country", "country" => country.clone())
                        .set(0.0);
                }
            }
            for (country, n) in &countries {
                metrics::gauge!("timed_peers_by_country", "country" => country.clone())
                    .set(*n as f64);
            }
            *reported = countries.into_keys().collect();
            metrics::gauge!("timed_peer_asns").set(asns.len() as f64);
        }
        let (new, tried) = crate::locks::lock(&self.inner.config.address_book).sizes();
        metrics::gauge!("timed_address_book_entries", "table" => "new").set(new as f64);
        metrics::gauge!("timed_address_book_entries", "table" => "tried").set(tried as f64);
        metrics::gauge!("timed_inbound_cap").set(self.inbound_cap() as f64);
    }
}

/// Of `candidates`, the one whose ASN and then country the fewest of the
/// `outbound` peers share (`lookup` places an address); the first of equals,
/// so without location data the choice stays the book's random pick.
fn least_crowded<'a>(
    candidates: Vec<&'a address_book::AddrInfo>,
    outbound: &[Location],
    lookup: impl Fn(std::net::IpAddr) -> Location,
) -> Option<&'a address_book::AddrInfo> {
    let crowding = |info: &address_book::AddrInfo| {
        let here = lookup(info.addr.ip());
        let same_asn = outbound
            .iter()
            .filter(|l| l.asn.is_some() && l.asn == here.asn)
            .count();
        let same_country = outbound
            .iter()
            .filter(|l| l.country.is_some() && l.country == here.country)
            .count();
        (same_asn, same_country)
    };
    candidates.into_iter().min_by_key(|c| crowding(c))
}

/// An exponentially distributed delay of mean [`FEELER_INTERVAL`] (a
/// Poisson process, as Bitcoin's), at most four times the mean.
fn feeler_delay() -> Duration {
    let u: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
    FEELER_INTERVAL.mul_f64((-u.ln()).min(4.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(addr: &str) -> address_book::AddrInfo {
        let mut book = address_book::AddressBook::default();
        let addr: SocketAddr = addr.parse().unwrap();
        book.add(addr, None, 0, addr.ip(), 1);
        book.get(&addr).unwrap().clone()
    }

    fn at(country: &str, asn: u32) -> Location {
        Location {
            country: Some(country.to_owned()),
            asn: Some(asn),
        }
    }

    /// 1.0.0.1 is in a crowded ASN, 2.0.0.1 shares only a crowded country,
    /// 3.0.0.1 neither: the least crowded wins; ASN before country.
    #[test]
    fn redials_back_off_from_two_seconds_to_the_cap() {
        let waits: Vec<u64> = (0..9).map(redial_wait).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(redial_wait(u32::MAX), REDIAL_ADDRESS_AFTER_SECS);
    }

    #[test]
    fn outbound_choice_prefers_the_least_crowded_asn_then_country() {
        let lookup = |ip: std::net::IpAddr| match ip.to_string().as_str() {
            "1.0.0.1" => at("US", 1),
            "2.0.0.1" => at("US", 2),
            "3.0.0.1" => at("NL", 3),
            _ => Location::default(),
        };
        let (a, b, c) = (info("1.0.0.1:1"), info("2.0.0.1:1"), info("3.0.0.1:1"));
        let outbound = vec![at("US", 1), at("US", 1), at("US", 9)];
        let pick = |cands: Vec<&address_book::AddrInfo>| {
            least_crowded(cands, &outbound, lookup).map(|i| i.addr.ip().to_string())
        };
        assert_eq!(pick(vec![&a, &b, &c]).as_deref(), Some("3.0.0.1"));
        assert_eq!(pick(vec![&a, &b]).as_deref(), Some("2.0.0.1"));
        assert_eq!(pick(vec![&a]).as_deref(), Some("1.0.0.1"));
        assert_eq!(pick(vec![]), None);
        // Without location data the first (the book's random pick) stays.
        let none = |_| Location::default();
        let first = least_crowded(vec![&b, &a], &outbound, none).unwrap();
        assert_eq!(first.addr, b.addr);
    }
}
