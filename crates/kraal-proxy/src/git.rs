//! The git requests the git gateway forwards: git's smart HTTP endpoints (`info/refs` with
//! the upload-pack or receive-pack service, and the two pack POSTs) of the repositories a
//! route reaches. Everything else on the host — other repositories, the host's web pages
//! and API, dumb HTTP, paths not in normal form — is refused before the token is looked up.

/// The smart HTTP service a request is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// Fetch and clone.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl Service {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::UploadPack => "fetch",
            Service::ReceivePack => "push",
        }
    }
}

/// A smart HTTP request for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRequest {
    /// In normal form (`kraal_core::normalize_repo`).
    pub(crate) repo: String,
    pub(crate) service: Service,
}

/// Why a git request is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GitRefusal {
    /// `..`, `//`, `.` segments, `%` escapes or bytes no repository path has.
    NotNormal,
    /// Not one of git's smart HTTP endpoints (or its method or query is not git's).
    NotGit,
    /// A repository the route does not reach.
    OutOfScope { repo: String, service: Service },
    /// The route reaches no repository at all (a credential stored by an older version for
    /// a workspace whose source is not on the host).
    NoScope,
}

impl GitRefusal {
    pub(crate) fn reason(&self) -> String {
        match self {
            GitRefusal::NotNormal => "the path is not in normal form".into(),
            GitRefusal::NotGit => {
                "not a git smart HTTP request (info/refs, git-upload-pack, git-receive-pack)".into()
            }
            GitRefusal::OutOfScope { repo, service } => {
                format!(
                    "{} of {repo}, not one of the workspace's repositories",
                    service.as_str()
                )
            }
            GitRefusal::NoScope => {
                "the workspace's credential for this host reaches no repository".into()
            }
        }
    }
}

/// `POST REPO/git-upload-pack`, `POST REPO/git-receive-pack` and `GET REPO/info/refs` with
/// `service=` one of the two: the method, path (after `/git/HOST`) and query must be what git
/// sends, and the repository in `scope` (normal form).
pub(crate) fn check(
    method: &str,
    path: &str,
    query: Option<&str>,
    scope: &[String],
) -> Result<GitRequest, GitRefusal> {
    let r = endpoint(method, path, query)?;
    if scope.is_empty() {
        return Err(GitRefusal::NoScope);
    }
    if !scope.contains(&r.repo) {
        return Err(GitRefusal::OutOfScope {
            repo: r.repo,
            service: r.service,
        });
    }
    Ok(r)
}

fn endpoint(method: &str, path: &str, query: Option<&str>) -> Result<GitRequest, GitRefusal> {
    if !normal(path) {
        return Err(GitRefusal::NotNormal);
    }
    let query = query.filter(|q| !q.is_empty());
    let (repo, service) = if let Some(repo) = path.strip_suffix("/info/refs") {
        let service = match query {
            Some("service=git-upload-pack") => Service::UploadPack,
            Some("service=git-receive-pack") => Service::ReceivePack,
            _ => return Err(GitRefusal::NotGit),
        };
        if method != "GET" {
            return Err(GitRefusal::NotGit);
        }
        (repo, service)
    } else {
        let (repo, service) = if let Some(repo) = path.strip_suffix("/git-upload-pack") {
            (repo, Service::UploadPack)
        } else if let Some(repo) = path.strip_suffix("/git-receive-pack") {
            (repo, Service::ReceivePack)
        } else {
            return Err(GitRefusal::NotGit);
        };
        if method != "POST" || query.is_some() {
            return Err(GitRefusal::NotGit);
        }
        (repo, service)
    };
    let repo = repo.strip_prefix('/').ok_or(GitRefusal::NotNormal)?;
    let repo = kraal_core::normalize_repo(repo).map_err(|_| GitRefusal::NotNormal)?;
    Ok(GitRequest { repo, service })
}

