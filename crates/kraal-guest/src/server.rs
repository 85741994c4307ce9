//! Accepts host connections, authenticates them, demultiplexes streams and serves requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kraal_protocol::{
    Challenge, ErrorCode, ExecRequest, Frame, FrameCodec, FrameKind, GuestError, HealthInfo, Hello,
    PROTOCOL_VERSION, Request, Response, StreamMsg, Welcome, verify_mac,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::config::Config;
use crate::files;
use crate::procs::{self, Input, Proc, Procs};
use crate::sessions::Sessions;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 256 * 1024;
const CLOSED_EARLY: &str = "closed during handshake";

pub struct Guest {
    config: Config,
    root: PathBuf,
    procs: Arc<Procs>,
    sessions: Arc<Sessions>,
    started: Instant,
    hostname: String,
    /// Loopback listeners of `Accept` requests, kept between them.
    listeners: tokio::sync::Mutex<HashMap<std::net::SocketAddr, Arc<TcpListener>>>,
}

type Out = mpsc::Sender<Frame>;

/// Marks that a workspace's create commands have run.
pub const LIFECYCLE_MARK: &str = "/var/lib/kraal/on-create.done";
/// Where lifecycle command outcomes are written (and the guest's stderr, the console).
pub const LIFECYCLE_LOG: &str = "/var/log/kraal-lifecycle.log";

