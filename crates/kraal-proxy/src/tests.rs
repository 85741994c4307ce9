//! The model gateway against the scripted model server: credentials are swapped on the way
//! out, streams pass through, strangers are refused; against a recording upstream: only the
//! calls agents make are forwarded, only the workspace's repositories get the git token,
//! and every refusal is reported.

use std::sync::Arc;

use kraal_testkit::{Scenario, ScriptedModel};

use crate::*;

const KEY: &str = "sk-kraal-test-placeholder";

fn scenario() -> Scenario {
    Scenario::from_json(
        r#"{"turns": [
            {"respond": [{"text": "streamed through the gateway", "chunk": 4}]},
            {"respond": [{"text": "second"}]}
        ]}"#,
    )
    .unwrap()
}

async fn gateway(model: &ScriptedModel, creds: Credentials) -> (Gateways, std::net::SocketAddr) {
    let g = Gateways::new(
        Upstreams {
            anthropic: model.base_url(),
            openai: model.base_url(),
            google: model.base_url(),
            git: Default::default(),
        },
        Arc::new(StaticCredentials(creds)),
    )
    .unwrap();
    let addr = g
        .ensure("ws-0000000001", "127.0.0.1:0".parse().unwrap(), KEY, vec![])
        .await
        .unwrap();
    (g, addr)
}

fn anthropic_body() -> serde_json::Value {
    serde_json::json!({
        "model": "claude-test", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]
    })
}

#[tokio::test]
async fn anthropic_api_key_replaces_the_placeholder_and_the_stream_passes_through() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (_g, addr) = gateway(
        &model,
        Credentials {
            anthropic: Some(AnthropicAuth::ApiKey("sk-ant-REAL".into())),
            openai: None,
            google: None,
        },
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/anthropic/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for piece in ["stre", "amed", " thr"] {
        assert!(
            text.contains(&format!("\"text\":\"{piece}\"")),
            "delta {piece:?} in {text}"
        );
    }
    assert!(text.contains("message_stop"), "{text}");
    let h = &model.request_headers()[0];
    assert_eq!(h["x-api-key"], "sk-ant-REAL");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert!(!h.contains_key("authorization"));
    assert!(
        !h.values().any(|v| v.contains(KEY)),
        "the placeholder never reaches the model: {h:?}"
    );
}

#[tokio::test]
async fn oauth_tokens_go_out_as_bearer_with_the_oauth_beta() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (_g, addr) = gateway(
        &model,
        Credentials {
            anthropic: Some(AnthropicAuth::OauthToken("sk-ant-oat01-REAL".into())),
            openai: None,
            google: None,
        },
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/anthropic/v1/messages"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-beta", "fine-grained-tool-streaming-2025-05-14")
        .json(&anthropic_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await.unwrap();
    let h = &model.request_headers()[0];
    assert_eq!(h["authorization"], "Bearer sk-ant-oat01-REAL");
    assert_eq!(
        h["anthropic-beta"],
        "fine-grained-tool-streaming-2025-05-14,oauth-2025-04-20"
    );
    assert!(!h.contains_key("x-api-key"));
}

#[tokio::test]
async fn openai_requests_get_the_real_bearer_key() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (_g, addr) = gateway(
        &model,
        Credentials {
            anthropic: None,
            openai: Some("sk-openai-REAL".into()),
            google: None,
        },
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/openai/v1/responses"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&serde_json::json!({"model": "gpt-test", "stream": true, "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("response.completed"), "{text}");
    assert_eq!(
        model.request_headers()[0]["authorization"],
        "Bearer sk-openai-REAL"
    );
}

