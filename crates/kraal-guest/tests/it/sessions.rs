//! Session supervision in the real guest binary, with small fake agents that misbehave
//! the ways headless agent CLIs are known to: a turn that never produces its result, a
//! process that does not exit when its input closes, an agent that stops reading its
//! input. Each must end in a clear state instead of a hang. Also: the log survives a guest
//! restart (a torn last line is dropped) and subscriptions start at any sequence number.

use std::time::{Duration, Instant};

use kraal_core::{AgentEvent, AgentKind, AgentSpec, SessionEvent, SessionInput, SessionState};
use kraal_protocol::Launch;
use kraal_sandbox::GuestClient;

use crate::{TOKEN, start};

/// A fake Claude Code: `script` is the body of a shell script run as the agent binary.
fn fake_agent(dir: &std::path::Path, name: &str, script: &str) -> AgentSpec {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = AgentSpec::new(AgentKind::Claude);
    spec.binary = Some(p.display().to_string());
    spec.watchdog.turn_silence_secs = 2;
    spec.watchdog.exit_grace_secs = 1;
    spec.watchdog.stdin_write_secs = 1;
    spec
}

const INIT: &str = r#"{"type":"system","subtype":"init","session_id":"fake-session"}"#;
const RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","usage":{"input_tokens":1,"output_tokens":1},"total_cost_usd":0.001}"#;

/// Events of `id` until one satisfies `done`, with a deadline.
async fn until(
    c: &GuestClient,
    id: &str,
    limit: Duration,
    done: impl Fn(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let mut sub = c.session_events(id, 0).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no end after {limit:?}; events: {got:#?}"))
            .unwrap();
        let stop = done(&e);
        got.push(e);
        if stop {
            return got;
        }
    }
}

fn final_state(e: &SessionEvent) -> Option<(SessionState, Option<String>)> {
    match &e.event {
        AgentEvent::State { state, reason } if state.is_final() => Some((*state, reason.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn a_turn_that_never_ends_is_interrupted_then_killed_and_fails_clearly() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    // Answers the first message with `init` and then nothing, ignoring interrupts.
    let spec = fake_agent(
        g.parent.path(),
        "silent",
        &format!(
            "while read -r line; do case \"$line\" in *'\"type\":\"user\"'*) echo '{INIT}';; esac; done"
        ),
    );
    c.session_start(
        "se-000000000001",
        spec,
        Some("hello".into()),
        Launch::default(),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let ev = until(&c, "se-000000000001", Duration::from_secs(30), |e| {
        final_state(e).is_some()
    })
    .await;
    let (state, reason) = final_state(ev.last().unwrap()).unwrap();
    assert_eq!(state, SessionState::Failed);
    let reason = reason.unwrap();
    assert!(
        reason.contains("did not finish its turn") && reason.contains("interrupt"),
        "{reason}"
    );
    assert!(
        ev.iter().any(|e| matches!(&e.event, AgentEvent::Error { message } if message.contains("no output from the agent for 2 s"))),
        "the silence was reported before the kill: {ev:#?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // The process is gone; a new message relaunches the agent.
    let info = c.sessions().await.unwrap();
    assert!(!info[0].running);
}

#[tokio::test]
async fn an_agent_that_ignores_the_end_of_its_input_is_killed_after_the_grace() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let spec = fake_agent(
        g.parent.path(),
        "stubborn",
        &format!(
            "trap '' TERM INT HUP\nwhile read -r line; do echo '{INIT}'; echo '{RESULT}'; done\nwhile :; do sleep 1; done"
        ),
    );
    c.session_start(
        "se-000000000002",
        spec,
        Some("hi".into()),
        Launch::default(),
    )
    .await
    .unwrap();
    until(&c, "se-000000000002", Duration::from_secs(20), |e| {
        matches!(
            e.event,
            AgentEvent::State {
                state: SessionState::WaitingForInput,
                ..
            }
        )
    })
    .await;
    let t0 = Instant::now();
    c.session_stop("se-000000000002").await.unwrap();
    let ev = until(&c, "se-000000000002", Duration::from_secs(20), |e| {
        final_state(e).is_some()
    })
    .await;
    assert_eq!(
        final_state(ev.last().unwrap()).unwrap().0,
        SessionState::Done,
        "a stop the user asked for ends as done"
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    // No fake agent process survived.
    let procs = c.processes().await.unwrap();
    assert!(procs.iter().all(|p| !p.running), "{procs:?}");
}

#[tokio::test]
async fn an_agent_that_stops_reading_its_input_fails_as_hung_stdin() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let spec = fake_agent(g.parent.path(), "deaf", "sleep 600");
    // Bigger than a pipe buffer: the write blocks because nobody reads.
    let big = "x".repeat(512 * 1024);
    c.session_start("se-000000000003", spec, Some(big), Launch::default())
        .await
        .unwrap();
    let ev = until(&c, "se-000000000003", Duration::from_secs(20), |e| {
        final_state(e).is_some()
    })
    .await;
    let (state, reason) = final_state(ev.last().unwrap()).unwrap();
    assert_eq!(state, SessionState::Failed);
    assert!(reason.unwrap().contains("hung stdin"));
}

#[tokio::test]
async fn the_log_survives_a_guest_restart_and_subscriptions_start_anywhere() {
    let mut g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let spec = fake_agent(
        g.parent.path(),
        "echo",
        &format!("while read -r line; do echo '{INIT}'; echo '{RESULT}'; done"),
    );
    c.session_start(
        "se-000000000004",
        spec,
        Some("one".into()),
        Launch::default(),
    )
    .await
    .unwrap();
    until(&c, "se-000000000004", Duration::from_secs(20), |e| {
        matches!(
            e.event,
            AgentEvent::State {
                state: SessionState::WaitingForInput,
                ..
            }
        )
    })
    .await;
    c.session_input(
        "se-000000000004",
        SessionInput::message("two"),
        Launch::default(),
    )
    .await
    .unwrap();
    let all = until(&c, "se-000000000004", Duration::from_secs(20), |e| {
        matches!(&e.event, AgentEvent::Usage { .. }) && e.seq > 8
    })
    .await;
    // From the middle: exactly the tail.
    let mut sub = c.session_events("se-000000000004", 3).await.unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.seq, 4);
    assert_eq!(first, all[3]);

    // Restart the guest with a torn line appended, as after a power cut mid-write.
    let log = g.root.join(".kraal/sessions/se-000000000004/events.jsonl");
    drop(sub);
    drop(c);
    let _ = g.child.kill();
    let _ = g.child.wait();
    let before = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("{before}{{\"seq\":99,\"at_ms\":1,\"ty")).unwrap();
    g.respawn().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let info = c.sessions().await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].agent_session.as_deref(), Some("fake-session"));
    let last = info[0].last_seq;
    assert!(last >= all.last().unwrap().seq);
    let mut sub = c.session_events("se-000000000004", 0).await.unwrap();
    for i in 1..=last {
        let e = sub.next().await.unwrap();
        assert_eq!(e.seq, i, "no gap after the restart");
        if let Some(old) = all.get(i as usize - 1) {
            assert_eq!(&e, old, "the log came back unchanged");
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.ends_with('\n') && !text.contains("\"seq\":99"),
        "torn line dropped"
    );
    // A message relaunches the agent with its own resume id.
    c.session_input(
        "se-000000000004",
        SessionInput::message("three"),
        Launch::default(),
    )
    .await
    .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = sub.next().await.unwrap();
            if matches!(
                e.event,
                AgentEvent::State {
                    state: SessionState::WaitingForInput,
                    ..
                }
            ) && e.seq > last
            {
                return e;
            }
        }
    })
    .await
    .expect("the relaunched agent answered");
    assert!(e.seq > last);
}

