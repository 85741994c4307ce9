//! Where a workspace's checkout comes from: a local directory or a git URL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(
        "git URL {url:?} uses a transport kraal does not allow; use https://, ssh://, git://, file:// or user@host:path"
    )]
    Transport { url: String },
    #[error("local source path {path:?} must be absolute")]
    Relative { path: PathBuf },
    #[error("source is empty")]
    Empty,
}

/// The origin of a workspace's files, copied or cloned into its volume once at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A directory on the daemon's host, copied into the volume (including `.git`).
    Local {
        #[schema(value_type = String)]
        path: PathBuf,
    },
    /// A git repository cloned into the volume.
    Git {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
    },
    /// An empty volume.
    Empty,
}

impl Source {
    /// Whether `s` reads as a git URL rather than a path.
    pub fn looks_like_git_url(s: &str) -> bool {
        s.contains("://") || is_scp_like(s)
    }

    /// Validates a git URL's transport. `ext::` and other helper transports run arbitrary
    /// commands on the host, so only plain network and file transports are accepted.
    pub fn git(url: &str, branch: Option<String>) -> Result<Self, SourceError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(SourceError::Empty);
        }
        let allowed = ["https://", "http://", "ssh://", "git://", "file://"];
        if !(allowed.iter().any(|p| url.starts_with(p)) || is_scp_like(url)) {
            return Err(SourceError::Transport {
                url: url.to_owned(),
            });
        }
        Ok(Source::Git {
            url: url.to_owned(),
            branch,
        })
    }

    pub fn local(path: PathBuf) -> Result<Self, SourceError> {
        if !path.is_absolute() {
            return Err(SourceError::Relative { path });
        }
        Ok(Source::Local { path })
    }

    /// A short human description, e.g. for `kraal ls`.
    pub fn describe(&self) -> String {
        match self {
            Source::Local { path } => path.display().to_string(),
            Source::Git {
                url,
                branch: Some(b),
            } => format!("{url}#{b}"),
            Source::Git { url, branch: None } => url.clone(),
            Source::Empty => "(empty)".to_owned(),
        }
    }

    /// The repository (`OWNER/REPO`, normal form) this source was cloned from, when it is
    /// a git URL on `host`.
    pub fn repo_on(&self, host: &str) -> Option<String> {
        match self {
            Source::Git { url, .. } => {
                crate::git::git_url_repo(url).and_then(|(h, r)| (h == host).then_some(r))
            }
            Source::Local { .. } | Source::Empty => None,
        }
    }

    /// The last path segment, used to derive a default workspace name.
    pub fn basename(&self) -> Option<String> {
        let raw = match self {
            Source::Local { path } => path.file_name()?.to_string_lossy().into_owned(),
            Source::Git { url, .. } => {
                let tail = url.trim_end_matches('/').rsplit(['/', ':']).next()?;
                tail.trim_end_matches(".git").to_owned()
            }
            Source::Empty => return None,
        };
        (!raw.is_empty()).then_some(raw)
    }
}

/// `user@host:path` (scp syntax) without a scheme.
fn is_scp_like(s: &str) -> bool {
    match (s.find('@'), s.find(':')) {
        (Some(at), Some(colon)) => at < colon && !s.contains("://") && !s.starts_with('/'),
        _ => false,
    }
}
