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
use kraal_protocol::ErrorCode;
use kraal_sandbox::{GuestClientError, GuestEndpoint};
use kraal_store::WorkspaceRecord;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::either::Either;

use crate::Engine;

/// A connection to a port inside a workspace: direct TCP over its private link, or a
/// stream relayed by the guest agent.
pub type PortStream = Either<TcpStream, tokio::io::DuplexStream>;

/// A port of a running workspace, for previews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePort {
    pub port: u16,
    /// Where it listens inside the sandbox (empty when nothing does yet).
    pub addresses: Vec<String>,
    /// The listening process, when the guest can tell.
    pub process: Option<String>,
    /// The image declares it (`forwardPorts`, `EXPOSE`, a recipe's `ports`).
    pub declared: bool,
    pub listening: bool,
}

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
    pub(crate) async fn forward_ports(self: &Arc<Self>, ws: &WorkspaceRecord, ep: &GuestEndpoint) {
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
            let engine = Arc::downgrade(self);
            let id = ws.id.clone();
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    // A connection is a use: it resumes a paused workspace and keeps it
                    // from pausing or stopping while open.
                    let Some(e) = engine.upgrade() else { break };
                    e.thaw(&id).await;
                    let hold = e.hold(&id);
                    drop(e);
                    tokio::spawn(async move {
                        relay(conn, target).await;
                        drop(hold);
                    });
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

    /// Opens a TCP connection to `port` inside a running workspace (for `kraal forward`
    /// and dev-server previews): straight over its private link when something listens on
    /// the sandbox's address, otherwise through the guest to the sandbox's own loopback
    /// (servers bound to `localhost`, and pods, which have no private link).
    pub async fn connect_port(
        &self,
        reference: &str,
        port: u16,
    ) -> Result<(WorkspaceRecord, PortStream), crate::EngineError> {
        let (rec, client) = self.guest(reference).await?;
        if port == 0 {
            return Err(crate::EngineError::Invalid("port 0 is not a port".into()));
        }
        let ep = self.backend.endpoint(&rec.id).await?;
        if port == ep.addr.port() && !ep.tunnel {
            return Err(crate::EngineError::Invalid(format!(
                "port {port} in {} is kraal's guest agent, not one of the workspace's",
                rec.name
            )));
        }
        if self.backend.kind() != kraal_core::BackendKind::Kubernetes {
            let target = SocketAddr::new(ep.addr.ip(), port);
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target)).await
            {
                let _ = s.set_nodelay(true);
                return Ok((rec, Either::Left(s)));
            }
        }
        let relayed = client.connect_tcp(port).await.map_err(|e| match e {
            GuestClientError::Guest(g) if g.code == ErrorCode::NotFound => {
                crate::EngineError::NotListening {
                    workspace: rec.name.to_string(),
                    port,
                }
            }
            e => crate::EngineError::guest(rec.name.as_str())(e),
        })?;
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        tokio::spawn(relayed.relay(theirs));
        Ok((rec, Either::Right(ours)))
    }

    /// What listens in a running workspace, with the ports its image declares
    /// (`forwardPorts`, `EXPOSE`) that nothing listens on yet.
    pub async fn live_ports(&self, reference: &str) -> Result<Vec<LivePort>, crate::EngineError> {
        let (rec, client) = self.guest(reference).await?;
        let listening = client
            .ports()
            .await
            .map_err(crate::EngineError::guest(rec.name.as_str()))?;
        let declared = self
            .backend
            .endpoint(&rec.id)
            .await
            .map(|ep| ep.ports)
            .unwrap_or_default();
        let mut out: Vec<LivePort> = listening
            .into_iter()
            .map(|p| LivePort {
                declared: declared.contains(&p.port),
                listening: true,
                port: p.port,
                addresses: p.addresses,
                process: p.process,
            })
            .collect();
        for port in declared {
            if !out.iter().any(|p| p.port == port) {
                out.push(LivePort {
                    port,
                    addresses: Vec::new(),
                    process: None,
                    declared: true,
                    listening: false,
                });
            }
        }
        out.sort_by_key(|p| p.port);
        Ok(out)
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
