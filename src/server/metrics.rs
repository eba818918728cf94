//! What the server counts for Prometheus (`GET /metrics`): the metric families, the places in the
//! shell that feed them, and the encoding of a scrape.
//!
//! Counters and histograms are fed where things happen (a connection's reader, the engine task's
//! dispatch, the commit pipeline, the audit feed), each as one atomic add. The state gauges
//! (agents, records, calls) are not kept up to date on every change: a scrape asks the engine
//! task for a [`Snapshot`] and sets them from it, so the engine's hot path pays nothing.
//!
//! Every label value comes from a closed set (roles, transports, request types, error codes,
//! causes): never a record, agent, DN or call id, so the number of series stays bounded whatever
//! the traffic. Never blocks: a scrape that finds the engine busy waits on its own task.

use crate::messages::{AuditEntry, AuditKind, ErrorCode, Role};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A label set of one label.
type One = [(&'static str, &'static str); 1];
/// A label set of two labels.
type Two = [(&'static str, &'static str); 2];
/// Two labels whose second value is the text of an audit entry (a cause from the engine's closed
/// set of causes and outcomes).
type AccessCause = [(&'static str, String); 2];

/// The server's metric families and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    connections: Family<Two, Gauge>,
    connections_refused: Family<One, Counter>,
    agents: Family<One, Gauge>,
    agents_logout_pending: Gauge,
    dns_monitored: Gauge,
    records: Family<One, Gauge>,
    calls: Gauge,
    requests: Family<Two, Counter>,
    access_changes: Family<AccessCause, Counter>,
    commit_batch_requests: Histogram,
    commit_seconds: Histogram,
    flush_seconds: Histogram,
    commit_failures: Counter,
    outbound_queue_drops: Counter,
    backpressure_pauses: Counter,
    audit_last_seq: Gauge,
    audit_tails: Gauge,
    audit_tail_lag: Gauge,
    login_failures: Family<One, Counter>,
    ignored_events: Counter,
    /// The engine's count of ignored events at the last scrape: the counter grows by the
    /// difference, so it never goes down.
    ignored_seen: AtomicU64,
    /// Where each following tail has got to: one cell per tail, dropped with the tail.
    tail_positions: Mutex<Vec<Weak<AtomicU64>>>,
}

/// What a scrape asks of the engine task: the state it alone knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub agents_logged_in: u64,
    pub agents_away: u64,
    pub agents_logout_pending: u64,
    pub dns_monitored: u64,
    pub records_live: u64,
    pub records_final: u64,
    pub calls: u64,
    pub ignored_events: u64,
    /// The store refused the last write or flush (requests get `unavailable` until one works).
    pub storage_failing: bool,
}

/// A count as a gauge value.
fn g(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// Transport label values.
pub(crate) fn transport_label(websocket: bool) -> &'static str {
    if websocket {
        "websocket"
    } else {
        "tcp"
    }
}

