//! Host directories mounted into a workspace (`kraal up --mount HOST:PATH[:rw]`):
//! read-only unless asked otherwise, never over the workspace's own volume or the system
//! directories the sandbox needs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Mount {
    /// Absolute directory on the daemon's host.
    #[schema(value_type = String)]
    pub host: PathBuf,
    /// Absolute path inside the workspace.
    pub path: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mount {spec:?}: {reason}")]
pub struct MountError {
    pub spec: String,
    pub reason: String,
}

/// Paths a mount may not cover or sit under.
const RESERVED: &[&str] = &[
    "/workspace",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/boot",
    "/opt/kraal",
    "/.kraal",
    "/var/lib/kraal",
];

impl Mount {
    /// `HOST:PATH`, `HOST:PATH:ro` or `HOST:PATH:rw`.
    pub fn parse(spec: &str) -> Result<Mount, MountError> {
        let err = |reason: &str| MountError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, path, writable) = match parts.as_slice() {
            [h, p] => (*h, *p, false),
            [h, p, "ro"] => (*h, *p, false),
            [h, p, "rw"] => (*h, *p, true),
            [_, _, m] => return Err(err(&format!("mode {m:?} is neither ro nor rw"))),
            _ => return Err(err("expected HOST:PATH or HOST:PATH:ro|rw")),
        };
        let m = Mount {
            host: PathBuf::from(host),
            path: path.to_owned(),
            writable,
        };
        m.validate().map(|()| m)
    }

    pub fn validate(&self) -> Result<(), MountError> {
        let err = |reason: String| MountError {
            spec: format!("{}:{}", self.host.display(), self.path),
            reason,
        };
        if !self.host.is_absolute() {
            return Err(err("the host directory must be an absolute path".into()));
        }
        if !self.path.starts_with('/')
            || self.path.split('/').any(|c| c == ".." || c == ".")
            || self.path.contains("//")
            || self.path.contains(['\0', ',', ':'])
        {
            return Err(err(
                "the workspace path must be absolute, without `.`, `..`, `,` or `:`".into(),
            ));
        }
        let path = self.path.trim_end_matches('/');
        let reserved = path.is_empty()
            || RESERVED
                .iter()
                .any(|r| path == *r || path.starts_with(&format!("{r}/")));
        if reserved {
            return Err(err(format!(
                "{} is reserved for the sandbox itself",
                self.path
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_with_read_only_by_default() {
        let m = Mount::parse("/srv/data:/data").unwrap();
        assert_eq!(
            (m.host.to_str().unwrap(), m.path.as_str(), m.writable),
            ("/srv/data", "/data", false)
        );
        assert!(Mount::parse("/srv/data:/data:rw").unwrap().writable);
        assert!(!Mount::parse("/srv/data:/mnt/x:ro").unwrap().writable);
    }

    #[test]
    fn bad_mounts_name_the_problem() {
        for (spec, why) in [
            ("data:/data", "absolute"),
            ("/srv:/data:rx", "neither ro nor rw"),
            ("/srv", "HOST:PATH"),
            ("/srv:data", "absolute"),
            ("/srv:/a/../etc", "`..`"),
            ("/srv:/workspace", "reserved"),
            ("/srv:/workspace/sub", "reserved"),
            ("/srv:/", "reserved"),
            ("/srv:/proc/x", "reserved"),
            ("/srv:/opt/kraal/agents", "reserved"),
        ] {
            let e = Mount::parse(spec).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("invalid mount"),
                "{spec}: {e}"
            );
        }
        assert!(Mount::parse("/srv:/opt/data").is_ok());
    }
}
