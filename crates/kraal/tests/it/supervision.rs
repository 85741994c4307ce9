//! Supervising from a locked phone, end to end with the real components: the real Claude
//! Code CLI in a gVisor workspace against the scripted model, and a Web Push service on
//! loopback written from the RFCs (`push_peer`) that checks the VAPID signature and
//! decrypts every message with the subscription's private key. Approvals are answered
//! with the action URLs the notifications carry (single use, short-lived, one request
//! only); gone and dead push services never slow the event stream down; review comments,
//! previews and attachments refuse bad input with clear 4xx and store nothing half-way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kraal_testkit::{Scenario, ScriptedModel};
use serde_json::{Value, json};

use crate::harness::*;
use crate::push_peer::PushPeer;
use crate::web::{http, web_url};

pub(crate) fn with_model(scenario: &str, env: &[(&str, &str)]) -> (ScriptedModel, Daemon) {
    let model = ScriptedModel::start(Scenario::from_json(scenario).unwrap()).unwrap();
    let url = model.base_url();
    let mut all = vec![
        ("KRAAL_ANTHROPIC_URL", url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-host-only"),
    ];
    all.extend_from_slice(env);
    (model, Daemon::start_with_env(&all))
}

/// Registers a subscription of the peer through the API; returns its id.
pub(crate) fn subscribe(d: &Daemon, peer: &PushPeer, name: &str, rules: Value) -> String {
    let (endpoint, keys) = peer.subscription(name);
    let mut body = json!({
        "endpoint": endpoint,
        "keys": {"p256dh": keys.p256dh(), "auth": keys.auth_b64()},
        "label": name,
        "origin": web_url(d),
    });
    for (k, v) in rules.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, out) = d.http(
        "POST",
        "/v1/push/subscriptions",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{out}");
    serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn subscriptions(d: &Daemon) -> Vec<Value> {
    let (status, out) = d.http("GET", "/v1/push/subscriptions", b"");
    assert_eq!(status, 200, "{out}");
    serde_json::from_str::<Value>(&out).unwrap()["subscriptions"]
        .as_array()
        .unwrap()
        .clone()
}

/// POSTs an action URL from a notification (no cookie, no token).
fn act(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    let (status, _, body) = http(
        &format!("http://{hostport}"),
        "POST",
        &format!("/{path}"),
        &[],
        "",
    );
    (status, body)
}

fn action_url(push: &Value, action: &str) -> String {
    push["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == action)
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn approvals(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["type"] == "approval_request")
        .map(|e| e["request_id"].as_str().unwrap().to_owned())
        .collect()
}

fn session_state(d: &Daemon, sid: &str) -> String {
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "--json"])).unwrap();
    all.iter().find(|s| s["id"] == sid).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn approvals_are_answered_from_a_notification_once_and_only_for_their_request() {
    let (_model, d) = with_model(
        r#"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo approved > /workspace/approved.txt", "description": "Write approved.txt"}}}]},
            {"respond": [{"text": "First task done."}]},
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo nope > /workspace/denied.txt", "description": "Write denied.txt"}}}]},
            {"respond": [{"text": "Should not get here."}]}
        ]}"#,
        &[("KRAAL_PUSH_ACTION_TTL", "6s")],
    );
    let peer = PushPeer::start();
    let repo = git_repo(d.dir.path(), "phone");
    d.ok(&["up", repo.to_str().unwrap()]);
    subscribe(&d, &peer, "phone", json!({}));
    let base = web_url(&d);

    let sid = d
        .ok(&[
            "new-chat",
            "phone",
            "--ask",
            "--detach",
            "-m",
            "write the file",
        ])
        .trim()
        .to_owned();
    // The approval reaches the phone: encrypted for it, signed for this push service,
    // naming the tool and its command, with Approve / Deny that need no login.
    let first = peer.wait_for("phone", "the first approval", |p| p["kind"] == "approval");
    let p = &first.payload;
    assert_eq!(p["title"], "phone: Bash needs approval", "{p}");
    assert!(
        p["body"]
            .as_str()
            .unwrap()
            .contains("echo approved > /workspace/approved.txt"),
        "{p}"
    );
    assert_eq!(p["session"], sid.as_str());
    assert_eq!(first.headers["urgency"], "high");
    assert_eq!(first.vapid_claims["aud"], format!("http://{}", peer.addr));
    let approve = action_url(p, "approve");
    let deny = action_url(p, "deny");
    assert!(
        approve.starts_with(&format!("{base}/act/{sid}/")),
        "{approve}"
    );
    let request = p["request"].as_str().unwrap().to_owned();
    let ev = d.wait_events(&sid, "the approval request", |ev| !approvals(ev).is_empty());
    assert_eq!(approvals(&ev), std::slice::from_ref(&request));

    // Approve from the lock screen: the real CLI runs the command.
    let (status, body) = act(&approve);
    assert_eq!(status, 200, "{body}");
    let ev = d.wait_events(&sid, "the end of the first turn", |ev| {
        crate::sessions::turn_ended_in(ev, "waiting_for_input")
    });
    assert!(ev.iter().any(|e| e["type"] == "approval_decision"
        && e["allow"] == true
        && e["request_id"] == request.as_str()));
    assert_eq!(d.exec("phone", "cat approved.txt").stdout, "approved\n");
    // Replaying it, or its Deny, is refused and changes nothing.
    let decisions = |ev: &[Value]| {
        ev.iter()
            .filter(|e| e["type"] == "approval_decision")
            .count()
    };
    for url in [&approve, &deny] {
        let (status, body) = act(url);
        assert_eq!(status, 403, "{url}: {body}");
        assert!(body.contains("already answered"), "{body}");
    }
    assert_eq!(decisions(&d.session_events(&sid)), 1);
    // The turn's end is pushed too, with what the agent said; the answered question is
    // withdrawn from other devices.
    let done = peer.wait_for("phone", "the turn's end", |p| p["kind"] == "turn_done");
    assert!(
        done.payload["body"]
            .as_str()
            .unwrap()
            .contains("First task done."),
        "{}",
        done.payload
    );
    peer.wait_for("phone", "the withdrawal", |p| {
        p["kind"] == "answered" && p["request"] == request.as_str()
    });

    // A second request: its capability does not work for the first one, nor the first's
    // for it, nor its own once expired.
    d.ok(&["send", &sid, "now write the second file"]);
    let second = peer.wait_for("phone", "the second approval", |p| {
        p["kind"] == "approval" && p["request"] != request.as_str()
    });
    let got_second = Instant::now();
    let request2 = second.payload["request"].as_str().unwrap().to_owned();
    let approve2 = action_url(&second.payload, "approve");
    let cap2 = approve2.split("?c=").nth(1).unwrap().to_owned();
    let cap1 = approve.split("?c=").nth(1).unwrap().to_owned();
    let cross = [
        format!("{base}/act/{sid}/{request}/approve?c={cap2}"),
        format!("{base}/act/{sid}/{request2}/approve?c={cap1}"),
        format!("{base}/act/{sid}/{request2}/approve?c={}", "0".repeat(64)),
        format!("{base}/act/{sid}/{request2}/approve?c=short"),
    ];
    for url in &cross {
        let (status, body) = act(url);
        assert_eq!(status, 403, "{url}: {body}");
    }
    let (status, _) = act(&format!("{base}/act/{sid}/{request2}/maybe?c={cap2}"));
    assert_eq!(status, 400, "an unknown decision is a bad request");
    std::thread::sleep(Duration::from_secs(7).saturating_sub(got_second.elapsed()));
    let (status, body) = act(&approve2);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(
        session_state(&d, &sid),
        "needs_approval",
        "nothing was answered"
    );
    assert_eq!(decisions(&d.session_events(&sid)), 1);
    let o = d.exec("phone", "test -e denied.txt && echo exists || echo absent");
    assert_eq!(o.stdout, "absent\n");

    // A session that fails is pushed; so is a connection the egress proxy refused.
    let (status, out) = d.http(
        "POST",
        "/v1/workspaces/phone/sessions",
        br#"{"agent": "claude", "binary": "/bin/false", "message": "fail"}"#,
    );
    assert_eq!(status, 201, "{out}");
    let failed = peer.wait_for("phone", "the failure", |p| p["kind"] == "failed");
    assert_eq!(failed.payload["title"], "phone: session failed");
    // git reaches out through the egress proxy (HTTPS_PROXY), which refuses the host.
    let o = d.exec(
        "phone",
        "git ls-remote https://blocked-host.example/r.git 2>&1 || true",
    );
    assert!(
        o.stdout.contains("403") || o.stdout.contains("CONNECT"),
        "{o:?}"
    );
    let egress = peer.wait_for("phone", "the refused connection", |p| p["kind"] == "egress");
    assert!(
        egress.payload["body"]
            .as_str()
            .unwrap()
            .starts_with("blocked-host.example:443"),
        "{}",
        egress.payload
    );
    let audit = d.ok(&["audit", "--json", "--limit", "200"]);
    assert!(audit.contains("push.approve"), "{audit}");
}

