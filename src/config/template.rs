//! The commented config file `timed init` writes.

use std::path::Path;

use super::Config;
use crate::params::Network;

/// The commented config `timed init` writes; `{network}`, `{listen}`,
/// `{rpc}`, `{metrics}` and `{data_dir}` are filled in.
pub const TEMPLATE: &str = r#"# timed configuration. Every key is optional; docs/CONFIG.md explains each.
# Unknown keys are errors.

[node]
network = "{network}"              # mainnet | testnet | devnet
data_dir = "{data_dir}"

[p2p]
listen = "{listen}"
# external_addr = "203.0.113.7:24000"  # address announced to peers
peers = []                          # "IP:PORT" or "NODE_ID@IP:PORT", kept connected
seeds = []                          # "HOST:PORT" (DNS names too), used when the address book is empty
min_peers = 8                       # floor of the dynamic inbound cap
max_peers = 50                      # all connections, inbound and outbound
target_outbound = 8                 # automatic outbound connections, one per netgroup
netgroup_ipv4_bits = 16             # an IPv4 netgroup is a /16 (32: every address its own)
netgroup_ipv6_bits = 32
max_inbound = 42
max_pending_handshakes = 32         # a new handshake evicts the oldest beyond this
max_outbound = 16
max_per_ip = 4
accepts_per_ip_per_minute = 30
handshake_timeout_secs = 5
ping_interval_secs = 30
pong_timeout_secs = 20
request_timeout_secs = 20
max_frame_bytes = 4194304
rekey_after_messages = 4096
rekey_after_bytes = 67108864
send_queue_bytes = 16777216
crypto_backend = "ring"             # ring | rustcrypto

# [p2p.diversity]                   # peer location data (scripts/fetch_geoip.sh fetches both)
# country_db = "geoip/country.mmdb" # IP to country: outbound peers spread over countries
# asn_db = "geoip/asn.mmdb"         # IP to ASN: netgroups become ASNs

[rpc]
enabled = true
listen = "{rpc}"                    # loopback: the RPC has no TLS
# Local clients authenticate with the cookie file {data_dir}/.cookie,
# rewritten at every start. Setting any of the three keys below makes
# credentials required (otherwise a call without any is served too).
# bearer_token = "a long random secret"  # Authorization: Bearer <token>
# user = "alice"                    # with password: HTTP Basic, as bitcoind's rpcuser
# password = "a long random secret" # 16+ characters, as rpcpassword
max_body_bytes = 1048576
max_concurrent = 16                 # requests handled at once (bodies included)
max_connections = 128               # open connections; more are closed at once
header_timeout_secs = 10            # to send a request head
body_timeout_secs = 30              # to send a request body
idle_timeout_secs = 30              # keep-alive without a request
queue_timeout_secs = 5              # wait for a worker, then HTTP 503

[metrics]
enabled = true
listen = "{metrics}"                # GET /metrics (Prometheus text format)
max_connections = 16

[logging]
filter = "info"                     # RUST_LOG syntax; RUST_LOG overrides it
format = "human"                    # human | json

[chain]
# block_interval_secs = 600         # default: 600 (devnet: 2)
# genesis_timestamp = 0             # slot 0 starts here (devnet: 2026-01-01)
masternode = true                   # vote and produce if our key is listed below
mempool_max_txs = 5000
mempool_max_bytes = 20971520
# genesis_hash = "..."              # checked against the genesis below
# Without masternodes a devnet node runs a one-node chain of its own.
# [[chain.masternodes]]
# public_key = "64 hex digits of the node key"
# tier = "free"                     # free | bronze | silver | gold
# [[chain.allocations]]
# address = "TIME0..."
# amount = "1000"                   # TIME, decimal

# The inbound middleware, outermost first. Remove, reorder or tune layers
# here; docs/CONFIG.md lists every parameter and why this is the default order.
[[middleware]]
name = "blacklist"

[[middleware]]
name = "scoring"

[[middleware]]
name = "rate_limit"

[[middleware]]
name = "dedup"

[[middleware]]
name = "auth"
"#;

/// The template filled in for `network` and `data_dir`.
pub fn render_template(network: Network, data_dir: &Path) -> String {
    let c = Config::for_network(network);
    TEMPLATE
        .replace("{network}", network.name())
        .replace(
            "{data_dir}",
            &data_dir.display().to_string().replace('\\', "\\\\"),
        )
        .replace("{listen}", &c.p2p_listen().to_string())
        .replace("{rpc}", &c.rpc_listen().to_string())
        .replace("{metrics}", &c.metrics_listen().to_string())
}
