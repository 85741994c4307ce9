//! Idle pause end to end on gVisor: an idle workspace's sandbox is paused — a background
//! counter inside stops counting — and the next exec resumes it at once, counter and all;
//! a persistent workspace is never paused; a daemon killed while a workspace is paused
//! takes it over on its return, and the next use resumes it.

use std::time::Duration;

use crate::harness::*;
use crate::housekeeping::{state, up};

/// What `runsc state` says of workspace `id` (null when it knows no such container).
fn runsc_state_json(d: &Daemon, id: &str) -> serde_json::Value {
    #[allow(clippy::disallowed_methods)]
    let o = std::process::Command::new("runsc")
        .arg(format!("--root={}", d.data().join("runsc").display()))
        .args(["state", id])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn runsc_state(d: &Daemon, id: &str) -> String {
    runsc_state_json(d, id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The sandbox process of workspace `id` (runsc's `pid`).
fn sandbox_pid(d: &Daemon, id: &str) -> u32 {
    runsc_state_json(d, id)["pid"]
        .as_u64()
        .expect("a live sandbox has a pid") as u32
}

/// What the cgroup freezer says of the sandbox's cgroup (`FROZEN`, `THAWED`…).
fn freezer_state(pid: u32) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = cg
        .lines()
        .find(|l| l.split(':').nth(1) == Some("freezer"))
        .expect("this host has the v1 freezer");
    let path = line.splitn(3, ':').nth(2).unwrap();
    std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
        .unwrap()
        .trim()
        .to_owned()
}

/// CPU time (clock ticks) process `pid` has used, all its threads.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    // utime and stime are fields 14 and 15; 3 is the first after the command.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

#[test]
fn idle_workspaces_pause_and_the_next_use_resumes_them() {
    let mut d =
        Daemon::start_with_env(&[("KRAAL_IDLE_PAUSE", "5s"), ("KRAAL_HOUSEKEEPING_SECS", "1")]);
    up(&d, "keep", &["--persistent"]);
    up(&d, "nap", &[]);
    let id = |ws: &str| d.workspace(ws)["id"].as_str().unwrap().to_owned();
    let (nap, keep) = (id("nap"), id("keep"));
    // A counter in the background, outliving the exec that starts it: a line every
    // 100 ms, in the volume (which the host sees).
    d.ok(&[
        "exec",
        "nap",
        "--",
        "sh",
        "-c",
        "setsid sh -c 'while :; do echo x >> /workspace/ticks; sleep 0.1; done' >/dev/null 2>&1 </dev/null &",
    ]);
    let ticks = d.state_dir().join(&nap).join("volume/ticks");
    wait_until(Duration::from_secs(10), "the counter counting", || {
        lines(&ticks) >= 5
    });

    wait_until(Duration::from_secs(30), "nap paused", || {
        runsc_state(&d, &nap) == "paused"
    });
    let logs = d.ok(&["logs", "nap", "--events-only"]);
    assert!(
        logs.contains(
            "idle for 5 s (no agent turn, terminal or client); paused, resumes on the next use"
        ),
        "{logs}"
    );
    // Paused is still running as far as the user is concerned: nothing to start.
    assert_eq!(state(&d, "nap").0, "running");
    let frozen = lines(&ticks);
    // The whole sandbox is frozen, not only its tasks: the sentry itself uses no CPU.
    let sentry = sandbox_pid(&d, &nap);
    assert_eq!(freezer_state(sentry), "FROZEN");
    let cpu = cpu_ticks(sentry);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lines(&ticks),
        frozen,
        "nothing in the workspace runs while paused"
    );
    assert_eq!(cpu_ticks(sentry), cpu, "the frozen sentry used CPU");

    // The next use resumes it, and it picks up where it was.
    let o = d.exec("nap", "echo hello");
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "hello\n"), "{o:?}");
    assert_eq!(runsc_state(&d, &nap), "running");
    assert_eq!(freezer_state(sentry), "THAWED");
    let logs = d.ok(&["logs", "nap", "--events-only"]);
    assert!(logs.contains("resumed from idle pause in"), "{logs}");
    wait_until(
        Duration::from_secs(10),
        "the counter counting again",
        || lines(&ticks) >= frozen + 5,
    );

    // Persistent: idle all along, never paused.
    assert_eq!(runsc_state(&d, &keep), "running");
    assert!(
        !d.ok(&["logs", "keep", "--events-only"]).contains("paused"),
        "a persistent workspace is never paused"
    );

    // Paused when the daemon dies: the new daemon takes it over and the next use
    // resumes it.
    wait_until(Duration::from_secs(30), "nap paused again", || {
        runsc_state(&d, &nap) == "paused"
    });
    d.kill9();
    d.spawn();
    wait_until(
        Duration::from_secs(30),
        "the paused sandbox taken over",
        || {
            d.ok(&["logs", "nap", "--events-only"])
                .contains("found paused; resumes on the next use")
        },
    );
    assert_eq!(runsc_state(&d, &nap), "paused");
    let o = d.exec("nap", "echo again");
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "again\n"), "{o:?}");
    assert_eq!(runsc_state(&d, &nap), "running");

    // A frozen sandbox is thawed to be removed: nothing of it is left behind.
    wait_until(Duration::from_secs(30), "nap paused a third time", || {
        runsc_state(&d, &nap) == "paused"
    });
    let sentry = sandbox_pid(&d, &nap);
    assert_eq!(freezer_state(sentry), "FROZEN");
    d.ok(&["rm", "--yes", "nap"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{sentry}")).exists(),
        "the sandbox process outlived its removal"
    );
}
