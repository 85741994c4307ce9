//! The QEMU microVM backend end to end, under the accelerator the host really allows (TCG
//! on machines whose KVM cannot run a stock kernel): the same workspace suite and Claude
//! Code session as on gVisor, packages kept in the VM's root layer, the accelerator probe,
//! and faults — a killed QEMU, a full volume, a guest that never answers.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

fn qemu_pid(d: &Daemon, ws: &str) -> Option<i32> {
    let id = d.workspace(ws)["id"].as_str()?.to_owned();
    let pid: i32 = std::fs::read_to_string(d.state_dir().join(id).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// The process exists and is not a zombie (a daemonized QEMU is reaped by init).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        == Some(false)
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn the_workspace_suite_runs_in_a_qemu_microvm() {
    let d = Daemon::start_qemu(&[]);
    crate::lifecycle::exec_write_down_up_keeps_files(&d);

    // The VM's own kernel, disks and network; software installed outside the volume (the
    // root layer) survives down/up like the checkout does.
    d.ok(&["up", git_repo(d.dir.path(), "vm").to_str().unwrap()]);
    let w = d.workspace("vm");
    assert_eq!(w["backend"], "qemu", "{w}");
    let o = d.exec(
        "vm",
        "uname -r; findmnt -no SOURCE,FSTYPE /workspace; findmnt -no FSTYPE /; \
         echo 'echo tool from the root layer' > /usr/local/bin/vm-tool && chmod +x /usr/local/bin/vm-tool",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(
        lines[0].ends_with("-cloud-amd64"),
        "the Debian cloud kernel: {o:?}"
    );
    assert!(
        lines[1].starts_with("/dev/vd") && lines[1].ends_with("ext4"),
        "{o:?}"
    );
    assert_eq!(lines[2], "overlay", "shared image + writable layer: {o:?}");
    d.ok(&["down", "vm"]);
    assert_eq!(qemu_pid(&d, "vm"), None, "down ends the QEMU process");
    d.ok(&["up", "vm"]);
    let o = d.exec("vm", "vm-tool");
    assert_eq!(o.stdout, "tool from the root layer\n", "{o:?}");
    let logs = d.ok(&["logs", "vm"]);
    assert!(logs.contains("running on qemu"), "{logs}");
}

#[test]
fn claude_edits_files_in_a_qemu_microvm() {
    crate::sessions::claude_edits_files_suite(&[("KRAAL_BACKEND", "qemu")]);
}

/// `kraal host check` confirms KVM by booting the real guest kernel under it, bounded to
/// a few seconds; where that fails (this machine's KVM takes a toy guest but not a stock
/// kernel) it reports TCG, and `auto` keeps gVisor rather than emulating.
#[test]
fn the_accelerator_probe_is_bounded_and_picks_tcg_when_kvm_cannot_boot_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    #[allow(clippy::disallowed_methods)]
    let mut c = std::process::Command::new(KRAAL);
    c.args(["host", "check", "--json"])
        .env("KRAAL_DATA_DIR", dir.path())
        .env("KRAAL_IMAGE_DIR", image_dir())
        .env_remove("KRAAL_BACKEND")
        .env_remove("KRAAL_QEMU_ACCEL");
    // The kernel is cached by an earlier run or test; fetch it outside the timed run.
    let _ = run_bounded(&mut c, Duration::from_secs(300));
    let t0 = Instant::now();
    let o = run_bounded(&mut c, Duration::from_secs(60));
    let took = t0.elapsed();
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(took < Duration::from_secs(15), "host check took {took:?}");
    let r: Value = serde_json::from_str(&o.stdout).unwrap();
    let qemu = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "qemu")
        .unwrap();
    assert_eq!(qemu["usable"], true, "{qemu}");
    let details = qemu["details"].to_string();
    let kvm_expected = std::env::var_os("KRAAL_TEST_KVM").is_some();
    if kvm_expected {
        assert!(details.contains("accelerator kvm"), "{details}");
        assert_eq!(r["selected"], "qemu");
    } else {
        assert!(details.contains("accelerator tcg"), "{details}");
        assert_eq!(
            r["selected"], "gvisor",
            "auto prefers gVisor over emulation"
        );
    }
}

#[test]
fn a_full_volume_a_killed_qemu_and_a_silent_guest_are_clear_and_recoverable() {
    let d = Daemon::start_qemu(&[
        ("KRAAL_VOLUME_MIB", "64"),
        ("KRAAL_BOOT_TIMEOUT_SECS", "20"),
    ]);
    d.ok(&["up", git_repo(d.dir.path(), "faults").to_str().unwrap()]);
    assert_eq!(
        d.exec("faults", "echo kept > kept.txt && sync").code,
        Some(0)
    );

    // A full volume: the writer gets ENOSPC, the workspace goes on once space is freed.
    let o = d.exec(
        "faults",
        "dd if=/dev/zero of=fill bs=1M count=200 2>&1; echo status $?",
    );
    assert!(
        o.stdout.contains("No space left on device") && !o.stdout.contains("status 0"),
        "{o:?}"
    );
    // Until space is freed, writes fail clearly; the daemon is not affected.
    let o = d.exec("faults", "dd if=/dev/zero of=more bs=1M count=4");
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("No space left on device"), "{o:?}");
    assert_eq!(d.http("GET", "/v1/status", b"").0, 200);
    let o = d.exec(
        "faults",
        "rm fill more && echo more > more.txt && sync && cat kept.txt more.txt",
    );
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (Some(0), "kept\nmore\n"),
        "{o:?}"
    );

    // QEMU killed (like a power cut: what the guest synced is kept): the reconciler
    // notices and boots the VM again; the files are there.
    let pid = qemu_pid(&d, "faults").expect("QEMU runs");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(qemu_pid(&d, "faults").is_some_and(|p| p != pid)
        && d.workspace("faults")["state"] == "running")
    {
        assert!(
            Instant::now() < deadline,
            "the VM was not booted again:\n{}\n{}",
            d.run(&["logs", "faults"]).stdout,
            d.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = d.exec("faults", "cat kept.txt more.txt");
    assert_eq!(o.stdout, "kept\nmore\n", "{o:?}");
    let logs = d.ok(&["logs", "faults"]);
    assert!(
        logs.contains("sandbox is not running; starting it again"),
        "{logs}"
    );

    // A guest that never answers (its VM frozen while booting): the start fails within
    // the boot timeout with the console, the VM is not left behind, and `up` recovers.
    d.ok(&["down", "faults"]);
    let mut up = d.cmd(&["up", "faults"]);
    let child = up
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut frozen = None;
    wait_until(Duration::from_secs(60), "QEMU started", || {
        frozen = qemu_pid(&d, "faults");
        frozen.is_some()
    });
    // Its vCPUs stopped through QMP, like a guest kernel that hangs.
    let qmp = d
        .state_dir()
        .join(d.workspace("faults")["id"].as_str().unwrap())
        .join("qmp.sock");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut q = kraal_vm::qmp::Qmp::connect(&qmp).await.unwrap();
        q.execute("stop", None).await.unwrap();
    });
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not answer within 20 s") && stderr.contains("kraal up faults"),
        "{stderr}"
    );
    assert!(stderr.contains("console"), "the console is shown: {stderr}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(!alive(frozen.unwrap()), "the frozen VM was killed");
    assert_eq!(d.workspace("faults")["state"], "failed");
    d.ok(&["up", "faults"]);
    let o = d.exec("faults", "cat kept.txt more.txt");
    assert_eq!(o.stdout, "kept\nmore\n", "{o:?}");
}