fn lifecycle_log(msg: &str) {
    use std::io::Write;
    eprintln!("kraal-guest: lifecycle {msg}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LIFECYCLE_LOG)
    {
        let _ = writeln!(f, "{msg}");
    }
}

impl Guest {
    pub fn new(config: Config) -> Self {
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let root = config
            .files_root
            .canonicalize()
            .unwrap_or_else(|_| config.files_root.clone());
        let user = config
            .user
            .as_deref()
            .and_then(|u| match procs::RunAs::lookup(u) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("kraal-guest: {e}; commands run as root");
                    None
                }
            });
        let procs = Arc::new(Procs::with_env(config.env.clone()).with_user(user));
        let sessions_dir = config
            .sessions_dir
            .clone()
            .unwrap_or_else(|| root.join(".kraal/sessions"));
        Guest {
            sessions: Arc::new(Sessions::load(sessions_dir, root.clone(), procs.clone())),
            config,
            root,
            procs,
            started: Instant::now(),
            hostname,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The image's lifecycle commands (devcontainer onCreate/postCreate, postStart): the
    /// create stages once per workspace (a mark in the root file system, which persists),
    /// then the start stages. Each runs as the image's user in the workspace, shows up
    /// in the process list, and its outcome is appended to [`LIFECYCLE_LOG`].
    async fn lifecycle(self: Arc<Self>) {
        let mark = std::path::Path::new(LIFECYCLE_MARK);
        let cwd = self.root.to_string_lossy().into_owned();
        if !self.config.on_create.is_empty() && !mark.exists() {
            if !self
                .run_stages("create", &self.config.on_create, &cwd)
                .await
            {
                return;
            }
            if let Some(d) = mark.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(mark, b"");
        }
        self.run_stages("start", &self.config.on_start, &cwd).await;
    }

    /// Runs stages in order (a stage's commands in parallel); stops at the first failure.
    async fn run_stages(&self, what: &str, stages: &[Vec<Vec<String>>], cwd: &str) -> bool {
        for stage in stages {
            let mut running = Vec::new();
            for argv in stage {
                let req = kraal_protocol::ExecRequest {
                    argv: argv.clone(),
                    env: Vec::new(),
                    cwd: Some(cwd.to_owned()),
                    tty: None,
                    as_root: false,
                };
                match self.procs.spawn(&req, cwd) {
                    Ok(p) => running.push(p),
                    Err(e) => {
                        lifecycle_log(&format!("{what}: {argv:?} could not start: {}", e.message));
                        return false;
                    }
                }
            }
            let mut ok = true;
            for p in running {
                let mut rx = p.changed.subscribe();
                let exit = loop {
                    if let Some(x) = p.finished() {
                        break x;
                    }
                    if rx.changed().await.is_err() {
                        break procs::Exit::Code(-1);
                    }
                };
                let (out, _) = p.state.lock().unwrap().output.since(0);
                let text: Vec<u8> = out.iter().flat_map(|(_, _, b)| b.to_vec()).collect();
                let text = String::from_utf8_lossy(&text);
                let tail: String = text
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                let status = match exit {
                    procs::Exit::Code(0) => "succeeded".to_owned(),
                    procs::Exit::Code(c) => {
                        ok = false;
                        format!("failed with exit code {c}")
                    }
                    procs::Exit::Signal(s) => {
                        ok = false;
                        format!("was killed by signal {s}")
                    }
                };
                lifecycle_log(&format!("{what}: {:?} {status}\n{tail}", p.argv));
            }
            if !ok {
                return false;
            }
        }
        true
    }

    pub async fn run(self: Arc<Self>) -> Result<(), String> {
        let listener = TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", self.config.listen))?;
        eprintln!(
            "kraal-guest {} listening on {}",
            env!("CARGO_PKG_VERSION"),
            self.config.listen
        );

        // The image's services: started once, listed by `kraal ps`, output kept like any
        // other process's.
        for argv in &self.config.start {
            let req = kraal_protocol::ExecRequest {
                argv: argv.clone(),
                env: Vec::new(),
                cwd: Some("/".to_owned()),
                tty: None,
                as_root: false,
            };
            match self.procs.spawn_as(&req, "/", None) {
                Ok(p) => eprintln!("kraal-guest: started {argv:?} (process {})", p.id),
                Err(e) => eprintln!("kraal-guest: cannot start {argv:?}: {}", e.message),
            }
        }
        if !self.config.on_create.is_empty() || !self.config.on_start.is_empty() {
            let me = self.clone();
            tokio::spawn(async move { me.lifecycle().await });
        }

        let reaper = self.procs.clone();
        tokio::spawn(async move {
            let mut sig = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kraal-guest: cannot watch SIGCHLD: {e}");
                    return;
                }
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sig.recv() => {}
                    _ = tick.tick() => reaper.prune(256),
                }
                reaper.reap();
            }
        });
        // As PID 1 we must not die from SIGTERM/SIGINT sent by the runtime before we flush.
        let me = self.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            term.recv().await;
            procs::shutdown(&me.procs, Duration::from_secs(5)).await;
            std::process::exit(0);
        });

        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("kraal-guest: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                match me.serve_conn(sock).await {
                    // A readiness probe connects and leaves without a word.
                    Err(e) if e == CLOSED_EARLY => {}
                    Err(e) => eprintln!("kraal-guest: connection from {peer}: {e}"),
                    Ok(()) => {}
                }
            });
        }
    }

    async fn serve_conn(self: Arc<Self>, sock: TcpStream) -> Result<(), String> {
        let mut framed = Framed::new(sock, FrameCodec::default());
        let challenge = Challenge::new();
        framed
            .send(Frame::control(0, &challenge))
            .await
            .map_err(|e| e.to_string())?;
        let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .ok_or(CLOSED_EARLY)?
            .map_err(|e| e.to_string())?;
        let hello: Hello = hello.parse().map_err(|e| format!("bad hello: {e}"))?;
        let verdict = if hello.version != PROTOCOL_VERSION {
            Err(format!(
                "protocol version {} not supported (guest speaks {PROTOCOL_VERSION})",
                hello.version
            ))
        } else {
            verify_mac(&self.config.token, &challenge.nonce, &hello.mac).map_err(|e| e.to_string())
        };
        if let Err(reason) = verdict {
            let _ = framed
                .send(Frame::control(
                    0,
                    &Welcome::Denied {
                        reason: reason.clone(),
                    },
                ))
                .await;
            return Err(reason);
        }
        let welcome = Welcome::Accepted {
            guest_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: self.hostname.clone(),
        };
        framed
            .send(Frame::control(0, &welcome))
            .await
            .map_err(|e| e.to_string())?;

        let (mut sink, mut source) = framed.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(256);
        // Frames already queued go out in one write: under load (many sessions streaming
        // at once) a system call per frame is what a sandbox pays most for.
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if sink.feed(f).await.is_err() {
                    break;
                }
                while let Ok(f) = out_rx.try_recv() {
                    if sink.feed(f).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        });
        let mut streams: HashMap<u32, mpsc::Sender<Frame>> = HashMap::new();
        while let Some(frame) = source.next().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let id = frame.stream;
            if let Some(tx) = streams.get(&id) {
                // The host closed its side, or the handler already finished.
                if frame.kind == FrameKind::Close || tx.send(frame).await.is_err() {
                    streams.remove(&id);
                }
                continue;
            }
            if frame.kind != FrameKind::Control || id == 0 {
                continue; // Late frames for a stream that already ended.
            }
            let req: Request = match frame.parse() {
                Ok(r) => r,
                Err(e) => {
                    let err = GuestError::new(
                        ErrorCode::InvalidRequest,
                        format!("malformed request: {e}"),
                    );
                    let _ = out_tx
                        .send(Frame::control(id, &StreamMsg::Error(err)))
                        .await;
                    let _ = out_tx.send(Frame::close(id)).await;
                    continue;
                }
            };
            let (in_tx, in_rx) = mpsc::channel::<Frame>(64);
            streams.insert(id, in_tx);
            let me = self.clone();
            let out = out_tx.clone();
            tokio::spawn(async move {
                let result = me.handle(id, req, in_rx, &out).await;
                if let Err(err) = result {
                    let _ = out.send(Frame::control(id, &StreamMsg::Error(err))).await;
                }
                let _ = out.send(Frame::close(id)).await;
            });
        }
        // The host went away: drop the stream inputs. Processes keep running and can be
        // reattached; their output stays in each process's log.
        drop(streams);
        drop(out_tx);
        let _ = writer.await;
        Ok(())
    }

    async fn handle(
        self: &Arc<Self>,
        id: u32,
        req: Request,
        mut input: mpsc::Receiver<Frame>,
        out: &Out,
    ) -> Result<(), GuestError> {
        let done = |r: Response| Frame::control(id, &StreamMsg::Done(r));
        match req {
            Request::Health => {
                let load1 = std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
                    .unwrap_or(0.0);
                let info = HealthInfo {
                    guest_version: env!("CARGO_PKG_VERSION").to_owned(),
                    hostname: self.hostname.clone(),
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                    processes: self.procs.running().len(),
                    load1,
                };
                send(out, done(Response::Health(info))).await;
            }
            Request::Exec(req) => {
                let proc = self.spawn(&req)?;
                send(
                    out,
                    Frame::control(
                        id,
                        &StreamMsg::Started {
                            proc: proc.id,
                            pid: proc.pid,
                        },
                    ),
                )
                .await;
                attach(id, proc, 0, input, out).await;
            }
            Request::Attach { proc, after } => {
                let p = self.procs.get(proc).ok_or_else(|| unknown_proc(proc))?;
                send(
                    out,
                    Frame::control(
                        id,
                        &StreamMsg::Started {
                            proc: p.id,
                            pid: p.pid,
                        },
                    ),
                )
                .await;
                attach(id, p, after, input, out).await;
            }
            Request::Processes => {
                send(
                    out,
                    done(Response::Processes {
                        processes: self.procs.list(),
                    }),
                )
                .await;
            }
            Request::Signal { proc, signal } => {
                self.procs
                    .get(proc)
                    .ok_or_else(|| unknown_proc(proc))?
                    .signal(signal)?;
                send(out, done(Response::Ok)).await;
            }
            Request::Stat { path } => {
                let p = files::resolve(&self.root, &path, false)?;
                send(out, done(Response::Stat(files::info(&self.root, &p)?))).await;
            }
            Request::ListDir { path } => {
                let p = files::resolve(&self.root, &path, true)?;
                send(
                    out,
                    done(Response::List {
                        entries: files::list(&self.root, &p)?,
                    }),
                )
                .await;
            }
            Request::ReadFile {
                path,
                offset,
                limit,
            } => {
                let p = files::resolve(&self.root, &path, true)?;
                let bytes = self.read_file(id, &p, offset, limit, out).await?;
                send(out, done(Response::ReadDone { bytes })).await;
            }
            Request::WriteFile {
                path,
                mode,
                create_parents,
            } => {
                let p = files::resolve(&self.root, &path, true)?;
                let mut w = files::PendingWrite::begin(&self.root, &p, mode, create_parents)?;
                loop {
                    match input.recv().await {
                        Some(f) if f.kind == FrameKind::Data => w.write(&self.root, &f.payload)?,
                        Some(f) if f.kind == FrameKind::Control => {
                            if matches!(f.parse::<StreamMsg>(), Ok(StreamMsg::Eof)) {
                                let bytes = w.commit(&self.root)?;
                                send(out, done(Response::Written { bytes })).await;
                                return Ok(());
                            }
                        }
                        Some(_) => {}
                        // The host vanished mid-upload: drop the temporary file.
                        None => return Ok(()),
                    }
                }
            }
            Request::Mkdir { path, parents } => {
                let p = files::resolve(&self.root, &path, true)?;
                files::mkdir(&self.root, &p, parents)?;
                send(out, done(Response::Ok)).await;
            }
            Request::Remove { path, recursive } => {
                let p = files::resolve(&self.root, &path, false)?;
                files::remove(&self.root, &p, recursive)?;
                send(out, done(Response::Ok)).await;
            }
            Request::SessionStart {
                id: sid,
                spec,
                message,
                launch,
            } => {
                let info = self.sessions.start(&sid, spec, message, launch)?;
                send(out, done(Response::Session(info))).await;
            }
            Request::SessionInput {
                id: sid,
                input: i,
                launch,
            } => {
                self.sessions.input(&sid, i, launch)?;
                send(out, done(Response::Ok)).await;
            }
            Request::SessionStop { id: sid } => {
                self.sessions.stop(&sid)?;
                send(out, done(Response::Ok)).await;
            }
            Request::Sessions => {
                send(
                    out,
                    done(Response::Sessions {
                        sessions: self.sessions.list(),
                    }),
                )
                .await;
            }
            Request::SessionEvents { id: sid, mut after } => {
                let session = self.sessions.get(&sid)?;
                let mut changed = session.changed.subscribe();
                loop {
                    for e in session.since(after) {
                        after = e.seq;
                        if out
                            .send(Frame::control(id, &StreamMsg::Event { event: e }))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    tokio::select! {
                        r = changed.changed() => { if r.is_err() { return Ok(()); } }
                        // The host closed the stream (or the connection went away).
                        f = input.recv() => { if f.is_none() { return Ok(()); } }
                    }
                }
            }
            Request::Accept { addr } => {
                let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                    GuestError::new(
                        ErrorCode::InvalidRequest,
                        format!("{addr:?} is not an address like 127.0.0.1:7072"),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(GuestError::new(
                        ErrorCode::InvalidRequest,
                        format!("{addr}: only loopback addresses are accepted on"),
                    ));
                }
                let listener = {
                    let mut ls = self.listeners.lock().await;
                    match ls.get(&addr) {
                        Some(l) => l.clone(),
                        None => {
                            let l = Arc::new(TcpListener::bind(addr).await.map_err(|e| {
                                GuestError::new(
                                    ErrorCode::Io,
                                    format!("cannot listen on {addr}: {e}"),
                                )
                            })?);
                            ls.insert(addr, l.clone());
                            l
                        }
                    }
                };
                let (sock, peer) = tokio::select! {
                    r = listener.accept() => r.map_err(|e| {
                        GuestError::new(ErrorCode::Io, format!("accepting on {addr}: {e}"))
                    })?,
                    // The host gave up waiting.
                    _ = wait_closed(&mut input) => return Ok(()),
                };
                let _ = sock.set_nodelay(true);
                send(
                    out,
                    done(Response::Accepted {
                        peer: peer.to_string(),
                    }),
                )
                .await;
                relay(id, sock, input, out).await;
            }
            Request::Ports => {
                // The guest's own port and the host-service relays are not the user's.
                let mut own = vec![self.config.listen.port()];
                own.extend(self.listeners.lock().await.keys().map(|a| a.port()));
                let ports = crate::ports::listening(&own);
                send(out, done(Response::Ports { ports })).await;
            }
            Request::Connect { port } => {
                let sock = crate::ports::connect_local(port).await?;
                let addr = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                send(out, done(Response::Connected { addr })).await;
                relay(id, sock, input, out).await;
            }
            Request::Shutdown { grace_ms } => {
                procs::shutdown(&self.procs, Duration::from_millis(grace_ms.min(60_000))).await;
                send(out, done(Response::Ok)).await;
                if self.config.vm {
                    // Give the answer a moment to leave, then end the machine.
                    tokio::spawn(async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        crate::vminit::power_off();
                    });
                }
            }
        }
        Ok(())
    }

    fn spawn(&self, req: &ExecRequest) -> Result<Arc<Proc>, GuestError> {
        let default_cwd = if self.root.is_dir() {
            self.root.to_string_lossy().into_owned()
        } else {
            "/".to_owned()
        };
        self.procs.spawn(req, &default_cwd)
    }

    async fn read_file(
        &self,
        id: u32,
        p: &std::path::Path,
        offset: u64,
        limit: Option<u64>,
        out: &Out,
    ) -> Result<u64, GuestError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let rel = files::relative(&self.root, p);
        if p.is_dir() {
            return Err(GuestError::new(
                ErrorCode::IsADirectory,
                format!("{rel}: is a directory"),
            ));
        }
        let mut f = tokio::fs::File::open(p)
            .await
            .map_err(|e| GuestError::io(&e, &rel))?;
        if offset > 0 {
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| GuestError::io(&e, &rel))?;
        }
        let mut remaining = limit.unwrap_or(u64::MAX);
        let mut total = 0u64;
        let mut buf = vec![0u8; READ_CHUNK];
        while remaining > 0 {
            let want = (remaining.min(READ_CHUNK as u64)) as usize;
            let n = f
                .read(&mut buf[..want])
                .await
                .map_err(|e| GuestError::io(&e, &rel))?;
            if n == 0 {
                break;
            }
            send(
                out,
                Frame::data(id, FrameKind::Data, Bytes::copy_from_slice(&buf[..n])),
            )
            .await;
            total += n as u64;
            remaining -= n as u64;
        }
        Ok(total)
    }
}

