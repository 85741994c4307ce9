//! Section `events`: agent events from the agent's standard output to many subscribers of
//! the daemon's SSE stream (what the web UI and `kraal chat` follow), with many concurrent
//! sessions. The agent is a
//! small stand-in speaking Claude Code's stream-json that stamps every text delta with the
//! wall-clock time it printed it; each subscriber stamps its arrival. Measured next to the
//! raw baseline in the same run: the same stand-in on the host, read through a plain pipe.
//!
//! A second baseline separates the sandbox from kraal's session machinery: the same
//! stand-in in the same sandboxes, its output streamed by `kraal exec` (guest process I/O
//! and the exec stream, without adapter, event log, mirror or SSE).
//!
//! Two phases: latency at a steady rate (every session printing `--rate` events per second)
//! and throughput with every session printing as fast as it can. Stamps are wall-clock
//! milliseconds, so latencies have a resolution of about 1 ms. Percentiles are of the
//! steady state (events printed after the first [`WARM_UP_MS`] of a phase, when every
//! session is under way), each the median of `--runs` runs; the agents are told to go by
//! this process over one keep-alive connection, so no client start-up competes with them.

#![allow(clippy::disallowed_methods)] // Automation: spawns kraal, node and the stand-in.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::{Value, json};

use crate::bench::{Setup, percentile, sh, stats};
use crate::report::{Row, Section, Unit};
use crate::root;

/// Claude Code's stream-json, reduced to what the benchmark needs. Environment:
/// `BENCH_EVENTS` deltas per message, `BENCH_RATE` per second (0: as fast as possible).
const STAND_IN: &str = r#"#!/usr/bin/env node
const rl = require('readline').createInterface({ input: process.stdin });
const N = +(process.env.BENCH_EVENTS || 200), RATE = +(process.env.BENCH_RATE || 0);
const now = () => Date.now();
const out = (o) => new Promise((r) => { if (process.stdout.write(JSON.stringify(o) + '\n')) r(); else process.stdout.once('drain', r); });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
rl.on('line', async (l) => {
  let m; try { m = JSON.parse(l); } catch { return; }
  if (m.type !== 'user') return;
  await out({ type: 'system', subtype: 'init', session_id: 'bench' });
  const start = now();
  for (let i = 0; i < N; i++) {
    if (RATE > 0) { const due = start + (i * 1000) / RATE; const wait = due - now(); if (wait > 0) await sleep(wait); }
    await out({ type: 'stream_event', event: { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 't' + now() } } });
  }
  await out({ type: 'result', subtype: 'success', is_error: false, result: 'done', usage: { input_tokens: 1, output_tokens: N }, total_cost_usd: 0 });
});
"#;

pub(crate) struct Opts {
    pub sessions: usize,
    pub workspaces: usize,
    pub subscribers: usize,
    pub events: usize,
    pub rate: usize,
    pub burst: usize,
    /// How many times each phase runs (figures are medians of the runs).
    pub runs: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Latency of one received delta: its stamp (milliseconds, after the `t`) against the
/// arrival time.
fn latency(stamp: &str, arrived: f64) -> Option<f64> {
    stamp.parse::<f64>().ok().map(|t| arrived - t)
}

/// Events printed in a phase's first this many milliseconds are its warm-up.
const WARM_UP_MS: f64 = 2000.0;

/// What every subscriber saw.
struct Seen {
    latencies: Vec<f64>,
    /// When each event was printed (parallel to `latencies`).
    stamps: Vec<f64>,
    first: f64,
    last: f64,
    count: usize,
}

/// The stamp of a line that carries one of the stand-in's deltas (`marker` names the
/// line's kind), found without parsing the JSON: the readers must cost the two cores as
/// little as possible, or the benchmark measures them.
fn stamp_of<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    if !line.contains(marker) {
        return None;
    }
    let at = line.find("\"text\":\"t")? + 9;
    let len = line[at..].find('"')?;
    Some(&line[at..at + len])
}

