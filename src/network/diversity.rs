//! Peer diversity data: the country and the autonomous system (ASN) of an
//! IP address, read from MaxMind DB (`.mmdb`) files.
//!
//! # Why
//! An attacker who wants to surround (eclipse) a node needs many of its
//! peer slots, and addresses are cheapest to get in bulk from a few hosting
//! networks. IP prefixes (the address book's netgroups) spread peers over
//! address ranges, but one operator often announces many unrelated
//! prefixes from one AS. With an ASN database the node can group addresses
//! by the network that routes them (as Bitcoin Core's `-asmap` does), and
//! with both databases prefer outbound peers in countries and ASNs it has
//! few peers in.
//!
//! # Data
//! Both files are configured in the `[p2p.diversity]` section of the config
//! (`country_db`, `asn_db`). `scripts/fetch_geoip.sh DIR` fetches freely
//! licensed ones from the npm registry, verified against the registry's
//! checksums:
//!
//! * `country.mmdb` from `@ip-location-db/geo-whois-asn-country-mmdb`
//!   (package licence CC0-1.0; built from geofeeds and the regional
//!   registries' whois data, published by the NRO under CC BY 4.0). Its
//!   records are `{ country_code: "US" }`.
//! * `asn.mmdb` from `@ip-location-db/asn` (CC BY 4.0: RouteViews, NRO and
//!   DB-IP, whose attribution the script keeps in `DIR/licenses`), shipped
//!   as CSV and converted by `scripts/asn_csv_to_mmdb.py`. Its records are
//!   `{ autonomous_system_number: 15169, autonomous_system_organization:
//!   "Google LLC" }`, the layout of MaxMind's GeoLite2-ASN.
//!
//! MaxMind's own GeoLite2/GeoIP2 Country and ASN files work too: a country
//! is read from `country_code`, else from `country.iso_code`.
//!
//! # Without databases
//! Both keys are optional. A database that is not configured gives `None`
//! for its half of every [`Location`], and the node then tells peers apart
//! by IP prefixes alone (the address book's netgroups). A configured file
//! that is missing or not a MaxMind DB is a config error naming the key and
//! the path ([`DiversityError`]).
//!
//! # Addresses never looked up
//! Addresses that no database places anywhere return [`Location::default`]
//! without a lookup (see [`is_unlocatable`]): unspecified, loopback,
//! private (RFC 1918, IPv6 unique local), shared (100.64.0.0/10),
//! link-local, documentation, benchmarking, multicast and reserved ranges.
//! IPv4-mapped IPv6 addresses are looked up as the IPv4 address they carry.
//!
//! # Robustness
//! Each file is read whole into memory when opened (at most
//! [`MAX_DATABASE_BYTES`]); a lookup touches no file. A lookup never panics
//! and never fails: a database error, or a record of a shape other than the
//! ones above (a number where a code belongs, a code that is not two
//! letters, AS 0), gives `None` for that half.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use maxminddb::{MaxMindDbError, PathElement, Reader};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Largest database file opened, in bytes. MaxMind's largest commercial
/// databases are a few hundred MB; the files the fetch script writes are
/// about 8 MB (country) and 11 MB (ASN).
pub const MAX_DATABASE_BYTES: u64 = 1024 * 1024 * 1024;

/// The config key of the country database, as errors name it.
pub const COUNTRY_DB_KEY: &str = "p2p.diversity.country_db";

/// The config key of the ASN database, as errors name it.
pub const ASN_DB_KEY: &str = "p2p.diversity.asn_db";

/// `[p2p.diversity]`: the databases peer diversity reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiversityConfig {
    /// MaxMind DB file mapping IP addresses to ISO 3166 country codes.
    pub country_db: Option<PathBuf>,
    /// MaxMind DB file mapping IP addresses to AS numbers.
    pub asn_db: Option<PathBuf>,
}

