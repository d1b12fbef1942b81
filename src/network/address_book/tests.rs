//! Unit and property tests of [`super`].

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use rand::SeedableRng;

use super::*;

const NOW: u64 = 1_800_000_000;

fn book() -> AddressBook {
    AddressBook::new([7; 32], GroupBits::default())
}

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(a, b, c, d), port))
}

#[test]
fn netgroups_are_prefixes_and_loopback_can_be_split() {
    let default = GroupBits::default();
    let g = |ip: &str, bits| Netgroup::of(ip.parse().unwrap(), bits);
    assert_eq!(g("10.1.2.3", default), g("10.1.200.9", default));
    assert_ne!(g("10.1.2.3", default), g("10.2.2.3", default));
    assert_eq!(g("2001:db8:1::1", default), g("2001:db8:ffff::2", default));
    assert_ne!(g("2001:db8::1", default), g("2001:db9::1", default));
    // An IPv4-mapped IPv6 address is its IPv4 address.
    assert_eq!(g("::ffff:10.1.2.3", default), g("10.1.9.9", default));
    // Loopback test nodes on 127.0.x.y get distinct groups with /24.
    let tests = GroupBits { v4: 24, v6: 32 };
    assert_ne!(g("127.0.1.1", tests), g("127.0.2.1", tests));
    assert_eq!(g("127.0.1.1", tests), g("127.0.1.200", tests));
}

