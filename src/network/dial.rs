//! Dialling: the peers to keep connected, their redial schedule, and
//! one-off connections.

use super::*;

/// First delay before redialling a configured peer.
pub const REDIAL_INITIAL_DELAY: Duration = Duration::from_secs(5);
/// Largest delay between redials.
pub const REDIAL_MAX_DELAY: Duration = Duration::from_secs(300);
/// A session at least this long resets the redial delay.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Jitter: each delay is multiplied by a factor in this range.
pub const REDIAL_JITTER: (f64, f64) = (0.75, 1.25);

/// A peer to dial: an address and, optionally, the node id it must prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    /// Where to dial.
    pub addr: SocketAddr,
    /// The node id the peer must authenticate as, if known.
    pub node_id: Option<NodeId>,
}

impl fmt::Display for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => self.addr.fmt(f),
        }
    }
}

/// Error for a peer given as text.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer {0:?}: expected IP:PORT or NODE_ID@IP:PORT")]
pub struct InvalidPeerTarget(pub String);

impl FromStr for PeerTarget {
    type Err = InvalidPeerTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidPeerTarget(s.to_owned());
        let (node_id, addr) = match s.split_once('@') {
            Some((id, addr)) => (Some(id.parse().map_err(|_| bad())?), addr),
            None => (None, s),
        };
        Ok(PeerTarget {
            addr: addr.parse().map_err(|_| bad())?,
            node_id,
        })
    }
}

impl Network {
    /// Keeps `target` connected (redialling with backoff) until
    /// [`Network::remove_peer`]; false if it is already kept.
    pub fn add_peer(&self, target: PeerTarget) -> bool {
        // The operator named it: in the book, as its own source.
        crate::locks::lock(&self.inner.config.address_book).add(
            target.addr,
            target.node_id,
            0,
            target.addr.ip(),
            crate::protocol::version::unix_now().as_secs(),
        );
        let token = self.inner.shutdown.child_token();
        {
            let mut dialers = crate::locks::lock(&self.inner.dialers);
            if dialers.contains_key(&target.addr) {
                return false;
            }
            dialers.insert(target.addr, token.clone());
        }
        self.spawn("dialer", self.clone().dial_loop(target, token));
        true
    }

    /// Stops redialling the peer at `addr` (an established connection
    /// stays); false if it was not kept.
    pub fn remove_peer(&self, addr: SocketAddr) -> bool {
        let token = crate::locks::lock(&self.inner.dialers).remove(&addr);
        token.map(|t| t.cancel()).is_some()
    }

    /// The addresses whose peers are kept connected.
    pub fn kept_peers(&self) -> Vec<SocketAddr> {
        crate::locks::lock(&self.inner.dialers)
            .keys()
            .copied()
            .collect()
    }

