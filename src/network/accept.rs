//! Accepting: the pre-handshake gate, the bound on pending handshakes and
//! the housekeeping of per-IP state.

use super::*;

/// How often the housekeeping task prunes limiter and ban state.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Counts a connection slot and frees it on drop.
pub(super) struct Slot {
    pub(super) counter: Option<Arc<AtomicUsize>>,
    pub(super) per_ip: Option<(IpCounts, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(counter) = &self.counter {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some((map, ip)) = &self.per_ip {
            let mut map = crate::locks::lock(map);
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

/// Removes a pending handshake from the registry when it ends, however it
/// ends.
pub(super) struct PendingHandshake {
    pub(super) inner: Arc<Inner>,
    pub(super) conn_id: u64,
    pub(super) evicted: CancellationToken,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        crate::locks::lock(&self.inner.pending).remove(&self.conn_id);
    }
}

impl Network {
    /// The pre-handshake gate; returns the per-IP slot or why not.
    pub(super) fn admit_inbound(&self, addr: SocketAddr) -> Result<Slot, &'static str> {
        let inner = &self.inner;
        let ip = addr.ip();
        if inner.blacklist.is_banned(ip) {
            return Err("banned");
        }
        let key = ip_key(ip);
        if inner.accept_limiter.check_key(&key).is_err() {
            return Err("accept_rate");
        }
        if inner.config.limits.max_inbound == 0 {
            return Err("max_inbound");
        }
        let mut per_ip = crate::locks::lock(&inner.per_ip);
        let count = per_ip.entry(key).or_insert(0);
        if *count >= inner.config.limits.max_per_ip {
            return Err("max_per_ip");
        }
        *count += 1;
        Ok(Slot {
            counter: None,
            per_ip: Some((inner.per_ip.clone(), key)),
        })
    }

    /// Registers the inbound handshake `conn_id` as pending; when
    /// `max_pending_handshakes` are already pending, the oldest is evicted
    /// to make room (see the module docs).
    pub(super) fn register_pending(&self, conn_id: u64) -> PendingHandshake {
        let evicted = CancellationToken::new();
        let max = self.inner.config.limits.max_pending_handshakes.max(1);
        let mut pending = crate::locks::lock(&self.inner.pending);
        while pending.len() >= max {
            let Some((old, token)) = pending.pop_first() else {
                break;
            };
            token.cancel();
            metrics::counter!("timed_handshakes_total", "result" => "evicted").increment(1);
            if crate::logging::allow("handshake_evicted") {
                tracing::info!(
                    evicted.conn_id = old,
                    max_pending = max,
                    "pending handshakes full: evicting the oldest"
                );
            }
        }
        pending.insert(conn_id, evicted.clone());
        PendingHandshake {
            inner: self.inner.clone(),
            conn_id,
            evicted,
        }
    }

    pub(super) async fn accept_loop(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => match self.admit_inbound(addr) {
                    Ok(slot) => {
                        let (conn_id, span) = self.span(addr, Direction::Inbound);
                        let pending = self.register_pending(conn_id);
                        let node = self.clone();
                        self.spawn(
                            "inbound_connection",
                            async move {
                                let _slot = slot;
                                node.handle(
                                    stream,
                                    addr,
                                    ConnectionType::Inbound,
                                    None,
                                    None,
                                    conn_id,
                                    Some(pending),
                                )
                                .await
                            }
                            .instrument(span),
                        );
                    }
                    Err(reason) => {
                        // Dropping the stream closes it before any byte is read.
                        drop(stream);
                        if crate::logging::allow_for("connection_refused", reason) {
                            tracing::info!(peer.addr = %addr, reason, "connection refused before the handshake");
                        }
                        metrics::counter!("timed_connections_refused_total", "reason" => reason)
                            .increment(1);
                        self.emit(NetworkEvent::Refused { addr, reason });
                    }
                },
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    if crate::logging::allow("accept_failed") {
                        tracing::warn!(%error, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Prunes limiter and ban state every [`HOUSEKEEPING_INTERVAL`], and
    /// writes the summaries of suppressed log lines every log window (so a
    /// flood that stopped still gets its summary line).
    pub(super) async fn housekeeping(self) {
        let mut ticker = tokio::time::interval(crate::logging::WINDOW);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            crate::logging::flush();
            if last_prune.elapsed() < HOUSEKEEPING_INTERVAL {
                continue;
            }
            last_prune = Instant::now();
            self.inner.blacklist.prune();
            self.middleware().shared().prune();
            self.inner.accept_limiter.retain_recent();
        }
    }
}
