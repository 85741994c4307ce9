//! Dev-server previews: any port of a running workspace, reachable from the web UI through
//! the daemon (no port opened on the host; connections go over the workspace's link or
//! through its guest), with WebSocket upgrades, in two forms:
//!
//! * **Path**: `/p/<ws>/<port>/…` on the web UI's own origin. Every response carries a
//!   `sandbox` content security policy, so what the dev server serves runs in an opaque
//!   origin and can never read or drive the web UI (a dev server is the agent's code).
//!   Browsers send no cookies from an opaque origin, so a logged-in visit is redirected to
//!   `/p/<ws>/<port>/~<token>/…`, a login for that one port carried by every relative URL
//!   (and WebSocket) of the page; absolute paths (`/assets/x.js`) escape the prefix, which
//!   is what the per-port origin is for.
//! * **Per-port origin**: `<port>--<ws>.<preview domain>` (`serve --preview-domain`). The
//!   web UI hands a one-time code to that origin, which trades it for its own host-only
//!   cookie; the app runs at `/` as it would on localhost.
//!
//! Neither the web UI's login cookie nor a preview cookie is ever forwarded to the dev
//! server.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::AppState;
use crate::web::{Auth, WebState};

/// The cookie a preview (either form) authenticates with.
pub const COOKIE: &str = "kraal_preview";
/// How long a preview login lasts before the web UI must hand out a new one.
const LOGIN_TTL: i64 = 12 * 3600;
/// How long a one-time code for a per-port origin is good for.
const CODE_TTL: i64 = 60;
/// How long a dev server may take to start answering a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How a request reached the preview.
#[derive(Debug, Clone)]
enum Mode {
    /// `/p/<ws>/<port>`: the prefix to strip and put back.
    Path(String),
    /// Its own origin.
    Origin,
}

/// `<port>--<ws>.<domain>` → (port, workspace).
pub fn preview_host(host: &str, domain: &str) -> Option<(u16, String)> {
    let label = host
        .strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|l| !l.contains('.'))?;
    let (port, ws) = label.split_once("--")?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!ws.is_empty()).then(|| (port, ws.to_owned()))
}

/// The request's host without its port, lowercased.
fn host_of(headers: &HeaderMap) -> String {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let h = if h.starts_with('[') {
        h.split(']')
            .next()
            .map(|x| format!("{x}]"))
            .unwrap_or_default()
    } else {
        h.rsplit_once(':')
            .map(|(a, _)| a.to_owned())
            .unwrap_or_else(|| h.to_owned())
    };
    h.to_ascii_lowercase()
}

/// `:port` of the request's `Host`, or empty.
fn port_suffix(headers: &HeaderMap) -> String {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match h.rsplit_once(':') {
        Some((a, p)) if !a.ends_with(']') || h.starts_with('[') => {
            if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() {
                format!(":{p}")
            } else {
                String::new()
            }
        }
        _ => String::new(),
    }
}

fn scheme(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https { "https" } else { "http" }
}

/// The host a per-port origin has.
pub fn origin_host(port: u16, ws: &str, domain: &str) -> String {
    format!("{port}--{ws}.{domain}")
}

/// The per-port origin of a workspace port as the browser reaching `headers` sees it.
pub fn origin_url(headers: &HeaderMap, port: u16, ws: &str, domain: &str) -> String {
    format!(
        "{}://{}{}",
        scheme(headers),
        origin_host(port, ws, domain),
        port_suffix(headers)
    )
}

/// Values of every cookie called `name`.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = String> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        })
}

/// The login token of a valid preview cookie for `key`.
fn preview_login(app: &AppState, headers: &HeaderMap, key: &str) -> Option<String> {
    cookies(headers, COOKIE).find_map(|c| {
        app.engine
            .store()
            .preview_login(&c, key, "cookie")
            .ok()
            .flatten()
    })
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1"; title { (title) " · kraal" } }
            body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; padding: 0 1rem" {
                h2 { (title) }
                p { (text) }
            }
        }
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        body.into_string(),
    )
        .into_response()
}

fn preview_cookie(value: &str, headers: &HeaderMap) -> HeaderValue {
    let secure = if scheme(headers) == "https" {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={LOGIN_TTL}{secure}"
    ))
    .expect("cookie is ASCII")
}

fn path_key(ws_id: &str, port: u16) -> String {
    format!("path:{ws_id}:{port}")
}

