//! The real Claude Code CLI, driven through the adapter's command line and encoders.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kraal_agents::claude::{ClaudeOptions, ClaudeParser, encode_interrupt, encode_user_message};
use kraal_core::{AgentEvent, FileChangeKind, SessionState};
use kraal_testkit::{Scenario, ScriptedModel};

pub fn claude_bin() -> PathBuf {
    kraal_testkit::agent_cli("claude", "KRAAL_CLAUDE_BIN")
}

/// A running CLI with its output lines arriving on a channel.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    transcript: Vec<String>,
    _home: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(model: &ScriptedModel, cwd: &Path) -> Agent {
        let home = tempfile::tempdir().unwrap();
        let mut opts = ClaudeOptions {
            binary: Some(claude_bin().display().to_string()),
            ..Default::default()
        };
        opts.env
            .push(("ANTHROPIC_BASE_URL".into(), model.base_url()));
        opts.env.push((
            "ANTHROPIC_API_KEY".into(),
            "sk-ant-scripted-placeholder".into(),
        ));
        let spec = opts.command();
        #[allow(clippy::disallowed_methods)]
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", home.path())
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Agent {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            transcript: vec![],
            _home: home,
        }
    }

    fn send(&mut self, data: &str) {
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(data.as_bytes())
            .unwrap();
        self.stdin.as_mut().unwrap().flush().unwrap();
    }

    /// Reads lines until `done` holds for the transcript so far, panicking with `what`
    /// and the transcript after `limit`.
    fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.transcript) {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "{what} within {limit:?}; transcript:\n{}",
                    self.transcript.join("\n")
                )
            });
            self.transcript.push(l);
        }
    }

    /// Reads lines until `n` turn results have arrived in total.
    fn until_results(&mut self, n: usize) {
        self.until("no result", Duration::from_secs(90), |t| {
            t.iter().filter(|l| is_result(l)).count() >= n
        });
    }

    /// Reads lines until the first answer is streaming.
    fn until_streaming(&mut self) {
        self.until("no streaming started", Duration::from_secs(60), |t| {
            t.iter().any(|l| l.contains("text_delta"))
        });
    }

    /// Closes stdin and collects the rest of the output. Returns the transcript and
    /// whether the CLI exited by itself within 15 s (it is killed otherwise).
    fn finish(mut self) -> (Vec<String>, bool) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = true;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                exited = false;
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            while let Ok(l) = self.lines.try_recv() {
                self.transcript.push(l);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.transcript.push(l);
        }
        (std::mem::take(&mut self.transcript), exited)
    }
}

fn is_result(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"] == "result")
}

pub fn parse_all(lines: &[String]) -> Vec<AgentEvent> {
    let mut p = ClaudeParser::new();
    lines
        .iter()
        .flat_map(|l| p.parse_line(l).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn texts(events: &[AgentEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| {
            if let AgentEvent::AssistantText { text } = e {
                Some(text.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn real_claude_writes_a_file_over_two_turns() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("hello.txt");
    let scenario = Scenario::from_json(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "I'll create the file.", "chunk": 4}},
                          {{"tool_use": {{"name": "Write", "input": {{"file_path": "{}", "content": "hello from claude\n"}}}}}}]}},
            {{"respond": [{{"text": "Created hello.txt."}}]}},
            {{"respond": [{{"text": "It contains one line."}}]}}
        ]}}"#,
        target.display()
    ))
    .unwrap();
    let model = ScriptedModel::start(scenario).unwrap();
    let mut a = Agent::start(&model, dir.path());
    a.send(&encode_user_message("Create hello.txt"));
    a.until_results(1);
    a.send(&encode_user_message("What is in it?"));
    a.until_results(2);
    let (lines, exited) = a.finish();
    assert!(exited, "claude did not exit after stdin closed");

    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "hello from claude\n",
        "the real CLI wrote the file"
    );
    let events = parse_all(&lines);
    assert!(
        matches!(&events[0], AgentEvent::AgentSession { id } if !id.is_empty()),
        "{events:?}"
    );
    assert_eq!(
        texts(&events),
        [
            "I'll create the file.",
            "Created hello.txt.",
            "It contains one line."
        ]
    );
    let deltas: String = events
        .iter()
        .filter_map(|e| {
            if let AgentEvent::AssistantDelta { text } = e {
                Some(text.as_str())
            } else {
                None
            }
        })
        .collect();
    assert!(
        deltas.starts_with("I'll create the file."),
        "streamed deltas: {deltas:?}"
    );
    // Tool call, its result and the file change, in that order.
    let pos = |f: &dyn Fn(&AgentEvent) -> bool| {
        events
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("{events:#?}"))
    };
    let call = pos(&|e| matches!(e, AgentEvent::ToolCall { name, .. } if name == "Write"));
    let result = pos(&|e| {
        matches!(
            e,
            AgentEvent::ToolResult {
                is_error: false,
                ..
            }
        )
    });
    let change = pos(
        &|e| matches!(e, AgentEvent::FileChange { path, kind: FileChangeKind::Created, diff: Some(d) } if path.ends_with("hello.txt") && d == "+hello from claude\n"),
    );
    assert!(call < result && result < change, "{events:#?}");
    let waits = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                AgentEvent::State {
                    state: SessionState::WaitingForInput,
                    ..
                }
            )
        })
        .count();
    assert_eq!(waits, 2, "one per turn");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::Usage { output_tokens, .. } if *output_tokens > 0))
    );
    // The CLI sent the tool result back to the model, and the whole conversation on turn 3.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[1].to_string().contains("tool_result"), "{}", reqs[1]);
    assert!(reqs[2].to_string().contains("What is in it?"));
}

