//! Faults inside one workspace stay inside it: a memory hog and a fork bomb hit that
//! workspace's own limits, a neighbour and the daemon keep answering, and the workspace
//! says what happened and comes back; a link outage and a daemon killed under 20 live
//! sessions lose nothing; a killed sandbox runtime (gVisor's sentry or its gofer) is
//! noticed and restarted with the volume intact, its neighbour untouched; a workspace that
//! fills its disk fills only its own volume. (A full microVM volume and a killed
//! hypervisor are in `qemu.rs`, a dead container process in `restart.rs`.)

use std::time::{Duration, Instant};

use crate::harness::*;

/// How long a trivial command takes in `ws`.
fn latency(d: &Daemon, ws: &str) -> Duration {
    let t0 = Instant::now();
    let o = d.exec(ws, "echo ok");
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    t0.elapsed()
}

/// Host processes of a workspace's gVisor sandbox whose command line names `kind`
/// (`runsc-sandbox`: the sentry, the sandbox's kernel; `runsc-gofer`: its file proxy).
fn runtime_pids(d: &Daemon, id: &str, kind: &str) -> Vec<i32> {
    let root = format!("--root={}", d.data().join("runsc").display());
    let mine = format!("/workspaces/{id}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // Both name the workspace's runsc log, under its state directory.
            (args.first().is_some_and(|a| a == kind)
                && args.contains(&root)
                && args.iter().any(|a| a.contains(&mine)))
            .then_some(pid)
        })
        .collect()
}

/// SIGKILL to a sandbox runtime process of one workspace, twice (the sentry, then the
/// gofer): each time the workspace shows why it restarted and comes back with its volume,
/// while a command in the neighbouring workspace runs to completion and the daemon answers.
#[test]
fn a_killed_sandbox_runtime_restarts_its_workspace_and_spares_the_neighbour() {
    let d = Daemon::start();
    let struck = git_repo(d.dir.path(), "struck");
    d.ok(&["up", struck.to_str().unwrap()]);
    d.ok(&["exec", "struck", "--", "sh", "-c", "echo kept > kept.txt"]);
    let bystander = git_repo(d.dir.path(), "bystander");
    d.ok(&["up", bystander.to_str().unwrap()]);
    let id = d.workspace("struck")["id"].as_str().unwrap().to_owned();

    std::thread::scope(|s| {
        // The neighbour counts to 40, one line a second, through both kills.
        let counting =
            s.spawn(|| d.exec("bystander", "for i in $(seq 40); do echo $i; sleep 1; done"));
        for (round, kind) in ["runsc-sandbox", "runsc-gofer"].into_iter().enumerate() {
            let pids = runtime_pids(&d, &id, kind);
            assert!(!pids.is_empty(), "no {kind} process for {id}");
            for pid in pids {
                #[allow(clippy::disallowed_methods)]
                let k = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output()
                    .unwrap();
                assert!(k.status.success(), "{k:?}");
            }
            wait_until(
                Duration::from_secs(90),
                &format!("the reconciler to restart the workspace after {kind} died"),
                || {
                    d.ok(&["logs", "struck", "--events-only"])
                        .matches("sandbox is not running; starting it again")
                        .count()
                        > round
                        && d.workspace("struck")["state"] == "running"
                },
            );
            let o = d.exec("struck", "cat kept.txt");
            assert_eq!(o.stdout, "kept\n", "after {kind} died: {o:?}");
            let (code, _) = d.http("GET", "/v1/workspaces", b"");
            assert_eq!(code, 200);
        }
        let c = counting.join().unwrap();
        let expected: String = (1..=40).map(|i| format!("{i}\n")).collect();
        assert_eq!(c.stdout, expected, "the neighbour's command: {c:?}");
        assert_eq!(c.code, Some(0), "{c:?}");
    });
    let logs = d.ok(&["logs", "struck", "--events-only"]);
    assert_eq!(logs.matches("running on gvisor").count(), 3, "{logs}");
    assert_eq!(d.workspace("bystander")["state"], "running");
    let logs = d.ok(&["logs", "bystander", "--events-only"]);
    assert_eq!(logs.matches("running on gvisor").count(), 1, "{logs}");
}

