//! Git hosts' APIs, as much of them as the task layer needs: read an issue or the issues
//! with a label, open a pull request and follow it (state, head, check runs, commit
//! statuses, review and conversation comments), and check webhook signatures.
//!
//! Every call is made by the daemon with a token it holds; nothing here runs in a
//! sandbox. GitHub's REST API comes first; [`Forge`] dispatches on [`ForgeKind`], so
//! Gitea/Forgejo and GitLab are one more arm each, not a rewrite of the callers.

mod github;
mod webhook;

use serde::{Deserialize, Serialize};

pub use github::{GitHub, issue_from_json};
pub use webhook::{WebhookError, sign_github, verify_github_signature};

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{method} {url}: {status} {message}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ForgeError {
    /// The host answered that the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ForgeError::Status { status: 404, .. })
    }
}

/// Which API a git host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    GitHub,
}

impl ForgeKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "github" => Some(ForgeKind::GitHub),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
        }
    }
}

/// A git host the daemon knows the API of: `github:github.com=https://api.github.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeHost {
    /// The host name in clone URLs (`github.com`).
    pub host: String,
    pub kind: ForgeKind,
    /// The API's base URL, without a trailing slash.
    pub api: String,
}

impl ForgeHost {
    /// GitHub.com itself.
    pub fn github_com() -> Self {
        ForgeHost {
            host: "github.com".into(),
            kind: ForgeKind::GitHub,
            api: "https://api.github.com".into(),
        }
    }

    /// Parses `KIND:HOST[=API_URL]` (the API URL defaults to the kind's public one for its
    /// public host, `https://HOST/api/v3` for GitHub Enterprise).
    pub fn parse(spec: &str) -> Result<Self, ForgeError> {
        let bad = |why: &str| {
            ForgeError::Invalid(format!(
                "forge {spec:?}: {why} (expected KIND:HOST[=API_URL], e.g. github:github.com)"
            ))
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(|| bad("no kind"))?;
        let kind = ForgeKind::parse(kind).ok_or_else(|| bad("unknown kind; known: github"))?;
        let (host, api) = match rest.split_once('=') {
            Some((h, a)) => (h, Some(a)),
            None => (rest, None),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(bad("bad host name"));
        }
        let api = match api {
            Some(a) if a.starts_with("https://") || a.starts_with("http://") => {
                a.trim_end_matches('/').to_owned()
            }
            Some(_) => return Err(bad("the API URL must be http:// or https://")),
            None if host == "github.com" => "https://api.github.com".into(),
            None => format!("https://{host}/api/v3"),
        };
        Ok(ForgeHost {
            host: host.to_ascii_lowercase(),
            kind,
            api,
        })
    }
}

/// `OWNER/NAME`, checked to be a plain repository path.
pub fn check_repo(repo: &str) -> Result<(), ForgeError> {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((o, n)) if ok(o) && ok(n) => Ok(()),
        _ => Err(ForgeError::Invalid(format!(
            "repository {repo:?} is not OWNER/NAME"
        ))),
    }
}

/// An issue (or a pull request, which GitHub lists among issues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub url: String,
    pub labels: Vec<String>,
    pub open: bool,
    pub is_pull: bool,
}

/// A pull request to open.
#[derive(Debug, Clone)]
pub struct NewPull {
    pub title: String,
    /// The branch with the changes.
    pub head: String,
    /// The branch to merge into.
    pub base: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub number: u64,
    pub url: String,
    pub open: bool,
    pub merged: bool,
    pub head_sha: String,
}

/// One check's result on a commit (a check run or a commit status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    /// Still running or queued.
    pub pending: bool,
    /// Finished and not successful (failure, timed out, cancelled, action required, error).
    pub failed: bool,
    /// What the check reported (title, summary, text), possibly empty.
    pub details: String,
    pub url: Option<String>,
}

/// A comment on a pull request: on a line of its diff (`path`/`line`) or in its
/// conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub path: Option<String>,
    pub line: Option<u64>,
}

/// A client for one forge host with one token.
#[derive(Debug, Clone)]
pub enum Forge {
    GitHub(GitHub),
}

impl Forge {
    pub fn new(host: &ForgeHost, token: String) -> Result<Self, ForgeError> {
        match host.kind {
            ForgeKind::GitHub => Ok(Forge::GitHub(GitHub::new(&host.api, token)?)),
        }
    }

    pub async fn issue(&self, repo: &str, number: u64) -> Result<Issue, ForgeError> {
        match self {
            Forge::GitHub(g) => g.issue(repo, number).await,
        }
    }

    /// Open issues (not pull requests) carrying `label`, oldest first.
    pub async fn issues_with_label(
        &self,
        repo: &str,
        label: &str,
    ) -> Result<Vec<Issue>, ForgeError> {
        match self {
            Forge::GitHub(g) => g.issues_with_label(repo, label).await,
        }
    }

    pub async fn default_branch(&self, repo: &str) -> Result<String, ForgeError> {
        match self {
            Forge::GitHub(g) => g.default_branch(repo).await,
        }
    }

