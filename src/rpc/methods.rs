//! The network and node RPC methods. Parameters may be positional (an
//! array) or named (an object); [`super::params::SIGNATURES`] lists every
//! method's parameters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::{codes, RpcContext, RpcError};
use crate::constants::{PROTOCOL_VERSION, USER_AGENT};
use crate::crypto::NodeId;
use crate::layers::blacklist::BanUntil;
use crate::network::PeerTarget;
use crate::protocol::version::unix_now;

/// Every method, for `help` and metrics labels.
pub const NAMES: &[&str] = &[
    "help",
    "getnetworkinfo",
    "getpeerinfo",
    "getconnectioncount",
    "addnode",
    "disconnectnode",
    "listbanned",
    "setban",
    "clearbanned",
    "getmiddleware",
    "reloadconfig",
    "uptime",
    "getaddrmaninfo",
    "getnodeaddresses",
    "stop",
];

pub(super) use super::params::{no_params, param, string_param};
use super::params::{optional_string_param, quoted};

/// Runs `method`.
pub(super) async fn dispatch(
    ctx: &RpcContext,
    method: &str,
    params: &Value,
) -> Result<Value, RpcError> {
    let node = &ctx.node;
    super::params::check_arity(method, params)?;
    match method {
        "help" => {
            no_params(params)?;
            Ok(json!(NAMES
                .iter()
                .chain(super::chain::NAMES)
                .collect::<Vec<_>>()))
        }
        "getnetworkinfo" => {
            no_params(params)?;
            let config = node.config();
            let version = &config.handshake.version;
            Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "subversion": USER_AGENT,
                "protocolversion": PROTOCOL_VERSION,
                "network": version.network.name(),
                "magic": hex::encode(version.network.magic()),
                "genesis_hash": hex::encode(version.genesis_hash),
                "node_id": node.node_id().to_string(),
                "listen": node.local_addr().to_string(),
                "localaddress": version.listen_addr.map(|a| a.to_string()),
                "connections": node.peers().len(),
                "connections_in": node.peers().count(crate::peer::Direction::Inbound),
                "connections_out": node.peers().count(crate::peer::Direction::Outbound),
                "inbound_cap": node.inbound_cap(),
                "middleware": node.middleware().describe(),
            }))
        }
        "getconnectioncount" => {
            no_params(params)?;
            Ok(json!(node.peers().len()))
        }
        "getpeerinfo" => {
            no_params(params)?;
            let half_life = node.score_half_life();
            let peers: Vec<Value> = node
                .peers()
                .snapshot()
                .iter()
                .map(|h| {
                    let s = &h.context.stats;
                    let rtt_us = s.rtt_us.load(Ordering::Relaxed);
                    json!({
                        "id": h.info.node_id.to_string(),
                        "addr": h.info.addr.to_string(),
                        "direction": h.info.direction.as_str(),
                        "conn_id": h.context.conn_id,
                        "rtt_ms": if rtt_us == 0 { Value::Null } else { json!(rtt_us as f64 / 1000.0) },
                        "score": (h.context.score.value(half_life) * 100.0).round() / 100.0,
                        "bytes_sent": s.bytes_out.load(Ordering::Relaxed),
                        "bytes_recv": s.bytes_in.load(Ordering::Relaxed),
                        "messages_sent": s.messages_out.load(Ordering::Relaxed),
                        "messages_recv": s.messages_in.load(Ordering::Relaxed),
                        "layer_rejections": s.rejected.load(Ordering::Relaxed),
                        "send_queue": h.queue.len(),
                        "user_agent": h.info.version.user_agent,
                        "protocol_version": h.info.version.protocol_version,
                        "version": h.info.version.protocol_version,
                        "subver": h.info.version.user_agent,
                        "best_height": h.info.version.best_height,
                        "listen_addr": h.info.version.listen_addr.map(|a| a.to_string()),
                        "connection_type": h.kind.as_str(),
                        "quality": (node.peer_quality(h).value() * 1000.0).round() / 1000.0,
                        "country": node.config().diversity.lookup(h.info.addr.ip()).country,
                        "asn": node.config().diversity.lookup(h.info.addr.ip()).asn,
                        "netgroup": crate::locks::lock(node.address_book()).netgroup(h.info.addr.ip()).to_string(),
                        "conntime": h.context.connected_unix,
                        "time_offset_secs": h.info.version.timestamp as i64 - h.context.connected_unix as i64,
                    })
                })
                .collect();
            Ok(Value::Array(peers))
        }
        "addnode" => {
            let text = string_param(params, 0, "node")?;
            let target: PeerTarget = text.parse().map_err(|_| {
                RpcError::params(format!(
                    "invalid peer {}: expected IP:PORT or NODE_ID@IP:PORT",
                    quoted(text)
                ))
            })?;
            let command = optional_string_param(params, 1, "command")?.unwrap_or("add");
            match command {
                "add" => {
                    if !node.add_peer(target.clone()) {
                        return Err(RpcError::params(format!(
                            "{} is already added",
                            target.addr
                        )));
                    }
                    Ok(Value::Null)
                }
                "remove" => {
                    if !node.remove_peer(target.addr) {
                        return Err(RpcError::new(
                            codes::NOT_FOUND,
                            format!("{} was not added", target.addr),
                        ));
                    }
                    Ok(Value::Null)
                }
                "onetry" => match node.connect(&target).await {
                    Ok(info) => Ok(json!({"id": info.node_id.to_string()})),
                    Err(e) => Err(RpcError::new(
                        codes::NOT_FOUND,
                        format!("cannot connect: {e}"),
                    )),
                },
                other => Err(RpcError::params(format!(
                    "command must be add, remove or onetry, not {}",
                    quoted(other)
                ))),
            }
        }
        "disconnectnode" => {
            let which = string_param(params, 0, "node")?;
            let n = if let Ok(id) = which.parse::<NodeId>() {
                node.disconnect(|p| p.node_id == id)
            } else if let Ok(addr) = which.parse::<SocketAddr>() {
                node.disconnect(|p| p.addr == addr)
            } else if let Ok(ip) = which.parse::<IpAddr>() {
                node.disconnect(|p| p.addr.ip() == ip)
            } else {
                return Err(RpcError::params("expected a node id, an IP or an IP:port"));
            };
            if n == 0 {
                return Err(RpcError::new(
                    codes::NOT_FOUND,
                    format!("no connected peer matches {}", quoted(which)),
                ));
            }
            Ok(json!(n))
        }
        "listbanned" => {
            no_params(params)?;
            let now = unix_now();
            Ok(Value::Array(
                node.blacklist()
                    .list()
                    .into_iter()
                    .map(|b| {
                        json!({
                            "address": b.subnet.to_string(),
                            "banned_until": match b.until {
                                BanUntil::Permanent => Value::Null,
                                BanUntil::Until(_) => json!(now.as_secs() + b.until.remaining_secs().unwrap_or(0)),
                            },
                            "remaining_secs": b.until.remaining_secs(),
                            "reason": b.reason,
                        })
                    })
                    .collect(),
            ))
        }
        "setban" => {
            let target = string_param(params, 0, "subnet")?;
            let subnet: IpNet = target
                .parse()
                .or_else(|_| target.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    RpcError::params(format!("{} is not an IP or a CIDR subnet", quoted(target)))
                })?;
            let command = string_param(params, 1, "command")?;
            match command {
                "add" => {
                    let secs = match param(params, 2, "bantime") {
                        None => Some(24 * 3600),
                        Some(v) => match v.as_u64() {
                            Some(0) => None,
                            Some(s) => Some(s),
                            None => {
                                return Err(RpcError::params(
                                    "bantime must be seconds (0: permanent)",
                                ))
                            }
                        },
                    };
                    node.blacklist()
                        .ban_subnet(subnet, secs.map(Duration::from_secs), "manual");
                    node.disconnect_with(crate::protocol::DisconnectReason::Banned, |p| {
                        subnet.contains(&crate::layers::blacklist::ip_key(p.addr.ip()))
                    });
                    Ok(Value::Null)
                }
                "remove" => {
                    if !node.blacklist().unban(subnet) {
                        return Err(RpcError::new(
                            codes::NOT_FOUND,
                            format!("{subnet} is not banned"),
                        ));
                    }
                    // The scores behind the ban go with it.
                    node.forgive_scores(|ip| {
                        subnet.contains(&crate::layers::blacklist::ip_key(ip))
                    });
                    Ok(Value::Null)
                }
                other => Err(RpcError::params(format!(
                    "command must be add or remove, not {}",
                    quoted(other)
                ))),
            }
        }
        "clearbanned" => {
            no_params(params)?;
            node.blacklist().clear();
            // The scores behind the bans go with them, or a peer's next
            // reconnect would be refused again.
            node.forgive_scores(|_| true);
            Ok(Value::Null)
        }
        "getmiddleware" => {
            no_params(params)?;
            let stack = node.middleware();
            let layers: Vec<Value> = stack
                .layers()
                .iter()
                .zip(stack.configs())
                .map(|(layer, config)| {
                    let counters = layer.counters();
                    let rejected: serde_json::Map<String, Value> = counters
                        .rejections()
                        .into_iter()
                        .map(|(reason, n)| (reason.to_owned(), json!(n)))
                        .collect();
                    json!({
                        "name": layer.name(),
                        "config": serde_json::to_value(config).unwrap_or(Value::Null),
                        "accepted": counters.accepted(),
                        "rejected": rejected,
                        "shared_state": layer.state(stack.shared()),
                    })
                })
                .collect();
            Ok(json!({"order": stack.describe(), "layers": layers}))
        }
        "reloadconfig" => {
            no_params(params)?;
            let described = ctx.reload()?;
            Ok(json!({"middleware": described, "applies_to": "new connections"}))
        }
        "getaddrmaninfo" => {
            no_params(params)?;
            let book = crate::locks::lock(node.address_book());
            let [v4, v6] = book.sizes_by_family();
            let entry = |(new, tried): (usize, usize)| json!({ "new": new, "tried": tried, "total": new + tried });
            let (new, tried) = book.sizes();
            Ok(json!({
                "ipv4": entry(v4),
                "ipv6": entry(v6),
                "all_networks": entry((new, tried)),
            }))
        }
        "getnodeaddresses" => {
            let count = match param(params, 0, "count") {
                None => 1,
                Some(v) => match v.as_u64() {
                    Some(n) => n as usize,
                    None => return Err(RpcError::params("count must be a number (0: all)")),
                },
            };
            let book = crate::locks::lock(node.address_book());
            let count = if count == 0 { book.len() } else { count };
            let picked = book.sample_addresses(count, &mut rand::thread_rng());
            Ok(Value::Array(
                picked
                    .iter()
                    .map(|a| {
                        json!({
                            "time": a.last_seen,
                            "services": a.capabilities,
                            "address": a.addr.ip().to_string(),
                            "port": a.addr.port(),
                            "network": if a.addr.is_ipv4() { "ipv4" } else { "ipv6" },
                            "node_id": a.node_id.map(|id| id.to_string()),
                            "tried": a.tried,
                        })
                    })
                    .collect(),
            ))
        }
        "uptime" => {
            no_params(params)?;
            Ok(json!(node.uptime().as_secs()))
        }
        "stop" => {
            no_params(params)?;
            ctx.stop.cancel();
            Ok(json!("timed stopping"))
        }
        _ => super::chain::dispatch(ctx, method, params)
            .await
            .unwrap_or_else(|| {
                Err(RpcError::new(
                    codes::METHOD_NOT_FOUND,
                    format!("method not found: {} (try \"help\")", quoted(method)),
                ))
            }),
    }
}