impl Metrics {
    pub(crate) fn new(started_unix_s: u64) -> Metrics {
        let mut registry = Registry::with_prefix("baton");
        let build_info = Family::<One, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The running version (always 1)", build_info);
        let start_time = Gauge::<i64>::default();
        start_time.set(started_unix_s as i64);
        registry.register(
            "start_time_seconds",
            "When the server process started, in seconds since the Unix epoch",
            start_time,
        );
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            agents: Family::default(),
            agents_logout_pending: Gauge::default(),
            dns_monitored: Gauge::default(),
            records: Family::default(),
            calls: Gauge::default(),
            requests: Family::default(),
            access_changes: Family::default(),
            // 1 to 2048 requests acknowledged by one flush.
            commit_batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 100 µs to about 6.5 s: a healthy SSD flushes in well under a millisecond, a
            // failing disk in seconds.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            flush_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            commit_failures: Counter::default(),
            outbound_queue_drops: Counter::default(),
            backpressure_pauses: Counter::default(),
            audit_last_seq: Gauge::default(),
            audit_tails: Gauge::default(),
            audit_tail_lag: Gauge::default(),
            login_failures: Family::default(),
            ignored_events: Counter::default(),
            ignored_seen: AtomicU64::new(0),
            tail_positions: Mutex::new(Vec::new()),
        };
        // Zero series for the label values every dashboard shows, so that they exist (and rates
        // work) before the first event.
        for role in ["handshake", "desktop", "dialer", "switch", "admin"] {
            for transport in ["tcp", "websocket"] {
                drop(
                    m.connections
                        .get_or_create(&[("role", role), ("transport", transport)]),
                );
            }
        }
        for state in ["logged_in", "away"] {
            drop(m.agents.get_or_create(&[("state", state)]));
        }
        for state in ["live", "final"] {
            drop(m.records.get_or_create(&[("state", state)]));
        }
        for cause in ["bad_credential", "throttled", "dn_not_allowed"] {
            drop(m.login_failures.get_or_create(&[("cause", cause)]));
        }
        drop(
            m.connections_refused
                .get_or_create(&[("reason", "max_connections")]),
        );
        registry.register(
            "connections",
            "Open connections by role (handshake: before Hello) and transport",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "agents",
            "Logged-in agents: logged_in (desktop connected) or away (connection lost, session kept for resume_grace_ms)",
            m.agents.clone(),
        );
        registry.register(
            "agents_logout_pending",
            "Agents who asked to log out while holding records; they leave once those are final",
            m.agents_logout_pending.clone(),
        );
        registry.register(
            "dns_monitored",
            "DNs with an agent logged in (the telephony link's Monitor list)",
            m.dns_monitored.clone(),
        );
        registry.register(
            "records",
            "Records known to the server: live, or final (on disk)",
            m.records.clone(),
        );
        registry.register("calls", "Live calls", m.calls.clone());
        registry.register(
            "requests",
            "Requests answered, by type and result (ok, or the error code)",
            m.requests.clone(),
        );
        registry.register(
            "access_changes",
            "Access changes written to the audit log, by new access and cause",
            m.access_changes.clone(),
        );
        registry.register(
            "commit_batch_requests",
            "Requests acknowledged by one durable group commit",
            m.commit_batch_requests.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "Write and flush of one group-commit batch",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register_with_unit(
            "store_flush_duration",
            "The store's flush (fsync) alone",
            Unit::Seconds,
            m.flush_seconds.clone(),
        );
        registry.register(
            "commit_failures",
            "Batches refused (the store failed, or too many audit entries of reads waited for the disk); their requests were answered unavailable",
            m.commit_failures.clone(),
        );
        registry.register(
            "outbound_queue_drops",
            "Connections dropped because they stopped reading what was sent to them",
            m.outbound_queue_drops.clone(),
        );
        registry.register(
            "backpressure_pauses",
            "Times a connection's reader paused because its answers had no room",
            m.backpressure_pauses.clone(),
        );
        registry.register(
            "audit_last_seq",
            "Highest audit seq on disk",
            m.audit_last_seq.clone(),
        );
        registry.register(
            "audit_tails",
            "AuditTail streams following new entries",
            m.audit_tails.clone(),
        );
        registry.register_with_unit(
            "audit_tail_lag",
            "Entries on disk not yet sent, for the following tail furthest behind",
            Unit::Other("entries".to_owned()),
            m.audit_tail_lag.clone(),
        );
        registry.register(
            "login_failures",
            "Refused logins, by cause",
            m.login_failures.clone(),
        );
        registry.register(
            "ignored_events",
            "Telephony events that named nothing the server tracks",
            m.ignored_events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text a scrape gets: the classic Prometheus format (0.0.4), or OpenMetrics when the
    /// scraper asks for it. Returns the body and its content type.
    pub(crate) fn encode(
        &self,
        snapshot: Option<&Snapshot>,
        audit_durable: u64,
        openmetrics: bool,
    ) -> (String, &'static str) {
        if let Some(s) = snapshot {
            self.set_state(s);
        }
        self.set_audit(audit_durable);
        let mut body = String::new();
        let result = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
        };
        result.expect("writing to a String does not fail");
        let content_type = if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        };
        (body, content_type)
    }

