//! What a workspace may reach outside: the allowlist rules of its egress proxy
//! (`example.com`, `*.example.com`, `host:port`, IP literals), the default list, and the
//! environment that points a sandbox's programs at the proxy and the git gateway.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Port of the model (and git) gateway on the host side of every workspace link.
pub const GATEWAY_PORT: u16 = 7072;
/// Port of the egress proxy on the host side of every workspace link.
pub const EGRESS_PORT: u16 = 7073;

/// Ports a rule without an explicit port allows.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// The allowlist a workspace gets unless told otherwise: the model APIs, the big git
/// hosts and the package registries of the common languages and of Debian.
pub const DEFAULT_ALLOWLIST: &[&str] = &[
    // Model APIs (agents normally go through the model gateway; tools may call them).
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    // Git hosts.
    "github.com",
    "api.github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
    "gitlab.com",
    "bitbucket.org",
    // Package registries.
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "pypi.org",
    "files.pythonhosted.org",
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    "static.rust-lang.org",
    "proxy.golang.org",
    "sum.golang.org",
    "rubygems.org",
    "repo.maven.apache.org",
    "repo1.maven.org",
    "deb.debian.org",
    "security.debian.org",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid egress rule {rule:?}: {reason}")]
pub struct EgressRuleError {
    pub rule: String,
    pub reason: String,
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EgressRule {
    /// Lower-case host name or IP literal, without the `*.`.
    host: String,
    /// `*.host`: any subdomain of `host` (not `host` itself).
    subdomains: bool,
    /// `None`: ports 443 and 80.
    port: Option<u16>,
}

impl EgressRule {
    pub fn parse(rule: &str) -> Result<EgressRule, EgressRuleError> {
        let err = |reason: &str| EgressRuleError {
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        let s = rule.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.contains("://") || s.contains('/') {
            return Err(err(
                "give a host name (example.com, *.example.com or host:port), not a URL",
            ));
        }
        // Split off a port: `[v6]:port`, `host:port`; a bare IPv6 literal has no port.
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' of an IPv6 address"))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| err("expected :PORT after ']'"))?,
                    ),
                ),
            }
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').expect("one colon");
            (h, Some(p))
        } else {
            (s, None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(err("the port is not a number from 1 to 65535")),
                Ok(n) => Some(n),
            },
        };
        let host = normalize_host(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(EgressRule {
                host: ip.to_string(),
                subdomains: false,
                port,
            });
        }
        let (subdomains, name) = match host.strip_prefix("*.") {
            Some(n) => (true, n.to_owned()),
            None => (false, host.clone()),
        };
        if name.contains('*') {
            return Err(err("'*' is allowed only as a leading '*.'"));
        }
        if name.is_empty() || name.len() > 253 {
            return Err(err("the host name is empty or longer than 253 characters"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(err(&format!("{label:?} is not a valid host name label")));
            }
        }
        if subdomains && !name.contains('.') {
            return Err(err("'*.' needs a domain with a dot, like *.example.com"));
        }
        Ok(EgressRule {
            host: name,
            subdomains,
            port,
        })
    }

    /// Whether this rule lets a connection to `host` (lower case, no trailing dot) on
    /// `port` through.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        if !port_ok {
            return false;
        }
        if self.subdomains {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }

    /// Whether the rule names an IP address rather than a host name.
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

impl std::fmt::Display for EgressRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) if self.port.is_some() => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let star = if self.subdomains { "*." } else { "" };
        match self.port {
            Some(p) => write!(f, "{star}{host}:{p}"),
            None => write!(f, "{star}{host}"),
        }
    }
}

impl TryFrom<String> for EgressRule {
    type Error = EgressRuleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EgressRule::parse(&s)
    }
}

impl From<EgressRule> for String {
    fn from(r: EgressRule) -> String {
        r.to_string()
    }
}

/// A normalized host name for matching: lower case, no trailing dot, IPv6 brackets gone,
/// and an IP literal in its one canonical spelling (`2130706433`, `0177.1` and
/// `[::ffff:7f00:1]` are all `127.0.0.1`/`::ffff:127.0.0.1`), so a rule or a refusal never
/// depends on how a client wrote the address.
pub fn normalize_host(host: &str) -> String {
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if let Ok(ip) = h.parse::<IpAddr>() {
        return ip.to_string();
    }
    match loose_ipv4(&h) {
        Some(v4) => v4.to_string(),
        None => h,
    }
}

