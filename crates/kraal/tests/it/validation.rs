//! Bad input gets a clear error and a non-zero exit, and corrupts nothing.

use crate::harness::*;

#[test]
fn bad_input_is_refused_clearly() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "good");
    d.ok(&["up", repo.to_str().unwrap(), "--name", "good"]);

    // Unknown workspace.
    for args in [
        vec!["exec", "nope", "--", "true"],
        vec!["down", "nope"],
        vec!["rm", "nope", "--yes"],
        vec!["logs", "nope"],
    ] {
        let o = d.run(&args);
        assert!(o.code.is_some_and(|c| c != 0), "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("no workspace named nope"),
            "{args:?}: {}",
            o.stderr
        );
    }
    // `up` of something that is neither a workspace, a directory nor a URL.
    let o = d.run(&["up", "nope"]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr
            .contains("no workspace, directory or git URL named \"nope\""),
        "{}",
        o.stderr
    );

    // Duplicate name.
    let other = git_repo(d.dir.path(), "other");
    let o = d.run(&["up", other.to_str().unwrap(), "--name", "good"]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains("a workspace named good already exists"),
        "{}",
        o.stderr
    );

    // Invalid names.
    for bad in ["Bad_Name", "-x", "ws-0123456789", &"a".repeat(64)] {
        let o = d.run(&["up", other.to_str().unwrap(), &format!("--name={bad}")]);
        assert_eq!(o.code, Some(1), "{bad}");
        assert!(o.stderr.contains("workspace name"), "{bad}: {}", o.stderr);
    }

    // Dangerous git transports never reach git.
    let o = d.run(&["up", "ext::sh -c touch% /tmp/kraal-pwned", "--name", "evil"]);
    assert_ne!(o.code, Some(0));
    assert!(!std::path::Path::new("/tmp/kraal-pwned").exists());

    // Bad limits.
    let o = d.run(&["up", other.to_str().unwrap(), "--memory", "lots"]);
    assert!(
        o.stderr.contains("cannot parse memory size"),
        "{}",
        o.stderr
    );
    let o = d.run(&["up", other.to_str().unwrap(), "--cpus", "0"]);
    assert!(o.stderr.contains("cpus must be"), "{}", o.stderr);

    // Unknown command inside the workspace.
    let o = d.run(&["exec", "good", "--", "no-such-command-kraal"]);
    assert_eq!(o.code, Some(125));
    assert!(
        o.stderr
            .contains("no-such-command-kraal: command not found"),
        "{}",
        o.stderr
    );

    // Paths escaping the workspace through the file API.
    for p in [
        "../../etc/passwd",
        "/etc/passwd",
        "src/../../x",
        "%2e%2e/%2e%2e/etc/shadow",
    ] {
        let (status, body) = d.http(
            "GET",
            &format!("/v1/workspaces/good/files/content?path={p}"),
            b"",
        );
        assert_eq!(status, 400, "{p}: {body}");
        assert!(body.contains("\"code\":\"path_escape\""), "{p}: {body}");
        let (status, body) = d.http(
            "PUT",
            &format!("/v1/workspaces/good/files/content?path={p}"),
            b"pwned",
        );
        assert_eq!(status, 400, "{p}: {body}");
    }
    // A symlink inside the workspace pointing out is not followed.
    d.ok(&["exec", "good", "--", "ln", "-s", "/etc", "etc-link"]);
    let (status, body) = d.http(
        "GET",
        "/v1/workspaces/good/files/content?path=etc-link/passwd",
        b"",
    );
    assert_eq!(status, 400, "{body}");
    // The file API works inside.
    let (status, body) = d.http(
        "PUT",
        "/v1/workspaces/good/files/content?path=docs/a.txt&parents=true",
        b"hello",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = d.http(
        "GET",
        "/v1/workspaces/good/files/content?path=docs/a.txt",
        b"",
    );
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, body) = d.http("GET", "/v1/workspaces/good/files/list?path=.", b"");
    assert!(
        status == 200 && body.contains("\"name\":\"docs\""),
        "{body}"
    );

    // Malformed JSON and unknown routes.
    let (status, body) = d.http("POST", "/v1/workspaces", b"{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_argument"), "{body}");
    let (status, _) = d.http("GET", "/v1/nope", b"");
    assert_eq!(status, 404);

    // rm without --yes and without a terminal refuses.
    let o = d.run(&["rm", "good"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("without --yes"), "{}", o.stderr);

    // Nothing above disturbed the good workspace.
    let all = d.workspaces();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "running");
    assert_eq!(
        d.exec("good", "git status --short").stdout,
        "?? docs/\n?? etc-link\n"
    );
}

