//! Which peer to drop when the node is full: the inbound peer a new
//! inbound connection evicts, and the outbound peer to rotate out.
//!
//! Pure functions over snapshots of the connected peers; the network
//! builds the candidates and closes the chosen connection.
//!
//! # Inbound eviction
//! [`select_for_eviction`] sets aside operator-configured peers
//! ([`EvictionCandidate::protected`]), then protects, in order:
//! 1. one peer from each of [`PROTECT_BY_NETGROUP`] distinct netgroups,
//!    chosen by a keyed hash of the netgroup under a per-node secret;
//! 2. the [`PROTECT_BY_RTT`] peers with the lowest round trip;
//! 3. the [`PROTECT_BY_TX`] peers that most recently delivered a new
//!    transaction;
//! 4. the [`PROTECT_BY_BLOCK`] peers that most recently delivered a new
//!    block;
//! 5. the longest-connected half of those left (rounded up, see
//!    [`PROTECT_BY_UPTIME_DIVISOR`]).
//!
//! Among the peers no rule protected, it finds the netgroup with the most
//! of them (ties: the netgroup whose youngest member is youngest) and
//! evicts that netgroup's youngest peer. Ties within a rule go to the
//! longer-connected peer, then to the lower connection id, so the choice
//! does not depend on the order of the candidates.
//!
//! A rule protects only peers that showed the property it rewards: a peer
//! never pinged is not protected for its latency, one that never delivered
//! a new transaction is not protected for transactions.
//!
//! # Security
//! An attacker that holds many inbound connections cannot use eviction to
//! push out every honest peer: an honest peer is safe as soon as it beats
//! every attacker connection on one protected dimension, and to evict it
//! the attacker would have to beat it on all of them at once:
//! * **netgroup**: the protected netgroups are chosen by a keyed hash
//!   under a secret of this node, so the attacker cannot tell which
//!   netgroups to take addresses in, and since one peer per netgroup is
//!   protected, many connections from one netgroup win one slot at most;
//! * **round trip**: lowering it means moving machines closer to this
//!   node, and a reply cannot be sent before the ping arrives;
//! * **new transactions and blocks**: winning these means being the first
//!   to deliver valid data this node did not have, that is, doing the
//!   useful work the connection slot exists for;
//! * **uptime**: an attack that starts after the honest peers connected
//!   cannot win it.
//!
//! The evicted peer comes from the netgroup holding the most unprotected
//! connections, so an attacker that concentrates its connections in a few
//! netgroups evicts its own connections first.
//!
//! # Differences from Bitcoin Core
//! The order and counts follow Bitcoin Core's `SelectNodeToEvict`; where
//! they differ:
//! * Bitcoin protects the 4 *peers* with the highest keyed netgroup,
//!   which may share a netgroup; we protect one peer from each of 4
//!   *distinct* netgroups (its longest-connected one), so crowding a
//!   netgroup earns nothing. The key is a caller-held 32-byte secret
//!   (BLAKE3 keyed hash) rather than SipHash under a per-process key.
//! * Bitcoin sorts never-measured peers last but still protects them when
//!   few candidates remain; we protect only measured peers.
//! * Bitcoin breaks ties by its "relays transactions", bloom-filter and
//!   service flags, and protects up to 8 block-relay-only peers that
//!   delivered blocks; our protocol has no such flags nor block-relay-only
//!   connections, so ties go to uptime, then connection id.
//! * TIME has instant finality: a transaction is final by votes long
//!   before a block records it, so a new transaction is the most frequent
//!   sign of useful work; blocks keep their own rule as the second one.
//! * Bitcoin reserves part of the uptime half for onion, I2P, CJDNS and
//!   localhost peers, whose higher latency loses the round-trip rule; our
//!   transport runs over TCP/IP only, so the uptime half is by uptime
//!   alone. It rounds up where Bitcoin rounds down: a lone peer left after
//!   the other rules is kept and the new connection is refused instead.
//! * Bitcoin first restricts the choice to peers marked "prefer evict"
//!   (discouraged peers); we have no such mark: a misbehaving peer is
//!   disconnected and banned by the scoring layer instead.
//!
//! # Outbound rotation
//! [`worst_outbound`] names the lowest-quality outbound peer connected for
//! at least [`OUTBOUND_ROTATION_MIN_AGE`], for a periodic rotation that
//! replaces it with a fresh address. Bitcoin Core has no quality score: it
//! drops outbound peers that fall behind its best chain and, when it has
//! one outbound peer too many, the one whose last new block is oldest.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

/// Distinct netgroups with one protected peer each. Bitcoin Core's 4: few
/// enough that the rules after it still decide most protections, enough
/// that an attacker must guess several secret-chosen netgroups.
pub const PROTECT_BY_NETGROUP: usize = 4;

