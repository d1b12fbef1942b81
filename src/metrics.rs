//! Prometheus metrics: the recorder, the list of every metric with its help
//! text, and the `GET /metrics` endpoint.
//!
//! Every name starts with `timed_`, counters end in `_total`, units are in
//! the names (`_seconds`, `_bytes`). docs/METRICS.md lists them all; a unit
//! test checks the list against [`METRICS`] and the code's call sites. At
//! start-up every series the dashboard queries is registered at zero, so a
//! fresh node answers every panel's query.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::layers::stack::layer_names;
use crate::network::Network;
use crate::peer::Direction;

/// Kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

/// Every metric `timed` exports: name, kind, labels, help.
pub const METRICS: &[(&str, Kind, &str, &str)] = &[
    ("timed_build_info", Kind::Gauge, "version, network", "Always 1; labels carry the version and network."),
    ("timed_uptime_seconds", Kind::Gauge, "", "Seconds since the node started."),
    ("timed_task_panics_total", Kind::Counter, "task", "Long-lived tasks (connections, dialers, sync, block production, ...) that panicked, by task name; the panic is logged and the rest of the node keeps running."),
    ("timed_peers", Kind::Gauge, "direction", "Connected peers by direction (inbound, outbound)."),
    ("timed_handshakes_total", Kind::Counter, "result", "Connection setups by result: ok, or the error kind (timeout, forged_identity, wrong_genesis, ...)."),
    ("timed_connections_refused_total", Kind::Counter, "reason", "Connections refused: before the handshake (banned, accept_rate, max_per_ip) or right after it (max_inbound)."),
    ("timed_messages_total", Kind::Counter, "kind, direction", "Messages by kind (ping, gossip, ...) and direction (in, out)."),
    ("timed_bytes_total", Kind::Counter, "direction", "Bytes on the wire (encrypted records) by direction (in, out)."),
    ("timed_layer_decisions_total", Kind::Counter, "layer, decision, reason", "Middleware decisions: accepted, or rejected with a reason (duplicate, banned, peer_limit, ...)."),
    ("timed_bans_active", Kind::Gauge, "", "Active bans (IPs, /64s and subnets)."),
    ("timed_bans_total", Kind::Counter, "reason", "Bans made: escalation, score, manual, config."),
    ("timed_blacklist_violations_total", Kind::Counter, "reason", "Violations recorded against IPs, by cause."),
    ("timed_score_penalties_total", Kind::Counter, "offence", "Score penalties by offence."),
    ("timed_peer_score", Kind::Gauge, "stat", "Peer scores across connected peers: min, mean, max."),
    ("timed_rate_limit_hits_total", Kind::Counter, "kind, scope", "Messages refused by the rate limit, by message kind and scope: peer, ip (dropped, free), abuse (charged)."),
    ("timed_gossip_throttled_total", Kind::Counter, "kind", "Messages over their budget, delayed or dropped without a charge (honest load is never an offence)."),
    ("timed_late_responses_total", Kind::Counter, "kind", "Answers that came after their request timed out, dropped without a further charge."),
    ("timed_pool_announcements_total", Kind::Counter, "result", "Pool announcements to newly connected peers: sent, or skipped (node-wide budget spent)."),
    ("timed_dedup_hits_total", Kind::Counter, "", "Duplicates dropped by dedup."),
    ("timed_auth_batch_size", Kind::Histogram, "", "Signatures per batch of the batch verifier."),
    ("timed_ping_rtt_seconds", Kind::Histogram, "", "Keepalive round-trip times."),
    ("timed_request_duration_seconds", Kind::Histogram, "kind", "Time to the response of our requests to peers."),
    ("timed_send_queue_messages", Kind::Gauge, "", "Messages waiting in all send queues."),
    ("timed_send_queue_bytes", Kind::Gauge, "", "Bytes waiting in all send queues."),
    ("timed_send_queue_overflows_total", Kind::Counter, "", "Peers disconnected because they did not drain their send queue."),
    ("timed_gossip_relayed_total", Kind::Counter, "kind", "Envelopes queued for relay, counted per receiving peer."),
    ("timed_handler_messages_total", Kind::Counter, "handler", "Messages that reached each handler."),
    ("timed_vote_equivocations_total", Kind::Counter, "", "Masternodes seen accepting two transactions that spend the same output."),
    ("timed_chain_height", Kind::Gauge, "", "Height of the chain tip."),
    ("timed_blocks_applied_total", Kind::Counter, "source", "Blocks applied to the chain, by source: produced, gossip, sync."),
    ("timed_blocks_rejected_total", Kind::Counter, "reason", "Blocks refused, by reason: linkage, wrong_producer, merkle_root, signature, transaction, stale, ..."),
    ("timed_tip_replacements_total", Kind::Counter, "", "Tips rolled back for a competing block from an earlier slot."),
    ("timed_sync_progress", Kind::Gauge, "", "Sync progress: tip height over the best height peers showed, 0 to 1."),
    ("timed_sync_target_height", Kind::Gauge, "", "The best height peers showed (the sync target)."),
    ("timed_mempool_transactions", Kind::Gauge, "", "Transactions in the mempool."),
    ("timed_mempool_bytes", Kind::Gauge, "", "Bytes of the transactions in the mempool."),
    ("timed_transactions_total", Kind::Counter, "result", "Transactions offered to the mempool, by result: accepted, or the refusal (conflict, missing_input, insufficient_fee, ...)."),
    ("timed_txs_finalized_total", Kind::Counter, "", "Transactions finalized by masternode votes (2/3 of the weight)."),
    ("timed_finality_seconds", Kind::Histogram, "", "Time from first sight of a transaction to its finality by votes."),
    ("timed_votes_total", Kind::Counter, "result", "Votes handled, by result: counted, finalized, conflicted, pending, late, duplicate, not_masternode, equivocation."),
    ("timed_rpc_requests_total", Kind::Counter, "method, result", "JSON-RPC calls by method and result (ok, error)."),
    ("timed_rpc_request_duration_seconds", Kind::Histogram, "method", "JSON-RPC call durations."),
    ("timed_rpc_requests_refused_total", Kind::Counter, "reason", "JSON-RPC requests refused before their call ran: busy (HTTP 503, every worker busy), too_large (HTTP 413), body_timeout (HTTP 408), body_error, unauthorized (HTTP 401)."),
    ("timed_http_connections", Kind::Gauge, "server", "Open HTTP connections by server (rpc, metrics)."),
    ("timed_http_connections_refused_total", Kind::Counter, "server, reason", "HTTP connections closed at accept: max_connections (the cap was reached), accept_error (e.g. out of file descriptors)."),
    ("timed_http_timeouts_total", Kind::Counter, "server, phase", "HTTP connections closed by a deadline: header (request head too slow), idle (keep-alive without a request), body (request body too slow)."),
    ("timed_address_book_entries", Kind::Gauge, "table", "Addresses in the address book by table (new, tried)."),
    ("timed_connects_total", Kind::Counter, "type, result", "Outbound and inbound connections by type (manual, outbound-full, feeler, anchor, inbound) and result (ok, or the error kind)."),
    ("timed_pex_messages_total", Kind::Counter, "kind, direction", "Peer-exchange messages by kind (get_peers, peers, announce, relay) and direction (sent, received)."),
    ("timed_pex_records_refused_total", Kind::Counter, "reason", "Signed peer records refused, by reason: bad_signature, malformed, bad_address, future_timestamp, wrong_kind."),
    ("timed_seed_lookups_total", Kind::Counter, "result", "Seed look-ups (DNS or literal), by result (ok, error)."),
    ("timed_inbound_cap", Kind::Gauge, "", "The current cap on established inbound connections (shrinks under resource pressure)."),
    ("timed_evictions_total", Kind::Counter, "reason", "Peers dropped to make room: inbound evictions by reason (crowded_netgroup, youngest), all_protected (no peer could be evicted: the new one was refused), outbound_rotation (the weakest outbound peer replaced)."),
    ("timed_pressure_ratio", Kind::Gauge, "signal", "The dynamic inbound cap's signals: fds (open files over the soft limit) and send_queues (bytes queued over all queues' budget)."),
    ("timed_peers_by_country", Kind::Gauge, "country", "Connected peers by country (unknown when not found or without a country database)."),
    ("timed_peer_asns", Kind::Gauge, "", "Distinct ASNs among the connected peers (0 without an ASN database)."),
    ("timed_fd_limit", Kind::Gauge, "kind", "Open-file budget set at start-up: soft and hard limit, p2p_reserve, rpc and metrics connection caps."),
];

