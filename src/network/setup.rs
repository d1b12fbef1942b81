//! Setting a connection up: handshake, admission, the connection task and
//! what its end means for the peer's IP.

use super::*;

impl Network {
    /// Runs setup and then the connection; true if it was established.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn handle(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        kind: ConnectionType,
        expected: Option<NodeId>,
        mut report: Option<Report>,
        conn_id: u64,
        pending: Option<PendingHandshake>,
    ) -> bool {
        let inner = &self.inner;
        let config = &inner.config;
        let direction = kind.direction();
        let evicted = pending
            .as_ref()
            .map(|p| p.evicted.clone())
            .unwrap_or_default();
        let setup = tokio::select! {
            _ = inner.shutdown.cancelled() => return false,
            _ = evicted.cancelled() => {
                // A newer socket took this pending slot (dropping the
                // stream closes it).
                return false;
            }
            r = establish(stream, direction, expected, &inner.keys, &config.handshake, *config.best_height.borrow()) => r,
        };
        drop(pending);
        let conn = match setup {
            Ok(conn) => conn,
            Err(error) => {
                self.setup_failed(error, addr, direction, report);
                return false;
            }
        };
        let info = Arc::new(conn.info.clone());
        metrics::counter!("timed_handshakes_total", "result" => "ok").increment(1);
        tracing::Span::current().record("node.id", field::display(info.node_id));
        // The peer's context, stack, queue and client.
        let stack = self.middleware();
        let judge = stack.judge().clone();
        let score = judge.book().handle(info.node_id, addr.ip());
        let context = Arc::new(PeerContext::new(
            info.node_id,
            addr,
            direction,
            conn_id,
            score,
        ));
        let queue = Arc::new(SendQueue::new(config.send_queue_bytes));
        let (request_tx, request_rx) = mpsc::channel(1);
        let client = Client::new(request_tx, context.clone());
        let handle = Arc::new(crate::peer::set::PeerHandle {
            info: info.clone(),
            context: context.clone(),
            client,
            queue: queue.clone(),
            kind,
        });
        // A peer whose score keeps it out evicts nobody.
        let readmitted = judge.readmit(&context);
        // The inbound limit counts authenticated connections only. When it
        // is reached, one inbound peer makes room unless eviction protects
        // them all.
        let inbound_cap = self.inbound_cap();
        let inbound_full = direction == Direction::Inbound
            && readmitted
            && inner.inbound_count.load(Ordering::Relaxed) >= inbound_cap
            && !self.evict_inbound();
        let _established = (direction == Direction::Inbound && !inbound_full).then(|| {
            inner.inbound_count.fetch_add(1, Ordering::Relaxed);
            Slot {
                counter: Some(inner.inbound_count.clone()),
                per_ip: None,
            }
        });
        if inbound_full {
            // Said with a Disconnect after our Version (the connection task
            // sends it and ends at once).
            metrics::counter!("timed_connections_refused_total", "reason" => "max_inbound")
                .increment(1);
            if crate::logging::allow("inbound_full") {
                tracing::info!(
                    max_inbound = inbound_cap,
                    "inbound connections full: refusing"
                );
            }
            context.close_with(
                DisconnectReason::TooManyPeers,
                format!("{inbound_cap} inbound connections already"),
            );
        }
        let refused = inbound_full || !readmitted;
        if refused {
            // The context is closed: the connection task says goodbye and
            // ends at once; the peer never enters the set.
            if let Some(report) = report.take() {
                let _ = report.send(Err(Arc::new(ConnectError::Limit(if inbound_full {
                    "max_inbound"
                } else {
                    "score below the disconnect threshold"
                }))));
            }
        }
        let admission = if refused {
            Admission::Refused
        } else {
            inner.peers.admit(handle.clone())
        };
        let admitted = !matches!(admission, Admission::Refused);
        if admitted {
            let now = crate::protocol::version::unix_now().as_secs();
            let mut book = crate::locks::lock(&config.address_book);
            match direction {
                // We reached it: the address works.
                Direction::Outbound => {
                    book.good(&addr, now);
                    if let Some(quality) = book.quality_mut(&addr) {
                        quality.record_success();
                    }
                }
                // It told us where it listens: worth dialling later.
                Direction::Inbound => {
                    if let Some(listen) = info.version.listen_addr {
                        let listen = SocketAddr::new(addr.ip(), listen.port);
                        if listen.port() != 0 {
                            book.add(
                                listen,
                                Some(info.node_id),
                                info.version.capabilities,
                                addr.ip(),
                                now,
                            );
                        }
                    }
                }
            }
        }
        match admission {
            Admission::Admitted => {}
            Admission::Replaced(old) => {
                if crate::logging::allow("duplicate_connection") {
                    tracing::info!(
                        old.conn_id = old.context.conn_id,
                        "replacing a duplicate connection"
                    );
                }
                old.context.close(DisconnectReason::Duplicate);
            }
            Admission::Refused if refused => {}
            Admission::Refused => {
                if crate::logging::allow("duplicate_connection") {
                    tracing::info!("already connected to this node: closing the duplicate");
                }
                context.close(DisconnectReason::Duplicate);
                if let Some(report) = report.take() {
                    let _ = report.send(Err(Arc::new(ConnectError::Duplicate(info.node_id))));
                }
                // Run the connection anyway so it says goodbye properly.
            }
        }
        if crate::logging::allow("peer_connected") {
            tracing::info!(
                user_agent = %info.version.user_agent,
                best_height = info.version.best_height,
                capabilities = info.version.capabilities,
                "peer connected"
            );
        }
        self.emit(NetworkEvent::Connected(info.clone()));
        if admitted {
            if kind == ConnectionType::Feeler {
                // The address answered and moved to tried: that was all.
                context.close(DisconnectReason::Shutdown);
            } else {
                if let Some(observer) = inner.observer.get() {
                    observer.admitted(self, &handle);
                }
                self.exchange_on_connect(&handle, direction == Direction::Outbound);
            }
            metrics::counter!("timed_connects_total", "type" => kind.as_str(), "result" => "ok")
                .increment(1);
        }
        let Some(inbound) = inner.inbound.get() else {
            // The application hands its inbound service in before the
            // listener and dialers start; without one nothing is served.
            return false;
        };
        let stack = stack.wrap(BoxCloneService::new(inbound.clone()));
        let parts = ConnectionParts {
            conn,
            context: context.clone(),
            stack,
            queue,
            requests: request_rx,
            judge: Arc::new(judge),
        };
        if let Some(report) = report {
            let _ = report.send(Ok(info.clone()));
        }
        let events = inner.events.clone();
        let error = connection::run(
            parts,
            config.connection.clone(),
            move |e| {
                let _ = events.send(NetworkEvent::Connection(e));
            },
            inner.shutdown.clone(),
        )
        .await;
        inner.peers.remove(info.node_id, conn_id);
        inner.pex.closed(conn_id);
        if admitted {
            self.connection_ended(&handle);
        }
        if direction == Direction::Inbound && error.is_misbehaviour() {
            inner.blacklist.record_violation(addr.ip(), error.kind());
        }
        if crate::logging::allow_for("peer_disconnected", error.kind()) {
            match &error {
                ConnectionError::Shutdown
                | ConnectionError::Closed
                | ConnectionError::Policy(DisconnectReason::Duplicate)
                | ConnectionError::PeerDisconnected {
                    reason: DisconnectReason::Shutdown | DisconnectReason::Duplicate,
                    ..
                } => {
                    tracing::info!(reason = %error, reason.kind = error.kind(), "peer disconnected")
                }
                _ => tracing::warn!(error = %error, error.kind = error.kind(), "peer disconnected"),
            }
        }
        self.emit(NetworkEvent::Disconnected {
            peer: info,
            error: Arc::new(error),
        });
        true
    }

    pub(super) fn setup_failed(
        &self,
        error: ConnectError,
        addr: SocketAddr,
        direction: Direction,
        report: Option<Report>,
    ) {
        let error = Arc::new(error);
        if crate::logging::allow_for("handshake_failed", error.kind()) {
            tracing::warn!(error = %error, error.kind = error.kind(), "handshake failed");
        }
        metrics::counter!("timed_handshakes_total", "result" => error.kind()).increment(1);
        if direction == Direction::Outbound {
            self.dial_outcome(&addr, false);
        }
        if direction == Direction::Inbound && error.is_misbehaviour() {
            self.inner
                .blacklist
                .record_violation(addr.ip(), error.kind());
        }
        self.emit(NetworkEvent::HandshakeFailed {
            addr,
            direction,
            error: error.clone(),
        });
        if let Some(report) = report {
            let _ = report.send(Err(error));
        }
    }
}