fn unknown_proc(id: u64) -> GuestError {
    GuestError::new(
        ErrorCode::UnknownProcess,
        format!("no process with id {id}"),
    )
}

async fn send(out: &Out, f: Frame) {
    let _ = out.send(f).await;
}

/// Returns once the host closed the stream (frames before that are dropped).
async fn wait_closed(input: &mut mpsc::Receiver<Frame>) {
    while input.recv().await.is_some() {}
}

/// Relays an accepted connection over stream `id` until both directions are finished
/// or the host closes the stream.
async fn relay(id: u32, sock: TcpStream, mut input: mpsc::Receiver<Frame>, out: &Out) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read_done, mut write_done) = (false, false);
    while !(read_done && write_done) {
        tokio::select! {
            f = input.recv(), if !write_done => match f {
                Some(f) if f.kind == FrameKind::Data => {
                    if wr.write_all(&f.payload).await.is_err() {
                        write_done = true;
                    }
                }
                Some(f) if f.kind == FrameKind::Control => {
                    if matches!(f.parse::<StreamMsg>(), Ok(StreamMsg::Eof)) {
                        let _ = wr.shutdown().await;
                        write_done = true;
                    }
                }
                Some(_) => {}
                None => return,
            },
            n = rd.read(&mut buf), if !read_done => match n {
                Ok(0) | Err(_) => {
                    read_done = true;
                    send(out, Frame::control(id, &StreamMsg::Eof)).await;
                }
                Ok(n) => {
                    send(
                        out,
                        Frame::data(id, FrameKind::Data, Bytes::copy_from_slice(&buf[..n])),
                    )
                    .await;
                }
            },
        }
    }
}