#[tokio::test]
async fn wrong_or_missing_keys_are_refused_before_reaching_the_model() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (_g, addr) = gateway(&model, Credentials::default()).await;
    let c = reqwest::Client::new();
    for key in [
        None,
        Some("sk-ant-guess"),
        Some("sk-kraal-test-placeholdeR"),
    ] {
        let mut req = c
            .post(format!("http://{addr}/anthropic/v1/messages"))
            .json(&anthropic_body());
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "key {key:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "kraal_gateway_error");
    }
    let resp = c
        .post(format!("http://{addr}/elsewhere/v1/messages"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(model.requests().is_empty(), "nothing reached the model");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_clear_502() {
    // A port that was just free: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = Gateways::new(
        Upstreams {
            anthropic: format!("http://{free}"),
            openai: format!("http://{free}"),
            google: format!("http://{free}"),
            git: Default::default(),
        },
        Arc::new(StaticCredentials::default()),
    )
    .unwrap();
    let addr = g
        .ensure("ws-0000000002", "127.0.0.1:0".parse().unwrap(), KEY, vec![])
        .await
        .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/anthropic/v1/messages"))
        .header("x-api-key", KEY)
        .json(&anthropic_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("anthropic API unreachable"), "{msg}");
}

#[tokio::test]
async fn ensure_is_idempotent_and_stop_closes_the_port() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (g, addr) = gateway(&model, Credentials::default()).await;
    let again = g
        .ensure("ws-0000000001", "127.0.0.1:0".parse().unwrap(), KEY, vec![])
        .await
        .unwrap();
    assert_eq!(again, addr, "same request, same listener");
    assert_eq!(g.addr("ws-0000000001"), Some(addr));
    g.stop("ws-0000000001");
    assert_eq!(g.addr("ws-0000000001"), None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "port still open after stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn placeholders_are_per_workspace_and_never_the_secret() {
    let a = placeholder_key("secret-a");
    let b = placeholder_key("secret-b");
    assert_ne!(a, b);
    assert_eq!(a, placeholder_key("secret-a"));
    assert!(a.starts_with("sk-kraal-") && a.len() == "sk-kraal-".len() + 32);
    assert!(!a.contains("secret-a"));
    let creds = Credentials {
        anthropic: Some(AnthropicAuth::OauthToken("sk-ant-oat01-x".into())),
        openai: Some("sk-openai-x".into()),
        google: Some("AIza-google-x".into()),
    };
    let printed = format!("{creds:?}");
    assert!(
        !printed.contains("sk-ant-oat01-x")
            && !printed.contains("sk-openai-x")
            && !printed.contains("AIza-google-x"),
        "{printed}"
    );
}

#[tokio::test]
async fn gemini_requests_get_the_real_google_key() {
    let model = ScriptedModel::start(scenario()).unwrap();
    let (_g, addr) = gateway(
        &model,
        Credentials {
            anthropic: None,
            openai: None,
            google: Some("AIza-REAL".into()),
        },
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{addr}/google/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
        ))
        .header("x-goog-api-key", KEY)
        .json(&serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"text\":\"stre\""), "{text}");
    let h = &model.request_headers()[0];
    assert_eq!(h["x-goog-api-key"], "AIza-REAL");
}

/// Secrets for the git gateway test.
struct GitSecrets;
impl CredentialSource for GitSecrets {
    fn credentials(&self) -> Credentials {
        Credentials::default()
    }
    fn secret(&self, _workspace: &str, name: &str) -> Option<String> {
        (name == "pat").then(|| "ghp_REALTOKEN".to_owned())
    }
}

