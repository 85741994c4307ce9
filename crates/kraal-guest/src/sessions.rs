//! Agent sessions inside the sandbox: runs each agent CLI through its adapter, keeps an
//! append-only, sequence-numbered event log per session on the workspace volume
//! (`.kraal/sessions/<id>/events.jsonl`), serves it to subscribers from any sequence
//! number, and supervises the agent with watchdogs.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kraal_core::{
    AgentEvent, AgentKind, AgentSpec, Attachment, SessionEvent, SessionInput, SessionState,
};

/// Largest image handed to an agent inline (the model APIs refuse bigger ones); larger
/// images are named by path instead.
const MAX_INLINE_IMAGE: u64 = 5 * 1024 * 1024;
use kraal_protocol::{ErrorCode, ExecRequest, FrameKind, GuestError, Launch, SessionInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::procs::{Exit, Input, Proc, Procs};

/// Where the agent CLIs (and the Node.js they run on) mounted by the host live; searched
/// before the image's own PATH.
pub(crate) const AGENT_PATH: &str = kraal_protocol::AGENTS_BIN;
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of the agent's standard error kept to explain a failure.
const STDERR_TAIL: usize = 4096;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `meta.json`: what the session is; never holds credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    spec: AgentSpec,
    created_ms: u64,
}

enum Ctl {
    Input(SessionInput),
    Stop,
}

struct Log {
    events: Vec<SessionEvent>,
    file: Option<std::fs::File>,
    state: SessionState,
    agent_session: Option<String>,
}

pub struct Session {
    meta: Meta,
    dir: PathBuf,
    log: Mutex<Log>,
    /// The newest sequence number, for subscribers.
    pub changed: watch::Sender<u64>,
    ctl: Mutex<Option<mpsc::UnboundedSender<Ctl>>>,
}

impl Session {
    /// Appends events with the next sequence numbers and tells subscribers.
    fn append(&self, events: Vec<AgentEvent>) {
        if events.is_empty() {
            return;
        }
        let last = {
            let mut log = self.log.lock().unwrap();
            let mut buf = Vec::new();
            for event in events {
                match &event {
                    AgentEvent::State { state, .. } => log.state = *state,
                    AgentEvent::AgentSession { id } => log.agent_session = Some(id.clone()),
                    _ => {}
                }
                let seq = log.events.len() as u64 + 1;
                let e = SessionEvent {
                    seq,
                    at_ms: now_ms(),
                    event,
                };
                if let Ok(mut line) = serde_json::to_vec(&e) {
                    line.push(b'\n');
                    buf.extend_from_slice(&line);
                }
                log.events.push(e);
            }
            if let Some(f) = log.file.as_mut()
                && let Err(e) = f.write_all(&buf)
            {
                eprintln!(
                    "kraal-guest: session {}: cannot append to its log: {e}",
                    self.meta.id
                );
            }
            log.events.len() as u64
        };
        self.changed.send_replace(last);
    }

    /// Events with `seq > after`.
    pub fn since(&self, after: u64) -> Vec<SessionEvent> {
        let log = self.log.lock().unwrap();
        let from = (after as usize).min(log.events.len());
        log.events[from..].to_vec()
    }

    pub fn info(&self) -> SessionInfo {
        let log = self.log.lock().unwrap();
        SessionInfo {
            id: self.meta.id.clone(),
            agent: self.meta.spec.agent,
            state: log.state,
            last_seq: log.events.len() as u64,
            agent_session: log.agent_session.clone(),
            running: self.ctl.lock().unwrap().is_some(),
            created_ms: self.meta.created_ms,
        }
    }

    fn state(&self) -> SessionState {
        self.log.lock().unwrap().state
    }
}

pub struct Sessions {
    dir: PathBuf,
    /// Where agents work unless their spec says otherwise (the file root, `/workspace`).
    workdir: PathBuf,
    procs: Arc<Procs>,
    map: Mutex<HashMap<String, Arc<Session>>>,
}

