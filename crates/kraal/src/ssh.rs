//! `kraal ssh`, `kraal ssh-config`, `kraal ssh-proxy` and `kraal forward`: OpenSSH (and
//! VS Code Remote-SSH) into workspaces, and ports to localhost, all through the daemon —
//! no port is opened on a sandbox or on the host. The SSH server is the workspace's own
//! `sshd`, started per connection in inetd mode; the client key is kraal's own
//! (`~/.config/kraal/ssh/id_ed25519`), authorized in the workspace on each connection.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use kraal_api::{Workspace, WorkspaceList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, enc};

/// `$XDG_CONFIG_HOME/kraal/ssh`, else `~/.config/kraal/ssh`.
pub fn ssh_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    base.join("kraal").join("ssh")
}

/// kraal's client key pair, created on first use; returns the private key's path and
/// the public key line.
pub async fn ensure_key() -> anyhow::Result<(PathBuf, String)> {
    let dir = ssh_dir();
    let key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if !key.is_file() || !public.is_file() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        kraal_sandbox::process::Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kraal"])
            .arg("-f")
            .arg(&key)
            .run()
            .await
            .context("cannot create kraal's SSH key (is openssh-client installed?)")?;
    }
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("cannot read {}", public.display()))?;
    Ok((key, line.trim().to_owned()))
}

/// `kraal ssh-proxy`: the ProxyCommand. Standard input and output carry the SSH stream.
pub async fn proxy(c: &Client, ws: &str, user: &str) -> anyhow::Result<i32> {
    let (_, key) = ensure_key().await?;
    let path = format!(
        "/v1/workspaces/{}/ssh?user={}&key={}",
        enc(ws),
        enc(user),
        enc(&key)
    );
    crate::exec::run_at(
        c,
        ws,
        &path,
        None,
        crate::exec::ExecOptions {
            argv: vec![],
            env: vec![],
            cwd: None,
            tty: false,
            forward_stdin: true,
        },
    )
    .await
}

fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display().to_string().replace('"', "\\\""))
}

/// Host entries for `workspaces`: `NAME` and `NAME.kraal`, reached through `kraal
/// ssh-proxy` on the daemon at `endpoint`.
pub fn config_text(workspaces: &[Workspace], exe: &Path, endpoint: &str, key: &Path) -> String {
    let dir = ssh_dir();
    let mut out = String::from(
        "# Written by `kraal ssh-config`: workspaces reached through the kraal daemon.\n",
    );
    for w in workspaces {
        out.push_str(&format!(
            "\nHost {name} {name}.kraal\n    HostName {name}\n    User root\n    HostKeyAlias kraal-{id}\n    IdentityFile {key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n    StrictHostKeyChecking accept-new\n    ServerAliveInterval 30\n    ProxyCommand {exe} --host {endpoint} ssh-proxy {id} --user %r\n",
            name = w.name,
            id = w.id,
            key = quote(key),
            known = quote(&dir.join("known_hosts")),
            exe = quote(exe),
            endpoint = quote(Path::new(endpoint)),
        ));
    }
    out
}

/// The Host entries of every workspace the daemon has, for this executable and daemon.
async fn current_config(c: &Client) -> anyhow::Result<String> {
    let (key, _) = ensure_key().await?;
    let l: WorkspaceList = c.get("/v1/workspaces").await?;
    let exe = std::env::current_exe().context("cannot find the kraal executable")?;
    Ok(config_text(
        &l.workspaces,
        &exe,
        &c.endpoint.to_string(),
        &key,
    ))
}

/// Writes the config file; returns its path.
async fn write_config(c: &Client) -> anyhow::Result<PathBuf> {
    let text = current_config(c).await?;
    let path = ssh_dir().join("config");
    kraal_sandbox::write_private(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `kraal ssh-config`: prints the Host entries, or writes them to `output`, or (with
/// `install`) to kraal's own file included from `~/.ssh/config`.
pub async fn ssh_config(c: &Client, output: Option<&Path>, install: bool) -> anyhow::Result<()> {
    if install {
        let path = write_config(c).await?;
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("$HOME is not set")?;
        let user_cfg = home.join(".ssh").join("config");
        let include = format!("Include {}", quote(&path));
        let current = std::fs::read_to_string(&user_cfg).unwrap_or_default();
        if !current.lines().any(|l| l.trim() == include) {
            std::fs::create_dir_all(home.join(".ssh"))?;
            // Include must come before any Host block to apply everywhere.
            let text = format!("{include}\n\n{current}");
            kraal_sandbox::write_private(&user_cfg, text.as_bytes())
                .with_context(|| format!("cannot write {}", user_cfg.display()))?;
        }
        eprintln!(
            "wrote {}; {} includes it (ssh WORKSPACE, or pick it in VS Code Remote-SSH)",
            path.display(),
            user_cfg.display()
        );
        return Ok(());
    }
    let text = current_config(c).await?;
    match output {
        Some(p) => {
            kraal_sandbox::write_private(p, text.as_bytes())
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `kraal ssh WS [ARGS…]`: runs the real `ssh` with kraal's config.
pub async fn ssh(c: &Client, ws: &str, user: Option<&str>, args: &[String]) -> anyhow::Result<i32> {
    let w: Workspace = c.get(&format!("/v1/workspaces/{}", enc(ws))).await?;
    let cfg = write_config(c).await?;
    let mut argv = vec!["ssh".to_owned(), "-F".to_owned(), cfg.display().to_string()];
    if let Some(u) = user {
        argv.push("-l".into());
        argv.push(u.to_owned());
    }
    argv.push(w.name.clone());
    argv.extend(args.iter().cloned());
    let cargs: Vec<std::ffi::CString> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    // Replace this process: ssh owns the terminal from here on.
    let e = nix::unistd::execvp(&cargs[0], &cargs).unwrap_err();
    bail!("cannot run ssh: {e} (install openssh-client)")
}

/// `kraal forward WS PORT`: listens on `local` and relays each connection to `port` in
/// the workspace through the daemon; with `stdio`, relays standard input and output
/// once instead.
pub async fn forward(
    c: &Client,
    ws: &str,
    port: u16,
    local: Option<&str>,
    stdio: bool,
) -> anyhow::Result<()> {
    let path = format!("/v1/workspaces/{}/ports/{port}", enc(ws));
    if stdio {
        let sock = c.websocket(&path).await?;
        return relay(sock, tokio::io::stdin(), tokio::io::stdout()).await;
    }
    // Check the port answers before promising anything.
    drop(c.websocket(&path).await?);
    let addr = local
        .map(str::to_owned)
        .unwrap_or_else(|| format!("127.0.0.1:{port}"));
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) if local.is_none() => tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("cannot listen on {addr} ({e}) or any port"))?,
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
    };
    let bound = listener.local_addr()?;
    println!("{bound}");
    eprintln!("forwarding {bound} to port {port} of {ws}; Ctrl-C stops");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            acc = listener.accept() => {
                let (conn, peer) = acc.context("accept failed")?;
                let c = c.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    match c.websocket(&path).await {
                        Ok(sock) => {
                            let (r, w) = conn.into_split();
                            let _ = relay(sock, r, w).await;
                        }
                        Err(e) => eprintln!("kraal: connection from {peer}: {e}"),
                    }
                });
            }
        }
    }
}

async fn relay<R, W>(
    sock: tokio_tungstenite::WebSocketStream<crate::client::Conn>,
    mut r: R,
    mut w: W,
) -> anyhow::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = sock.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) => {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                    let _ = w.flush().await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    // Whichever side ends first ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}
