//! The task queue with the real Claude Code CLI on gVisor and the scripted model: limits
//! hold (also across a daemon killed with SIGKILL, which loses no task and starts none
//! twice), each task's workspace holds its own result, best-of-N attempts are compared by
//! the project's check and picking one removes the others, and bad input is refused.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Daemon, git_repo, wait_until};

pub(crate) fn tasks(d: &Daemon) -> Vec<Value> {
    let l: Value = serde_json::from_str(&d.ok(&["task", "ls", "--json"])).unwrap();
    l["tasks"].as_array().unwrap().clone()
}

fn secs(ts: &Value) -> f64 {
    let t = time::OffsetDateTime::parse(
        ts.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// Most tasks whose [started, finished] intervals overlap at one instant.
fn max_overlap(ts: &[Value]) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for t in ts {
        edges.push((secs(&t["started_at"]), 1));
        edges.push((secs(&t["finished_at"]), -1));
    }
    // An end and a start at the same instant: the end first.
    edges.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Six tasks with room for two: never more than two run (watched live, and from their
/// start and end times), a SIGKILL of the daemon while two are in a tool call loses none
/// and starts none twice, all six reach review, and each workspace holds the id of its
/// own session (written by the agent's tool call).
#[test]
fn six_tasks_two_at_a_time_survive_a_daemon_kill_and_each_keeps_its_own_result() {
    let (model, mut d) = crate::sessions::with_model_on(
        r##"{"turns": [], "side": [
            {"contains": "tool_result", "respond": [{"text": "Result written."}]},
            {"contains": "QUEUE-TASK", "respond": [{"tool_use": {"name": "Bash", "input": {"command": "sleep 4; ls /workspace/.kraal/sessions > /workspace/result.txt", "description": "Write the result"}}}]}
        ]}"##,
        &[("KRAAL_MAX_RUNNING", "2")],
    );
    let repo = git_repo(d.dir.path(), "queue");
    let mut ids = Vec::new();
    for i in 0..6 {
        let out = d.ok(&[
            "task",
            "add",
            repo.to_str().unwrap(),
            "-m",
            &format!("QUEUE-TASK {i}: write your session id to result.txt"),
        ]);
        ids.push(out.trim().to_owned());
    }
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        6
    );
    let mut seen_running = 0;
    let mut watch = |d: &Daemon| -> Vec<Value> {
        let ts = tasks(d);
        let running = ts.iter().filter(|t| t["state"] == "running").count();
        assert!(running <= 2, "{running} tasks running at once: {ts:#?}");
        seen_running = seen_running.max(running);
        ts
    };
    // Kill the daemon while two tasks are in their tool call.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let ts = watch(&d);
        let in_tool = ts
            .iter()
            .filter(|t| t["state"] == "running")
            .filter_map(|t| t["session_id"].as_str())
            .filter(|sid| {
                d.session_events(sid)
                    .iter()
                    .any(|e| e["type"] == "command_run")
            })
            .count();
        if in_tool == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two tasks never ran at once: {ts:#?}\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.kill9();
    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(420);
    let done = loop {
        let ts = watch(&d);
        if ts.iter().all(|t| t["state"] == "needs_review") {
            break ts;
        }
        assert!(
            ts.iter().all(|t| matches!(
                t["state"].as_str(),
                Some("queued" | "running" | "needs_review")
            )),
            "a task failed: {ts:#?}\n{}",
            d.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "tasks did not all finish: {ts:#?}\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(seen_running, 2, "the queue never used both slots");
    assert!(
        max_overlap(&done) <= 2,
        "more than two tasks overlapped: {done:#?}"
    );
    // None started twice: one workspace and one session per task, each started once.
    let sessions: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(sessions.len(), 6, "{sessions:#?}");
    let workspaces = d.workspaces();
    assert_eq!(workspaces.len(), 6, "{workspaces:#?}");
    assert!(done.iter().all(|t| t["tries"] == 1), "{done:#?}");
    // No prompt went to the model twice (first requests carry the prompt, not a result).
    let _ = model;
    for t in &done {
        let ws = t["workspace"].as_str().unwrap();
        let sid = t["session_id"].as_str().unwrap();
        assert_eq!(
            t["diff"]["files"], 1,
            "{ws}: result.txt is the one change: {t}"
        );
        // Kept for review: stopped once its turn ended, started again to look.
        wait_until(
            Duration::from_secs(60),
            "the task's workspace to stop",
            || d.workspace(ws)["state"] == "stopped",
        );
        d.ok(&["up", ws]);
        let o = d.exec(ws, "cat /workspace/result.txt");
        assert_eq!(o.stdout.trim(), sid, "{ws}: {o:?}");
        d.ok(&["down", ws]);
    }
    // `done` accepts a reviewed task; it cannot be cancelled afterwards.
    d.ok(&["task", "done", &ids[0]]);
    let o = d.run(&["task", "cancel", &ids[0]]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("is done; cannot cancel it"), "{o:?}");
}

/// Three attempts from one source, one at a time, each told different code by the model;
/// the check command passes for the second only. The comparison lists all three with the
/// right outcome and their changes; picking the second removes the others' workspaces.
#[test]
fn best_of_three_compares_the_check_and_picking_one_removes_the_others() {
    let write = |n: u32| {
        format!(
            r#"{{"respond": [{{"tool_use": {{"name": "Write", "input": {{"file_path": "/workspace/answer.sh", "content": "echo {n}\n"}}}}}}]}}"#
        )
    };
    let (model, d) = crate::sessions::with_model_on(
        &format!(
            r##"{{"turns": [{}, {}, {}], "side": [
                {{"contains": "tool_result", "respond": [{{"text": "Wrote answer.sh."}}]}}
            ]}}"##,
            write(41),
            write(42),
            write(43)
        ),
        &[("KRAAL_MAX_RUNNING", "1")],
    );
    let repo = git_repo(d.dir.path(), "best");
    let o = d.run(&[
        "task",
        "add",
        repo.to_str().unwrap(),
        "-m",
        "Write answer.sh so that it prints the answer",
        "--attempts",
        "3",
        "--check",
        "test \"$(sh answer.sh)\" = 42",
        "--budget-usd",
        "5",
        "--wait",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    assert_eq!(model.remaining(), 0, "each attempt took its own turn");
    let ids: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("tk-") && !l.contains(' '))
        .collect();
    assert_eq!(ids.len(), 3, "{o:?}");
    // The table `--wait` printed, then the JSON comparison.
    assert!(
        o.stdout.contains("passed") && o.stdout.contains("failed (1)"),
        "{o:?}"
    );
    let cmp: Vec<Value> =
        serde_json::from_str(&d.ok(&["task", "compare", ids[0], "--json"])).unwrap();
    assert_eq!(cmp.len(), 3);
    let outcome: Vec<(u64, bool)> = cmp
        .iter()
        .map(|t| {
            (
                t["attempt"].as_u64().unwrap(),
                t["check"]["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcome, [(1, false), (2, true), (3, false)], "{cmp:#?}");
    for t in &cmp {
        assert_eq!(t["state"], "needs_review");
        assert_eq!(t["diff"]["files"], 1, "{t}");
        assert_eq!(t["diff"]["added"], 1, "{t}");
        assert!(t["duration_secs"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["usage"]["output_tokens"].as_u64().is_some(), "{t}");
        assert_eq!(t["group"], cmp[0]["group"]);
    }
    // Each attempt's workspace got the task's cap, and spent under it.
    let budget: Value = serde_json::from_str(&d.ok(&["budget", "show", "--json"])).unwrap();
    let caps = budget["budgets"].as_array().unwrap();
    assert_eq!(caps.len(), 3, "{budget}");
    for t in &cmp {
        let cap = caps
            .iter()
            .find(|c| c["workspace"] == t["workspace"])
            .unwrap_or_else(|| panic!("no cap for {t}: {budget}"));
        assert_eq!(cap["usd"], 5.0);
        assert_eq!(cap["reached"], false);
        assert!(cap["spent"]["requests"].as_u64().unwrap() >= 2, "{cap}");
    }
    let winner = cmp[1]["id"].as_str().unwrap();
    let loser_ws: Vec<String> = [0, 2]
        .iter()
        .map(|&i| cmp[i]["workspace"].as_str().unwrap().to_owned())
        .collect();
    // Only an attempt waiting for review, of a task with attempts, can be picked.
    let o = d.run(&["task", "pick", "tk-000000000000"]);
    assert!(o.stderr.contains("no task tk-000000000000"), "{o:?}");
    // The board and the comparison in the web UI, and the pick from there.
    let base = crate::web::web_url(&d);
    let token = d
        .ok(&["token", "create", "--name", "phone"])
        .trim()
        .to_owned();
    let (cookie, csrf) = crate::web::login(&base, &token);
    let (status, _, board) = crate::web::http(&base, "GET", "/tasks", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    for col in ["Queued", "Running", "Needs review", "Finished"] {
        assert!(
            board.contains(&format!(r#"data-column="{col}""#)),
            "{col}: {board}"
        );
    }
    let review_col = board
        .split(r#"data-column="Needs review""#)
        .nth(1)
        .and_then(|r| r.split(r#"data-column="Finished""#).next())
        .unwrap();
    assert_eq!(
        review_col.matches(r#"<article class="task""#).count(),
        3,
        "{board}"
    );
    assert_eq!(review_col.matches("Pick this one").count(), 3, "{board}");
    let (status, _, page) = crate::web::http(
        &base,
        "GET",
        &format!("/tasks/{winner}/compare"),
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(
        page.matches("<article class=\"attempt\"").count(),
        3,
        "{page}"
    );
    assert_eq!(page.matches("failed (1)").count(), 2, "{page}");
    assert_eq!(page.matches(">passed<").count(), 1, "{page}");
    let (status, _, _) = crate::web::http(
        &base,
        "POST",
        &format!("/tasks/{winner}/pick"),
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "csrf=wrong",
    );
    assert_eq!(status, 403, "a pick without the CSRF token is refused");
    let (status, hs, _) = crate::web::http(
        &base,
        "POST",
        &format!("/tasks/{winner}/pick"),
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 303);
    assert_eq!(
        crate::web::header(&hs, "location"),
        Some(format!("/tasks/{winner}/compare").as_str())
    );
    wait_until(
        Duration::from_secs(120),
        "the other attempts' workspaces to go",
        || {
            let names: Vec<String> = d
                .workspaces()
                .iter()
                .map(|w| w["name"].as_str().unwrap().to_owned())
                .collect();
            loser_ws.iter().all(|l| !names.contains(l))
        },
    );
    let after: Vec<Value> =
        serde_json::from_str(&d.ok(&["task", "compare", winner, "--json"])).unwrap();
    let states: Vec<(&str, bool)> = after
        .iter()
        .map(|t| (t["state"].as_str().unwrap(), t["picked"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("cancelled", false), ("done", true), ("cancelled", false)]
    );
    let ws = cmp[1]["workspace"].as_str().unwrap();
    assert!(d.workspaces().iter().any(|w| w["name"] == ws));
    let o = d.run(&["task", "pick", ids[0]]);
    assert!(o.stderr.contains("is cancelled; cannot pick it"), "{o:?}");
}

/// Bad task input is refused with a clear error and nothing is queued.
#[test]
fn bad_task_input_is_refused_and_nothing_is_queued() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "bad");
    let r = repo.to_str().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let o = d.run(args);
        assert_ne!(o.code, Some(0), "{args:?} was accepted: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    };
    refused(
        &["task", "add", "/no/such/repo", "-m", "x"],
        "is not a directory or a git URL",
    );
    refused(&["task", "add", r, "-m", "  "], "the prompt is empty");
    refused(&["task", "add", r], "a task needs a prompt");
    refused(&["task", "add", "-m", "x"], "give a source");
    refused(
        &["task", "add", r, "-m", "x", "--attempts", "0"],
        "attempts must be between 1 and 8",
    );
    refused(
        &["task", "add", r, "-m", "x", "--attempts", "9"],
        "attempts must be between 1 and 8",
    );
    refused(
        &["task", "add", r, "-m", "x", "--budget-usd", "-1"],
        "a task budget cannot be below zero",
    );
    refused(
        &["task", "add", r, "-m", "x", "--check", " "],
        "check command is empty",
    );
    refused(&["task", "add", r, "-m", "x", "--agent", "eliza"], "eliza");
    refused(
        &["task", "add", r, "-m", "x", "--template", "nope"],
        "no template nope",
    );
    refused(&["task", "add", r, "-m", "x", "--cwd-typo"], "--cwd-typo");
    refused(
        &["task", "ls", "--state", "sleeping"],
        "unknown task state \"sleeping\"",
    );
    refused(
        &["task", "show", "tk-0000000000ff"],
        "no task tk-0000000000ff",
    );
    refused(
        &["task", "retry", "tk-0000000000ff"],
        "no task tk-0000000000ff",
    );
    // Through the API: a relative source path, a missing directory, a persistent workspace.
    for (body, needle) in [
        (
            r#"{"prompt": "x", "workspace": {"source": {"kind": "local", "path": "rel/dir"}}}"#,
            "must be absolute",
        ),
        (
            r#"{"prompt": "x", "workspace": {"source": {"kind": "local", "path": "/no/such/dir"}}}"#,
            "no directory /no/such/dir on the daemon",
        ),
        (
            r#"{"prompt": "x", "workspace": {"source": {"kind": "git", "url": "ext::sh -c evil"}}}"#,
            "transport",
        ),
        (r#"{"prompt": "x"}"#, "needs a `workspace`"),
        (
            r#"{"prompt": "x", "workspace": {"source": {"kind": "empty"}, "persistent": true}}"#,
            "cannot be persistent",
        ),
        (
            r#"{"prompt": "x", "workspace": {"source": {"kind": "empty"}}, "session": {"cwd": "relative"}}"#,
            "must be an absolute path",
        ),
        (r#"{"prompt": 5}"#, "prompt"),
    ] {
        let (status, text) = d.http("POST", "/v1/tasks", body.as_bytes());
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    assert!(tasks(&d).is_empty(), "something was queued");
    // Only a task waiting for review can be marked done; a live one can be cancelled, a
    // cancelled one retried once (this daemon has no model, so it may also fail first).
    let id = d.ok(&["task", "add", r, "-m", "later"]).trim().to_owned();
    let o = d.run(&["task", "done", &id]);
    assert!(o.stderr.contains("cannot mark it done"), "{o:?}");
    let o = d.run(&["task", "cancel", &id]);
    let t: Value = serde_json::from_str(&d.ok(&["task", "show", &id, "--json"])).unwrap();
    if o.code == Some(0) {
        assert_eq!(t["state"], "cancelled", "{t}");
    } else {
        assert!(o.stderr.contains("is failed; cannot cancel it"), "{o:?}");
    }
    d.ok(&["task", "retry", &id]);
    let o = d.run(&["task", "retry", &id]);
    assert!(
        o.stderr.contains("is queued; cannot retry it")
            || o.stderr.contains("is running; cannot retry it"),
        "{o:?}"
    );
}

/// A markdown checklist in the checkout: one task per unchecked item (ticked and fenced
/// ones left out), each agent told its item, and when its turn ends that item's box is
/// ticked by a commit in the task's own checkout, the other items left as they were.
#[test]
fn a_checklist_makes_one_task_per_unchecked_item_and_ticks_each_when_done() {
    let (model, d) = crate::sessions::with_model_on(
        r##"{"turns": [], "side": [
            {"contains": "Checklist item from TODO.md", "respond": [{"text": "Done with the item."}]}
        ]}"##,
        &[],
    );
    let repo = git_repo(d.dir.path(), "check");
    std::fs::write(
        repo.join("TODO.md"),
        "# Plan\n- [ ] add a --json flag\n- [x] write the README\n```\n- [ ] not an item\n```\n  * [ ] fix the flaky test\n",
    )
    .unwrap();
    for args in [
        &["add", "TODO.md"][..],
        &[
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=T",
            "commit",
            "-qm",
            "plan",
        ],
    ] {
        #[allow(clippy::disallowed_methods)]
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    }
    let r = repo.to_str().unwrap();
    // Bad checklists first.
    for (file, needle) in [
        ("../etc/passwd", "must be a path inside the checkout"),
        ("/etc/passwd", "must be a path inside the checkout"),
        ("NOPE.md", "checklist NOPE.md"),
        ("README.md", "no unchecked items"),
    ] {
        let o = d.run(&["task", "add", r, "--checklist", file]);
        assert!(o.stderr.contains(needle), "{file}: {o:?}");
    }
    std::os::unix::fs::symlink("/etc/hostname", repo.join("LINK.md")).unwrap();
    let o = d.run(&["task", "add", r, "--checklist", "LINK.md"]);
    assert!(o.stderr.contains("leads out of the checkout"), "{o:?}");
    std::fs::remove_file(repo.join("LINK.md")).unwrap();
    let o = d.run(&[
        "task",
        "add",
        r,
        "--checklist",
        "TODO.md",
        "--attempts",
        "2",
    ]);
    assert!(o.stderr.contains("does not combine with attempts"), "{o:?}");
    assert!(tasks(&d).is_empty());

    let o = d.run(&[
        "task",
        "add",
        r,
        "--checklist",
        "TODO.md",
        "-m",
        "Keep it small.",
        "--wait",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
    let done = tasks(&d);
    assert_eq!(done.len(), 2, "{done:#?}");
    let prompts: Vec<String> = model.requests().iter().map(|r| r.to_string()).collect();
    assert!(
        prompts.is_empty(),
        "side requests are not recorded: {prompts:?}"
    );
    for (t, item) in done.iter().zip(["add a --json flag", "fix the flaky test"]) {
        assert_eq!(t["state"], "needs_review", "{t}");
        let p = t["prompt"].as_str().unwrap();
        assert!(p.contains(item) && p.contains("Keep it small."), "{p}");
        let ws = t["workspace"].as_str().unwrap();
        wait_until(Duration::from_secs(60), "the workspace to stop", || {
            d.workspace(ws)["state"] == "stopped"
        });
        d.ok(&["up", ws]);
        let log = d.exec(ws, "git -C /workspace log -1 --format=%s%n%an");
        assert_eq!(
            log.stdout.trim(),
            format!("Tick TODO.md: {item}\nkraal"),
            "{log:?}"
        );
        let todo = d.exec(ws, "cat /workspace/TODO.md").stdout;
        for other in ["add a --json flag", "fix the flaky test"] {
            let ticked = todo.contains(&format!("[x] {other}"));
            assert_eq!(ticked, other == item, "{ws}: {todo}");
        }
        assert!(todo.contains("- [ ] not an item"), "{todo}");
        let status = d.exec(ws, "git -C /workspace status --porcelain");
        assert_eq!(
            status.stdout.trim(),
            "",
            "the tick is committed: {status:?}"
        );
        d.ok(&["down", ws]);
    }
}
