//! The daemon's Prometheus metrics: one registry holding every metric family, and the
//! calls the engine, the API, the model gateway and the egress proxy record with. Pure
//! handles (atomics behind `prometheus-client`), no IO: the server sets the gauges of what
//! the store knows (workspaces and sessions by state) at each scrape and encodes the
//! registry for `GET /metrics`.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One label (name, value); values are fixed words, never user input.
type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Which live reader an event was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// `GET /v1/sessions/{id}/stream` (the CLI, API clients).
    Api,
    /// The web UI's live session page.
    Web,
}

impl Reader {
    fn as_str(self) -> &'static str {
        match self {
            Reader::Api => "api",
            Reader::Web => "web",
        }
    }
}

/// Every metric the daemon exports (names under `kraal_`).
pub struct Metrics {
    registry: Registry,
    workspaces: Family<Label, Gauge>,
    sessions: Family<Label, Gauge>,
    create_seconds: Histogram,
    start_seconds: Histogram,
    ingested: Counter,
    delivered: Family<Label, Counter>,
    lag: Histogram,
    gateway_requests: Family<Label, Counter>,
    gateway_bytes: Family<Labels2, Counter>,
    gateway_errors: Family<Label, Counter>,
    egress: Family<Label, Counter>,
    backup_bytes: Counter,
    backup_seconds: Histogram,
    reconcile_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("kraal");
        let workspaces = Family::default();
        r.register(
            "workspaces",
            "Workspaces by observed state",
            workspaces.clone(),
        );
        let sessions = Family::default();
        r.register("sessions", "Agent sessions by state", sessions.clone());
        // 0.1 s … 205 s: a copy or clone of a checkout, a sandbox boot.
        let create_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 12));
        r.register_with_unit(
            "workspace_create_duration",
            "Time the backend took to create a sandbox's resources (checkout, volume)",
            Unit::Seconds,
            create_seconds.clone(),
        );
        let start_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 12));
        r.register_with_unit(
            "workspace_start_duration",
            "Time from starting a sandbox to its guest agent answering",
            Unit::Seconds,
            start_seconds.clone(),
        );
        let ingested = Counter::default();
        r.register(
            "session_events_ingested",
            "Session events mirrored from the guests into the store",
            ingested.clone(),
        );
        let delivered = Family::default();
        r.register(
            "session_events_delivered",
            "Session events sent to live (SSE) readers, by reader",
            delivered.clone(),
        );
        // 0, 1, 2, 4 … 4096 events.
        let lag = Histogram::new(std::iter::once(0.0).chain(exponential_buckets(1.0, 2.0, 13)));
        r.register_with_unit(
            "session_subscriber_lag",
            "How many events a live reader was behind the newest one when it read",
            Unit::Other("events".into()),
            lag.clone(),
        );
        let gateway_requests = Family::default();
        r.register(
            "gateway_requests",
            "Model API requests to the model gateway, by provider",
            gateway_requests.clone(),
        );
        let gateway_bytes = Family::default();
        r.register(
            "gateway_bytes",
            "Body bytes through the model gateway, by provider and direction (request, response)",
            gateway_bytes.clone(),
        );
        let gateway_errors = Family::default();
        r.register(
            "gateway_errors",
            "Model API requests that got no successful answer (refused, upstream unreachable, non-2xx status, answer cut off), by provider",
            gateway_errors.clone(),
        );
        let egress = Family::default();
        r.register(
            "egress_connections",
            "Connections through the egress proxy, by decision (allowed, refused)",
            egress.clone(),
        );
        let backup_bytes = Counter::default();
        r.register(
            "backup_bytes",
            "Volume bytes stored by completed workspace backups",
            backup_bytes.clone(),
        );
        // 1 s … 2.3 h.
        let backup_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        r.register_with_unit(
            "backup_duration",
            "Time a completed workspace backup took",
            Unit::Seconds,
            backup_seconds.clone(),
        );
        // 1 ms … 33 s.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        r.register_with_unit(
            "reconcile_pass_duration",
            "Time one reconciler pass over every workspace took",
            Unit::Seconds,
            reconcile_seconds.clone(),
        );
        Metrics {
            registry: r,
            workspaces,
            sessions,
            create_seconds,
            start_seconds,
            ingested,
            delivered,
            lag,
            gateway_requests,
            gateway_bytes,
            gateway_errors,
            egress,
            backup_bytes,
            backup_seconds,
            reconcile_seconds,
        }
    }

    /// Every family, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// How many workspaces are in each state (every state, zeros included).
    pub fn set_workspaces(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        for (state, n) in counts {
            self.workspaces
                .get_or_create(&[("state", state)])
                .set(n as i64);
        }
    }

    /// How many sessions are in each state (every state, zeros included).
    pub fn set_sessions(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        for (state, n) in counts {
            self.sessions
                .get_or_create(&[("state", state)])
                .set(n as i64);
        }
    }

    /// The backend created a sandbox's resources in `took`.
    pub fn workspace_created(&self, took: Duration) {
        self.create_seconds.observe(took.as_secs_f64());
    }

    /// A started sandbox's guest agent answered after `took`.
    pub fn workspace_started(&self, took: Duration) {
        self.start_seconds.observe(took.as_secs_f64());
    }

    /// `n` session events were stored by the mirror.
    pub fn events_ingested(&self, n: u64) {
        self.ingested.inc_by(n);
    }

    /// One event was sent to a live reader.
    pub fn event_delivered(&self, reader: Reader) {
        self.events_delivered(reader, 1);
    }

    /// `n` events went to one live reader at once.
    pub fn events_delivered(&self, reader: Reader, n: u64) {
        self.delivered
            .get_or_create(&[("reader", reader.as_str())])
            .inc_by(n);
    }

    /// A live reader read while `behind` events behind the newest one.
    pub fn subscriber_lag(&self, behind: u64) {
        self.lag.observe(behind as f64);
    }

    /// The model gateway received a request for `provider`.
    pub fn gateway_request(&self, provider: &'static str) {
        self.gateway_requests
            .get_or_create(&[("provider", provider)])
            .inc();
    }

    /// `n` body bytes of a request to `provider` passed the gateway.
    pub fn gateway_request_bytes(&self, provider: &'static str, n: u64) {
        self.gateway_bytes
            .get_or_create(&[("provider", provider), ("direction", "request")])
            .inc_by(n);
    }

    /// `n` body bytes of an answer from `provider` passed the gateway.
    pub fn gateway_response_bytes(&self, provider: &'static str, n: u64) {
        self.gateway_bytes
            .get_or_create(&[("provider", provider), ("direction", "response")])
            .inc_by(n);
    }

    /// A request to `provider` got no successful answer.
    pub fn gateway_error(&self, provider: &'static str) {
        self.gateway_errors
            .get_or_create(&[("provider", provider)])
            .inc();
    }

    /// The egress proxy allowed (connected) or refused a connection.
    pub fn egress_connection(&self, allowed: bool) {
        let decision = if allowed { "allowed" } else { "refused" };
        self.egress.get_or_create(&[("decision", decision)]).inc();
    }

    /// A workspace backup of `bytes` completed in `took`.
    pub fn backup(&self, bytes: u64, took: Duration) {
        self.backup_bytes.inc_by(bytes);
        self.backup_seconds.observe(took.as_secs_f64());
    }

    /// Times one reconciler pass: observed when the returned timer is dropped.
    pub fn reconcile_pass(&self) -> Timer<'_> {
        Timer {
            histogram: &self.reconcile_seconds,
            since: Instant::now(),
        }
    }
}

