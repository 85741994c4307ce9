//! Forwarded ports: each port a running workspace's image declares (devcontainer
//! `forwardPorts`, Dockerfile `EXPOSE`, recipe `ports`) gets a listener on the host's
//! loopback — the same port number when it is free, another one otherwise — that relays
//! connections to the sandbox over its private link. And the reverse for sandboxes
//! without a private link (pods): the host services' ports relayed into the sandbox
//! through the guest (`Accept`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kraal_core::WorkspaceId;
use kraal_sandbox::GuestEndpoint;
use kraal_store::WorkspaceRecord;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::Engine;

/// A port of a workspace reachable on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The port inside the workspace.
    pub port: u16,
    /// Where it is reachable on the host.
    pub host: SocketAddr,
}

pub(crate) struct Active {
    pub forward: Forward,
    task: JoinHandle<()>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr) {
    match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await {
        Ok(Ok(mut out)) => {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
        }
        Ok(Err(e)) => tracing::debug!(%target, "forwarded connection refused: {e}"),
        Err(_) => tracing::debug!(%target, "forwarded connection timed out"),
    }
}

/// The relay tasks of one workspace's host services (aborted when dropped).
pub(crate) struct Tunnels(Vec<JoinHandle<()>>);

impl Drop for Tunnels {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Engine {
    /// Relays the model gateway and egress proxy ports into a sandbox that has no private
    /// link: the guest listens on `host` (a loopback address) inside it, and each
    /// connection there is connected to the same address on the daemon's host, where the
    /// workspace's services listen.
    pub(crate) fn start_tunnels(self: &Arc<Self>, ws: &WorkspaceRecord, host: std::net::IpAddr) {
        let mut tasks = Vec::new();
        for port in [kraal_core::GATEWAY_PORT, kraal_core::EGRESS_PORT] {
            let me = Arc::downgrade(self);
            let id = ws.id.clone();
            let addr = SocketAddr::new(host, port);
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(engine) = me.upgrade() else { return };
                    let client = match engine.guest(id.as_str()).await {
                        Ok((_, c)) => c,
                        Err(_) => {
                            drop(engine);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    drop(engine);
                    match client.accept(&addr.to_string()).await {
                        Ok(conn) => {
                            tokio::spawn(async move {
                                match TcpStream::connect(addr).await {
                                    Ok(s) => {
                                        let _ = s.set_nodelay(true);
                                        conn.relay(s).await;
                                    }
                                    Err(e) => tracing::debug!(%addr, "host service refused: {e}"),
                                }
                            });
                        }
                        Err(e) => {
                            tracing::debug!(%addr, "tunnel accept: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }));
        }
        self.tunnels
            .lock()
            .unwrap()
            .insert(ws.id.clone(), Tunnels(tasks));
    }

    /// Starts forwarding the ports `ep` lists (once per run of the workspace).
    pub(crate) async fn forward_ports(&self, ws: &WorkspaceRecord, ep: &GuestEndpoint) {
        if ep.ports.is_empty() || self.forwards.lock().unwrap().contains_key(&ws.id) {
            return;
        }
        let mut active = Vec::new();
        for &port in &ep.ports {
            let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                Ok(l) => l,
                Err(_) => match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
                    Ok(l) => l,
                    Err(e) => {
                        self.event(&ws.id, "warn", &format!("cannot forward port {port}: {e}"));
                        continue;
                    }
                },
            };
            let Ok(host) = listener.local_addr() else {
                continue;
            };
            let target = SocketAddr::new(ep.addr.ip(), port);
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(relay(conn, target));
                }
            });
            self.event(&ws.id, "info", &format!("port {port} forwarded to {host}"));
            active.push(Active {
                forward: Forward { port, host },
                task,
            });
        }
        self.forwards.lock().unwrap().insert(ws.id.clone(), active);
    }

    pub(crate) fn unforward_ports(&self, id: &WorkspaceId) {
        self.forwards.lock().unwrap().remove(id);
    }

    /// Opens a TCP connection to `port` inside a running workspace, over its private link
    /// (for `kraal forward`).
    pub async fn connect_port(
        &self,
        reference: &str,
        port: u16,
    ) -> Result<(WorkspaceRecord, TcpStream), crate::EngineError> {
        let (rec, _client) = self.guest(reference).await?;
        if self.backend.kind() == kraal_core::BackendKind::Kubernetes {
            // Its endpoint is a local relay to the guest port only; an arbitrary port
            // would mean the daemon host's own loopback.
            return Err(crate::EngineError::Invalid(format!(
                "forwarding ports of {} is not available on the Kubernetes backend yet",
                rec.name
            )));
        }
        let ep = self.backend.endpoint(&rec.id).await?;
        let target = SocketAddr::new(ep.addr.ip(), port);
        let refused = |why: String| {
            crate::EngineError::Invalid(format!(
                "cannot connect to port {port} in {}: {why}",
                rec.name
            ))
        };
        let s =
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(refused(e.to_string())),
                Err(_) => return Err(refused("timed out".into())),
            };
        let _ = s.set_nodelay(true);
        Ok((rec, s))
    }

    /// The ports of a workspace forwarded to the host right now.
    pub fn ports(self: &Arc<Self>, id: &WorkspaceId) -> Vec<Forward> {
        self.forwards
            .lock()
            .unwrap()
            .get(id)
            .map(|v| v.iter().map(|a| a.forward.clone()).collect())
            .unwrap_or_default()
    }
}