/// Histogram buckets for durations, in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Errors installing the recorder or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built.
    #[error("cannot build the metrics recorder: {0}")]
    Build(String),
    /// The listen address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the process-wide Prometheus recorder (once) and returns its
/// handle.
///
/// # Errors
/// If the recorder cannot be built or another recorder is installed.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("timed_auth_batch_size".into()), BATCH_BUCKETS)
        })
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError::Build(e.to_string()))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    for &(name, kind, _, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Registers the series every dashboard panel queries, at zero, so that a
/// fresh node answers them.
pub fn register_defaults(network: &str) {
    metrics::gauge!("timed_build_info", "version" => env!("CARGO_PKG_VERSION"), "network" => network.to_owned()).set(1.0);
    for direction in ["inbound", "outbound"] {
        metrics::gauge!("timed_peers", "direction" => direction).set(0.0);
    }
    for direction in ["in", "out"] {
        metrics::counter!("timed_bytes_total", "direction" => direction).increment(0);
    }
    metrics::counter!("timed_handshakes_total", "result" => "ok").increment(0);
    metrics::counter!("timed_connections_refused_total", "reason" => "banned").increment(0);
    for layer in layer_names() {
        metrics::counter!("timed_layer_decisions_total", "layer" => layer, "decision" => "accepted", "reason" => "none").increment(0);
    }
    for (layer, reason) in [
        ("blacklist", "banned"),
        ("scoring", "disconnected"),
        ("rate_limit", "peer_limit"),
        ("dedup", "duplicate"),
        ("auth", "bad_signature"),
    ] {
        metrics::counter!("timed_layer_decisions_total", "layer" => layer, "decision" => "rejected", "reason" => reason).increment(0);
    }
    metrics::gauge!("timed_bans_active").set(0.0);
    metrics::counter!("timed_bans_total", "reason" => "escalation").increment(0);
    metrics::counter!("timed_blacklist_violations_total", "reason" => "score").increment(0);
    metrics::counter!("timed_score_penalties_total", "offence" => "rate_limit_exceeded")
        .increment(0);
    metrics::counter!("timed_rate_limit_hits_total", "kind" => "ping", "scope" => "peer")
        .increment(0);
    for kind in ["tx", "vote", "block"] {
        metrics::counter!("timed_gossip_throttled_total", "kind" => kind).increment(0);
    }
    metrics::counter!("timed_late_responses_total", "kind" => "get_blocks").increment(0);
    for result in ["sent", "skipped"] {
        metrics::counter!("timed_pool_announcements_total", "result" => result).increment(0);
    }
    metrics::counter!("timed_dedup_hits_total").increment(0);
    metrics::counter!("timed_send_queue_overflows_total").increment(0);
    metrics::counter!("timed_gossip_relayed_total", "kind" => "tx").increment(0);
    for stat in ["min", "mean", "max"] {
        metrics::gauge!("timed_peer_score", "stat" => stat).set(0.0);
    }
    metrics::gauge!("timed_send_queue_messages").set(0.0);
    metrics::gauge!("timed_send_queue_bytes").set(0.0);
    for handler in ["blocks", "transactions", "votes", "addresses", "peers"] {
        metrics::counter!("timed_handler_messages_total", "handler" => handler).increment(0);
    }
    // The chain.
    metrics::gauge!("timed_chain_height").set(0.0);
    for source in ["produced", "gossip", "sync"] {
        metrics::counter!("timed_blocks_applied_total", "source" => source).increment(0);
    }
    metrics::counter!("timed_blocks_rejected_total", "reason" => "linkage").increment(0);
    metrics::counter!("timed_tip_replacements_total").increment(0);
    metrics::gauge!("timed_sync_progress").set(1.0);
    metrics::gauge!("timed_sync_target_height").set(0.0);
    metrics::gauge!("timed_mempool_transactions").set(0.0);
    metrics::gauge!("timed_mempool_bytes").set(0.0);
    metrics::counter!("timed_transactions_total", "result" => "accepted").increment(0);
    metrics::counter!("timed_txs_finalized_total").increment(0);
    metrics::counter!("timed_vote_equivocations_total").increment(0);
    for result in [
        "counted",
        "finalized",
        "pending",
        "not_masternode",
        "equivocation",
    ] {
        metrics::counter!("timed_votes_total", "result" => result).increment(0);
    }
    // The histograms without labels, registered so that their series
    // (`_bucket`, `_sum`, `_count`) exist at zero from start-up. A quantile
    // of no samples stays undefined (PromQL's `histogram_quantile` gives
    // NaN): the finality panel shows no value until a transaction is final
    // rather than a fake zero (README, "Watch it in Prometheus and Grafana").
    for name in [
        "timed_ping_rtt_seconds",
        "timed_auth_batch_size",
        "timed_finality_seconds",
    ] {
        let _ = metrics::histogram!(name);
    }
}

/// Updates the gauges derived from the node's state every `interval` until
/// `stop`.
pub async fn refresh(node: Network, interval: Duration, stop: CancellationToken) {
    // The bans the config file made at start-up (`[[middleware]]` blacklist
    // `banned_subnets`), counted once like every other ban made.
    let config_bans = node
        .blacklist()
        .list()
        .iter()
        .filter(|b| b.reason == "config")
        .count();
    metrics::counter!("timed_bans_total", "reason" => "config").increment(config_bans as u64);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let peers = node.peers().snapshot();
        metrics::gauge!("timed_uptime_seconds").set(node.uptime().as_secs_f64());
        metrics::gauge!("timed_peers", "direction" => "inbound")
            .set(node.peers().count(Direction::Inbound) as f64);
        metrics::gauge!("timed_peers", "direction" => "outbound")
            .set(node.peers().count(Direction::Outbound) as f64);
        let half_life = node.score_half_life();
        let scores: Vec<f64> = peers
            .iter()
            .map(|h| h.context.score.value(half_life))
            .collect();
        let (min, max, mean) = if scores.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (
                scores.iter().copied().fold(f64::INFINITY, f64::min),
                scores.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                scores.iter().sum::<f64>() / scores.len() as f64,
            )
        };
        metrics::gauge!("timed_peer_score", "stat" => "min").set(min);
        metrics::gauge!("timed_peer_score", "stat" => "mean").set(mean);
        metrics::gauge!("timed_peer_score", "stat" => "max").set(max);
        metrics::gauge!("timed_send_queue_messages")
            .set(peers.iter().map(|h| h.queue.len()).sum::<usize>() as f64);
        metrics::gauge!("timed_send_queue_bytes")
            .set(peers.iter().map(|h| h.queue.bytes()).sum::<usize>() as f64);
        metrics::gauge!("timed_bans_active").set(node.blacklist().list().len() as f64);
    }
}

