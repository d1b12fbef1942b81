//! The real peer-diversity databases: `scripts/fetch_geoip.sh` fetches them
//! from the npm registry into `<target>/tmp/geoip` (once; later runs find
//! them current and contact nothing), then lookups give stable facts of
//! well-known addresses, and configs naming a missing or broken database
//! are refused naming the key.
//!
//! Without the registry the first fetch fails and so do these tests, on
//! purpose: CI fetches the databases, and a skipped test would hide a
//! broken fetch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use timed::config::Config;
use timed::network::diversity::{
    is_unlocatable, Diversity, DiversityConfig, DiversityError, Location, ASN_DB_KEY,
    COUNTRY_DB_KEY,
};

/// The directory the databases are fetched into, fetched on first use.
fn geoip_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("geoip");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch_geoip.sh");
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} {} failed ({:?}); these tests need the databases, which it \
             fetches from the npm registry the first time:\n{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "fetch_geoip.sh took {:?}:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn config() -> DiversityConfig {
    let dir = geoip_dir();
    DiversityConfig {
        country_db: Some(dir.join("country.mmdb")),
        asn_db: Some(dir.join("asn.mmdb")),
    }
}

fn real() -> &'static Diversity {
    static REAL: OnceLock<Diversity> = OnceLock::new();
    REAL.get_or_init(|| Diversity::open(&config()).unwrap())
}