#[derive(Debug, Deserialize, Default)]
pub struct OpenQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Path previews, `/p/{ws}/{port}/…`: the web UI's login (a top-level visit) or the
/// preview cookie it set.
pub async fn by_path(
    State(w): State<WebState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (ws, port) = (get("ws"), get("port"));
    let Ok(port) = port.parse::<u16>() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not a port",
            &format!("{port:?} is not a TCP port number."),
        );
    };
    let rec = match w.app.engine.resolve(&ws) {
        Ok(r) => r,
        Err(e) => {
            return page(
                StatusCode::NOT_FOUND,
                "No such workspace",
                &kraal_engine::chain(&e),
            );
        }
    };
    let prefix = format!("/p/{ws}/{port}");
    if req.uri().path() == prefix {
        // The app's relative links need the trailing slash.
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        return Redirect::to(&format!("{prefix}/{q}")).into_response();
    }
    let key = path_key(rec.id.as_str(), port);
    let rest = req.uri().path()[prefix.len()..].to_owned();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    // `/p/<ws>/<port>/~<token>/…`: the token is the preview's login.
    if let Some(t) = rest.strip_prefix("/~") {
        let (token, after) = t.split_at(t.find('/').unwrap_or(t.len()));
        let valid = w
            .app
            .engine
            .store()
            .preview_login(token, &key, "path")
            .ok()
            .flatten()
            .is_some();
        if valid {
            if after.is_empty() {
                return Redirect::to(&format!("{prefix}/~{token}/{query}")).into_response();
            }
            let mode = Mode::Path(format!("{prefix}/~{token}"));
            return forward(&w.app, rec.name.as_str(), port, req, mode).await;
        }
        tracing::info!(path = %prefix, "path preview with an unknown or expired token");
        if crate::web::session_of(&w.app, req.headers()).is_none() {
            return page(
                StatusCode::UNAUTHORIZED,
                "This preview link expired",
                "Open the preview again from the workspace's page in the kraal web UI.",
            );
        }
        // Logged in: a fresh link to the same place.
        return mint_path_login(&w, &req, &key, &prefix, &format!("{after}{query}"));
    }
    // A visit from the logged-in web UI gets a preview link of its own: the dev server's
    // page is sandboxed (an opaque origin), so cookies never reach its subresources or
    // WebSockets; the token in the path does, through every relative URL.
    if crate::web::session_of(&w.app, req.headers()).is_none() {
        tracing::info!(path = %req.uri().path(), "path preview without a login");
        return unauthorized(&req, &format!("{prefix}/"));
    }
    mint_path_login(&w, &req, &key, &prefix, &format!("{rest}{query}"))
}

/// Redirects a logged-in visit to `prefix/~<new token>` + `rest`.
fn mint_path_login(w: &WebState, req: &Request, key: &str, prefix: &str, rest: &str) -> Response {
    let Some(s) = crate::web::session_of(&w.app, req.headers()) else {
        return unauthorized(req, &format!("{prefix}/"));
    };
    let secret = crate::web::random_token();
    if w.app
        .engine
        .store()
        .insert_preview_login(&secret, &s.token_id, key, "path", LOGIN_TTL)
        .is_err()
    {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Preview",
            "cannot record the preview login",
        );
    }
    let rest = if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    Redirect::to(&format!("{prefix}/~{secret}{rest}")).into_response()
}

fn unauthorized(req: &Request, back: &str) -> Response {
    let html = req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    if html {
        Redirect::to(&format!("/login?next={}", crate::web::urlencode(back))).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "log in first\n").into_response()
    }
}

/// `GET /w/{ws}/open/{port}`: opens a port on its own origin, handing that origin a
/// one-time code for its login.
pub async fn open(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path((ws, port)): Path<(String, u16)>,
    Query(q): Query<OpenQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(domain) = w.app.preview_domain.clone() else {
        return page(
            StatusCode::NOT_FOUND,
            "No preview domain",
            "Ports get their own origin when the daemon runs with `kraal serve --preview-domain DOMAIN`; use the path preview instead.",
        );
    };
    let rec = match w.app.engine.resolve(&ws) {
        Ok(r) => r,
        Err(e) => {
            return page(
                StatusCode::NOT_FOUND,
                "No such workspace",
                &kraal_engine::chain(&e),
            );
        }
    };
    let host = origin_host(port, rec.name.as_str(), &domain);
    let code = crate::web::random_token();
    if w.app
        .engine
        .store()
        .insert_preview_login(&code, &auth.token_id, &host, "code", CODE_TTL)
        .is_err()
    {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Preview",
            "cannot record the preview login",
        );
    }
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    Redirect::to(&format!(
        "{}/__kraal/auth?code={code}&next={}",
        origin_url(&headers, port, rec.name.as_str(), &domain),
        crate::web::urlencode(&next)
    ))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct AuthQuery {
    code: String,
    #[serde(default)]
    next: Option<String>,
}

