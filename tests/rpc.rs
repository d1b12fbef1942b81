//! JSON-RPC over HTTP against a real node: every method, standard error
//! codes for bad input, bounded bodies, parallel load, bearer tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use timed::app::Node;
use timed::config::RpcSection;
use timed::rpc::client::{call, Auth, CallError};
use timed::rpc::{codes, serve, RpcContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn rpc_node(ip: [u8; 4], settings: RpcSection) -> (Node, SocketAddr, CancellationToken) {
    let (node, _) = start(config(ip)).await;
    let stop = CancellationToken::new();
    let ctx = RpcContext::new(node.clone(), settings, None, stop.clone());
    let addr = serve(SocketAddr::from((ip, 0)), ctx, stop.clone())
        .await
        .unwrap();
    (node, addr, stop)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// Sends raw bytes as an HTTP POST body; returns (status, body).
async fn raw_post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading everything.
    let _ = s.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn error_code(body: &str) -> i64 {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error code: {body}"))
}

#[tokio::test]
async fn methods_answer_and_manage_the_node() {
    let (node, addr, _stop) = rpc_node([127, 0, 100, 1], RpcSection::default()).await;
    let (peer, _) = start(config([127, 0, 100, 2])).await;
    let u = url(addr);

    let info = call(&u, &Auth::None, "getnetworkinfo", json!([]))
        .await
        .unwrap();
    assert_eq!(info["node_id"], node.node_id().to_string());
    assert_eq!(info["network"], "devnet");
    assert_eq!(
        info["middleware"],
        "blacklist -> scoring -> rate_limit -> dedup -> auth"
    );
    assert_eq!(
        call(&u, &Auth::None, "getconnectioncount", json!([]))
            .await
            .unwrap(),
        0
    );

    // addnode onetry, then getpeerinfo shows the peer with its fields.
    let target = format!("{}@{}", peer.node_id(), peer.local_addr());
    call(&u, &Auth::None, "addnode", json!([target, "onetry"]))
        .await
        .unwrap();
    // Polled until the first keepalive pong gave it an RTT.
    let deadline = tokio::time::Instant::now() + WAIT;
    let peers = loop {
        let peers = call(&u, &Auth::None, "getpeerinfo", json!([]))
            .await
            .unwrap();
        if peers[0]["rtt_ms"].is_number() {
            break peers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rtt_ms after {WAIT:?}: {peers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = &peers[0];
    assert_eq!(p["id"], peer.node_id().to_string());
    assert_eq!(p["direction"], "outbound");
    for field in [
        "addr",
        "rtt_ms",
        "score",
        "bytes_sent",
        "bytes_recv",
        "messages_sent",
        "messages_recv",
        "layer_rejections",
    ] {
        assert!(!p[field].is_null(), "getpeerinfo lacks {field}: {p}");
    }
    assert!(p["bytes_recv"].as_u64().unwrap() > 0);

    // getmiddleware: the active stack with per-layer counters.
    let mw = call(&u, &Auth::None, "getmiddleware", json!([]))
        .await
        .unwrap();
    let layers = mw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5);
    assert_eq!(layers[0]["name"], "blacklist");
    assert!(layers[0]["accepted"].as_u64().is_some());
    assert_eq!(layers[4]["config"]["max_batch"], 64);

    // Bans: setban, listbanned, a banned peer is disconnected; clearbanned.
    call(&u, &Auth::None, "setban", json!(["127.0.100.2", "add", 60]))
        .await
        .unwrap();
    let banned = call(&u, &Auth::None, "listbanned", json!([]))
        .await
        .unwrap();
    assert_eq!(banned[0]["address"], "127.0.100.2/32");
    assert_eq!(banned[0]["reason"], "manual");
    wait_until("the banned peer is disconnected", || {
        node.peers().is_empty()
    })
    .await;
    call(&u, &Auth::None, "setban", json!(["10.0.0.0/8", "add"]))
        .await
        .unwrap();
    call(
        &u,
        &Auth::None,
        "setban",
        json!({"subnet": "10.0.0.0/8", "command": "remove"}),
    )
    .await
    .unwrap();
    call(&u, &Auth::None, "clearbanned", json!([]))
        .await
        .unwrap();
    assert_eq!(
        call(&u, &Auth::None, "listbanned", json!([]))
            .await
            .unwrap(),
        json!([])
    );

    // addnode add keeps the peer connected; disconnectnode closes it.
    call(
        &u,
        &Auth::None,
        "addnode",
        json!([peer.local_addr().to_string(), "add"]),
    )
    .await
    .unwrap();
    wait_until("addnode connected the peer", || node.peers().len() == 1).await;
    call(
        &u,
        &Auth::None,
        "addnode",
        json!([peer.local_addr().to_string(), "remove"]),
    )
    .await
    .unwrap();
    let n = call(
        &u,
        &Auth::None,
        "disconnectnode",
        json!([peer.node_id().to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let err = call(&u, &Auth::None, "disconnectnode", json!(["127.0.100.99"]))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Rpc(e) if e.code == codes::NOT_FOUND));

    assert!(call(&u, &Auth::None, "uptime", json!([]))
        .await
        .unwrap()
        .is_u64());
    // Without a config file there is nothing to reload: a clean error.
    let err = call(&u, &Auth::None, "reloadconfig", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Rpc(e) if e.code == codes::RELOAD_FAILED));
}

#[tokio::test]
async fn bad_requests_get_standard_errors_and_the_node_keeps_running() {
    let (_node, addr, _stop) = rpc_node([127, 0, 101, 1], RpcSection::default()).await;
    let u = url(addr);
    // Invalid JSON.
    let (status, body) = raw_post(addr, b"{not json").await;
    assert_eq!((status, error_code(&body)), (200, codes::PARSE_ERROR));
    // Not a request object, wrong version, bad params shape, empty batch.
    for bad in [
        json!(5),
        json!({"jsonrpc": "1.0", "id": 1, "method": "uptime"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "uptime", "params": "x"}),
        json!([]),
    ] {
        let (_, body) = raw_post(addr, bad.to_string().as_bytes()).await;
        assert_eq!(error_code(&body), codes::INVALID_REQUEST, "{bad}: {body}");
    }
    // Unknown method; wrong params.
    let err = call(&u, &Auth::None, "getfoo", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Rpc(e) if e.code == codes::METHOD_NOT_FOUND),
        "{err}"
    );
    for (method, params) in [
        ("uptime", json!([1])),
        ("setban", json!(["not an ip", "add"])),
        ("setban", json!(["10.0.0.1", "explode"])),
        ("addnode", json!([42])),
        ("disconnectnode", json!([])),
    ] {
        let err = call(&u, &Auth::None, method, params.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Rpc(e) if e.code == codes::INVALID_PARAMS),
            "{method} {params}: {err}"
        );
    }
    // A 10 MB body: refused with 413 and a JSON-RPC error, not read whole.
    let big = vec![b' '; 10 * 1024 * 1024];
    let (status, body) = raw_post(addr, &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), codes::INVALID_REQUEST);
    // A batch answers each call; notifications get no answer.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "uptime"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "method": "uptime"},
    ]);
    let (_, body) = raw_post(addr, batch.to_string().as_bytes()).await;
    let answers: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answers.as_array().unwrap().len(), 2);
    assert_eq!(answers[1]["error"]["code"], codes::METHOD_NOT_FOUND);
    // Still alive.
    assert!(call(&u, &Auth::None, "uptime", json!([])).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_parallel_requests_all_get_answers() {
    // Room for 500 connections (the default cap, 128, closes the rest at
    // once: tests/rpc_limits.rs); 64 run at a time and the others wait.
    let settings = RpcSection {
        max_connections: 512,
        ..RpcSection::default()
    };
    let (_node, addr, _stop) = rpc_node([127, 0, 102, 1], settings).await;
    let u = url(addr);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let method = if i % 5 == 0 { "nope" } else { "getnetworkinfo" };
            call(&u, &Auth::None, method, json!([])).await
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CallError::Rpc(e)) if e.code == codes::METHOD_NOT_FOUND => errors += 1,
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!((ok, errors), (400, 100));
    assert!(call(&u, &Auth::None, "uptime", json!([])).await.is_ok());
}

