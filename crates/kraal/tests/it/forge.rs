//! Tasks on a git host, against a GitHub-shaped server written here (the REST endpoints
//! kraal calls, every request recorded with whether it carried the token) and a real
//! smart-HTTP git remote (`git http-backend`) behind it: a labelled issue becomes a task,
//! the real Claude Code CLI on gVisor does it, kraal pushes the branch and opens the pull
//! request, a failing check run and a review comment go back to the agent as its next
//! message, and a second push follows; the token never reaches the sandbox. Also: the
//! signed webhook, triggers, schedules and the bad input around them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::github_peer::{GitHub, REPO, TOKEN, branches, git_in, issue, tip};
use crate::harness::{Daemon, git_repo, sandbox_memory_hits, wait_until};
use crate::tasks::tasks;

fn task(d: &Daemon, id: &str) -> Value {
    serde_json::from_str(&d.ok(&["task", "show", id, "--json"])).unwrap()
}

/// A daemon that knows the fake host's API and git remote, with its token stored.
fn daemon_for(
    gh: &GitHub,
    scenario: &str,
    extra: &[(&str, &str)],
) -> (kraal_testkit::ScriptedModel, Daemon) {
    let forges = format!("github:github.test=http://{}/api", gh.addr);
    let git = format!("github.test=http://{}/git", gh.addr);
    let mut env = vec![
        ("KRAAL_FORGES", forges.as_str()),
        ("KRAAL_GIT_URLS", git.as_str()),
        ("KRAAL_FORGE_POLL_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    let (model, d) = crate::sessions::with_model_on(scenario, &env);
    d.run_with_stdin(&["secret", "set", "github-token"], TOKEN);
    let ls = d.ok(&["secret", "ls", "--json"]);
    assert!(ls.contains("github-token") && !ls.contains(TOKEN), "{ls}");
    (model, d)
}

/// The scripted agent: the issue makes it write GREETING.txt; the feedback on its pull
/// request (the failed check and the review comment, both in one message) makes it fix the
/// file and add NOTES.md. The rules are tried in order, on the whole request.
const SCENARIO: &str = r##"{"turns": [], "side": [
    {"contains": "STEP2-OK", "respond": [{"text": "Fixed the greeting and added the notes."}]},
    {"contains": "REVIEW-ASK-7", "respond": [{"tool_use": {"name": "Bash", "input": {"command": "cd /workspace && echo 'hello!' > GREETING.txt && echo notes > NOTES.md && echo STEP2-OK", "description": "Address the review"}}}]},
    {"contains": "STEP1-OK", "respond": [{"text": "Added GREETING.txt."}]},
    {"contains": "ISSUE-7-MARKER", "respond": [{"tool_use": {"name": "Bash", "input": {"command": "cd /workspace && echo hello > GREETING.txt && echo STEP1-OK", "description": "Write the greeting"}}}]}
]}"##;

