//! Create, exec, persist across down/up, remove; git sources; limits; the PTY shell.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn local_repo_exec_write_down_up_keeps_files() {
    exec_write_down_up_keeps_files(&Daemon::start());
}

/// The workspace suite every backend passes: create from a local repository, exec with
/// separate streams, exit codes and stdin, down (volume kept, exec refused with a hint),
/// up (files back), logs with the guest's console, rm (state removed).
pub fn exec_write_down_up_keeps_files(d: &Daemon) {
    let repo = git_repo(d.dir.path(), "proj");
    let out = d.ok(&["up", repo.to_str().unwrap()]);
    assert!(out.contains("workspace proj created and running"), "{out}");

    let st = d.exec("proj", "git status");
    assert_eq!(st.code, Some(0), "{st:?}");
    assert!(
        st.stdout.contains("On branch main") && st.stdout.contains("nothing to commit"),
        "{}",
        st.stdout
    );

    // stdout and stderr stay apart; the exit code comes back.
    let o = d.exec("proj", "echo out; echo err >&2; exit 7");
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (Some(7), "out\n", "err\n")
    );

    // stdin is forwarded.
    let mut c = d.cmd(&["exec", "proj", "--", "sh", "-c", "cat > notes.txt"]);
    c.stdin(std::process::Stdio::piped());
    let mut child = c.stdout(std::process::Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"written through stdin\n")
        .unwrap();
    assert!(child.wait().unwrap().success());

    assert_eq!(
        d.ok(&["ls", "--json"]).matches("\"running\"").count(),
        2,
        "state and desired are running"
    );
    d.ok(&["down", "proj"]);
    let w = d.workspace("proj");
    assert_eq!(w["state"], "stopped");
    assert!(w["address"].is_null());
    let e = d.run(&["exec", "proj", "--no-start", "--", "true"]);
    assert_ne!(e.code, Some(0));
    assert!(
        e.stderr
            .contains("workspace proj is stopped and --no-start was given")
            && e.stderr.contains("kraal up proj"),
        "{}",
        e.stderr
    );
    assert_eq!(d.workspace("proj")["state"], "stopped");

    d.ok(&["up", "proj"]);
    let o = d.exec("proj", "cat notes.txt && git status --short");
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "written through stdin\n?? notes.txt\n");

    let logs = d.ok(&["logs", "proj"]);
    assert!(
        logs.contains("created from") && logs.contains("stopped; volume kept"),
        "{logs}"
    );
    assert!(
        logs.contains("kraal-guest"),
        "console shows the guest agent: {logs}"
    );

    d.ok(&["rm", "proj", "--yes"]);
    assert!(d.workspaces().is_empty());
    assert!(
        !d.state_dir().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("ws-")),
        "volume removed"
    );
}

#[test]
fn git_url_sources_are_cloned() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "upstream");
    let url = format!("file://{}", repo.display());
    d.ok(&["up", &url, "--name", "cloned"]);
    let o = d.exec(
        "cloned",
        "git log --oneline | wc -l; cat README.md; git remote get-url origin",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, format!("1\n# demo\n{url}\n"));
}

#[test]
fn resource_limits_apply() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "lim");
    d.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--memory",
        "384M",
        "--cpus",
        "0.5",
        "--pids",
        "64",
    ]);
    let o = d.exec("lim", "grep MemTotal /proc/meminfo");
    assert!(o.stdout.contains(&format!("{} kB", 384 * 1024)), "{o:?}");
    let id = d.workspace("lim")["id"].as_str().unwrap().to_owned();
    let cg = |ctl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}/kraal/{id}/{file}"))
            .ok()
            .or_else(|| std::fs::read_to_string(format!("/sys/fs/cgroup/kraal/{id}/{file}")).ok())
    };
    if let Some(q) = cg("cpu", "cpu.cfs_quota_us") {
        assert_eq!(q.trim(), "50000");
        assert_eq!(cg("pids", "pids.max").unwrap().trim(), "64");
    } else {
        assert_eq!(cg("", "cpu.max").unwrap().trim(), "50000 100000");
        assert_eq!(cg("", "pids.max").unwrap().trim(), "64");
    }
    // The pid limit holds inside: 80 sleepers cannot all start.
    let o = d.exec(
        "lim",
        "n=0; for i in $(seq 1 80); do sleep 5 & n=$((n+1)); done 2>/dev/null; echo started",
    );
    assert!(
        o.stderr.contains("fork")
            || o.stderr.contains("Resource temporarily unavailable")
            || o.code != Some(0),
        "{o:?}"
    );
}

#[test]
fn shell_is_an_interactive_pty() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "sh");
    d.ok(&["up", repo.to_str().unwrap()]);
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = pty.slave;
    let mut c = d.cmd(&["shell", "sh"]);
    c.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    drop(c);
    let mut master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    let mut seen = String::new();
    let read_until = |master: &mut std::fs::File, seen: &mut String, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?} in {seen:?}"
            );
            let mut pfd = [nix::poll::PollFd::new(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(200u16)).unwrap() > 0 {
                match master.read(&mut buf) {
                    Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                    _ => {}
                }
            }
        }
    };
    master
        .write_all(b"stty size; tty; echo answer=$((6*7))\r")
        .unwrap();
    read_until(&mut master, &mut seen, "answer=42");
    assert!(
        seen.contains("30 100"),
        "terminal size is passed through: {seen:?}"
    );
    assert!(seen.contains("/dev/pts/"), "a real pty: {seen:?}");
    master.write_all(b"exit 4\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st.code(), Some(4));
}