/// Peers protected for the lowest round trip. Bitcoin Core's 8: latency
/// cannot be faked downwards, so it is the largest of the rules.
pub const PROTECT_BY_RTT: usize = 8;

/// Peers protected for the most recent new transaction. Bitcoin Core's 4:
/// with instant finality, transactions are the most frequent useful work a
/// peer does for us.
pub const PROTECT_BY_TX: usize = 4;

/// Peers protected for the most recent new block. Bitcoin Core's 4: the
/// peers that keep this node on the tip are worth keeping.
pub const PROTECT_BY_BLOCK: usize = 4;

/// The longest-connected `1 / PROTECT_BY_UPTIME_DIVISOR` of the peers left
/// (rounded up) is protected. Bitcoin Core's half: it keeps the behaviour
/// of a node without eviction for established peers, so an attack that
/// starts later cannot displace them.
pub const PROTECT_BY_UPTIME_DIVISOR: usize = 2;

/// An outbound peer is rotated out only after this long. Ten minutes gives
/// a new peer time to answer pings and deliver transactions and a block
/// before its quality is judged, and bounds rotation churn.
pub const OUTBOUND_ROTATION_MIN_AGE: Duration = Duration::from_secs(10 * 60);

/// An inbound peer, as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictionCandidate {
    /// The connection id.
    pub id: u64,
    /// Opaque netgroup key: equal bytes are the same netgroup.
    pub netgroup: Vec<u8>,
    /// How long it has been connected.
    pub connected: Duration,
    /// The best ping round trip seen, if it was ever pinged.
    pub min_rtt: Option<Duration>,
    /// How long ago it last delivered a new transaction (`None`: never).
    pub last_tx: Option<Duration>,
    /// How long ago it last delivered a new block (`None`: never).
    pub last_block: Option<Duration>,
    /// An operator-configured peer: never evicted.
    pub protected: bool,
}

/// The peer to evict and what led to it (for logs and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The connection to close.
    pub id: u64,
    /// How many unprotected peers its netgroup had, the evicted one
    /// included.
    pub netgroup_size: usize,
    /// How many peers no rule protected.
    pub unprotected: usize,
}

impl Eviction {
    /// A metrics label: `crowded_netgroup` when the evicted peer shared its
    /// netgroup with another unprotected peer, `youngest` when every
    /// unprotected peer had a netgroup of its own.
    pub fn reason(&self) -> &'static str {
        if self.netgroup_size > 1 {
            "crowded_netgroup"
        } else {
            "youngest"
        }
    }
}

/// The inbound peer a new inbound connection evicts, or `None` when every
/// candidate is protected (the new connection is then refused). `key` is
/// a per-node secret that picks the protected netgroups; it must stay the
/// same across calls, so that the same netgroups stay protected whatever
/// connections an attacker makes and drops. A fresh random choice at each
/// eviction would not do: an attacker that reconnects after every eviction
/// would in time see each honest netgroup go unprotected once.
pub fn select_for_eviction(candidates: &[EvictionCandidate], key: &[u8; 32]) -> Option<Eviction> {
    let left = sort_out(candidates, key, |_, _| {});
    let mut groups: BTreeMap<&[u8], (usize, &EvictionCandidate)> = BTreeMap::new();
    for &candidate in &left {
        groups
            .entry(candidate.netgroup.as_slice())
            .and_modify(|(size, youngest)| {
                *size += 1;
                if younger(candidate, youngest) == Ordering::Less {
                    *youngest = candidate;
                }
            })
            .or_insert((1, candidate));
    }
    let (size, victim) = groups.into_values().min_by(|(a_size, a), (b_size, b)| {
        // Most members first, then the group whose youngest member is
        // youngest.
        b_size.cmp(a_size).then_with(|| younger(a, b))
    })?;
    Some(Eviction {
        id: victim.id,
        netgroup_size: size,
        unprotected: left.len(),
    })
}

/// What kept a candidate from eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Protection {
    /// Operator-configured.
    Manual,
    /// The oldest peer of a secret-chosen netgroup.
    Netgroup,
    /// Among the lowest round trips.
    Rtt,
    /// Among the most recent new transactions.
    Tx,
    /// Among the most recent new blocks.
    Block,
    /// In the longest-connected share.
    Uptime,
}

/// Applies the protection rules in order, telling `protected` about each
/// protected candidate and the rule that protected it; returns the
/// candidates no rule protected.
fn sort_out<'a>(
    candidates: &'a [EvictionCandidate],
    key: &[u8; 32],
    mut protected: impl FnMut(&'a EvictionCandidate, Protection),
) -> Vec<&'a EvictionCandidate> {
    let (manual, mut left): (Vec<&EvictionCandidate>, Vec<&EvictionCandidate>) =
        candidates.iter().partition(|c| c.protected);
    for c in manual {
        protected(c, Protection::Manual);
    }
    for c in protect_netgroups(&mut left, key, PROTECT_BY_NETGROUP) {
        protected(c, Protection::Netgroup);
    }
    for c in protect_lowest(&mut left, PROTECT_BY_RTT, |c| c.min_rtt) {
        protected(c, Protection::Rtt);
    }
    for c in protect_lowest(&mut left, PROTECT_BY_TX, |c| c.last_tx) {
        protected(c, Protection::Tx);
    }
    for c in protect_lowest(&mut left, PROTECT_BY_BLOCK, |c| c.last_block) {
        protected(c, Protection::Block);
    }
    for c in protect_longest_connected(&mut left) {
        protected(c, Protection::Uptime);
    }
    left
}

