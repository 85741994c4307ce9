//! Every agent CLI kraal ships an adapter for runs for real in a gVisor workspace, reaches
//! the scripted model only through the gateway, and really changes files: Claude Code
//! (stream-json), Codex (app-server), and Gemini CLI, Qwen Code and OpenCode (ACP). Each
//! session keeps its raw protocol transcript; with `KRAAL_CAPTURE_FIXTURES=1` the
//! transcripts become the adapter fixtures in `crates/kraal-agents/tests/fixtures/`.

use kraal_testkit::{Scenario, ScriptedModel};
use serde_json::Value;

use crate::harness::*;

fn daemon(scenario: &str) -> (ScriptedModel, Daemon) {
    let model = ScriptedModel::start(Scenario::from_json(scenario).unwrap()).unwrap();
    let url = model.base_url();
    let d = Daemon::start_with_env(&[
        ("KRAAL_ANTHROPIC_URL", &url),
        ("KRAAL_OPENAI_URL", &url),
        ("KRAAL_GOOGLE_URL", &url),
        ("ANTHROPIC_API_KEY", "sk-ant-host-only"),
        ("OPENAI_API_KEY", "sk-openai-host-only"),
        ("GEMINI_API_KEY", "AIza-host-only"),
    ]);
    (model, d)
}

fn wait(d: &Daemon, sid: &str, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    d.wait_events(sid, what, cond)
}

/// Ended turns: state events `waiting_for_input` after the n-th user message.
fn turns_done(ev: &[Value]) -> usize {
    let mut done = 0;
    let mut open = false;
    for e in ev {
        if e["type"] == "user_message" {
            open = true;
        }
        if open && e["type"] == "state" && e["state"] == "waiting_for_input" {
            done += 1;
            open = false;
        }
    }
    done
}

fn of_type<'a>(ev: &'a [Value], ty: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["type"] == ty).collect()
}

/// Copies the session's transcript into the adapter fixtures when asked to.
fn capture(d: &Daemon, ws: &str, sid: &str, agent: &str, name: &str) {
    let w = d.workspace(ws);
    let src = d
        .data()
        .join("workspaces")
        .join(w["id"].as_str().unwrap())
        .join("volume/.kraal/sessions")
        .join(sid)
        .join("transcript.jsonl");
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("{\"read\"")),
        "the transcript recorded the agent's output"
    );
    if std::env::var_os("KRAAL_CAPTURE_FIXTURES").is_some() {
        let dst = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kraal-agents/tests/fixtures")
            .join(agent)
            .join(format!("{name}.jsonl"));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(&dst, text).unwrap();
        eprintln!("captured {}", dst.display());
    }
}

fn start(d: &Daemon, ws: &str, agent: &str, model: Option<&str>, message: &str) -> String {
    let mut args = vec![
        "new-chat",
        ws,
        "--agent",
        agent,
        "--transcript",
        "--detach",
        "-m",
        message,
    ];
    if let Some(m) = model {
        args.extend(["--model", m]);
    }
    d.ok(&args).trim().to_owned()
}

#[test]
fn claude_code_writes_interrupts_and_asks() {
    let long = "z".repeat(200);
    let (_m, d) = daemon(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "Writing it."}}, {{"tool_use": {{"name": "Write", "input": {{"file_path": "/workspace/claude.txt", "content": "from claude\n"}}}}}}]}},
            {{"respond": [{{"text": "Wrote claude.txt.", "chunk": 3}}]}},
            {{"respond": [{{"text": "{long}", "chunk": 1, "delay_ms": 50}}]}},
            {{"respond": [{{"text": "Resumed after the interrupt."}}]}},
            {{"respond": [{{"tool_use": {{"name": "Bash", "input": {{"command": "echo yes > /workspace/asked.txt", "description": "Write asked.txt"}}}}}}]}},
            {{"respond": [{{"tool_use": {{"name": "Bash", "input": {{"command": "rm -f /workspace/claude.txt", "description": "Remove claude.txt"}}}}}}]}},
            {{"respond": [{{"text": "One approved, one denied."}}]}}
        ]}}"#
    ));
    let repo = git_repo(d.dir.path(), "agents");
    d.ok(&["up", repo.to_str().unwrap()]);
    let sid = start(&d, "agents", "claude", None, "write claude.txt");
    wait(&d, &sid, "the first turn", |ev| turns_done(ev) == 1);
    d.ok(&["send", &sid, "now stream a long answer"]);
    wait(&d, &sid, "the long answer streaming", |ev| {
        of_type(ev, "assistant_delta")
            .iter()
            .filter(|e| e["text"] == "z")
            .count()
            >= 5
    });
    d.ok(&["interrupt", &sid]);
    wait(&d, &sid, "the interrupted turn", |ev| turns_done(ev) == 2);
    let o = d.run(&["send", "--wait", &sid, "go on"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("Resumed after the interrupt."));
    let files = d.exec("agents", "cat claude.txt");
    assert_eq!(files.stdout, "from claude\n");
    capture(&d, "agents", &sid, "claude", "write-interrupt-resume");

    // Approvals: a second session that asks before every tool.
    let ask = d
        .ok(&[
            "new-chat",
            "agents",
            "--ask",
            "--transcript",
            "--detach",
            "-m",
            "run two commands",
        ])
        .trim()
        .to_owned();
    let ev = wait(&d, &ask, "an approval request", |ev| {
        !of_type(ev, "approval_request").is_empty()
    });
    let first = of_type(&ev, "approval_request")[0]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    d.ok(&["approve", &ask, &first]);
    let ev = wait(&d, &ask, "the second request", |ev| {
        of_type(ev, "approval_request").len() == 2
    });
    let second = of_type(&ev, "approval_request")[1]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    d.ok(&["deny", &ask, &second, "-m", "keep it"]);
    wait(&d, &ask, "the end of the turn", |ev| turns_done(ev) == 1);
    let files = d.exec("agents", "cat asked.txt claude.txt");
    assert_eq!(files.stdout, "yes\nfrom claude\n", "{files:?}");
    capture(&d, "agents", &ask, "claude", "approve-and-deny");
}

