//! Start on demand: the commands that need a running workspace (`new-chat`, `send`,
//! `chat`, `exec`, `shell`, `ssh`, `ssh-proxy`) start one that idle stop or `kraal down`
//! stopped — with a one-line notice and the start's progress — instead of failing;
//! `--no-start` keeps the refusal.

use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::Method;
use kraal_api::{Session, Workspace};
use kraal_core::WorkspaceState;

use crate::client::{Client, enc};

/// How long a workspace that is stopping right now gets to finish before it is started.
const STOPPING_WAIT: Duration = Duration::from_secs(60);

/// Makes sure `workspace` (a name or id) runs, starting it when it is stopped (unless
/// `no_start`); returns whether it had to be started. Other states are left to the
/// command itself (it waits for a workspace being created or started, and says why a
/// failed one cannot be used).
pub async fn ensure_running(
    client: &Client,
    workspace: &str,
    no_start: bool,
) -> anyhow::Result<bool> {
    let path = format!("/v1/workspaces/{}", enc(workspace));
    let mut w: Workspace = client.get(&path).await?;
    let deadline = Instant::now() + STOPPING_WAIT;
    while w.state == WorkspaceState::Stopping && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        w = client.get(&path).await?;
    }
    if w.state != WorkspaceState::Stopped {
        return Ok(false);
    }
    if no_start {
        bail!(
            "workspace {} is stopped and --no-start was given; start it with `kraal up {}`",
            w.name,
            w.name
        );
    }
    let t0 = Instant::now();
    let pb = crate::commands::spinner(format!(
        "kraal: workspace {} is stopped; starting it…",
        w.name
    ));
    let started = client
        .send::<(), Workspace>(
            Method::POST,
            &format!("/v1/workspaces/{}/up?wait=true", enc(&w.name)),
            None,
        )
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let started = started?;
    if started.state != WorkspaceState::Running {
        bail!(
            "workspace {} did not start (it is {}{})",
            started.name,
            started.state.as_str(),
            started
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "kraal: started workspace {} in {:.1} s",
        started.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// [`ensure_running`] for the workspace session `session` runs in.
pub async fn ensure_session_running(
    client: &Client,
    session: &Session,
    no_start: bool,
) -> anyhow::Result<bool> {
    ensure_running(client, &session.workspace_id, no_start).await
}
