//! Web authentication. A browser logs in with a token from `kraal token create`; it gets a
//! random session cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS) stored hashed.
//! Every state change must carry the session's CSRF token (form field or `X-CSRF-Token`)
//! and, when the browser sends one, an `Origin` of this very site. Failed logins are
//! rate-limited per client address and overall.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::WebState;

pub const COOKIE: &str = "kraal_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who is logged in, for handlers.
#[derive(Debug, Clone)]
pub struct Auth {
    pub csrf: String,
    pub token_name: String,
    /// The login token's id (what push subscriptions and preview logins belong to).
    pub token_id: String,
}

/// Failed-login limits: per address, and for everyone together (slows a distributed
/// guess without locking the owner out for long).
pub struct Limiter {
    per_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    all: Mutex<VecDeque<Instant>>,
    window: Duration,
    max_per_ip: usize,
    max_all: usize,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            per_ip: Mutex::new(HashMap::new()),
            all: Mutex::new(VecDeque::new()),
            window: Duration::from_secs(60),
            max_per_ip: 5,
            max_all: 30,
        }
    }
}

impl Limiter {
    fn prune(q: &mut VecDeque<Instant>, window: Duration) {
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
    }

    /// Seconds to wait before `ip` may try again, if it must.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let retry = |q: &VecDeque<Instant>| {
            q.front()
                .map(|t| self.window.saturating_sub(t.elapsed()).as_secs().max(1))
                .unwrap_or(1)
        };
        let mut per = self.per_ip.lock().unwrap();
        let q = per.entry(ip).or_default();
        Self::prune(q, self.window);
        if q.len() >= self.max_per_ip {
            return Some(retry(q));
        }
        let mut all = self.all.lock().unwrap();
        Self::prune(&mut all, self.window);
        (all.len() >= self.max_all).then(|| retry(&all))
    }

    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        self.per_ip
            .lock()
            .unwrap()
            .entry(ip)
            .or_default()
            .push_back(now);
        self.all.lock().unwrap().push_back(now);
    }
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.to_owned())
        })
}

/// Whether the request reached us over HTTPS (directly or through a proxy that says so).
fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

pub fn set_cookie(value: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
    let secure = if https(headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie is ASCII")
}

/// An `Origin` (or, failing that, `Referer`) naming another site than `Host`.
fn cross_site(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match from {
        None => false,
        Some("null") => true,
        Some(o) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .unwrap_or("");
            rest.split('/').next() != Some(host)
        }
    }
}

/// An `Origin` header naming another site than `Host` (browsers send one on cross-origin
/// requests of any method; top-level navigations by GET send none).
fn foreign_origin(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) && cross_site(headers)
}

fn unauthorized(req: &Request) -> Response {
    // Pages send the browser to the login page; anything else gets a 401.
    let wants_html = req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
        && req.headers().get("hx-request").is_none();
    if wants_html {
        let next = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let next = if next.starts_with('/') && !next.starts_with("//") {
            next
        } else {
            "/"
        };
        Redirect::to(&format!("/login?next={}", urlencode(next))).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "log in first\n").into_response()
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn csrf_ok(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| {
        g.len() == expected.len() && bool::from(g.as_bytes().ct_eq(expected.as_bytes()))
    })
}

/// The live web login a request's cookie names, if any.
pub fn session_of(app: &crate::AppState, headers: &HeaderMap) -> Option<kraal_store::WebSession> {
    let c = cookie_value(headers)?;
    app.engine.store().web_session(&c).ok().flatten()
}

/// Everything but the login page, static assets, notification actions (which carry
/// their own capability) and path previews (which check the login or their own cookie):
/// a valid session; state changes also need the CSRF token and a same-site origin.
pub async fn require(State(w): State<WebState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/login"
        || path.starts_with("/static/")
        || (path.starts_with("/act/") && req.method() == Method::POST)
        || path.starts_with("/p/")
    {
        return next.run(req).await;
    }
    let session = session_of(&w.app, req.headers());
    let Some(session) = session else {
        return unauthorized(&req);
    };
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    // State changes and WebSockets must come from this site (by Origin or Referer); any
    // request a page elsewhere made (an EventSource on a live stream, a fetch) says so in
    // its Origin and is refused too, whatever the cookie's SameSite does in that browser.
    if ((changes_state || upgrade) && cross_site(req.headers())) || foreign_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response();
    }
    let header_token = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if changes_state && header_token.is_some() {
        // A script's request (htmx, fetch; uploads among them): the header is enough and
        // the body streams on untouched.
        if !csrf_ok(&session.csrf, header_token.as_deref()) {
            return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
        }
    } else if changes_state {
        // A plain form: the token is its `csrf` field.
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, super::MAX_FORM).await {
            Ok(b) => b,
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response();
            }
        };
        let form_token = form_field(&bytes, "csrf");
        if !csrf_ok(&session.csrf, form_token.as_deref()) {
            return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
        }
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    req.extensions_mut().insert(crate::security::Actor(format!(
        "web:{}",
        session.token_name
    )));
    req.extensions_mut().insert(Auth {
        csrf: session.csrf,
        token_name: session.token_name,
        token_id: session.token_id,
    });
    next.run(req).await
}

