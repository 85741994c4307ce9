//! The cgroup freezer of a sandbox. `runsc pause` only stops the application's tasks: the
//! sentry itself keeps its timers and goroutines (a few % of a core per idle sandbox with
//! the systrap platform, which a hundred idle workspaces turn into whole cores). Freezing
//! the sandbox's cgroup — sentry and gofer, which runsc puts in the spec's `cgroupsPath` —
//! stops them too, so a paused workspace costs no CPU. cgroup v1 (`freezer.state`) and v2
//! (`cgroup.freeze`) are both handled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the kernel may take to freeze or thaw every task of the cgroup.
const SETTLE: Duration = Duration::from_secs(2);

/// A cgroup that can freeze a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Freezer {
    /// cgroup v1: the freezer controller's `freezer.state` (`FROZEN`, `FREEZING`, `THAWED`).
    V1(PathBuf),
    /// cgroup v2: the cgroup's directory (`cgroup.freeze`, `cgroup.events`).
    V2(PathBuf),
}

/// The freezer of the cgroup process `pid` is in, if the host has one. `root` is where
/// cgroup hierarchies are mounted (`/sys/fs/cgroup`).
pub(crate) fn of_pid(root: &Path, pid: i32) -> Option<Freezer> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    from_proc_cgroup(root, &text)
}

/// [`of_pid`] from the text of `/proc/<pid>/cgroup`.
pub(crate) fn from_proc_cgroup(root: &Path, text: &str) -> Option<Freezer> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "freezer") {
            let state = root.join("freezer").join(rel).join("freezer.state");
            if state.is_file() {
                return Some(Freezer::V1(state));
            }
        } else if controllers.is_empty() {
            unified = Some(rel.to_owned());
        }
    }
    // A v2 hierarchy is either the whole of `root` or, on hybrid hosts, `root/unified`.
    let rel = unified?;
    [root.to_owned(), root.join("unified")]
        .into_iter()
        .map(|base| base.join(&rel))
        .find(|dir| dir.join("cgroup.freeze").is_file() && !rel.is_empty())
        .map(Freezer::V2)
}

impl Freezer {
    /// Freezes (`true`) or thaws (`false`) every task of the cgroup and waits until the
    /// kernel says it is done.
    pub(crate) fn set(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Freezer::V1(state) => {
                std::fs::write(state, if frozen { "FROZEN" } else { "THAWED" })?;
            }
            Freezer::V2(dir) => {
                std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
            }
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the cgroup was not {} within {} s",
                        if frozen { "frozen" } else { "thawed" },
                        SETTLE.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether every task of the cgroup is frozen (a cgroup still freezing is not).
    pub(crate) fn is_frozen(&self) -> std::io::Result<bool> {
        match self {
            Freezer::V1(state) => Ok(std::fs::read_to_string(state)?.trim() == "FROZEN"),
            Freezer::V2(dir) => Ok(std::fs::read_to_string(dir.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freezer_is_found_on_v1_v2_and_hybrid_hosts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let v1 = root.join("freezer/kraal/ws-1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("freezer.state"), "THAWED\n").unwrap();
        let hybrid = "6:freezer:/kraal/ws-1\n4:memory:/kraal/ws-1\n0::/\n";
        assert_eq!(
            from_proc_cgroup(root, hybrid),
            Some(Freezer::V1(v1.join("freezer.state")))
        );

        let v2 = root.join("unified/kraal/ws-2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.freeze"), "0\n").unwrap();
        assert_eq!(
            from_proc_cgroup(root, "0::/kraal/ws-2\n"),
            Some(Freezer::V2(v2.clone()))
        );
        // No freezer anywhere, or the root cgroup (which cannot be frozen): none.
        assert_eq!(from_proc_cgroup(root, "4:memory:/kraal/ws-3\n0::/\n"), None);
        assert_eq!(from_proc_cgroup(root, "garbage"), None);

        // Setting waits for the kernel's answer; a file that never says so times out.
        std::fs::write(v2.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let f = Freezer::V2(v2.clone());
        assert!(!f.is_frozen().unwrap());
        assert_eq!(
            f.set(true).unwrap_err().kind(),
            std::io::ErrorKind::TimedOut
        );
        assert_eq!(
            std::fs::read_to_string(v2.join("cgroup.freeze")).unwrap(),
            "1"
        );
        f.set(false).unwrap();
    }
}