    /// The open pull request from `head` (a branch of `repo`), if there is one.
    pub async fn find_pull(&self, repo: &str, head: &str) -> Result<Option<Pull>, ForgeError> {
        match self {
            Forge::GitHub(g) => g.find_pull(repo, head).await,
        }
    }

    pub async fn create_pull(&self, repo: &str, new: &NewPull) -> Result<Pull, ForgeError> {
        match self {
            Forge::GitHub(g) => g.create_pull(repo, new).await,
        }
    }

    pub async fn pull(&self, repo: &str, number: u64) -> Result<Pull, ForgeError> {
        match self {
            Forge::GitHub(g) => g.pull(repo, number).await,
        }
    }

    /// Every check of commit `sha`: check runs and commit statuses.
    pub async fn checks(&self, repo: &str, sha: &str) -> Result<Vec<Check>, ForgeError> {
        match self {
            Forge::GitHub(g) => g.checks(repo, sha).await,
        }
    }

    /// Review comments (on lines of the diff) and conversation comments of a pull
    /// request, by id.
    pub async fn comments(&self, repo: &str, number: u64) -> Result<Vec<Comment>, ForgeError> {
        match self {
            Forge::GitHub(g) => g.comments(repo, number).await,
        }
    }
}

/// `OWNER/NAME#N` → (`OWNER/NAME`, N); `HOST/OWNER/NAME#N` names the host too.
pub fn parse_issue_ref(s: &str) -> Result<(Option<String>, String, u64), ForgeError> {
    let bad = || {
        ForgeError::Invalid(format!(
            "issue {s:?} is not OWNER/REPO#N (or HOST/OWNER/REPO#N)"
        ))
    };
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .map(|r| r.replacen("/issues/", "#", 1))
        .unwrap_or_else(|| s.to_owned());
    let (path, n) = s.rsplit_once('#').ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').collect();
    let (host, repo) = match parts.as_slice() {
        [o, r] => (None, format!("{o}/{r}")),
        [h, o, r] if h.contains('.') => (Some(h.to_ascii_lowercase()), format!("{o}/{r}")),
        _ => return Err(bad()),
    };
    check_repo(&repo).map_err(|_| bad())?;
    Ok((host, repo, n))
}

/// `OWNER/NAME`, `HOST/OWNER/NAME` or `https://HOST/OWNER/NAME(.git)` → (host, `OWNER/NAME`).
pub fn parse_repo_ref(s: &str) -> Result<(Option<String>, String), ForgeError> {
    let bad = || {
        ForgeError::Invalid(format!(
            "repository {s:?} is not OWNER/REPO (or HOST/OWNER/REPO)"
        ))
    };
    let t = s.trim();
    let t = t.strip_prefix("https://").unwrap_or(t);
    let t = t.trim_end_matches('/');
    let t = t.strip_suffix(".git").unwrap_or(t);
    let parts: Vec<&str> = t.split('/').collect();
    let (host, repo) = match parts.as_slice() {
        [o, r] => (None, format!("{o}/{r}")),
        [h, o, r] if h.contains('.') => (Some(h.to_ascii_lowercase()), format!("{o}/{r}")),
        _ => return Err(bad()),
    };
    check_repo(&repo).map_err(|_| bad())?;
    Ok((host, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_references_parse_and_junk_is_named() {
        assert_eq!(parse_repo_ref("o/r").unwrap(), (None, "o/r".to_owned()));
        assert_eq!(
            parse_repo_ref("https://GitHub.test/o/r.git").unwrap(),
            (Some("github.test".to_owned()), "o/r".to_owned())
        );
        for bad in ["o", "a/b/c", "o/r#1", "../r", ""] {
            let e = parse_repo_ref(bad).unwrap_err().to_string();
            assert!(e.contains("is not OWNER/REPO"), "{bad}: {e}");
        }
    }

    #[test]
    fn forge_specs_parse_with_defaults_and_refuse_junk() {
        assert_eq!(
            ForgeHost::parse("github:github.com").unwrap(),
            ForgeHost::github_com()
        );
        let ghe = ForgeHost::parse("github:git.corp.example").unwrap();
        assert_eq!(ghe.api, "https://git.corp.example/api/v3");
        let t = ForgeHost::parse("github:github.test=http://127.0.0.1:9/api/").unwrap();
        assert_eq!(t.api, "http://127.0.0.1:9/api");
        for bad in [
            "github.com",
            "gitlab:gitlab.com",
            "github:",
            "github:a b",
            "github:h=ftp://x",
        ] {
            assert!(ForgeHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_references_parse_in_their_usual_spellings() {
        assert_eq!(
            parse_issue_ref("octo/app#12").unwrap(),
            (None, "octo/app".into(), 12)
        );
        assert_eq!(
            parse_issue_ref("github.test/octo/app#3").unwrap(),
            (Some("github.test".into()), "octo/app".into(), 3)
        );
        assert_eq!(
            parse_issue_ref("https://github.com/octo/app/issues/7").unwrap(),
            (Some("github.com".into()), "octo/app".into(), 7)
        );
        for bad in [
            "octo/app",
            "octo/app#x",
            "octo#1",
            "a/b/c#1",
            "../x#1",
            "o/a#0",
        ] {
            assert!(parse_issue_ref(bad).is_err(), "{bad}");
        }
    }
}