/// Where an address is: its country and its autonomous system, each `None`
/// when unknown (no database, no record, or an address that is never
/// looked up).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code, upper case (`"US"`).
    pub country: Option<String>,
    /// Autonomous system number (never 0).
    pub asn: Option<u32>,
}

/// A database that could not be opened; names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum DiversityError {
    /// The file could not be opened or read.
    #[error("{}: {}", self.key(), self.reason())]
    Open {
        /// The config key, e.g. `p2p.diversity.asn_db`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory or another non-file.
    #[error("{}: {}", self.key(), self.reason())]
    NotAFile {
        /// The config key.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_DATABASE_BYTES`].
    #[error("{}: {}", self.key(), self.reason())]
    TooLarge {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// The file is not a MaxMind DB.
    #[error("{}: {}", self.key(), self.reason())]
    Invalid {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: MaxMindDbError,
    },
}

impl DiversityError {
    /// The config key of the database (`p2p.diversity.country_db` or
    /// `p2p.diversity.asn_db`).
    pub fn key(&self) -> &'static str {
        match self {
            DiversityError::Open { key, .. }
            | DiversityError::NotAFile { key, .. }
            | DiversityError::TooLarge { key, .. }
            | DiversityError::Invalid { key, .. } => key,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            DiversityError::Open { path, .. }
            | DiversityError::NotAFile { path, .. }
            | DiversityError::TooLarge { path, .. }
            | DiversityError::Invalid { path, .. } => path,
        }
    }

    /// What is wrong, naming the file but not the key (for messages that
    /// name the key themselves).
    pub fn reason(&self) -> String {
        match self {
            DiversityError::Open { path, source, .. } => {
                format!("cannot open {}: {}", path.display(), io_reason(source))
            }
            DiversityError::NotAFile { path, .. } => {
                format!("{} is not a regular file", path.display())
            }
            DiversityError::TooLarge { path, len, .. } => format!(
                "{} is {len} bytes, more than a database may have ({MAX_DATABASE_BYTES})",
                path.display()
            ),
            DiversityError::Invalid { path, source, .. } => {
                format!("{} is not a MaxMind DB file: {source}", path.display())
            }
        }
    }
}

/// An I/O error as the operating system words it, without Rust's
/// `(os error N)` suffix.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// The opened databases; cheap to query from any thread (`Send + Sync`).
#[derive(Debug)]
pub struct Diversity {
    country: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl Diversity {
    /// No databases: every lookup gives [`Location::default`].
    pub fn none() -> Diversity {
        Diversity {
            country: None,
            asn: None,
        }
    }

    /// Opens the databases `config` names (each optional), reading each
    /// file whole into memory.
    ///
    /// # Errors
    /// A [`DiversityError`] naming the key and the file of the first
    /// database that is missing, unreadable, too large or not a MaxMind DB.
    pub fn open(config: &DiversityConfig) -> Result<Diversity, DiversityError> {
        let open = |key: &'static str, path: &Option<PathBuf>| {
            path.as_deref().map(|p| open_database(key, p)).transpose()
        };
        Ok(Diversity {
            country: open(COUNTRY_DB_KEY, &config.country_db)?,
            asn: open(ASN_DB_KEY, &config.asn_db)?,
        })
    }

    /// Whether a country database is open.
    pub fn has_country(&self) -> bool {
        self.country.is_some()
    }

    /// Whether an ASN database is open.
    pub fn has_asn(&self) -> bool {
        self.asn.is_some()
    }

    /// The country and AS of `ip`. Addresses for which
    /// [`is_unlocatable`] holds give [`Location::default`] without a
    /// lookup; IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let ip = ip.to_canonical();
        if is_unlocatable(ip) {
            return Location::default();
        }
        Location {
            country: self.country.as_ref().and_then(|db| country_of(db, ip)),
            asn: self.asn.as_ref().and_then(|db| asn_of(db, ip)),
        }
    }
}

