//! Agent sessions end to end: the real Claude Code and Codex CLIs run inside real gVisor
//! workspaces, reach the scripted model server only through the daemon's model gateway,
//! and are driven with the real `kraal` CLI. Events are compared with the guest's own log
//! on the workspace volume: same events, same order, no gaps.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kraal_testkit::{Scenario, ScriptedModel};
use serde_json::Value;

use crate::harness::*;

/// Real credentials as the daemon holds them; they must never show up in a sandbox.
const REAL_ANTHROPIC: &str = "sk-ant-api03-REALHOSTONLYa1b2c3d4e5";
const REAL_OPENAI: &str = "sk-proj-REALHOSTONLYf6e5d4c3b2";

fn with_model(scenario: &str) -> (ScriptedModel, Daemon) {
    with_model_on(scenario, &[])
}

/// The scripted model server and a daemon whose gateway holds the real keys; `env` adds
/// to the daemon's environment (another backend).
pub fn with_model_on(scenario: &str, env: &[(&str, &str)]) -> (ScriptedModel, Daemon) {
    let model = ScriptedModel::start(Scenario::from_json(scenario).unwrap()).unwrap();
    let url = model.base_url();
    let mut all = vec![
        ("KRAAL_ANTHROPIC_URL", url.as_str()),
        ("KRAAL_OPENAI_URL", url.as_str()),
        ("ANTHROPIC_API_KEY", REAL_ANTHROPIC),
        ("OPENAI_API_KEY", REAL_OPENAI),
    ];
    all.extend_from_slice(env);
    let d = Daemon::start_with_env(&all);
    (model, d)
}

fn workspace(d: &Daemon, name: &str) {
    let repo = git_repo(d.dir.path(), name);
    d.ok(&["up", repo.to_str().unwrap()]);
}

fn session(d: &Daemon, sid: &str) -> Value {
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "--json"])).unwrap();
    all.into_iter()
        .find(|s| s["id"] == sid)
        .unwrap_or_else(|| panic!("no session {sid}"))
}

fn events(d: &Daemon, sid: &str) -> Vec<Value> {
    d.session_events(sid)
}

fn wait_events(d: &Daemon, sid: &str, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    d.wait_events(sid, what, cond)
}

/// The last state event after the last user message is `state`.
pub(crate) fn turn_ended_in(ev: &[Value], state: &str) -> bool {
    let last_user = ev.iter().rposition(|e| e["type"] == "user_message");
    ev.iter()
        .enumerate()
        .rev()
        .find(|(_, e)| e["type"] == "state")
        .is_some_and(|(i, e)| e["state"] == state && last_user.is_some_and(|u| i > u))
}

fn count(ev: &[Value], ty: &str) -> usize {
    ev.iter().filter(|e| e["type"] == ty).count()
}

fn texts(ev: &[Value], ty: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| e["type"] == ty)
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The guest's own log of a session, read from the workspace volume.
fn guest_log(d: &Daemon, ws: &str, sid: &str) -> Vec<Value> {
    let o = d.exec(
        ws,
        &format!("cat /workspace/.kraal/sessions/{sid}/events.jsonl"),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    o.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sequence numbers run 1, 2, 3… and the mirror equals the guest's log event for event.
pub(crate) fn assert_mirrored(d: &Daemon, ws: &str, sid: &str) -> Vec<Value> {
    let mirror = events(d, sid);
    for (i, e) in mirror.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1) as u64, "gap or reorder at {i}: {e}");
    }
    assert_eq!(
        mirror,
        guest_log(d, ws, sid),
        "the daemon's mirror differs from the guest's log"
    );
    mirror
}

fn request_texts(model: &ScriptedModel) -> Vec<String> {
    model.requests().iter().map(Value::to_string).collect()
}

