//! Idle pause end to end on gVisor: an idle workspace's sandbox is paused — a background
//! counter inside stops counting — and the next exec resumes it at once, counter and all;
//! a persistent workspace is never paused; a daemon killed while a workspace is paused
//! takes it over on its return, and the next use resumes it.

use std::time::Duration;

use crate::harness::*;
use crate::housekeeping::{state, up};

fn runsc_state(d: &Daemon, id: &str) -> String {
    #[allow(clippy::disallowed_methods)]
    let o = std::process::Command::new("runsc")
        .arg(format!("--root={}", d.data().join("runsc").display()))
        .args(["state", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["status"].as_str().unwrap_or_default().to_owned()
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
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lines(&ticks),
        frozen,
        "nothing in the workspace runs while paused"
    );

    // The next use resumes it, and it picks up where it was.
    let o = d.exec("nap", "echo hello");
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "hello\n"), "{o:?}");
    assert_eq!(runsc_state(&d, &nap), "running");
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
}
