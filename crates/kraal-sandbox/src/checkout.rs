//! Materializes a workspace [`Source`] into a directory: a local directory is copied
//! (with `.git`, permissions and timestamps), a git URL is cloned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_core::Source;

use crate::process::{Cmd, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("source directory {path} does not exist")]
    Missing { path: PathBuf },
    #[error("source {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("copying {path} failed")]
    Copy {
        path: PathBuf,
        #[source]
        source: ProcessError,
    },
    #[error("cloning {url} failed")]
    Clone {
        url: String,
        #[source]
        source: ProcessError,
    },
    #[error("cannot create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fills `dest` (created if missing, expected empty) from `source`.
pub async fn materialize(source: &Source, dest: &Path) -> Result<(), CheckoutError> {
    std::fs::create_dir_all(dest).map_err(|e| CheckoutError::Io {
        path: dest.to_owned(),
        source: e,
    })?;
    match source {
        Source::Empty => Ok(()),
        Source::Local { path } => {
            let md = std::fs::metadata(path)
                .map_err(|_| CheckoutError::Missing { path: path.clone() })?;
            if !md.is_dir() {
                return Err(CheckoutError::NotADirectory { path: path.clone() });
            }
            let mut from = path.as_os_str().to_owned();
            from.push("/.");
            Cmd::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(from)
                .arg(dest)
                .timeout(Duration::from_secs(3600))
                .run()
                .await
                .map_err(|e| CheckoutError::Copy {
                    path: path.clone(),
                    source: e,
                })?;
            Ok(())
        }
        Source::Git { url, branch } => {
            // Only plain transports: `ext::` and friends would run commands on the host.
            let mut cmd = Cmd::new("git")
                .args(["-c", "protocol.allow=never"])
                .args([
                    "-c",
                    "protocol.https.allow=always",
                    "-c",
                    "protocol.http.allow=always",
                ])
                .args([
                    "-c",
                    "protocol.ssh.allow=always",
                    "-c",
                    "protocol.git.allow=always",
                ])
                .args(["-c", "protocol.file.allow=always"])
                .arg("clone")
                .arg("--quiet");
            if let Some(b) = branch {
                cmd = cmd.arg("--branch").arg(b);
            }
            cmd.arg("--")
                .arg(url)
                .arg(dest)
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
                .timeout(Duration::from_secs(3600))
                .run()
                .await
                .map_err(|e| CheckoutError::Clone {
                    url: url.clone(),
                    source: e,
                })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_copy_keeps_git_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join(".git")).unwrap();
        std::fs::write(src.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let dest = d.path().join("dest");
        materialize(&Source::Local { path: src }, &dest)
            .await
            .unwrap();
        assert!(dest.join(".git/HEAD").is_file());
        assert_eq!(
            std::fs::metadata(dest.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }

    #[tokio::test]
    async fn missing_sources_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let err = materialize(
            &Source::Local {
                path: d.path().join("nope"),
            },
            &d.path().join("x"),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::write(d.path().join("file"), "").unwrap();
        let err = materialize(
            &Source::Local {
                path: d.path().join("file"),
            },
            &d.path().join("y"),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[tokio::test]
    async fn clone_refuses_ext_transport_even_if_validation_was_skipped() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("pwned");
        let url = format!("ext::sh -c touch% {}", marker.display());
        let src = Source::Git { url, branch: None };
        assert!(materialize(&src, &d.path().join("x")).await.is_err());
        assert!(!marker.exists(), "ext:: transport ran a command");
    }
}
