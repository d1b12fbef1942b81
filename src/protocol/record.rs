//! Signed peer records: a node's own statement of where it listens.
//!
//! A record is a gossip [`Envelope`] of kind [`GossipKind::Address`] whose
//! payload is an encoded [`PeerRecord`]. The envelope's originator is the
//! node the record describes, its `timestamp_ms` is the record's timestamp
//! (a newer record of one node supersedes an older one), and its signature
//! covers the network magic, the originator, the timestamp and the
//! addresses. So a record can be relayed by anyone, unchanged, and nobody
//! but the node itself can put an address under its id.
//!
//! # Security
//! [`open`] checks, in order: the envelope kind, the signature (ZIP 215
//! rules, docs/PROTOCOL.md section 12.3), the payload's encoding and
//! counts, every address (a port of 0 or an unspecified, multicast or
//! broadcast IP is malformed: no honest node signs one), and the timestamp
//! (at most [`MAX_RECORD_FUTURE_SECS`] ahead of the local clock). Each
//! failure has its own [`RecordError`]; [`RecordError::is_charged`] says
//! whether the peer that sent the record misbehaved; whether an
//! address is *useful* here (loopback or private ranges, our own address)
//! is a local policy decided by the address book's caller, never charged,
//! since honest relays apply other policies.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::envelope::{Envelope, EnvelopeError, GossipKind};
use super::message::PeerAddress;
use crate::constants::{MAX_RECORD_ADDRESSES, MAX_RECORD_FUTURE_SECS};
use crate::crypto::{NodeId, NodeIdentity};

/// What a node says about itself (the payload of an `Address` envelope).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Where the node accepts connections (1 to [`MAX_RECORD_ADDRESSES`]).
    pub addresses: Vec<PeerAddress>,
    /// The node's capability bits (as in its `Version`).
    pub capabilities: u64,
}

/// A record whose signature and contents were checked by [`open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedRecord {
    /// The node the record describes (the envelope's originator).
    pub node_id: NodeId,
    /// The record's timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What the node says.
    pub record: PeerRecord,
}

impl OpenedRecord {
    /// The record's addresses as socket addresses.
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.record.addresses.iter().map(|a| SocketAddr::from(*a))
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The envelope is not of kind `Address`.
    #[error("envelope of kind {0} is not a peer record")]
    WrongKind(&'static str),
    /// The signature or the originator key is bad.
    #[error(transparent)]
    Signature(#[from] EnvelopeError),
    /// The payload does not decode, or holds no or too many addresses.
    #[error("malformed peer record: {0}")]
    Malformed(String),
    /// An address no honest node announces (port 0, unspecified,
    /// multicast or broadcast IP).
    #[error("peer record announces the unusable address {0}")]
    BadAddress(SocketAddr),
    /// The timestamp is too far ahead of the local clock.
    #[error(
        "peer record timestamp {timestamp_ms} ms is more than {max_secs} s ahead of {now_ms} ms"
    )]
    FromTheFuture {
        /// The record's timestamp.
        timestamp_ms: u64,
        /// The local clock.
        now_ms: u64,
        /// The tolerance.
        max_secs: u64,
    },
}

impl RecordError {
    /// A short stable name, for logs and metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            RecordError::WrongKind(_) => "wrong_kind",
            RecordError::Signature(_) => "bad_signature",
            RecordError::Malformed(_) => "malformed",
            RecordError::BadAddress(_) => "bad_address",
            RecordError::FromTheFuture { .. } => "future_timestamp",
        }
    }

    /// Whether the error is a bad signature.
    pub const fn is_signature(&self) -> bool {
        matches!(self, RecordError::Signature(_))
    }

    /// Whether the peer that sent the record misbehaved: every refusal
    /// but a timestamp that an honest relay with a clock ahead of ours
    /// (by at most the skew the version exchange allows) may have
    /// accepted.
    pub fn is_charged(&self) -> bool {
        match self {
            RecordError::FromTheFuture {
                timestamp_ms,
                now_ms,
                max_secs,
            } => {
                let skew_ms = crate::constants::MAX_VERSION_CLOCK_SKEW.as_millis() as u64;
                *timestamp_ms
                    > now_ms
                        .saturating_add(max_secs.saturating_mul(1000))
                        .saturating_add(skew_ms)
            }
            _ => true,
        }
    }
}