/// An IPv4 address in any syntax `inet_aton` reads (and with it getaddrinfo, curl and
/// most HTTP clients): one to four dot-separated parts, each decimal, octal (leading `0`)
/// or hexadecimal (`0x`), the last part filling the bytes that remain (`127.1`,
/// `2130706433`, `0177.0.0.1`, `0x7f.0.0.1`). `None` for anything else, host names among
/// them.
pub fn loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        let n = u32::from_str_radix(digits, radix).ok()?;
        nums.push(n);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let mut v = *last;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(v))
}

/// Whether any of `rules` allows `host:port`.
pub fn allowed(rules: &[EgressRule], host: &str, port: u16) -> bool {
    let host = normalize_host(host);
    rules.iter().any(|r| r.matches(&host, port))
}

/// Parses a list of rules, naming the first bad one; duplicates are dropped.
pub fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Result<Vec<EgressRule>, EgressRuleError> {
    let mut out: Vec<EgressRule> = Vec::new();
    for r in rules {
        let r = EgressRule::parse(r.as_ref())?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The default allowlist, parsed.
pub fn default_rules() -> Vec<EgressRule> {
    parse_rules(DEFAULT_ALLOWLIST).expect("the default allowlist is valid")
}

/// Environment every process in a sandbox gets: the egress proxy on the host side of its
/// link (`host`) for HTTP and HTTPS, never for the link's own services; and, for each of
/// `git_hosts`, a git URL rewrite that sends `https://HOST/…` to the git gateway, which
/// adds the credential on the host.
pub fn link_env(host: IpAddr, git_hosts: &[String]) -> Vec<(String, String)> {
    let h = match host {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let proxy = format!("http://{h}:{EGRESS_PORT}");
    let no_proxy = format!("localhost,127.0.0.1,::1,{host}");
    let mut env = vec![
        ("HTTP_PROXY".to_owned(), proxy.clone()),
        ("HTTPS_PROXY".to_owned(), proxy.clone()),
        ("http_proxy".to_owned(), proxy.clone()),
        ("https_proxy".to_owned(), proxy),
        ("NO_PROXY".to_owned(), no_proxy.clone()),
        ("no_proxy".to_owned(), no_proxy),
    ];
    if !git_hosts.is_empty() {
        env.push(("GIT_CONFIG_COUNT".to_owned(), git_hosts.len().to_string()));
        for (i, g) in git_hosts.iter().enumerate() {
            env.push((
                format!("GIT_CONFIG_KEY_{i}"),
                format!("url.http://{h}:{GATEWAY_PORT}/git/{g}/.insteadOf"),
            ));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), format!("https://{g}/")));
        }
    }
    env
}

/// Whether `name` can name a secret: 1-64 characters of a-z, 0-9, '.', '_' and '-',
/// starting with a letter or digit.
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A git host whose HTTPS requests the git gateway authenticates with a stored secret
/// (a token, sent as the password of HTTP basic auth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GitCredential {
    /// Host name, e.g. `github.com`.
    pub host: String,
    /// Name of the secret holding the token (`kraal secret set`).
    pub secret: String,
    /// User name sent with the token.
    #[serde(default = "default_git_user")]
    pub username: String,
    /// The repositories on `host` the token is sent for (`OWNER/REPO`, `GROUP/SUB/REPO`),
    /// besides the workspace's source repository when that is on `host`; fetches and
    /// pushes of any other are refused. Absent in records of older versions: the source
    /// repository only.
    #[serde(default)]
    pub repos: Vec<String>,
}

/// The user name sent with a git host token unless one is given (GitHub's convention).
pub const DEFAULT_GIT_USER: &str = "x-access-token";

fn default_git_user() -> String {
    DEFAULT_GIT_USER.to_owned()
}