/// Streams a process's output from `after` and forwards input until it finishes or the
/// host detaches. Detaching never kills the process.
async fn attach(
    id: u32,
    proc: Arc<Proc>,
    mut after: u64,
    mut input: mpsc::Receiver<Frame>,
    out: &Out,
) {
    let mut changed = proc.changed.subscribe();
    let mut input_open = true;
    // While attached, the process waits for this reader instead of dropping output.
    struct Reader(Arc<Proc>, u64);
    impl Drop for Reader {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().output.detach_reader(self.1);
            self.0.drained.notify_waiters();
        }
    }
    let reader = Reader(
        proc.clone(),
        proc.state.lock().unwrap().output.attach_reader(after),
    );
    loop {
        let (entries, first) = proc.state.lock().unwrap().output.since(after);
        if after + 1 < first && after != 0 {
            send(
                out,
                Frame::control(
                    id,
                    &StreamMsg::Truncated {
                        first_available: first,
                    },
                ),
            )
            .await;
        }
        for (seq, kind, data) in entries {
            send(out, Frame::output(id, kind, seq, &data)).await;
            after = seq;
            proc.state.lock().unwrap().output.reader_at(reader.1, after);
            proc.drained.notify_waiters();
        }
        if let Some(exit) = proc.finished() {
            // Output that raced in between the read above and the exit check.
            let (late, _) = proc.state.lock().unwrap().output.since(after);
            for (seq, kind, data) in late {
                send(out, Frame::output(id, kind, seq, &data)).await;
            }
            let (code, signal) = match exit {
                procs::Exit::Code(c) => (Some(c), None),
                procs::Exit::Signal(s) => (None, Some(s)),
            };
            send(out, Frame::control(id, &StreamMsg::Exit { code, signal })).await;
            return;
        }
        tokio::select! {
            r = changed.changed() => { if r.is_err() { return; } }
            f = input.recv(), if input_open => match f {
                None => input_open = false,
                Some(f) => match f.kind {
                    FrameKind::Stdin => { let _ = proc.input.send(Input::Data(f.payload)).await; }
                    FrameKind::Control => match f.parse::<StreamMsg>() {
                        Ok(StreamMsg::Eof) => { let _ = proc.input.send(Input::Eof).await; }
                        Ok(StreamMsg::Resize(size)) => { let _ = proc.resize(size); }
                        Ok(StreamMsg::Signal { signal }) => { let _ = proc.signal(signal); }
                        _ => {}
                    },
                    _ => {}
                },
            },
        }
        if !input_open && out.is_closed() {
            return;
        }
    }
}