/// Everything in the sandbox a process could read the key from: every process's
/// environment and command line, and the files under the usual places. The sandbox's
/// side only dumps them; the search runs on the host, so the key is never sent in.
fn assert_no_real_key_inside(d: &Daemon, ws: &str) {
    let o = d.exec(
        ws,
        "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done; \
         tar -cf - /workspace /root /tmp /etc 2>/dev/null",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.contains("sk-kraal-"),
        "the scan sees the agent's placeholder key, so it would see a real one"
    );
    for key in [REAL_ANTHROPIC, REAL_OPENAI] {
        assert!(
            !o.stdout.contains(key),
            "the real key {key} is visible inside the sandbox"
        );
    }
}

#[test]
fn claude_edits_files_through_the_gateway_and_the_real_key_stays_on_the_host() {
    claude_edits_files_suite(&[]);
}

/// The real Claude Code CLI reads, edits and writes files in a workspace of the backend
/// `env` selects; the mirror equals the guest's log; every model request carried the real
/// key, which is nowhere inside the sandbox.
pub fn claude_edits_files_suite(env: &[(&str, &str)]) {
    let (model, d) = with_model_on(
        r##"{"turns": [
            {"respond": [{"text": "Let me read it."}, {"tool_use": {"name": "Read", "input": {"file_path": "/workspace/README.md"}}}]},
            {"respond": [{"tool_use": {"name": "Edit", "input": {"file_path": "/workspace/README.md", "old_string": "# demo", "new_string": "# demo, edited by claude"}}}]},
            {"respond": [{"tool_use": {"name": "Write", "input": {"file_path": "/workspace/notes.md", "content": "written by claude\n"}}}]},
            {"respond": [{"text": "Both files are done.", "chunk": 4, "delay_ms": 10}]}
        ]}"##,
        env,
    );
    workspace(&d, "edits");
    let o = d.run(&["new-chat", "edits", "-m", "edit the readme and write notes"]);
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    assert!(
        o.stdout.contains("✎ created /workspace/notes.md")
            && o.stdout.contains("✎ modified /workspace/README.md")
            && o.stdout.contains("Both files are done."),
        "{}",
        o.stdout
    );
    let sid = o
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("se-"))
        .unwrap()
        .to_owned();
    // The agent really changed the checkout.
    let files = d.exec("edits", "cat README.md notes.md && git status --short");
    assert_eq!(
        files.stdout, "# demo, edited by claude\nwritten by claude\n M README.md\n?? notes.md\n",
        "{files:?}"
    );
    let ev = assert_mirrored(&d, "edits", &sid);
    assert_eq!(
        texts(&ev, "user_message"),
        ["edit the readme and write notes"]
    );
    assert_eq!(count(&ev, "tool_call"), 3);
    assert_eq!(count(&ev, "file_change"), 2);
    assert!(turn_ended_in(&ev, "waiting_for_input"));
    let s = session(&d, &sid);
    assert_eq!(s["state"], "waiting_for_input");
    assert_eq!(s["title"], "edit the readme and write notes");
    assert!(s["usage"]["output_tokens"].as_u64().unwrap() > 0, "{s}");
    // Every model request carried the real key, added on the host; none the placeholder.
    let headers = model.request_headers();
    assert_eq!(headers.len(), 4);
    for h in &headers {
        assert_eq!(h.get("x-api-key").map(String::as_str), Some(REAL_ANTHROPIC));
        assert!(!h.values().any(|v| v.contains("sk-kraal-")), "{h:?}");
    }
    assert_no_real_key_inside(&d, "edits");
    // Nor in the sandbox's memory (every process in it, the agent included), read from the
    // host: the sentry's memory file for gVisor, QEMU's memory for a microVM.
    let id = d.workspace("edits")["id"].as_str().unwrap().to_owned();
    let (hits, bytes) = sandbox_memory_hits(&id, &["sk-kraal-", REAL_ANTHROPIC, REAL_OPENAI]);
    assert!(
        hits[0] > 0,
        "the scan sees the placeholder key: {hits:?} in {bytes} bytes"
    );
    assert_eq!(&hits[1..], &[0, 0], "a real key is in the sandbox's memory");
}