impl GitCredential {
    /// `HOST=SECRET` or `USER@HOST=SECRET`, optionally followed by the repositories it
    /// reaches: `HOST=SECRET:OWNER/REPO,OWNER/REPO2`.
    pub fn parse(spec: &str) -> Result<GitCredential, EgressRuleError> {
        let err = |reason: &str| EgressRuleError {
            rule: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (left, right) = spec.split_once('=').ok_or_else(|| {
            err("expected HOST=SECRET, USER@HOST=SECRET or HOST=SECRET:OWNER/REPO,…")
        })?;
        let (user, host) = match left.split_once('@') {
            Some((u, h)) => (u.to_owned(), h),
            None => (default_git_user(), left),
        };
        // A secret name has no ':', so the first one starts the repositories.
        let (secret, repos) = match right.split_once(':') {
            Some((s, list)) => {
                let mut repos = Vec::new();
                for r in list.split(',').map(str::trim) {
                    let r = crate::git::normalize_repo(r).map_err(|e| err(&e))?;
                    if !repos.contains(&r) {
                        repos.push(r);
                    }
                }
                (s, repos)
            }
            None => (right, Vec::new()),
        };
        let c = GitCredential {
            host: host.to_owned(),
            secret: secret.trim().to_owned(),
            username: user,
            repos,
        };
        c.validate().map_err(|e| err(&e))?;
        Ok(c)
    }

    /// The repositories the token is sent for, in normal form: the ones listed and, when
    /// the workspace was cloned from a repository on this host, that one. Empty: none —
    /// the gateway refuses every request for the host.
    pub fn scope(&self, source: &crate::Source) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let listed = self
            .repos
            .iter()
            .filter_map(|r| crate::git::normalize_repo(r).ok());
        for r in listed.chain(source.repo_on(&self.host)) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), String> {
        let r = EgressRule::parse(&self.host).map_err(|e| e.reason)?;
        if r.subdomains || r.port.is_some() || r.is_ip() || r.host != self.host {
            return Err(format!(
                "{:?} must be a plain lower-case host name like github.com",
                self.host
            ));
        }
        if !is_secret_name(&self.secret) {
            return Err(format!(
                "{:?} is not a secret name (a-z, 0-9, '.', '_', '-')",
                self.secret
            ));
        }
        if self.username.is_empty()
            || self.username.len() > 128
            || self.username.contains([':', '/', '@'])
            || self.username.chars().any(char::is_control)
        {
            return Err(format!("{:?} is not a usable git user name", self.username));
        }
        if self.repos.len() > crate::git::MAX_GIT_REPOS {
            return Err(format!(
                "{} repositories for {}; at most {}",
                self.repos.len(),
                self.host,
                crate::git::MAX_GIT_REPOS
            ));
        }
        for r in &self.repos {
            crate::git::normalize_repo(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling inet_aton accepts is the address it names; anything else is a name.
    #[test]
    fn ip_literals_in_every_syntax_are_one_address() {
        for (spelling, canonical) in [
            ("127.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7f.0.0.1", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0x7f.1.", "127.0.0.1"),
            ("0xa9fea9fe", "169.254.169.254"),
            ("2852039166", "169.254.169.254"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("169.254.43518", "169.254.169.254"),
            ("0", "0.0.0.0"),
            ("[::FFFF:7f00:1]", "::ffff:127.0.0.1"),
            ("0:0:0:0:0:ffff:127.0.0.1", "::ffff:127.0.0.1"),
            ("[0000::1]", "::1"),
        ] {
            assert_eq!(normalize_host(spelling), canonical, "{spelling}");
        }
        for name in [
            "example.com",
            "1.2.3.4.5",
            "08.1.1.1",
            "0x100000000",
            "4294967296",
            "256.1.1.1",
            "1.2.65536",
            "+1.2.3.4",
            "1..2",
            "1e3",
            "0xg",
            "0x",
            "1.0x",
            "",
        ] {
            assert_eq!(loose_ipv4(name), None, "{name:?} is not an address");
        }
        assert_eq!(loose_ipv4("4294967295"), Some(Ipv4Addr::BROADCAST));
        // A rule written in one spelling matches the others.
        let r = EgressRule::parse("0x7f000001:8080").unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:8080");
        assert!(allowed(&[r], "127.1", 8080));
    }

    #[test]
    fn rules_parse_and_match() {
        let r = EgressRule::parse("Example.COM.").unwrap();
        assert_eq!(r.to_string(), "example.com");
        assert!(r.matches("example.com", 443));
        assert!(r.matches("example.com", 80));
        assert!(!r.matches("example.com", 22));
        assert!(!r.matches("www.example.com", 443));
        assert!(!r.matches("badexample.com", 443));

        let w = EgressRule::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com", 443));
        assert!(w.matches("a.b.example.com", 443));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("aexample.com", 443));

        let p = EgressRule::parse("github.com:22").unwrap();
        assert!(p.matches("github.com", 22));
        assert!(!p.matches("github.com", 443));
        assert_eq!(p.to_string(), "github.com:22");

        let ip = EgressRule::parse("[2001:db8::1]:8443").unwrap();
        assert!(ip.is_ip());
        assert_eq!(ip.to_string(), "[2001:db8::1]:8443");
        assert!(allowed(&[ip], "[2001:db8::1]", 8443));
        assert!(EgressRule::parse("10.0.0.1").unwrap().is_ip());
        assert!(allowed(&default_rules(), "REGISTRY.npmjs.org.", 443));
    }

    #[test]
    fn bad_rules_are_named() {
        for (bad, why) in [
            ("", "empty"),
            ("https://example.com", "not a URL"),
            ("exa mple.com", "label"),
            ("*.com", "needs a domain"),
            ("a.*.com", "leading"),
            ("example.com:0", "port"),
            ("example.com:http", "port"),
            ("-a.com", "label"),
            ("[::1", "unclosed"),
        ] {
            let e = EgressRule::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(
            parse_rules(&["a.com", "A.com", "b.com"]).unwrap().len(),
            2,
            "duplicates dropped"
        );
    }

    #[test]
    fn git_credentials_parse() {
        let c = GitCredential::parse("github.com=github-pat").unwrap();
        assert_eq!(
            (c.host.as_str(), c.secret.as_str(), c.username.as_str()),
            ("github.com", "github-pat", "x-access-token")
        );
        assert!(c.repos.is_empty());
        let c = GitCredential::parse("oauth2@gitlab.example.org=gl").unwrap();
        assert_eq!(c.username, "oauth2");
        let c = GitCredential::parse(
            "oauth2@gitlab.example.org=gl:Group/Sub/Repo.git, acme/app,acme/app",
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("oauth2", "gl"));
        assert_eq!(c.repos, ["group/sub/repo", "acme/app"]);
        for bad in [
            "github.com",
            "*.github.com=x",
            "github.com:443=x",
            "GitHub.com=x",
            "github.com=Bad Name",
            "10.0.0.1=x",
            "github.com=x:",
            "github.com=x:acme/app,",
            "github.com=x:acme/../other",
            "github.com=x:acme//app",
            "github.com=x:acme/%2e%2e",
        ] {
            assert!(GitCredential::parse(bad).is_err(), "{bad}");
        }
        let e = GitCredential::parse("github.com=x:acme/../other").unwrap_err();
        assert!(e.to_string().contains("acme/../other"), "{e}");
    }

    #[test]
    fn a_credential_reaches_its_repositories_and_the_source_on_its_host() {
        let c = GitCredential::parse("github.com=pat:acme/lib").unwrap();
        let src = |u: &str| crate::Source::git(u, None).unwrap();
        assert_eq!(
            c.scope(&src("https://github.com/Acme/App.git")),
            ["acme/lib", "acme/app"]
        );
        assert_eq!(c.scope(&src("git@github.com:acme/lib.git")), ["acme/lib"]);
        assert_eq!(
            c.scope(&src("https://gitlab.com/acme/app.git")),
            ["acme/lib"]
        );
        // A record of an older version: no list, the source repository only, or nothing.
        let old: GitCredential =
            serde_json::from_str(r#"{"host":"github.com","secret":"pat","username":"x"}"#).unwrap();
        assert!(old.repos.is_empty());
        assert_eq!(old.scope(&src("https://github.com/acme/app")), ["acme/app"]);
        assert!(old.scope(&crate::Source::Empty).is_empty());
        let mut unnormal = old.clone();
        unnormal.repos = vec!["Acme/Other.git".into()];
        assert!(unnormal.validate().is_ok());
        assert_eq!(unnormal.scope(&crate::Source::Empty), ["acme/other"]);
        unnormal.repos = vec!["acme/../x".into()];
        assert!(unnormal.validate().is_err());
    }

    #[test]
    fn a_task_on_a_git_host_scopes_that_hosts_credential_to_its_repository() {
        let target = crate::ForgeTarget {
            host: "github.com".into(),
            repo: "Acme/Widget".into(),
            issue: None,
            base: "main".into(),
            pull_request: true,
            max_rounds: 5,
        };
        let mut git = vec![
            GitCredential::parse("github.com=pat:acme/lib").unwrap(),
            GitCredential::parse("gitlab.com=gl:acme/lib").unwrap(),
        ];
        target.scope_git(&mut git);
        target.scope_git(&mut git);
        assert_eq!(git[0].repos, ["acme/lib", "acme/widget"]);
        assert_eq!(git[1].repos, ["acme/lib"]);
    }

    #[test]
    fn the_link_env_points_at_the_proxy_and_rewrites_git_hosts() {
        let env = link_env("10.213.0.1".parse().unwrap(), &["github.com".to_owned()]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTPS_PROXY"), Some("http://10.213.0.1:7073"));
        assert!(get("NO_PROXY").unwrap().contains("10.213.0.1"));
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("1"));
        assert_eq!(
            get("GIT_CONFIG_KEY_0"),
            Some("url.http://10.213.0.1:7072/git/github.com/.insteadOf")
        );
        assert_eq!(get("GIT_CONFIG_VALUE_0"), Some("https://github.com/"));
    }
}
