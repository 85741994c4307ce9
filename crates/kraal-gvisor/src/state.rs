//! runsc's view of a container read from its state file under `--root`, without spawning
//! `runsc state` (the reconciler asks about every workspace every few seconds, and halts
//! poll it): the file's `status`, corrected to `stopped` when the sandbox process it names
//! is gone, as `runsc state` itself does.

use std::path::Path;

/// What the state file says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// No state file: runsc knows no such container.
    Missing,
    /// runsc's status string (`creating`, `created`, `running`, `paused`, `stopped`).
    Status(String),
    /// A file this reader does not understand (another runsc version, or one being
    /// written): ask `runsc state`.
    Unknown,
}

/// Reads the state of container `id` (the sandbox of the same id) under `root`.
pub(crate) fn read(root: &Path, id: &str) -> Read {
    let path = root.join(format!("{id}_sandbox:{id}.state"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(_) => return Read::Unknown,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Read::Unknown;
    };
    if v.get("id").and_then(|i| i.as_str()) != Some(id) {
        return Read::Unknown;
    }
    let Some(status) = v.get("status").and_then(|s| s.as_str()) else {
        return Read::Unknown;
    };
    let live = matches!(status, "created" | "running" | "paused");
    if live {
        let Some(pid) = v
            .pointer("/sandbox/pid")
            .and_then(|p| p.as_i64())
            .filter(|p| *p > 0 && *p <= i32::MAX as i64)
        else {
            return Read::Unknown;
        };
        if !alive(pid as i32) {
            return Read::Status("stopped".into());
        }
    }
    Read::Status(status.to_owned())
}

/// The pid of container `id`'s sandbox process, while its state file names a live one.
pub(crate) fn sandbox_pid(root: &Path, id: &str) -> Option<i32> {
    let path = root.join(format!("{id}_sandbox:{id}.state"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v.get("id").and_then(|i| i.as_str()) != Some(id) {
        return None;
    }
    let pid = v
        .pointer("/sandbox/pid")
        .and_then(|p| p.as_i64())
        .filter(|p| *p > 0 && *p <= i32::MAX as i64)? as i32;
    alive(pid).then_some(pid)
}

/// Whether process `pid` exists (signal 0; permission denied means it does).
fn alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, id: &str, body: &str) {
        std::fs::write(dir.join(format!("{id}_sandbox:{id}.state")), body).unwrap();
    }

    #[test]
    fn the_state_file_answers_like_runsc_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(read(root, "ws-1"), Read::Missing);

        let me = std::process::id();
        write(
            root,
            "ws-1",
            &format!(r#"{{"id":"ws-1","status":"running","sandbox":{{"id":"ws-1","pid":{me}}}}}"#),
        );
        assert_eq!(read(root, "ws-1"), Read::Status("running".into()));
        assert_eq!(sandbox_pid(root, "ws-1"), Some(me as i32));

        // The sandbox process is gone: runsc reports the container stopped.
        // Pids stay below pid_max, so that one never exists.
        let dead: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        write(
            root,
            "ws-2",
            &format!(r#"{{"id":"ws-2","status":"paused","sandbox":{{"id":"ws-2","pid":{dead}}}}}"#),
        );
        assert_eq!(read(root, "ws-2"), Read::Status("stopped".into()));
        assert_eq!(sandbox_pid(root, "ws-2"), None);

        write(
            root,
            "ws-3",
            r#"{"id":"ws-3","status":"stopped","sandbox":{"pid":0}}"#,
        );
        assert_eq!(read(root, "ws-3"), Read::Status("stopped".into()));

        // Half-written, another container's, or without a pid: ask runsc.
        write(root, "ws-4", r#"{"id":"ws-4","stat"#);
        assert_eq!(read(root, "ws-4"), Read::Unknown);
        write(root, "ws-5", r#"{"id":"other","status":"running"}"#);
        assert_eq!(read(root, "ws-5"), Read::Unknown);
        write(root, "ws-6", r#"{"id":"ws-6","status":"running"}"#);
        assert_eq!(read(root, "ws-6"), Read::Unknown);
    }
}