#[test]
fn messages_sent_mid_turn_are_delivered_and_interrupt_stops_the_turn() {
    let slow = "This first answer streams slowly, two characters at a time, so there is time.";
    let very_slow = "x".repeat(300);
    let (model, d) = with_model(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "{slow}", "chunk": 2, "delay_ms": 80}}]}},
            {{"respond": [{{"text": "Got your follow-up."}}]}},
            {{"respond": [{{"text": "{very_slow}", "chunk": 1, "delay_ms": 100}}]}},
            {{"respond": [{{"text": "After the interrupt."}}]}}
        ]}}"#
    ));
    workspace(&d, "midturn");
    let sid = d
        .ok(&["new-chat", "midturn", "--detach", "-m", "first message"])
        .trim()
        .to_owned();
    wait_events(&d, &sid, "the first answer streaming", |ev| {
        count(ev, "assistant_delta") >= 3
    });
    d.ok(&["send", &sid, "second message, sent while the agent works"]);
    let ev = wait_events(&d, &sid, "the follow-up answered", |ev| {
        texts(ev, "assistant_text").contains(&"Got your follow-up.".to_owned())
            && turn_ended_in(ev, "waiting_for_input")
    });
    // Never dropped: logged when sent, and part of what the model got next.
    assert_eq!(
        texts(&ev, "user_message"),
        [
            "first message",
            "second message, sent while the agent works"
        ]
    );
    let reqs = request_texts(&model);
    assert!(
        reqs[1].contains("second message, sent while the agent works"),
        "{}",
        reqs[1]
    );
    assert!(
        reqs[1].contains("This first answer streams slowly"),
        "history kept"
    );
    // While the queued message waited, the session never claimed to be idle.
    let queued_state = ev
        .iter()
        .filter(|e| e["type"] == "state")
        .map(|e| e["state"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        queued_state
            .iter()
            .filter(|s| **s == "waiting_for_input")
            .count(),
        1,
        "{queued_state:?}"
    );

    // Interrupt a long turn.
    d.ok(&["send", &sid, "third message"]);
    let before = count(&ev, "assistant_delta");
    wait_events(&d, &sid, "the long answer streaming", |ev| {
        count(ev, "assistant_delta") >= before + 3
    });
    let t0 = Instant::now();
    d.ok(&["interrupt", &sid]);
    let ev = wait_events(&d, &sid, "the interrupted turn", |ev| {
        turn_ended_in(ev, "waiting_for_input")
    });
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "interrupt took {:?}",
        t0.elapsed()
    );
    let streamed_after = count(&ev, "assistant_delta") - before;
    assert!(
        streamed_after < 300,
        "the turn stopped before its 300 deltas ({streamed_after})"
    );
    let o = d.run(&["send", "--wait", &sid, "fourth message"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("After the interrupt."), "{}", o.stdout);
    assert_mirrored(&d, "midturn", &sid);
}

#[test]
fn resume_after_down_and_up_continues_the_same_conversation() {
    let (model, d) = with_model(
        r#"{"turns": [
            {"respond": [{"text": "I will remember the word kiwi."}]},
            {"respond": [{"text": "The word was kiwi."}]}
        ]}"#,
    );
    workspace(&d, "resume");
    let o = d.run(&["new-chat", "resume", "-m", "remember the word kiwi"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "resume", "--json"])).unwrap();
    let sid = all[0]["id"].as_str().unwrap().to_owned();
    let agent_session = all[0]["agent_session"].as_str().unwrap().to_owned();

    d.ok(&["down", "resume"]);
    d.ok(&["up", "resume"]);
    // `kraal chat` shows the history, then sends what is typed.
    let o = d.run_with_stdin(&["chat", "-w", "resume"], "what was the word?\n");
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    assert!(
        o.stdout.contains("› remember the word kiwi")
            && o.stdout.contains("I will remember the word kiwi."),
        "history first: {}",
        o.stdout
    );
    let ev = wait_events(&d, &sid, "the answer after the resume", |ev| {
        texts(ev, "assistant_text").contains(&"The word was kiwi.".to_owned())
            && turn_ended_in(ev, "waiting_for_input")
    });
    assert_eq!(
        texts(&ev, "user_message"),
        ["remember the word kiwi", "what was the word?"]
    );
    // The agent's own resume: the model got the earlier conversation with the question.
    let reqs = request_texts(&model);
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].contains("remember the word kiwi")
            && reqs[1].contains("I will remember the word kiwi.")
            && reqs[1].contains("what was the word?"),
        "{}",
        reqs[1]
    );
    let ev = assert_mirrored(&d, "resume", &sid);
    for e in ev.iter().filter(|e| e["type"] == "agent_session") {
        assert_eq!(e["id"], agent_session, "the same conversation continues");
    }
}

