//! Test daemon, CLI runner and cleanup.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KRAAL: &str = env!("CARGO_BIN_EXE_kraal");

pub fn image_dir() -> String {
    std::env::var("KRAAL_TEST_IMAGE_DIR").unwrap_or_else(|_| "/var/tmp/kraal-test-images".into())
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Extra environment of `kraal serve` (model upstreams and credentials).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start() -> Daemon {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("kraal-it-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("kraal.sock");
        let mut d = Daemon {
            dir,
            socket,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        d.spawn();
        d
    }

    /// A daemon whose workspaces are QEMU microVMs (KVM when it really works, else TCG).
    pub fn start_qemu(env: &[(&str, &str)]) -> Daemon {
        let mut all = vec![("KRAAL_BACKEND", "qemu")];
        all.extend_from_slice(env);
        Self::start_with_env(&all)
    }

    /// Where the backend keeps per-workspace state (`workspaces` for gVisor, `vms` for
    /// microVMs).
    pub fn state_dir(&self) -> PathBuf {
        let qemu = self
            .env
            .iter()
            .any(|(k, v)| k == "KRAAL_BACKEND" && v == "qemu");
        self.data().join(if qemu { "vms" } else { "workspaces" })
    }

    pub fn serve_cmd(&self) -> Command {
        #[allow(clippy::disallowed_methods)]
        let mut c = Command::new(KRAAL);
        c.arg("serve")
            .env("KRAAL_DATA_DIR", self.data())
            .env("KRAAL_SOCKET", &self.socket)
            .env("KRAAL_IMAGE_DIR", image_dir())
            // The small image, with the host's agent CLIs mounted in; the image tests
            // build the full default image themselves.
            .env("KRAAL_IMAGE", "base")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["--reconcile-secs", "1", "--listen", "127.0.0.1:0"]);
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = self
            .serve_cmd()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(30), "daemon socket", || {
            UnixStream::connect(&self.socket).is_ok()
        });
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        #[allow(clippy::disallowed_methods)]
        let mut c = Command::new(KRAAL);
        c.args(args)
            .env("KRAAL_SOCKET", &self.socket)
            .env("KRAAL_CONFIG_DIR", self.dir.path().join("config"))
            .env_remove("KRAAL_HOST")
            .env_remove("KRAAL_CONTEXT")
            .stdin(Stdio::null());
        c
    }

    /// Runs the CLI with a deadline; never hangs the test.
    pub fn run(&self, args: &[&str]) -> Out {
        let mut c = self.cmd(args);
        run_bounded(&mut c, Duration::from_secs(300))
    }

    /// Runs the CLI with `input` on its standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Out {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stdin");
        std::fs::write(&f, input).unwrap();
        let mut c = self.cmd(args);
        c.stdin(std::fs::File::open(&f).unwrap());
        run_bounded(&mut c, Duration::from_secs(300))
    }

    /// Runs the CLI and asserts success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.code == Some(0),
            "kraal {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.log_tail()
        );
        o.stdout
    }

    pub fn exec(&self, ws: &str, script: &str) -> Out {
        self.run(&["exec", ws, "--", "sh", "-c", script])
    }

    /// A session's mirrored events, through `kraal events --json`.
    pub fn session_events(&self, sid: &str) -> Vec<serde_json::Value> {
        self.ok(&["events", sid, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls a session's events until `cond` holds (at most two minutes).
    pub fn wait_events(
        &self,
        sid: &str,
        what: &str,
        cond: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ev = self.session_events(sid);
            if cond(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events so far:\n{}\n{}",
                ev.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let start = s.len().saturating_sub(3000);
        format!("--- daemon log ---\n{}", &s[start..])
    }

    pub fn workspaces(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ls", "--json"])).unwrap()
    }

    pub fn workspace(&self, name: &str) -> serde_json::Value {
        self.workspaces()
            .into_iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no workspace {name}"))
    }

    /// A raw HTTP request on the daemon socket; returns status and body.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, dechunk(&body))
    }
}

fn dechunk(body: &str) -> String {
    // Tiny chunked-encoding decoder for small responses.
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((len, tail)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        if tail.len() < n {
            return body.to_owned();
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        cleanup_host_resources(&self.data());
    }
}

/// Removes sandboxes, network namespaces and mounts a test daemon left behind.
pub fn cleanup_host_resources(data: &Path) {
    // MicroVMs: their QEMU (the pid file names it) and TAP device.
    if let Ok(rd) = std::fs::read_dir(data.join("vms")) {
        for e in rd.flatten() {
            let pid = std::fs::read_to_string(e.path().join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(short) = name.strip_prefix("ws-") {
                #[allow(clippy::disallowed_methods)]
                let _ = Command::new("ip")
                    .args(["link", "del", &format!("kh{short}")])
                    .output();
            }
        }
    }
    let runsc_root = data.join("runsc");
    #[allow(clippy::disallowed_methods)]
    let list = Command::new("runsc")
        .arg(format!("--root={}", runsc_root.display()))
        .args(["list", "-quiet"])
        .output();
    if let Ok(out) = list {
        for id in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            #[allow(clippy::disallowed_methods)]
            let _ = Command::new("runsc")
                .arg(format!("--root={}", runsc_root.display()))
                .args(["delete", "-force", id])
                .output();
        }
    }
    if let Ok(rd) = std::fs::read_dir(data.join("workspaces")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(short) = name.strip_prefix("ws-") {
                #[allow(clippy::disallowed_methods)]
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("kraal-{short}")])
                    .output();
            }
            for mounted in ["rootfs", "volume"] {
                #[allow(clippy::disallowed_methods)]
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path().join(mounted))
                    .output();
            }
        }
    }
}