fn unknown(id: &str) -> GuestError {
    GuestError::new(ErrorCode::UnknownSession, format!("no session {id:?}"))
}

impl Sessions {
    /// Loads the sessions kept under `dir`. A session whose turn was cut short by a
    /// sandbox stop gets a closing state event, so no client waits on it forever.
    pub fn load(dir: PathBuf, workdir: PathBuf, procs: Arc<Procs>) -> Self {
        let mut map = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                match load_one(&entry.path()) {
                    Ok(s) => {
                        let s = Arc::new(s);
                        if matches!(
                            s.state(),
                            SessionState::Working
                                | SessionState::NeedsApproval
                                | SessionState::Starting
                        ) {
                            s.append(vec![AgentEvent::State {
                                state: SessionState::WaitingForInput,
                                reason: Some(
                                    "the workspace stopped during the turn; send a message to continue"
                                        .into(),
                                ),
                            }]);
                        }
                        map.insert(s.meta.id.clone(), s);
                    }
                    Err(e) => eprintln!(
                        "kraal-guest: skipping session {}: {e}",
                        entry.path().display()
                    ),
                }
            }
        }
        Sessions {
            dir,
            workdir,
            procs,
            map: Mutex::new(map),
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, GuestError> {
        self.map
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .unwrap()
            .values()
            .map(|s| s.info())
            .collect();
        v.sort_by_key(|s| s.created_ms);
        v
    }

    pub fn start(
        &self,
        id: &str,
        spec: AgentSpec,
        message: Option<String>,
        launch: Launch,
    ) -> Result<SessionInfo, GuestError> {
        let valid_id = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_id {
            return Err(GuestError::new(
                ErrorCode::InvalidRequest,
                format!("invalid session id {id:?}"),
            ));
        }
        if self.map.lock().unwrap().contains_key(id) {
            return Err(GuestError::new(
                ErrorCode::AlreadyExists,
                format!("session {id} already exists"),
            ));
        }
        let dir = self.dir.join(id);
        let io = |e: std::io::Error| GuestError::io(&e, &dir.display().to_string());
        std::fs::create_dir_all(&dir).map_err(io)?;
        exclude_from_git(&self.dir);
        let meta = Meta {
            id: id.to_owned(),
            spec,
            created_ms: now_ms(),
        };
        let tmp = dir.join("meta.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&tmp, dir.join("meta.json")).map_err(io)?;
        let file = open_log(&dir).map_err(io)?;
        let session = Arc::new(Session {
            meta,
            dir,
            log: Mutex::new(Log {
                events: Vec::new(),
                file: Some(file),
                state: SessionState::Starting,
                agent_session: None,
            }),
            changed: watch::channel(0).0,
            ctl: Mutex::new(None),
        });
        self.map
            .lock()
            .unwrap()
            .insert(id.to_owned(), session.clone());
        self.launch(&session, launch);
        if let Some(text) = message {
            self.send(&session, SessionInput::message(text))?;
        }
        Ok(session.info())
    }

    /// Delivers input; a message to a stopped agent relaunches it to resume.
    pub fn input(
        &self,
        id: &str,
        mut input: SessionInput,
        launch: Launch,
    ) -> Result<(), GuestError> {
        let s = self.get(id)?;
        if let SessionInput::Message { attachments, .. } = &mut input {
            self.load_attachments(attachments)?;
        }
        let running = s.ctl.lock().unwrap().is_some();
        if !running {
            match input {
                SessionInput::Message { .. } => self.launch(&s, launch),
                SessionInput::Interrupt => return Ok(()),
                SessionInput::Approval { request_id, .. } => {
                    return Err(GuestError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "approval request {request_id:?} expired: the agent is not running"
                        ),
                    ));
                }
            }
        }
        self.send(&s, input)
    }

    /// Reads the images among `attachments` so adapters can send them inline; every
    /// attachment must be a regular file in the attachment directory.
    fn load_attachments(&self, attachments: &mut [Attachment]) -> Result<(), GuestError> {
        for a in attachments {
            a.validate()
                .map_err(|e| GuestError::new(ErrorCode::InvalidRequest, e))?;
            let p = crate::files::resolve(&self.workdir, &a.path, false)?;
            let md = std::fs::symlink_metadata(&p).map_err(|e| GuestError::io(&e, &a.path))?;
            if !md.is_file() {
                return Err(GuestError::new(
                    ErrorCode::InvalidRequest,
                    format!("attachment {} is not a regular file", a.path),
                ));
            }
            a.size = md.len();
            a.data = None;
            if a.is_image() && md.len() <= MAX_INLINE_IMAGE {
                a.data = Some(std::fs::read(&p).map_err(|e| GuestError::io(&e, &a.path))?);
            }
        }
        Ok(())
    }

    pub fn stop(&self, id: &str) -> Result<(), GuestError> {
        let s = self.get(id)?;
        if let Some(tx) = s.ctl.lock().unwrap().as_ref() {
            let _ = tx.send(Ctl::Stop);
        }
        Ok(())
    }

    fn send(&self, s: &Arc<Session>, input: SessionInput) -> Result<(), GuestError> {
        let guard = s.ctl.lock().unwrap();
        let tx = guard.as_ref().ok_or_else(|| {
            GuestError::new(ErrorCode::InvalidRequest, "the agent is not running")
        })?;
        tx.send(Ctl::Input(input))
            .map_err(|_| GuestError::new(ErrorCode::InvalidRequest, "the agent is not running"))
    }

    /// Starts the agent process and its driver. Inputs sent before the process is up are
    /// buffered in the control channel, so nothing is lost during start-up.
    fn launch(&self, s: &Arc<Session>, launch: Launch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut guard = s.ctl.lock().unwrap();
        if guard.is_some() {
            return;
        }
        *guard = Some(tx);
        drop(guard);
        let resume = s.log.lock().unwrap().agent_session.clone();
        // Adapters tell some agents their working directory; give them the real one.
        let mut spec = s.meta.spec.clone();
        spec.cwd
            .get_or_insert_with(|| self.workdir.to_string_lossy().into_owned());
        let adapter = kraal_agents::adapter(&spec, resume.clone());
        tokio::spawn(drive(
            s.clone(),
            self.procs.clone(),
            (adapter, resume),
            rx,
            launch,
            spec,
        ));
    }
}

