//! Housekeeping end to end: idle workspaces stop by themselves — but not while a terminal
//! is attached or an agent is in a turn, never when persistent or set to never — and
//! running workspaces are backed up on a schedule that keeps the newest few, with a final
//! backup when an idle workspace stops.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::sessions::with_model_on;

pub(crate) fn state(d: &Daemon, ws: &str) -> (String, String) {
    let w = d.workspace(ws);
    (
        w["state"].as_str().unwrap_or_default().to_owned(),
        w["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

pub(crate) fn up(d: &Daemon, name: &str, extra: &[&str]) {
    let repo = git_repo(d.dir.path(), name);
    let mut args = vec!["up", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    d.ok(&args);
}

/// Waits until `ws` is stopped; returns when that was seen.
pub(crate) fn wait_stopped(d: &Daemon, ws: &str, limit: Duration) -> Instant {
    wait_until(limit, &format!("{ws} stopped by the idle timer"), || {
        state(d, ws).0 == "stopped"
    });
    Instant::now()
}

#[test]
fn idle_workspaces_stop_unless_a_terminal_an_agent_or_a_setting_keeps_them() {
    let (_model, d) = with_model_on(
        r##"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "timeout 25 tail -f /dev/null; echo waited > /workspace/waited.txt", "description": "Wait"}}}]},
            {"respond": [{"text": "Done sleeping."}]}
        ]}"##,
        &[("KRAAL_IDLE_STOP", "6s"), ("KRAAL_HOUSEKEEPING_SECS", "1")],
    );
    // Activity first, so neither of these is ever idle before it starts.
    up(&d, "term", &[]);
    std::thread::scope(|scope| {
        let t0 = Instant::now();
        let term =
            scope.spawn(|| d.run(&["exec", "term", "--", "sh", "-c", "sleep 25; echo finished"]));
        up(&d, "agent", &[]);
        let sid = d.ok(&["new-chat", "agent", "--detach", "-m", "sleep a while"]);
        let sid = sid.trim().to_owned();
        up(&d, "idle", &[]);

        // The untouched one stops after its 6 s; the log and the reason say why.
        wait_stopped(&d, "idle", Duration::from_secs(30));
        let (_, reason) = state(&d, "idle");
        assert!(reason.contains("idle for 6 s"), "{reason}");
        let logs = d.ok(&["logs", "idle", "--events-only"]);
        assert!(
            logs.contains("idle for 6 s (no agent turn, terminal or client); stopping"),
            "{logs}"
        );
        // Meanwhile the attached command and the agent's turn (a 25 s tool call) keep
        // theirs running.
        assert!(
            t0.elapsed() < Duration::from_secs(25),
            "the setup took too long for this check"
        );
        assert_eq!(state(&d, "term").0, "running");
        let s: Vec<Value> = serde_json::from_str(&d.ok(&["sessions", "agent", "--json"])).unwrap();
        assert_eq!(state(&d, "agent").0, "running", "{s:?}");
        assert_eq!(s[0]["state"], "working", "{s:?}");
        up(&d, "never", &["--idle-stop", "0"]);
        up(&d, "control", &["--persistent"]);

        // The command ran to its end (a stop would have cut it), then the timer ran.
        let o = term.join().unwrap();
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(o.stdout, "finished\n");
        let ended = Instant::now();
        let stopped = wait_stopped(&d, "term", Duration::from_secs(30));
        assert!(
            stopped - ended >= Duration::from_secs(4),
            "term stopped {:?} after its terminal closed",
            stopped - ended
        );
        // The agent finished its turn before its workspace stopped.
        wait_stopped(&d, "agent", Duration::from_secs(60));
        let ev = d.session_events(&sid);
        assert!(
            ev.iter().any(|e| e["type"] == "assistant_text"
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Done sleeping."))),
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| e["type"] == "state" && e["state"] == "waiting_for_input"),
            "{ev:?}"
        );
        assert!(t0.elapsed() > Duration::from_secs(25));
        d.ok(&["up", "agent"]);
        let o = d.exec("agent", "cat /workspace/waited.txt");
        assert_eq!(
            o.stdout, "waited\n",
            "the agent's command ran to its end: {o:?}"
        );
    });
    // Never, and persistent: still running long after their idle time.
    assert_eq!(state(&d, "never").0, "running");
    assert_eq!(state(&d, "control").0, "running");

    // `kraal policy` shows and changes the setting; the next pass applies it.
    let shown = d.ok(&["policy", "never"]);
    assert!(shown.contains("idle stop:     never\n"), "{shown}");
    assert!(
        shown.contains("backup every:  never  (daemon default)"),
        "{shown}"
    );
    let shown = d.ok(&["policy", "control"]);
    assert!(shown.contains("never (persistent)"), "{shown}");
    let o = d.run(&["policy", "never", "--idle-stop", "2s"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr
            .contains("idle stop must be 0 (never) or at least 5 s"),
        "{}",
        o.stderr
    );
    let o = d.run(&["policy", "never", "--idle-stop", "soon"]);
    assert!(
        o.stderr.contains("cannot parse idle stop \"soon\""),
        "{}",
        o.stderr
    );
    let shown = d.ok(&["policy", "never", "--idle-stop", "5s"]);
    assert!(shown.contains("idle stop:     5 s"), "{shown}");
    wait_stopped(&d, "never", Duration::from_secs(30));
    let shown = d.ok(&["policy", "never", "--reset"]);
    assert!(shown.contains("6 s  (daemon default)"), "{shown}");

    // Starting a stopped workspace again clears the reason; the timer starts over.
    d.ok(&["up", "idle"]);
    let (st, reason) = state(&d, "idle");
    assert_eq!((st.as_str(), reason.as_str()), ("running", ""));
}

/// The id of the newest of `backups`.
fn newest_id<'a>(backups: impl Iterator<Item = &'a Value>) -> String {
    backups
        .max_by_key(|b| b["created_at"].as_str().unwrap().to_owned())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn backups_of(d: &Daemon, ws: &str) -> Vec<Value> {
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["backups", "ls", "--json"])).unwrap();
    all.into_iter().filter(|b| b["workspace"] == ws).collect()
}

#[test]
fn running_workspaces_are_backed_up_on_schedule_and_an_idle_stop_backs_up_first() {
    let d = Daemon::start_with_env(&[
        ("KRAAL_BACKUP_EVERY", "10s"),
        ("KRAAL_BACKUP_KEEP", "2"),
        ("KRAAL_IDLE_STOP", "0"),
        ("KRAAL_HOUSEKEEPING_SECS", "1"),
    ]);
    up(&d, "sched", &[]);
    wait_until(Duration::from_secs(30), "a first scheduled backup", || {
        !backups_of(&d, "sched").is_empty()
    });
    let manual = d.ok(&["backup", "sched"]);
    assert!(manual.contains("bk-"), "{manual}");
    let o = d.exec("sched", "echo second > /workspace/later.txt");
    assert_eq!(o.code, Some(0), "{o:?}");
    // Two more intervals: the oldest scheduled backup goes, the manual one stays.
    wait_until(Duration::from_secs(60), "the schedule to prune", || {
        d.ok(&["logs", "sched", "--events-only"])
            .contains("removed old scheduled backup")
    });
    let mine = backups_of(&d, "sched");
    let scheduled: Vec<_> = mine.iter().filter(|b| b["scheduled"] == true).collect();
    assert_eq!(scheduled.len(), 2, "{mine:?}");
    assert_eq!(
        mine.iter().filter(|b| b["scheduled"] == false).count(),
        1,
        "{mine:?}"
    );
    let table = d.ok(&["backups", "ls"]);
    assert!(
        table.contains("scheduled") && table.contains("manual"),
        "{table}"
    );
    let w = d.workspace("sched");
    assert!(w["last_backup_at"].as_str().is_some(), "{w}");
    assert_eq!(w["policy"]["backup_every_secs"], 10);
    // The newest scheduled backup has the file written after the manual one.
    let newest = newest_id(scheduled.iter().copied());
    d.ok(&["restore", &newest, "--as", "sched-copy"]);
    let o = d.exec("sched-copy", "cat /workspace/later.txt");
    assert_eq!(o.stdout, "second\n", "{o:?}");

    // An idle stop with a schedule backs up the last state before stopping.
    up(&d, "nap", &["--idle-stop", "8s", "--backup-every", "1h"]);
    wait_until(Duration::from_secs(30), "nap's first backup", || {
        !backups_of(&d, "nap").is_empty()
    });
    let o = d.exec("nap", "echo 'last words' > /workspace/last.txt");
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_stopped(&d, "nap", Duration::from_secs(60));
    let naps = backups_of(&d, "nap");
    assert_eq!(naps.len(), 2, "{naps:?}");
    let last = newest_id(naps.iter());
    d.ok(&["restore", &last, "--as", "nap-copy"]);
    let o = d.exec("nap-copy", "cat /workspace/last.txt");
    assert_eq!(o.stdout, "last words\n", "{o:?}");
}