/// Free bytes of the file system holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// A gVisor workspace writing without end fills its own 64 MiB volume, not the host's
/// disk: the writer gets ENOSPC, the neighbour and the daemon go on, the host lost at most
/// the volume's size, and the workspace recovers once space is freed — across down/up.
#[test]
fn a_workspace_filling_its_disk_fills_only_its_own_volume() {
    let d = Daemon::start_with_env(&[("KRAAL_VOLUME_MIB", "64")]);
    let greedy = git_repo(d.dir.path(), "greedy");
    d.ok(&["up", greedy.to_str().unwrap()]);
    d.ok(&[
        "exec",
        "greedy",
        "--",
        "sh",
        "-c",
        "echo kept > kept.txt && sync",
    ]);
    let modest = git_repo(d.dir.path(), "modest");
    d.ok(&["up", modest.to_str().unwrap()]);
    let host_free = free_bytes(&d.data());

    let o = d.exec(
        "greedy",
        "dd if=/dev/zero of=fill bs=1M count=400 2>&1; echo status $?",
    );
    assert!(
        o.stdout.contains("No space left on device") && !o.stdout.contains("status 0"),
        "{o:?}"
    );
    let o = d.exec("greedy", "df -m /workspace | tail -1");
    let size_mib: u64 = o
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("df: {o:?}"));
    assert!(size_mib <= 64, "the volume is {size_mib} MiB: {o:?}");
    let lost = host_free.saturating_sub(free_bytes(&d.data()));
    assert!(
        lost < 80 << 20,
        "the host lost {} MiB to a 64 MiB volume",
        lost >> 20
    );
    // Further writes fail clearly; the neighbour writes and the daemon answers.
    let o = d.exec("greedy", "dd if=/dev/zero of=more bs=1M count=4");
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("No space left on device"), "{o:?}");
    let o = d.exec(
        "modest",
        "dd if=/dev/zero of=ten bs=1M count=10 2>/dev/null && wc -c < ten",
    );
    assert_eq!(o.stdout, "10485760\n", "{o:?}");
    assert_eq!(d.http("GET", "/v1/status", b"").0, 200);
    assert_eq!(d.workspace("greedy")["state"], "running");

    // Freed space is usable again, and the volume (a file system of its own) keeps its
    // files across down/up.
    let o = d.exec("greedy", "rm fill more && echo more > more.txt && sync");
    assert_eq!(o.code, Some(0), "{o:?}");
    d.ok(&["down", "greedy"]);
    let id = d.workspace("greedy")["id"].as_str().unwrap().to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/workspaces/{id}/volume")),
        "a stopped workspace's volume stays mounted"
    );
    d.ok(&["up", "greedy"]);
    let o = d.exec("greedy", "cat kept.txt more.txt");
    assert_eq!(o.stdout, "kept\nmore\n", "{o:?}");
    d.ok(&["rm", "--yes", "greedy"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id),
        "removed, yet still mounted: {mounts}"
    );
    assert!(!d.state_dir().join(&id).exists());
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

/// The daemon is killed (SIGKILL) while 20 real Claude Code sessions in 4 workspaces are
/// in the middle of a tool call and clients follow some of them. After the restart every
/// session finishes its turn, every mirror equals the guest's own log (no event lost, none
/// twice), and the following clients resumed where they were, without a gap.
#[test]
fn killing_the_daemon_under_20_live_sessions_loses_no_event() {
    // Every session gets the same answers: a 60 s tool call, then a closing text.
    let (_model, mut d) = crate::sessions::with_model_on(
        r##"{"turns": [], "side": [
            {"contains": "tool_result", "respond": [{"text": "Finished.", "chunk": 3, "delay_ms": 5}]},
            {"contains": "wait-task", "respond": [{"tool_use": {"name": "Bash", "input": {"command": "timeout 60 tail -f /dev/null; echo waited", "description": "Wait"}}}]}
        ]}"##,
        &[],
    );
    let mut sessions = Vec::new();
    for w in 0..4 {
        let name = format!("crowd{w}");
        let repo = git_repo(d.dir.path(), &name);
        d.ok(&["up", repo.to_str().unwrap()]);
        for s in 0..5 {
            let sid = d
                .ok(&[
                    "new-chat",
                    &name,
                    "--detach",
                    "-m",
                    &format!("wait-task {w}.{s}"),
                ])
                .trim()
                .to_owned();
            sessions.push((name.clone(), sid));
        }
    }
    // Clients following three of them.
    let followers: Vec<(String, std::path::PathBuf, std::process::Child)> = sessions
        .iter()
        .step_by(7)
        .map(|(_, sid)| {
            let out = d.dir.path().join(format!("follow-{sid}.jsonl"));
            let child = d
                .cmd(&["events", sid, "--follow", "--json"])
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (sid.clone(), out, child)
        })
        .collect();
    wait_until(
        Duration::from_secs(240),
        "all 20 sessions in their tool call",
        || {
            sessions.iter().all(|(_, sid)| {
                d.session_events(sid)
                    .iter()
                    .any(|e| e["type"] == "command_run")
            })
        },
    );
    d.kill9();
    std::thread::sleep(Duration::from_secs(2));
    d.spawn();
    for (ws, sid) in &sessions {
        let ev = d.wait_events(sid, "the turn to finish after the restart", |ev| {
            crate::sessions::turn_ended_in(ev, "waiting_for_input")
        });
        assert!(
            ev.iter()
                .any(|e| e["type"] == "assistant_text" && e["text"] == "Finished."),
            "{sid}: {ev:?}"
        );
        crate::sessions::assert_mirrored(&d, ws, sid);
    }
    for (sid, out, mut child) in followers {
        // Give the client a moment to print the last events, then stop it.
        let last = d.session_events(&sid).len();
        wait_until(Duration::from_secs(60), "the follower to catch up", || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .count()
                >= last
        });
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&out).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seqs,
            (1..=last as u64).collect::<Vec<_>>(),
            "{sid}: the follower missed or repeated events across the restart"
        );
    }
}