/// Reader threads, each keeping what it saw to itself (no hand-off per event) and
/// counting it in a shared counter the collector polls.
#[derive(Default)]
struct Readers {
    count: std::sync::Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<(f64, f64)>>>,
}

impl Readers {
    /// Reads `from` line by line; every line with `marker` and a stamp is an arrival.
    fn spawn(&mut self, from: impl std::io::Read + Send + 'static, marker: &'static str) {
        let count = self.count.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut seen = Vec::new();
            for l in BufReader::new(from).lines().map_while(Result::ok) {
                let arrived = now_ms();
                if let Some(l) = stamp_of(&l, marker).and_then(|t| latency(t, arrived)) {
                    seen.push((arrived, l));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            seen
        }));
    }

    /// Waits until `expected` arrivals were counted or `limit` passed, runs `stop` (which
    /// must end every reader's input), then gathers what the readers saw.
    fn collect(self, expected: usize, limit: Duration, stop: impl FnOnce()) -> Seen {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop();
        let mut s = Seen {
            latencies: Vec::with_capacity(expected),
            stamps: Vec::with_capacity(expected),
            first: f64::MAX,
            last: 0.0,
            count: 0,
        };
        for t in self.threads {
            for (arrived, l) in t.join().unwrap_or_default() {
                s.latencies.push(l);
                s.stamps.push(arrived - l);
                s.first = s.first.min(arrived - l);
                s.last = s.last.max(arrived);
                s.count += 1;
            }
        }
        s
    }
}

impl Seen {
    /// Latencies of the events printed after the phase's warm-up.
    fn steady(&self) -> Vec<f64> {
        let from = self.first + WARM_UP_MS;
        let v: Vec<f64> = self
            .stamps
            .iter()
            .zip(&self.latencies)
            .filter(|(t, _)| **t >= from)
            .map(|(_, l)| *l)
            .collect();
        if v.is_empty() {
            self.latencies.clone()
        } else {
            v
        }
    }
}

