//! Faults inside one workspace stay inside it: a memory hog and a fork bomb hit that
//! workspace's own limits, a neighbour and the daemon keep answering, and the workspace
//! says what happened and comes back.

use std::time::{Duration, Instant};

use crate::harness::*;

/// How long a trivial command takes in `ws`.
fn latency(d: &Daemon, ws: &str) -> Duration {
    let t0 = Instant::now();
    let o = d.exec(ws, "echo ok");
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    t0.elapsed()
}

#[test]
fn a_memory_hog_and_a_fork_bomb_stay_inside_their_workspace() {
    let d = Daemon::start();
    let victim = git_repo(d.dir.path(), "victim");
    d.ok(&[
        "up",
        victim.to_str().unwrap(),
        "--memory",
        "256M",
        "--pids",
        "128",
    ]);
    let bystander = git_repo(d.dir.path(), "bystander");
    d.ok(&["up", bystander.to_str().unwrap()]);
    let calm = latency(&d, "bystander");

    // A process that wants 1 GiB in a 256 MiB workspace is killed; nothing else is.
    let o = d.exec(
        "victim",
        "head -c 1073741824 /dev/zero | tail > /dev/null; echo \"exit $?\"",
    );
    assert!(
        o.stdout.contains("exit 137") || o.code != Some(0),
        "the hog was not stopped by the memory limit: {o:?}"
    );
    eprintln!("HOG {o:?}");
    wait_until(Duration::from_secs(60), "the victim running again", || {
        d.workspace("victim")["state"] == "running"
    });
    assert!(latency(&d, "victim") < Duration::from_secs(30));

    // A fork bomb, cut off after 15 s, runs into the process limit.
    std::thread::scope(|s| {
        let bomb = s.spawn(|| {
            d.exec(
                "victim",
                "timeout -s KILL 15 sh -c 'f(){ f | f & }; f' 2>/dev/null; echo detonated",
            )
        });
        std::thread::sleep(Duration::from_secs(5));
        // Meanwhile: the neighbour and the daemon answer.
        let during = latency(&d, "bystander");
        assert!(
            during < calm + Duration::from_secs(10),
            "the bystander slowed from {calm:?} to {during:?}"
        );
        let (code, _) = d.http("GET", "/v1/workspaces", b"");
        assert_eq!(code, 200);
        let b = bomb.join().unwrap();
        assert!(
            b.stdout.contains("detonated")
                || b.stderr.contains("workspace victim restarted while it ran"),
            "{b:?}"
        );
    });
    // The victim's processes may still be at their limit; a restart clears them.
    d.ok(&["down", "victim"]);
    d.ok(&["up", "victim"]);
    assert!(latency(&d, "victim") < Duration::from_secs(30));
    let o = d.exec("victim", "cat README.md");
    assert_eq!(o.stdout, "# demo\n", "the volume survived: {o:?}");
    let logs = d.ok(&["logs", "victim", "--events-only"]);
    assert!(
        logs.contains("sandbox is not running; starting it again"),
        "{logs}"
    );
    assert_eq!(d.workspace("bystander")["state"], "running");
}

/// The link between the daemon and a workspace goes down for 30 s while a command
/// prints and an agent runs a tool: afterwards the command's output is complete and in
/// order, and the session's mirror equals the guest's own log — nothing lost.
#[test]
fn a_30_second_link_outage_loses_no_output_and_no_event() {
    let (_model, d) = crate::sessions::with_model_on(
        r##"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "timeout 40 tail -f /dev/null; echo waited", "description": "Wait"}}}]},
            {"respond": [{"text": "Back after the outage.", "chunk": 4, "delay_ms": 10}]}
        ]}"##,
        &[],
    );
    let repo = git_repo(d.dir.path(), "link");
    d.ok(&["up", repo.to_str().unwrap()]);
    let id = d.workspace("link")["id"].as_str().unwrap().to_owned();
    let veth = format!("kh{}", id.trim_start_matches("ws-"));
    let ip = |state: &str| {
        #[allow(clippy::disallowed_methods)] // test: cutting the link
        let o = std::process::Command::new("ip")
            .args(["link", "set", &veth, state])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    std::thread::scope(|s| {
        let printer = s.spawn(|| {
            d.exec(
                "link",
                "for i in $(seq 1 45); do echo line $i; sleep 1; done",
            )
        });
        let sid = d
            .ok(&["new-chat", "link", "--detach", "-m", "wait a while"])
            .trim()
            .to_owned();
        std::thread::sleep(Duration::from_secs(5));
        ip("down");
        std::thread::sleep(Duration::from_secs(30));
        ip("up");
        let o = printer.join().unwrap();
        assert_eq!(o.code, Some(0), "{o:?}");
        let expected: String = (1..=45).map(|i| format!("line {i}\n")).collect();
        assert_eq!(o.stdout, expected, "output lost or reordered: {o:?}");
        let ev = d.wait_events(&sid, "the turn after the outage", |ev| {
            crate::sessions::turn_ended_in(ev, "waiting_for_input")
        });
        assert!(
            ev.iter()
                .any(|e| e["type"] == "assistant_text" && e["text"] == "Back after the outage."),
            "{ev:?}"
        );
        crate::sessions::assert_mirrored(&d, "link", &sid);
    });
}