/// Whether no honest node would announce `addr`: port 0, or an
/// unspecified, multicast or (IPv4) broadcast IP.
pub fn is_unusable(addr: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return true;
    }
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
            None => v6.is_unspecified() || v6.is_multicast(),
        },
    }
}

/// Signs a record of `addresses` and `capabilities` as `identity` at
/// `timestamp_ms`.
pub fn sign(
    identity: &NodeIdentity,
    magic: [u8; 4],
    addresses: &[SocketAddr],
    capabilities: u64,
    timestamp_ms: u64,
) -> Envelope {
    let record = PeerRecord {
        addresses: addresses
            .iter()
            .take(MAX_RECORD_ADDRESSES)
            .map(|a| PeerAddress::from(*a))
            .collect(),
        capabilities,
    };
    // A record of at most MAX_RECORD_ADDRESSES addresses always encodes.
    let payload = crate::encoding::encode_value(&record).unwrap_or_default();
    Envelope::sign(identity, magic, GossipKind::Address, timestamp_ms, payload)
}

/// Checks `envelope` as a peer record of the network with `magic` at the
/// local time `now_ms` (see the module docs for the order).
///
/// # Errors
/// The first check that fails.
pub fn open(envelope: &Envelope, magic: [u8; 4], now_ms: u64) -> Result<OpenedRecord, RecordError> {
    check_kind(envelope)?;
    envelope.verify(magic)?;
    open_verified(envelope, now_ms)
}

/// Like [`open`] for an envelope whose signature was already verified
/// (e.g. in a batch with [`super::verify_batch`], or by the `auth` layer).
///
/// # Errors
/// The first check after the signature that fails.
pub fn open_verified(envelope: &Envelope, now_ms: u64) -> Result<OpenedRecord, RecordError> {
    check_kind(envelope)?;
    let record: PeerRecord = crate::encoding::decode_value(&envelope.payload)
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if record.addresses.is_empty() || record.addresses.len() > MAX_RECORD_ADDRESSES {
        return Err(RecordError::Malformed(format!(
            "{} addresses (1 to {MAX_RECORD_ADDRESSES} allowed)",
            record.addresses.len()
        )));
    }
    if let Some(bad) = record
        .addresses
        .iter()
        .map(|a| SocketAddr::from(*a))
        .find(is_unusable)
    {
        return Err(RecordError::BadAddress(bad));
    }
    let max_ms = MAX_RECORD_FUTURE_SECS * 1000;
    if envelope.timestamp_ms > now_ms.saturating_add(max_ms) {
        return Err(RecordError::FromTheFuture {
            timestamp_ms: envelope.timestamp_ms,
            now_ms,
            max_secs: MAX_RECORD_FUTURE_SECS,
        });
    }
    let node_id = envelope
        .originator_id()
        .ok_or(RecordError::Signature(EnvelopeError::InvalidOriginator))?;
    Ok(OpenedRecord {
        node_id,
        timestamp_ms: envelope.timestamp_ms,
        record,
    })
}