#[tokio::test]
async fn a_bearer_token_is_required_when_configured() {
    let settings = RpcSection {
        bearer_token: Some("0123456789abcdef-secret".into()),
        ..RpcSection::default()
    };
    let (_node, addr, _stop) = rpc_node([127, 0, 103, 1], settings).await;
    let u = url(addr);
    for auth in [Auth::None, Auth::Bearer("wrong-token-wrong-token".into())] {
        let err = call(&u, &auth, "uptime", json!([])).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Rpc(e) if e.code == codes::UNAUTHORIZED),
            "{err}"
        );
    }
    call(
        &u,
        &Auth::Bearer("0123456789abcdef-secret".into()),
        "uptime",
        json!([]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stop_cancels_the_node_token() {
    let (_node, addr, stop) = rpc_node([127, 0, 104, 1], RpcSection::default()).await;
    assert_eq!(
        call(&url(addr), &Auth::None, "stop", json!([]))
            .await
            .unwrap(),
        "timed stopping"
    );
    tokio::time::timeout(WAIT, stop.cancelled()).await.unwrap();
}

#[tokio::test]
async fn reloadconfig_applies_the_new_stack_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("timed.toml");
    std::fs::write(&file, "[[middleware]]\nname = \"blacklist\"\n").unwrap();
    let (node, _) = start(config([127, 0, 105, 1])).await;
    let stop = CancellationToken::new();
    let ctx = RpcContext::new(
        node.clone(),
        RpcSection::default(),
        Some(file.clone()),
        stop.clone(),
    );
    let addr = serve(SocketAddr::from(([127, 0, 105, 1], 0)), ctx, stop.clone())
        .await
        .unwrap();
    let u = url(addr);
    // A connection made before the reload keeps the full default stack.
    let (before, _) = start(config([127, 0, 105, 2])).await;
    before
        .connect(&timed::network::PeerTarget {
            addr: node.local_addr(),
            node_id: Some(node.node_id()),
        })
        .await
        .unwrap();
    let answer = call(&u, &Auth::None, "reloadconfig", json!([]))
        .await
        .unwrap();
    assert_eq!(answer["middleware"], "blacklist");
    assert_eq!(node.middleware().describe(), "blacklist");
    let mw = call(&u, &Auth::None, "getmiddleware", json!([]))
        .await
        .unwrap();
    assert_eq!(mw["layers"].as_array().unwrap().len(), 1);
    // A broken file is refused and the stack stays.
    std::fs::write(&file, "[[middleware]]\nname = \"firewall\"\n").unwrap();
    let err = call(&u, &Auth::None, "reloadconfig", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Rpc(e) if e.code == codes::RELOAD_FAILED && e.message.contains("firewall")),
        "{err}"
    );
    assert_eq!(node.middleware().describe(), "blacklist");
    assert_eq!(
        node.peers().len(),
        1,
        "the established connection is untouched"
    );
}