/// Reads a session's SSE stream in the background; returns (seq, at_ms, received_ms).
fn sse_reader(d: &Daemon, sid: &str, after: u64) -> std::sync::mpsc::Receiver<(u64, u64, u64)> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "GET /v1/sessions/{sid}/stream?after={after} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let Some(data) = line
                .strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
            else {
                continue;
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            if let Ok(v) = serde_json::from_str::<Value>(data)
                && tx
                    .send((
                        v["seq"].as_u64().unwrap_or(0),
                        v["at_ms"].as_u64().unwrap_or(0),
                        now,
                    ))
                    .is_err()
            {
                return;
            }
        }
    });
    rx
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn gone_and_dead_push_services_cost_the_event_stream_nothing() {
    let turns: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"respond": [{{"text": "answer {i}"}}]}}"#))
        .collect();
    let (_model, d) = with_model(&format!(r#"{{"turns": [{}]}}"#, turns.join(",")), &[]);
    let peer = PushPeer::start();
    let repo = git_repo(d.dir.path(), "quiet");
    d.ok(&["up", repo.to_str().unwrap()]);
    let other = git_repo(d.dir.path(), "other");
    d.ok(&["up", other.to_str().unwrap(), "--detach"]);
    subscribe(&d, &peer, "ok", json!({}));
    let gone = subscribe(&d, &peer, "gone", json!({}));
    subscribe(&d, &peer, "failures-only", json!({"kinds": ["failed"]}));
    subscribe(&d, &peer, "elsewhere", json!({"workspaces": ["other"]}));

    let sid = d
        .ok(&["new-chat", "quiet", "--detach", "-m", "turn 0"])
        .trim()
        .to_owned();
    peer.wait_for("ok", "the first turn's end", |p| p["kind"] == "turn_done");
    // The push service said 410: the subscription is gone from the daemon.
    wait_until(
        Duration::from_secs(30),
        "the gone subscription to be removed",
        || !subscriptions(&d).iter().any(|s| s["id"] == gone.as_str()),
    );
    assert_eq!(peer.hits("gone"), 1, "a 410 is not retried");

    // Event → SSE latency over ten turns, with healthy push services only, then with a
    // push service that never answers subscribed as well.
    let measure = |from_turn: usize| -> Vec<u64> {
        let last = serde_json::from_str::<Vec<Value>>(&d.ok(&["sessions", "quiet", "--json"]))
            .unwrap()[0]["last_seq"]
            .as_u64()
            .unwrap();
        let rx = sse_reader(&d, &sid, last);
        for i in from_turn..from_turn + 10 {
            d.ok(&["send", "--wait", &sid, &format!("turn {i}")]);
        }
        std::thread::sleep(Duration::from_millis(300));
        rx.try_iter()
            .filter(|(seq, _, _)| *seq > last)
            .map(|(_, at, got)| got.saturating_sub(at))
            .collect()
    };
    let mut healthy = measure(1);
    subscribe(&d, &peer, "dead", json!({}));
    let mut dead = measure(11);
    assert!(
        healthy.len() > 20 && dead.len() > 20,
        "{} {}",
        healthy.len(),
        dead.len()
    );
    let (h50, h95) = (
        percentile(&mut healthy, 0.5),
        percentile(&mut healthy, 0.95),
    );
    let (d50, d95) = (percentile(&mut dead, 0.5), percentile(&mut dead, 0.95));
    eprintln!(
        "event → SSE latency: healthy push p50 {h50} ms p95 {h95} ms ({} events); dead push service p50 {d50} ms p95 {d95} ms ({} events)",
        healthy.len(),
        dead.len()
    );
    assert!(
        d50 <= 2 * h50 + 25,
        "a dead push service slowed events: p50 {d50} ms vs {h50} ms"
    );
    assert!(
        peer.hits("dead") >= 5,
        "the dead service was tried: {}",
        peer.hits("dead")
    );
    // The healthy device kept getting every turn's end meanwhile.
    let ends = peer
        .received("ok")
        .iter()
        .filter(|r| r.payload["kind"] == "turn_done")
        .count();
    assert!(ends >= 21, "the healthy device got {ends} of 21 turn ends");
    // Quiet rules: a device that wants only failures, or only another workspace, got none.
    assert!(peer.received("failures-only").is_empty());
    assert!(peer.received("elsewhere").is_empty());
}

#[test]
fn bad_review_preview_and_attachment_input_is_refused_and_nothing_is_half_stored() {
    let (_model, d) = with_model(r#"{"turns": [{"respond": [{"text": "hello"}]}]}"#, &[]);
    let repo = git_repo(d.dir.path(), "bad");
    d.ok(&["up", repo.to_str().unwrap()]);
    d.exec(
        "bad",
        "printf 'fn main() {\\n    println!(\"x\");\\n}\\n' > src/main.rs",
    );

    // Comments: a line that does not exist, a file that does not exist, an escape, an
    // empty comment, a removed line that is not in HEAD. None is stored.
    for (body, why) in [
        (
            json!({"path": "src/main.rs", "line": 9, "body": "x"}),
            "has no line 9",
        ),
        (
            json!({"path": "src/main.rs", "line": 0, "body": "x"}),
            "has no line 0",
        ),
        (
            json!({"path": "nope.rs", "line": 1, "body": "x"}),
            "cannot comment on nope.rs",
        ),
        (
            json!({"path": "../etc/passwd", "line": 1, "body": "x"}),
            "not a path inside",
        ),
        (
            json!({"path": "src/main.rs", "line": 1, "body": "   "}),
            "empty",
        ),
        (
            json!({"path": "src/main.rs", "line": 5, "side": "old", "body": "x"}),
            "no line 5",
        ),
        (
            json!({"path": "src/main.rs", "line": 1, "side": "left", "body": "x"}),
            "neither",
        ),
    ] {
        let (status, out) = d.http(
            "POST",
            "/v1/workspaces/bad/comments",
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 400, "{body}: {out}");
        assert!(out.contains(why), "{body}: {out}");
    }
    let o = d.run(&["review", "bad", "--comment", "src/main.rs:42=nope"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr
            .contains("src/main.rs has no line 42 (it has 3 lines)"),
        "{o:?}"
    );
    let (_, list) = d.http("GET", "/v1/workspaces/bad/comments", b"");
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["comments"],
        json!([])
    );
    // A good one, on the changed line, quotes it; sending nothing is refused.
    d.ok(&["review", "bad", "--comment", "src/main.rs:2=say more"]);
    let listing = d.ok(&["review", "bad"]);
    assert!(
        listing.contains("src/main.rs:2:+    println!(\"x\");\n#> ["),
        "{listing}"
    );
    let (status, out) = d.http(
        "POST",
        "/v1/workspaces/bad/review/send",
        br#"{"session": "se-000000000000"}"#,
    );
    assert_eq!(status, 404, "{out}");

    // Previews: a port nothing listens on, and a preview without a login.
    let base = web_url(&d);
    let token = d.ok(&["token", "create", "--name", "t"]).trim().to_owned();
    let (cookie, _) = crate::web::login(&base, &token);
    // A logged-in visit gets a link of its own (the page is sandboxed, the token in the
    // path is its login); following it names what is wrong.
    let (status, hs, _) = http(&base, "GET", "/p/bad/9/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 303);
    let link = crate::web::header(&hs, "location").unwrap();
    assert!(link.starts_with("/p/bad/9/~"), "{link}");
    let (status, _, body) = http(&base, "GET", link, &[], "");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("nothing listens on port 9 in workspace bad"),
        "{body}"
    );
    let (status, _, _) = http(&base, "GET", "/p/bad/9/", &[], "");
    assert_eq!(status, 401, "no login, no preview");
    let (status, hs, _) = http(&base, "GET", "/p/bad/9/", &[("Accept", "text/html")], "");
    assert_eq!(status, 303);
    assert!(
        crate::web::header(&hs, "location")
            .unwrap()
            .starts_with("/login?next=/p/bad/9/")
    );
    let (status, _, _) = http(&base, "GET", "/p/bad/notaport/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 400);
    let (status, out) = d.http("GET", "/v1/workspaces/bad/ports", b"");
    assert_eq!(status, 200, "{out}");
    let o = d.run(&["forward", "bad", "9", "--local", "127.0.0.1:0"]);
    assert!(
        o.stderr
            .contains("nothing listens on port 9 in workspace bad"),
        "{o:?}"
    );

    // Attachments: too large (one file, or all together), too many, empty; nothing is
    // left in the workspace from a refused upload.
    let sid = d
        .ok(&["new-chat", "bad", "--detach", "-m", "hi"])
        .trim()
        .to_owned();
    let big = vec![b'x'; 21 * 1024 * 1024];
    let f = d.dir.path().join("big.bin");
    std::fs::write(&f, &big).unwrap();
    let o = d.run(&["send", &sid, "look", "--attach", f.to_str().unwrap()]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("larger than 20 MiB"), "{o:?}");
    let (status, out) = d.http(
        "POST",
        &format!("/v1/sessions/{sid}/attachments?name=empty.txt"),
        b"",
    );
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("is empty"), "{out}");
    // The web composer: several files that are too large together.
    let (cookie, csrf) = crate::web::login(&base, &token);
    let part = vec![b'y'; 19 * 1024 * 1024];
    let mut body = Vec::new();
    for i in 0..3 {
        body.extend_from_slice(format!("--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"p{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(&part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(
        b"--XX\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nthree files\r\n--XX--\r\n",
    );
    let (status, _, out) = raw_post(
        &base,
        &format!("/s/{sid}/send"),
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("HX-Request", "true"),
            ("Content-Type", "multipart/form-data; boundary=XX"),
        ],
        &body,
    );
    assert_eq!(status, 413, "{out}");
    assert!(out.contains("too large") || out.contains("50 MiB"), "{out}");
    let o = d.exec("bad", "ls -A .kraal/attachments 2>/dev/null | wc -l");
    assert_eq!(o.stdout.trim(), "0", "nothing stored: {o:?}");
    let ev = d.session_events(&sid);
    assert!(
        !ev.iter()
            .any(|e| e["text"] == "three files" || e["text"] == "look"),
        "no message was sent"
    );
}

/// A raw HTTP/1.1 POST with a binary body.
fn raw_post(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use std::io::Read;
    let hostport = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (and close) before it read everything.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), rest.to_owned())
}

#[test]
fn the_phone_supervision_loop_in_a_real_browser() {
    // The turns, in the order the model is asked: the approved command, its answer, the
    // review comment's answer, the picture's answer.
    let (model, d) = with_model(
        r#"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo approved > /workspace/approved.txt", "description": "Write approved.txt"}}}]},
            {"respond": [{"text": "Approved and done."}]},
            {"respond": [{"text": "Thanks, fixing the review comment."}]},
            {"respond": [{"text": "I see the picture."}]}
        ]}"#,
        &[("KRAAL_PREVIEW_DOMAIN", "localhost")],
    );
    let peer = PushPeer::start();
    let (endpoint, keys) = peer.subscription("phone");
    let repo = git_repo(d.dir.path(), "web");
    // The default image has Python for the dev servers.
    d.ok(&["up", repo.to_str().unwrap(), "--image", "default"]);
    let main_rs = "fn main() {\n    let answer = 42;\n    println!(\"{answer}\");\n}\n";
    let o = d.run_with_stdin(
        &["exec", "web", "--", "sh", "-c", "cat > src/main.rs"],
        main_rs,
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let echo = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/tests/ws_echo.py"),
    )
    .unwrap();
    let o = d.run_with_stdin(
        &["exec", "web", "--", "sh", "-c", "cat > /tmp/ws_echo.py"],
        &echo,
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    // A static server on every address, and a WebSocket server on the sandbox's loopback
    // only (reached through the guest, not the workspace's address).
    let o = d.exec(
        "web",
        "setsid python3 -m http.server 8000 >/tmp/http.log 2>&1 < /dev/null & setsid python3 /tmp/ws_echo.py 127.0.0.1 8765 >/tmp/ws.log 2>&1 < /dev/null & sleep 1",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_until(
        Duration::from_secs(30),
        "both dev servers to listen",
        || {
            let (_, out) = d.http("GET", "/v1/workspaces/web/ports", b"");
            out.contains("\"port\":8000") && out.contains("\"port\":8765")
        },
    );
    let token = d
        .ok(&["token", "create", "--name", "phone"])
        .trim()
        .to_owned();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("target/web-screenshots/supervision");
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new("node");
    c.arg(root.join("web/tests/supervision.test.mjs"))
        .current_dir(root.join("web"))
        .env("KRAAL_URL", web_url(&d))
        .env("KRAAL_TOKEN", &token)
        .env("KRAAL_WS", "web")
        .env("KRAAL_BIN", KRAAL)
        .env("KRAAL_SOCKET", &d.socket)
        .env("SCREENSHOTS", &shots)
        .env("PUSH_ENDPOINT", &endpoint)
        .env("PUSH_P256DH", keys.p256dh())
        .env("PUSH_AUTH", keys.auth_b64())
        .env(
            "PUSH_MAILBOX",
            format!("http://{}/mailbox/phone", peer.addr),
        )
        .env("PREVIEW_DOMAIN", "localhost");
    let o = run_bounded(&mut c, Duration::from_secs(600));
    assert!(
        o.code == Some(0) && o.stdout.contains("ALL PASSED"),
        "browser test failed ({:?}):\n{}\n{}\n{}",
        o.code,
        o.stdout,
        o.stderr,
        d.log_tail()
    );
    eprintln!("{}", o.stdout);
    // What the real agent sent the model: the review comment quoting the line, then the
    // picture as an image block with its bytes.
    let reqs = model.requests();
    let last_user = |r: &Value| -> Value {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .unwrap()
            .clone()
    };
    let review = reqs
        .iter()
        .map(last_user)
        .find(|m| m.to_string().contains("Review comments"))
        .expect("a model request with the review comments");
    let text = review.to_string();
    assert!(
        text.contains("src/main.rs")
            && text.contains("let answer = 42;")
            && text.contains("Please use a named constant here."),
        "{text}"
    );
    let image = reqs
        .iter()
        .map(last_user)
        .find_map(|m| {
            m["content"]
                .as_array()
                .and_then(|c| c.iter().find(|b| b["type"] == "image").cloned())
        })
        .expect("a model request with an image block");
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(image["source"]["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the picture's bytes");
    assert_eq!(image["source"]["media_type"], "image/png");
    let o = d.exec("web", "ls .kraal/attachments");
    assert!(o.stdout.contains("-dot.png"), "{o:?}");
    for name in [
        "phone-notifications",
        "phone-review-comment-form",
        "phone-review-comment",
        "phone-composer-attachment",
        "phone-session-attachment",
        "phone-workspace-ports",
        "phone-preview-path",
        "phone-preview-origin",
    ] {
        let p = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "screenshot {name}"
        );
    }
}