/// One field of an `application/x-www-form-urlencoded` body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

pub async fn login_page(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    super::pages::login(q.next.as_deref().unwrap_or("/"), q.error.as_deref()).into_response()
}

pub async fn login(
    State(w): State<WebState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let ip = peer.ip();
    if cross_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site login refused\n").into_response();
    }
    if let Some(wait) = w.limiter.blocked(ip) {
        tracing::warn!(%ip, "web login rate-limited");
        let mut r = super::pages::login(
            form.next.as_deref().unwrap_or("/"),
            Some(&format!("Too many failed logins; try again in {wait} s.")),
        )
        .into_response();
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&wait.to_string()).expect("digits"),
        );
        return r;
    }
    let token = form.token.trim();
    let found = w.app.engine.store().check_token(token).ok().flatten();
    let Some(tok) = found else {
        w.limiter.failed(ip);
        tracing::warn!(%ip, "web login with a wrong token");
        crate::security::audit(
            &w.app,
            &format!("ip:{ip}"),
            "login.failed",
            "web",
            "wrong token",
        );
        let mut r = super::pages::login(
            form.next.as_deref().unwrap_or("/"),
            Some("That token is not valid (create one with `kraal token create`)."),
        )
        .into_response();
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    let cookie = random_token();
    let csrf = random_token();
    if w.app
        .engine
        .store()
        .create_web_session(&cookie, &tok.id, &csrf, SESSION_TTL.as_secs() as i64)
        .is_err()
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot record the login\n",
        )
            .into_response();
    }
    tracing::info!(%ip, token = %tok.name, "web login");
    crate::security::audit(
        &w.app,
        &format!("web:{}", tok.name),
        "login",
        "web",
        &format!("from {ip}"),
    );
    let next = form
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    let mut r = Redirect::to(&next).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&cookie, SESSION_TTL.as_secs(), &headers),
    );
    r
}

pub async fn logout(State(w): State<WebState>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie_value(&headers) {
        let _ = w.app.engine.store().delete_web_session(&c);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, &headers));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_five_failures_per_address_and_thirty_overall() {
        let l = Limiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(l.blocked(a).is_none());
            l.failed(a);
        }
        assert!(l.blocked(a).is_some_and(|s| (1..=60).contains(&s)));
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(
            l.blocked(b).is_none(),
            "others are not blocked by one address"
        );
        for i in 0..25u8 {
            l.failed(IpAddr::from([10, 1, 0, i]));
        }
        assert!(
            l.blocked(b).is_some(),
            "30 failures in a minute block everyone"
        );
    }

    #[test]
    fn origins_and_cookies_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7080".parse().unwrap());
        assert!(!cross_site(&h), "no origin: same-site (old browsers, curl)");
        h.insert(header::ORIGIN, "http://127.0.0.1:7080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert(
            header::ORIGIN,
            "http://127.0.0.1:7080.evil.example".parse().unwrap(),
        );
        assert!(cross_site(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&h));
        assert!(
            foreign_origin(&h),
            "a sandboxed frame's reads are refused too"
        );
        // A link followed from another site (a Referer, no Origin) may still read a page.
        let mut nav = HeaderMap::new();
        nav.insert(header::HOST, "127.0.0.1:7080".parse().unwrap());
        nav.insert(header::REFERER, "http://evil.example/x".parse().unwrap());
        assert!(cross_site(&nav) && !foreign_origin(&nav));
        let mut c = HeaderMap::new();
        c.insert(
            header::COOKIE,
            "a=1; kraal_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&c).as_deref(), Some("abc"));
        assert!(!csrf_ok("abc", Some("abd")));
        assert!(!csrf_ok("abc", None));
        assert!(csrf_ok("abc", Some("abc")));
    }
}