/// Serves `GET /metrics` on `listen` under `limits` until `stop`.
///
/// # Errors
/// [`MetricsError::Bind`] if the address is unavailable.
pub async fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    limits: crate::http::HttpLimits,
    stop: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    serve_tracked(
        listen,
        handle,
        limits,
        stop,
        &tokio_util::task::TaskTracker::new(),
    )
    .await
}

/// [`serve`], the server's task belonging to `tasks`.
///
/// # Errors
/// [`MetricsError::Bind`] if the address is unavailable.
pub async fn serve_tracked(
    listen: SocketAddr,
    handle: PrometheusHandle,
    limits: crate::http::HttpLimits,
    stop: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: listen,
        source,
    })?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    crate::http::spawn(
        "metrics",
        listener,
        app,
        limits,
        Default::default(),
        stop,
        tasks,
    );
    tracing::info!(
        metrics = %local,
        max_connections = limits.max_connections,
        "serving Prometheus metrics on /metrics"
    );
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_are_documented() {
        let doc = include_str!("../docs/METRICS.md");
        for &(name, kind, _, _) in METRICS {
            assert!(name.starts_with("timed_"), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/METRICS.md"
            );
        }
    }

    #[test]
    fn every_metric_used_in_the_code_is_listed() {
        // Scan the sources for metric names in macro calls.
        fn scan(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    scan(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for part in text.split("\"timed_").skip(1) {
                        let name: String = part
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() && part[name.len()..].starts_with('"') {
                            out.push(format!("timed_{name}"));
                        }
                    }
                }
            }
        }
        let mut used = Vec::new();
        scan(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut used,
        );
        assert!(used.len() > 20);
        for name in used {
            assert!(
                METRICS.iter().any(|(n, ..)| *n == name),
                "{name} is used in src/ but missing from METRICS"
            );
        }
    }
}
