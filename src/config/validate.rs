//! Range checks of a parsed config (each error names its own key) and the
//! start-up warnings for legal but surprising settings.

use std::path::Path;

use super::{parse_key, Config, ConfigError};

/// Largest value of any duration key, in seconds: one day. No timeout or
/// interval of the node is useful beyond that, and it keeps every
/// `Instant + Duration` far from overflowing (a key of `i64::MAX` seconds
/// would panic the first time a connection set a deadline).
pub const MAX_DURATION_SECS: u64 = 86_400;

/// Largest `rpc.max_connections` / `metrics.max_connections`: more than any
/// open-file limit leaves for them (start-up lowers the value further to
/// what the limit allows).
pub const MAX_HTTP_CONNECTIONS: usize = 65_536;

impl Config {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        let duration = |key: &'static str, value: u64, min: u64| {
            if (min..=MAX_DURATION_SECS).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key,
                    message: format!(
                        "must be between {min} and {MAX_DURATION_SECS} seconds (one day), not {value}"
                    ),
                })
            }
        };
        let p = &self.p2p;
        if p.max_outbound == 0 && !p.peers.is_empty() {
            return Err(invalid(
                "p2p.max_outbound",
                "must be at least 1 when peers are configured",
            ));
        }
        if p.min_peers > p.max_peers {
            return Err(invalid(
                "p2p.min_peers",
                &format!(
                    "must not exceed p2p.max_peers ({}), not {}",
                    p.max_peers, p.min_peers
                ),
            ));
        }
        if p.max_peers == 0 {
            return Err(invalid("p2p.max_peers", "must be at least 1"));
        }
        if p.target_outbound > p.max_outbound {
            return Err(invalid(
                "p2p.target_outbound",
                &format!(
                    "must not exceed p2p.max_outbound ({}), not {}",
                    p.max_outbound, p.target_outbound
                ),
            ));
        }
        if !(8..=32).contains(&p.netgroup_ipv4_bits) {
            return Err(invalid(
                "p2p.netgroup_ipv4_bits",
                "must be between 8 and 32",
            ));
        }
        if !(16..=128).contains(&p.netgroup_ipv6_bits) {
            return Err(invalid(
                "p2p.netgroup_ipv6_bits",
                "must be between 16 and 128",
            ));
        }
        for seed in &p.seeds {
            let port_ok = seed.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !port_ok {
                return Err(invalid("p2p.seeds", &format!("{seed:?} is not HOST:PORT")));
            }
        }
        if p.max_per_ip == 0 {
            return Err(invalid("p2p.max_per_ip", "must be at least 1"));
        }
        if p.max_pending_handshakes == 0 {
            return Err(invalid("p2p.max_pending_handshakes", "must be at least 1"));
        }
        duration("p2p.handshake_timeout_secs", p.handshake_timeout_secs, 1)?;
        if p.ping_interval_secs < 2 {
            return Err(invalid(
                "p2p.ping_interval_secs",
                "must be at least 2 (peers allow 6 pings per 10 s)",
            ));
        }
        duration("p2p.ping_interval_secs", p.ping_interval_secs, 2)?;
        duration("p2p.pong_timeout_secs", p.pong_timeout_secs, 1)?;
        duration("p2p.request_timeout_secs", p.request_timeout_secs, 1)?;
        if !(crate::constants::PRE_VERSION_MAX_FRAME_LEN..=crate::constants::DEFAULT_MAX_FRAME_LEN)
            .contains(&p.max_frame_bytes)
        {
            return Err(invalid(
                "p2p.max_frame_bytes",
                "must be between 4096 and 4194304 (the protocol's message limit)",
            ));
        }
        if p.rekey_after_messages == 0 {
            return Err(invalid("p2p.rekey_after_messages", "must be at least 1"));
        }
        if p.rekey_after_bytes == 0 {
            return Err(invalid("p2p.rekey_after_bytes", "must be at least 1"));
        }
        if p.send_queue_bytes == 0 {
            return Err(invalid("p2p.send_queue_bytes", "must be at least 1"));
        }
        let r = &self.rpc;
        if r.max_body_bytes == 0 {
            return Err(invalid("rpc.max_body_bytes", "must be at least 1"));
        }
        if r.max_concurrent == 0 {
            return Err(invalid("rpc.max_concurrent", "must be at least 1"));
        }
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&r.max_connections) {
            return Err(invalid(
                "rpc.max_connections",
                "must be between 1 and 65536",
            ));
        }
        duration("rpc.header_timeout_secs", r.header_timeout_secs, 1)?;
        duration("rpc.body_timeout_secs", r.body_timeout_secs, 1)?;
        duration("rpc.idle_timeout_secs", r.idle_timeout_secs, 1)?;
        duration("rpc.queue_timeout_secs", r.queue_timeout_secs, 0)?;
        if let Some(token) = &r.bearer_token {
            if token.len() < 16 {
                return Err(invalid(
                    "rpc.bearer_token",
                    "must be at least 16 characters",
                ));
            }
        }
        match (&r.user, &r.password) {
            (Some(_), None) => {
                return Err(invalid(
                    "rpc.password",
                    "must be set as well: user and password go together",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "rpc.user",
                    "must be set as well: user and password go together",
                ));
            }
            (Some(user), Some(password)) => {
                // HTTP Basic splits user from password at the first colon.
                if user.is_empty() || user.contains(':') {
                    return Err(invalid(
                        "rpc.user",
                        "must be non-empty and must not contain ':'",
                    ));
                }
                if user == crate::constants::RPC_COOKIE_USER {
                    return Err(invalid(
                        "rpc.user",
                        "__cookie__ is reserved for the cookie file",
                    ));
                }
                if password.len() < 16 {
                    return Err(invalid("rpc.password", "must be at least 16 characters"));
                }
            }
            (None, None) => {}
        }
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&self.metrics.max_connections) {
            return Err(invalid(
                "metrics.max_connections",
                "must be between 1 and 65536",
            ));
        }
        if self.genesis_hash().is_none() {
            return Err(invalid("chain.genesis_hash", "must be 64 hex digits"));
        }
        let c = &self.chain;
        if let Some(secs) = c.block_interval_secs {
            if secs == 0 || secs > crate::chain::genesis::MAX_BLOCK_INTERVAL_SECS {
                return Err(invalid(
                    "chain.block_interval_secs",
                    "must be between 1 and 86400",
                ));
            }
        }
        if c.mempool_max_txs == 0 {
            return Err(invalid("chain.mempool_max_txs", "must be at least 1"));
        }
        if c.mempool_max_bytes < crate::chain::transaction::MAX_TX_BYTES {
            return Err(invalid(
                "chain.mempool_max_bytes",
                "the mempool must hold at least one transaction of the largest size (100000 bytes)",
            ));
        }
        for (i, m) in c.masternodes.iter().enumerate() {
            if parse_key(&m.public_key).is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.masternodes",
                    message: format!(
                        "entry {i}: public_key = {:?} is not 64 hex digits of an ed25519 key",
                        m.public_key
                    ),
                });
            }
        }
        for (i, a) in c.allocations.iter().enumerate() {
            if let Err(e) = crate::chain::Address::parse(&a.address, self.network()) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.allocations",
                    message: format!("entry {i}: address = {:?}: {e}", a.address),
                });
            }
            if let Err(e) = crate::wallet::parse_amount(&a.amount) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain.allocations",
                    message: format!("entry {i}: amount = {:?}: {e}", a.amount),
                });
            }
        }
        if !c.masternodes.is_empty() {
            // Without the node's own key the genesis is complete: check it now.
            self.genesis(&[0u8; 32], None)
                .map_err(|message| ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "chain",
                    message,
                })?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.filter).is_err() {
            return Err(invalid(
                "logging.filter",
                "is not a valid RUST_LOG-style filter",
            ));
        }
        if let Err(e) = crate::network::diversity::Diversity::open(&p.diversity) {
            return Err(invalid(e.key(), &e.reason()));
        }
        Ok(())
    }

    /// Legal settings an operator should know about, each naming its key:
    /// the ones that stop the node from accepting inbound peers or from
    /// dialling any. `timed run` logs each as a WARN line and `timed config
    /// check` prints them.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let p = &self.p2p;
        let mut out = Vec::new();
        if p.max_inbound == 0 {
            out.push(ConfigWarning {
                key: "p2p.max_inbound",
                message: "0: the node accepts no inbound connections; peers cannot dial it",
            });
        }
        if p.accepts_per_ip_per_minute == 0 {
            out.push(ConfigWarning {
                key: "p2p.accepts_per_ip_per_minute",
                message: "0 is taken as 1: each IP may connect once a minute",
            });
        }
        if p.max_outbound == 0 {
            out.push(ConfigWarning {
                key: "p2p.max_outbound",
                message: "0: the node dials no peers and depends on inbound ones",
            });
        }
        out
    }
}

