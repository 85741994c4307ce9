//! gVisor snapshots end to end, on runsc's own network stack (`--gvisor-network
//! sandbox`): a running process and the files come back as they were after a restore,
//! the workspace is reachable and usable after it (exec, a restart, removal), and bad
//! names and missing snapshots are clear errors that leave the workspace running.

use std::time::Duration;

use crate::harness::*;

#[test]
fn a_gvisor_snapshot_brings_back_processes_and_files() {
    let d = Daemon::start_with_env(&[("KRAAL_GVISOR_NETWORK", "sandbox")]);
    d.ok(&["up", git_repo(d.dir.path(), "gs").to_str().unwrap()]);
    let o = d.exec(
        "gs",
        "echo before > state.txt; sleep 1000 >/dev/null 2>&1 & echo $!",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let pid = o.stdout.trim().to_owned();
    // Something in the root file system's upper layer too, not only the volume.
    d.ok(&[
        "exec",
        "gs",
        "--",
        "sh",
        "-c",
        "echo root-before > /etc/kraal-mark",
    ]);

    let out = d.ok(&["snapshot", "gs", "s1"]);
    assert!(out.contains("snapshot s1 of gs saved"), "{out}");
    // It runs on after the snapshot, same processes.
    let o = d.exec("gs", &format!("kill -0 {pid} && echo alive"));
    assert_eq!(o.stdout, "alive\n", "{o:?}");

    let o = d.exec(
        "gs",
        &format!(
            "echo after > state.txt; echo root-after > /etc/kraal-mark; kill {pid}; sleep 0.3; kill -0 {pid} 2>/dev/null || echo gone"
        ),
    );
    assert_eq!(o.stdout, "gone\n", "{o:?}");

    let out = d.ok(&["restore", "gs", "s1"]);
    assert!(out.contains("back at snapshot s1"), "{out}");
    let o = d.exec(
        "gs",
        &format!("cat state.txt /etc/kraal-mark; kill -0 {pid} && echo alive"),
    );
    assert_eq!(o.stdout, "before\nroot-before\nalive\n", "{o:?}");
    assert_eq!(d.workspace("gs")["state"], "running");
    let logs = d.ok(&["logs", "gs"]);
    assert!(
        logs.contains("snapshot s1 taken") && logs.contains("restored snapshot s1"),
        "{logs}"
    );

    // Bad input: clear errors, and the workspace keeps running.
    let o = d.run(&["snapshot", "gs", "../evil"]);
    assert!(o.stderr.contains("invalid snapshot name"), "{}", o.stderr);
    let o = d.run(&["restore", "gs", "nope"]);
    assert!(
        o.stderr.contains("no snapshot named \"nope\""),
        "{}",
        o.stderr
    );
    wait_until(Duration::from_secs(60), "running again", || {
        d.workspace("gs")["state"] == "running"
    });
    assert_eq!(d.exec("gs", "cat state.txt").stdout, "before\n");

    // A restored workspace stops, starts and goes away like any other.
    d.ok(&["down", "gs"]);
    d.ok(&["up", "gs"]);
    assert_eq!(d.exec("gs", "cat state.txt").stdout, "before\n");
    // A snapshot restores into a stopped workspace too.
    d.ok(&["down", "gs"]);
    let out = d.ok(&["restore", "gs", "s1"]);
    assert!(out.contains("back at snapshot s1"), "{out}");
    let o = d.exec("gs", &format!("kill -0 {pid} && echo alive"));
    assert_eq!(o.stdout, "alive\n", "{o:?}");
    d.ok(&["rm", "--yes", "gs"]);
    assert!(d.workspaces().is_empty());
}
