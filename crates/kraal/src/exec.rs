//! `kraal exec` and `kraal shell`: one process in a workspace, streamed over the daemon's
//! exec WebSocket. If the daemon goes away mid-run (restart, crash), the process keeps
//! running in the sandbox and this client reattaches, resuming output exactly after the
//! last chunk it printed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use kraal_api::{ExecClientMsg, ExecServerMsg, STREAM_STDERR, STREAM_STDOUT, TermSize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, ClientError, Conn, enc};

/// How long to keep trying to reach the daemon again after losing it.
const REATTACH_WINDOW: Duration = Duration::from_secs(90);

pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub tty: bool,
    pub forward_stdin: bool,
}

enum Input {
    Data(Vec<u8>),
    Eof,
    Resize(TermSize),
}

type Ws = tokio_tungstenite::WebSocketStream<Conn>;

fn term_size() -> Option<TermSize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, owned struct.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let orig = tcgetattr(&stdin).context("cannot read terminal settings")?;
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("cannot set raw mode")?;
        Ok(RawMode(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

async fn send_json(
    ws: &mut Ws,
    m: &ExecClientMsg,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::Text(
        serde_json::to_string(m).expect("serializes").into(),
    ))
    .await
}

/// Opens `path` (the exec endpoint unless the daemon picks the command, as for `ssh`),
/// sends the first message if there is one, and waits for `Started`.
async fn open(
    client: &Client,
    path: &str,
    first: Option<&ExecClientMsg>,
) -> anyhow::Result<(Ws, u64)> {
    let mut ws = client.websocket(path).await?;
    if let Some(first) = first {
        send_json(&mut ws, first)
            .await
            .context("sending the exec request")?;
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecServerMsg>(&t) {
                Ok(ExecServerMsg::Started { proc, .. }) => return Ok((ws, proc)),
                Ok(ExecServerMsg::Error(e)) => {
                    return Err(ClientError::Api {
                        status: 0,
                        code: e.code,
                        message: e.message,
                    }
                    .into());
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("exec stream failed: {e}"),
            None => bail!("the daemon closed the exec stream before the process started"),
        }
    }
}

/// Runs the command; returns the exit code to exit with (128+N for signal N).
pub async fn run(client: &Client, workspace: &str, opts: ExecOptions) -> anyhow::Result<i32> {
    let tty_size = if opts.tty {
        Some(term_size().unwrap_or(TermSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let start = ExecClientMsg::Start {
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        cwd: opts.cwd.clone(),
        tty: tty_size,
    };
    let path = format!("/v1/workspaces/{}/exec", enc(workspace));
    run_at(client, workspace, &path, Some(&start), opts).await
}

/// Like [`run`] for a process the daemon starts when `path` is opened (`kraal ssh-proxy`):
/// standard input and output are the process's, byte for byte.
pub async fn run_at(
    client: &Client,
    workspace: &str,
    path: &str,
    first: Option<&ExecClientMsg>,
    opts: ExecOptions,
) -> anyhow::Result<i32> {
    let (mut ws, proc) = open(client, path, first).await?;
    let _raw = if opts.tty && std::io::stdin().is_terminal() {
        Some(RawMode::enable()?)
    } else {
        None
    };

    let (in_tx, mut in_rx) = mpsc::channel::<Input>(16);
    if opts.forward_stdin {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Input::Eof).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Input::Data(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    } else {
        let _ = in_tx.send(Input::Eof).await;
    }
    if opts.tty {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(sz) = term_size()
                    && tx.send(Input::Resize(sz)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(in_tx);

    let mut last_seq = 0u64;
    let mut stdin_done = false;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() >= 9 => {
                    let seq = u64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
                    if seq <= last_seq {
                        continue; // Already printed before a reattach.
                    }
                    last_seq = seq;
                    let data = &b[9..];
                    if b[0] == STREAM_STDERR {
                        let _ = err.write_all(data);
                        let _ = err.flush();
                    } else if b[0] == STREAM_STDOUT {
                        let _ = out.write_all(data);
                        let _ = out.flush();
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecServerMsg>(&t) {
                    Ok(ExecServerMsg::Exit { code, signal }) => {
                        return Ok(code.unwrap_or_else(|| 128 + signal.unwrap_or(0)));
                    }
                    Ok(ExecServerMsg::Truncated { first_available }) => {
                        eprintln!("\r\nkraal: output before chunk {first_available} was discarded by the workspace");
                    }
                    Ok(ExecServerMsg::Error(e)) if e.code == "guest_unreachable" => {
                        ws = reattach(client, workspace, proc, last_seq, Lost::Workspace).await?;
                    }
                    Ok(ExecServerMsg::Error(e)) => bail!("{}", e.message),
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    ws = reattach(client, workspace, proc, last_seq, Lost::Daemon).await?;
                }
            },
            input = in_rx.recv(), if !stdin_done => match input {
                Some(Input::Data(d)) => { let _ = ws.send(Message::Binary(d.into())).await; }
                Some(Input::Eof) => {
                    stdin_done = true;
                    let _ = send_json(&mut ws, &ExecClientMsg::Eof).await;
                }
                Some(Input::Resize(sz)) => { let _ = send_json(&mut ws, &ExecClientMsg::Resize(sz)).await; }
                None => stdin_done = true,
            },
        }
    }
}

/// What a running command lost.
#[derive(Clone, Copy)]
enum Lost {
    Daemon,
    Workspace,
}

async fn reattach(
    client: &Client,
    workspace: &str,
    proc: u64,
    after: u64,
    lost: Lost,
) -> anyhow::Result<Ws> {
    eprintln!(
        "\r\nkraal: {}; the command keeps running if the workspace does, reattaching…\r",
        match lost {
            Lost::Daemon => "lost the connection to the daemon",
            Lost::Workspace => "the daemon lost its link to the workspace",
        }
    );
    let deadline = Instant::now() + REATTACH_WINDOW;
    let mut last_err = None;
    while Instant::now() < deadline {
        let path = format!("/v1/workspaces/{}/exec", enc(workspace));
        match open(client, &path, Some(&ExecClientMsg::Attach { proc, after })).await {
            Ok((ws, _)) => {
                eprintln!("kraal: reattached\r");
                return Ok(ws);
            }
            Err(e) => {
                // A process the workspace no longer knows cannot come back.
                if let Some(ClientError::Api { code, .. }) = e.downcast_ref::<ClientError>()
                    && (code == "unknown_process" || code == "not_found")
                {
                    return Err(e.context(format!(
                        "the command is gone: workspace {workspace} restarted while it ran (its sandbox stopped; `kraal logs {workspace}` says why)"
                    )));
                }
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("daemon unreachable")).context(format!(
        "could not reattach to process {proc} within {} s; it may still be running (see `kraal ps {workspace}`)",
        REATTACH_WINDOW.as_secs()
    )))
}
