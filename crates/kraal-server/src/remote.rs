//! Ways in that open no port: `GET /v1/workspaces/{ws}/ssh` runs the workspace's own
//! OpenSSH server in inetd mode (`sshd -i`) on the WebSocket, so `ssh` reaches it through
//! `kraal ssh-proxy` (a ProxyCommand); `GET /v1/workspaces/{ws}/ports/{port}` relays one
//! TCP connection to a port inside the workspace (`kraal forward`).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use kraal_protocol::ExecRequest;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SshQuery {
    /// The user to log in as (default root).
    #[serde(default)]
    pub user: Option<String>,
    /// The client's OpenSSH public key (one `authorized_keys` line), authorized for
    /// `user` before the server starts.
    pub key: String,
}

/// Prepares the workspace's sshd: host keys, the privilege separation directory, and the
/// caller's key in kraal's own authorized-keys file for the user. Exit 3: no sshd;
/// 4: no such user.
const PREPARE: &str = r#"set -e
user=$1; key=$2
[ -x /usr/sbin/sshd ] || exit 3
id -u "$user" >/dev/null 2>&1 || exit 4
mkdir -p /run/sshd /etc/kraal/ssh
chmod 755 /run/sshd /etc/kraal /etc/kraal/ssh
ssh-keygen -A >/dev/null
f=/etc/kraal/ssh/$user.keys
touch "$f"
chmod 644 "$f"
grep -qxF "$key" "$f" || printf '%s\n' "$key" >> "$f"
cat > /etc/kraal/ssh/session <<'SESSION'
#!/bin/sh
# kraal: every SSH session starts in the workspace; a command (or the sftp server of scp)
# runs through the user's shell, no command gets a login shell.
cd /workspace 2>/dev/null || cd
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
    exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"
fi
exec "${SHELL:-/bin/sh}" -l
SESSION
chmod 755 /etc/kraal/ssh/session
"#;

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn valid_key(k: &str) -> bool {
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return false;
    };
    k.len() < 16 * 1024
        && !k.contains(['\n', '\r', '\0'])
        && (kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-"))
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/ssh",
    params(("ws" = String, Path, description = "Workspace name or id"), SshQuery),
    responses((status = 101, description = "WebSocket: the SSH byte stream (binary messages as in exec)"),
        (status = 400, body = kraal_api::ApiError), (status = 409, body = kraal_api::ApiError)))]
pub async fn ssh_ws(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path(ws): Path<String>,
    Query(q): Query<SshQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let user = q.user.unwrap_or_else(|| "root".into());
    if !valid_user(&user) {
        return Err(HttpError::bad_request(format!(
            "{user:?} is not a user name"
        )));
    }
    let key = q.key.trim().to_owned();
    if !valid_key(&key) {
        return Err(HttpError::bad_request(
            "the key is not one OpenSSH public key line (ssh-ed25519 AAAA… comment)",
        ));
    }
    let out = s
        .engine
        .capture_as_root(
            &ws,
            &["sh", "-c", PREPARE, "sh", &user, &key],
            Duration::from_secs(60),
            16 * 1024,
        )
        .await?;
    match out.code {
        0 => {}
        3 => {
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "no_ssh_server",
                format!(
                    "workspace {ws} has no OpenSSH server: its image needs openssh-server (the default image has it)"
                ),
            ));
        }
        4 => {
            return Err(HttpError::bad_request(format!(
                "there is no user {user} in workspace {ws}"
            )));
        }
        c => {
            return Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ssh_setup_failed",
                format!(
                    "preparing the SSH server in {ws} failed (exit {c}): {}",
                    out.stderr.trim()
                ),
            ));
        }
    }
    let (rec, client) = s.engine.guest(&ws).await?;
    // Sessions get what every process of the workspace gets for reaching outside.
    let env = s.engine.link_env(&rec).await;
    let mut argv: Vec<String> = [
        "/usr/sbin/sshd",
        "-i",
        "-e",
        "-o",
        "AuthorizedKeysFile=/etc/kraal/ssh/%u.keys",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "PermitRootLogin=prohibit-password",
        "-o",
        "ForceCommand=/etc/kraal/ssh/session",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push("-o".into());
    argv.push(format!("AllowUsers={user}"));
    if !env.is_empty() {
        let list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        argv.push("-o".into());
        argv.push(format!("SetEnv={}", list.join(" ")));
    }
    let fingerprint = key.split_whitespace().nth(2).unwrap_or("").to_owned();
    audit(
        &s,
        &actor_of(actor),
        "ssh",
        rec.name.as_str(),
        &format!("as {user} with key {fingerprint}"),
    );
    let hold = s.engine.hold(&rec.id);
    Ok(upgrade.on_upgrade(move |socket| {
        let _hold = hold;
        crate::exec::session_preset(
            socket,
            client,
            ExecRequest {
                argv,
                env: vec![],
                cwd: None,
                tty: None,
                as_root: true,
            },
        )
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/ports/{port}",
    params(("ws" = String, Path, description = "Workspace name or id"), ("port" = u16, Path, description = "TCP port inside the workspace")),
    responses((status = 101, description = "WebSocket: the connection's bytes as binary messages"),
        (status = 400, body = kraal_api::ApiError)))]
pub async fn port_ws(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Path((ws, port)): Path<(String, u16)>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    if port == 0 {
        return Err(HttpError::bad_request("port 0 cannot be forwarded"));
    }
    let (rec, stream) = s.engine.connect_port(&ws, port).await?;
    audit(
        &s,
        &actor_of(actor),
        "forward",
        rec.name.as_str(),
        &format!("port {port}"),
    );
    let hold = s.engine.hold(&rec.id);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _hold = hold;
        pipe(socket, stream).await
    }))
}

/// Copies between the WebSocket (binary messages) and the TCP stream until either ends.
async fn pipe(socket: WebSocket, stream: kraal_engine::PortStream) {
    let (mut wtx, mut wrx) = socket.split();
    let (mut r, mut w) = tokio::io::split(stream);
    let up = async {
        while let Some(Ok(m)) = wrx.next().await {
            match m {
                Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if wtx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = wtx.send(Message::Close(None)).await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_keys_are_checked() {
        assert!(valid_user("root") && valid_user("dev-1") && valid_user("_svc"));
        assert!(!valid_user("") && !valid_user("Root") && !valid_user("a b") && !valid_user("-x"));
        assert!(valid_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q kraal"
        ));
        assert!(!valid_key("ssh-ed25519"));
        assert!(!valid_key("ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa AAAA"));
        assert!(!valid_key("command=\"sh\" ssh-ed25519 AAAA"));
        assert!(!valid_key("ssh-ed25519 AA\"AA"));
    }
}