/// The stand-in on the host, `n` at once, each read through a pipe by a thread.
fn raw_baseline(node: &Path, script: &Path, n: usize, events: usize, rate: usize) -> Seen {
    let mut readers = Readers::default();
    let mut children = Vec::new();
    for _ in 0..n {
        let mut c = Command::new(node)
            .arg(script)
            .env("BENCH_EVENTS", events.to_string())
            .env("BENCH_RATE", rate.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs");
        readers.spawn(c.stdout.take().unwrap(), "text_delta");
        children.push(c);
    }
    // Loaded before they are told to go, like the sessions.
    std::thread::sleep(Duration::from_secs(1 + n as u64 / 50));
    for c in &mut children {
        let mut stdin = c.stdin.take().unwrap();
        let _ = writeln!(
            stdin,
            r#"{{"type":"user","message":{{"role":"user","content":"go"}}}}"#
        );
        std::mem::forget(stdin);
    }
    readers.collect(n * events, Duration::from_secs(600), || {
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    })
}

/// The stand-in inside the workspaces through `kraal exec`, `per_ws` in each at once.
fn exec_baseline(
    s: &Setup,
    workspaces: &[String],
    per_ws: usize,
    events: usize,
    rate: usize,
) -> Seen {
    let mut readers = Readers::default();
    let mut children = Vec::new();
    let (ev, rt) = (
        format!("BENCH_EVENTS={events}"),
        format!("BENCH_RATE={rate}"),
    );
    for ws in workspaces {
        for _ in 0..per_ws {
            let mut c =
                s.d.kraal(&s.kraal)
                    .args(["exec", ws, "--", "env", &ev, &rt, "/workspace/stand-in"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("kraal runs");
            readers.spawn(c.stdout.take().unwrap(), "text_delta");
            children.push(c);
        }
    }
    // Every stand-in started and loaded before any is told to go (as the sessions are in
    // the kraal phase), so their start-up is not in the measurement.
    std::thread::sleep(Duration::from_secs(3 + children.len() as u64 / 10));
    let mut inputs: Vec<_> = children.iter_mut().filter_map(|c| c.stdin.take()).collect();
    for i in &mut inputs {
        let _ = writeln!(
            i,
            r#"{{"type":"user","message":{{"role":"user","content":"go"}}}}"#
        );
    }
    readers.collect(
        workspaces.len() * per_ws * events,
        Duration::from_secs(900),
        || {
            drop(inputs);
            for mut c in children {
                let _ = c.wait();
            }
        },
    )
}

/// `per_session` subscribers for each session: each one the daemon's SSE stream
/// (`GET /v1/sessions/{id}/stream`, what the web UI and `kraal chat` follow) on its own
/// connection over the daemon's socket, read by a thread; deltas go to `tx`. Plain
/// connections rather than 500 CLI processes, so the two cores measure the daemon's
/// fan-out and not 500 clients' start-up and JSON printing.
fn subscribe(
    socket: &Path,
    sessions: &[String],
    per_session: usize,
    readers: &mut Readers,
) -> anyhow::Result<Vec<std::os::unix::net::UnixStream>> {
    let mut conns = vec![];
    for sid in sessions
        .iter()
        .flat_map(|sid| std::iter::repeat_n(sid, per_session))
    {
        let mut c = std::os::unix::net::UnixStream::connect(socket)?;
        // HTTP/1.0: the stream is delimited by the connection's end, not chunked.
        write!(
            c,
            "GET /v1/sessions/{sid}/stream HTTP/1.0\r\nHost: kraal\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        readers.spawn(c.try_clone()?, "\"type\":\"assistant_delta\"");
        conns.push(c);
    }
    Ok(conns)
}

/// Tells every session to go: `POST /v1/sessions/{id}/input` for each, one after the
/// other on one keep-alive connection.
fn go(socket: &Path, sessions: &[String]) -> anyhow::Result<()> {
    let c = std::os::unix::net::UnixStream::connect(socket)?;
    let mut reader = BufReader::new(c.try_clone()?);
    let mut w = c;
    let body = r#"{"type":"message","text":"go"}"#;
    for sid in sessions {
        write!(
            w,
            "POST /v1/sessions/{sid}/input HTTP/1.1\r\nHost: kraal\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        let mut answer = vec![0; len];
        std::io::Read::read_exact(&mut reader, &mut answer)?;
        if !status.contains(" 202 ") {
            bail!(
                "sending to {sid}: {} {}",
                status.trim_end(),
                String::from_utf8_lossy(&answer)
            );
        }
    }
    Ok(())
}

/// Runs one phase through kraal: fresh sessions, subscribers, then every session is told
/// to go.
fn kraal_phase(
    s: &Setup,
    workspaces: &[String],
    per_ws: usize,
    subscribers_per_session: usize,
    events: usize,
    rate: usize,
) -> anyhow::Result<(Seen, f64)> {
    let mut sessions = Vec::new();
    for ws in workspaces {
        for _ in 0..per_ws {
            let out = sh(s.d.kraal(&s.kraal).args([
                "new-chat",
                ws,
                "--detach",
                "--binary",
                "/workspace/stand-in",
                "-e",
                &format!("BENCH_EVENTS={events}"),
                "-e",
                &format!("BENCH_RATE={rate}"),
            ]))?;
            sessions.push(out.trim().to_owned());
        }
    }
    let mut readers = Readers::default();
    let subs = subscribe(
        &s.d.socket,
        &sessions,
        subscribers_per_session,
        &mut readers,
    )?;
    // Every subscriber connected and caught up before the agents start.
    std::thread::sleep(Duration::from_secs(2 + subs.len() as u64 / 50));
    go(&s.d.socket, &sessions)?;
    let t0 = Instant::now();
    let mut wall = 0.0;
    let seen = readers.collect(
        sessions.len() * subscribers_per_session * events,
        Duration::from_secs(900),
        || {
            wall = t0.elapsed().as_secs_f64();
            for c in subs {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        },
    );
    for sid in &sessions {
        let _ = s.d.kraal(&s.kraal).args(["end-chat", sid]).output();
    }
    Ok((seen, wall))
}

fn summary(s: &Seen, expected: usize) -> Value {
    let secs = ((s.last - s.first) / 1000.0).max(1e-9);
    json!({
        "events_expected": expected,
        "events_received": s.count,
        "latency": stats(s.latencies.clone()),
        "p99_ms": percentile(&s.latencies, 0.99),
        "steady_p50_ms": percentile(&s.steady(), 0.5),
        "steady_p99_ms": percentile(&s.steady(), 0.99),
        "throughput_events_per_s": s.count as f64 / secs,
    })
}

pub(crate) fn section(s: &Setup, o: &Opts) -> anyhow::Result<Section> {
    if o.workspaces == 0 || o.sessions < o.workspaces {
        bail!("need at least one workspace and one session per workspace");
    }
    let node = root().join("agent-clis/node_modules/.bin/node");
    if !node.exists() {
        bail!("{} is missing: run scripts/setup.sh", node.display());
    }
    let script = s.repo.join("stand-in");
    std::fs::write(&script, STAND_IN)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let per_ws = o.sessions / o.workspaces;
    let sessions = per_ws * o.workspaces;
    let subs = (o.subscribers / sessions).max(1);
    println!(
        "  {sessions} sessions in {} workspaces, {} subscribers ({subs} per session); latency phase: {} events each at {}/s; throughput phase: {} each, unthrottled",
        o.workspaces,
        subs * sessions,
        o.events,
        o.rate,
        o.burst
    );
    let workspaces: Vec<String> = (0..o.workspaces).map(|i| format!("ev-{i}")).collect();
    for ws in &workspaces {
        s.kraal(&["up", s.repo.to_str().unwrap(), "--name", ws])?;
    }

    // Each phase `runs` times; every figure is the median of its runs.
    let runs = o.runs.max(1);
    let mut lat: [Vec<Seen>; 3] = Default::default();
    let mut tp: [Vec<Seen>; 3] = Default::default();
    let mut walls = Vec::new();
    for run in 1..=runs {
        println!("  run {run}/{runs}: latency phase…");
        lat[0].push(raw_baseline(&node, &script, sessions, o.events, o.rate));
        lat[1].push(exec_baseline(s, &workspaces, per_ws, o.events, o.rate));
        lat[2].push(kraal_phase(s, &workspaces, per_ws, subs, o.events, o.rate)?.0);
        println!("  run {run}/{runs}: throughput phase…");
        tp[0].push(raw_baseline(&node, &script, sessions, o.burst, 0));
        tp[1].push(exec_baseline(s, &workspaces, per_ws, o.burst, 0));
        let (k, wall) = kraal_phase(s, &workspaces, per_ws, subs, o.burst, 0)?;
        tp[2].push(k);
        walls.push(wall);
    }
    s.remove_all()?;

    let deliveries = sessions * subs;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    // A figure of each run, then its median.
    let pct =
        |seen: &[Seen], q: f64| median(seen.iter().map(|x| percentile(&x.steady(), q)).collect());
    let rate = |x: &Seen| x.count as f64 / ((x.last - x.first) / 1000.0).max(1e-9);
    let tput = |seen: &[Seen]| median(seen.iter().map(rate).collect());
    let lost = |seen: &[Seen], of: usize| {
        seen.iter()
            .map(|x| (of - x.count.min(of)) as f64)
            .sum::<f64>()
    };
    let [raw_lat, ex_lat, k_lat] = &lat;
    let [raw_tp, ex_tp, k_tp] = &tp;
    let rows = vec![
        Row::vs(
            "event latency p50 (agent stdout → subscriber)",
            Unit::Ms,
            pct(k_lat, 0.5),
            "raw pipe",
            pct(raw_lat, 0.5),
        ),
        Row::vs(
            "event latency p99",
            Unit::Ms,
            pct(k_lat, 0.99),
            "raw pipe",
            pct(raw_lat, 0.99),
        ),
        Row::vs(
            "event latency p50",
            Unit::Ms,
            pct(k_lat, 0.5),
            "exec in sandbox",
            pct(ex_lat, 0.5),
        ),
        Row::vs(
            "event latency p99",
            Unit::Ms,
            pct(k_lat, 0.99),
            "exec in sandbox",
            pct(ex_lat, 0.99),
        ),
        Row::vs(
            "event latency p99 at full rate",
            Unit::Ms,
            pct(k_tp, 0.99),
            "exec in sandbox",
            pct(ex_tp, 0.99),
        ),
        Row::vs(
            format!("events delivered per second (all {deliveries} subscribers)"),
            Unit::EventsPerS,
            tput(k_tp),
            "raw pipe (1 reader each)",
            tput(raw_tp),
        ),
        Row::vs(
            "events produced per second (all sessions)",
            Unit::EventsPerS,
            tput(k_tp) / subs as f64,
            "exec in sandbox",
            tput(ex_tp),
        ),
        Row::alone(
            format!("events lost (both phases, all subscribers, {runs} runs)"),
            Unit::Count,
            lost(k_lat, deliveries * o.events) + lost(k_tp, deliveries * o.burst),
        ),
    ];
    let runs_of =
        |seen: &[Seen], of: usize| -> Vec<Value> { seen.iter().map(|x| summary(x, of)).collect() };
    Ok(Section {
        name: "events",
        title: format!(
            "Agent events: {sessions} sessions, {deliveries} subscribers (steady state, median of {runs} runs)"
        ),
        rows,
        details: json!({
            "sessions": sessions,
            "workspaces": o.workspaces,
            "subscribers": deliveries,
            "runs": runs,
            "warm_up_ms": WARM_UP_MS,
            "subscriber": "an SSE connection to /v1/sessions/{id}/stream over the daemon's socket",
            "latency_phase": {
                "events_per_session": o.events, "rate_per_session": o.rate,
                "kraal": runs_of(k_lat, deliveries * o.events),
                "exec_in_sandbox": runs_of(ex_lat, sessions * o.events),
                "raw_pipe": runs_of(raw_lat, sessions * o.events),
            },
            "throughput_phase": {
                "events_per_session": o.burst,
                "kraal": runs_of(k_tp, deliveries * o.burst),
                "kraal_wall_s": walls,
                "exec_in_sandbox": runs_of(ex_tp, sessions * o.burst),
                "raw_pipe": runs_of(raw_tp, sessions * o.burst),
            },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_stream_json_and_in_sse_frames_only_on_delta_lines() {
        let raw = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"t1796642187987"}}}"#;
        assert_eq!(stamp_of(raw, "text_delta"), Some("1796642187987"));
        let sse = r#"data: {"seq":7,"at_ms":1796642187990,"type":"assistant_delta","text":"t1796642187987"}"#;
        let marker = "\"type\":\"assistant_delta\"";
        assert_eq!(stamp_of(sse, marker), Some("1796642187987"));
        assert_eq!(latency("1796642187987", 1796642187990.5), Some(3.5));
        // The whole message at the end of a turn is not one delta.
        let whole = r#"data: {"seq":9,"type":"assistant_message","text":"t1t2"}"#;
        assert_eq!(stamp_of(whole, marker), None);
        let two = r#"data: {"seq":9,"type":"assistant_delta","text":"t1t2"}"#;
        assert_eq!(stamp_of(two, marker).and_then(|t| latency(t, 5.0)), None);
        assert_eq!(stamp_of("id: 7", marker), None);
    }
}
