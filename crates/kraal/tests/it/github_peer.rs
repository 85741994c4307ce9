//! A GitHub-shaped peer for the forge tests: the REST endpoints kraal calls (issues,
//! repository, pulls, check runs, statuses, comments), each request recorded with whether
//! it carried the token, and a real smart-HTTP git remote (`git http-backend` as CGI)
//! behind basic auth with the same token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::harness::git_repo;

pub(crate) const TOKEN: &str = "ghp_FORGEtestTOKENneverInTheSandbox4242";
pub(crate) const REPO: &str = "acme/widget";

/// What the fake host knows and saw.
#[derive(Default)]
pub(crate) struct Hub {
    /// `METHOD PATH?QUERY token|no-token` per request.
    pub(crate) seen: Vec<String>,
    /// Bodies of the pull requests opened.
    pub(crate) pulls: Vec<Value>,
    /// Heads that the check run fails for.
    pub(crate) failing: Vec<String>,
}

pub(crate) struct GitHub {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) hub: Arc<Mutex<Hub>>,
    pub(crate) bare: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) fn issue(n: u64, title: &str, body: &str, labels: &[&str]) -> Value {
    json!({
        "number": n, "title": title, "body": body, "state": "open",
        "html_url": format!("https://github.test/{REPO}/issues/{n}"),
        "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
    })
}

fn issues() -> Vec<Value> {
    vec![
        issue(
            7,
            "Add a greeting file",
            "Create GREETING.txt saying hello. ISSUE-7-MARKER",
            &["kraal", "good first issue"],
        ),
        issue(8, "Not for kraal", "no label", &["bug"]),
    ]
}

/// `git ARGS` in the bare remote: its standard output, or `None` when it fails.
pub(crate) fn git_in(bare: &Path, args: &[&str]) -> Option<String> {
    #[allow(clippy::disallowed_methods)] // test harness: the fake host reads its repository
    let o = Command::new("git")
        .arg("-C")
        .arg(bare)
        .args(args)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The tip of `branch` in the bare remote.
pub(crate) fn tip(bare: &Path, branch: &str) -> Option<String> {
    git_in(
        bare,
        &[
            "rev-parse",
            "-q",
            "--verify",
            &format!("refs/heads/{branch}"),
        ],
    )
    .map(|s| s.trim().to_owned())
}

pub(crate) fn branches(bare: &Path) -> Vec<String> {
    git_in(
        bare,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads"],
    )
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// One REST call, answered the way GitHub answers it.
fn api(hub: &Mutex<Hub>, bare: &Path, method: &Method, path: &str, body: &[u8]) -> Response {
    let base = format!("/repos/{REPO}");
    let Some(rest) = path.strip_prefix(&base) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
    };
    let rest = rest.split('?').next().unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let pull = |n: u64, head: &str| {
        json!({
            "number": n, "state": "open", "merged": false,
            "html_url": format!("https://github.test/{REPO}/pull/{n}"),
            "head": {"sha": tip(bare, head).unwrap_or_default(), "ref": head},
        })
    };
    match (method.as_str(), parts.as_slice()) {
        ("GET", []) => json_response(
            StatusCode::OK,
            json!({"full_name": REPO, "default_branch": "main"}),
        ),
        ("GET", ["issues"]) => {
            let want = path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("labels="))
                .unwrap_or("")
                .to_owned();
            let list: Vec<Value> = issues()
                .into_iter()
                .filter(|i| {
                    want.is_empty() || i["labels"].to_string().contains(&format!("\"{want}\""))
                })
                .collect();
            json_response(StatusCode::OK, Value::Array(list))
        }
        ("GET", ["issues", n]) => {
            match issues()
                .into_iter()
                .find(|i| n.parse::<u64>().ok() == i["number"].as_u64())
            {
                Some(i) => json_response(StatusCode::OK, i),
                None => json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["pulls"]) => {
            let h = hub.lock().unwrap();
            let list: Vec<Value> = h
                .pulls
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    path.contains(&format!("head=acme:{}", p["head"].as_str().unwrap()))
                })
                .map(|(i, p)| pull(42 + i as u64, p["head"].as_str().unwrap()))
                .collect();
            json_response(StatusCode::OK, Value::Array(list))
        }
        ("POST", ["pulls"]) => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let head = v["head"].as_str().unwrap_or("").to_owned();
            if tip(bare, &head).is_none() || v["base"] != "main" {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed"}),
                );
            }
            let mut h = hub.lock().unwrap();
            h.pulls.push(v);
            let n = 42 + h.pulls.len() as u64 - 1;
            json_response(StatusCode::CREATED, pull(n, &head))
        }
        ("GET", ["pulls", n]) => {
            let h = hub.lock().unwrap();
            let i = n.parse::<usize>().unwrap_or(0).wrapping_sub(42);
            match h.pulls.get(i) {
                Some(p) => json_response(
                    StatusCode::OK,
                    pull(42 + i as u64, p["head"].as_str().unwrap()),
                ),
                None => json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["commits", sha, "check-runs"]) => {
            let mut h = hub.lock().unwrap();
            // The first head kraal pushes fails lint; every later one passes.
            if h.failing.is_empty() {
                h.failing.push((*sha).to_owned());
            }
            let failed = h.failing.iter().any(|f| f == sha);
            json_response(
                StatusCode::OK,
                json!({"total_count": 1, "check_runs": [{
                    "name": "lint", "status": "completed",
                    "conclusion": if failed { "failure" } else { "success" },
                    "html_url": format!("https://github.test/{REPO}/runs/1"),
                    "output": {"title": "lint", "summary": if failed { "LINT-FAILED-7: GREETING.txt must end with an exclamation mark" } else { "all good" }},
                }]}),
            )
        }
        ("GET", ["commits", _, "status"]) => {
            json_response(StatusCode::OK, json!({"state": "success", "statuses": []}))
        }
        ("GET", ["pulls", _, "comments"]) => json_response(
            StatusCode::OK,
            json!([{"id": 1001, "user": {"login": "reviewer"}, "path": "GREETING.txt", "line": 1,
                    "body": "REVIEW-ASK-7: please also add NOTES.md"}]),
        ),
        ("GET", ["issues", _, "comments"]) => json_response(StatusCode::OK, json!([])),
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
    }
}

