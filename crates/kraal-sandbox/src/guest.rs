//! Client side of the guest protocol: one authenticated connection, many streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kraal_core::{AgentSpec, SessionEvent, SessionInput};
use kraal_protocol::{
    Challenge, ExecRequest, FileInfo, Frame, FrameCodec, FrameKind, GuestError, HealthInfo, Hello,
    Launch, PROTOCOL_VERSION, ProcInfo, Request, Response, SessionInfo, StreamMsg, TtySize,
    Welcome, compute_mac,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GuestClientError {
    #[error("cannot connect to the guest agent at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("guest agent at {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("guest agent refused the connection: {reason}")]
    Denied { reason: String },
    #[error("guest protocol error: {0}")]
    Protocol(String),
    #[error("the link to the guest agent was lost")]
    Closed,
    #[error(transparent)]
    Guest(#[from] GuestError),
}

struct Inner {
    out: mpsc::Sender<Frame>,
    streams: Mutex<HashMap<u32, mpsc::Sender<Frame>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    /// Told by [`GuestClient::close`]: the writer shuts the connection down.
    stop: tokio::sync::Notify,
}

/// A live, authenticated connection to one sandbox's guest agent. Cheap to clone.
#[derive(Clone)]
pub struct GuestClient {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    pub hostname: String,
    pub guest_version: String,
}

impl std::fmt::Debug for GuestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestClient")
            .field("addr", &self.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// How often a booting guest is tried at first, and for how long.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(5);
const READY_FAST: std::time::Duration = std::time::Duration::from_secs(3);

impl GuestClient {
    /// [`GuestClient::connect`], retried while the sandbox boots, until `timeout`: every
    /// [`READY_POLL`] for the first [`READY_FAST`] (a refused connection costs next to
    /// nothing, and a doubling pause overshot a guest that came up in between by up to
    /// the pause), then with growing pauses. A refused handshake or a protocol error ends
    /// it at once (retrying cannot help). The last error is returned.
    pub async fn connect_retrying(
        addr: SocketAddr,
        token: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, GuestClientError> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let mut delay = READY_POLL;
        loop {
            match Self::connect(addr, token).await {
                Ok(c) => return Ok(c),
                Err(e @ (GuestClientError::Denied { .. } | GuestClientError::Protocol(_))) => {
                    return Err(e);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    if start.elapsed() >= READY_FAST {
                        delay = (delay * 2).min(std::time::Duration::from_millis(500));
                    }
                }
            }
        }
    }

    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Self, GuestClientError> {
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| GuestClientError::Timeout {
                addr,
                secs: CONNECT_TIMEOUT.as_secs(),
            })?
            .map_err(|source| GuestClientError::Connect { addr, source })?;
        let _ = sock.set_nodelay(true);
        let mut framed = Framed::new(sock, FrameCodec::default());
        let proto = |e: &dyn std::fmt::Display| GuestClientError::Protocol(e.to_string());
        let hs = async {
            let f = framed
                .next()
                .await
                .ok_or(GuestClientError::Closed)?
                .map_err(|e| proto(&e))?;
            let ch: Challenge = f.parse().map_err(|e| proto(&e))?;
            if ch.version != PROTOCOL_VERSION {
                return Err(GuestClientError::Protocol(format!(
                    "guest speaks protocol {}, daemon speaks {PROTOCOL_VERSION}; rebuild the guest agent",
                    ch.version
                )));
            }
            let hello = Hello {
                version: PROTOCOL_VERSION,
                mac: compute_mac(token, &ch.nonce),
                client: format!("kraal {}", env!("CARGO_PKG_VERSION")),
            };
            framed
                .send(Frame::control(0, &hello))
                .await
                .map_err(|e| proto(&e))?;
            let f = framed
                .next()
                .await
                .ok_or(GuestClientError::Closed)?
                .map_err(|e| proto(&e))?;
            match f.parse::<Welcome>().map_err(|e| proto(&e))? {
                Welcome::Accepted {
                    guest_version,
                    hostname,
                } => Ok((guest_version, hostname)),
                Welcome::Denied { reason } => Err(GuestClientError::Denied { reason }),
            }
        };
        let (guest_version, hostname) = tokio::time::timeout(HANDSHAKE_TIMEOUT, hs)
            .await
            .map_err(|_| GuestClientError::Timeout {
                addr,
                secs: HANDSHAKE_TIMEOUT.as_secs(),
            })??;

        let (mut sink, mut source) = framed.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(256);
        let inner = Arc::new(Inner {
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        });
        let writer = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    f = out_rx.recv() => match f {
                        Some(f) => if sink.send(f).await.is_err() { break },
                        None => break,
                    },
                    () = writer.stop.notified() => {
                        // FIN to the guest, which then closes its end too.
                        let _ = sink.close().await;
                        break;
                    }
                }
            }
        });
        let reader = inner.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = source.next().await {
                let tx = reader.streams.lock().unwrap().get(&frame.stream).cloned();
                let Some(tx) = tx else { continue };
                if frame.kind == FrameKind::Close {
                    reader.streams.lock().unwrap().remove(&frame.stream);
                    continue;
                }
                // A slow consumer applies backpressure to the whole link, like TCP would.
                let _ = tx.send(frame).await;
            }
            reader.closed.store(true, Ordering::SeqCst);
            reader.streams.lock().unwrap().clear();
        });
        Ok(GuestClient {
            inner,
            addr,
            hostname,
            guest_version,
        })
    }

    /// Closes the connection for every clone: streams on it end, and calls fail with
    /// [`GuestClientError::Closed`]. (A sandbox about to be checkpointed must hold no open
    /// connection.)
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.stop.notify_one();
        self.inner.streams.lock().unwrap().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst) || self.inner.out.is_closed()
    }

    async fn open(&self, req: &Request) -> Result<GuestStream, GuestClientError> {
        if self.is_closed() {
            return Err(GuestClientError::Closed);
        }
        let id = self.inner.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        self.inner.streams.lock().unwrap().insert(id, tx);
        self.inner
            .out
            .send(Frame::control(id, req))
            .await
            .map_err(|_| GuestClientError::Closed)?;
        Ok(GuestStream {
            id,
            rx,
            sender: StreamSender {
                id,
                out: self.inner.out.clone(),
            },
            inner: self.inner.clone(),
        })
    }

    /// Sends a request and waits for its single `Done` response.
    async fn call(&self, req: Request) -> Result<Response, GuestClientError> {
        let mut s = self.open(&req).await?;
        loop {
            match s.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Done(r)) => return Ok(r),
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    Ok(_) => {}
                    Err(e) => return Err(GuestClientError::Protocol(e.to_string())),
                },
                Some(_) => {}
            }
        }
    }

    pub async fn health(&self) -> Result<HealthInfo, GuestClientError> {
        match self.call(Request::Health).await? {
            Response::Health(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo, GuestClientError> {
        match self
            .call(Request::Stat {
                path: path.to_owned(),
            })
            .await?
        {
            Response::Stat(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileInfo>, GuestClientError> {
        match self
            .call(Request::ListDir {
                path: path.to_owned(),
            })
            .await?
        {
            Response::List { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), GuestClientError> {
        self.call(Request::Mkdir {
            path: path.to_owned(),
            parents,
        })
        .await
        .map(|_| ())
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), GuestClientError> {
        self.call(Request::Remove {
            path: path.to_owned(),
            recursive,
        })
        .await
        .map(|_| ())
    }

    pub async fn processes(&self) -> Result<Vec<ProcInfo>, GuestClientError> {
        match self.call(Request::Processes).await? {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn signal(&self, proc: u64, signal: i32) -> Result<(), GuestClientError> {
        self.call(Request::Signal { proc, signal })
            .await
            .map(|_| ())
    }

    pub async fn shutdown(&self, grace: Duration) -> Result<(), GuestClientError> {
        self.call(Request::Shutdown {
            grace_ms: grace.as_millis() as u64,
        })
        .await
        .map(|_| ())
    }

    /// Reads a whole file, refusing files larger than `max` bytes.
    pub async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, GuestClientError> {
        let info = self.stat(path).await?;
        if info.size > max {
            return Err(GuestError::new(
                kraal_protocol::ErrorCode::InvalidRequest,
                format!(
                    "{path}: file is {} bytes, more than the {max}-byte limit",
                    info.size
                ),
            )
            .into());
        }
        let mut s = self
            .open(&Request::ReadFile {
                path: path.to_owned(),
                offset: 0,
                limit: Some(max),
            })
            .await?;
        let mut buf = Vec::new();
        loop {
            match s.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Data => buf.extend_from_slice(&f.payload),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Done(_)) => return Ok(buf),
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    _ => {}
                },
                Some(_) => {}
            }
        }
    }

    /// Writes `data` to `path` atomically (the guest renames a temporary file into place).
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<u64, GuestClientError> {
        let mut s = self
            .open(&Request::WriteFile {
                path: path.to_owned(),
                mode,
                create_parents,
            })
            .await?;
        for chunk in data.chunks(CHUNK) {
            s.sender
                .send(Frame::data(
                    s.id,
                    FrameKind::Data,
                    Bytes::copy_from_slice(chunk),
                ))
                .await?;
        }
        s.sender.send(Frame::control(s.id, &StreamMsg::Eof)).await?;
        loop {
            match s.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Done(Response::Written { bytes })) => return Ok(bytes),
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    _ => {}
                },
                Some(_) => {}
            }
        }
    }

    /// Waits for a TCP connection to `addr` inside the sandbox (a loopback address the
    /// guest listens on) and returns it, ready to be relayed to a host-side connection.
    pub async fn accept(&self, addr: &str) -> Result<Relayed, GuestClientError> {
        let mut s = self
            .open(&Request::Accept {
                addr: addr.to_owned(),
            })
            .await?;
        loop {
            match s.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Done(Response::Accepted { peer })) => {
                        return Ok(Relayed { stream: s, peer });
                    }
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    _ => {}
                },
                Some(_) => {}
            }
        }
    }

    /// Opens a TCP connection to `port` on the sandbox's own loopback (a dev server bound
    /// to `localhost`); `NotFound` when nothing listens there.
    pub async fn connect_tcp(&self, port: u16) -> Result<Relayed, GuestClientError> {
        let mut s = self.open(&Request::Connect { port }).await?;
        loop {
            match s.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Done(Response::Connected { addr })) => {
                        return Ok(Relayed {
                            stream: s,
                            peer: addr,
                        });
                    }
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    _ => {}
                },
                Some(_) => {}
            }
        }
    }

    /// The TCP ports something listens on in the sandbox.
    pub async fn ports(&self) -> Result<Vec<kraal_protocol::PortInfo>, GuestClientError> {
        match self.call(Request::Ports).await? {
            Response::Ports { ports } => Ok(ports),
            r => Err(unexpected(&r)),
        }
    }

    /// Starts a process and returns a handle streaming its output.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecHandle, GuestClientError> {
        let s = self.open(&Request::Exec(req)).await?;
        ExecHandle::start(s).await
    }

    /// Reattaches to a process, replaying output after sequence `after`.
    pub async fn attach(&self, proc: u64, after: u64) -> Result<ExecHandle, GuestClientError> {
        let s = self.open(&Request::Attach { proc, after }).await?;
        ExecHandle::start(s).await
    }
}