/// Only the bytes repository paths are made of, and nothing a host would resolve.
fn normal(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        && !path.contains("//")
        && !path.contains("..")
        && !path.split('/').skip(1).any(|s| s == "." || s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Vec<String> {
        vec!["acme/app".into(), "group/sub/repo".into()]
    }

    #[test]
    fn fetch_and_push_of_the_repositories_in_scope_are_forwarded() {
        use Service::*;
        for (method, path, query, repo, service) in [
            (
                "GET",
                "/acme/app.git/info/refs",
                Some("service=git-upload-pack"),
                "acme/app",
                UploadPack,
            ),
            (
                "POST",
                "/acme/app.git/git-upload-pack",
                None,
                "acme/app",
                UploadPack,
            ),
            (
                "GET",
                "/acme/app.git/info/refs",
                Some("service=git-receive-pack"),
                "acme/app",
                ReceivePack,
            ),
            (
                "POST",
                "/acme/app.git/git-receive-pack",
                None,
                "acme/app",
                ReceivePack,
            ),
            // GitHub-style hosts take the path without `.git`, and match it in any case.
            (
                "GET",
                "/acme/app/info/refs",
                Some("service=git-upload-pack"),
                "acme/app",
                UploadPack,
            ),
            (
                "POST",
                "/Acme/App/git-receive-pack",
                Some(""),
                "acme/app",
                ReceivePack,
            ),
            // GitLab's nested groups.
            (
                "POST",
                "/group/sub/repo.git/git-upload-pack",
                None,
                "group/sub/repo",
                UploadPack,
            ),
        ] {
            let want = GitRequest {
                repo: repo.into(),
                service,
            };
            assert_eq!(
                check(method, path, query, &scope()),
                Ok(want),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn other_repositories_are_out_of_scope() {
        for (path, repo) in [
            ("/acme/other.git/info/refs", "acme/other"),
            ("/other/app/info/refs", "other/app"),
            // Neither a parent group nor a project below one in scope.
            ("/group/sub.git/info/refs", "group/sub"),
            (
                "/group/sub/repo/deeper.git/info/refs",
                "group/sub/repo/deeper",
            ),
            ("/acme/app/info/refs/info/refs", "acme/app/info/refs"),
            ("/acme/app.git.git/info/refs", "acme/app.git"),
            ("/acme/app-x/info/refs", "acme/app-x"),
        ] {
            let got = check("GET", path, Some("service=git-receive-pack"), &scope());
            let want = GitRefusal::OutOfScope {
                repo: repo.into(),
                service: Service::ReceivePack,
            };
            assert_eq!(got, Err(want), "{path}");
        }
        assert_eq!(
            check(
                "GET",
                "/acme/app/info/refs",
                Some("service=git-upload-pack"),
                &[]
            ),
            Err(GitRefusal::NoScope)
        );
    }

    #[test]
    fn paths_not_in_normal_form_are_refused() {
        for path in [
            "/acme/app/../other/info/refs",
            "/acme/other/../app/info/refs",
            "/acme/app.git/%2e%2e/%2e%2e/other/info/refs",
            "/acme/%61pp/info/refs",
            "/acme%2fapp/info/refs",
            "//acme/app/info/refs",
            "/acme//app/info/refs",
            "/acme/./app/info/refs",
            "/./acme/app/info/refs",
            "/acme/app\\info/refs",
            "/acme/\u{e4}pp/info/refs",
            "acme/app/info/refs",
        ] {
            let got = check("GET", path, Some("service=git-upload-pack"), &scope());
            assert_eq!(got, Err(GitRefusal::NotNormal), "{path}");
        }
    }

    #[test]
    fn anything_but_the_smart_http_endpoints_is_refused() {
        for (method, path, query) in [
            // Dumb HTTP, the host's web pages and API, LFS.
            ("GET", "/acme/app.git/HEAD", None),
            ("GET", "/acme/app.git/objects/info/packs", None),
            ("GET", "/acme/app.git/info/refs", None),
            ("GET", "/acme/app", None),
            ("GET", "/acme/app/settings", None),
            ("POST", "/acme/app.git/info/lfs/objects/batch", None),
            ("GET", "/api/v3/repos/acme/app", None),
            // The endpoints with the wrong method, query or case.
            (
                "POST",
                "/acme/app.git/info/refs",
                Some("service=git-upload-pack"),
            ),
            ("GET", "/acme/app.git/git-upload-pack", None),
            ("GET", "/acme/app.git/git-receive-pack", None),
            ("PUT", "/acme/app.git/git-receive-pack", None),
            (
                "GET",
                "/acme/app.git/info/refs",
                Some("service=git-upload-archive"),
            ),
            (
                "GET",
                "/acme/app.git/info/refs",
                Some("service=git-upload-pack&x=1"),
            ),
            ("POST", "/acme/app.git/git-receive-pack", Some("x=1")),
            (
                "GET",
                "/acme/app.git/INFO/REFS",
                Some("service=git-upload-pack"),
            ),
            ("POST", "/acme/app.git/Git-Receive-Pack", None),
        ] {
            assert_eq!(
                check(method, path, query, &scope()),
                Err(GitRefusal::NotGit),
                "{method} {path}"
            );
        }
        // No repository before the endpoint.
        assert_eq!(
            check(
                "GET",
                "/info/refs",
                Some("service=git-upload-pack"),
                &scope()
            ),
            Err(GitRefusal::NotNormal)
        );
        assert_eq!(
            check("POST", "/git-receive-pack", None, &scope()),
            Err(GitRefusal::NotNormal)
        );
    }
}