#[test]
fn daemon_kill9_mid_stream_loses_no_event_and_a_following_client_resumes() {
    let text: String = (0..160)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    // The model stream passes through the daemon's gateway, so the crash cuts the request
    // in flight; the agent survives and retries it, and the retry gets the second turn.
    let (model, mut d) = with_model(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "{text}", "chunk": 1, "delay_ms": 40}}]}},
            {{"respond": [{{"text": "{text}", "chunk": 1, "delay_ms": 10}}]}}
        ]}}"#
    ));
    workspace(&d, "crash");
    let sid = d
        .ok(&["new-chat", "crash", "--detach", "-m", "stream a lot"])
        .trim()
        .to_owned();
    // A client following the live stream through the crash.
    let mut follower = d
        .cmd(&["events", &sid, "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = follower.stdout.take().unwrap();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            s2.lock().unwrap().push(l);
        }
    });
    wait_events(&d, &sid, "streaming to start", |ev| {
        count(ev, "assistant_delta") >= 15
    });
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();
    let ev = wait_events(&d, &sid, "the turn to finish after the restart", |ev| {
        turn_ended_in(ev, "waiting_for_input")
    });
    let ev_all = assert_mirrored(&d, "crash", &sid);
    assert_eq!(ev, ev_all);
    assert_eq!(model.requests().len(), 2, "one retry of the cut request");
    assert_eq!(texts(&ev, "assistant_text"), std::slice::from_ref(&text));
    // Whatever streamed before the crash is kept, then the whole retried answer.
    let deltas = texts(&ev, "assistant_delta").concat();
    assert!(deltas.len() > 160 && deltas.ends_with(&text), "{deltas}");
    // The follower reconnected by itself and saw exactly the same log.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < ev.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut err);
    let got: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        got, ev,
        "the following client saw every event once, in order"
    );
    assert!(err.contains("reconnected"), "{err}");
}