impl GuestClient {
    pub async fn session_start(
        &self,
        id: &str,
        spec: AgentSpec,
        message: Option<String>,
        launch: Launch,
    ) -> Result<SessionInfo, GuestClientError> {
        match self
            .call(Request::SessionStart {
                id: id.to_owned(),
                spec,
                message,
                launch,
            })
            .await?
        {
            Response::Session(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn session_input(
        &self,
        id: &str,
        input: SessionInput,
        launch: Launch,
    ) -> Result<(), GuestClientError> {
        self.call(Request::SessionInput {
            id: id.to_owned(),
            input,
            launch,
        })
        .await
        .map(|_| ())
    }

    pub async fn session_stop(&self, id: &str) -> Result<(), GuestClientError> {
        self.call(Request::SessionStop { id: id.to_owned() })
            .await
            .map(|_| ())
    }

    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, GuestClientError> {
        match self.call(Request::Sessions).await? {
            Response::Sessions { sessions } => Ok(sessions),
            other => Err(unexpected(&other)),
        }
    }

    /// Follows a session log from `seq > after`; see [`SessionEvents::next`].
    pub async fn session_events(
        &self,
        id: &str,
        after: u64,
    ) -> Result<SessionEvents, GuestClientError> {
        let stream = self
            .open(&Request::SessionEvents {
                id: id.to_owned(),
                after,
            })
            .await?;
        Ok(SessionEvents { stream })
    }
}

/// A followed session log. Dropping it ends the subscription.
pub struct SessionEvents {
    stream: GuestStream,
}

impl SessionEvents {
    /// The next event, in sequence order; `Err(Closed)` when the link dropped.
    pub async fn next(&mut self) -> Result<SessionEvent, GuestClientError> {
        loop {
            let Some(f) = self.stream.rx.recv().await else {
                return Err(GuestClientError::Closed);
            };
            if let Some(r) = Self::decode(f) {
                return r;
            }
        }
    }

    /// An event that already arrived, without waiting (to batch what is buffered).
    pub fn try_next(&mut self) -> Option<Result<SessionEvent, GuestClientError>> {
        loop {
            let f = self.stream.rx.try_recv().ok()?;
            if let Some(r) = Self::decode(f) {
                return Some(r);
            }
        }
    }

    fn decode(f: Frame) -> Option<Result<SessionEvent, GuestClientError>> {
        if f.kind != FrameKind::Control {
            return None;
        }
        match f.parse::<StreamMsg>() {
            Ok(StreamMsg::Event { event }) => Some(Ok(event)),
            Ok(StreamMsg::Error(e)) => Some(Err(e.into())),
            Ok(_) => None,
            Err(e) => Some(Err(GuestClientError::Protocol(e.to_string()))),
        }
    }
}

fn unexpected(r: &Response) -> GuestClientError {
    GuestClientError::Protocol(format!("unexpected response {r:?}"))
}

/// A TCP connection inside the sandbox, carried over the guest channel: one accepted on
/// a sandbox loopback address ([`GuestClient::accept`]) or opened to a port of the
/// sandbox's loopback ([`GuestClient::connect_tcp`]).
pub struct Relayed {
    stream: GuestStream,
    /// The other end inside the sandbox.
    pub peer: String,
}

impl Relayed {
    /// Relays the connection to `sock` until both directions are finished; returns the
    /// bytes sent into the sandbox and received from it.
    pub async fn relay<S>(mut self, sock: S) -> (u64, u64)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let id = self.stream.id;
        let (mut rd, mut wr) = tokio::io::split(sock);
        let mut buf = vec![0u8; 64 * 1024];
        let (mut read_done, mut write_done) = (false, false);
        let (mut sent, mut received) = (0u64, 0u64);
        while !(read_done && write_done) {
            tokio::select! {
                f = self.stream.rx.recv(), if !write_done => match f {
                    Some(f) if f.kind == FrameKind::Data => {
                        received += f.payload.len() as u64;
                        if wr.write_all(&f.payload).await.is_err() {
                            write_done = true;
                        }
                    }
                    Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                        Ok(StreamMsg::Eof) => {
                            let _ = wr.shutdown().await;
                            write_done = true;
                        }
                        Ok(StreamMsg::Error(_)) => break,
                        _ => {}
                    },
                    Some(_) => {}
                    None => break,
                },
                n = rd.read(&mut buf), if !read_done => match n {
                    Ok(0) | Err(_) => {
                        read_done = true;
                        if self.stream.sender.send(Frame::control(id, &StreamMsg::Eof)).await.is_err() {
                            break;
                        }
                    }
                    Ok(n) => {
                        sent += n as u64;
                        let f = Frame::data(id, FrameKind::Data, Bytes::copy_from_slice(&buf[..n]));
                        if self.stream.sender.send(f).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        (sent, received)
    }
}

struct GuestStream {
    id: u32,
    rx: mpsc::Receiver<Frame>,
    sender: StreamSender,
    inner: Arc<Inner>,
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        self.inner.streams.lock().unwrap().remove(&self.id);
        let _ = self.inner.out.try_send(Frame::close(self.id));
    }
}

/// The sending half of a stream: input, resize and signals for a process.
#[derive(Clone, Debug)]
pub struct StreamSender {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl StreamSender {
    async fn send(&self, f: Frame) -> Result<(), GuestClientError> {
        self.out.send(f).await.map_err(|_| GuestClientError::Closed)
    }

    pub async fn stdin(&self, data: Bytes) -> Result<(), GuestClientError> {
        self.send(Frame::data(self.id, FrameKind::Stdin, data))
            .await
    }

    pub async fn eof(&self) -> Result<(), GuestClientError> {
        self.send(Frame::control(self.id, &StreamMsg::Eof)).await
    }

    pub async fn resize(&self, size: TtySize) -> Result<(), GuestClientError> {
        self.send(Frame::control(self.id, &StreamMsg::Resize(size)))
            .await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), GuestClientError> {
        self.send(Frame::control(self.id, &StreamMsg::Signal { signal }))
            .await
    }
}

/// What a running process produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Stdout {
        seq: u64,
        data: Bytes,
    },
    Stderr {
        seq: u64,
        data: Bytes,
    },
    /// Output before `first_available` was discarded by the guest.
    Truncated {
        first_available: u64,
    },
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// A process being streamed: call [`ExecHandle::next`] for events and use
/// [`ExecHandle::sender`] (cloneable) for input.
pub struct ExecHandle {
    stream: GuestStream,
    pub proc: u64,
    pub pid: i32,
}

impl ExecHandle {
    async fn start(mut stream: GuestStream) -> Result<Self, GuestClientError> {
        loop {
            match stream.rx.recv().await {
                None => return Err(GuestClientError::Closed),
                Some(f) if f.kind == FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Started { proc, pid }) => {
                        return Ok(ExecHandle { stream, proc, pid });
                    }
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    Ok(_) => {}
                    Err(e) => return Err(GuestClientError::Protocol(e.to_string())),
                },
                Some(_) => {}
            }
        }
    }

    pub fn sender(&self) -> StreamSender {
        self.stream.sender.clone()
    }

    /// The next event; `Err(Closed)` when the link dropped before the process exited
    /// (the process keeps running and can be reattached).
    pub async fn next(&mut self) -> Result<ExecEvent, GuestClientError> {
        loop {
            let Some(f) = self.stream.rx.recv().await else {
                return Err(GuestClientError::Closed);
            };
            match f.kind {
                FrameKind::Stdout | FrameKind::Stderr => {
                    let Some((seq, data)) = f.split_output() else {
                        continue;
                    };
                    return Ok(if f.kind == FrameKind::Stdout {
                        ExecEvent::Stdout { seq, data }
                    } else {
                        ExecEvent::Stderr { seq, data }
                    });
                }
                FrameKind::Control => match f.parse::<StreamMsg>() {
                    Ok(StreamMsg::Exit { code, signal }) => {
                        return Ok(ExecEvent::Exit { code, signal });
                    }
                    Ok(StreamMsg::Truncated { first_available }) => {
                        return Ok(ExecEvent::Truncated { first_available });
                    }
                    Ok(StreamMsg::Error(e)) => return Err(e.into()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
}