fn at(country: &str, asn: u32) -> Location {
    Location {
        country: Some(country.to_owned()),
        asn: Some(asn),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn well_known_addresses_have_their_country_and_asn() {
    let d = real();
    assert!(d.has_country() && d.has_asn());
    // Google Public DNS.
    assert_eq!(d.lookup(ip("8.8.8.8")), at("US", 15169));
    assert_eq!(d.lookup(ip("2001:4860:4860::8888")), at("US", 15169));
    assert_eq!(d.lookup(ip("::ffff:8.8.8.8")), at("US", 15169));
    // RIPE NCC's own servers, in Amsterdam.
    assert_eq!(d.lookup(ip("193.0.6.139")), at("NL", 3333));
    assert_eq!(d.lookup(ip("2001:67c:2e8:22::c100:68b")), at("NL", 3333));
    // Cloudflare (1.1.1.0/24 is registered to APNIC's research arm, so its
    // country is not Cloudflare's).
    assert_eq!(d.lookup(ip("1.1.1.1")).asn, Some(13335));
    assert_eq!(d.lookup(ip("2606:4700:4700::1111")).asn, Some(13335));
    // Quad9.
    assert_eq!(d.lookup(ip("9.9.9.9")).asn, Some(19281));
    // Private and loopback addresses are not looked up.
    for addr in ["10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1"] {
        assert_eq!(d.lookup(ip(addr)), Location::default(), "{addr}");
    }
}

/// Most public addresses are placed; the figures are printed.
#[test]
fn most_public_addresses_are_placed() {
    let d = real();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let public: Vec<IpAddr> =
        std::iter::repeat_with(|| IpAddr::V4(Ipv4Addr::from(rng.gen::<u32>())))
            .filter(|a| !is_unlocatable(*a))
            .take(20_000)
            .collect();
    let started = Instant::now();
    let found: Vec<Location> = public.iter().map(|a| d.lookup(*a)).collect();
    let per_lookup = started.elapsed() / public.len() as u32;
    let share = |f: &dyn Fn(&Location) -> bool| {
        found.iter().filter(|l| f(l)).count() as f64 / found.len() as f64
    };
    let country = share(&|l| l.country.is_some());
    let asn = share(&|l| l.asn.is_some());
    let countries: std::collections::BTreeSet<_> =
        found.iter().filter_map(|l| l.country.clone()).collect();
    let asns: std::collections::BTreeSet<_> = found.iter().filter_map(|l| l.asn).collect();
    eprintln!(
        "random public IPv4: {:.1}% with a country ({} countries), {:.1}% with an ASN ({} ASNs); \
         {per_lookup:?} per lookup of both",
        country * 100.0,
        countries.len(),
        asn * 100.0,
        asns.len()
    );
    // Nearly all of IPv4 is allocated to a country; a smaller share is routed.
    assert!(country > 0.8, "{country}");
    assert!(asn > 0.5, "{asn}");
    assert!(countries.len() > 100 && asns.len() > 1000);
}

/// The ASN database the script converts passes the reader's full
/// verification of its search tree and data section.
#[test]
fn the_converted_asn_database_verifies() {
    let reader = maxminddb::Reader::open_readfile(geoip_dir().join("asn.mmdb")).unwrap();
    reader.verify().unwrap();
    let m = reader.metadata();
    assert_eq!((m.ip_version, m.binary_format_major_version), (6, 2));
    assert_eq!(m.database_type, "ip-location-db-asn");
}

/// Running the script again keeps the databases and contacts nothing.
#[test]
fn a_second_fetch_keeps_the_files() {
    let dir = geoip_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch_geoip.sh");
    let before = std::fs::metadata(dir.join("asn.mmdb"))
        .unwrap()
        .modified()
        .unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        // Any attempt to reach a registry would fail.
        .env("npm_config_registry", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("country.mmdb is current"), "{stderr}");
    assert!(stderr.contains("asn.mmdb is current"), "{stderr}");
    let after = std::fs::metadata(dir.join("asn.mmdb"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn configs_naming_missing_or_broken_databases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("asn.mmdb");
    let garbage = tmp.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"not a database").unwrap();
    let cases = [
        (
            format!(
                "[p2p.diversity]\nasn_db = {:?}\n",
                missing.to_str().unwrap()
            ),
            ASN_DB_KEY,
            format!(
                "cannot open {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            format!(
                "[p2p.diversity]\ncountry_db = {:?}\n",
                garbage.to_str().unwrap()
            ),
            COUNTRY_DB_KEY,
            format!("{} is not a MaxMind DB file", garbage.display()),
        ),
    ];
    for (i, (body, key, reason)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("case{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let expected = format!("config file {}: {key}: {reason}", file.display());

        // In-process.
        let e = Config::load(&file).unwrap_err();
        assert!(e.to_string().starts_with(&expected), "{e}");

        // The binary: exit code 2 and one error line.
        let out = common::procs::timed_stdin_null()
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with(&format!("error: {expected}")),
            "{stderr}"
        );
    }

    // The direct error names the key too.
    let e = Diversity::open(&DiversityConfig {
        country_db: None,
        asn_db: Some(missing.clone()),
    })
    .unwrap_err();
    assert!(matches!(e, DiversityError::Open { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "p2p.diversity.asn_db: cannot open {}: No such file or directory",
            missing.display()
        )
    );
}

#[test]
fn a_config_naming_the_real_databases_is_accepted() {
    let c = config();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[p2p.diversity]\ncountry_db = {:?}\nasn_db = {:?}\n",
            c.country_db.as_ref().unwrap().to_str().unwrap(),
            c.asn_db.as_ref().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    let loaded = Config::load(file.path()).unwrap();
    assert_eq!(loaded.p2p.diversity, c);
    let out = common::procs::timed_stdin_null()
        .args(["config", "check"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With an ASN database the address book's netgroups are ASNs: every
/// placed address is grouped by the ASN the database gives it; an address
/// the database does not place keeps its prefix group.
#[test]
fn with_an_asn_database_netgroups_are_asns() {
    use timed::network::address_book::{AddressBook, GroupBits, Netgroup};
    let mut book = AddressBook::new([1; 32], GroupBits::default());
    let prefix_only = book.netgroup(ip("8.8.8.8"));
    book.set_diversity(std::sync::Arc::new(Diversity::open(&config()).unwrap()));
    assert_eq!(book.netgroup(ip("8.8.8.8")), Netgroup::asn(15169));
    assert_eq!(book.netgroup(ip("8.8.4.4")), Netgroup::asn(15169));
    for text in [
        "9.9.9.9",
        "193.0.6.139",
        "142.250.185.78",
        "2001:4860:4860::8888",
    ] {
        let asn = real().lookup(ip(text)).asn.unwrap();
        assert_eq!(book.netgroup(ip(text)), Netgroup::asn(asn), "{text}");
    }
    assert_eq!(book.netgroup(ip("1.1.1.1")), Netgroup::asn(13335));
    assert_eq!(book.netgroup(ip("8.8.8.8")).to_string(), "AS15169");
    assert_ne!(prefix_only, Netgroup::asn(15169));
    assert_eq!(
        book.netgroup(ip("10.1.2.3")),
        Netgroup::of(ip("10.1.2.3"), GroupBits::default())
    );
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        // Global unicast IPv6 (2000::/3), where the data is.
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from((n >> 3) | (1 << 125)))),
        any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// No address makes a lookup panic; what it returns is well formed.
    #[test]
    fn lookups_of_any_address_never_panic(addr in any_ip()) {
        let found = real().lookup(addr);
        if is_unlocatable(addr) {
            prop_assert_eq!(&found, &Location::default());
        }
        if let Some(country) = &found.country {
            prop_assert!(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()));
        }
        prop_assert_ne!(found.asn, Some(0));
    }
}