fn open_log(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("events.jsonl"))
}

/// Keeps kraal's own files out of the user's `git status`.
fn exclude_from_git(sessions_dir: &Path) {
    let Some(root) = sessions_dir.parent().and_then(Path::parent) else {
        return;
    };
    let info = root.join(".git/info");
    if !root.join(".git").is_dir() {
        return;
    }
    let exclude = info.join("exclude");
    let current = std::fs::read_to_string(&exclude).unwrap_or_default();
    if current.lines().any(|l| l.trim() == "/.kraal/") {
        return;
    }
    let _ = std::fs::create_dir_all(&info);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&exclude)
    {
        let sep = if current.is_empty() || current.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let _ = writeln!(f, "{sep}/.kraal/");
    }
}

fn load_one(dir: &Path) -> Result<Session, String> {
    let meta: Meta = serde_json::from_slice(
        &std::fs::read(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?,
    )
    .map_err(|e| format!("meta.json: {e}"))?;
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
    let mut events: Vec<SessionEvent> = Vec::new();
    let mut state = SessionState::Starting;
    let mut agent_session = None;
    for line in text.lines() {
        // A torn final line (power loss mid-append) is dropped; order is by position.
        let Ok(mut e) = serde_json::from_str::<SessionEvent>(line) else {
            continue;
        };
        e.seq = events.len() as u64 + 1;
        match &e.event {
            AgentEvent::State { state: s, .. } => state = *s,
            AgentEvent::AgentSession { id } => agent_session = Some(id.clone()),
            _ => {}
        }
        events.push(e);
    }
    // Rewrite a log that had a torn line, so positions and sequence numbers agree again.
    if text.lines().count() != events.len() || (!text.is_empty() && !text.ends_with('\n')) {
        let mut clean = Vec::new();
        for e in &events {
            clean.extend(serde_json::to_vec(e).unwrap_or_default());
            clean.push(b'\n');
        }
        let tmp = dir.join("events.jsonl.tmp");
        std::fs::write(&tmp, &clean).map_err(|e| format!("events.jsonl: {e}"))?;
        std::fs::rename(&tmp, dir.join("events.jsonl"))
            .map_err(|e| format!("events.jsonl: {e}"))?;
    }
    let file = open_log(dir).map_err(|e| format!("events.jsonl: {e}"))?;
    let last = events.len() as u64;
    Ok(Session {
        meta,
        dir: dir.to_owned(),
        log: Mutex::new(Log {
            events,
            file: Some(file),
            state,
            agent_session,
        }),
        changed: watch::channel(last).0,
        ctl: Mutex::new(None),
    })
}

/// Supervision state of one agent run.
struct Run {
    proc: Arc<Proc>,
    /// `transcript.jsonl`, when the spec asks for one.
    transcript: Option<std::fs::File>,
    out_seq: u64,
    line: Vec<u8>,
    /// Inside a line that grew past [`MAX_LINE`]: dropped until its newline.
    cut: bool,
    stderr: Vec<u8>,
    last_output: tokio::time::Instant,
    stopping: Option<tokio::time::Instant>,
    interrupted: Option<tokio::time::Instant>,
    failure: Option<String>,
}

async fn drive(
    s: Arc<Session>,
    procs: Arc<Procs>,
    (mut adapter, resume): (Box<dyn kraal_agents::Adapter>, Option<String>),
    mut rx: mpsc::UnboundedReceiver<Ctl>,
    launch: Launch,
    spec: AgentSpec,
) {
    let wd = spec.watchdog;
    let cmd = adapter.command(launch.gateway.as_ref());
    let mut env = vec![
        ("PATH".to_owned(), format!("{AGENT_PATH}:{BASE_PATH}")),
        ("TERM".to_owned(), "dumb".to_owned()),
        ("KRAAL_SESSION".to_owned(), s.meta.id.clone()),
    ];
    env.extend(cmd.env.iter().cloned());
    env.extend(launch.env);
    if spec.agent == AgentKind::Codex {
        let home = env
            .iter()
            .rev()
            .find(|(k, _)| k == "CODEX_HOME")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| PathBuf::from("/root/.codex"));
        let _ = std::fs::create_dir_all(home);
    }
    let cwd = spec.cwd.clone().unwrap_or_else(|| "/".into());
    let req = ExecRequest {
        argv: cmd.argv.clone(),
        env,
        cwd: Some(cwd.clone()),
        tty: None,
        as_root: false,
    };
    s.append(vec![AgentEvent::State {
        state: SessionState::Starting,
        reason: None,
    }]);
    let proc = match procs.spawn(&req, &cwd) {
        Ok(p) => p,
        Err(e) => {
            s.append(vec![
                AgentEvent::Error {
                    message: format!("cannot start {}: {}", spec.agent, e.message),
                },
                AgentEvent::State {
                    state: SessionState::Failed,
                    reason: Some(format!("cannot start {}: {}", cmd.argv[0], e.message)),
                },
            ]);
            // Inputs that were waiting are answered by the failure; the next message retries.
            *s.ctl.lock().unwrap() = None;
            return;
        }
    };
    let transcript = spec.transcript.then(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.dir.join("transcript.jsonl"))
            .ok()
    });
    let mut run = Run {
        transcript: transcript.flatten(),
        proc: proc.clone(),
        out_seq: 0,
        line: Vec::new(),
        cut: false,
        stderr: Vec::new(),
        last_output: tokio::time::Instant::now(),
        stopping: None,
        interrupted: None,
        failure: None,
    };
    record(
        &mut run,
        serde_json::json!({"launch": {"resume": resume, "argv": cmd.argv, "spec": spec}}),
    );
    let mut changed = proc.changed.subscribe();
    let start = adapter.start();
    apply(&s, &mut run, start, wd.stdin_write_secs).await;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ctl_open = true;
    loop {
        read_output(&s, &mut run, adapter.as_mut(), wd.stdin_write_secs).await;
        if run.proc.finished().is_some() {
            break;
        }
        tokio::select! {
            r = changed.changed() => { if r.is_err() { break; } }
            c = rx.recv(), if ctl_open => match c {
                Some(Ctl::Input(i)) => {
                    record(&mut run, serde_json::json!({"input": i}));
                    if matches!(i, SessionInput::Interrupt) && adapter.busy() {
                        run.interrupted.get_or_insert_with(tokio::time::Instant::now);
                    }
                    let step = adapter.on_input(i);
                    apply(&s, &mut run, step, wd.stdin_write_secs).await;
                }
                Some(Ctl::Stop) => {
                    record(&mut run, serde_json::json!({"stop": true}));
                    run.stopping.get_or_insert_with(tokio::time::Instant::now);
                    let _ = run.proc.input.send(Input::Eof).await;
                }
                None => ctl_open = false,
            },
            _ = tick.tick() => watchdogs(&s, &mut run, adapter.as_mut(), &wd).await,
        }
    }
    // Input that arrives from now on relaunches the agent.
    *s.ctl.lock().unwrap() = None;
    let exit = run.proc.finished();
    let stderr = String::from_utf8_lossy(&run.stderr).trim().to_owned();
    let exit_text = match exit {
        Some(Exit::Code(c)) => format!("exited with code {c}"),
        Some(Exit::Signal(sig)) => format!("was killed by signal {sig}"),
        None => "vanished".to_owned(),
    };
    record(&mut run, serde_json::json!({"exit": exit_text}));
    let mut events = Vec::new();
    if let Some(reason) = run.failure.take() {
        events.push(AgentEvent::Error {
            message: reason.clone(),
        });
        events.push(AgentEvent::State {
            state: SessionState::Failed,
            reason: Some(reason),
        });
    } else if run.stopping.is_some() {
        events.push(AgentEvent::State {
            state: SessionState::Done,
            reason: None,
        });
    } else {
        let mut reason = format!("{} {exit_text}", spec.agent);
        if adapter.busy() {
            reason.push_str(" in the middle of a turn (no result)");
        }
        if !stderr.is_empty() {
            reason.push_str(": ");
            reason.push_str(&stderr);
        }
        events.push(AgentEvent::State {
            state: SessionState::Failed,
            reason: Some(reason),
        });
    }
    s.append(events);
    if let Some(f) = s.log.lock().unwrap().file.as_ref() {
        let _ = f.sync_data();
    }
    let _ = &s.dir;
}

