//! Budgets where every model request passes: with the real Claude Code CLI in a gVisor
//! workspace and the scripted model reporting usage past a $0.01 cap, the next request
//! is held (the agent waits, nothing fails), a push notification says so, and raising the
//! cap lets that same request through. Bad budgets are refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::push_peer::PushPeer;

fn report(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["budget", "show", "--json"])).unwrap()
}

#[test]
fn a_reached_budget_holds_the_next_model_request_until_it_is_raised() {
    let (model, d) = crate::supervision::with_model(
        r#"{"input_tokens": 5000, "turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo one > /workspace/one.txt", "description": "Write one"}}}]},
            {"respond": [{"text": "Finished after the raise."}]}
        ]}"#,
        &[],
    );
    let peer = PushPeer::start();
    crate::supervision::subscribe(&d, &peer, "phone", json!({"kinds": ["budget"]}));
    let repo = git_repo(d.dir.path(), "budget");
    d.ok(&["up", repo.to_str().unwrap()]);

    // Bad budgets: clear errors, nothing stored.
    for (args, needle) in [
        (
            vec!["budget", "set", "--workspace", "budget", "--usd", "-1"],
            "cannot be below zero",
        ),
        (
            vec!["budget", "set", "--workspace", "budget", "--usd", "NaN"],
            "not a number",
        ),
        (vec!["budget", "set", "--day"], "give a limit"),
        (
            vec!["budget", "set", "--workspace", "nope", "--usd", "1"],
            "no workspace named nope",
        ),
        (
            vec!["budget", "set", "--task", "tk-0000000000ff", "--usd", "1"],
            "no task tk-0000000000ff",
        ),
        (vec!["budget", "set", "--usd", "1"], "--day"),
        (vec!["budget", "rm", "--day"], "no budget for day"),
    ] {
        let o = d.run(&args);
        assert_ne!(o.code, Some(0), "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    }
    let (status, body) = d.http("PUT", "/v1/budget", br#"{"scope": "week", "usd": 1}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("unknown budget scope") && body.contains("week"),
        "{body}"
    );
    assert!(report(&d)["budgets"].as_array().unwrap().is_empty());

    d.ok(&["budget", "set", "--workspace", "budget", "--usd", "0.01"]);
    let sid = d
        .ok(&["new-chat", "budget", "--detach", "-m", "write one.txt"])
        .trim()
        .to_owned();
    // The first request passes (nothing spent yet) and reports 5000 input tokens; the
    // next one, carrying the tool's result, is held.
    wait_until(Duration::from_secs(120), "the request to be held", || {
        d.ok(&["logs", "budget"]).contains("model request held")
    });
    let push = peer.wait_for("phone", "the budget notification", |p| {
        p["kind"] == "budget"
    });
    let body = push.payload["body"].as_str().unwrap();
    assert!(body.contains("budget of $0.0100 is spent"), "{body}");
    assert!(
        body.contains("kraal budget set --workspace budget"),
        "{body}"
    );
    assert_eq!(push.payload["workspace"], "budget");
    // Held, not failed: the tool ran, the model saw one request, the agent still works.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(model.requests().len(), 1);
    assert_eq!(
        d.exec("budget", "cat /workspace/one.txt").stdout.trim(),
        "one"
    );
    let ev = d.session_events(&sid);
    assert!(
        !ev.iter()
            .any(|e| e["type"] == "state" && e["state"] == "failed"),
        "{ev:?}"
    );
    let r = report(&d);
    let cap = &r["budgets"][0];
    assert_eq!(cap["reached"], true, "{r}");
    assert!(cap["spent"]["usd"].as_f64().unwrap() >= 0.015, "{r}");
    assert_eq!(cap["spent"]["input_tokens"], 5000, "{r}");
    assert_eq!(r["today"]["requests"], 1, "{r}");

    // The web UI's spend page (where the notification leads) shows the cap as reached.
    let base = crate::web::web_url(&d);
    let token = d
        .ok(&["token", "create", "--name", "phone"])
        .trim()
        .to_owned();
    let (cookie, _) = crate::web::login(&base, &token);
    let (status, _, page) = crate::web::http(&base, "GET", "/budget", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"data-scope="budget" data-reached="true""#)
            && page.contains("reached — its agents wait"),
        "{page}"
    );
    assert!(push.payload["url"].as_str().unwrap().ends_with("/budget"));

    // Raising the cap lets the same request through.
    let t = Instant::now();
    d.ok(&["budget", "set", "--workspace", "budget", "--usd", "1"]);
    let ev = d.wait_events(&sid, "the turn to finish after the raise", |ev| {
        crate::sessions::turn_ended_in(ev, "waiting_for_input")
    });
    println!("released {:?} after the raise", t.elapsed());
    assert!(
        ev.iter()
            .any(|e| e["type"] == "assistant_text" && e["text"] == "Finished after the raise."),
        "{ev:?}"
    );
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2, "the held request went once, not retried");
    assert!(reqs[1].to_string().contains("tool_result"), "{:?}", reqs[1]);
    let r = report(&d);
    assert_eq!(r["today"]["requests"], 2, "{r}");
    assert_eq!(r["budgets"][0]["reached"], false, "{r}");
    // Removing the cap: nothing to hold any more.
    d.ok(&["budget", "rm", "--workspace", "budget"]);
    assert!(report(&d)["budgets"].as_array().unwrap().is_empty());
}

