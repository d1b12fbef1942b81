//! The address book: addresses of peers the node may dial, in two tables
//! after Bitcoin Core's addrman.
//!
//! * **new**: addresses heard of (from seeds, peer exchange, inbound
//!   peers' announcements), never connected to.
//! * **tried**: addresses the node once completed a handshake with.
//!
//! Each table is a grid of buckets of [`BUCKET_SLOTS`] slots; an address
//! has one place in one table.
//!
//! # Security
//! Placement is keyed by a per-node secret kept in the data dir, so an
//! attacker cannot compute where its addresses land nor aim them at the
//! slots of honest ones. A new address's bucket is chosen by the netgroup
//! of the peer that told us about it (its *source*): one source netgroup
//! reaches at most [`NEW_BUCKETS_PER_SOURCE_GROUP`] of the
//! [`NEW_BUCKETS`] new buckets, whatever it sends, so a flood of addresses
//! from one place can fill at most that share of the table. A tried
//! address's bucket is chosen by its own netgroup: one netgroup holds at
//! most [`TRIED_BUCKETS_PER_GROUP`] of the [`TRIED_BUCKETS`] tried buckets.
//! A collision keeps the address already there unless it is *terrible*
//! (see [`AddrInfo::is_terrible`]); the table size is bounded by its slots.
//!
//! Netgroups are IPv4 /16 and IPv6 /32 by default; the IPv4 prefix length
//! is configurable so that tests on 127.x.y.z loopback addresses can give
//! nodes distinct netgroups.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::diversity::Diversity;
use super::quality::PeerQuality;
use crate::constants::{
    ADDRESS_MAX_AGE_SECS, ADDRESS_MAX_FAILURES, ADDRESS_MAX_RETRIES, ADDRESS_MIN_FAIL_SECS,
    BUCKET_SLOTS, NEW_BUCKETS, NEW_BUCKETS_PER_SOURCE_GROUP, TRIED_BUCKETS,
    TRIED_BUCKETS_PER_GROUP,
};
use crate::crypto::NodeId;
use crate::protocol::record::OpenedRecord;
use crate::protocol::Envelope;

/// How addresses are grouped: the prefix lengths that make a netgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBits {
    /// Leading bits of an IPv4 address (default 16).
    pub v4: u8,
    /// Leading bits of an IPv6 address (default 32).
    pub v6: u8,
}

impl Default for GroupBits {
    fn default() -> Self {
        GroupBits { v4: 16, v6: 32 }
    }
}

/// A netgroup: addresses an operator is likely to control together (one
/// IPv4 /16 or IPv6 /32 by default). Encoded as a family tag and the
/// masked prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Netgroup(Vec<u8>);

impl std::fmt::Display for Netgroup {
    /// `ipv4/16:10.1.0.0`-like text: the family, the prefix length and the
    /// masked prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [b'A', a, b, c, d] = self.0.as_slice() {
            return write!(f, "AS{}", u32::from_be_bytes([*a, *b, *c, *d]));
        }
        let (tag, bits, prefix) = match self.0.as_slice() {
            [tag, bits, prefix @ ..] => (*tag, *bits, prefix),
            _ => return f.write_str("unknown"),
        };
        if tag == 4 {
            let mut octets = [0u8; 4];
            for (o, p) in octets.iter_mut().zip(prefix) {
                *o = *p;
            }
            write!(f, "{}/{bits}", std::net::Ipv4Addr::from(octets))
        } else {
            let mut octets = [0u8; 16];
            for (o, p) in octets.iter_mut().zip(prefix) {
                *o = *p;
            }
            write!(f, "{}/{bits}", std::net::Ipv6Addr::from(octets))
        }
    }
}

impl Netgroup {
    /// The netgroup of the addresses announced by autonomous system `asn`.
    pub fn asn(asn: u32) -> Netgroup {
        let mut out = vec![b'A'];
        out.extend_from_slice(&asn.to_be_bytes());
        Netgroup(out)
    }