/// Appends one record to the session's transcript, if it keeps one.
fn record(run: &mut Run, v: serde_json::Value) {
    if let Some(f) = run.transcript.as_mut() {
        let mut line = v.to_string();
        line.push('\n');
        let _ = f.write_all(line.as_bytes());
    }
}

/// The longest output line of an agent that is read as one (an event is at most about
/// this big, well under the link's frame limit); longer ones are dropped with an error.
const MAX_LINE: usize = 2 << 20;

/// Feeds new output to the adapter: stdout line by line, stderr into a tail buffer.
async fn read_output(
    s: &Arc<Session>,
    run: &mut Run,
    adapter: &mut dyn kraal_agents::Adapter,
    stdin_secs: u64,
) {
    let (chunks, _) = run.proc.state.lock().unwrap().output.since(run.out_seq);
    if chunks.is_empty() {
        return;
    }
    run.last_output = tokio::time::Instant::now();
    let mut step = kraal_agents::Step::default();
    for (seq, kind, data) in chunks {
        run.out_seq = seq;
        match kind {
            FrameKind::Stdout => {
                run.line.extend_from_slice(&data);
                while let Some(pos) = run.line.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = run.line.drain(..=pos).collect();
                    if std::mem::take(&mut run.cut) {
                        // The end of a line already dropped as too long.
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    record(run, serde_json::json!({"read": text}));
                    step.extend(adapter.on_line(&text));
                }
                // A line without an end in sight is dropped, not kept growing: neither
                // this process nor the daemon holds an event of unbounded size.
                if run.line.len() > MAX_LINE {
                    run.line.clear();
                    if !std::mem::replace(&mut run.cut, true) {
                        step.events.push(AgentEvent::Error {
                            message: format!(
                                "the agent printed a line longer than {} MiB; it was dropped",
                                MAX_LINE >> 20
                            ),
                        });
                    }
                }
            }
            FrameKind::Stderr => {
                run.stderr.extend_from_slice(&data);
                if run.stderr.len() > STDERR_TAIL {
                    let cut = run.stderr.len() - STDERR_TAIL;
                    run.stderr.drain(..cut);
                }
            }
            _ => {}
        }
    }
    apply(s, run, step, stdin_secs).await;
}