/// Smart-HTTP git through `git http-backend` (CGI), for the one repository.
fn git_cgi(root: &Path, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let path = uri.path().strip_prefix("/git").unwrap_or("");
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    #[allow(clippy::disallowed_methods)] // test harness: the git remote's CGI
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", h("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", h("content-encoding"))
        .env("GIT_PROTOCOL", h("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap_or((raw.len(), 0));
    let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
    let mut resp = Response::builder().status(200);
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                let code: u16 = v.split(' ').next().unwrap_or("200").parse().unwrap_or(200);
                resp = resp.status(code);
            } else {
                resp = resp.header(k.trim(), v);
            }
        }
    }
    resp.body(Body::from(raw[split.0 + split.1..].to_vec()))
        .unwrap()
}

impl GitHub {
    pub(crate) fn start(root: &Path) -> GitHub {
        // The remote: `main` with one commit.
        let src = git_repo(root, "widget-src");
        let bare = root.join("repos").join(format!("{REPO}.git"));
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        #[allow(clippy::disallowed_methods)] // test harness: the remote's repository
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "git clone -q --bare {} {} && git -C {} symbolic-ref HEAD refs/heads/main && \
                 git -C {} push -q {} HEAD:refs/heads/main && git -C {} config http.receivepack true",
                src.display(),
                bare.display(),
                bare.display(),
                src.display(),
                bare.display(),
                bare.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let hub = Arc::new(Mutex::new(Hub::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (h2, repos) = (hub.clone(), root.join("repos"));
        let bare2 = bare.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let (hub, repos, bare) = (h2.clone(), repos.clone(), bare2.clone());
                        async move {
                            let path = uri
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            if let Some(api_path) = path.strip_prefix("/api").map(str::to_owned) {
                                let ok = auth == format!("Bearer {TOKEN}");
                                hub.lock().unwrap().seen.push(format!(
                                    "{method} {api_path} {}",
                                    if ok { "token" } else { "no-token" }
                                ));
                                if !ok {
                                    return json_response(
                                        StatusCode::UNAUTHORIZED,
                                        json!({"message": "Bad credentials"}),
                                    );
                                }
                                let r = tokio::task::spawn_blocking(move || {
                                    api(&hub, &bare, &method, &api_path, &body)
                                });
                                return r.await.unwrap();
                            }
                            use base64::Engine;
                            let want = format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD
                                    .encode(format!("x-access-token:{TOKEN}"))
                            );
                            hub.lock().unwrap().seen.push(format!(
                                "GIT {method} {path} {}",
                                if auth == want { "token" } else { "no-token" }
                            ));
                            if auth != want {
                                return (
                                    StatusCode::UNAUTHORIZED,
                                    [("www-authenticate", "Basic realm=\"git\"")],
                                    "",
                                )
                                    .into_response();
                            }
                            tokio::task::spawn_blocking(move || {
                                git_cgi(&repos, &method, &uri, &headers, &body)
                            })
                            .await
                            .unwrap()
                        }
                    },
                );
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        GitHub {
            addr,
            hub,
            bare,
            _stop: stop,
        }
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.hub.lock().unwrap().seen.clone()
    }
}
