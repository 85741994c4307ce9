//! The process table: spawning with pipes or a PTY, a replayable output log per process,
//! and the reaper that collects every exit status (the guest is PID 1 in its sandbox, so
//! orphans are reparented to it and must be reaped too).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kraal_protocol::{ErrorCode, ExecRequest, FrameKind, GuestError, ProcInfo, TtySize};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use crate::pty::{self, AsyncFdIo};

/// Output kept per process for reattaching clients.
const OUTPUT_CAP: usize = 8 * 1024 * 1024;
/// How long to wait for output pipes to close after the process exits (a background
/// grandchild may hold them open forever).
const EOF_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

pub struct OutputLog {
    entries: VecDeque<(u64, FrameKind, Bytes)>,
    bytes: usize,
    pub next_seq: u64,
    /// Attached readers and the last sequence each has sent on: while one is attached,
    /// the process is made to wait instead of output being dropped unread.
    cursors: std::collections::HashMap<u64, u64>,
    next_reader: u64,
}

impl OutputLog {
    /// Registers an attached reader starting after `after`; returns its key.
    pub fn attach_reader(&mut self, after: u64) -> u64 {
        self.next_reader += 1;
        self.cursors.insert(self.next_reader, after);
        self.next_reader
    }

    pub fn reader_at(&mut self, key: u64, seq: u64) {
        if let Some(c) = self.cursors.get_mut(&key) {
            *c = seq;
        }
    }

    pub fn detach_reader(&mut self, key: u64) {
        self.cursors.remove(&key);
    }

    /// Bytes the slowest attached reader has not sent yet (0 without readers).
    fn unread(&self) -> usize {
        let Some(min) = self.cursors.values().min() else {
            return 0;
        };
        self.entries
            .iter()
            .filter(|e| e.0 > *min)
            .map(|e| e.2.len())
            .sum()
    }

    fn push(&mut self, kind: FrameKind, data: Bytes) {
        self.bytes += data.len();
        self.entries.push_back((self.next_seq, kind, data));
        self.next_seq += 1;
        while self.bytes > OUTPUT_CAP {
            if let Some((_, _, d)) = self.entries.pop_front() {
                self.bytes -= d.len();
            }
        }
    }

    /// Entries with a sequence above `after`, and the oldest sequence still kept.
    pub fn since(&self, after: u64) -> (Vec<(u64, FrameKind, Bytes)>, u64) {
        let first = self.entries.front().map(|e| e.0).unwrap_or(self.next_seq);
        (
            self.entries
                .iter()
                .filter(|e| e.0 > after)
                .cloned()
                .collect(),
            first,
        )
    }
}

pub struct ProcState {
    pub output: OutputLog,
    pub exit: Option<Exit>,
    open_streams: usize,
    exited_at: Option<tokio::time::Instant>,
}

pub enum Input {
    Data(Bytes),
    Eof,
}

pub struct Proc {
    pub id: u64,
    pub pid: i32,
    pub argv: Vec<String>,
    pub tty: bool,
    pub started_ms: u64,
    pub state: Mutex<ProcState>,
    /// Bumped on every output chunk, end of file and exit.
    pub changed: watch::Sender<u64>,
    /// Notified when an attached reader has sent more (the output pump may go on).
    pub drained: tokio::sync::Notify,
    pub input: mpsc::Sender<Input>,
    /// Set while a write to the process's input is blocked (the process is not reading).
    pub writing_since: Mutex<Option<std::time::Instant>>,
    master_fd: Option<i32>,
    _master: Option<Arc<AsyncFdIo>>,
}