#[test]
fn codex_runs_commands_and_steers() {
    let slow = "Streaming slowly so that a message can be steered into this turn.";
    let (_m, d) = daemon(&format!(
        r#"{{"turns": [
            {{"respond": [{{"text": "Running it."}}, {{"custom_tool": {{"name": "exec", "input": "const r = await tools.exec_command({{cmd: \"echo from codex > codex.txt && cat codex.txt\"}});\ntext(r);"}}}}]}},
            {{"respond": [{{"text": "{slow}", "chunk": 2, "delay_ms": 60}}]}},
            {{"respond": [{{"text": "Took the steered message."}}]}}
        ]}}"#
    ));
    let repo = git_repo(d.dir.path(), "cx");
    d.ok(&["up", repo.to_str().unwrap()]);
    let sid = start(&d, "cx", "codex", None, "write codex.txt");
    wait(&d, &sid, "the slow part", |ev| {
        of_type(ev, "assistant_delta")
            .iter()
            .any(|e| e["text"] == "St")
    });
    d.ok(&["send", &sid, "and mention steering"]);
    let ev = wait(&d, &sid, "the steered answer", |ev| {
        of_type(ev, "assistant_text")
            .iter()
            .any(|e| e["text"] == "Took the steered message.")
            && turns_done(ev) >= 1
            && ev.last().is_some_and(|e| e["state"] == "waiting_for_input")
    });
    assert!(!of_type(&ev, "command_run").is_empty());
    assert_eq!(d.exec("cx", "cat codex.txt").stdout, "from codex\n");
    capture(&d, "cx", &sid, "codex", "exec-and-steer");
}

/// Gemini CLI, Qwen Code and OpenCode over ACP: write a file with the agent's own write
/// tool, answer, then take a second message.
#[test]
fn acp_agents_write_files_and_take_a_second_message() {
    let (_m, d) = daemon(
        r#"{"turns": [
            {"respond": [{"text": "Writing with Gemini."}, {"tool_use": {"name": "write_file", "input": {"file_path": "/workspace/gemini.txt", "content": "from gemini\n"}}}]},
            {"respond": [{"text": "gemini.txt written."}]},
            {"respond": [{"text": "Second answer from Gemini."}]},
            {"respond": [{"text": "Writing with Qwen."}, {"tool_use": {"name": "write_file", "input": {"file_path": "/workspace/qwen.txt", "content": "from qwen\n"}}}]},
            {"respond": [{"text": "qwen.txt written."}]},
            {"respond": [{"text": "Second answer from Qwen."}]},
            {"respond": [{"text": "Writing with OpenCode."}, {"tool_use": {"name": "write", "input": {"filePath": "/workspace/opencode.txt", "content": "from opencode\n"}}}]},
            {"respond": [{"text": "opencode.txt written."}]},
            {"respond": [{"text": "Second answer from OpenCode."}]}
        ],
        "side": [
            {"contains": "SUGGESTION MODE", "respond": [{"text": "NONE"}]},
            {"contains": "Managed memory has TWO directories", "respond": [{"text": "Nothing to remember."}]},
            {"contains": "\"model\":\"gpt-5.4-nano\"", "respond": [{"text": "Write a file"}]}
        ]}"#,
    );
    let repo = git_repo(d.dir.path(), "acp");
    d.ok(&["up", repo.to_str().unwrap()]);
    for (agent, model) in [
        ("gemini", "gemini-2.5-flash"),
        ("qwen", "qwen3-coder-plus"),
        ("opencode", "gpt-4.1"),
    ] {
        let sid = start(&d, "acp", agent, Some(model), &format!("write {agent}.txt"));
        let ev = wait(&d, &sid, &format!("{agent}'s first turn"), |ev| {
            turns_done(ev) == 1
                || ev
                    .iter()
                    .any(|e| e["type"] == "state" && e["state"] == "failed")
        });
        assert_eq!(
            turns_done(&ev),
            1,
            "{agent} failed: {ev:#?}\n{}",
            d.log_tail()
        );
        let texts: Vec<&str> = of_type(&ev, "assistant_text")
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect();
        assert!(
            texts.iter().any(|t| t.contains("written")),
            "{agent}: {texts:?}"
        );
        assert!(
            !of_type(&ev, "tool_call").is_empty(),
            "{agent} reported its tool call"
        );
        let o = d.run(&["send", "--wait", &sid, "one more thing"]);
        assert_eq!(o.code, Some(0), "{agent}: {o:?}");
        assert!(o.stdout.contains("Second answer"), "{agent}: {}", o.stdout);
        let f = d.exec("acp", &format!("cat {agent}.txt"));
        assert_eq!(f.stdout, format!("from {agent}\n"), "{agent}: {f:?}");
        capture(&d, "acp", &sid, agent, "write-then-second-message");
    }
}
