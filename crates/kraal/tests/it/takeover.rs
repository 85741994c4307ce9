//! Surviving the loss of the control machine: the daemon's own state goes to the backup
//! store, a second daemon with an empty data directory takes over from it — workspaces
//! back from their newest backups (or recreated from their source), secrets, tokens and
//! the API token carried over — and one CLI drives several daemons through contexts.

use std::time::Duration;

use crate::harness::*;

/// The workspace's state, or `restoring` while a restore is under way.
fn state_of(d: &Daemon, ws: &str) -> String {
    d.workspaces()
        .into_iter()
        .find(|w| w["name"] == ws)
        .map(|w| {
            if w["restoring"].is_string() {
                "restoring".to_owned()
            } else {
                w["state"].as_str().unwrap_or_default().to_owned()
            }
        })
        .unwrap_or_default()
}

#[test]
fn a_second_machine_takes_over_from_the_state_backup_and_one_cli_drives_both() {
    let shared = tempfile::Builder::new()
        .prefix("kraal-takeover-")
        .tempdir()
        .unwrap();
    let store = shared.path().join("backups");
    let key = shared.path().join("backup.key");
    let port_a = free_port();
    let tcp_a = format!("127.0.0.1:{port_a}");
    let common = [
        ("KRAAL_BACKUP_URL", store.to_str().unwrap()),
        ("KRAAL_BACKUP_KEY_FILE", key.to_str().unwrap()),
    ];
    let mut env_a = common.to_vec();
    env_a.push(("KRAAL_LISTEN_TCP", tcp_a.as_str()));
    let mut a = Daemon::start_with_env(&env_a);

    // Machine A: a backed-up workspace, one never backed up, a secret, a login token.
    let src = git_repo(shared.path(), "proj");
    a.ok(&["up", src.to_str().unwrap()]);
    let o = a.exec("proj", "echo precious > /workspace/notes.txt");
    assert_eq!(o.code, Some(0), "{o:?}");
    a.ok(&["backup", "proj"]);
    let fresh = git_repo(shared.path(), "fresh");
    a.ok(&["up", fresh.to_str().unwrap()]);
    let o = a.run_with_stdin(&["secret", "set", "deploy-key"], "s3cr3t-value\n");
    assert_eq!(o.code, Some(0), "{o:?}");
    let phone = a
        .ok(&["token", "create", "--name", "phone"])
        .trim()
        .to_owned();
    let state = a.ok(&["state", "backup"]);
    assert!(state.contains("2 workspaces"), "{state}");
    let listed = a.ok(&["state", "ls"]);
    assert!(listed.contains("manual"), "{listed}");
    let all = a.ok(&["backups", "ls"]);
    assert!(all.contains("(daemon state)"), "{all}");
    // A state backup is not a workspace backup.
    let sid = state.split_whitespace().next().unwrap().to_owned();
    let o = a.run(&["restore", &sid]);
    assert!(o.stderr.contains("does not describe a workspace"), "{o:?}");
    let api_token = std::fs::read_to_string(a.data().join("api-token")).unwrap();
    let secret_key = std::fs::read(a.data().join("secret.key")).unwrap();

    // Machine A dies with everything on it.
    a.kill9();
    cleanup_host_resources(&a.data());

    // Machine B: an empty data directory, the same store and backup key.
    let port_b = free_port();
    let tcp_b = format!("127.0.0.1:{port_b}");
    let mut env_b = common.to_vec();
    env_b.push(("KRAAL_TAKE_OVER", "latest"));
    env_b.push(("KRAAL_LISTEN_TCP", tcp_b.as_str()));
    let b = Daemon::start_with_env(&env_b);
    wait_until(
        Duration::from_secs(120),
        "both workspaces running on B",
        || state_of(&b, "proj") == "running" && state_of(&b, "fresh") == "running",
    );
    let o = b.exec("proj", "cat /workspace/notes.txt");
    assert_eq!(o.stdout, "precious\n", "restored from its backup: {o:?}");
    let o = b.exec("fresh", "cat /workspace/README.md");
    assert_eq!(o.stdout, "# demo\n", "recreated from its source: {o:?}");
    let logs = b.ok(&["logs", "proj", "--events-only"]);
    assert!(logs.contains("restored from backup bk-"), "{logs}");
    assert!(b.ok(&["secret", "ls"]).contains("deploy-key"));
    assert!(b.ok(&["token", "ls"]).contains("phone"));
    assert_eq!(
        std::fs::read(b.data().join("secret.key")).unwrap(),
        secret_key,
        "the secrets' key came along, so they decrypt"
    );
    assert_eq!(
        std::fs::read_to_string(b.data().join("api-token")).unwrap(),
        api_token
    );
    assert!(phone.starts_with("kraal_"), "{phone}");

    // A takeover never overwrites a data directory that has state.
    let mut again = b.serve_cmd();
    again.env("KRAAL_TAKE_OVER", "latest");
    let o = run_bounded(&mut again, Duration::from_secs(60));
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr
            .contains("a takeover only fills an empty data directory"),
        "{}",
        o.stderr
    );

    // One CLI, several daemons: B over TCP with A's old API token, and a third one on its
    // Unix socket.
    let c = Daemon::start();
    let ctx = |args: &[&str]| b.run(args);
    let o = ctx(&[
        "context",
        "add",
        "main",
        "--host",
        &format!("tcp://{tcp_b}"),
        "--token",
        api_token.trim(),
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = ctx(&[
        "context",
        "add",
        "spare",
        "--host",
        c.socket.to_str().unwrap(),
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = ctx(&["context", "ls"]);
    assert!(
        o.stdout.contains("* ") && o.stdout.contains("main") && o.stdout.contains("spare"),
        "{o:?}"
    );
    assert!(
        !o.stdout.contains(api_token.trim()),
        "tokens stay out of listings"
    );
    // The first context added is the current one: `ls` goes to B over TCP.
    let o = ctx(&["ls"]);
    assert!(
        o.stdout.contains("proj") && o.stdout.contains("fresh"),
        "{o:?}"
    );
    let o = ctx(&["--context", "spare", "ls", "--json"]);
    assert_eq!(o.stdout.trim(), "[]", "{o:?}");
    ctx(&["context", "use", "spare"]);
    let o = ctx(&["ls", "--json"]);
    assert_eq!(o.stdout.trim(), "[]", "{o:?}");
    // Bad input is named.
    let o = ctx(&["context", "use", "nope"]);
    assert!(
        o.stderr.contains("no context \"nope\"; known: main, spare"),
        "{o:?}"
    );
    let o = ctx(&["context", "add", "x", "--host", "tcp://somewhere"]);
    assert!(o.stderr.contains("expected tcp://HOST:PORT"), "{o:?}");
    let o = ctx(&[
        "context",
        "add",
        "bad",
        "--host",
        &format!("tcp://{tcp_b}"),
        "--token",
        "kraal_wrong",
    ]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = ctx(&["--context", "bad", "ls"]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("token"), "{o:?}");
    ctx(&["context", "rm", "bad"]);
    ctx(&["context", "use", "local"]);
    let o = ctx(&["ls"]);
    assert!(
        o.stdout.contains("proj"),
        "the local daemon is B itself here: {o:?}"
    );
}