    /// The encoded netgroup (equal bytes: the same netgroup).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The netgroup of `ip` under `bits`. IPv4-mapped IPv6 addresses are
    /// grouped as the IPv4 address they carry.
    pub fn of(ip: IpAddr, bits: GroupBits) -> Netgroup {
        match ip {
            IpAddr::V4(v4) => Self::masked(4, &v4.octets(), bits.v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::masked(4, &v4.octets(), bits.v4),
                None => Self::masked(6, &v6.octets(), bits.v6),
            },
        }
    }

    fn masked(tag: u8, octets: &[u8], bits: u8) -> Netgroup {
        let bits = usize::from(bits).min(octets.len() * 8);
        let mut out = Vec::with_capacity(2 + bits.div_ceil(8));
        out.push(tag);
        // The prefix length is part of the group: /16 and /24 groups of
        // one address differ.
        out.push(bits as u8);
        for (i, byte) in octets.iter().enumerate().take(bits.div_ceil(8)) {
            let keep = (bits - i * 8).min(8);
            out.push(byte & (0xffu8 << (8 - keep)));
        }
        Netgroup(out)
    }
}

/// What the book knows of one address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddrInfo {
    /// The address.
    pub addr: SocketAddr,
    /// The node id it announced, if known.
    pub node_id: Option<NodeId>,
    /// The capabilities it announced.
    pub capabilities: u64,
    /// The netgroup of the peer that told us about it.
    pub source: Netgroup,
    /// When it was last heard of (Unix seconds).
    pub last_seen: u64,
    /// When we last dialled it (Unix seconds; 0: never).
    pub last_try: u64,
    /// When a handshake with it last completed (Unix seconds; 0: never).
    pub last_success: u64,
    /// Dials since the last success.
    pub attempts: u32,
    /// Whether it is in the tried table.
    pub tried: bool,
    /// The newest signed record announcing this address, relayed as is in
    /// `GetPeers` answers (addresses known only from configs or handshakes
    /// have none and are never relayed).
    pub record: Option<Envelope>,
    /// How the peer at this address did (see `network::quality`).
    pub quality: PeerQuality,
}

impl AddrInfo {
    /// Whether the address is not worth keeping, at `now` (Unix seconds):
    /// heard of more than [`ADDRESS_MAX_AGE_SECS`] ago or claimed in the
    /// future, never reached after [`ADDRESS_MAX_RETRIES`] dials, or
    /// failing [`ADDRESS_MAX_FAILURES`] times since its last success over a
    /// week ago. An address dialled in the last minute is never terrible
    /// (it may be connecting right now).
    pub fn is_terrible(&self, now: u64) -> bool {
        if self.last_try > 0 && now.saturating_sub(self.last_try) < 60 {
            return false;
        }
        if self.last_seen > now + 10 * 60 {
            return true;
        }
        if now.saturating_sub(self.last_seen) > ADDRESS_MAX_AGE_SECS {
            return true;
        }
        if self.last_success == 0 && self.attempts >= ADDRESS_MAX_RETRIES {
            return true;
        }
        now.saturating_sub(self.last_success) > ADDRESS_MIN_FAIL_SECS
            && self.attempts >= ADDRESS_MAX_FAILURES
    }
}

/// Where an address sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Place {
    New(u32),
    Tried(u32),
}

/// Errors reading a stored address book.
#[derive(Debug, thiserror::Error)]
pub enum AddressBookError {
    /// The stored bytes do not decode.
    #[error("stored address book does not decode: {0}")]
    Corrupt(String),
}

/// The first bytes of a stored book: a tag and the format version.
const STORED_TAG: &[u8; 5] = b"TABK\x02";