/// Observes the time from its creation to its drop, however the timed code ends.
#[must_use = "the time is observed when the timer is dropped"]
pub struct Timer<'a> {
    histogram: &'a Histogram,
    since: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, m.registry()).unwrap();
        out
    }

    #[test]
    fn what_is_recorded_shows_under_its_documented_name() {
        let m = Metrics::new();
        m.set_workspaces([("running", 2), ("stopped", 0)]);
        m.set_sessions([("working", 1)]);
        m.workspace_created(Duration::from_millis(300));
        m.workspace_started(Duration::from_secs(2));
        m.events_ingested(5);
        m.event_delivered(Reader::Api);
        m.event_delivered(Reader::Web);
        m.subscriber_lag(3);
        m.gateway_request("anthropic");
        m.gateway_request_bytes("anthropic", 100);
        m.gateway_response_bytes("anthropic", 2000);
        m.gateway_error("openai");
        m.egress_connection(true);
        m.egress_connection(false);
        m.backup(4096, Duration::from_secs(3));
        drop(m.reconcile_pass());
        let t = text(&m);
        for line in [
            "kraal_workspaces{state=\"running\"} 2",
            "kraal_workspaces{state=\"stopped\"} 0",
            "kraal_sessions{state=\"working\"} 1",
            "kraal_workspace_create_duration_seconds_count 1",
            "kraal_workspace_start_duration_seconds_count 1",
            "kraal_session_events_ingested_total 5",
            "kraal_session_events_delivered_total{reader=\"api\"} 1",
            "kraal_session_events_delivered_total{reader=\"web\"} 1",
            "kraal_session_subscriber_lag_events_bucket{le=\"4.0\"} 1",
            "kraal_gateway_requests_total{provider=\"anthropic\"} 1",
            "kraal_gateway_bytes_total{provider=\"anthropic\",direction=\"request\"} 100",
            "kraal_gateway_bytes_total{provider=\"anthropic\",direction=\"response\"} 2000",
            "kraal_gateway_errors_total{provider=\"openai\"} 1",
            "kraal_egress_connections_total{decision=\"allowed\"} 1",
            "kraal_egress_connections_total{decision=\"refused\"} 1",
            "kraal_backup_bytes_total 4096",
            "kraal_backup_duration_seconds_count 1",
            "kraal_reconcile_pass_duration_seconds_count 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn gauges_are_set_not_added_at_each_scrape() {
        let m = Metrics::new();
        m.set_workspaces([("running", 3)]);
        m.set_workspaces([("running", 1)]);
        assert!(text(&m).contains("kraal_workspaces{state=\"running\"} 1\n"));
    }
}
