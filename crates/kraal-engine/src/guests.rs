//! Reaching a running workspace's guest agent: cached connections, waiting for a
//! workspace on its way up, the link environment, and running commands to completion.

use std::time::{Duration, Instant};

use kraal_core::{DesiredState, WorkspaceId, WorkspaceState};
use kraal_sandbox::GuestClient;
use kraal_store::WorkspaceRecord;

use crate::{Captured, Engine, EngineError, GUEST_BOOT_TIMEOUT};

impl Engine {
    pub(crate) fn cached_guest(&self, id: &WorkspaceId) -> Option<GuestClient> {
        self.guests
            .lock()
            .unwrap()
            .get(id)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    pub(crate) async fn connect(&self, rec: &WorkspaceRecord) -> Result<GuestClient, EngineError> {
        if let Some(c) = self.cached_guest(&rec.id) {
            return Ok(c);
        }
        let ep = self.backend.endpoint(&rec.id).await?;
        let c = GuestClient::connect(ep.addr, &rec.guest_token)
            .await
            .map_err(EngineError::guest(rec.name.as_str()))?;
        self.guests
            .lock()
            .unwrap()
            .insert(rec.id.clone(), c.clone());
        Ok(c)
    }

    pub(crate) async fn connect_with_retry(
        &self,
        rec: &WorkspaceRecord,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<GuestClient, EngineError> {
        let c = GuestClient::connect_retrying(addr, &rec.guest_token, timeout)
            .await
            .map_err(EngineError::guest(rec.name.as_str()))?;
        self.guests
            .lock()
            .unwrap()
            .insert(rec.id.clone(), c.clone());
        Ok(c)
    }

    /// A connected guest client for a running workspace.
    pub async fn guest(
        &self,
        reference: &str,
    ) -> Result<(WorkspaceRecord, GuestClient), EngineError> {
        // A workspace on its way up (creating or starting, desired running) is waited for,
        // so `up --detach` followed by `exec` just works.
        let mut rec = self.resolve(reference)?;
        let deadline = Instant::now() + GUEST_BOOT_TIMEOUT;
        // A stopped workspace whose desired state is running has a start scheduled that
        // has not begun yet (e.g. [`Engine::start_if_stopped`]).
        while matches!(
            rec.state,
            WorkspaceState::Creating | WorkspaceState::Starting | WorkspaceState::Stopped
        ) && rec.desired == DesiredState::Running
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rec = self.resolve(rec.id.as_str())?;
        }
        if rec.state != WorkspaceState::Running {
            return Err(EngineError::NotRunning {
                workspace: rec.name.to_string(),
                state: rec.state.as_str(),
            });
        }
        // Every use of the guest resumes a workspace paused for being idle.
        self.thaw(&rec.id).await;
        let c = self.connect(&rec).await?;
        Ok((rec, c))
    }

    /// The environment kraal gives a running workspace's processes for reaching outside:
    /// its egress proxy and git gateway (see [`kraal_core::link_env`]); empty when the
    /// backend has no host link.
    pub async fn link_env(&self, rec: &WorkspaceRecord) -> Vec<(String, String)> {
        let git: Vec<String> = rec.git.iter().map(|g| g.host.clone()).collect();
        match self.backend.endpoint(&rec.id).await {
            Ok(ep) => ep
                .host
                .map(|h| kraal_core::link_env(h, &git))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs a command in a running workspace to completion (at most `timeout`), capturing
    /// up to `max` bytes of each output stream.
    pub async fn capture(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
    ) -> Result<Captured, EngineError> {
        self.capture_with(workspace, argv, timeout, max, false)
            .await
    }

    /// Like [`Engine::capture`], as root whatever user the image names.
    pub async fn capture_as_root(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
    ) -> Result<Captured, EngineError> {
        self.capture_with(workspace, argv, timeout, max, true).await
    }

    pub(crate) async fn capture_with(
        &self,
        workspace: &str,
        argv: &[&str],
        timeout: Duration,
        max: usize,
        as_root: bool,
    ) -> Result<Captured, EngineError> {
        let (rec, client) = self.guest(workspace).await?;
        let guest_err = EngineError::guest(rec.name.as_str());
        let mut h = client
            .exec(kraal_protocol::ExecRequest {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                env: vec![],
                cwd: None,
                tty: None,
                as_root,
            })
            .await
            .map_err(guest_err)?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = async {
            loop {
                match h.next().await? {
                    kraal_sandbox::ExecEvent::Stdout { data, .. } => {
                        let room = max.saturating_sub(out.len());
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    kraal_sandbox::ExecEvent::Stderr { data, .. } => {
                        let room = max.saturating_sub(err.len());
                        err.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    kraal_sandbox::ExecEvent::Truncated { .. } => {}
                    kraal_sandbox::ExecEvent::Exit { code, signal } => {
                        return Ok(code.unwrap_or(128 + signal.unwrap_or(0)));
                    }
                }
            }
        };
        let code = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| {
                EngineError::Invalid(format!(
                    "{} did not finish within {} s",
                    argv.join(" "),
                    timeout.as_secs()
                ))
            })?
            .map_err(guest_err)?;
        Ok(Captured {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }
}