impl Proc {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the process exited and its output is complete (or the grace period for
    /// straggling pipe holders has passed).
    pub fn finished(&self) -> Option<Exit> {
        let st = self.state.lock().unwrap();
        let exit = st.exit?;
        let grace_over = st.exited_at.is_some_and(|t| t.elapsed() >= EOF_GRACE);
        (st.open_streams == 0 || grace_over).then_some(exit)
    }

    pub fn signal(&self, sig: i32) -> Result<(), GuestError> {
        let sig = Signal::try_from(sig).map_err(|_| {
            GuestError::new(ErrorCode::InvalidRequest, format!("unknown signal {sig}"))
        })?;
        // The process leads its own process group; signal the whole group so that a
        // shell's children get it too.
        nix::sys::signal::killpg(Pid::from_raw(self.pid), sig)
            .or_else(|_| nix::sys::signal::kill(Pid::from_raw(self.pid), sig))
            .map_err(|e| {
                GuestError::new(
                    ErrorCode::UnknownProcess,
                    format!("signal {}: {e}", self.pid),
                )
            })
    }

    pub fn resize(&self, size: TtySize) -> Result<(), GuestError> {
        let fd = self
            .master_fd
            .ok_or_else(|| GuestError::new(ErrorCode::InvalidRequest, "process has no terminal"))?;
        pty::resize(fd, size).map_err(|e| GuestError::io(&e, "tty"))
    }

    pub fn info(&self) -> ProcInfo {
        let st = self.state.lock().unwrap();
        ProcInfo {
            proc: self.id,
            pid: self.pid,
            argv: self.argv.clone(),
            tty: self.tty,
            running: st.exit.is_none(),
            exit_code: match st.exit {
                Some(Exit::Code(c)) => Some(c),
                _ => None,
            },
            exit_signal: match st.exit {
                Some(Exit::Signal(s)) => Some(s),
                _ => None,
            },
            started_ms: self.started_ms,
        }
    }
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, Arc<Proc>>,
    by_pid: HashMap<i32, u64>,
    /// Exit statuses of children reaped before they were registered.
    unclaimed: HashMap<i32, Exit>,
    next_id: u64,
}

#[derive(Default)]
pub struct Procs {
    table: Mutex<Table>,
    /// The image's environment, applied to every process before the request's own.
    base_env: Vec<(String, String)>,
    /// The image's user, whom commands and sessions run as (root when `None`).
    user: Option<RunAs>,
}

/// `first`, then the directories of `then` it lacks.
fn merge_path(first: &str, then: &str) -> String {
    let mut dirs: Vec<&str> = first.split(':').filter(|d| !d.is_empty()).collect();
    for d in then.split(':') {
        if !d.is_empty() && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs.join(":")
}

/// A user processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl RunAs {
    /// Looks `spec` (a name or uid) up in this system's `/etc/passwd`.
    pub fn lookup(spec: &str) -> Result<RunAs, String> {
        Self::lookup_in(
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            spec,
        )
    }

    fn lookup_in(passwd: &str, spec: &str) -> Result<RunAs, String> {
        let user = spec.split(':').next().unwrap_or(spec);
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && (f[0] == user || f[2] == user))
            .and_then(|f| {
                Some(RunAs {
                    name: f[0].to_owned(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_owned(),
                })
            })
            .ok_or_else(|| format!("user {user:?} is not in /etc/passwd"))
    }
}

/// The image's tools first, then the agent CLIs mounted by the host.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/kraal/agents/node_modules/.bin";

impl Procs {
    /// A process table whose processes all get `env` (after the defaults).
    pub fn with_env(env: Vec<(String, String)>) -> Procs {
        Procs {
            base_env: env,
            ..Procs::default()
        }
    }

    /// Commands and sessions run as `user` from now on (services still start as root).
    pub fn with_user(mut self, user: Option<RunAs>) -> Procs {
        self.user = user;
        self
    }

    pub fn get(&self, id: u64) -> Option<Arc<Proc>> {
        self.table.lock().unwrap().by_id.get(&id).cloned()
    }

    pub fn list(&self) -> Vec<ProcInfo> {
        let t = self.table.lock().unwrap();
        let mut v: Vec<_> = t.by_id.values().map(|p| p.info()).collect();
        v.sort_by_key(|p| p.proc);
        v
    }

    pub fn running(&self) -> Vec<Arc<Proc>> {
        let t = self.table.lock().unwrap();
        t.by_id
            .values()
            .filter(|p| p.state.lock().unwrap().exit.is_none())
            .cloned()
            .collect()
    }

    /// Starts a process as the image's user. Must be called from within the tokio runtime.
    pub fn spawn(
        self: &Arc<Self>,
        req: &ExecRequest,
        default_cwd: &str,
    ) -> Result<Arc<Proc>, GuestError> {
        let user = if req.as_root { None } else { self.user.clone() };
        self.spawn_as(req, default_cwd, user.as_ref())
    }