fn open_database(key: &'static str, path: &Path) -> Result<Reader<Vec<u8>>, DiversityError> {
    let open_error = |source| DiversityError::Open {
        key,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    // A FIFO or a device (say /dev/zero) would be read forever.
    if !meta.is_file() {
        return Err(DiversityError::NotAFile {
            key,
            path: path.to_owned(),
        });
    }
    if meta.len() > MAX_DATABASE_BYTES {
        return Err(DiversityError::TooLarge {
            key,
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while it is read stops at the limit, and the
    // reader then refuses it as truncated.
    file.take(MAX_DATABASE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(open_error)?;
    let reader = Reader::from_source(bytes).map_err(|source| DiversityError::Invalid {
        key,
        path: path.to_owned(),
        source,
    })?;
    let m = reader.metadata();
    tracing::info!(
        key,
        path = %path.display(),
        database_type = %m.database_type,
        build_epoch = m.build_epoch,
        node_count = m.node_count,
        "diversity database opened"
    );
    Ok(reader)
}

/// The two-letter upper-case code of `ip` in a country database: the
/// record's `country_code` (ip-location-db) or `country.iso_code` (MaxMind).
fn country_of(db: &Reader<Vec<u8>>, ip: IpAddr) -> Option<String> {
    let found = db.lookup(ip).ok()?;
    let paths: [&[PathElement<'_>]; 2] = [
        &[PathElement::Key("country_code")],
        &[PathElement::Key("country"), PathElement::Key("iso_code")],
    ];
    paths
        .iter()
        .find_map(|path| found.decode_path::<String>(path).ok().flatten())
        .and_then(|code| iso_country(&code))
}

/// `code` as an ISO 3166-1 alpha-2 code: two ASCII letters, upper-cased.
/// `ZZ`, which some databases write for "unknown", is none.
fn iso_country(code: &str) -> Option<String> {
    let code = code.to_ascii_uppercase();
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && code != "ZZ")
        .then_some(code)
}

/// The AS number of `ip` in an ASN database (GeoLite2-ASN layout), stored
/// as an unsigned integer of any width; AS 0 (unrouted, RFC 7607) and
/// numbers beyond 32 bits are none.
fn asn_of(db: &Reader<Vec<u8>>, ip: IpAddr) -> Option<u32> {
    let Unsigned(asn) = db
        .lookup(ip)
        .ok()?
        .decode_path::<Unsigned>(&[PathElement::Key("autonomous_system_number")])
        .ok()
        .flatten()?;
    u32::try_from(asn).ok().filter(|&asn| asn != 0)
}

/// An unsigned integer of any MaxMind DB width (uint16 to uint128): the
/// reader's typed decoding accepts only the exact width.
struct Unsigned(u128);

impl<'de> Deserialize<'de> for Unsigned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UnsignedVisitor;
        impl Visitor<'_> for UnsignedVisitor {
            type Value = Unsigned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Unsigned, E> {
                Ok(Unsigned(n.into()))
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> Result<Unsigned, E> {
                Ok(Unsigned(n))
            }
        }
        deserializer.deserialize_any(UnsignedVisitor)
    }
}

/// Whether `ip` is an address no database places (and [`Diversity::lookup`]
/// skips): unspecified, loopback, private, shared, link-local,
/// documentation, benchmarking, multicast or reserved; for IPv6 also
/// unique local, the discard prefix and IPv4-compatible addresses
/// (`::/96`). An IPv4-mapped IPv6 address is judged as its IPv4 address.
pub fn is_unlocatable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_unlocatable(v4),
        IpAddr::V6(v6) => v6_unlocatable(v6),
    }
}

fn v4_unlocatable(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // 0.0.0.0/8, "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_documentation()
        || ip.is_multicast()
        || a >= 240 // reserved 240.0.0.0/4 and the broadcast address
        || (a == 100 && (64..128).contains(&b)) // shared 100.64.0.0/10
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
}

fn v6_unlocatable(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard 100::/64
        || s[..6] == [0; 6] // IPv4-compatible ::/96 (deprecated)
}

#[cfg(test)]
mod tests;
