//! Unit and property tests of [`super`]: opening errors name the key, odd
//! files and odd records never panic, unlocatable addresses are never
//! looked up. Small databases are assembled here byte by byte; the real
//! ones (tests/geoip.rs fetches them) are used when present.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;

// ---------------------------------------------------------------------------
// A MaxMind DB writer for tests: one search-tree node whose two records both
// point at one data record, so every address (IPv4 and IPv6) finds it.

/// A value of the MaxMind DB data section.
enum V {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, V)>),
    Array(Vec<V>),
}

fn control(type_id: u8, size: usize, out: &mut Vec<u8>) {
    assert!(size < 29 + 256, "the test writer keeps sizes small");
    let (bits, extra) = if size < 29 {
        (size as u8, None)
    } else {
        (29, Some((size - 29) as u8))
    };
    if type_id <= 7 {
        out.push((type_id << 5) | bits);
    } else {
        out.push(bits);
        out.push(type_id - 7);
    }
    out.extend(extra);
}

fn encode(value: &V, out: &mut Vec<u8>) {
    let uint = |type_id: u8, bytes: &[u8], out: &mut Vec<u8>| {
        let bytes: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
        control(type_id, bytes.len(), out);
        out.extend_from_slice(&bytes);
    };
    match value {
        V::Str(s) => {
            control(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        V::U16(n) => uint(5, &n.to_be_bytes(), out),
        V::U32(n) => uint(6, &n.to_be_bytes(), out),
        V::U64(n) => uint(9, &n.to_be_bytes(), out),
        V::Map(pairs) => {
            control(7, pairs.len(), out);
            for (k, v) in pairs {
                encode(&V::Str(k), out);
                encode(v, out);
            }
        }
        V::Array(items) => {
            control(11, items.len(), out);
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// A database (IPv6 tree, 24-bit records) in which every address has
/// `record`.
fn tiny_db(record: &V) -> Vec<u8> {
    let node_count = 1u32;
    // Data pointer: node_count + 16 (the separator) + offset 0.
    let pointer = (node_count + 16).to_be_bytes();
    let mut db = Vec::new();
    db.extend_from_slice(&pointer[1..]);
    db.extend_from_slice(&pointer[1..]);
    db.extend_from_slice(&[0; 16]);
    encode(record, &mut db);
    db.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    let metadata = V::Map(vec![
        ("binary_format_major_version", V::U16(2)),
        ("binary_format_minor_version", V::U16(0)),
        ("build_epoch", V::U64(1_800_000_000)),
        ("database_type", V::Str("timed-test")),
        ("description", V::Map(vec![("en", V::Str("test"))])),
        ("ip_version", V::U16(6)),
        ("languages", V::Array(vec![V::Str("en")])),
        ("node_count", V::U32(node_count)),
        ("record_size", V::U16(24)),
    ]);
    encode(&metadata, &mut db);
    db
}

/// Writes `bytes` to a fresh file; the directory lives as long as the
/// returned guard.
fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.mmdb");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// A [`Diversity`] with `record` in both databases.
fn diversity_with(record: &V) -> Diversity {
    let (_dir, path) = file_with(&tiny_db(record));
    Diversity::open(&DiversityConfig {
        country_db: Some(path.clone()),
        asn_db: Some(path),
    })
    .unwrap()
}

/// A record that places every address in Germany, AS 64500.
fn german() -> V {
    V::Map(vec![
        ("country_code", V::Str("DE")),
        ("autonomous_system_number", V::U32(64_500)),
    ])
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

// ---------------------------------------------------------------------------
// Opening

#[test]
fn no_databases_give_default_locations() {
    let d = Diversity::open(&DiversityConfig::default()).unwrap();
    assert!(!d.has_country() && !d.has_asn());
    assert_eq!(d.lookup(ip("8.8.8.8")), Location::default());
    assert_eq!(Diversity::none().lookup(ip("2a00::1")), Location::default());
}

#[test]
fn a_missing_file_names_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("asn.mmdb");
    let e = Diversity::open(&DiversityConfig {
        country_db: None,
        asn_db: Some(missing.clone()),
    })
    .unwrap_err();
    assert!(matches!(e, DiversityError::Open { .. }), "{e:?}");
    assert_eq!(e.key(), ASN_DB_KEY);
    assert_eq!(e.path(), missing);
    assert_eq!(
        e.to_string(),
        format!(
            "p2p.diversity.asn_db: cannot open {}: No such file or directory",
            missing.display()
        )
    );

    let e = Diversity::open(&DiversityConfig {
        country_db: Some(missing.clone()),
        asn_db: None,
    })
    .unwrap_err();
    assert!(
        e.to_string().starts_with("p2p.diversity.country_db: "),
        "{e}"
    );
}

#[test]
fn a_directory_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let e = Diversity::open(&DiversityConfig {
        country_db: Some(dir.path().to_owned()),
        asn_db: None,
    })
    .unwrap_err();
    assert!(matches!(e, DiversityError::NotAFile { .. }), "{e:?}");
    assert!(e.to_string().contains(COUNTRY_DB_KEY), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn garbage_is_a_typed_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut garbage = vec![0u8; 64 * 1024];
    rng.fill(&mut garbage[..]);
    for bytes in [&garbage[..], &[][..], &b"\xab\xcd\xefMaxMind.com"[..]] {
        let (_dir, path) = file_with(bytes);
        let e = Diversity::open(&DiversityConfig {
            country_db: None,
            asn_db: Some(path.clone()),
        })
        .unwrap_err();
        assert!(matches!(e, DiversityError::Invalid { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!(
                "p2p.diversity.asn_db: {} is not a MaxMind DB file: ",
                path.display()
            )),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------------------
// Lookups

#[test]
fn the_test_database_is_read() {
    let d = diversity_with(&german());
    assert!(d.has_country() && d.has_asn());
    let de = Location {
        country: Some("DE".into()),
        asn: Some(64_500),
    };
    for addr in [
        "8.8.8.8",
        "2a00:1450::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ] {
        assert_eq!(d.lookup(ip(addr)), de, "{addr}");
    }
}

#[test]
fn unlocatable_addresses_are_never_looked_up() {
    // The database has a record for every address, so only skipping the
    // lookup gives the default.
    let d = diversity_with(&german());
    for addr in [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.10.20",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.9",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.200",
        "198.18.0.1",
        "198.19.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::8.8.8.8",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "3fff::1",
        "3fff:fff::1",
        "ff02::1",
        "100::1",
    ] {
        assert!(is_unlocatable(ip(addr)), "{addr}");
        assert_eq!(d.lookup(ip(addr)), Location::default(), "{addr}");
    }
    // Their neighbours are public.
    for addr in [
        "1.0.0.1",
        "11.0.0.1",
        "172.32.0.1",
        "100.128.0.1",
        "192.0.1.1",
        "198.20.0.1",
        "223.255.255.255",
        "2001:db9::1",
        "3fff:1000::1",
        "fec0::1",
    ] {
        assert!(!is_unlocatable(ip(addr)), "{addr}");
        assert_eq!(d.lookup(ip(addr)).asn, Some(64_500), "{addr}");
    }
}

#[test]
fn records_of_unexpected_shapes_are_none() {
    let none = Location::default();
    let cases = [
        V::Str("DE"),
        V::U32(3),
        V::Array(vec![V::Str("DE")]),
        V::Map(vec![]),
        V::Map(vec![
            ("country_code", V::U16(49)),
            ("autonomous_system_number", V::Str("64500")),
        ]),
        V::Map(vec![
            ("country_code", V::Str("DEU")),
            ("autonomous_system_number", V::U64(1 << 40)),
        ]),
        V::Map(vec![
            ("country_code", V::Str("D1")),
            ("autonomous_system_number", V::U32(0)),
        ]),
        V::Map(vec![
            ("country_code", V::Str("ZZ")),
            ("autonomous_system_number", V::Map(vec![])),
        ]),
        V::Map(vec![("country", V::Str("DE"))]),
        V::Map(vec![("country", V::Map(vec![("iso_code", V::U32(1))]))]),
    ];
    for (i, record) in cases.iter().enumerate() {
        assert_eq!(
            diversity_with(record).lookup(ip("8.8.8.8")),
            none,
            "case {i}"
        );
    }
}

#[test]
fn maxmind_layouts_are_read() {
    let geolite = V::Map(vec![
        (
            "country",
            V::Map(vec![
                ("iso_code", V::Str("fr")),
                ("names", V::Map(vec![("en", V::Str("France"))])),
            ]),
        ),
        ("autonomous_system_number", V::U16(3215)),
        ("autonomous_system_organization", V::Str("Orange")),
    ]);
    assert_eq!(
        diversity_with(&geolite).lookup(ip("2.2.2.2")),
        Location {
            country: Some("FR".into()),
            asn: Some(3215),
        }
    );
}

// ---------------------------------------------------------------------------
// Properties

/// The databases tests/geoip.rs fetches into `<target>/tmp/geoip` (or
/// `$TIMED_GEOIP_DIR`), when present.
fn real_databases() -> Option<&'static Diversity> {
    static REAL: OnceLock<Option<Diversity>> = OnceLock::new();
    REAL.get_or_init(|| {
        let dir = std::env::var_os("TIMED_GEOIP_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                // This test binary is <target>/[<triple>/]debug/deps/timed-*.
                let exe = std::env::current_exe().ok()?;
                exe.ancestors()
                    .skip(3)
                    .take(2)
                    .map(|target| target.join("tmp").join("geoip"))
                    .find(|dir| dir.join("asn.mmdb").is_file())
            })?;
        let config = DiversityConfig {
            country_db: Some(dir.join("country.mmdb")),
            asn_db: Some(dir.join("asn.mmdb")),
        };
        match Diversity::open(&config) {
            Ok(d) => Some(d),
            Err(e) => panic!("the databases in {} do not open: {e}", dir.display()),
        }
    })
    .as_ref()
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        // IPv4-mapped IPv6.
        any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any address, with no database, the test database and the real ones
    /// (when fetched): no panic, and unlocatable addresses give defaults.
    #[test]
    fn lookup_never_panics(addr in any_ip()) {
        static TEST_DB: OnceLock<Diversity> = OnceLock::new();
        let test_db = TEST_DB.get_or_init(|| diversity_with(&german()));
        let mut all = vec![test_db];
        all.extend(real_databases());
        prop_assert_eq!(Diversity::none().lookup(addr), Location::default());
        for d in all {
            let found = d.lookup(addr);
            if is_unlocatable(addr) {
                prop_assert_eq!(&found, &Location::default());
            }
            if let Some(country) = &found.country {
                prop_assert!(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()));
            }
            prop_assert_ne!(found.asn, Some(0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A database with bytes overwritten or cut short either fails to open
    /// with a typed error or answers lookups without panicking.
    #[test]
    fn damaged_databases_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        addrs in proptest::collection::vec(any_ip(), 1..16),
    ) {
        let mut bytes = tiny_db(&V::Map(vec![
            ("country", V::Map(vec![("iso_code", V::Str("SE"))])),
            ("country_code", V::Str("SE")),
            ("autonomous_system_number", V::U32(1299)),
        ]));
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let (_dir, path) = file_with(&bytes);
        match Diversity::open(&DiversityConfig { country_db: Some(path.clone()), asn_db: Some(path) }) {
            Ok(d) => {
                for addr in addrs {
                    let _ = d.lookup(addr);
                }
            }
            Err(e) => prop_assert!(matches!(e, DiversityError::Invalid { .. }), "{e:?}"),
        }
    }
}
