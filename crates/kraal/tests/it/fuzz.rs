//! API fuzzing: schemathesis generates requests from the committed OpenAPI document
//! (`docs/openapi.json`) — valid ones, boundary values, wrong types, unknown fields,
//! and stateful sequences following the document's links — against a running daemon
//! over its TCP listener, with a running workspace to aim at. No answer may be a 5xx and
//! none may hang (each request has a deadline); the daemon must stay healthy.
//!
//! Left out of the generated traffic, each for a stated reason: the WebSocket and event
//! streams (`exec`, `ssh`, `ports/{port}`, `stream`: they stay open by design), creating
//! workspaces and building images (each case would be a sandbox or minutes of
//! debootstrap), removing the target workspace (the rest would then only see 404s), and
//! import (a zstd body schemathesis cannot produce).

use std::time::Duration;

use crate::harness::*;

const SCHEMATHESIS: &str = "/opt/kraal-test/venv/bin/schemathesis";

#[test]
fn the_api_survives_schemathesis_without_a_server_error_or_a_hang() {
    assert!(
        std::path::Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: run scripts/setup.sh with KRAAL_SETUP_TEST_DEPS=1"
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_env(&[("KRAAL_LISTEN_TCP", addr.as_str())]);
    let repo = git_repo(d.dir.path(), "fuzz");
    d.ok(&["up", repo.to_str().unwrap()]);
    let token = std::fs::read_to_string(d.data().join("api-token")).unwrap();
    let dir = d.dir.path().join("fuzzing");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("schemathesis.toml"),
        format!(
            "base-url = \"http://{addr}\"\n\
             headers = {{ Authorization = \"Bearer {}\" }}\n\
             request-timeout = 60.0\n\
             generation.max-examples = 12\n\
             [parameters]\n\
             \"path.ws\" = \"fuzz\"\n",
            token.trim()
        ),
    )
    .unwrap();
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    #[allow(clippy::disallowed_methods)] // test harness: the fuzzer
    let mut c = std::process::Command::new(SCHEMATHESIS);
    c.current_dir(&dir)
        .args(["run", doc.to_str().unwrap()])
        .args(["--checks", "not_a_server_error"])
        .args(["--seed", "20261124"])
        .args(["--workers", "1"])
        .args([
            "--exclude-path-regex",
            "(/exec|/ssh|/ports/\\{port\\}|/stream)$",
        ])
        .args(["--exclude-name", "POST /v1/workspaces"])
        .args(["--exclude-name", "POST /v1/images/build"])
        .args(["--exclude-name", "POST /v1/workspaces/import"])
        .args(["--exclude-name", "DELETE /v1/workspaces/{ws}"])
        .env("NO_COLOR", "1");
    let o = run_bounded(&mut c, Duration::from_secs(20 * 60));
    let out = format!("{}\n{}", o.stdout, o.stderr);
    let tail: String = out
        .chars()
        .rev()
        .take(6000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(
        o.code,
        Some(0),
        "schemathesis failed:\n{tail}\n{}",
        d.log_tail()
    );
    // It really ran: thousands of cases over every operation left in.
    let generated = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" passed")
                .and_then(|l| l.split_once(" generated, "))
        })
        .map(|(g, p)| {
            (
                g.trim().parse::<u64>().unwrap_or(0),
                p.trim().parse::<u64>().unwrap_or(0),
            )
        });
    let (generated, passed) = generated.unwrap_or_else(|| panic!("no summary:\n{tail}"));
    assert!(
        generated >= 500 && passed == generated,
        "{generated} generated, {passed} passed\n{tail}"
    );
    assert!(!out.contains("Server error"), "{tail}");
    // The daemon is fine afterwards, and so is the workspace it was aimed at.
    let (code, _) = d.http("GET", "/v1/status", b"");
    assert_eq!(code, 200);
    d.ok(&["up", "fuzz"]);
    let o = d.exec("fuzz", "echo still here");
    assert_eq!(o.stdout, "still here\n", "{o:?}");
}