/// Middleware in front of the web UI: requests for a per-port origin are previews (with
/// their own login), everything else is the web UI.
pub async fn by_host(State(w): State<WebState>, req: Request, next: Next) -> Response {
    let Some(domain) = w.app.preview_domain.clone() else {
        return next.run(req).await;
    };
    let host = host_of(req.headers());
    let Some((port, ws)) = preview_host(&host, &domain) else {
        return next.run(req).await;
    };
    if req.uri().path() == "/__kraal/auth" {
        let q: Option<AuthQuery> = req.uri().query().and_then(serde_urlencoded_query);
        let Some(q) = q else {
            return page(
                StatusCode::BAD_REQUEST,
                "Preview login",
                "the login link is incomplete",
            );
        };
        let token = w
            .app
            .engine
            .store()
            .preview_login(&q.code, &host, "code")
            .ok()
            .flatten();
        let Some(token) = token else {
            return page(
                StatusCode::FORBIDDEN,
                "Preview login",
                "This login link is not valid (any more). Open the preview again from the workspace page.",
            );
        };
        let secret = crate::web::random_token();
        if w.app
            .engine
            .store()
            .insert_preview_login(&secret, &token, &host, "cookie", LOGIN_TTL)
            .is_err()
        {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Preview",
                "cannot record the preview login",
            );
        }
        let next = q
            .next
            .filter(|n| n.starts_with('/') && !n.starts_with("//"))
            .unwrap_or_else(|| "/".into());
        let mut r = Redirect::to(&next).into_response();
        r.headers_mut()
            .insert(header::SET_COOKIE, preview_cookie(&secret, req.headers()));
        return r;
    }
    if preview_login(&w.app, req.headers(), &host).is_none() {
        return page(
            StatusCode::UNAUTHORIZED,
            "Log in through kraal",
            &format!(
                "This is a preview of port {port} of workspace {ws}. Open it from the workspace's page in the kraal web UI, which logs this origin in."
            ),
        );
    }
    forward(&w.app, &ws, port, req, Mode::Origin).await
}

fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(q: &str) -> Option<T> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let v = serde_json::Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    );
    serde_json::from_value(v).ok()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded by a proxy.
const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `Cookie` header without kraal's own cookies.
fn foreign_cookies(h: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| {
            let name = kv.split('=').next().unwrap_or("");
            !name.is_empty() && !name.starts_with("kraal_")
        })
        .map(str::to_owned)
        .collect();
    (!kept.is_empty()).then(|| HeaderValue::from_str(&kept.join("; ")).ok())?
}