/// Orders younger (shorter-connected, then higher connection id) first.
fn younger(a: &EvictionCandidate, b: &EvictionCandidate) -> Ordering {
    a.connected.cmp(&b.connected).then_with(|| b.id.cmp(&a.id))
}

/// Orders older (longer-connected, then lower connection id) first: the
/// tie-break of every protection rule.
fn older(a: &EvictionCandidate, b: &EvictionCandidate) -> Ordering {
    younger(b, a)
}

/// The keyed hash that ranks netgroups.
fn netgroup_rank(key: &[u8; 32], netgroup: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key, netgroup).as_bytes()
}

/// Removes from `left` and returns the longest-connected peer of each of
/// the `groups` netgroups with the highest keyed hash.
fn protect_netgroups<'a>(
    left: &mut Vec<&'a EvictionCandidate>,
    key: &[u8; 32],
    groups: usize,
) -> Vec<&'a EvictionCandidate> {
    let mut ranked: Vec<([u8; 32], &EvictionCandidate)> = left
        .iter()
        .map(|&c| (netgroup_rank(key, &c.netgroup), c))
        .collect();
    ranked.sort_by(|(ha, a), (hb, b)| {
        hb.cmp(ha)
            .then_with(|| a.netgroup.cmp(&b.netgroup))
            .then_with(|| older(a, b))
    });
    let mut chosen: Vec<&EvictionCandidate> = Vec::with_capacity(groups);
    for (_, candidate) in ranked {
        if chosen.len() == groups {
            break;
        }
        // Sorted by netgroup: the first of each netgroup is its oldest.
        if chosen
            .last()
            .is_none_or(|last| last.netgroup != candidate.netgroup)
        {
            chosen.push(candidate);
        }
    }
    left.retain(|c| !chosen.iter().any(|p| std::ptr::eq(*p, *c)));
    chosen
}

/// Removes from `left` and returns the `k` peers with the smallest
/// measured `metric` (peers without a measurement are never protected by
/// it).
fn protect_lowest<'a>(
    left: &mut Vec<&'a EvictionCandidate>,
    k: usize,
    metric: impl Fn(&EvictionCandidate) -> Option<Duration>,
) -> Vec<&'a EvictionCandidate> {
    left.sort_by(|a, b| match (metric(a), metric(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| older(a, b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => older(a, b),
    });
    let measured = left.iter().filter(|c| metric(c).is_some()).count();
    left.drain(..k.min(measured)).collect()
}

/// Removes from `left` and returns its longest-connected share (see
/// [`PROTECT_BY_UPTIME_DIVISOR`]), rounded up.
fn protect_longest_connected<'a>(
    left: &mut Vec<&'a EvictionCandidate>,
) -> Vec<&'a EvictionCandidate> {
    left.sort_by(|a, b| older(a, b));
    let protect = left.len().div_ceil(PROTECT_BY_UPTIME_DIVISOR);
    left.drain(..protect).collect()
}

/// An outbound peer, as rotation sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundCandidate {
    /// The connection id.
    pub id: u64,
    /// Its quality in [0, 1] (`network::quality`); a value that is not a
    /// number counts as the lowest.
    pub quality: f64,
    /// How long it has been connected.
    pub connected: Duration,
    /// An operator-configured peer (its dialer keeps it connected): never
    /// rotated out.
    pub protected: bool,
}

/// The outbound peer to rotate out: the lowest-quality one among those
/// not protected and connected for at least [`OUTBOUND_ROTATION_MIN_AGE`]
/// (ties: the youngest, then the higher connection id), or `None`.
pub fn worst_outbound(candidates: &[OutboundCandidate]) -> Option<u64> {
    let quality = |c: &OutboundCandidate| {
        if c.quality.is_nan() {
            f64::NEG_INFINITY
        } else {
            c.quality
        }
    };
    candidates
        .iter()
        .filter(|c| !c.protected && c.connected >= OUTBOUND_ROTATION_MIN_AGE)
        .min_by(|a, b| {
            quality(a)
                .total_cmp(&quality(b))
                .then_with(|| a.connected.cmp(&b.connected))
                .then_with(|| b.id.cmp(&a.id))
        })
        .map(|c| c.id)
}

#[cfg(test)]
mod tests;
