//! Daemon crashes and restarts never kill sandboxes or the commands running in them.

use std::time::Duration;

use crate::harness::*;

#[test]
fn kill9_during_exec_keeps_sandbox_and_command_alive() {
    let mut d = Daemon::start();
    let repo = git_repo(d.dir.path(), "long");
    d.ok(&["up", repo.to_str().unwrap()]);

    let mut exec = d.cmd(&[
        "exec",
        "long",
        "--",
        "sh",
        "-c",
        "for i in $(seq 1 20); do echo tick $i; sleep 1; done; echo finished",
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(run_bounded(&mut exec, Duration::from_secs(180)))
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(2500));

    d.kill9();
    let id = d.workspace_id_from_disk("long");
    // The sandbox outlives the daemon.
    #[allow(clippy::disallowed_methods)]
    let st = std::process::Command::new("runsc")
        .arg(format!("--root={}", d.data().join("runsc").display()))
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("\"running\""),
        "sandbox died with the daemon"
    );

    d.spawn();
    assert_eq!(d.workspace("long")["state"], "running");
    let ps = d.ok(&["ps", "long"]);
    assert!(
        ps.lines()
            .any(|l| l.contains("running") && l.contains("tick")),
        "the command is still alive: {ps}"
    );

    let out = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    let expected: String =
        (1..=20).map(|i| format!("tick {i}\n")).collect::<String>() + "finished\n";
    assert_eq!(
        out.stdout, expected,
        "no line lost or repeated across the restart"
    );
    assert!(out.stderr.contains("reattached"), "{}", out.stderr);
}

#[test]
fn graceful_shutdown_leaves_sandboxes_running() {
    let mut d = Daemon::start();
    let repo = git_repo(d.dir.path(), "calm");
    d.ok(&["up", repo.to_str().unwrap()]);
    d.ok(&["exec", "calm", "--", "sh", "-c", "echo before > marker"]);
    let st = d.terminate();
    assert!(st.success(), "daemon exit status {st:?}");
    assert!(!d.socket.exists(), "socket removed on clean shutdown");
    d.spawn();
    let o = d.exec("calm", "cat marker; cat /proc/1/cmdline | tr '\\0' ' '");
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.starts_with("before\n/.kraal/kraal-guest"),
        "{}",
        o.stdout
    );
    let logs = d.ok(&["logs", "calm", "--events-only"]);
    assert_eq!(
        logs.matches("running on gvisor").count(),
        1,
        "the sandbox was not restarted: {logs}"
    );
}

#[test]
fn reconciler_restarts_a_sandbox_that_died() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "phoenix");
    d.ok(&["up", repo.to_str().unwrap()]);
    d.ok(&["exec", "phoenix", "--", "sh", "-c", "echo kept > kept.txt"]);
    let id = d.workspace("phoenix")["id"].as_str().unwrap().to_owned();
    #[allow(clippy::disallowed_methods)]
    let k = std::process::Command::new("runsc")
        .arg(format!("--root={}", d.data().join("runsc").display()))
        .args(["kill", &id, "KILL"])
        .output()
        .unwrap();
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    wait_until(
        Duration::from_secs(60),
        "the reconciler to notice the dead sandbox",
        || {
            d.ok(&["logs", "phoenix", "--events-only"])
                .contains("sandbox is not running; starting it again")
        },
    );
    // exec waits for the workspace to come back instead of failing.
    let o = d.exec("phoenix", "cat kept.txt");
    assert_eq!(o.stdout, "kept\n", "{o:?}");
    let logs = d.ok(&["logs", "phoenix", "--events-only"]);
    assert_eq!(logs.matches("running on gvisor").count(), 2, "{logs}");
    assert_eq!(d.workspace("phoenix")["state"], "running");
}

impl Daemon {
    /// Reads a workspace id without the daemon (which may be dead).
    pub fn workspace_id_from_disk(&self, _name: &str) -> String {
        let rd = std::fs::read_dir(self.data().join("workspaces")).unwrap();
        let ids: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids[0].clone()
    }
}