/// Logs the step's events, reports unparseable lines, writes its lines to the agent.
async fn apply(s: &Arc<Session>, run: &mut Run, step: kraal_agents::Step, stdin_secs: u64) {
    for p in &step.problems {
        eprintln!("kraal-guest: session {}: {p}", s.meta.id);
    }
    s.append(step.events);
    for line in step.writes {
        record(
            run,
            serde_json::json!({"write": line.strip_suffix('\n').unwrap_or(&line)}),
        );
        let send = run.proc.input.send(Input::Data(Bytes::from(line)));
        match tokio::time::timeout(Duration::from_secs(stdin_secs), send).await {
            Ok(_) => {}
            Err(_) => {
                run.failure = Some(format!(
                    "the agent stopped reading its input for {stdin_secs} s (hung stdin); it was killed"
                ));
                let _ = run.proc.signal(libc::SIGKILL);
                return;
            }
        }
    }
}

/// Silence during a turn → interrupt, then kill; not exiting after stop/interrupt → kill.
async fn watchdogs(
    s: &Arc<Session>,
    run: &mut Run,
    adapter: &mut dyn kraal_agents::Adapter,
    wd: &kraal_core::Watchdog,
) {
    let grace = Duration::from_secs(wd.exit_grace_secs);
    let blocked = *run.proc.writing_since.lock().unwrap();
    if let Some(t) = blocked
        && t.elapsed() >= Duration::from_secs(wd.stdin_write_secs)
    {
        run.failure = Some(format!(
            "the agent stopped reading its input for {} s (hung stdin); it was killed",
            wd.stdin_write_secs
        ));
        let _ = run.proc.signal(libc::SIGKILL);
        return;
    }
    if let Some(t) = run.stopping
        && t.elapsed() >= grace
    {
        let _ = run.proc.signal(libc::SIGKILL);
        return;
    }
    let waiting_on_user = s.state() == SessionState::NeedsApproval;
    if !adapter.busy() || waiting_on_user {
        run.interrupted = None;
        return;
    }
    let silence = run.last_output.elapsed();
    if let Some(t) = run.interrupted
        && t.elapsed() >= grace
        && silence >= grace
    {
        run.failure = Some(format!(
            "the agent did not finish its turn within {} s of an interrupt; it was killed",
            wd.exit_grace_secs
        ));
        let _ = run.proc.signal(libc::SIGKILL);
        return;
    }
    if run.interrupted.is_none() && silence >= Duration::from_secs(wd.turn_silence_secs) {
        s.append(vec![AgentEvent::Error {
            message: format!(
                "no output from the agent for {} s; interrupting the turn",
                wd.turn_silence_secs
            ),
        }]);
        run.interrupted = Some(tokio::time::Instant::now());
        let step = adapter.on_input(SessionInput::Interrupt);
        let secs = wd.stdin_write_secs;
        apply(s, run, step, secs).await;
    }
}