/// Parameters are typed strictly, extra ones are refused naming the
/// method's parameters, and no error quotes more than a short prefix of the
/// caller's input.
#[tokio::test]
async fn params_are_strict_and_errors_never_echo_the_input() {
    let (_node, addr, _stop) = rpc_node([127, 3, 7, 1], RpcSection::default()).await;
    let u = url(addr);
    let invalid = |result: Result<Value, CallError>| match result {
        Err(CallError::Rpc(e)) if e.code == codes::INVALID_PARAMS => e.message,
        other => panic!("expected -32602, got {other:?}"),
    };
    let m = invalid(call(&u, &Auth::None, "addnode", json!(["127.3.7.2:1", 5])).await);
    assert!(m.contains("command") && m.contains("string"), "{m}");
    let m = invalid(call(&u, &Auth::None, "getblock", json!([1, 2, 3])).await);
    assert!(
        m.contains("getblock takes at most 1 parameter (block), got 3"),
        "{m}"
    );
    let m = invalid(call(&u, &Auth::None, "uptime", json!(["extra"])).await);
    assert!(m.contains("uptime takes no parameters"), "{m}");
    let m = invalid(
        call(
            &u,
            &Auth::None,
            "setban",
            json!({"subnet": "10.0.0.0/8", "cmd": "add"}),
        )
        .await,
    );
    assert!(m.contains("\"cmd\""), "{m}");

    let huge = "9".repeat(600_000);
    for (method, params) in [
        (huge.as_str(), json!([])),
        ("setban", json!([huge, "add"])),
        ("addnode", json!([huge])),
        ("addnode", json!(["127.3.7.2:1", huge])),
        ("disconnectnode", json!([huge])),
        ("getblock", json!([huge])),
        ("sendrawtransaction", json!([huge])),
    ] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (_, answer) = raw_post(addr, body.to_string().as_bytes()).await;
        assert!(
            answer.len() < 1024,
            "{} bytes echoed for {}",
            answer.len(),
            &method[..method.len().min(20)]
        );
        assert!(
            answer.contains("\"error\""),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
}

#[tokio::test]
async fn clearbanned_and_unban_forgive_the_scores_behind_the_bans() {
    let (node, addr, stop) = rpc_node([127, 5, 30, 1], RpcSection::default()).await;
    let book = node.middleware().shared().scores.clone();
    let half_life = node.score_half_life();
    // Two peers below the disconnect threshold, from two subnets.
    let ids: Vec<_> = (0..2)
        .map(|_| timed::crypto::NodeIdentity::generate().node_id())
        .collect();
    let near: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let far: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    book.handle(ids[0], near).add(-40.0, half_life);
    book.handle(ids[1], far).add(-40.0, half_life);
    // Lifting the ban of one subnet forgives the peers seen from it only.
    call(
        &url(addr),
        &Auth::None,
        "setban",
        json!(["10.1.2.0/24", "add", 60]),
    )
    .await
    .unwrap();
    call(
        &url(addr),
        &Auth::None,
        "setban",
        json!(["10.1.2.0/24", "remove"]),
    )
    .await
    .unwrap();
    assert_eq!(score_of(&node, ids[0]), 0.0);
    assert!(score_of(&node, ids[1]) < -39.0);
    // clearbanned forgives everyone.
    call(&url(addr), &Auth::None, "clearbanned", json!([]))
        .await
        .unwrap();
    assert_eq!(score_of(&node, ids[1]), 0.0);
    stop.cancel();
    node.shutdown();
}