#[test]
fn message_sent_mid_turn_is_queued_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::from_json(
        r#"{"turns": [
            {"respond": [{"text": "This answer streams slowly, a few characters at a time.", "chunk": 3, "delay_ms": 80}]},
            {"respond": [{"text": "Got your follow-up."}]}
        ]}"#,
    )
    .unwrap();
    let model = ScriptedModel::start(scenario).unwrap();
    let mut a = Agent::start(&model, dir.path());
    a.send(&encode_user_message("first"));
    // Wait until the first answer is streaming, then send the follow-up mid-turn.
    a.until_streaming();
    a.send(&encode_user_message("follow-up while you work"));
    a.until_results(2);
    let (lines, exited) = a.finish();
    assert!(exited, "claude did not exit after stdin closed");
    let events = parse_all(&lines);
    assert_eq!(
        texts(&events),
        [
            "This answer streams slowly, a few characters at a time.",
            "Got your follow-up."
        ]
    );
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].to_string().contains("follow-up while you work"),
        "the queued message reached the model"
    );
}

#[test]
fn interrupt_stops_the_turn_and_the_next_message_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::from_json(
        r#"{"turns": [
            {"respond": [{"text": "This would take a very long time to finish streaming to you.", "chunk": 1, "delay_ms": 300}]},
            {"respond": [{"text": "Picking up after the interrupt."}]}
        ]}"#,
    )
    .unwrap();
    let model = ScriptedModel::start(scenario).unwrap();
    let mut a = Agent::start(&model, dir.path());
    a.send(&encode_user_message("go slowly"));
    a.until_streaming();
    let t0 = Instant::now();
    a.send(&encode_interrupt("kraal-interrupt-1"));
    // The CLI ends an interrupted turn with a marker message instead of a `result` line.
    a.until("interrupt not acknowledged", Duration::from_secs(30), |t| {
        t.iter().any(|l| l.contains("[Request interrupted by user"))
    });
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "interrupt took {:?}",
        t0.elapsed()
    );
    // The interrupted turn still ends with its own (aborted) result line.
    a.until_results(1);
    a.send(&encode_user_message("carry on"));
    a.until_results(2);
    let (lines, exited) = a.finish();
    assert!(exited, "claude did not exit after stdin closed");
    let events = parse_all(&lines);
    let full = "This would take a very long time to finish streaming to you.";
    assert!(
        !texts(&events).iter().any(|t| t == full),
        "the interrupted turn did not run to the end: {events:#?}"
    );
    assert_eq!(
        texts(&events).last().map(String::as_str),
        Some("Picking up after the interrupt.")
    );
    assert!(
        !events.iter().any(|e| matches!(e, AgentEvent::Error { .. })),
        "an interrupt is not an error: {events:#?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, AgentEvent::State { state: SessionState::WaitingForInput, reason: Some(r) } if r.contains("interrupted"))),
        "{events:#?}"
    );
}

/// Regression guard for attachments: the real CLI forwards an image content block of a
/// stream-json user message to the model as an image block, bytes intact.
#[test]
fn an_image_sent_with_a_message_reaches_the_model_as_an_image_block() {
    let dir = tempfile::tempdir().unwrap();
    let scenario =
        Scenario::from_json(r#"{"turns": [{"respond": [{"text": "I see a tiny picture."}]}]}"#)
            .unwrap();
    let model = ScriptedModel::start(scenario).unwrap();
    let mut a = Agent::start(&model, dir.path());
    // A valid 1×1 PNG.
    let png: Vec<u8> = [
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52, 0,
        0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 0x0d, 0x49, 0x44,
        0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0, 0x05, 0, 0x01, 0xff, 0x89,
        0x99, 0x3d, 0x1d, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ]
    .to_vec();
    let att = kraal_core::Attachment {
        path: ".kraal/attachments/a-dot.png".into(),
        media_type: "image/png".into(),
        name: "dot.png".into(),
        size: png.len() as u64,
        data: Some(png.clone()),
    };
    a.send(&kraal_agents::claude::encode_user_content(
        "what is in this picture?",
        &[att],
    ));
    a.until_results(1);
    let (_lines, _) = a.finish();
    let reqs = model.requests();
    let user = reqs[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()
        .clone();
    let blocks = user["content"].as_array().unwrap();
    let image = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .unwrap_or_else(|| panic!("no image block in {user}"));
    use base64::Engine as _;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(image["source"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(sent, png);
    assert!(user.to_string().contains("what is in this picture?"));
}