fn check_kind(envelope: &Envelope) -> Result<(), RecordError> {
    if envelope.kind == GossipKind::Address {
        Ok(())
    } else {
        Err(RecordError::WrongKind(envelope.kind.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAGIC: [u8; 4] = *b"TDEV";
    const NOW: u64 = 1_700_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_signed_record_opens_with_its_originator() {
        let id = NodeIdentity::generate();
        let env = sign(&id, MAGIC, &[addr("127.0.0.2:24100")], 3, NOW);
        let opened = open(&env, MAGIC, NOW).unwrap();
        assert_eq!(opened.node_id, id.node_id());
        assert_eq!(opened.timestamp_ms, NOW);
        assert_eq!(
            opened.socket_addrs().collect::<Vec<_>>(),
            vec![addr("127.0.0.2:24100")]
        );
        assert_eq!(opened.record.capabilities, 3);
    }

    #[test]
    fn tampering_wrong_network_and_wrong_kind_are_refused() {
        let id = NodeIdentity::generate();
        let env = sign(&id, MAGIC, &[addr("10.1.2.3:24100")], 0, NOW);
        // Another address under the same signature.
        let mut forged = env.clone();
        forged.payload = crate::encoding::encode_value(&PeerRecord {
            addresses: vec![addr("10.9.9.9:24100").into()],
            capabilities: 0,
        })
        .unwrap();
        assert!(open(&forged, MAGIC, NOW).unwrap_err().is_signature());
        // Another node id over the same bytes.
        let mut stolen = env.clone();
        stolen.originator = *NodeIdentity::generate().node_id().as_bytes();
        assert!(open(&stolen, MAGIC, NOW).unwrap_err().is_signature());
        assert!(open(&env, *b"TMAI", NOW).unwrap_err().is_signature());
        let tx = Envelope::sign(&id, MAGIC, GossipKind::Transaction, NOW, vec![1]);
        assert_eq!(
            open(&tx, MAGIC, NOW).unwrap_err(),
            RecordError::WrongKind("tx")
        );
    }

    #[test]
    fn port_zero_unspecified_future_and_empty_records_are_refused() {
        let id = NodeIdentity::generate();
        for bad in ["10.1.2.3:0", "0.0.0.0:24100", "224.0.0.1:24100", "[::]:1"] {
            let env = sign(&id, MAGIC, &[addr(bad)], 0, NOW);
            assert_eq!(
                open(&env, MAGIC, NOW).unwrap_err(),
                RecordError::BadAddress(addr(bad)),
                "{bad}"
            );
        }
        let ahead = NOW + (MAX_RECORD_FUTURE_SECS + 1) * 1000;
        let env = sign(&id, MAGIC, &[addr("10.1.2.3:1")], 0, ahead);
        assert_eq!(
            open(&env, MAGIC, NOW).unwrap_err().kind(),
            "future_timestamp"
        );
        // Just inside the tolerance is fine.
        let env = sign(&id, MAGIC, &[addr("10.1.2.3:1")], 0, ahead - 2000);
        assert!(open(&env, MAGIC, NOW).is_ok());
        let env = sign(&id, MAGIC, &[], 0, NOW);
        assert_eq!(open(&env, MAGIC, NOW).unwrap_err().kind(), "malformed");
        let env = Envelope::sign(&id, MAGIC, GossipKind::Address, NOW, vec![0xff; 3]);
        assert_eq!(open(&env, MAGIC, NOW).unwrap_err().kind(), "malformed");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any record of usable addresses round-trips through sign and
        /// open; any payload bytes at all give a verdict, never a panic.
        #[test]
        fn records_round_trip_and_garbage_never_panics(
            ips in proptest::collection::vec(any::<[u8; 16]>(), 1..=MAX_RECORD_ADDRESSES),
            ports in proptest::collection::vec(1u16.., MAX_RECORD_ADDRESSES),
            caps in any::<u64>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let id = NodeIdentity::generate();
            let addrs: Vec<SocketAddr> = ips
                .iter()
                .zip(&ports)
                .map(|(ip, port)| SocketAddr::from(PeerAddress { ip: *ip, port: *port }))
                .collect();
            let env = sign(&id, MAGIC, &addrs, caps, NOW);
            match open(&env, MAGIC, NOW) {
                Ok(opened) => {
                    prop_assert_eq!(opened.socket_addrs().collect::<Vec<_>>(), addrs);
                    prop_assert_eq!(opened.record.capabilities, caps);
                }
                Err(RecordError::BadAddress(bad)) => prop_assert!(is_unusable(&bad)),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
            let env = Envelope::sign(&id, MAGIC, GossipKind::Address, NOW, garbage);
            let _ = open(&env, MAGIC, NOW);
        }
    }
}