#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A loopback TCP port free right now (for a server a test starts next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run_bounded(c: &mut Command, limit: Duration) -> Out {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {c:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    };
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `cond` until it holds, panicking with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small git repository to create workspaces from.
pub fn git_repo(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(p.join("README.md"), "# demo\n").unwrap();
    std::fs::write(p.join("src/main.rs"), "fn main() {}\n").unwrap();
    let git = |args: &[&str]| {
        #[allow(clippy::disallowed_methods)]
        let o = Command::new("git")
            .args([
                "-c",
                "user.email=t@example.com",
                "-c",
                "user.name=Test",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "initial"]);
    p
}

/// How often each needle occurs in the memory of the host processes that make up a
/// workspace (`runsc`, `qemu`, `virtiofsd`, `firecracker` processes naming its id). For
/// gVisor every sandboxed process's memory is in the sentry's memory file (read through
/// its descriptor, holes skipped, so nothing is allocated); a microVM's memory is QEMU's
/// own; the processes' memory is read through `/proc/PID/mem`.
/// From the host, because inside the sandbox no process may read another's memory.
/// Returns the counts (only zero or not is exact) and the bytes read.
pub fn sandbox_memory_hits(ws_id: &str, needles: &[&str]) -> (Vec<u64>, u64) {
    use std::os::unix::fs::FileExt;
    let finders: Vec<memchr::memmem::Finder> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
        .collect();
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
    let mut hits = vec![0u64; needles.len()];
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    // Reads `[start, end)` of `f` in chunks, counting needles (also across chunks).
    let mut scan = |f: &std::fs::File, start: u64, end: u64, hits: &mut Vec<u64>| {
        let mut off = start;
        let mut carry: Vec<u8> = Vec::new();
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = match f.read_at(&mut buf[..want], off) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            scanned += n as u64;
            carry.extend_from_slice(&buf[..n]);
            for (i, fd) in finders.iter().enumerate() {
                hits[i] += fd.find_iter(&carry).count() as u64;
            }
            let keep = carry.len().min(overlap);
            carry = carry[carry.len() - keep..].to_vec();
            off += n as u64;
        }
    };
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let runtime = ["runsc", "qemu", "virtiofsd", "firecracker"]
            .iter()
            .any(|r| cmd.contains(r));
        if runtime && cmd.contains(ws_id) {
            pids.push((pid, cmd.contains("runsc")));
        }
    }
    assert!(!pids.is_empty(), "no sandbox process of {ws_id}");
    let gvisor = pids.iter().any(|(_, runsc)| *runsc);
    let mut memfds = 0;
    for (pid, _) in pids {
        // The memory file(s): only the parts that hold data.
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            if !target.to_string_lossy().starts_with("/memfd:") {
                continue;
            }
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            memfds += 1;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0) as i64;
            let mut pos = 0i64;
            use std::os::fd::AsRawFd;
            while pos < len {
                let Ok(data) =
                    nix::unistd::lseek(f.as_raw_fd(), pos, nix::unistd::Whence::SeekData)
                else {
                    break;
                };
                let hole = nix::unistd::lseek(f.as_raw_fd(), data, nix::unistd::Whence::SeekHole)
                    .unwrap_or(len);
                scan(&f, data as u64, hole as u64, &mut hits);
                pos = hole;
            }
        }
        // The process's own memory, except the memory-file mappings (reading those
        // through the mapping would fill their holes).
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
            continue;
        };
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            if !perms.starts_with('r')
                || line.contains("/memfd:")
                || line.ends_with("[vvar]")
                || line.ends_with("[vsyscall]")
            {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap();
            scan(
                &mem,
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                &mut hits,
            );
        }
    }
    assert!(
        !gvisor || memfds > 0,
        "found no memory file of {ws_id}'s sentry"
    );
    (hits, scanned)
}