#[tokio::test]
async fn an_endless_output_line_is_dropped_with_an_error_and_the_session_goes_on() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    // 5 MiB without a newline, then a normal answer.
    let after = r#"{"type":"assistant","message":{"id":"m1","role":"assistant","content":[{"type":"text","text":"after the long line"}]}}"#;
    let spec = fake_agent(
        g.parent.path(),
        "flood",
        &format!(
            "while read -r line; do echo '{INIT}'; head -c 5242880 /dev/zero | tr '\\0' x; echo; echo '{after}'; echo '{RESULT}'; done"
        ),
    );
    c.session_start(
        "se-000000000009",
        spec,
        Some("go".into()),
        Launch::default(),
    )
    .await
    .unwrap();
    let ev = until(&c, "se-000000000009", Duration::from_secs(30), |e| {
        matches!(
            e.event,
            AgentEvent::State {
                state: SessionState::WaitingForInput,
                ..
            }
        )
    })
    .await;
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, AgentEvent::Error { message }
            if message == "the agent printed a line longer than 2 MiB; it was dropped")),
        "{:#?}",
        ev.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    assert!(
        ev.iter().any(|e| matches!(&e.event, AgentEvent::AssistantText { text } if text == "after the long line")),
        "the next line was read whole"
    );
    let biggest = ev
        .iter()
        .map(|e| serde_json::to_string(e).unwrap().len())
        .max()
        .unwrap();
    assert!(biggest < 64 * 1024, "an event of {biggest} bytes");
    assert!(ev.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
}