    /// Starts a process as `user` (root when `None`).
    pub fn spawn_as(
        self: &Arc<Self>,
        req: &ExecRequest,
        default_cwd: &str,
        user: Option<&RunAs>,
    ) -> Result<Arc<Proc>, GuestError> {
        let Some(program) = req.argv.first() else {
            return Err(GuestError::new(ErrorCode::InvalidRequest, "empty command"));
        };
        // The guest's process table is the one place the guest starts programs.
        #[allow(clippy::disallowed_methods)]
        let mut cmd = Command::new(program);
        cmd.args(&req.argv[1..]);
        cmd.env_clear();
        cmd.env("PATH", DEFAULT_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("USER", "root");
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        if req.tty.is_some() {
            cmd.env("TERM", "xterm-256color");
        }
        for (k, v) in self.base_env.iter().chain(&req.env) {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(GuestError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid environment variable {k:?}"),
                ));
            }
            cmd.env(k, v);
        }
        // A request's PATH (an agent's) keeps the image's directories after its own.
        if let (Some((_, img)), Some((_, want))) = (
            self.base_env.iter().rev().find(|(k, _)| k == "PATH"),
            req.env.iter().rev().find(|(k, _)| k == "PATH"),
        ) {
            cmd.env("PATH", merge_path(want, img));
        }
        let cwd = req.cwd.clone().unwrap_or_else(|| default_cwd.to_owned());
        if !std::path::Path::new(&cwd).is_dir() {
            return Err(GuestError::new(
                ErrorCode::NotFound,
                format!("working directory {cwd} does not exist"),
            ));
        }
        cmd.current_dir(&cwd);

        let mut readers: Vec<(FrameKind, Arc<AsyncFdIo>)> = Vec::new();
        let stdin_io: Arc<AsyncFdIo>;
        let mut master: Option<Arc<AsyncFdIo>> = None;

        let spawn_err = |e: std::io::Error| {
            GuestError::new(
                ErrorCode::SpawnFailed,
                format!("{program}: {}", describe_spawn(&e)),
            )
        };

        let mut table = self.table.lock().unwrap();
        let child = if let Some(size) = req.tty {
            let pty = nix::pty::openpty(Some(&pty::winsize(size)), None)
                .map_err(|e| GuestError::new(ErrorCode::SpawnFailed, format!("openpty: {e}")))?;
            let slave: OwnedFd = pty.slave;
            cmd.stdin(Stdio::from(slave.try_clone().map_err(spawn_err)?));
            cmd.stdout(Stdio::from(slave.try_clone().map_err(spawn_err)?));
            cmd.stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls (setsid, ioctl) run between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(spawn_err)?;
            let m = Arc::new(AsyncFdIo::new(pty.master).map_err(spawn_err)?);
            readers.push((FrameKind::Stdout, m.clone()));
            stdin_io = m.clone();
            master = Some(m);
            child
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()
                        .map(|_| ())
                        .map_err(std::io::Error::from)
                });
            }
            let mut child = cmd.spawn().map_err(spawn_err)?;
            let out: OwnedFd = child.stdout.take().expect("piped").into();
            let err: OwnedFd = child.stderr.take().expect("piped").into();
            let inp: OwnedFd = child.stdin.take().expect("piped").into();
            readers.push((
                FrameKind::Stdout,
                Arc::new(AsyncFdIo::new(out).map_err(spawn_err)?),
            ));
            readers.push((
                FrameKind::Stderr,
                Arc::new(AsyncFdIo::new(err).map_err(spawn_err)?),
            ));
            stdin_io = Arc::new(AsyncFdIo::new(inp).map_err(spawn_err)?);
            child
        };
        let pid = child.id() as i32;
        // The reaper collects the status; dropping the handle neither waits nor kills.
        drop(child);

        table.next_id += 1;
        let id = table.next_id;
        let (input_tx, input_rx) = mpsc::channel::<Input>(64);
        let (changed, _) = watch::channel(0u64);
        let early_exit = table.unclaimed.remove(&pid);
        let proc = Arc::new(Proc {
            id,
            pid,
            argv: req.argv.clone(),
            tty: req.tty.is_some(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            state: Mutex::new(ProcState {
                output: OutputLog {
                    entries: VecDeque::new(),
                    bytes: 0,
                    next_seq: 1,
                    cursors: Default::default(),
                    next_reader: 0,
                },
                exit: early_exit,
                open_streams: readers.len(),
                exited_at: early_exit.map(|_| tokio::time::Instant::now()),
            }),
            changed,
            drained: tokio::sync::Notify::new(),
            input: input_tx,
            writing_since: Mutex::new(None),
            master_fd: master.as_ref().map(|m| m.raw()),
            _master: master,
        });
        table.by_id.insert(id, proc.clone());
        table.by_pid.insert(pid, id);
        drop(table);

        for (kind, io) in readers {
            tokio::spawn(pump_output(proc.clone(), kind, io));
        }
        tokio::spawn(pump_input(proc.clone(), stdin_io, input_rx));
        Ok(proc)
    }

    /// Collects every exited child; statuses of registered processes are recorded, others
    /// (orphans reparented to PID 1) are just reaped.
    ///
    /// The table lock is taken before `waitpid`: `spawn_as` holds it across `Command::spawn`,
    /// whose failure path (exec failed) waits for its own child, so the reaper must never
    /// collect a child whose spawn is still in progress (std panics on the lost status).
    pub fn reap(&self) {
        loop {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid.as_raw(), Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid.as_raw(), Exit::Signal(sig as i32)),
                _ => continue,
            };
            match t
                .by_pid
                .remove(&pid)
                .and_then(|id| t.by_id.get(&id).cloned())
            {
                Some(p) => {
                    let mut st = p.state.lock().unwrap();
                    st.exit = Some(exit);
                    st.exited_at = Some(tokio::time::Instant::now());
                    drop(st);
                    p.bump();
                    // Wake waiters again once the grace period for open pipes is over.
                    let p2 = p.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(EOF_GRACE).await;
                        p2.bump();
                    });
                }
                None => {
                    t.unclaimed.insert(pid, exit);
                }
            }
        }
    }

    /// Forgets finished processes beyond the newest `keep`, so the table does not grow forever.
    pub fn prune(&self, keep: usize) {
        let mut t = self.table.lock().unwrap();
        let mut done: Vec<u64> = t
            .by_id
            .values()
            .filter(|p| p.state.lock().unwrap().exit.is_some())
            .map(|p| p.id)
            .collect();
        if done.len() <= keep {
            return;
        }
        done.sort_unstable();
        for id in &done[..done.len() - keep] {
            t.by_id.remove(id);
        }
        // Unclaimed statuses belong to orphans nobody will ask about.
        if t.unclaimed.len() > 1024 {
            t.unclaimed.clear();
        }
    }
}

