//! gVisor snapshots (`--gvisor-network sandbox` only: runsc cannot save host sockets).
//! A snapshot is runsc's checkpoint of the sandbox's memory next to copies of the
//! workspace's writable files — the volume and the root file system's upper layer — taken
//! while the sandbox is stopped, so memory and files agree. Taking one stops the sandbox
//! for the copy and restores it from the checkpoint just written; restoring one puts the
//! files back and restores the sandbox into the workspace's existing network namespace
//! (its address and slot unchanged, so the netstack's saved address still holds).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_core::WorkspaceId;
use kraal_sandbox::process::Cmd;
use kraal_sandbox::{Backend, BackendError, GuestEndpoint, SandboxSpec, check_snapshot_name};

use crate::{GvisorBackend, NetworkMode, VOLUME_IMAGE};

/// Copies of a workspace's files can be large; their copy gets this long.
const COPY_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long connections closed just before a checkpoint may take to wind down.
const CONNECTIONS_CLOSE: Duration = Duration::from_secs(5);

/// The first `max` bytes of file `p` as text (empty when unreadable).
fn read_head(p: &Path, max: usize) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(p) {
        let _ = f.take(max as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The connection runsc names when it refuses to save one: `local A:P, remote B:Q`.
fn open_connection(stderr: &str) -> Option<String> {
    const MARK: &str = "cannot be saved in connected state: ";
    let rest = &stderr[stderr.find(MARK)? + MARK.len()..];
    let remote = rest.find("remote ")? + "remote ".len();
    let addr_len = rest[remote..]
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len() - remote);
    Some(rest[..remote + addr_len].trim_end_matches(':').to_owned())
}

impl GvisorBackend {
    fn snapshot_dir(&self, id: &WorkspaceId, name: &str) -> PathBuf {
        self.ws_dir(id).join("snapshots").join(name)
    }

    /// What runsc cannot do on the host's network stack is refused as unsupported (the
    /// request's problem, not the server's), saying what to change.
    #[allow(clippy::result_large_err)] // the backend error its callers return
    fn require_checkpoints(&self) -> Result<(), BackendError> {
        if self.cfg.network == NetworkMode::Sandbox {
            return Ok(());
        }
        Err(BackendError::Unsupported {
            backend: kraal_core::BackendKind::Gvisor,
            op: "snapshots on the host's network stack (runsc cannot save host sockets; \
                 start the daemon with `kraal serve --gvisor-network sandbox`)",
        })
    }

    /// Takes snapshot `name` of running workspace `id`; it runs on afterwards, from the
    /// checkpoint just taken. An existing snapshot of that name is replaced.
    pub(crate) async fn take_snapshot(
        &self,
        id: &WorkspaceId,
        name: &str,
    ) -> Result<(), BackendError> {
        self.require_checkpoints()?;
        check_snapshot_name(id, name)?;
        match self.runsc_state(id).await?.as_deref() {
            Some("running") => {}
            Some("paused") => self.resume(id).await?,
            other => {
                return Err(BackendError::failed(
                    id,
                    "snapshot",
                    format!(
                        "the sandbox is {}; start the workspace first",
                        other.unwrap_or("not there")
                    ),
                ));
            }
        }
        let dir = self.ws_dir(id);
        let parent = dir.join("snapshots");
        let tmp = parent.join(format!(".partial-{name}"));
        remove_dir(&tmp).map_err(BackendError::io(id, "snapshot", &tmp))?;
        std::fs::create_dir_all(tmp.join("memory"))
            .map_err(BackendError::io(id, "snapshot", &tmp))?;
        // The checkpoint stops the sandbox: from here on nothing writes the files.
        let saved = self.checkpoint(id, &tmp.join("memory")).await;
        let copied = match saved {
            Ok(_) => copy_files(id, &dir, &tmp).await,
            Err(e) => Err(e),
        };
        // Running again either way: from the new checkpoint when there is one.
        let resumed = match &copied {
            Ok(()) => self.relaunch(id, &tmp.join("memory")).await.map(|_| ()),
            Err(_) => Ok(()),
        };
        if let Err(e) = copied.and(resumed) {
            let _ = remove_dir(&tmp);
            return Err(e);
        }
        let snap = self.snapshot_dir(id, name);
        remove_dir(&snap).map_err(BackendError::io(id, "snapshot", &snap))?;
        std::fs::rename(&tmp, &snap).map_err(BackendError::io(id, "snapshot", &snap))
    }

    /// `runsc checkpoint` of `id` into `memory` (the sandbox stops). runsc refuses while a
    /// TCP connection into the sandbox is open; connections the daemon just closed take a
    /// moment to wind down, so that refusal is retried for a while, then explained.
    async fn checkpoint(&self, id: &WorkspaceId, memory: &Path) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + CONNECTIONS_CLOSE;
        // runsc's refusal comes first, then pages of goroutines: its output goes to a file
        // whose head is read.
        let out = memory.with_extension("out");
        loop {
            let r = self
                .runsc()
                .arg("checkpoint")
                .arg("--compression=none")
                .arg(format!("--image-path={}", memory.display()))
                .arg(id.as_str())
                .stdout_to(&out)
                .timeout(COPY_TIMEOUT)
                .run()
                .await;
            if r.is_ok() {
                let _ = std::fs::remove_file(&out);
                return Ok(());
            }
            let head = read_head(&out, 4096);
            match open_connection(&head) {
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(conn) => {
                    return Err(BackendError::failed(
                        id,
                        "snapshot",
                        format!(
                            "the sandbox has an open TCP connection ({conn}) and this runsc \
                             cannot save one; close it (or stop what holds it) and try again"
                        ),
                    ));
                }
                None => {
                    let first = head.lines().next().unwrap_or_default().trim().to_owned();
                    let e = r
                        .map(|_| ())
                        .map_err(BackendError::runtime(id, "checkpoint"));
                    return match first.is_empty() {
                        true => e,
                        false => Err(BackendError::failed(
                            id,
                            "checkpoint",
                            format!("runsc: {first}"),
                        )),
                    };
                }
            }
        }
    }

    /// Replaces workspace `spec.id` with snapshot `name`: its files as they were, and its
    /// processes restored from the checkpoint.
    pub(crate) async fn restore_snapshot(
        &self,
        spec: &SandboxSpec,
        name: &str,
    ) -> Result<GuestEndpoint, BackendError> {
        let id = &spec.id;
        self.require_checkpoints()?;
        check_snapshot_name(id, name)?;
        let snap = self.snapshot_dir(id, name);
        if !snap.join("memory/checkpoint.img").is_file() {
            return Err(BackendError::failed(
                id,
                "restore",
                format!("no snapshot named {name:?}"),
            ));
        }
        self.remove_sandbox(id).await?;
        // The files go back with nothing mounted over them.
        self.unmount_root(id).await;
        let dir = self.ws_dir(id);
        let volume = dir.join("volume");
        kraal_sandbox::disk::unmount(&volume)
            .await
            .map_err(BackendError::runtime(id, "unmount volume"))?;
        copy_files(id, &snap, &dir).await?;
        // The overlay's work directory belongs to the upper layer that was replaced.
        let work = dir.join("work");
        remove_dir(&work).map_err(BackendError::io(id, "restore", &work))?;
        std::fs::create_dir_all(&work).map_err(BackendError::io(id, "restore", &work))?;
        self.relaunch(id, &snap.join("memory")).await
    }

    /// Stops and deletes the sandbox of `id`, keeping its network namespace.
    async fn remove_sandbox(&self, id: &WorkspaceId) -> Result<(), BackendError> {
        if self.runsc_state(id).await?.is_none() {
            return Ok(());
        }
        self.set_frozen(id, false).await?;
        // Whatever runs is discarded: killed at once (`runsc delete --force` alone takes
        // over a second to stop a sandbox), then runsc forgets it.
        if let Some(pid) = crate::state::sandbox_pid(&self.cfg.runsc_root, id.as_str()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while nix::sys::signal::kill(pid, None).is_ok()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.runsc()
            .args(["delete", "--force", id.as_str()])
            .run()
            .await
            .map_err(BackendError::runtime(id, "delete"))?;
        Ok(())
    }

    /// Restores `id`'s sandbox from the checkpoint in `memory`: its volume and root
    /// mounted, its link addressed again (a namespace that is gone is made anew, on the
    /// slot the workspace had), then `runsc restore` of its bundle.
    async fn relaunch(
        &self,
        id: &WorkspaceId,
        memory: &Path,
    ) -> Result<GuestEndpoint, BackendError> {
        let dir = self.ws_dir(id);
        // A checkpoint leaves its container behind, stopped.
        self.remove_sandbox(id).await?;
        self.mount_volume(id).await?;
        self.mount_root(id).await?;
        let slot = self.recorded_slot(id).ok_or_else(|| {
            BackendError::failed(id, "restore", "the workspace has no network slot on record")
        })?;
        let link = if kraal_net::netns_path(id).exists() {
            let link = self.link(id, slot);
            kraal_net::readdress(id, &link)
                .await
                .map_err(BackendError::chained(id, "network setup"))?;
            link
        } else {
            self.make_link(id, Some(slot)).await?
        };
        let console = dir.join("console.log");
        let restored = self
            .launch(id, &console)?
            .arg("restore")
            .arg("--detach")
            .arg(format!("--image-path={}", memory.display()))
            .arg("--bundle")
            .arg(dir.join("bundle"))
            .arg(id.as_str())
            .run()
            .await;
        if let Err(e) = restored {
            let tail = kraal_sandbox::tail_file(&console, 2000);
            let mut msg = kraal_sandbox::error_chain(&e);
            if !tail.trim().is_empty() {
                msg.push_str(&format!("\nconsole:\n{}", tail.trim()));
            }
            return Err(BackendError::failed(id, "restore", msg));
        }
        Ok(GuestEndpoint {
            addr: std::net::SocketAddr::from((link.guest_ip, kraal_protocol::DEFAULT_GUEST_PORT)),
            host: Some(link.host_ip.into()),
            ports: self.image_config(id).ports,
            tunnel: false,
        })
    }
}

/// Removes directory `p` and everything in it; one that is not there is fine.
fn remove_dir(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Copies a workspace's writable files from `from` to `to`: the root file system's upper
/// layer, and the volume — its ext4 image (sparse) when it has one, else its directory.
/// What `to` had of them is replaced.
async fn copy_files(id: &WorkspaceId, from: &Path, to: &Path) -> Result<(), BackendError> {
    let image = from.join(VOLUME_IMAGE);
    let mut items = vec!["upper"];
    if image.is_file() {
        // A mounted volume's pages reach its image first.
        if kraal_sandbox::disk::is_mountpoint(&from.join("volume")) {
            Cmd::new("sync")
                .arg("--file-system")
                .arg(from.join("volume"))
                .timeout(COPY_TIMEOUT)
                .run()
                .await
                .map_err(BackendError::runtime(id, "sync volume"))?;
        }
        items.push(VOLUME_IMAGE);
    } else {
        items.push("volume");
    }
    for item in items {
        // Copied beside, then swapped in: a failed copy leaves the old files whole.
        let dst = to.join(item);
        let partial = to.join(format!(".{item}.partial"));
        let _ = std::fs::remove_file(&partial);
        remove_dir(&partial).map_err(BackendError::io(id, "copy", &partial))?;
        Cmd::new("cp")
            .args([
                "-a",
                "--sparse=always",
                "--reflink=auto",
                "--no-target-directory",
            ])
            .arg(from.join(item))
            .arg(&partial)
            .timeout(COPY_TIMEOUT)
            .run()
            .await
            .map_err(BackendError::runtime(id, "copy"))?;
        if dst.is_dir() {
            remove_dir(&dst).map_err(BackendError::io(id, "copy", &dst))?;
        }
        std::fs::rename(&partial, &dst).map_err(BackendError::io(id, "copy", &dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refused_connection_is_named() {
        let stderr = "checkpoint failed: checkpointing container \"ws-1\": encoding error: save rejected due to unsupported networking state: endpoint cannot be saved in connected state: local 10.213.0.2:7071, remote 10.213.0.1:47996:\ngoroutine 52 [running]:";
        assert_eq!(
            super::open_connection(stderr).as_deref(),
            Some("local 10.213.0.2:7071, remote 10.213.0.1:47996")
        );
        assert_eq!(super::open_connection("some other failure"), None);
    }
}
