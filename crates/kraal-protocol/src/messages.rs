//! Requests, responses and in-stream messages of the guest protocol.

use kraal_core::{AgentKind, AgentSpec, ModelGateway, SessionEvent, SessionInput, SessionState};
use serde::{Deserialize, Serialize};

/// Host → guest, stream 0, in answer to the [`crate::Challenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub mac: String,
    pub client: String,
}

/// Guest → host, stream 0, closing the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Welcome {
    Accepted {
        guest_version: String,
        hostname: String,
    },
    Denied {
        reason: String,
    },
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Start a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Allocate a pseudo-terminal of this size instead of pipes.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run as root even when the image names a user (host-started services such as the
    /// SSH server, which switches to the user itself).
    #[serde(default)]
    pub as_root: bool,
}

/// The first frame of every host-opened stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Health,
    Exec(ExecRequest),
    /// Reattach to a process, replaying output with sequence numbers above `after`.
    Attach {
        proc: u64,
        after: u64,
    },
    Processes,
    Signal {
        proc: u64,
        signal: i32,
    },
    Stat {
        path: String,
    },
    ListDir {
        path: String,
    },
    /// Streams the file back as `Data` frames, then `Done(ReadDone)`.
    ReadFile {
        path: String,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        limit: Option<u64>,
    },
    /// The host sends `Data` frames then a `Close`; the guest answers `Done(Written)`.
    WriteFile {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        create_parents: bool,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        parents: bool,
    },
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Wait for one TCP connection to `addr` (a loopback address inside the sandbox; the
    /// guest keeps listening there for the next `Accept`), answer `Done(Accepted)`, then
    /// relay it: `Data` frames both ways, `Eof` when a side stops writing. This is how a
    /// sandbox without a private link to the host (a Kubernetes pod) reaches the host's
    /// services: the host keeps `Accept`s outstanding and connects each one on its side.
    Accept {
        addr: String,
    },
    /// The TCP ports something listens on inside the sandbox (the guest's own excluded).
    Ports,
    /// Open a TCP connection to `port` on the sandbox's loopback (where dev servers bound
    /// to `localhost` listen), answer `Done(Connected)`, then relay it like `Accept`.
    Connect {
        port: u16,
    },
    /// Terminate every process (SIGTERM, then SIGKILL after `grace_ms`) and flush disks.
    Shutdown {
        grace_ms: u64,
    },
    /// Create a session and launch its agent, optionally with a first message. `env` is
    /// applied to the agent process only and never written to disk (credentials).
    SessionStart {
        id: String,
        spec: AgentSpec,
        #[serde(default)]
        message: Option<String>,
        #[serde(flatten)]
        launch: Launch,
    },
    /// Deliver input to a session. A message to a session whose agent is not running
    /// relaunches it with the agent's own resume mechanism (using `env`).
    SessionInput {
        id: String,
        input: SessionInput,
        #[serde(flatten)]
        launch: Launch,
    },
    /// Stream a session's events with `seq > after` as `Event` messages, then follow.
    SessionEvents {
        id: String,
        after: u64,
    },
    /// Close the agent's input and let it exit (killed after the watchdog's grace).
    SessionStop {
        id: String,
    },
    Sessions,
}

/// What an agent process gets at launch besides its spec: given with every request that
/// may (re)launch it, applied to the process only, never written to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// Extra environment (e.g. credentials while no gateway is used).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Where the agent reaches the model APIs.
    #[serde(default)]
    pub gateway: Option<ModelGateway>,
}

/// Control messages exchanged on a stream after its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMsg {
    /// Guest: the process started (or was found, for `Attach`).
    Started { proc: u64, pid: i32 },
    /// Guest: the process ended. Exactly one of `code` or `signal` is set.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Guest: the request succeeded.
    Done(Response),
    /// Guest: the request failed.
    Error(GuestError),
    /// Guest: output older than the requested sequence was discarded.
    Truncated { first_available: u64 },
    /// Host: resize the terminal.
    Resize(TtySize),
    /// Host: deliver a signal to the process group.
    Signal { signal: i32 },
    /// Host: no more input (standard input of a process, or data of a `WriteFile`).
    Eof,
    /// Guest: one entry of a session log (a struct variant: the event has its own `type`).
    Event { event: SessionEvent },
}

/// Successful results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Health(HealthInfo),
    Stat(FileInfo),
    List {
        entries: Vec<FileInfo>,
    },
    ReadDone {
        bytes: u64,
    },
    Written {
        bytes: u64,
    },
    /// A connection arrived for an `Accept` (from `peer`).
    Accepted {
        peer: String,
    },
    /// The connection of a `Connect` is open (to `addr`).
    Connected {
        addr: String,
    },
    Ports {
        ports: Vec<PortInfo>,
    },
    Processes {
        processes: Vec<ProcInfo>,
    },
    Session(SessionInfo),
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    Ok,
}

/// A session as the guest sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub agent: AgentKind,
    pub state: SessionState,
    /// Sequence number of the newest event (0 when there is none).
    pub last_seq: u64,
    /// The agent's own conversation id, once known.
    pub agent_session: Option<String>,
    /// Whether the agent process is alive.
    pub running: bool,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInfo {
    pub guest_version: String,
    pub hostname: String,
    pub uptime_ms: u64,
    pub processes: usize,
    pub load1: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path relative to the file root (`.` for the root itself).
    pub path: String,
    pub name: String,
    pub file_type: FileType,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub modified: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// A TCP port something listens on inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub port: u16,
    /// The addresses it listens on (`0.0.0.0`, `::`, `127.0.0.1`…).
    pub addresses: Vec<String>,
    /// The listening process's name, when the guest can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub proc: u64,
    pub pid: i32,
    pub argv: Vec<String>,
    pub tty: bool,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// Stable error codes reported by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    PermissionDenied,
    PathEscape,
    InvalidRequest,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    UnknownProcess,
    UnknownSession,
    SpawnFailed,
    NoSpace,
    Io,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct GuestError {
    pub code: ErrorCode,
    pub message: String,
}

impl GuestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        GuestError {
            code,
            message: message.into(),
        }
    }

    /// Maps an I/O error on `path` to the closest stable code.
    pub fn io(err: &std::io::Error, path: &str) -> Self {
        use std::io::ErrorKind as K;
        let code = match err.kind() {
            K::NotFound => ErrorCode::NotFound,
            K::PermissionDenied => ErrorCode::PermissionDenied,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::NotADirectory => ErrorCode::NotADirectory,
            K::IsADirectory => ErrorCode::IsADirectory,
            K::DirectoryNotEmpty => ErrorCode::DirectoryNotEmpty,
            K::StorageFull => ErrorCode::NoSpace,
            _ => ErrorCode::Io,
        };
        GuestError::new(code, format!("{path}: {err}"))
    }
}