#[tokio::test]
async fn the_git_gateway_adds_the_token_only_for_configured_hosts_and_never_follows_redirects() {
    use axum::routing::get;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let s2 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/org/repo.git/info/refs",
            get(move |req: axum::extract::Request| {
                let s2 = s2.clone();
                async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    s2.lock().unwrap().push((req.uri().to_string(), auth));
                    "refs"
                }
            }),
        )
        .route(
            "/org/moved/info/refs",
            get(|| async { axum::response::Redirect::temporary("http://elsewhere.invalid/steal") }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let mut upstreams = Upstreams::default();
    upstreams
        .git
        .insert("git.example.com".into(), format!("http://{up}"));
    let g = Gateways::new(upstreams, Arc::new(GitSecrets)).unwrap();
    let route = GitRoute {
        host: "git.example.com".into(),
        username: "x-access-token".into(),
        secret: "pat".into(),
        repos: vec!["org/repo".into(), "org/moved".into()],
    };
    let addr = g
        .ensure(
            "ws-0000000003",
            "127.0.0.1:0".parse().unwrap(),
            KEY,
            vec![route],
        )
        .await
        .unwrap();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .get(format!(
            "http://{addr}/git/git.example.com/org/repo.git/info/refs?service=git-upload-pack"
        ))
        .header("authorization", "Basic c2FuZGJveDpmYWtl")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "refs");
    {
        use base64::Engine as _;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "/org/repo.git/info/refs?service=git-upload-pack");
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_REALTOKEN")
        );
        assert_eq!(seen[0].1, want, "the sandbox's own credential is replaced");
    }
    // Another host: not served, nothing sent upstream.
    let r = c
        .get(format!(
            "http://{addr}/git/github.com/org/repo.git/info/refs"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no credential for github.com")
    );
    // A redirect comes back to the client instead of being followed with the token.
    let r = c
        .get(format!(
            "http://{addr}/git/git.example.com/org/moved/info/refs?service=git-upload-pack"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A gateway whose git host `git.example.com` is `upstream`, with the token `pat` for the
/// repositories `repos`.
async fn git_gateway_to(
    upstream: &str,
    workspace: &str,
    repos: &[&str],
) -> (Gateways, std::net::SocketAddr) {
    let mut upstreams = Upstreams::default();
    upstreams
        .git
        .insert("git.example.com".into(), upstream.to_owned());
    let g = Gateways::new(upstreams, Arc::new(GitSecrets)).unwrap();
    let route = GitRoute {
        host: "git.example.com".into(),
        username: "x-access-token".into(),
        secret: "pat".into(),
        repos: repos.iter().map(|r| r.to_string()).collect(),
    };
    let addr = g
        .ensure(workspace, "127.0.0.1:0".parse().unwrap(), KEY, vec![route])
        .await
        .unwrap();
    (g, addr)
}

/// `Basic` with the real token, as the git host must receive it.
fn real_basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_REALTOKEN")
    )
}

/// Fetches and pushes git makes (smart HTTP), under `/git/git.example.com`.
const GIT_ALLOWED: &[(&str, &str)] = &[
    ("GET", "/acme/app.git/info/refs?service=git-upload-pack"),
    ("POST", "/acme/app.git/git-upload-pack"),
    ("GET", "/acme/app.git/info/refs?service=git-receive-pack"),
    ("POST", "/acme/app.git/git-receive-pack"),
    // GitHub-style: without `.git`, in any case.
    ("GET", "/acme/app/info/refs?service=git-receive-pack"),
    ("POST", "/Acme/App/git-receive-pack"),
    // GitLab's nested groups.
    (
        "GET",
        "/group/sub/repo.git/info/refs?service=git-upload-pack",
    ),
    ("POST", "/group/sub/repo.git/git-upload-pack"),
];

/// Requests for other repositories on the same host, path tricks and everything that is
/// not git's smart HTTP, under `/git/git.example.com`.
const GIT_REFUSED: &[(&str, &str)] = &[
    ("GET", "/acme/other.git/info/refs?service=git-upload-pack"),
    ("GET", "/acme/other.git/info/refs?service=git-receive-pack"),
    ("POST", "/acme/other.git/git-receive-pack"),
    ("POST", "/acme/other/git-upload-pack"),
    ("POST", "/ACME/OTHER.git/git-receive-pack"),
    ("GET", "/group/sub.git/info/refs?service=git-upload-pack"),
    ("POST", "/group/sub/repo/fork.git/git-receive-pack"),
    ("POST", "/acme/app.git.git/git-receive-pack"),
    (
        "GET",
        "/acme/app/../other/info/refs?service=git-receive-pack",
    ),
    ("POST", "/acme/app/../other/git-receive-pack"),
    (
        "POST",
        "/acme/app.git/%2e%2e/%2e%2e/acme/other.git/git-receive-pack",
    ),
    ("POST", "/acme/app%2f..%2fother/git-receive-pack"),
    ("POST", "/acme/%61pp/git-receive-pack"),
    ("POST", "//acme/app.git/git-receive-pack"),
    ("POST", "/acme//app.git/git-receive-pack"),
    ("POST", "/acme/./app.git/git-receive-pack"),
    ("POST", "/acme/app.git/Git-Receive-Pack"),
    ("GET", "/acme/app.git/INFO/REFS?service=git-upload-pack"),
    (
        "GET",
        "/acme/app.git/info/refs?service=git-upload-pack&service=x",
    ),
    ("GET", "/acme/app.git/info/refs"),
    ("GET", "/acme/app.git/git-receive-pack"),
    ("POST", "/acme/app.git/info/refs?service=git-receive-pack"),
    ("GET", "/acme/app.git/HEAD"),
    ("GET", "/acme/app.git/objects/info/packs"),
    ("POST", "/acme/app.git/info/lfs/objects/batch"),
    ("GET", "/acme/app/settings"),
    ("DELETE", "/api/v3/repos/acme/app"),
    ("POST", "/git-receive-pack"),
];

/// Regression: the git gateway added the host's token to any path on the host, so an
/// agent could fetch from and push to every repository the token reaches.
#[tokio::test]
async fn the_git_gateway_reaches_only_the_workspaces_repositories() {
    let (upstream, seen) = recording_upstream().await;
    let (g, addr) =
        git_gateway_to(&upstream, "ws-0000000006", &["acme/app", "group/sub/repo"]).await;
    let audit = Arc::new(KeepRefusals::default());
    g.set_audit(audit.clone());
    let sandbox_auth = "authorization: Basic c2FuZGJveDpmYWtl\r\n";
    for (method, path) in GIT_REFUSED {
        let target = format!("/git/git.example.com{path}");
        let (status, body) = raw_request_with(addr, method, &target, sandbox_auth).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.starts_with("kraal git gateway: "), "{body}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing refused reached the git host: {:?}",
        seen.lock().unwrap()
    );
    // The refusal names the repository and how to allow it.
    let (_, body) = raw_request_with(
        addr,
        "POST",
        "/git/git.example.com/acme/other.git/git-receive-pack",
        "",
    )
    .await;
    assert!(
        body.contains("push of git.example.com/acme/other refused")
            && body.contains("reaches only acme/app, group/sub/repo on git.example.com")
            && body.contains("--git git.example.com=pat:acme/app,group/sub/repo,acme/other"),
        "{body}"
    );
    let (_, body) =
        raw_request_with(addr, "GET", "/git/git.example.com/acme/app.git/HEAD", "").await;
    assert!(
        body.contains("only forwards git fetches and pushes of the workspace's repositories"),
        "{body}"
    );
    // Every refusal is in the audit log, with its reason.
    let got = audit.0.lock().unwrap().clone();
    assert_eq!(got.len(), GIT_REFUSED.len() + 2);
    for (r, (method, path)) in got.iter().zip(GIT_REFUSED) {
        let path = path.split('?').next().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            (*method, format!("/git/git.example.com{path}").as_str())
        );
        assert_eq!(r.workspace, "ws-0000000006");
    }
    assert_eq!(
        got[1].reason,
        "push of acme/other, not one of the workspace's repositories"
    );
    assert_eq!(got[8].reason, "the path is not in normal form");
    assert!(
        got[22].reason.starts_with("not a git smart HTTP request"),
        "{:?}",
        got[22]
    );

    // Fetches and pushes of the workspace's repositories go through with the real token
    // in place of the sandbox's.
    for (method, path) in GIT_ALLOWED {
        let target = format!("/git/git.example.com{path}");
        let (status, body) = raw_request_with(addr, method, &target, sandbox_auth).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let got = seen.lock().unwrap().clone();
    let want: Vec<(String, String, String)> = GIT_ALLOWED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string(), real_basic()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(audit.0.lock().unwrap().len(), GIT_REFUSED.len() + 2);
}

/// A credential that reaches no repository (stored by an older version for a workspace not
/// cloned from its host) is refused for everything, never sent.
#[tokio::test]
async fn a_git_route_without_repositories_refuses_everything() {
    let (upstream, seen) = recording_upstream().await;
    let (_g, addr) = git_gateway_to(&upstream, "ws-0000000007", &[]).await;
    for (method, path) in GIT_ALLOWED {
        let target = format!("/git/git.example.com{path}");
        let (status, body) = raw_request_with(addr, method, &target, "").await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body.contains("credential for git.example.com reaches no repository")
                && body.contains("--git git.example.com=pat:OWNER/REPO"),
            "{body}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// What a recording upstream received: method, path with query, and the credential.
type Seen = Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// An upstream that records every request it receives, whatever its path, and answers
/// `{}`: unlike the scripted model, it also sees the paths no model API has.
async fn recording_upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s2 = s2.clone();
        async move {
            let h = req.headers();
            let credential = ["x-api-key", "x-goog-api-key", "authorization"]
                .iter()
                .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
                .unwrap_or("")
                .to_owned();
            s2.lock()
                .unwrap()
                .push((req.method().to_string(), req.uri().to_string(), credential));
            axum::Json(serde_json::json!({}))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{up}"), seen)
}

async fn gateway_to(upstream: &str, workspace: &str) -> (Gateways, std::net::SocketAddr) {
    let g = Gateways::new(
        Upstreams {
            anthropic: upstream.to_owned(),
            openai: upstream.to_owned(),
            google: upstream.to_owned(),
            git: Default::default(),
        },
        Arc::new(StaticCredentials(Credentials {
            anthropic: Some(AnthropicAuth::ApiKey("sk-ant-REAL".into())),
            openai: Some("sk-openai-REAL".into()),
            google: Some("AIza-REAL".into()),
        })),
    )
    .unwrap();
    let addr = g
        .ensure(workspace, "127.0.0.1:0".parse().unwrap(), KEY, vec![])
        .await
        .unwrap();
    (g, addr)
}

/// Sends `method target` exactly as written (an HTTP client would resolve `..` first) with
/// this workspace's key; returns the status and the body.
async fn raw_request(addr: std::net::SocketAddr, method: &str, target: &str) -> (u16, String) {
    raw_request_with(addr, method, target, &format!("x-api-key: {KEY}\r\n")).await
}

/// [`raw_request`] with `headers` (each line ending in CRLF) instead of the key.
async fn raw_request_with(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: gateway\r\n{headers}content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// The requests the gateway must refuse: other endpoints of the providers (batches,
/// files, fine-tuning, admin), paths that resolve elsewhere upstream, the wrong method.
const REFUSED: &[(&str, &str)] = &[
    ("POST", "/anthropic/v1/messages/batches"),
    ("GET", "/anthropic/v1/files"),
    ("POST", "/openai/v1/fine_tuning/jobs"),
    ("POST", "/openai/v1/files"),
    ("GET", "/anthropic/v1/../v1/organizations"),
    ("POST", "/anthropic/v1/messages%2f..%2fbatches"),
    ("POST", "/anthropic/v1/messages/%2e%2e/batches"),
    ("POST", "/openai/v1//responses"),
    ("POST", "/anthropic/v1/./messages"),
    ("POST", "/anthropic/v1/messages/"),
    ("POST", "/anthropic"),
    ("GET", "/anthropic/v1/messages"),
    ("DELETE", "/openai/v1/models/ft-gpt-test"),
    ("POST", "/google/v1beta/cachedContents"),
    (
        "POST",
        "/google/v1beta/models/gemini-test:batchGenerateContent",
    ),
];

/// Regression: the gateway forwarded any path under `/anthropic/`, `/openai/` and
/// `/google/` with the real credential, so an agent could spend it on any endpoint.
#[tokio::test]
async fn only_the_model_api_paths_agents_use_reach_the_upstream() {
    let (upstream, seen) = recording_upstream().await;
    let (_g, addr) = gateway_to(&upstream, "ws-0000000004").await;
    for (method, path) in REFUSED {
        let (status, body) = raw_request(addr, method, path).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("{method} {path}")), "{msg}");
        assert!(
            msg.contains("only forwards the model API paths the agents need"),
            "{msg}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing refused reached the upstream: {:?}",
        seen.lock().unwrap()
    );
    // What the agents call still goes through, with the real credential.
    let allowed = [
        (
            "POST",
            "/anthropic/v1/messages?beta=true",
            "/v1/messages?beta=true",
            "sk-ant-REAL",
        ),
        (
            "POST",
            "/anthropic/v1/messages/count_tokens?beta=true",
            "/v1/messages/count_tokens?beta=true",
            "sk-ant-REAL",
        ),
        (
            "POST",
            "/openai/v1/responses",
            "/v1/responses",
            "Bearer sk-openai-REAL",
        ),
        (
            "POST",
            "/openai/v1/chat/completions",
            "/v1/chat/completions",
            "Bearer sk-openai-REAL",
        ),
        (
            "GET",
            "/openai/v1/models",
            "/v1/models",
            "Bearer sk-openai-REAL",
        ),
        (
            "POST",
            "/google/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "AIza-REAL",
        ),
        (
            "POST",
            "/google/v1beta/models/gemini-2.5-flash-lite:generateContent",
            "/v1beta/models/gemini-2.5-flash-lite:generateContent",
            "AIza-REAL",
        ),
    ];
    for (method, path, _, _) in allowed {
        let (status, body) = raw_request(addr, method, path).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let got = seen.lock().unwrap().clone();
    let want: Vec<(String, String, String)> = allowed
        .iter()
        .map(|(m, _, up, c)| (m.to_string(), up.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// Keeps what the gateway reports.
#[derive(Default)]
struct KeepRefusals(std::sync::Mutex<Vec<RefusedRequest>>);
impl GatewayAudit for KeepRefusals {
    fn refused(&self, r: RefusedRequest) {
        self.0.lock().unwrap().push(r);
    }
}

#[tokio::test]
async fn every_refusal_reaches_the_audit_hook_and_forwarded_calls_do_not() {
    let (upstream, _seen) = recording_upstream().await;
    let (g, addr) = gateway_to(&upstream, "ws-0000000005").await;
    let audit = Arc::new(KeepRefusals::default());
    g.set_audit(audit.clone());
    for (method, path) in REFUSED {
        assert_eq!(raw_request(addr, method, path).await.0, 403);
    }
    assert_eq!(
        raw_request(addr, "POST", "/openai/v1/responses").await.0,
        200
    );
    let got = audit.0.lock().unwrap().clone();
    let lines: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let want: Vec<(String, String)> = REFUSED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(lines, want);
    assert!(got.iter().all(|r| r.workspace == "ws-0000000005"));
    assert_eq!(got[0].reason, "no supported agent calls it");
    let dotdot = &got[4];
    assert_eq!(dotdot.path, "/anthropic/v1/../v1/organizations");
    assert_eq!(dotdot.reason, "the path is not in normal form");
    let get = got
        .iter()
        .find(|r| r.path == "/anthropic/v1/messages")
        .unwrap();
    assert_eq!(get.reason, "this path is forwarded for POST only");
}