/// A legal but surprising setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key, e.g. `p2p.max_inbound`.
    pub key: &'static str,
    /// What it does.
    pub message: &'static str,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}", self.key, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn huge_durations_are_refused_naming_their_key() {
        for key in [
            "handshake_timeout_secs",
            "ping_interval_secs",
            "pong_timeout_secs",
            "request_timeout_secs",
        ] {
            let e = error(&format!("[p2p]\n{key} = {}\n", i64::MAX));
            assert!(e.contains(&format!("p2p.{key}")), "{e}");
            assert!(e.contains("86400"), "{e}");
            let e = error(&format!("[p2p]\n{key} = 0\n"));
            assert!(e.contains(&format!("p2p.{key}")), "{e}");
        }
        for key in [
            "header_timeout_secs",
            "body_timeout_secs",
            "idle_timeout_secs",
            "queue_timeout_secs",
        ] {
            let e = error(&format!("[rpc]\n{key} = {}\n", i64::MAX));
            assert!(e.contains(&format!("rpc.{key}")), "{e}");
        }
        let ok = "[p2p]\npong_timeout_secs = 86400\nrequest_timeout_secs = 86400\n";
        Config::parse(ok, Path::new("c.toml")).unwrap();
        Config::parse("[rpc]\nqueue_timeout_secs = 0\n", Path::new("c.toml")).unwrap();
    }

    #[test]
    fn each_check_names_its_own_key() {
        for (text, key) in [
            ("[rpc]\nmax_concurrent = 0\n", "rpc.max_concurrent"),
            ("[rpc]\nmax_body_bytes = 0\n", "rpc.max_body_bytes"),
            ("[rpc]\nmax_connections = 0\n", "rpc.max_connections"),
            (
                "[metrics]\nmax_connections = 0\n",
                "metrics.max_connections",
            ),
            (
                "[p2p]\nrekey_after_messages = 0\n",
                "p2p.rekey_after_messages",
            ),
            ("[p2p]\nrekey_after_bytes = 0\n", "p2p.rekey_after_bytes"),
            ("[p2p]\npong_timeout_secs = 0\n", "p2p.pong_timeout_secs"),
            (
                "[p2p]\nrequest_timeout_secs = 0\n",
                "p2p.request_timeout_secs",
            ),
            ("[chain]\nmempool_max_txs = 0\n", "chain.mempool_max_txs"),
            (
                "[chain]\nmempool_max_bytes = 10\n",
                "chain.mempool_max_bytes",
            ),
            ("[p2p]\nmax_frame_bytes = 10\n", "p2p.max_frame_bytes"),
            (
                "[p2p]\nmax_frame_bytes = 999999999\n",
                "p2p.max_frame_bytes",
            ),
            ("[rpc]\nbearer_token = \"short\"\n", "rpc.bearer_token"),
            ("[rpc]\nuser = \"alice\"\n", "rpc.password"),
            ("[rpc]\npassword = \"0123456789abcdef\"\n", "rpc.user"),
            (
                "[rpc]\nuser = \"alice\"\npassword = \"short\"\n",
                "rpc.password",
            ),
            (
                "[rpc]\nuser = \"a:b\"\npassword = \"0123456789abcdef\"\n",
                "rpc.user",
            ),
            (
                "[rpc]\nuser = \"__cookie__\"\npassword = \"0123456789abcdef\"\n",
                "rpc.user",
            ),
            ("[p2p]\nmax_per_ip = 0\n", "p2p.max_per_ip"),
            (
                "[p2p]\nmax_pending_handshakes = 0\n",
                "p2p.max_pending_handshakes",
            ),
            ("[p2p]\nsend_queue_bytes = 0\n", "p2p.send_queue_bytes"),
            (
                "[p2p]\nmax_outbound = 0\npeers = [\"127.0.0.1:1\"]\n",
                "p2p.max_outbound",
            ),
            ("[p2p]\nping_interval_secs = 1\n", "p2p.ping_interval_secs"),
            (
                "[p2p]\nhandshake_timeout_secs = 0\n",
                "p2p.handshake_timeout_secs",
            ),
            (
                "[chain]\nblock_interval_secs = 0\n",
                "chain.block_interval_secs",
            ),
            ("[chain]\ngenesis_hash = \"ab\"\n", "chain.genesis_hash"),
            ("[logging]\nfilter = \"=\"\n", "logging.filter"),
        ] {
            let e = error(text);
            // The key the operator must fix, and no other key of the file.
            assert!(e.contains(&format!(": {key}: ")), "{text:?} gave: {e}");
            let others = e.matches("p2p.").count()
                + e.matches("rpc.").count()
                + e.matches("chain.").count()
                + e.matches("metrics.").count()
                + e.matches("logging.").count();
            assert_eq!(others, 1, "{text:?} names more than its key: {e}");
        }
    }

    #[test]
    fn middleware_checks_name_the_entry_and_the_parameter() {
        for (text, named) in [
            (
                "[[middleware]]\nname = \"rate_limit\"\nabuse_factor = 0\n",
                "middleware[0] (rate_limit): abuse_factor ",
            ),
            (
                "[[middleware]]\nname = \"rate_limit\"\nmax_delay_ms = 999999\n",
                "middleware[0] (rate_limit): max_delay_ms ",
            ),
            (
                "[[middleware]]\nname = \"rate_limit\"\nping = { count = 0, per_secs = 10 }\n",
                "middleware[0] (rate_limit): ping: ",
            ),
            (
                "[[middleware]]\nname = \"rate_limit\"\nper_ip = { count = 1, per_secs = 0 }\n",
                "middleware[0] (rate_limit): per_ip: ",
            ),
            (
                "[[middleware]]\nname = \"blacklist\"\n\n[[middleware]]\nname = \"scoring\"\nhalf_life_secs = 0\n",
                "middleware[1] (scoring): half_life_secs ",
            ),
            (
                "[[middleware]]\nname = \"dedup\"\nttl_secs = 0\n",
                "middleware[0] (dedup): ttl_secs ",
            ),
            (
                "[[middleware]]\nname = \"auth\"\nmax_batch = 0\n",
                "middleware[0] (auth): max_batch ",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(named), "{text:?} gave: {e}");
        }
    }

    #[test]
    fn configs_that_disable_inbound_warn() {
        let c = Config::parse("[p2p]\nmax_inbound = 0\n", Path::new("c.toml")).unwrap();
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "p2p.max_inbound");
        assert!(Config::default().warnings().is_empty());
    }
}