/// The address book. Not thread-safe by itself: the network keeps it
/// behind one lock; every operation but [`AddressBook::evict_terrible`] is
/// O(1) expected.
pub struct AddressBook {
    secret: [u8; 32],
    bits: GroupBits,
    /// With an ASN database, an address's netgroup is its ASN.
    asn: Option<std::sync::Arc<Diversity>>,
    entries: HashMap<SocketAddr, (AddrInfo, Place)>,
    slots: HashMap<Place, SocketAddr>,
    /// Addresses of each table, for uniform random selection.
    new_list: Vec<SocketAddr>,
    tried_list: Vec<SocketAddr>,
    positions: HashMap<SocketAddr, usize>,
}

impl std::fmt::Debug for AddressBook {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBook")
            .field("new", &self.new_list.len())
            .field("tried", &self.tried_list.len())
            .finish_non_exhaustive()
    }
}

impl Default for AddressBook {
    /// An empty book with a fresh random secret and default netgroups.
    fn default() -> Self {
        AddressBook::new(rand::random(), GroupBits::default())
    }
}

impl AddressBook {
    /// An empty book placing addresses with `secret`.
    pub fn new(secret: [u8; 32], bits: GroupBits) -> Self {
        AddressBook {
            secret,
            bits,
            asn: None,
            entries: HashMap::new(),
            slots: HashMap::new(),
            new_list: Vec::new(),
            tried_list: Vec::new(),
            positions: HashMap::new(),
        }
    }

    /// `(new, tried)` table sizes.
    pub fn sizes(&self) -> (usize, usize) {
        (self.new_list.len(), self.tried_list.len())
    }

    /// `(new, tried)` table sizes of IPv4 and of IPv6 addresses (a scan of
    /// the book, for the operator's `getaddrmaninfo`).
    pub fn sizes_by_family(&self) -> [(usize, usize); 2] {
        let mut out = [(0, 0); 2];
        for (info, _) in self.entries.values() {
            let family = &mut out[usize::from(info.addr.is_ipv6())];
            if info.tried {
                family.1 += 1;
            } else {
                family.0 += 1;
            }
        }
        out
    }