    /// Dials `target` once; on success the connection runs in its own task.
    ///
    /// # Errors
    /// Why the connection could not be established.
    pub async fn connect(&self, target: &PeerTarget) -> Result<Arc<PeerInfo>, Arc<ConnectError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = self.clone();
        let target = target.clone();
        self.spawn("outbound_connection", async move {
            node.outbound(&target, ConnectionType::Manual, Some(tx))
                .await;
        });
        rx.await
            .unwrap_or_else(|_| Err(Arc::new(ConnectError::Closed)))
    }

    /// True when already connected to the target (by node id or address).
    pub(super) fn connected_to(&self, target: &PeerTarget) -> bool {
        match target.node_id {
            Some(id) => self.inner.peers.contains(&id),
            None => self.inner.peers.snapshot().iter().any(|h| {
                h.info.addr == target.addr
                    || h.info.version.listen_addr.map(SocketAddr::from) == Some(target.addr)
            }),
        }
    }

    pub(super) async fn dial_loop(self, target: PeerTarget, stop: CancellationToken) {
        let mut backoff = Backoff::new();
        while !stop.is_cancelled() {
            if self.connected_to(&target) {
                // Connected the other way round: check again later.
                backoff.reset();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REDIAL_INITIAL_DELAY) => {}
                }
                continue;
            }
            self.emit(NetworkEvent::DialAttempt {
                target: target.clone(),
            });
            let started = Instant::now();
            let established = self.outbound(&target, ConnectionType::Manual, None).await;
            if established && started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            if stop.is_cancelled() {
                return;
            }
            let delay = backoff.next_delay();
            tracing::info!(peer = %target, delay_ms = delay.as_millis() as u64, "redialling later");
            self.emit(NetworkEvent::DialRetry {
                target: target.clone(),
                retry_in: delay,
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens a TCP connection to `addr`. When the node listens on a specific
    /// IP, outbound connections leave from that IP too, so peers see one
    /// address per node (as with several nodes on 127.0.0.x).
    pub(super) async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let local = self.inner.config.listen.ip();
        if local.is_unspecified() || local.is_ipv4() != addr.is_ipv4() {
            return TcpStream::connect(addr).await;
        }
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local, 0))?;
        socket.connect(addr).await
    }

    /// Dials and runs one outbound connection; true if it was established.
    pub(super) async fn outbound(
        &self,
        target: &PeerTarget,
        kind: ConnectionType,
        report: Option<Report>,
    ) -> bool {
        let (conn_id, span) = self.span(target.addr, Direction::Outbound);
        async {
            let fail = |error: ConnectError, report: Option<Report>| {
                let error = Arc::new(error);
                tracing::info!(error = %error, error.kind = error.kind(), "dial failed");
                metrics::counter!("timed_connects_total", "type" => kind.as_str(), "result" => error.kind())
                    .increment(1);
                if let Some(report) = report {
                    let _ = report.send(Err(error));
                }
                false
            };
            let inner = &self.inner;
            if inner.outbound.load(Ordering::Relaxed) >= inner.config.limits.max_outbound {
                return fail(ConnectError::Limit("max_outbound"), report);
            }
            crate::locks::lock(&inner.config.address_book)
                .attempt(&target.addr, crate::protocol::version::unix_now().as_secs());
            inner.outbound.fetch_add(1, Ordering::Relaxed);
            let _slot = Slot {
                counter: Some(inner.outbound.clone()),
                per_ip: None,
            };
            let stream =
                match tokio::time::timeout(inner.config.handshake.timeout, self.dial(target.addr))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        self.dial_outcome(&target.addr, false);
                        return fail(ConnectError::Io(e), report);
                    }
                    Err(_) => {
                        self.dial_outcome(&target.addr, false);
                        return fail(
                            ConnectError::Timeout(inner.config.handshake.timeout),
                            report,
                        );
                    }
                };
            self.handle(
                stream,
                target.addr,
                kind,
                target.node_id,
                report,
                conn_id,
                None,
            )
            .await
        }
        .instrument(span)
        .await
    }
}

/// The redial schedule: 5 s doubling to 300 s, times a random factor in
/// [0.75, 1.25); [`Backoff::reset`] after a healthy session.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A fresh schedule.
    pub fn new() -> Self {
        Backoff {
            base: REDIAL_INITIAL_DELAY,
        }
    }

    /// The next delay (with jitter); the base doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let factor = rand::thread_rng().gen_range(REDIAL_JITTER.0..REDIAL_JITTER.1);
        let delay = self.base.mul_f64(factor);
        self.base = (self.base * 2).min(REDIAL_MAX_DELAY);
        delay
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.base = REDIAL_INITIAL_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn peer_targets_parse() {
        let t: PeerTarget = "127.0.0.2:24200".parse().unwrap();
        assert_eq!(t.node_id, None);
        let id = NodeIdentity::generate().node_id();
        let t: PeerTarget = format!("{id}@127.0.0.2:24200").parse().unwrap();
        assert_eq!(t.node_id, Some(id));
        assert_eq!(t.to_string().parse::<PeerTarget>().unwrap(), t);
        assert!("nope".parse::<PeerTarget>().is_err());
        assert!("zz@127.0.0.1:1".parse::<PeerTarget>().is_err());
    }

    #[test]
    pub(super) fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new();
        let mut base = 5.0f64;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64();
            assert!(d >= base * 0.75 - 1e-9 && d < base * 1.25, "{d} vs {base}");
            base = (base * 2.0).min(300.0);
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_secs(7));
    }
}