/// Proxies one request (or WebSocket) to `port` of workspace `ws`.
async fn forward(app: &AppState, ws: &str, port: u16, mut req: Request, mode: Mode) -> Response {
    let (rec, stream) = match app.engine.connect_port(ws, port).await {
        Ok(x) => x,
        Err(e @ kraal_engine::EngineError::NotListening { .. }) => {
            return page(
                StatusCode::NOT_FOUND,
                "Nothing listens there",
                &format!(
                    "{}. Start the dev server in the workspace (listening on any address), then reload.",
                    kraal_engine::chain(&e)
                ),
            );
        }
        Err(e) => {
            let he: crate::HttpError = e.into();
            return page(he.status, "Preview unavailable", &he.body.message);
        }
    };
    let hold = app.engine.hold(&rec.id);
    let io = TokioIo::new(stream);
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(io)
        .await
    {
        Ok(x) => x,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Preview unavailable",
                &e.to_string(),
            );
        }
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let ws_upgrade = is_websocket(req.headers());
    let client_upgrade = ws_upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let upstream_path = match &mode {
        Mode::Path(prefix) => path_q
            .strip_prefix(prefix.as_str())
            .map(|r| {
                if r.is_empty() || r.starts_with('?') {
                    format!("/{r}")
                } else {
                    r.to_owned()
                }
            })
            .unwrap_or_else(|| "/".into()),
        Mode::Origin => path_q,
    };
    let mut up = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(upstream_path);
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    for (k, v) in parts.headers.iter() {
        let n = k.as_str();
        if HOP.contains(&n)
            || n == "host"
            || n == "cookie"
            || n == "x-csrf-token"
            || (n == "upgrade" && !ws_upgrade)
        {
            continue;
        }
        up = up.header(k, v);
    }
    if ws_upgrade {
        up = up.header(header::CONNECTION, "upgrade");
    }
    if let Some(c) = foreign_cookies(&parts.headers) {
        up = up.header(header::COOKIE, c);
    }
    // Dev servers (Vite, webpack) accept `localhost` out of the box.
    up = up
        .header(header::HOST, format!("localhost:{port}"))
        .header("x-forwarded-host", original_host)
        .header("x-forwarded-proto", scheme(&parts.headers));
    if let Mode::Path(prefix) = &mode {
        up = up.header("x-forwarded-prefix", prefix.as_str());
    }
    let Ok(up) = up.body(body) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Preview",
            "the request cannot be forwarded",
        );
    };
    let mut res = match tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "The dev server did not answer",
                &format!("port {port} of {ws}: {e}"),
            );
        }
        Err(_) => {
            return page(
                StatusCode::GATEWAY_TIMEOUT,
                "The dev server did not answer",
                &format!(
                    "port {port} of {ws} gave no answer within {} s",
                    ANSWER_TIMEOUT.as_secs()
                ),
            );
        }
    };

    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade
    {
        let server = hyper::upgrade::on(&mut res);
        tokio::spawn(async move {
            let _hold = hold;
            if let (Ok(c), Ok(s)) = (client.await, server.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(s)).await;
            }
        });
        let (p, _) = res.into_parts();
        let mut out = Response::from_parts(p, Body::empty());
        filter_response(out.headers_mut(), &mode, true);
        return out;
    }
    let (p, body) = res.into_parts();
    let mut out = Response::from_parts(p, Body::new(body));
    filter_response(out.headers_mut(), &mode, false);
    crate::activity::held(out, hold)
}

/// What a response to the browser keeps of the dev server's headers.
fn filter_response(h: &mut HeaderMap, mode: &Mode, upgrade: bool) {
    for n in HOP {
        if upgrade && n == "connection" {
            continue;
        }
        h.remove(n);
    }
    // The dev server may not set kraal's cookies.
    let cookies: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !v.to_str().unwrap_or("").trim_start().starts_with("kraal_"))
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    if let Mode::Path(prefix) = mode {
        if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok())
            && loc.starts_with('/')
            && !loc.starts_with("//")
            && let Ok(v) = HeaderValue::from_str(&format!("{prefix}{loc}"))
        {
            h.insert(header::LOCATION, v);
        }
        // Whatever the dev server serves runs in an opaque origin: it can never read or
        // drive the web UI it is shown next to.
        h.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads allow-popups-to-escape-sandbox",
            ),
        );
        h.insert(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("SAMEORIGIN"),
        );
        // The preview's token is in its path: links out of it must not carry it along.
        h.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_hosts_name_a_port_and_a_workspace() {
        assert_eq!(
            preview_host("8000--web.preview.example", "preview.example"),
            Some((8000, "web".into()))
        );
        assert_eq!(
            preview_host("3000--my-app.localhost", "localhost"),
            Some((3000, "my-app".into()))
        );
        assert_eq!(preview_host("preview.example", "preview.example"), None);
        assert_eq!(
            preview_host("x.8000--web.preview.example", "preview.example"),
            None
        );
        assert_eq!(
            preview_host("web--8000.preview.example", "preview.example"),
            None
        );
        assert_eq!(
            preview_host("0--web.preview.example", "preview.example"),
            None
        );
        assert_eq!(
            preview_host("8000--web.evilpreview.example", "preview.example"),
            None
        );
    }

    #[test]
    fn kraal_cookies_never_reach_the_dev_server() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "kraal_session=secret; theme=dark; kraal_preview=x; sid=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(foreign_cookies(&h).unwrap(), "theme=dark; sid=1");
        h.insert(header::COOKIE, "kraal_session=secret".parse().unwrap());
        assert!(foreign_cookies(&h).is_none());
    }

    #[test]
    fn path_previews_are_sandboxed_and_keep_their_prefix() {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, "/login".parse().unwrap());
        h.append(
            header::SET_COOKIE,
            "kraal_session=evil; Path=/".parse().unwrap(),
        );
        h.append(header::SET_COOKIE, "app=1; Path=/".parse().unwrap());
        filter_response(&mut h, &Mode::Path("/p/web/8000".into()), false);
        assert_eq!(h[header::LOCATION], "/p/web/8000/login");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("sandbox")
        );
        let set: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(set, vec!["app=1; Path=/"]);
    }
}