/// A persistent control workspace: its address is reserved even while it is stopped (a
/// workspace created meanwhile gets another), it is back at the same address after a
/// daemon restart, and removing it needs `--force`.
#[test]
fn a_persistent_control_workspace_keeps_its_address_and_needs_force_to_go() {
    let mut d = Daemon::start_qemu(&[]);
    let repo = git_repo(d.dir.path(), "control");
    d.ok(&["up", repo.to_str().unwrap(), "--persistent"]);
    let w = d.workspace("control");
    assert_eq!(w["persistent"], true, "{w}");
    let addr = w["address"].as_str().unwrap().to_owned();

    d.ok(&["down", "control"]);
    d.ok(&["up", git_repo(d.dir.path(), "other").to_str().unwrap()]);
    assert_ne!(
        d.workspace("other")["address"].as_str().unwrap(),
        addr,
        "the stopped control workspace's address is not handed out"
    );
    d.ok(&["up", "control"]);
    assert_eq!(d.workspace("control")["address"].as_str().unwrap(), addr);

    // The daemon restarts; the VM keeps running and keeps its address.
    let pid = qemu_pid(&d, "control").unwrap();
    d.kill9();
    d.spawn();
    wait_until(Duration::from_secs(30), "control adopted", || {
        d.workspace("control")["state"] == "running"
    });
    assert_eq!(
        qemu_pid(&d, "control"),
        Some(pid),
        "the VM survived the daemon"
    );
    assert_eq!(d.workspace("control")["address"].as_str().unwrap(), addr);
    assert_eq!(d.exec("control", "cat README.md").stdout, "# demo\n");

    let o = d.run(&["rm", "control", "--yes"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr.contains("is persistent") && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    d.ok(&["rm", "control", "--yes", "--force"]);
    assert!(d.workspaces().iter().all(|w| w["name"] != "control"));
}

/// Host directories mounted into a workspace: read-only by default, writable with `:rw`,
/// through virtio-fs in a microVM and a bind mount in gVisor; bad mounts are refused
/// before anything is created.
#[test]
fn host_directories_are_mounted_read_only_unless_rw_on_both_backends() {
    for backend in ["qemu", "gvisor"] {
        let d = Daemon::start_with_env(&[("KRAAL_BACKEND", backend)]);
        let shared = d.dir.path().join("shared");
        let out = d.dir.path().join("out");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(shared.join("notes.txt"), "from the host\n").unwrap();
        let repo = git_repo(d.dir.path(), "mounts");
        d.ok(&[
            "up",
            repo.to_str().unwrap(),
            "--mount",
            &format!("{}:/mnt/shared", shared.display()),
            "--mount",
            &format!("{}:/mnt/out:rw", out.display()),
        ]);
        let w = d.workspace("mounts");
        assert_eq!(w["mounts"].as_array().unwrap().len(), 2, "{w}");
        let o = d.exec(
            "mounts",
            "cat /mnt/shared/notes.txt; echo no > /mnt/shared/x 2>/dev/null || echo refused; \
             echo made inside > /mnt/out/result.txt && sync",
        );
        assert_eq!(o.stdout, "from the host\nrefused\n", "{backend}: {o:?}");
        assert_eq!(
            std::fs::read_to_string(out.join("result.txt")).unwrap(),
            "made inside\n",
            "{backend}"
        );
        assert!(!shared.join("x").exists(), "{backend}");
        // Still there after down/up.
        d.ok(&["down", "mounts"]);
        d.ok(&["up", "mounts"]);
        assert_eq!(
            d.exec("mounts", "cat /mnt/shared/notes.txt").stdout,
            "from the host\n",
            "{backend}"
        );

        for (spec, why) in [
            (format!("{}:/workspace/x", shared.display()), "reserved"),
            (
                format!("{}/missing:/mnt/m", shared.display()),
                "not a directory",
            ),
            (
                format!("{}:/mnt/a:rx", shared.display()),
                "neither ro nor rw",
            ),
        ] {
            let o = d.run(&[
                "up",
                repo.to_str().unwrap(),
                "--name",
                "bad",
                "--mount",
                &spec,
            ]);
            assert_ne!(o.code, Some(0));
            assert!(o.stderr.contains(why), "{backend} {spec}: {}", o.stderr);
        }
        assert!(d.workspaces().iter().all(|w| w["name"] != "bad"));
    }
}

/// `kraal snapshot` and `kraal restore`: a running process and the files come back as
/// they were; bad names and missing snapshots are clear errors; gVisor on the host's
/// network stack says what it needs.
#[test]
fn snapshot_and_restore_from_the_cli() {
    let d = Daemon::start_qemu(&[]);
    d.ok(&["up", git_repo(d.dir.path(), "snap").to_str().unwrap()]);
    let o = d.exec(
        "snap",
        "echo before > state.txt; sync; sleep 1000 >/dev/null 2>&1 & echo $!",
    );
    let pid = o.stdout.trim().to_owned();
    let out = d.ok(&["snapshot", "snap", "s1"]);
    assert!(out.contains("snapshot s1 of snap saved"), "{out}");
    let o = d.exec(
        "snap",
        &format!(
            "echo after > state.txt; kill {pid}; sleep 0.3; kill -0 {pid} 2>/dev/null || echo gone"
        ),
    );
    assert_eq!(o.stdout, "gone\n", "{o:?}");
    let out = d.ok(&["restore", "snap", "s1"]);
    assert!(out.contains("back at snapshot s1"), "{out}");
    let o = d.exec(
        "snap",
        &format!("cat state.txt; kill -0 {pid} && echo alive"),
    );
    assert_eq!(o.stdout, "before\nalive\n", "{o:?}");
    assert_eq!(d.workspace("snap")["state"], "running");
    let logs = d.ok(&["logs", "snap"]);
    assert!(
        logs.contains("snapshot s1 taken") && logs.contains("restored snapshot s1"),
        "{logs}"
    );

    let o = d.run(&["snapshot", "snap", "../evil"]);
    assert!(o.stderr.contains("invalid snapshot name"), "{}", o.stderr);
    let o = d.run(&["restore", "snap", "nope"]);
    assert!(
        o.stderr.contains("no snapshot named \"nope\""),
        "{}",
        o.stderr
    );
    // The failed restore left the workspace usable.
    wait_until(Duration::from_secs(90), "running again", || {
        d.workspace("snap")["state"] == "running"
    });
    assert_eq!(d.exec("snap", "cat state.txt").stdout, "before\n");

    let g = Daemon::start();
    g.ok(&["up", git_repo(g.dir.path(), "gv").to_str().unwrap()]);
    let o = g.run(&["snapshot", "gv", "s1"]);
    assert!(
        o.stderr
            .contains("gvisor backend does not support snapshots on the host's network stack")
            && o.stderr.contains("--gvisor-network sandbox"),
        "{}",
        o.stderr
    );
}