#[test]
fn approvals_are_answered_from_the_cli() {
    let (_model, d) = with_model(
        r#"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo approved > /workspace/approved.txt", "description": "Write approved.txt"}}}]},
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "rm /workspace/README.md", "description": "Remove the readme"}}}]},
            {"respond": [{"text": "Finished."}]}
        ]}"#,
    );
    workspace(&d, "asks");
    let sid = d
        .ok(&[
            "new-chat",
            "asks",
            "--ask",
            "--detach",
            "-m",
            "do two things",
        ])
        .trim()
        .to_owned();
    let request = |ev: &[Value], n: usize| -> Option<String> {
        ev.iter()
            .filter(|e| e["type"] == "approval_request")
            .nth(n)
            .map(|e| e["request_id"].as_str().unwrap().to_owned())
    };
    let ev = wait_events(&d, &sid, "the first approval request", |ev| {
        request(ev, 0).is_some()
    });
    assert_eq!(session(&d, &sid)["state"], "needs_approval");
    let first = request(&ev, 0).unwrap();
    let o = d.run(&["approve", &sid, &first]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let ev = wait_events(&d, &sid, "the second approval request", |ev| {
        request(ev, 1).is_some()
    });
    let second = request(&ev, 1).unwrap();
    d.ok(&["deny", &sid, &second, "-m", "keep the readme"]);
    let ev = wait_events(&d, &sid, "the end of the turn", |ev| {
        turn_ended_in(ev, "waiting_for_input")
    });
    let files = d.exec(
        "asks",
        "cat approved.txt && test -f README.md && echo readme kept",
    );
    assert_eq!(files.stdout, "approved\nreadme kept\n", "{files:?}");
    let decisions: Vec<(String, bool)> = ev
        .iter()
        .filter(|e| e["type"] == "approval_decision")
        .map(|e| {
            (
                e["request_id"].as_str().unwrap().to_owned(),
                e["allow"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(decisions, [(first, true), (second.clone(), false)]);
    // An answer for a request that is no longer pending is refused clearly.
    let o = d.run(&["approve", &sid, &second]);
    let ev2 = events(&d, &sid);
    assert!(
        o.code != Some(0) || ev2.len() > ev.len(),
        "a stale approval is either refused or reported: {o:?}"
    );
    assert_mirrored(&d, "asks", &sid);
}

#[test]
fn codex_runs_a_command_and_takes_a_message_steered_into_its_turn() {
    let slow = "Working on it, streaming slowly so a message can be steered in meanwhile.";
    let (model, d) = with_model(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "I'll write the file."}}, {{"custom_tool": {{"name": "exec", "input": "const r = await tools.exec_command({{cmd: \"echo hello from codex > codex.txt && cat codex.txt\"}});\ntext(r);"}}}}]}},
            {{"respond": [{{"text": "{slow}", "chunk": 2, "delay_ms": 80}}]}},
            {{"respond": [{{"text": "Steered message received."}}]}}
        ]}}"#
    ));
    workspace(&d, "codex");
    let sid = d
        .ok(&[
            "new-chat",
            "codex",
            "--agent",
            "codex",
            "--detach",
            "-m",
            "write codex.txt",
        ])
        .trim()
        .to_owned();
    wait_events(&d, &sid, "the slow answer streaming", |ev| {
        texts(ev, "assistant_delta").concat().contains("Working on")
    });
    d.ok(&["send", &sid, "also say something about steering"]);
    let ev = wait_events(&d, &sid, "the steered message answered", |ev| {
        texts(ev, "assistant_text").contains(&"Steered message received.".to_owned())
            && turn_ended_in(ev, "waiting_for_input")
    });
    let out = d.exec("codex", "cat codex.txt");
    assert_eq!(out.stdout, "hello from codex\n", "{out:?}");
    assert!(
        ev.iter()
            .any(|e| e["type"] == "tool_result" && e["output"] == "hello from codex\n"),
        "the command's output is in the log"
    );
    let reqs = request_texts(&model);
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[2].contains("also say something about steering"));
    for h in model.request_headers() {
        assert_eq!(
            h.get("authorization").map(String::as_str),
            Some(format!("Bearer {REAL_OPENAI}").as_str())
        );
    }
    assert_mirrored(&d, "codex", &sid);
    assert_no_real_key_inside(&d, "codex");
}

