//! Observability end to end: `GET /metrics` scraped from a real daemon before, while and
//! after the real Claude Code CLI runs a turn against the scripted model (parsed as the
//! Prometheus text format, not matched with patterns), on the Unix socket and on TCP behind
//! the API token; and `KRAAL_LOG_FORMAT=json` turning the daemon's log into JSON lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use crate::harness::*;
use crate::sessions::{turn_ended_in, with_model_on};

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the text format parses")
}

fn scrape(d: &Daemon) -> Scrape {
    let (status, body) = d.http("GET", "/metrics", b"");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// The sample of `metric` carrying all of `labels`, if the scrape has one.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a single value: {other:?}"),
        })
}

/// Like [`value`], with an absent series counting as 0 (a labelled family shows a series
/// only once something was recorded for it).
fn count(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, metric, labels).unwrap_or(0.0)
}

/// Retries `check` until it passes; after `limit`, fails with what it said last.
fn eventually(limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A live reader of a session's SSE stream on the daemon socket, from the first event:
/// the sequence numbers it received, until it is dropped.
struct LiveReader {
    seqs: Arc<Mutex<Vec<u64>>>,
    socket: UnixStream,
}

impl LiveReader {
    fn start(d: &Daemon, sid: &str) -> LiveReader {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "GET /v1/sessions/{sid}/stream?after=0 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let (out, r) = (seqs.clone(), s.try_clone().unwrap());
        std::thread::spawn(move || {
            // Each event is one chunk of the chunked body; its `id:` line is its sequence.
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("id:") {
                    out.lock().unwrap().push(id.trim().parse::<u64>().unwrap());
                }
            }
        });
        LiveReader { seqs, socket: s }
    }

    fn seqs(&self) -> Vec<u64> {
        self.seqs.lock().unwrap().clone()
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// `GET path` on the daemon's TCP listener, with `token` as the bearer token: status,
/// content type and body.
fn tcp_get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

#[test]
fn metrics_follow_a_real_session_through_the_gateway_and_tcp_needs_the_token() {
    // A long, slow answer, so the turn is still running when it is scraped mid-way.
    let text: String = (0..300)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let (model, d) = with_model_on(
        &format!(
            r#"{{"turns": [{{"respond": [{{"text": "{text}", "chunk": 1, "delay_ms": 40}}]}}]}}"#
        ),
        &[("KRAAL_LISTEN_TCP", tcp.as_str())],
    );

    // Before anything ran: every workspace state is there, at zero; no event, no request.
    let before = scrape(&d);
    for state in ["creating", "running", "stopped", "failed"] {
        assert_eq!(
            value(&before, "kraal_workspaces", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        value(&before, "kraal_session_events_ingested_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        count(
            &before,
            "kraal_gateway_requests_total",
            &[("provider", "anthropic")]
        ),
        0.0
    );
    // The reconciler passes every second (`--reconcile-secs 1`), and is timed.
    eventually(Duration::from_secs(20), || {
        let n = count(
            &scrape(&d),
            "kraal_reconcile_pass_duration_seconds_count",
            &[],
        );
        (n >= 2.0)
            .then_some(())
            .ok_or_else(|| format!("{n} reconciler passes timed"))
    });

    let repo = git_repo(d.dir.path(), "observed");
    d.ok(&["up", repo.to_str().unwrap()]);
    let up = scrape(&d);
    assert_eq!(
        value(&up, "kraal_workspaces", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&up, "kraal_workspaces", &[("state", "creating")]),
        Some(0.0)
    );
    for h in ["create", "start"] {
        let metric = format!("kraal_workspace_{h}_duration_seconds_count");
        assert_eq!(value(&up, &metric, &[]), Some(1.0), "{metric}");
    }

    let sid = d
        .ok(&[
            "new-chat",
            "observed",
            "--detach",
            "-m",
            "say the alphabet slowly",
        ])
        .trim()
        .to_owned();
    let early = d.wait_events(&sid, "the answer streaming", |ev| {
        ev.iter().filter(|e| e["type"] == "assistant_delta").count() >= 5
    });
    // A live reader that starts behind: it has `early.len()` events to catch up on.
    let reader = LiveReader::start(&d, &sid);

    // While the turn runs.
    let during = scrape(&d);
    assert_eq!(
        value(&during, "kraal_sessions", &[("state", "working")]),
        Some(1.0)
    );
    assert_eq!(
        value(&during, "kraal_workspaces", &[("state", "running")]),
        Some(1.0)
    );
    let ingested = count(&during, "kraal_session_events_ingested_total", &[]);
    assert!(ingested >= early.len() as f64, "{ingested} ingested");
    assert!(
        count(
            &during,
            "kraal_gateway_requests_total",
            &[("provider", "anthropic")]
        ) >= 1.0,
        "the agent's model request went through the gateway"
    );

    // After the turn: every mirrored event was counted once as ingested, and once as
    // delivered to the one live reader, which got all of them.
    d.wait_events(&sid, "the turn to end", |ev| {
        turn_ended_in(ev, "waiting_for_input")
    });
    let mut last = None;
    eventually(Duration::from_secs(60), || {
        let mirror = d.session_events(&sid).len();
        let got = reader.seqs();
        let after = last.insert(scrape(&d));
        let ingested = count(after, "kraal_session_events_ingested_total", &[]);
        let delivered = count(
            after,
            "kraal_session_events_delivered_total",
            &[("reader", "api")],
        );
        let all = got == (1..=mirror as u64).collect::<Vec<_>>();
        (all && ingested == mirror as f64 && delivered == mirror as f64)
            .then_some(())
            .ok_or_else(|| format!(
                "{mirror} events mirrored, the reader got {} ({:?}…), {ingested} ingested, {delivered} delivered",
                got.len(),
                got.first()
            ))
    });
    let after = last.unwrap();
    assert_eq!(
        value(&after, "kraal_sessions", &[("state", "waiting_for_input")]),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "kraal_sessions", &[("state", "working")]),
        Some(0.0)
    );
    // The reader's first read was behind by what was stored before it came.
    assert!(count(&after, "kraal_session_subscriber_lag_events_count", &[]) >= 1.0);
    let lag = count(&after, "kraal_session_subscriber_lag_events_sum", &[]);
    assert!(lag >= early.len() as f64, "lag sum {lag}");
    // Every model request the scripted model answered passed the gateway, both ways.
    let answered = model.requests().len() as f64;
    let requests = count(
        &after,
        "kraal_gateway_requests_total",
        &[("provider", "anthropic")],
    );
    assert!(
        answered >= 1.0 && requests >= answered,
        "{requests} gateway requests, {answered} answered"
    );
    for direction in ["request", "response"] {
        let bytes = count(
            &after,
            "kraal_gateway_bytes_total",
            &[("provider", "anthropic"), ("direction", direction)],
        );
        assert!(bytes > 0.0, "{direction}: {bytes} bytes");
    }

    // An egress connection to a host off the allowlist is refused, and counted.
    let refused = |s: &Scrape| {
        count(
            s,
            "kraal_egress_connections_total",
            &[("decision", "refused")],
        )
    };
    let refused_before = refused(&after);
    let o = d.run(&[
        "exec",
        "observed",
        "--",
        "bash",
        "-c",
        r#"P=${HTTP_PROXY#http://}; exec 3<>/dev/tcp/${P%:*}/${P##*:} || exit 9; printf 'CONNECT not-on-the-list.invalid:443 HTTP/1.1\r\nHost: not-on-the-list.invalid:443\r\n\r\n' >&3; timeout 10 head -c 12 <&3"#,
    ]);
    assert!(o.stdout.contains("HTTP/1.1 4"), "{o:?}");
    eventually(Duration::from_secs(10), || {
        let n = refused(&scrape(&d));
        (n > refused_before)
            .then_some(())
            .ok_or_else(|| format!("{n} refused, {refused_before} before"))
    });

    // On TCP, `/metrics` needs the API token like `/v1`.
    let (status, _, body) = tcp_get(port, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = tcp_get(port, "/metrics", Some("not-the-token"));
    assert_eq!(status, 401);
    let token = std::fs::read_to_string(d.data().join("api-token")).unwrap();
    let (status, ctype, body) = tcp_get(port, "/metrics", Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(
        value(&parse(&body), "kraal_workspaces", &[("state", "running")]),
        Some(1.0)
    );
}

#[test]
fn json_log_format_makes_every_daemon_log_line_a_json_object() {
    let mut d = Daemon::start_with_env(&[("KRAAL_LOG_FORMAT", "json")]);
    d.ok(&["status"]);
    // A scrape, so the log is not only start-up; then a clean stop, which logs too.
    assert_eq!(d.http("GET", "/metrics", b"").0, 200);
    assert!(d.terminate().success());
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    for v in &lines {
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{v}"
        );
    }
    let messages: Vec<&str> = lines.iter().filter_map(|v| v["message"].as_str()).collect();
    for want in [
        "backend selected",
        "kraal daemon listening on unix:",
        "kraal daemon shutting down",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(want)),
            "no {want:?} in {messages:?}"
        );
    }
    // A field of an event is a JSON field, not text in the message.
    let selected = lines
        .iter()
        .find(|v| v["message"] == "backend selected")
        .unwrap();
    assert_eq!(selected["backend"], "gvisor", "{selected}");

    // Without the variable the log stays text for people.
    let mut plain = Daemon::start();
    assert!(plain.terminate().success());
    let log = std::fs::read_to_string(plain.dir.path().join("daemon.log")).unwrap();
    let selected = log
        .lines()
        .find(|l| l.contains("backend selected"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        serde_json::from_str::<serde_json::Value>(selected).is_err(),
        "{selected}"
    );
}