fn describe_spawn(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "command not found".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

async fn pump_output(proc: Arc<Proc>, kind: FrameKind, io: Arc<AsyncFdIo>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A reader that falls behind (a slow client) slows the process down, like a pipe,
        // rather than losing output it has not seen.
        loop {
            let drained = proc.drained.notified();
            if proc.state.lock().unwrap().output.unread() < OUTPUT_CAP / 2 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), drained).await;
        }
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                proc.state
                    .lock()
                    .unwrap()
                    .output
                    .push(kind, Bytes::copy_from_slice(&buf[..n]));
                proc.bump();
            }
        }
    }
    proc.state.lock().unwrap().open_streams -= 1;
    proc.bump();
}

async fn pump_input(proc: Arc<Proc>, io: Arc<AsyncFdIo>, mut rx: mpsc::Receiver<Input>) {
    let is_tty = proc.tty;
    let mut io = Some(io);
    while let Some(msg) = rx.recv().await {
        match msg {
            Input::Data(b) => {
                if let Some(w) = &io {
                    *proc.writing_since.lock().unwrap() = Some(std::time::Instant::now());
                    let failed = w.write_all(&b).await.is_err();
                    *proc.writing_since.lock().unwrap() = None;
                    if failed {
                        io = None;
                    }
                }
            }
            Input::Eof => {
                if is_tty {
                    // A terminal has no separate end of input: send the EOF character.
                    if let Some(w) = &io {
                        let _ = w.write_all(&[4]).await;
                    }
                } else {
                    // Closing our end of the pipe is the process's end of input.
                    io = None;
                }
            }
        }
    }
}

/// Send SIGTERM to every running process, SIGKILL after `grace`, then flush file systems.
pub async fn shutdown(procs: &Procs, grace: Duration) {
    for p in procs.running() {
        let _ = p.signal(libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && !procs.running().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in procs.running() {
        let _ = p.signal(libc::SIGKILL);
    }
    nix::unistd::sync();
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_clis_are_on_the_default_path_after_the_image_tools() {
        let agents = kraal_protocol::AGENTS_BIN;
        assert!(agents.starts_with(kraal_protocol::AGENTS_DIR));
        assert!(super::DEFAULT_PATH.ends_with(&format!(":{agents}")));
        assert_eq!(crate::sessions::AGENT_PATH, agents);
    }
}