#[test]
fn a_labelled_issue_becomes_a_pull_request_and_its_feedback_goes_back_to_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let gh = GitHub::start(tmp.path());
    let (model, d) = daemon_for(&gh, SCENARIO, &[]);

    // The source: open issues of acme/widget labelled `kraal` (issue 8 has no label).
    let id = d.ok(&[
        "task",
        "source",
        "add",
        "issues",
        "--repo",
        &format!("github.test/{REPO}"),
        "--label",
        "kraal",
    ]);
    let source = id.trim().to_owned();
    assert!(source.starts_with("src-"), "{id}");
    let ls = d.ok(&["task", "source", "ls"]);
    assert!(ls.contains("labelled \"kraal\""), "{ls}");

    // Polled: one task, for issue 7 only, even after several polls.
    let mut t = Value::Null;
    wait_until(Duration::from_secs(60), "the issue's task", || {
        let ts = tasks(&d);
        if let Some(x) = ts.first() {
            t = x.clone();
        }
        !ts.is_empty()
    });
    let tid = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["forge"]["issue"], 7, "{t:#}");
    assert_eq!(t["forge"]["base"], "main");
    assert!(
        t["prompt"].as_str().unwrap().contains("ISSUE-7-MARKER"),
        "{t:#}"
    );

    // The branch is pushed and the pull request opened, closing the issue.
    let branch = format!("kraal/{tid}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let t = task(&d, &tid);
        if t["pull"]["number"] == 42 {
            break;
        }
        assert!(
            !matches!(t["state"].as_str(), Some("failed" | "cancelled")),
            "{t:#}\n{}",
            d.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "no pull request: {t:#}\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let first = tip(&gh.bare, &branch).expect("the branch was pushed");
    {
        let h = gh.hub.lock().unwrap();
        assert_eq!(h.pulls.len(), 1, "{:#?}", h.pulls);
        let p = &h.pulls[0];
        assert_eq!(p["head"], branch.as_str());
        assert_eq!(p["base"], "main");
        assert!(p["body"].as_str().unwrap().contains("Closes #7"), "{p:#}");
    }
    let shown = git_in(&gh.bare, &["show", &format!("{first}:GREETING.txt")]);
    assert_eq!(shown.as_deref(), Some("hello\n"));

    // The failed check and the review comment become the agent's next message.
    let deadline = Instant::now() + Duration::from_secs(300);
    let second = loop {
        if let Some(tip) = tip(&gh.bare, &branch).filter(|t| *t != first) {
            break tip;
        }
        assert!(
            Instant::now() < deadline,
            "no second push: {:#}\n{}",
            task(&d, &tid),
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The model saw both in one request.
    let bodies: Vec<String> = model
        .side_request_bodies()
        .iter()
        .map(|b| b.to_string())
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("LINT-FAILED-7")
            && b.contains("REVIEW-ASK-7")
            && b.contains("GREETING.txt:1")),
        "no model request carried the check and the comment"
    );
    let shown = git_in(
        &gh.bare,
        &[
            "show",
            &format!("{second}:NOTES.md"),
            &format!("{second}:GREETING.txt"),
        ],
    );
    assert_eq!(shown.as_deref(), Some("notes\nhello!\n"));
    // Green now: the task waits for review with its pull request green, after one round.
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = loop {
        let t = task(&d, &tid);
        if t["pull"]["status"] == "green" && t["state"] == "needs_review" {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "never green: {t:#}\n{}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(t["pull"]["rounds"], 1, "{t:#}");
    assert_eq!(t["pull"]["pushes"], 2, "{t:#}");
    assert_eq!(
        gh.hub.lock().unwrap().pulls.len(),
        1,
        "one pull request, pushed twice"
    );
    assert_eq!(tasks(&d).len(), 1, "issue 7 made one task; issue 8 none");
    let show = d.ok(&["task", "show", &tid]);
    assert!(show.contains("#42") && show.contains("green"), "{show}");

    // Every API call and git request carried the token, added on the host.
    let seen = gh.seen();
    assert!(
        seen.iter()
            .any(|s| s.starts_with("GIT POST") && s.contains("git-receive-pack")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|s| s.contains("/check-runs")), "{seen:#?}");
    let untokened: Vec<&String> = seen
        .iter()
        .filter(|s| s.ends_with("no-token") && !s.starts_with("GIT"))
        .collect();
    assert!(
        untokened.is_empty(),
        "API calls without the token: {untokened:#?}"
    );
    assert!(branches(&gh.bare).contains(&branch));

    // The token is nowhere in the sandbox: not in its files, environments, or memory.
    // (The workspace stopped for review; started again to look inside.)
    let ws = t["workspace"].as_str().unwrap().to_owned();
    d.ok(&["up", &ws]);
    let o = d.exec(
        &ws,
        "echo planted-in-file-9 > /tmp/planted; for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done; \
         tar -cf - /workspace /root /tmp /etc /home /run 2>/dev/null",
    );
    assert!(
        o.stdout.contains("planted-in-file-9"),
        "the scan sees files"
    );
    assert!(
        !o.stdout.contains(TOKEN),
        "the token is visible inside the sandbox"
    );
    let o = d.exec(
        &ws,
        "KRAAL_PLANTED=planted-in-memory-9931 sleep 60 >/dev/null 2>&1 & echo ok",
    );
    assert_eq!(o.stdout.trim(), "ok");
    let wid = d.workspace(&ws)["id"].as_str().unwrap().to_owned();
    let (hits, bytes) = sandbox_memory_hits(&wid, &["planted-in-memory-9931", TOKEN]);
    assert!(
        hits[0] > 0,
        "the memory scan sees a planted value: {hits:?} in {bytes} bytes"
    );
    assert_eq!(
        hits[1], 0,
        "the token is in the sandbox's memory ({bytes} bytes read)"
    );
}

/// The doors and the bad input: a webhook with a wrong signature is refused and makes
/// nothing, a signed one makes its task at once; a trigger fires only with its token;
/// a schedule fires; an unknown repository, a malformed cron, a pull request given as an
/// issue and a missing token are refused with clear errors.
#[test]
fn webhooks_triggers_schedules_and_bad_input_around_them() {
    let tmp = tempfile::tempdir().unwrap();
    let gh = GitHub::start(tmp.path());
    let port = crate::harness::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_model, d) = daemon_for(
        &gh,
        r#"{"turns": [], "side": [{"contains": "", "respond": [{"text": "ok"}]}]}"#,
        &[("KRAAL_LISTEN_TCP", &listen), ("KRAAL_MAX_RUNNING", "1")],
    );

    // Bad input first.
    let bad = d.run(&[
        "task",
        "add",
        "--repo",
        "github.test/acme/nothing",
        "-m",
        "x",
    ]);
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr
            .contains("no repository github.test/acme/nothing"),
        "{bad:?}"
    );
    let bad = d.run(&["task", "add", "--repo", "acme", "-m", "x"]);
    assert!(bad.stderr.contains("is not OWNER/REPO"), "{bad:?}");
    let bad = d.run(&["task", "add", "--repo", "elsewhere.test/a/b", "-m", "x"]);
    assert!(
        bad.stderr
            .contains("knows no git host API for elsewhere.test"),
        "{bad:?}"
    );
    let bad = d.run(&["task", "add", "--from-issue", "github.test/acme/widget#99"]);
    assert!(
        bad.stderr.contains("no issue github.test/acme/widget#99"),
        "{bad:?}"
    );
    let repo = git_repo(tmp.path(), "local");
    let r = repo.to_str().unwrap();
    for (cron, want) in [
        ("61 * * * *", "cron expression \"61 * * * *\" is not valid"),
        ("0 0 3 * * *", "has a seconds or year field"),
        ("every day", "is not valid"),
    ] {
        let bad = d.run(&["task", "add", r, "-m", "x", "--cron", cron]);
        assert_ne!(bad.code, Some(0));
        assert!(bad.stderr.contains(want), "{cron}: {bad:?}");
    }
    let bad = d.run(&["task", "add", r, "-m", "x", "--every", "2s"]);
    assert!(bad.stderr.contains("at most every 5 s"), "{bad:?}");
    let bad = d.run(&["task", "add", r, "-m", "x", "--every", "soon"]);
    assert!(bad.stderr.contains("soon"), "{bad:?}");
    let bad = d.run(&[
        "task",
        "source",
        "add",
        "issues",
        "--repo",
        "github.test/acme/widget",
    ]);
    assert!(bad.stderr.contains("needs a `label`"), "{bad:?}");
    assert!(tasks(&d).is_empty(), "bad input queued a task");

    // The webhook: signed with the stored secret, delivered to the TCP listener.
    d.run_with_stdin(&["secret", "set", "hook-key"], "s3cret-hook-key");
    let src = d.ok(&[
        "task",
        "source",
        "add",
        "issues",
        "--repo",
        "github.test/acme/widget",
        "--label",
        "urgent",
        "--webhook-secret",
        "hook-key",
    ]);
    let src = src.trim().to_owned();
    let delivery = json!({
        "action": "labeled",
        "issue": issue(11, "Fix the urgent thing", "WEBHOOK-ISSUE-11", &["urgent"]),
        "repository": {"full_name": REPO},
    })
    .to_string();
    let base = format!("http://{listen}");
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        let mut hs = vec![("Content-Type", "application/json")];
        hs.extend_from_slice(headers);
        let (status, _, body) = crate::web::http(&base, "POST", path, &hs, body);
        (status, body)
    };
    let hook = format!("/hooks/github/{src}");
    let wrong = kraal_forge::sign_github(b"not-the-key", delivery.as_bytes());
    let (code, body) = post(
        &hook,
        &[
            ("x-github-event", "issues"),
            ("x-hub-signature-256", &wrong),
        ],
        &delivery,
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("signature"), "{body}");
    let (code, body) = post(&hook, &[("x-github-event", "issues")], &delivery);
    assert_eq!(code, 401, "unsigned: {body}");
    assert!(tasks(&d).is_empty(), "a refused delivery made a task");
    let audit = d.ok(&["audit"]);
    assert!(audit.contains("webhook.refused"), "{audit}");
    let good = kraal_forge::sign_github(b"s3cret-hook-key", delivery.as_bytes());
    let (code, body) = post(
        &hook,
        &[("x-github-event", "issues"), ("x-hub-signature-256", &good)],
        &delivery,
    );
    assert_eq!(code, 201, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(made["tasks"][0]["forge"]["issue"], 11, "{made:#}");
    assert_eq!(made["tasks"][0]["forge"]["pull_request"], true, "{made:#}");
    // The same delivery again makes no second task.
    let (code, body) = post(
        &hook,
        &[("x-github-event", "issues"), ("x-hub-signature-256", &good)],
        &delivery,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(tasks(&d).len(), 1);
    d.ok(&["task", "cancel", made["tasks"][0]["id"].as_str().unwrap()]);

    // A trigger: its token is printed once and is the only way in.
    let out = d.ok(&[
        "task",
        "source",
        "add",
        "trigger",
        r,
        "-m",
        "TRIGGERED-TASK",
    ]);
    let mut lines = out.lines();
    let trig = lines.next().unwrap().trim().to_owned();
    let token = lines.next().unwrap().trim().to_owned();
    assert!(token.len() >= 32, "{out}");
    let path = format!("/v1/triggers/{trig}");
    let (code, _) = post(&path, &[("authorization", "Bearer wrong")], "");
    assert_eq!(code, 401);
    let (code, _) = post(
        &format!("/v1/triggers/{src}"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    );
    assert_eq!(code, 401, "another source's id with this token");
    let bearer = format!("Bearer {token}");
    let (code, body) = post(
        &path,
        &[("authorization", &bearer)],
        r#"{"text": "deploy 1.2.3"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let fired: Value = serde_json::from_str(&body).unwrap();
    let p = fired["tasks"][0]["prompt"].as_str().unwrap();
    assert!(
        p.contains("TRIGGERED-TASK") && p.contains("deploy 1.2.3"),
        "{p}"
    );
    d.ok(&["task", "cancel", fired["tasks"][0]["id"].as_str().unwrap()]);
    let ls = d.ok(&["task", "source", "ls", "--json"]);
    assert!(!ls.contains(&token), "the trigger's token is listed: {ls}");

    // A schedule fires on its own, then stops when removed.
    let sched = d.ok(&["task", "add", r, "-m", "SCHEDULED-TASK", "--every", "5s"]);
    let sched = sched.trim().to_owned();
    let scheduled = || {
        tasks(&d)
            .into_iter()
            .filter(|t| {
                t["prompt"]
                    .as_str()
                    .unwrap_or("")
                    .contains("SCHEDULED-TASK")
            })
            .count()
    };
    wait_until(Duration::from_secs(30), "the schedule to fire", || {
        scheduled() >= 1
    });
    d.ok(&["task", "source", "rm", &sched]);
    let n = scheduled();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(scheduled(), n, "a removed schedule fired");
    let sources: Value = serde_json::from_str(&d.ok(&["task", "source", "ls", "--json"])).unwrap();
    let kinds: HashMap<String, u64> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_owned(),
                s["tasks_made"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds.get("trigger"), Some(&1), "{sources:#}");
    assert_eq!(kinds.get("issues"), Some(&1), "{sources:#}");
    assert!(!kinds.contains_key("schedule"), "{sources:#}");
    let bad = d.run(&["task", "source", "rm", &sched]);
    assert!(bad.stderr.contains(&sched), "{bad:?}");
}
