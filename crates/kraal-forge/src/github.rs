//! GitHub's REST API (v3, `X-GitHub-Api-Version: 2022-11-28`), github.com or Enterprise:
//! the calls [`crate::Forge`] makes, with pagination by the `Link` header.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{Check, Comment, ForgeError, Issue, NewPull, Pull, check_repo};

/// Pages followed at most for one listing (100 items each).
const MAX_PAGES: usize = 10;
/// Longest text kept from one check's output.
const MAX_DETAILS: usize = 4000;

#[derive(Clone)]
pub struct GitHub {
    api: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitHub({})", self.api)
    }
}

#[derive(Deserialize)]
struct IssueJson {
    number: u64,
    title: String,
    #[serde(default)]
    body: Option<String>,
    html_url: String,
    #[serde(default)]
    labels: Vec<LabelJson>,
    state: String,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct LabelJson {
    name: String,
}

#[derive(Deserialize)]
struct PullJson {
    number: u64,
    html_url: String,
    state: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    head: HeadJson,
}

#[derive(Deserialize)]
struct HeadJson {
    sha: String,
}

#[derive(Deserialize)]
struct CheckRunsJson {
    check_runs: Vec<CheckRunJson>,
}

#[derive(Deserialize)]
struct CheckRunJson {
    name: String,
    status: String,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    output: Option<OutputJson>,
}

#[derive(Deserialize)]
struct OutputJson {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct CombinedStatusJson {
    #[serde(default)]
    statuses: Vec<StatusJson>,
}

#[derive(Deserialize)]
struct StatusJson {
    context: String,
    state: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    target_url: Option<String>,
}

#[derive(Deserialize)]
struct CommentJson {
    id: u64,
    #[serde(default)]
    user: Option<UserJson>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    line: Option<u64>,
    #[serde(default)]
    original_line: Option<u64>,
}

#[derive(Deserialize)]
struct UserJson {
    login: String,
}

/// An issue as GitHub sends it (in a webhook delivery's `issue`).
pub fn issue_from_json(v: serde_json::Value) -> Result<Issue, serde_json::Error> {
    Ok(serde_json::from_value::<IssueJson>(v)?.into())
}

impl From<IssueJson> for Issue {
    fn from(i: IssueJson) -> Self {
        Issue {
            number: i.number,
            title: i.title,
            body: i.body.unwrap_or_default(),
            url: i.html_url,
            labels: i.labels.into_iter().map(|l| l.name).collect(),
            open: i.state == "open",
            is_pull: i.pull_request.is_some(),
        }
    }
}

impl From<PullJson> for Pull {
    fn from(p: PullJson) -> Self {
        Pull {
            number: p.number,
            url: p.html_url,
            open: p.state == "open",
            merged: p.merged.unwrap_or(false) || p.merged_at.is_some(),
            head_sha: p.head.sha,
        }
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "REQUEST",
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rest) = part.split_once(';')?;
        rest.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl GitHub {
    pub fn new(api: &str, token: String) -> Result<Self, ForgeError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kraal/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            // The token must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForgeError::Invalid(format!("HTTP client: {e}")))?;
        Ok(GitHub {
            api: api.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// One request; the answer's body and headers, or an error naming the call.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(reqwest::header::HeaderMap, bytes_body::Body), ForgeError> {
        let name = method_name(&method);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let transport = |source| ForgeError::Transport {
            method: name,
            url: url.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| cut(String::from_utf8_lossy(&bytes).into_owned(), 300));
            return Err(ForgeError::Status {
                method: name,
                url: url.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        Ok((headers, bytes_body::Body(bytes.to_vec())))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ForgeError> {
        let url = self.url(path);
        let (_, body) = self.call(Method::GET, &url, None).await?;
        body.decode(&url)
    }

    /// Every page of a listing.
    async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ForgeError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = self.url(&format!("{path}{sep}per_page=100"));
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let (headers, body) = self.call(Method::GET, &url, None).await?;
            let page: Vec<T> = body.decode(&url)?;
            out.extend(page);
            match next_link(&headers) {
                // Only pages of the same API; a link elsewhere would carry the token away.
                Some(next) if next.starts_with(&self.api) => url = next,
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn issue(&self, repo: &str, number: u64) -> Result<Issue, ForgeError> {
        check_repo(repo)?;
        let i: IssueJson = self.get(&format!("/repos/{repo}/issues/{number}")).await?;
        Ok(i.into())
    }

    pub async fn issues_with_label(
        &self,
        repo: &str,
        label: &str,
    ) -> Result<Vec<Issue>, ForgeError> {
        check_repo(repo)?;
        let label: String = label
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let all: Vec<IssueJson> = self
            .list(&format!(
                "/repos/{repo}/issues?state=open&labels={label}&sort=created&direction=asc"
            ))
            .await?;
        Ok(all
            .into_iter()
            .map(Issue::from)
            .filter(|i| !i.is_pull)
            .collect())
    }

    pub async fn default_branch(&self, repo: &str) -> Result<String, ForgeError> {
        check_repo(repo)?;
        let url = format!("/repos/{repo}");
        let v: serde_json::Value = self.get(&url).await?;
        v.get("default_branch")
            .and_then(|b| b.as_str())
            .map(str::to_owned)
            .ok_or_else(|| ForgeError::Decode {
                url: self.url(&url),
                message: "no default_branch".into(),
            })
    }

    pub async fn find_pull(&self, repo: &str, head: &str) -> Result<Option<Pull>, ForgeError> {
        check_repo(repo)?;
        let owner = repo.split('/').next().unwrap_or_default();
        let found: Vec<PullJson> = self
            .list(&format!(
                "/repos/{repo}/pulls?state=open&head={owner}:{head}"
            ))
            .await?;
        Ok(found.into_iter().next().map(Pull::from))
    }

    pub async fn create_pull(&self, repo: &str, new: &NewPull) -> Result<Pull, ForgeError> {
        check_repo(repo)?;
        let url = self.url(&format!("/repos/{repo}/pulls"));
        let body = json!({
            "title": new.title,
            "head": new.head,
            "base": new.base,
            "body": new.body,
            "maintainer_can_modify": true,
        });
        let (_, b) = self.call(Method::POST, &url, Some(body)).await?;
        Ok(b.decode::<PullJson>(&url)?.into())
    }

    pub async fn pull(&self, repo: &str, number: u64) -> Result<Pull, ForgeError> {
        check_repo(repo)?;
        let p: PullJson = self.get(&format!("/repos/{repo}/pulls/{number}")).await?;
        Ok(p.into())
    }

    pub async fn checks(&self, repo: &str, sha: &str) -> Result<Vec<Check>, ForgeError> {
        check_repo(repo)?;
        if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ForgeError::Invalid(format!(
                "commit {sha:?} is not a hex id"
            )));
        }
        let runs: CheckRunsJson = self
            .get(&format!(
                "/repos/{repo}/commits/{sha}/check-runs?per_page=100"
            ))
            .await?;
        let mut out: Vec<Check> = runs
            .check_runs
            .into_iter()
            .map(|r| {
                let done = r.status == "completed";
                let failed = done
                    && matches!(
                        r.conclusion.as_deref(),
                        Some(
                            "failure"
                                | "timed_out"
                                | "cancelled"
                                | "action_required"
                                | "startup_failure"
                        )
                    );
                let details = r
                    .output
                    .map(|o| {
                        [o.title, o.summary, o.text]
                            .into_iter()
                            .flatten()
                            .filter(|s| !s.trim().is_empty())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                Check {
                    name: r.name,
                    pending: !done,
                    failed,
                    details: cut(details, MAX_DETAILS),
                    url: r.html_url,
                }
            })
            .collect();
        let status: CombinedStatusJson = self
            .get(&format!("/repos/{repo}/commits/{sha}/status"))
            .await?;
        out.extend(status.statuses.into_iter().map(|s| Check {
            pending: s.state == "pending",
            failed: matches!(s.state.as_str(), "failure" | "error"),
            name: s.context,
            details: cut(s.description.unwrap_or_default(), MAX_DETAILS),
            url: s.target_url,
        }));
        Ok(out)
    }

    pub async fn comments(&self, repo: &str, number: u64) -> Result<Vec<Comment>, ForgeError> {
        check_repo(repo)?;
        let review: Vec<CommentJson> = self
            .list(&format!("/repos/{repo}/pulls/{number}/comments"))
            .await?;
        let talk: Vec<CommentJson> = self
            .list(&format!("/repos/{repo}/issues/{number}/comments"))
            .await?;
        let mut out: Vec<Comment> = review
            .into_iter()
            .chain(talk)
            .map(|c| Comment {
                id: c.id,
                author: c.user.map(|u| u.login).unwrap_or_default(),
                body: c.body.unwrap_or_default(),
                path: c.path,
                line: c.line.or(c.original_line),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        Ok(out)
    }
}

mod bytes_body {
    //! An answer's body, decoded with the URL in the error.
    use serde::de::DeserializeOwned;

    use crate::ForgeError;

    pub struct Body(pub Vec<u8>);

    impl Body {
        pub fn decode<T: DeserializeOwned>(&self, url: &str) -> Result<T, ForgeError> {
            serde_json::from_slice(&self.0).map_err(|e| ForgeError::Decode {
                url: url.to_owned(),
                message: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_among_the_others() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            "<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        h.insert(
            reqwest::header::LINK,
            "<https://a/x>; rel=\"last\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h), None);
    }
}