    /// Addresses in the book.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the book knows of `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&AddrInfo> {
        self.entries.get(addr).map(|(info, _)| info)
    }

    /// The netgroup of `ip`: its ASN when the book has an ASN database
    /// that knows the address, else its prefix under the book's lengths.
    pub fn netgroup(&self, ip: IpAddr) -> Netgroup {
        match self.asn.as_ref().and_then(|d| d.lookup(ip).asn) {
            Some(asn) => Netgroup::asn(asn),
            None => Netgroup::of(ip, self.bits),
        }
    }

    /// Groups addresses by ASN with `diversity`'s ASN database (if it has
    /// one) from now on; entries already in the book keep their places
    /// until the book is stored and loaded again.
    pub fn set_diversity(&mut self, diversity: std::sync::Arc<Diversity>) {
        self.asn = diversity.has_asn().then_some(diversity);
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
        let mut out = match addr.ip() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        out.extend_from_slice(&addr.port().to_le_bytes());
        out
    }

    /// The new-table slot of `addr` told by a peer in `source`.
    fn new_place(&self, addr: &SocketAddr, source: &Netgroup) -> Place {
        let group = self.netgroup(addr.ip());
        let spread = self.hash(&[b"new-spread", &group.0, &source.0])
            % u64::from(NEW_BUCKETS_PER_SOURCE_GROUP);
        let bucket =
            self.hash(&[b"new-bucket", &source.0, &spread.to_le_bytes()]) % u64::from(NEW_BUCKETS);
        let slot = self.hash(&[b"new-slot", &bucket.to_le_bytes(), &Self::addr_bytes(addr)])
            % u64::from(BUCKET_SLOTS);
        Place::New((bucket * u64::from(BUCKET_SLOTS) + slot) as u32)
    }

    /// The tried-table slot of `addr`.
    fn tried_place(&self, addr: &SocketAddr) -> Place {
        let group = self.netgroup(addr.ip());
        let spread = self.hash(&[b"tried-spread", &Self::addr_bytes(addr)])
            % u64::from(TRIED_BUCKETS_PER_GROUP);
        let bucket = self.hash(&[b"tried-bucket", &group.0, &spread.to_le_bytes()])
            % u64::from(TRIED_BUCKETS);
        let slot = self.hash(&[
            b"tried-slot",
            &bucket.to_le_bytes(),
            &Self::addr_bytes(addr),
        ]) % u64::from(BUCKET_SLOTS);
        Place::Tried((bucket * u64::from(BUCKET_SLOTS) + slot) as u32)
    }

    fn list_mut(&mut self, place: Place) -> &mut Vec<SocketAddr> {
        match place {
            Place::New(_) => &mut self.new_list,
            Place::Tried(_) => &mut self.tried_list,
        }
    }

    fn insert_at(&mut self, mut info: AddrInfo, place: Place) {
        info.tried = matches!(place, Place::Tried(_));
        let addr = info.addr;
        self.slots.insert(place, addr);
        let list = self.list_mut(place);
        list.push(addr);
        let index = list.len() - 1;
        self.positions.insert(addr, index);
        self.entries.insert(addr, (info, place));
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<AddrInfo> {
        let (info, place) = self.entries.remove(addr)?;
        self.slots.remove(&place);
        if let Some(index) = self.positions.remove(addr) {
            let list = self.list_mut(place);
            list.swap_remove(index);
            if let Some(moved) = list.get(index).copied() {
                self.positions.insert(moved, index);
            }
        }
        Some(info)
    }

    /// Adds `addr` heard of from a peer at `source` at `now` (Unix
    /// seconds), or refreshes what the book knows of it. Returns whether it
    /// is in the book afterwards.
    pub fn add(
        &mut self,
        addr: SocketAddr,
        node_id: Option<NodeId>,
        capabilities: u64,
        source: IpAddr,
        now: u64,
    ) -> bool {
        if let Some((info, _)) = self.entries.get_mut(&addr) {
            info.last_seen = info.last_seen.max(now);
            info.capabilities = capabilities;
            if node_id.is_some() {
                info.node_id = node_id;
            }
            return true;
        }
        let source = self.netgroup(source);
        let place = self.new_place(&addr, &source);
        if let Some(occupant) = self.slots.get(&place).copied() {
            let terrible = self
                .entries
                .get(&occupant)
                .is_some_and(|(info, _)| info.is_terrible(now));
            if !terrible {
                return false;
            }
            self.remove(&occupant);
        }
        self.insert_at(
            AddrInfo {
                addr,
                node_id,
                capabilities,
                source,
                last_seen: now,
                last_try: 0,
                last_success: 0,
                attempts: 0,
                tried: false,
                record: None,
                quality: PeerQuality::default(),
            },
            place,
        );
        true
    }

    /// Adds the addresses of a checked signed `record` (its envelope is
    /// `envelope`) told by a peer at `source`, at `now` (Unix seconds), for
    /// which `usable` holds; the envelope is kept with each address unless
    /// the address already holds a newer record of the same node. Returns
    /// how many addresses the record was new for (a new address, or a
    /// newer record than the one kept): what is worth relaying.
    pub fn add_record(
        &mut self,
        record: &OpenedRecord,
        envelope: &Envelope,
        source: IpAddr,
        now: u64,
        usable: impl Fn(&SocketAddr) -> bool,
    ) -> usize {
        // A record from the future counts as seen now, never later.
        let seen = (record.timestamp_ms / 1000).min(now);
        let mut kept = 0;
        for addr in record.socket_addrs().filter(|a| usable(a)) {
            let known = self.entries.get(&addr).map(|(info, _)| {
                info.record.as_ref().is_none_or(|old| {
                    info.node_id != Some(record.node_id) || old.timestamp_ms < envelope.timestamp_ms
                })
            });
            // A record no newer than the one kept changes nothing.
            if known == Some(false) {
                continue;
            }
            if !self.add(
                addr,
                Some(record.node_id),
                record.record.capabilities,
                source,
                seen,
            ) {
                continue;
            }
            if let Some((info, _)) = self.entries.get_mut(&addr) {
                info.node_id = Some(record.node_id);
                info.record = Some(envelope.clone());
                kept += 1;
            }
        }
        kept
    }

    /// Up to `count` addresses chosen at random (Bitcoin's
    /// `getnodeaddresses`): a scan of the book, for the operator.
    pub fn sample_addresses(&self, count: usize, rng: &mut impl Rng) -> Vec<AddrInfo> {
        use rand::seq::IteratorRandom;
        self.entries
            .values()
            .map(|(info, _)| info.clone())
            .choose_multiple(rng, count)
    }

    /// Up to `count` distinct signed records (one per node id), chosen at
    /// random among the addresses that hold one. A scan of the book: for
    /// the `GetPeers` cache, which is rebuilt rarely.
    pub fn sample_records(&self, count: usize, rng: &mut impl Rng) -> Vec<Envelope> {
        use rand::seq::SliceRandom;
        let mut with_record: Vec<&AddrInfo> = self
            .entries
            .values()
            .map(|(info, _)| info)
            .filter(|info| info.record.is_some())
            .collect();
        with_record.shuffle(rng);
        let mut seen = std::collections::HashSet::new();
        with_record
            .into_iter()
            .filter(|info| seen.insert(info.node_id))
            .filter_map(|info| info.record.clone())
            .take(count)
            .collect()
    }

    /// The quality record of `addr`, if it is in the book.
    pub fn quality_mut(&mut self, addr: &SocketAddr) -> Option<&mut PeerQuality> {
        self.entries
            .get_mut(addr)
            .map(|(info, _)| &mut info.quality)
    }

    /// A key for `context` derived from the book's secret: stable across
    /// restarts, unknown outside the node.
    pub fn derived_key(&self, context: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(context.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Records a dial of `addr` at `now`.
    pub fn attempt(&mut self, addr: &SocketAddr, now: u64) {
        if let Some((info, _)) = self.entries.get_mut(addr) {
            info.last_try = now;
            info.attempts = info.attempts.saturating_add(1);
        }
    }

    /// Records a completed handshake with `addr` at `now` and moves it to
    /// the tried table. The address in its tried slot, if any, goes back to
    /// the new table (or out, if its new slot is taken).
    pub fn good(&mut self, addr: &SocketAddr, now: u64) {
        let Some(mut info) = self.remove(addr) else {
            return;
        };
        info.last_success = now;
        info.last_try = now;
        info.last_seen = now;
        info.attempts = 0;
        let place = self.tried_place(addr);
        if let Some(occupant) = self.slots.get(&place).copied() {
            if let Some(displaced) = self.remove(&occupant) {
                let back = self.new_place(&displaced.addr, &displaced.source);
                if !self.slots.contains_key(&back) {
                    self.insert_at(displaced, back);
                }
            }
        }
        self.insert_at(info, place);
    }

    /// A random address to dial: from the tried table with probability
    /// `tried_bias` (0..=1) when both tables hold addresses.
    pub fn select(&self, tried_bias: f64, rng: &mut impl Rng) -> Option<&AddrInfo> {
        let use_tried = match (self.new_list.is_empty(), self.tried_list.is_empty()) {
            (true, true) => return None,
            (true, false) => true,
            (false, true) => false,
            (false, false) => rng.gen_bool(tried_bias.clamp(0.0, 1.0)),
        };
        let list = if use_tried {
            &self.tried_list
        } else {
            &self.new_list
        };
        let addr = list.get(rng.gen_range(0..list.len()))?;
        self.get(addr)
    }

    /// Like [`AddressBook::select`], but only an address for which `wanted`
    /// holds, trying at most `tries` random picks.
    pub fn select_where(
        &self,
        tried_bias: f64,
        tries: usize,
        rng: &mut impl Rng,
        wanted: impl Fn(&AddrInfo) -> bool,
    ) -> Option<&AddrInfo> {
        (0..tries)
            .filter_map(|_| self.select(tried_bias, rng))
            .find(|info| wanted(info))
    }

    /// A random address of the new table for which `wanted` holds (for
    /// feeler connections), trying at most `tries` random picks.
    pub fn select_new_where(
        &self,
        tries: usize,
        rng: &mut impl Rng,
        wanted: impl Fn(&AddrInfo) -> bool,
    ) -> Option<&AddrInfo> {
        if self.new_list.is_empty() {
            return None;
        }
        (0..tries)
            .filter_map(|_| self.get(&self.new_list[rng.gen_range(0..self.new_list.len())]))
            .find(|info| wanted(info))
    }

    /// Removes the terrible addresses; returns how many. A scan of the
    /// book (at most 81,920 entries): run by housekeeping on a timer, never
    /// on a path a peer drives.
    pub fn evict_terrible(&mut self, now: u64) -> usize {
        let terrible: Vec<SocketAddr> = self
            .entries
            .values()
            .filter(|(info, _)| info.is_terrible(now))
            .map(|(info, _)| info.addr)
            .collect();
        for addr in &terrible {
            self.remove(addr);
        }
        terrible.len()
    }

    /// The book's bytes for storage: `STORED_TAG`, the secret, then
    /// each entry as a `u32le` length and its encoding (places are
    /// recomputed on load). Entry by entry, so a full book (tens of
    /// megabytes with its records) is not bound by the size limit of one
    /// encoded value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 256);
        out.extend_from_slice(STORED_TAG);
        out.extend_from_slice(&self.secret);
        for (info, _) in self.entries.values() {
            // An entry is a few hundred bytes: it always encodes.
            if let Ok(bytes) = crate::encoding::encode_value(info) {
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
        }
        out
    }

    /// A book from stored bytes: every entry is placed again with the
    /// stored secret (an entry whose slot is taken is dropped).
    ///
    /// # Errors
    /// [`AddressBookError::Corrupt`] if the bytes do not decode; the caller
    /// logs it and starts with an empty book.
    pub fn from_bytes(
        bytes: &[u8],
        bits: GroupBits,
        diversity: Option<std::sync::Arc<Diversity>>,
    ) -> Result<AddressBook, AddressBookError> {
        let corrupt = |what: &str| AddressBookError::Corrupt(what.to_owned());
        let rest = bytes
            .strip_prefix(STORED_TAG.as_slice())
            .ok_or_else(|| corrupt("not a stored address book (tag or version)"))?;
        let (secret, mut rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| corrupt("truncated secret"))?;
        let mut book = AddressBook::new(*secret, bits);
        if let Some(diversity) = diversity {
            book.set_diversity(diversity);
        }
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("truncated entry length"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(corrupt("truncated entry"));
            }
            let (entry, tail) = tail.split_at(len);
            let info: AddrInfo = crate::encoding::decode_value(entry)
                .map_err(|e| AddressBookError::Corrupt(e.to_string()))?;
            rest = tail;
            let place = if info.tried {
                book.tried_place(&info.addr)
            } else {
                book.new_place(&info.addr, &info.source)
            };
            if !book.slots.contains_key(&place) && !book.entries.contains_key(&info.addr) {
                book.insert_at(info, place);
            }
        }
        Ok(book)
    }

    /// The new buckets the addresses told by peers in `source` occupy (a
    /// scan of the book, for tests and diagnostics).
    pub fn new_buckets_of_source(&self, source: &Netgroup) -> std::collections::HashSet<u32> {
        self.entries
            .values()
            .filter_map(|(info, place)| match place {
                Place::New(i) if &info.source == source => Some(i / BUCKET_SLOTS),
                _ => None,
            })
            .collect()
    }

    /// The tried buckets the addresses of netgroup `group` occupy.
    #[cfg(test)]
    fn tried_buckets_of_group(&self, group: &Netgroup) -> std::collections::HashSet<u32> {
        self.entries
            .values()
            .filter_map(|(info, place)| match place {
                Place::Tried(i) if &self.netgroup(info.addr.ip()) == group => {
                    Some(i / BUCKET_SLOTS)
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