#[test]
fn bad_session_input_is_refused_clearly() {
    let (_model, d) = with_model(r#"{"turns": []}"#);
    let o = d.run(&["send", "se-000000000000", "hello"]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains("no session se-000000000000") && o.stderr.contains("kraal sessions"),
        "{o:?}"
    );
    let o = d.run(&["new-chat", "nowhere", "-m", "x"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no workspace named nowhere"), "{o:?}");
    let o = d.run(&["new-chat", "nowhere", "--agent", "aider"]);
    assert_eq!(o.code, Some(2), "unknown agents are a usage error: {o:?}");
    workspace(&d, "bad");
    let o = d.run(&["new-chat", "bad", "-m", "   "]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("message is empty"), "{o:?}");
    let o = d.run(&["new-chat", "bad", "--cwd", "relative", "-m", "x"]);
    assert!(o.stderr.contains("absolute"), "{o:?}");
    let o = d.run(&["new-chat", "bad", "-e", "1X=y", "-m", "x"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("1X=y"), "{o:?}");
    d.ok(&["down", "bad"]);
    let o = d.run(&["new-chat", "bad", "--no-start", "-m", "hello"]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr
            .contains("workspace bad is stopped and --no-start was given")
            && o.stderr.contains("kraal up bad"),
        "{o:?}"
    );
    // The API itself does not start anything: a client is told why and how.
    let (status, body) = d.http("POST", "/v1/workspaces/bad/sessions", b"{}");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("not_running") && body.contains("kraal up bad"),
        "{body}"
    );
    let (status, body) = d.http("POST", "/v1/workspaces/bad/sessions", b"{\"agent\": 7}");
    assert_eq!(status, 400, "{body}");
    let (status, body) = d.http("GET", "/v1/sessions/se-0/stream", b"");
    assert_eq!(status, 404, "{body}");
    assert!(d.ok(&["sessions", "--json"]).trim() == "[]");
}

#[test]
fn codex_interrupts_and_resumes_its_thread_after_down_and_up() {
    let long = "y".repeat(300);
    let (model, d) = with_model(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "Noted: the colour is teal."}}]}},
            {{"respond": [{{"text": "{long}", "chunk": 1, "delay_ms": 60}}]}},
            {{"respond": [{{"text": "The colour was teal."}}]}}
        ]}}"#
    ));
    workspace(&d, "cxresume");
    let o = d.run(&[
        "new-chat",
        "cxresume",
        "--agent",
        "codex",
        "-m",
        "remember the colour teal",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "cxresume", "--json"])).unwrap();
    let sid = all[0]["id"].as_str().unwrap().to_owned();
    let thread = all[0]["agent_session"].as_str().unwrap().to_owned();
    // Interrupt a long turn (turn/interrupt).
    d.ok(&["send", &sid, "write a long answer"]);
    wait_events(&d, &sid, "the long answer streaming", |ev| {
        texts(ev, "assistant_delta")
            .iter()
            .filter(|t| t.contains('y'))
            .count()
            >= 5
    });
    let t0 = Instant::now();
    d.ok(&["interrupt", &sid]);
    wait_events(&d, &sid, "the interrupted turn", |ev| {
        turn_ended_in(ev, "waiting_for_input")
    });
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    // Down and up: the thread is resumed (thread/resume) with its history.
    d.ok(&["down", "cxresume"]);
    d.ok(&["up", "cxresume"]);
    let o = d.run(&["send", "--wait", &sid, "which colour?"]);
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    assert!(o.stdout.contains("The colour was teal."), "{}", o.stdout);
    let reqs = request_texts(&model);
    let last = reqs.last().unwrap();
    assert!(
        last.contains("remember the colour teal")
            && last.contains("Noted: the colour is teal.")
            && last.contains("which colour?"),
        "{last}"
    );
    let ev = assert_mirrored(&d, "cxresume", &sid);
    for e in ev.iter().filter(|e| e["type"] == "agent_session") {
        assert_eq!(e["id"], thread, "the same thread continues");
    }
}

#[test]
fn a_model_api_error_is_reported_and_the_session_goes_on() {
    let (model, d) = with_model(
        r#"{"turns": [
            {"error": {"status": 403, "type": "permission_error", "message": "scripted failure marker 42"}},
            {"respond": [{"text": "Fine now."}]}
        ]}"#,
    );
    workspace(&d, "apierr");
    let o = d.run(&["new-chat", "apierr", "-m", "hello"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(model.requests().len(), 1, "a 403 is not retried");
    assert!(
        o.stdout.contains("scripted failure marker 42"),
        "{}",
        o.stdout
    );
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "apierr", "--json"])).unwrap();
    let sid = all[0]["id"].as_str().unwrap().to_owned();
    let ev = events(&d, &sid);
    assert!(
        ev.iter().any(|e| e["type"] == "error"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("scripted failure marker 42")),
        "{ev:?}"
    );
    let o = d.run(&["send", "--wait", &sid, "again"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("Fine now."));
}