/// Three sessions share one API key whose window allows two requests every 3 s (the
/// scripted model enforces it with 429s and announces it in Anthropic's headers): the
/// gateway reads the headers and holds requests until the window resets, so the model
/// never answers 429, every turn finishes, and the spend report shows the window.
#[test]
fn sessions_sharing_a_key_are_paced_by_its_rate_limit_headers() {
    let (model, d) = crate::supervision::with_model(
        r#"{"rate_limit": {"requests": 2, "window_ms": 3000}, "turns": [], "side": [
            {"contains": "PACE-DONE", "respond": [{"text": "Paced and done."}]},
            {"contains": "PACE-TASK", "respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo PACE-DONE", "description": "Say done"}}}]}
        ]}"#,
        &[],
    );
    let mut sids = Vec::new();
    for i in 0..3 {
        let repo = git_repo(d.dir.path(), &format!("pace{i}"));
        d.ok(&["up", repo.to_str().unwrap()]);
    }
    let t0 = Instant::now();
    for i in 0..3 {
        let sid = d
            .ok(&[
                "new-chat",
                &format!("pace{i}"),
                "--detach",
                "-m",
                "PACE-TASK: say done",
            ])
            .trim()
            .to_owned();
        sids.push(sid);
    }
    for sid in &sids {
        d.wait_events(sid, "the paced turn to end", |ev| {
            crate::sessions::turn_ended_in(ev, "waiting_for_input")
                && ev.iter().any(|e| e["type"] == "tool_result")
        });
    }
    let took = t0.elapsed();
    assert_eq!(model.rate_limited(), 0, "a request ran into the limit");
    let r = report(&d);
    let limits = r["limits"].as_array().unwrap();
    let w = limits
        .iter()
        .find(|l| l["provider"] == "anthropic")
        .unwrap_or_else(|| panic!("no anthropic window: {r:#}"));
    assert_eq!(w["requests_limit"], 2, "{w:#}");
    assert_eq!(w["limited"], 0, "{w:#}");
    let (sent, paced) = (
        w["requests"].as_u64().unwrap(),
        w["paced"].as_u64().unwrap(),
    );
    assert!(sent >= 6, "two requests per turn at least: {w:#}");
    assert!(paced >= 2, "nothing was held: {w:#}");
    assert!(
        w["credential"].as_str().unwrap().starts_with("api key …"),
        "{w:#}"
    );
    // Six requests at two per window need at least three windows.
    assert!(
        took >= Duration::from_secs(6),
        "{took:?} is faster than the limit allows"
    );
    let shown = d.ok(&["budget", "show"]);
    assert!(
        shown.contains("limit anthropic api key") && shown.contains("paced"),
        "{shown}"
    );
    assert!(
        d.log_tail().contains("paced by the rate limit"),
        "the log says why it waited"
    );
}
