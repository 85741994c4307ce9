//! Repositories on a git host, as the git gateway scopes a credential to them: the
//! `OWNER/REPO` (or `GROUP/SUB/REPO`) path in normal form, the repository a git URL names,
//! and the `origin` a checkout's `.git/config` names.

/// The longest repository path accepted.
const MAX_REPO: usize = 256;

/// The most repositories one git credential reaches.
pub const MAX_GIT_REPOS: usize = 100;

/// `repo` in normal form: lower case (git hosts match paths case-insensitively), without a
/// `.git` suffix. Refused: anything but letters, digits, `.`, `_`, `-` and single `/`
/// between segments, `..` anywhere, `.` segments, `%` escapes, empty segments (`//`, a
/// slash at either end) — whatever a host would resolve such a path to is not what was
/// checked.
pub fn normalize_repo(repo: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "{repo:?} is not a repository path like OWNER/REPO: {why}"
        ))
    };
    let lower = repo.to_ascii_lowercase();
    let r = lower.strip_suffix(".git").unwrap_or(&lower);
    if r.is_empty() {
        return bad("empty");
    }
    if r.len() > MAX_REPO {
        return bad("too long");
    }
    if !r
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return bad("only letters, digits, '.', '_', '-' and '/' between its parts");
    }
    if r.contains("..") {
        return bad("'..'");
    }
    if r.split('/').any(|s| s.is_empty() || s == ".") {
        return bad("an empty or '.' part");
    }
    Ok(r.to_owned())
}

/// The host (lower case, without user or port) and the repository (normal form) a git URL
/// names: `https://`, `http://`, `ssh://`, `git://` or scp-like `user@host:path`.
pub fn git_url_repo(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let (authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "https" | "http" | "ssh" | "git") {
                return None;
            }
            let (authority, path) = rest.split_once('/')?;
            let host = authority.rsplit('@').next()?;
            // `host:port`; an IPv6 literal is no host a credential is for.
            (host.split(':').next()?, path)
        }
        None => {
            let (left, path) = url.split_once(':')?;
            if left.contains('/') || path.starts_with('/') {
                return None;
            }
            (left.rsplit('@').next()?, path)
        }
    };
    let host = authority.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.starts_with('[') {
        return None;
    }
    let repo = normalize_repo(path.trim_end_matches('/')).ok()?;
    Some((host.to_owned(), repo))
}

/// The URL of remote `origin` in the text of a `.git/config`.
pub fn origin_url(git_config: &str) -> Option<String> {
    let mut in_origin = false;
    for line in git_config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let section: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            in_origin = section == "[remote\"origin\"]";
        } else if in_origin
            && let Some((key, value)) = line.split_once('=')
            && key.trim().eq_ignore_ascii_case("url")
        {
            let v = value.trim().trim_matches('"');
            return (!v.is_empty()).then(|| v.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_normalised() {
        for (given, want) in [
            ("acme/app", "acme/app"),
            ("acme/app.git", "acme/app"),
            ("Acme/App.GIT", "acme/app"),
            ("group/sub/repo", "group/sub/repo"),
            ("acme/.github", "acme/.github"),
            ("acme/my_app-2.0", "acme/my_app-2.0"),
            ("private.git", "private"),
        ] {
            assert_eq!(normalize_repo(given).as_deref(), Ok(want), "{given}");
        }
    }

    #[test]
    fn repository_paths_that_resolve_elsewhere_are_refused() {
        for bad in [
            "",
            ".git",
            "acme/../other",
            "acme/app/..",
            "..",
            "acme/a..b",
            "acme/%2e%2e",
            "acme%2fother",
            "acme//app",
            "/acme/app",
            "acme/app/",
            "acme/./app",
            "acme/app?x",
            "acme/app#x",
            "acme\\app",
            "acme/app name",
            "acme/\u{e9}",
            &format!("acme/{}", "a".repeat(300)),
        ] {
            assert!(normalize_repo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn git_urls_name_their_host_and_repository() {
        let got = |u: &str| git_url_repo(u);
        let want = |h: &str, r: &str| Some((h.to_owned(), r.to_owned()));
        assert_eq!(
            got("https://github.com/Acme/App.git"),
            want("github.com", "acme/app")
        );
        assert_eq!(
            got("https://user@GitHub.com:443/acme/app/"),
            want("github.com", "acme/app")
        );
        assert_eq!(
            got("ssh://git@gitlab.com/group/sub/repo.git"),
            want("gitlab.com", "group/sub/repo")
        );
        assert_eq!(
            got("git@github.com:acme/app.git"),
            want("github.com", "acme/app")
        );
        assert_eq!(
            got("git://git.example.org/private.git"),
            want("git.example.org", "private")
        );
        for none in [
            "file:///srv/app.git",
            "https://github.com/acme/../other.git",
            "https://github.com",
            "git@host:/abs/path.git",
            "https://[::1]/acme/app.git",
            "/srv/app",
        ] {
            assert_eq!(got(none), None, "{none}");
        }
    }

    #[test]
    fn the_origin_of_a_git_config_is_found() {
        let config = "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://github.com/up/app\n[remote \"origin\"]\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\turl = git@github.com:acme/app.git\n[branch \"main\"]\n\tremote = origin\n";
        assert_eq!(
            origin_url(config).as_deref(),
            Some("git@github.com:acme/app.git")
        );
        assert_eq!(origin_url("[core]\n\tbare = true\n"), None);
    }
}
