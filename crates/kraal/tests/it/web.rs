//! The web UI end to end: a real daemon with a real gVisor workspace and the real Claude
//! Code CLI against the scripted model, driven by Debian's Chromium through playwright-core
//! (`web/tests/ui.test.mjs`, phone and desktop viewports; screenshots land in
//! `target/web-screenshots/ui/`), and the security rules checked over raw HTTP: nothing
//! without a login, CSRF on every state change, cross-site requests refused, login rate
//! limits, revoked tokens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kraal_testkit::{Scenario, ScriptedModel};

use crate::harness::*;

/// A raw HTTP/1.1 request; returns status, headers (lowercase names) and body.
pub(crate) fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (status, hs, body.to_owned())
}

pub(crate) fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(crate) fn web_url(d: &Daemon) -> String {
    let s: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    s["web_url"]
        .as_str()
        .expect("the daemon serves the web UI")
        .to_owned()
}

/// Logs in with `token`; returns the session cookie and its CSRF token.
pub(crate) fn login(base: &str, token: &str) -> (String, String) {
    let (status, hs, _) = http(
        base,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={token}&next=/"),
    );
    assert_eq!(status, 303, "login with a good token redirects");
    let cookie = header(&hs, "set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_owned();
    let (_, _, page) = http(base, "GET", "/", &[("Cookie", &value)], "");
    let csrf = page
        .split(r#"name="csrf-token" content=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    (value, csrf)
}

#[test]
fn nothing_without_a_login_csrf_everywhere_and_login_rate_limits() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "sec");
    d.ok(&["up", repo.to_str().unwrap()]);
    let base = web_url(&d);
    let token = d
        .ok(&["token", "create", "--name", "tester"])
        .trim()
        .to_owned();
    assert!(token.starts_with("kraal_") && token.len() == 70, "{token}");

    // Every page and action without a session: a redirect to the login page for browsers,
    // 401 for anything else. Only the login page and static assets are public.
    let pages = [
        "/",
        "/dashboard/workspaces",
        "/w/sec",
        "/w/sec/files",
        "/w/sec/diff",
        "/w/sec/terminal",
        "/s/se-000000000000",
        "/s/se-000000000000/live",
        "/templates",
        "/templates/new",
        "/templates/tp-x",
        "/logs",
        "/notify",
        "/nowhere",
    ];
    for p in pages {
        let (status, hs, _) = http(&base, "GET", p, &[("Accept", "text/html")], "");
        assert_eq!(status, 303, "GET {p}");
        assert!(
            header(&hs, "location").unwrap().starts_with("/login?next="),
            "{p}"
        );
        let (status, _, _) = http(&base, "GET", p, &[], "");
        assert_eq!(status, 401, "GET {p} without Accept: text/html");
    }
    let actions = [
        "/w/sec/down",
        "/w/sec/up",
        "/w/sec/commit",
        "/w/sec/push",
        "/w/sec/sessions",
        "/s/se-000000000000/send",
        "/s/se-000000000000/interrupt",
        "/s/se-000000000000/decide",
        "/s/se-000000000000/end",
        "/templates",
        "/templates/tp-x",
        "/templates/tp-x/delete",
        "/templates/tp-x/launch",
        "/logout",
    ];
    for p in actions {
        let (status, _, _) = http(&base, "POST", p, &[], "");
        assert_eq!(status, 401, "POST {p}");
    }
    let (status, _, _) = http(
        &base,
        "GET",
        "/w/sec/exec",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        "",
    );
    assert_eq!(status, 401, "the terminal socket needs a login");
    for public in ["/login", "/static/app.js", "/static/manifest.webmanifest"] {
        let (status, _, _) = http(&base, "GET", public, &[], "");
        assert_eq!(status, 200, "{public}");
    }
    let (_, hs, _) = http(&base, "GET", "/login", &[], "");
    let csp = header(&hs, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );

    // CSRF: with a valid session, a state change needs the session's token.
    let (cookie, csrf) = login(&base, &token);
    let form = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, _, body) = http(&base, "POST", "/w/sec/down", &form, "");
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, _, _) = http(&base, "POST", "/w/sec/down", &form, "csrf=0123");
    assert_eq!(status, 403, "a wrong CSRF token");
    let mut cross = form.to_vec();
    cross.push(("Origin", "http://evil.example"));
    let (status, _, _) = http(
        &base,
        "POST",
        "/w/sec/down",
        &cross,
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 403, "a cross-site post, even with the token");
    let (status, _, _) = http(
        &base,
        "GET",
        "/w/sec/exec",
        &[
            ("Cookie", &cookie),
            ("Origin", "http://evil.example"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        "",
    );
    assert_eq!(status, 403, "cross-site WebSocket hijacking refused");
    // Reads a page elsewhere makes with the login's cookie (an EventSource on a live
    // stream, a fetch of a fragment) are refused by their Origin; this site's are not.
    for p in [
        "/s/se-000000000000/live",
        "/dashboard/workspaces",
        "/w/sec/diff",
    ] {
        for origin in ["http://evil.example", "null"] {
            let (status, _, body) = http(
                &base,
                "GET",
                p,
                &[
                    ("Cookie", &cookie),
                    ("Origin", origin),
                    ("Accept", "text/event-stream"),
                ],
                "",
            );
            assert_eq!(status, 403, "GET {p} from {origin}: {body}");
        }
    }
    let (status, _, body) = http(
        &base,
        "GET",
        "/dashboard/workspaces",
        &[("Cookie", &cookie), ("Origin", base.as_str())],
        "",
    );
    assert_eq!(status, 200, "this site's own fetch: {body}");
    assert_eq!(
        d.workspace("sec")["state"],
        "running",
        "nothing was stopped"
    );
    let mut with_header = form.to_vec();
    with_header.push(("X-CSRF-Token", csrf.as_str()));
    with_header.push(("HX-Request", "true"));
    let (status, _, body) = http(&base, "POST", "/w/sec/down", &with_header, "");
    assert_eq!(status, 204, "the right token in the header: {body}");
    wait_until(Duration::from_secs(60), "the workspace to stop", || {
        d.workspace("sec")["state"] == "stopped"
    });

    // A revoked token ends its logins at once.
    d.ok(&["token", "revoke", "tester"]);
    let (status, _, _) = http(&base, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 401, "the revoked token's session is gone");
    let o = d.run(&["token", "revoke", "tester"]);
    assert_eq!(o.code, Some(1), "revoking twice is an error: {o:?}");
    let ls = d.ok(&["token", "ls"]);
    assert!(ls.contains("tester") && ls.contains("revoked") && !ls.contains(&token));

    // Wrong tokens: five tries a minute from one address, then 429 even for the right one.
    let good = d
        .ok(&["token", "create", "--name", "again"])
        .trim()
        .to_owned();
    let try_login = |t: &str| {
        http(
            &base,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("token={t}"),
        )
    };
    for i in 0..5 {
        let (status, _, _) = try_login(&format!("kraal_guess_{i}"));
        assert_eq!(status, 401, "guess {i}");
    }
    let (status, hs, body) = try_login("kraal_guess_5");
    assert_eq!(status, 429, "{body}");
    assert!(header(&hs, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok()));
    let (status, _, _) = try_login(&good);
    assert_eq!(status, 429, "while blocked, even the right token waits");
}

#[test]
fn the_web_ui_in_a_real_browser_on_a_phone_and_a_desktop() {
    // Claude Code takes a message sent mid-turn in at the next tool boundary, so the
    // follow-up is answered within the same turn.
    let model = ScriptedModel::start(
        Scenario::from_json(
            r##"{"turns": [
            {"respond": [{"text": "Working on the first task, streaming slowly so that a message can be sent meanwhile.", "chunk": 1, "delay_ms": 100}, {"tool_use": {"name": "Read", "input": {"file_path": "/workspace/README.md"}}}]},
            {"respond": [{"tool_use": {"name": "Edit", "input": {"file_path": "/workspace/README.md", "old_string": "# demo", "new_string": "# demo, edited in the browser test"}}}]},
            {"respond": [{"text": "Got the follow-up."}, {"tool_use": {"name": "Bash", "input": {"command": "printf '%s' '<script>window.pwned=1</script><img src=x onerror=window.pwned=2>'", "description": "Print some markup"}}}]},
            {"respond": [{"text": "XSS check done."}]},
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo approved > /workspace/approved.txt", "description": "Write approved.txt"}}}]},
            {"respond": [{"text": "Approved and done."}]},
            {"respond": [{"text": "Offline stream done.", "chunk": 1, "delay_ms": 80}]}
        ]}"##,
        )
        .unwrap(),
    )
    .unwrap();
    let url = model.base_url();
    let d = Daemon::start_with_env(&[
        ("KRAAL_ANTHROPIC_URL", &url),
        ("ANTHROPIC_API_KEY", "sk-ant-host-only"),
    ]);
    let repo = git_repo(d.dir.path(), "web");
    d.ok(&["up", repo.to_str().unwrap()]);
    let token = d
        .ok(&["token", "create", "--name", "browser"])
        .trim()
        .to_owned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("target/web-screenshots/ui");
    let _ = std::fs::remove_dir_all(&shots);
    #[allow(clippy::disallowed_methods)]
    let mut c = Command::new("node");
    c.arg(root.join("web/tests/ui.test.mjs"))
        .current_dir(root.join("web"))
        .env("KRAAL_URL", web_url(&d))
        .env("KRAAL_TOKEN", &token)
        .env("KRAAL_WS", "web")
        .env("KRAAL_BIN", KRAAL)
        .env("KRAAL_SOCKET", &d.socket)
        .env("SCREENSHOTS", &shots);
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
    for name in [
        "phone-login",
        "phone-dashboard",
        "phone-session-streaming",
        "phone-session-done",
        "phone-session-approval",
        "phone-workspace-diff",
        "phone-terminal",
        "phone-template",
        "phone-logs",
        "desktop-dashboard",
        "desktop-workspace",
        "desktop-session",
        "desktop-terminal",
    ] {
        let p = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "screenshot {name}"
        );
    }
}