#[test]
fn daemon_refuses_to_start_without_runsc_and_cli_explains_missing_daemon() {
    let dir = tempfile::tempdir().unwrap();
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(KRAAL);
    c.arg("serve")
        .env("KRAAL_DATA_DIR", dir.path().join("data"))
        .env("KRAAL_SOCKET", dir.path().join("s.sock"))
        .env("KRAAL_RUNSC", "/nonexistent/runsc");
    let o = run_bounded(&mut c, std::time::Duration::from_secs(60));
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("gvisor backend is not usable") && o.stderr.contains("runsc"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("hint:"), "{}", o.stderr);

    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(KRAAL);
    c.args(["ls"])
        .env("KRAAL_SOCKET", dir.path().join("missing.sock"))
        .env_remove("KRAAL_HOST");
    let o = run_bounded(&mut c, std::time::Duration::from_secs(30));
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains("cannot reach the kraal daemon") && o.stderr.contains("kraal serve"),
        "{}",
        o.stderr
    );
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start();
    let o = run_bounded(&mut d.serve_cmd(), std::time::Duration::from_secs(60));
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("already listening"), "{}", o.stderr);
    d.ok(&["status"]);
}

#[test]
fn tcp_listener_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut d = Daemon::start();
    d.kill9();
    let mut c = d.serve_cmd();
    c.args(["--listen-tcp", &format!("127.0.0.1:{port}"), "--token-file"])
        .arg(&token_file);
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = c
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(std::time::Duration::from_secs(30), "tcp listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let host = format!("tcp://127.0.0.1:{port}");
    #[allow(clippy::disallowed_methods)]
    let mut no_token = std::process::Command::new(KRAAL);
    no_token
        .args(["--host", &host, "status"])
        .env_remove("KRAAL_TOKEN");
    let o = run_bounded(&mut no_token, std::time::Duration::from_secs(30));
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains("missing or wrong bearer token") && o.stderr.contains("KRAAL_TOKEN"),
        "{}",
        o.stderr
    );
    #[allow(clippy::disallowed_methods)]
    let mut with_token = std::process::Command::new(KRAAL);
    with_token
        .args(["--host", &host, "status"])
        .env("KRAAL_TOKEN", "0123456789abcdef0123456789abcdef");
    let o = run_bounded(&mut with_token, std::time::Duration::from_secs(30));
    assert_eq!(o.code, Some(0), "{o:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn host_check_is_bounded_and_picks_a_usable_backend() {
    let dir = tempfile::tempdir().unwrap();
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(KRAAL);
    // The shared image store holds the guest kernel the KVM boot probe needs, so what is
    // timed is the probes, not a kernel download (which made this test flaky under load).
    c.args(["host", "check", "--json"])
        .env("KRAAL_DATA_DIR", dir.path())
        .env("KRAAL_IMAGE_DIR", image_dir());
    let t0 = std::time::Instant::now();
    let o = run_bounded(&mut c, std::time::Duration::from_secs(30));
    let took = t0.elapsed();
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "host check took {took:?}"
    );
    let r: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(r["kvm"]["probe_ms"].as_u64().unwrap() < 5000, "{r}");
    assert!(!r["kvm"]["detail"].as_str().unwrap().is_empty());
    // No VM backend is built yet, so gVisor is selected whatever KVM says.
    assert_eq!(r["selected"], "gvisor");
    let g = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "gvisor")
        .unwrap();
    assert_eq!(g["usable"], true, "{g}");
    assert!(
        g["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().contains("runsc")),
        "{g}"
    );
    // The human form says the same.
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(KRAAL);
    c.args(["host", "check"]).env("KRAAL_DATA_DIR", dir.path());
    let o = run_bounded(&mut c, std::time::Duration::from_secs(30));
    assert!(
        o.stdout.contains("selected backend: gvisor") && o.stdout.contains("KVM:"),
        "{}",
        o.stdout
    );
}
