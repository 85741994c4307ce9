//! The exec WebSocket: bridges one client to one guest process. Closing the socket
//! detaches (the process keeps running and can be reattached with `attach`).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use kraal_api::{ApiError, ExecClientMsg, ExecServerMsg, STREAM_STDERR, STREAM_STDOUT};
use kraal_protocol::{ExecRequest, TtySize};
use kraal_sandbox::{ExecEvent, GuestClient, GuestClientError};

use crate::AppState;
use crate::error::HttpError;

/// Start or attach to a process. Upgrade to a WebSocket, send `ExecClientMsg::Start` or
/// `Attach` as the first text message, then stdin as binary messages.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/exec", params(("ws" = String, Path)),
    responses((status = 101, description = "WebSocket; see ExecClientMsg and ExecServerMsg"), (status = 409, body = kraal_api::ApiError)))]
pub async fn exec_ws(
    State(s): State<AppState>,
    actor: Option<axum::Extension<crate::security::Actor>>,
    Path(ws): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let (rec, client) = s.engine.guest(&ws).await?;
    let actor = crate::security::actor_of(actor);
    let name = rec.name.to_string();
    let hold = s.engine.hold(&rec.id);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _hold = hold;
        session(socket, client, move |argv: &[String]| {
            crate::security::audit(&s, &actor, "exec", &name, &shell_words(argv));
        })
        .await
    }))
}

/// `argv` as one line for the audit log (quoted where needed, cut at 500 bytes).
fn shell_words(argv: &[String]) -> String {
    let mut out = String::new();
    for a in argv {
        if !out.is_empty() {
            out.push(' ');
        }
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
        {
            out.push_str(a);
        } else {
            out.push('\'');
            out.push_str(&a.replace('\'', "'\\''"));
            out.push('\'');
        }
    }
    if out.len() > 500 {
        let mut cut = 500;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn text(m: &ExecServerMsg) -> Message {
    Message::Text(serde_json::to_string(m).expect("serializes").into())
}

fn error_msg(code: &str, message: String) -> Message {
    text(&ExecServerMsg::Error(ApiError {
        code: code.to_owned(),
        message,
    }))
}

fn guest_error(e: &GuestClientError) -> Message {
    match e {
        GuestClientError::Guest(g) => {
            let code = serde_json::to_value(g.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            error_msg(&code, g.message.clone())
        }
        e => error_msg("guest_unreachable", e.to_string()),
    }
}

async fn session(socket: WebSocket, client: GuestClient, audit: impl FnOnce(&[String])) {
    let (mut tx, mut rx) = socket.split();
    let first = match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ExecClientMsg>(&t),
        _ => {
            let _ = tx
                .send(error_msg(
                    "invalid_argument",
                    "expected a start or attach message".into(),
                ))
                .await;
            return;
        }
    };
    let started = match first {
        Ok(ExecClientMsg::Start {
            argv,
            env,
            cwd,
            tty,
        }) => {
            if argv.is_empty() {
                let _ = tx
                    .send(error_msg("invalid_argument", "empty command".into()))
                    .await;
                return;
            }
            audit(&argv);
            client
                .exec(ExecRequest {
                    argv,
                    env,
                    cwd,
                    tty: tty.map(|t| TtySize {
                        rows: t.rows,
                        cols: t.cols,
                    }),
                    as_root: false,
                })
                .await
        }
        Ok(ExecClientMsg::Attach { proc, after }) => client.attach(proc, after).await,
        Ok(_) => {
            let _ = tx
                .send(error_msg(
                    "invalid_argument",
                    "the first message must be start or attach".into(),
                ))
                .await;
            return;
        }
        Err(e) => {
            let _ = tx
                .send(error_msg(
                    "invalid_argument",
                    format!("malformed message: {e}"),
                ))
                .await;
            return;
        }
    };
    relay(tx, rx, started).await;
}

type WsTx = futures::stream::SplitSink<WebSocket, Message>;
type WsRx = futures::stream::SplitStream<WebSocket>;

/// Runs `req` (chosen by the daemon, not the client) and relays it like `exec`: the SSH
/// server of `kraal ssh`.
pub(crate) async fn session_preset(socket: WebSocket, client: GuestClient, req: ExecRequest) {
    let (tx, rx) = socket.split();
    let started = client.exec(req).await;
    relay(tx, rx, started).await;
}

/// Relays a started process: its output out, stdin and control messages in.
async fn relay(
    mut tx: WsTx,
    mut rx: WsRx,
    started: Result<kraal_sandbox::ExecHandle, GuestClientError>,
) {
    let mut handle = match started {
        Ok(h) => h,
        Err(e) => {
            let _ = tx.send(guest_error(&e)).await;
            return;
        }
    };
    if tx
        .send(text(&ExecServerMsg::Started {
            proc: handle.proc,
            pid: handle.pid,
        }))
        .await
        .is_err()
    {
        return;
    }
    let input = handle.sender();
    loop {
        tokio::select! {
            ev = handle.next() => {
                let msg = match ev {
                    Ok(ExecEvent::Stdout { seq, data }) => output(STREAM_STDOUT, seq, &data),
                    Ok(ExecEvent::Stderr { seq, data }) => output(STREAM_STDERR, seq, &data),
                    Ok(ExecEvent::Truncated { first_available }) => text(&ExecServerMsg::Truncated { first_available }),
                    Ok(ExecEvent::Exit { code, signal }) => {
                        let _ = tx.send(text(&ExecServerMsg::Exit { code, signal })).await;
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(guest_error(&e)).await;
                        return;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return; // Client gone: detach.
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = input.stdin(b).await; }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecClientMsg>(&t) {
                    Ok(ExecClientMsg::Resize(sz)) => { let _ = input.resize(TtySize { rows: sz.rows, cols: sz.cols }).await; }
                    Ok(ExecClientMsg::Signal { signal }) => { let _ = input.signal(signal).await; }
                    Ok(ExecClientMsg::Eof) => { let _ = input.eof().await; }
                    _ => {}
                },
                Some(Ok(_)) => {}
                // Client closed or vanished: detach and leave the process running.
                Some(Err(_)) | None => return,
            },
        }
    }
}

fn output(stream: u8, seq: u64, data: &[u8]) -> Message {
    let mut b = Vec::with_capacity(9 + data.len());
    b.push(stream);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(data);
    Message::Binary(b.into())
}