#[test]
fn an_address_moves_from_new_to_tried_and_is_selected() {
    let mut book = book();
    let addr = v4(10, 1, 2, 3, 24_200);
    assert!(book.add(addr, None, 1, "10.9.9.9".parse().unwrap(), NOW));
    assert_eq!(book.sizes(), (1, 0));
    book.attempt(&addr, NOW);
    book.good(&addr, NOW + 1);
    assert_eq!(book.sizes(), (0, 1));
    let info = book.get(&addr).unwrap();
    assert!(info.tried);
    assert_eq!((info.attempts, info.last_success), (0, NOW + 1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    assert_eq!(book.select(0.5, &mut rng).unwrap().addr, addr);
}

#[test]
fn terrible_addresses_are_dropped_and_replaced() {
    let mut book = book();
    let addr = v4(10, 1, 2, 3, 1);
    book.add(addr, None, 0, "10.9.9.9".parse().unwrap(), NOW);
    for _ in 0..ADDRESS_MAX_RETRIES {
        book.attempt(&addr, NOW);
    }
    assert!(
        !book.get(&addr).unwrap().is_terrible(NOW),
        "tried a moment ago"
    );
    assert!(book.get(&addr).unwrap().is_terrible(NOW + 120));
    assert_eq!(book.evict_terrible(NOW + 120), 1);
    assert!(book.is_empty());
    // Unseen for longer than the maximum age.
    book.add(addr, None, 0, "10.9.9.9".parse().unwrap(), NOW);
    assert!(book
        .get(&addr)
        .unwrap()
        .is_terrible(NOW + ADDRESS_MAX_AGE_SECS + 1));
    // Claimed far in the future.
    let future = v4(10, 1, 2, 4, 1);
    book.add(future, None, 0, "10.9.9.9".parse().unwrap(), NOW + 3600);
    assert!(book.get(&future).unwrap().is_terrible(NOW));
}

#[test]
fn one_source_fills_at_most_its_share_of_the_new_table() {
    // The eclipse attempt: 20,000 addresses from many netgroups, all told
    // by peers of one source netgroup.
    let mut book = book();
    let source: IpAddr = "203.0.113.7".parse().unwrap();
    let mut added = 0;
    for i in 0..20_000u32 {
        let [a, b, c, d] = i.to_be_bytes();
        let addr = v4(a.wrapping_add(1), b, c, d, 24_200);
        added += usize::from(book.add(addr, None, 0, source, NOW));
    }
    let buckets = book.new_buckets_of_source(&book.netgroup(source));
    assert!(
        buckets.len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize,
        "{}",
        buckets.len()
    );
    assert!(added <= (NEW_BUCKETS_PER_SOURCE_GROUP * BUCKET_SLOTS) as usize);
    // An honest address from another source still finds room.
    let honest = v4(198, 51, 100, 1, 24_200);
    assert!(book.add(honest, None, 0, "192.0.2.1".parse().unwrap(), NOW));
}

#[test]
fn a_corrupt_store_is_an_error_and_a_good_one_round_trips() {
    assert!(matches!(
        AddressBook::from_bytes(b"not an address book", GroupBits::default(), None),
        Err(AddressBookError::Corrupt(_))
    ));
    let mut book = book();
    for i in 0..50u8 {
        let addr = v4(10, i, 0, 1, 24_200);
        book.add(addr, None, 3, "10.200.0.1".parse().unwrap(), NOW);
        if i % 2 == 0 {
            book.good(&addr, NOW);
        }
    }
    let back = AddressBook::from_bytes(&book.to_bytes(), GroupBits::default(), None).unwrap();
    assert_eq!(back.sizes(), book.sizes());
    for i in 0..50u8 {
        let addr = v4(10, i, 0, 1, 24_200);
        assert_eq!(back.get(&addr), book.get(&addr));
    }
}

/// One operation on the book.
#[derive(Clone, Debug)]
enum Op {
    Add {
        addr: [u8; 4],
        port: u16,
        source: [u8; 4],
    },
    Good {
        addr: [u8; 4],
        port: u16,
    },
    Attempt {
        addr: [u8; 4],
        port: u16,
    },
    Evict {
        later: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Few distinct netgroups, so collisions and crowding happen.
    let ip = (0u8..4, 0u8..4, any::<u8>(), any::<u8>()).prop_map(|(a, b, c, d)| [10 + a, b, c, d]);
    prop_oneof![
        6 => (ip.clone(), 1u16..4, ip.clone()).prop_map(|(addr, port, source)| Op::Add { addr, port, source }),
        2 => (ip.clone(), 1u16..4).prop_map(|(addr, port)| Op::Good { addr, port }),
        1 => (ip, 1u16..4).prop_map(|(addr, port)| Op::Attempt { addr, port }),
        1 => (0u64..40 * 24 * 3600).prop_map(|later| Op::Evict { later }),
    ]
}

proptest! {
    #[test]
    fn bounds_hold_for_any_sequence(ops in proptest::collection::vec(op(), 1..400)) {
        let mut book = book();
        for op in ops {
            match op {
                Op::Add { addr, port, source } => {
                    book.add(SocketAddr::from((addr, port)), None, 0, IpAddr::from(source), NOW);
                }
                Op::Good { addr, port } => book.good(&SocketAddr::from((addr, port)), NOW),
                Op::Attempt { addr, port } => book.attempt(&SocketAddr::from((addr, port)), NOW),
                Op::Evict { later } => {
                    book.evict_terrible(NOW + later);
                }
            }
            // Every entry has one slot and the lists agree with the map.
            let (new, tried) = book.sizes();
            prop_assert_eq!(new + tried, book.len());
            prop_assert_eq!(book.slots.len(), book.len());
            prop_assert!(book.len() <= ((NEW_BUCKETS + TRIED_BUCKETS) * BUCKET_SLOTS) as usize);
            let groups: HashSet<Netgroup> = book
                .entries
                .values()
                .flat_map(|(info, _)| [info.source.clone(), book.netgroup(info.addr.ip())])
                .collect();
            for group in &groups {
                prop_assert!(book.new_buckets_of_source(group).len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
                prop_assert!(book.tried_buckets_of_group(group).len() <= TRIED_BUCKETS_PER_GROUP as usize);
            }
        }
    }
}

/// The memory of a full book: fills every slot of both tables (addresses
/// from many sources, half of them moved to tried, each with a signed
/// record as peer exchange stores them) and prints the growth of the
/// process's resident memory. A measurement, not a check: run with
/// `cargo test --release --lib full_book_memory -- --ignored --nocapture`.
#[test]
#[ignore]
fn full_book_memory() {
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }
    let identity = crate::crypto::NodeIdentity::generate();
    let before = rss_kib();
    let mut book = AddressBook::new([7; 32], GroupBits::default());
    let mut i: u32 = 0;
    let capacity = ((NEW_BUCKETS + TRIED_BUCKETS) * BUCKET_SLOTS) as usize;
    while book.len() < capacity * 9 / 10 && i < 20_000_000 {
        // Spread over 11.0.0.0 to 74.255.255.255 (never multicast).
        let spread = i.wrapping_mul(2_654_435_761) % 0x4000_0000;
        let ip = std::net::Ipv4Addr::from(0x0b00_0000u32 + spread);
        let addr = SocketAddr::new(IpAddr::V4(ip), 24_100);
        let source = IpAddr::V4(std::net::Ipv4Addr::from(i % 4096 * 65_536 + 1));
        let envelope = crate::protocol::record::sign(&identity, *b"TDEV", &[addr], 3, 1_000);
        let opened = crate::protocol::record::open_verified(&envelope, 1_000).unwrap();
        book.add_record(&opened, &envelope, source, 1, |_| true);
        if i % 2 == 0 {
            book.good(&addr, 2);
        }
        i += 1;
    }
    let after = rss_kib();
    let (new, tried) = book.sizes();
    let stored = book.to_bytes();
    let back = AddressBook::from_bytes(&stored, GroupBits::default(), None).unwrap();
    assert_eq!(back.sizes(), (new, tried));
    eprintln!(
        "full book: {new} new + {tried} tried = {} of {capacity} slots; resident memory +{} KiB ({} bytes per address); stored form {} bytes",
        book.len(),
        after - before,
        (after - before) * 1024 / book.len() as u64,
        stored.len()
    );
}