    fn set_state(&self, s: &Snapshot) {
        self.agents
            .get_or_create(&[("state", "logged_in")])
            .set(g(s.agents_logged_in));
        self.agents
            .get_or_create(&[("state", "away")])
            .set(g(s.agents_away));
        self.agents_logout_pending.set(g(s.agents_logout_pending));
        self.dns_monitored.set(g(s.dns_monitored));
        self.records
            .get_or_create(&[("state", "live")])
            .set(g(s.records_live));
        self.records
            .get_or_create(&[("state", "final")])
            .set(g(s.records_final));
        self.calls.set(g(s.calls));
        let before = self
            .ignored_seen
            .fetch_max(s.ignored_events, Ordering::Relaxed);
        self.ignored_events
            .inc_by(s.ignored_events.saturating_sub(before));
    }

    fn set_audit(&self, audit_durable: u64) {
        self.audit_last_seq.set(g(audit_durable));
        let mut tails = self
            .tail_positions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tails.retain(|t| t.strong_count() > 0);
        let lag = tails
            .iter()
            .filter_map(Weak::upgrade)
            .map(|at| audit_durable.saturating_sub(at.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0);
        self.audit_tails.set(g(tails.len() as u64));
        self.audit_tail_lag.set(g(lag));
    }

    /// A connection opened on `transport`; it counts under `handshake` until its `Hello`.
    pub(crate) fn connection(self: &Arc<Self>, transport: &'static str) -> ConnectionGauge {
        let gauge = ConnectionGauge {
            metrics: self.clone(),
            role: "handshake",
            transport,
        };
        gauge.series().inc();
        gauge
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused
            .get_or_create(&[("reason", "max_connections")])
            .inc();
    }

    /// One request answered; `error` is its error code, `None` when it succeeded.
    pub(crate) fn request(&self, type_name: &'static str, error: Option<ErrorCode>) {
        let result = error.map_or("ok", ErrorCode::as_str);
        self.requests
            .get_or_create(&[("type", type_name), ("result", result)])
            .inc();
    }

    /// An audit entry that reached the log: access changes and refused logins are counted here,
    /// so that what the metrics say agrees with the audit log.
    pub(crate) fn audit_entry(&self, entry: &AuditEntry) {
        match entry.kind {
            AuditKind::Granted | AuditKind::Downgraded | AuditKind::Revoked => {
                let access = entry.access.map_or("unknown", |a| a.as_str());
                let cause = entry.cause.clone().unwrap_or_default();
                self.access_changes
                    .get_or_create(&[("access", access.to_owned()), ("cause", cause)])
                    .inc();
            }
            AuditKind::LoginFailed => {
                let cause = match entry.cause.as_deref() {
                    Some("throttled") => "throttled",
                    Some("dn_not_allowed") => "dn_not_allowed",
                    _ => "bad_credential",
                };
                self.login_failures.get_or_create(&[("cause", cause)]).inc();
            }
            _ => {}
        }
    }

    /// A durable group commit: its requests, how long write and flush took together.
    /// A durable group commit (kept or refused): its requests, how long write and flush took
    /// together. Batches without requests (a disconnection, a timer) are timed but not sized.
    pub(crate) fn commit(&self, requests: usize, took: Duration) {
        if requests > 0 {
            self.commit_batch_requests.observe(requests as f64);
        }
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn flush(&self, took: Duration) {
        self.flush_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    pub(crate) fn outbound_queue_drop(&self) {
        self.outbound_queue_drops.inc();
    }

    pub(crate) fn backpressure_pause(&self) {
        self.backpressure_pauses.inc();
    }

    /// A following tail's position (the last `seq` it sent), watched while the cell lives.
    pub(crate) fn follow_tail(&self, position: &Arc<AtomicU64>) {
        let mut tails = self
            .tail_positions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tails.retain(|t| t.strong_count() > 0);
        tails.push(Arc::downgrade(position));
    }
}

/// One open connection in `baton_connections`, under its role once known; removed on drop.
pub(crate) struct ConnectionGauge {
    metrics: Arc<Metrics>,
    role: &'static str,
    transport: &'static str,
}

impl ConnectionGauge {
    fn series(&self) -> Gauge {
        self.metrics
            .connections
            .get_or_create(&[("role", self.role), ("transport", self.transport)])
            .clone()
    }

    pub(crate) fn set_role(&mut self, role: Role) {
        self.series().dec();
        self.role = role.as_str();
        self.series().inc();
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.series().dec();
    }
}
