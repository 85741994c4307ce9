//! The raw create baseline on kraal's own bundle: `runsc run --detach` of a running
//! workspace's `config.json` (its root file system, mounts, cgroup limits, hostname)
//! with the runsc flags kraal uses (`--network=host --overlay2=none --log=…`), each
//! sandbox inside a network namespace of its own made beforehand, untimed. Only the
//! process differs (`sleep`, so copies share the volume without two guests on it) and
//! the cgroup path (one per copy). What kraal adds on top is then kraal's own work.

#![allow(clippy::disallowed_methods)] // Automation: spawns runsc and ip directly.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::bench::{Setup, ms, sh};

pub(crate) struct OwnBundle {
    dir: PathBuf,
    root: PathBuf,
    config: serde_json::Value,
}

impl OwnBundle {
    /// The bundle of workspace `name` of `s` (running, so its root is mounted).
    pub fn of(s: &Setup, name: &str) -> anyhow::Result<OwnBundle> {
        let list: serde_json::Value = serde_json::from_str(&s.kraal(&["ls", "--json"])?)?;
        let id = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["name"] == name)
            .and_then(|w| w["id"].as_str())
            .with_context(|| format!("workspace {name} not listed"))?
            .to_owned();
        let path =
            s.d.data
                .join("workspaces")
                .join(&id)
                .join("bundle/config.json");
        let mut config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        config["process"]["args"] = serde_json::json!(["/bin/sleep", "infinity"]);
        let dir = s.tmp.path().join("own-bundle");
        std::fs::create_dir_all(&dir)?;
        Ok(OwnBundle {
            root: dir.join("runsc"),
            dir,
            config,
        })
    }

    fn netns(id: &str) -> String {
        format!("kbr-{id}")
    }

    /// Untimed: the copy's bundle directory and network namespace.
    pub fn prepare(&self, id: &str) -> anyhow::Result<()> {
        let b = self.dir.join(id);
        std::fs::create_dir_all(&b)?;
        let mut c = self.config.clone();
        c["linux"]["cgroupsPath"] = serde_json::json!(format!("/kraal-bench-raw/{id}"));
        std::fs::write(b.join("config.json"), serde_json::to_vec(&c)?)?;
        sh(Command::new("ip").args(["netns", "add", &Self::netns(id)]))?;
        Ok(())
    }

    /// Timed: `runsc run --detach` in the copy's namespace, then `runsc exec /bin/true`.
    pub fn start_and_exec(&self, id: &str) -> anyhow::Result<f64> {
        let ns = std::fs::File::open(Path::new("/run/netns").join(Self::netns(id)))?;
        let t = Instant::now();
        let mut run = Command::new("runsc");
        run.arg(format!("--root={}", self.root.display()))
            .args(["--network=host", "--overlay2=none"])
            .arg(format!(
                "--log={}",
                self.dir.join(id).join("runsc.log").display()
            ))
            .args(["run", "--detach", "--bundle"])
            .arg(self.dir.join(id))
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setns is async-signal-safe; the file outlives the spawn.
        unsafe {
            run.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let status = run.status()?;
        if !status.success() {
            bail!("runsc run --detach {id} on kraal's bundle failed: {status}");
        }
        sh(Command::new("runsc")
            .arg(format!("--root={}", self.root.display()))
            .args(["exec", id, "/bin/true"]))?;
        Ok(ms(t.elapsed()))
    }

    /// Untimed: the sandbox, its namespace and bundle go.
    pub fn remove(&self, id: &str) {
        let _ = Command::new("runsc")
            .arg(format!("--root={}", self.root.display()))
            .args(["delete", "--force", id])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &Self::netns(id)])
            .output();
        let _ = std::fs::remove_dir_all(self.dir.join(id));
    }

    /// `n` copies started at once (each prepared beforehand, untimed): each one's time
    /// and the time until the last was done (ms). All removed afterwards.
    pub fn start_and_exec_concurrently(
        &self,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<(Vec<f64>, f64)> {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:04}")).collect();
        for id in &ids {
            self.prepare(id)?;
        }
        let t = Instant::now();
        let r: anyhow::Result<Vec<f64>> = std::thread::scope(|s| {
            let hs: Vec<_> = ids
                .iter()
                .map(|id| s.spawn(move || self.start_and_exec(id)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = ms(t.elapsed());
        std::thread::scope(|s| {
            for id in &ids {
                s.spawn(move || self.remove(id));
            }
        });
        Ok((r?, wall))
    }
}
