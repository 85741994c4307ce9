//! The egress proxy: one HTTP proxy per workspace on the host side of its link, the only
//! way out of a sandbox. `CONNECT host:port` (HTTPS, anything over TLS) and absolute-form
//! `http://` requests pass when the workspace's allowlist names the host and every address
//! it connects to is public (private ranges only where the operator allowed them; loopback,
//! link-local and cloud metadata never). Names are resolved here, once, and the checked
//! address is the one connected to, so DNS tricks cannot move a connection elsewhere. Every
//! connection is reported with its decision.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use kraal_core::EgressRule;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot listen on {addr} for workspace {workspace}'s egress proxy")]
    Bind {
        workspace: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Daemon-wide egress settings.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Private ranges (RFC 1918, CGNAT, ULA, documentation…) connections may go to when
    /// an allowlist rule leads there, e.g. a git server on the LAN. Loopback, link-local
    /// (cloud metadata) and multicast stay refused whatever this says.
    pub allow_cidrs: Vec<IpNet>,
    /// Fixed addresses for names, consulted before DNS (like `curl --resolve`).
    pub resolve: HashMap<String, Vec<IpAddr>>,
    pub connect_timeout: Duration,
    /// Connections (tunnels included) one workspace may have open at once; the next one
    /// gets a 503 and is logged, so a workspace cannot exhaust the daemon's sockets.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (a slow-loris bound).
    pub header_timeout: Duration,
}

/// Bytes hyper buffers for one connection's request head at most.
const MAX_HEAD_BUF: usize = 64 * 1024;

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            allow_cidrs: Vec::new(),
            resolve: HashMap::new(),
            connect_timeout: Duration::from_secs(15),
            max_connections: 256,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// One connection through (or refused by) the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    pub workspace: String,
    /// `CONNECT` or the HTTP method of a plain-HTTP request.
    pub method: String,
    pub host: String,
    pub port: u16,
    /// The address connected to.
    pub addr: Option<SocketAddr>,
    pub allowed: bool,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ms: u64,
}

/// Where connection records go (the daemon stores them); called once per connection.
pub trait EgressSink: Send + Sync + 'static {
    fn record(&self, r: EgressRecord);
}

/// Drops records (tests, tools).
pub struct NoSink;
impl EgressSink for NoSink {
    fn record(&self, _: EgressRecord) {}
}

/// Why `ip` may not be connected to, if it may not. `allow` lists the private ranges the
/// operator opened.
pub fn refused(ip: IpAddr, allow: &[IpNet]) -> Option<&'static str> {
    let ip = unwrapped(ip);
    if let Some(hard) = always_refused(ip) {
        return Some(hard);
    }
    private(ip).filter(|_| !allow.iter().any(|n| n.contains(&ip)))
}

/// IPv4 in IPv6 clothing (IPv4-mapped, the deprecated IPv4-compatible `::a.b.c.d`,
/// NAT64) as the IPv4 address it carries.
fn unwrapped(ip: IpAddr) -> IpAddr {
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpAddr::V4(v4);
        }
        let s = v6.segments();
        if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
            return IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32));
        }
        // NAT64 (64:ff9b::/96) embeds an IPv4 address.
        if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
            return IpAddr::V4(Ipv4Addr::new(
                (s[6] >> 8) as u8,
                s[6] as u8,
                (s[7] >> 8) as u8,
                s[7] as u8,
            ));
        }
    }
    ip
}

/// Why `ip` is refused whatever the allowlist and the operator's ranges say (loopback,
/// link-local and metadata, unspecified, multicast and reserved), if it is: no rule can
/// open it, so no hint may suggest one.
pub fn always_refused(ip: IpAddr) -> Option<&'static str> {
    let ip = unwrapped(ip);
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address (cloud metadata lives there)")
            } else if v4.is_unspecified() || v4.octets()[0] == 0 {
                Some("an unspecified address")
            } else if v4.is_multicast() || v4.is_broadcast() || v4.octets()[0] >= 240 {
                Some("a multicast, broadcast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address (cloud metadata lives there)")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
    }
}

/// Why `ip` is private (refused unless the operator opens its range), if it is.
fn private(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_private() {
                Some("a private address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a carrier-grade NAT (tailnet) address")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("an IETF protocol address")
            } else if v4.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("a documentation or benchmarking address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if (s[0] & 0xfe00) == 0xfc00 {
                Some("a unique-local (private) address")
            } else if s[0] == 0x2001 && s[1] == 0xdb8 {
                Some("a documentation address")
            } else {
                None
            }
        }
    }
}

struct Ctx {
    workspace: String,
    rules: RwLock<Vec<EgressRule>>,
    settings: Arc<EgressSettings>,
    sink: Arc<dyn EgressSink>,
}

struct RunningProxy {
    requested: SocketAddr,
    bound: SocketAddr,
    ctx: Arc<Ctx>,
    task: JoinHandle<()>,
}

/// The egress proxies of every workspace this daemon serves.
pub struct EgressProxies {
    settings: Arc<EgressSettings>,
    sink: Arc<dyn EgressSink>,
    running: Mutex<HashMap<String, RunningProxy>>,
}

impl EgressProxies {
    pub fn new(settings: EgressSettings, sink: Arc<dyn EgressSink>) -> Self {
        EgressProxies {
            settings: Arc::new(settings),
            sink,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure `workspace`'s proxy listens on `addr` with `rules`; returns the bound
    /// address. Idempotent; a running proxy only gets the new rules.
    pub async fn ensure(
        &self,
        workspace: &str,
        addr: SocketAddr,
        rules: Vec<EgressRule>,
    ) -> Result<SocketAddr, EgressError> {
        {
            let mut running = self.running.lock().unwrap();
            if let Some(r) = running.get(workspace) {
                if r.requested == addr && !r.task.is_finished() {
                    *r.ctx.rules.write().unwrap() = rules;
                    return Ok(r.bound);
                }
                r.task.abort();
                running.remove(workspace);
            }
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EgressError::Bind {
                workspace: workspace.to_owned(),
                addr,
                source,
            })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let ctx = Arc::new(Ctx {
            workspace: workspace.to_owned(),
            rules: RwLock::new(rules),
            settings: self.settings.clone(),
            sink: self.sink.clone(),
        });
        let c = ctx.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.settings.max_connections.max(1),
        ));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Small writes (the CONNECT answer, then tunnelled bytes) must not wait
                // for delayed ACKs.
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                // Held by the connection and, for CONNECT, by its tunnel; none left: the
                // connection is answered 503 and closed.
                let slot = slots.clone().try_acquire_owned().ok().map(Arc::new);
                tokio::spawn(async move {
                    let busy = slot.is_none();
                    let head_timeout = c.settings.header_timeout;
                    let svc = hyper::service::service_fn(move |req| {
                        let (c, slot) = (c.clone(), slot.clone());
                        async move {
                            match slot {
                                Some(slot) => handle(c, req, slot).await,
                                None => Ok(c.busy(&req)),
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(head_timeout)
                        .max_buf_size(MAX_HEAD_BUF)
                        .keep_alive(!busy)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        tracing::debug!(workspace, %bound, "egress proxy listening");
        self.running.lock().unwrap().insert(
            workspace.to_owned(),
            RunningProxy {
                requested: addr,
                bound,
                ctx,
                task,
            },
        );
        Ok(bound)
    }

    /// Replaces a running proxy's allowlist (new connections see it at once).
    pub fn set_rules(&self, workspace: &str, rules: Vec<EgressRule>) {
        if let Some(r) = self.running.lock().unwrap().get(workspace) {
            *r.ctx.rules.write().unwrap() = rules;
        }
    }

    pub fn stop(&self, workspace: &str) {
        if let Some(r) = self.running.lock().unwrap().remove(workspace) {
            r.task.abort();
        }
    }
}

impl Drop for EgressProxies {
    fn drop(&mut self) {
        for (_, r) in self.running.lock().unwrap().drain() {
            r.task.abort();
        }
    }
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut b = Response::builder().status(status);
    if !status.is_success() {
        // A refused client gets nothing more on this connection.
        b = b.header("connection", "close");
    }
    b.header("content-type", "text/plain; charset=utf-8")
        .header(
            "x-kraal-egress",
            if status.is_success() {
                "allowed"
            } else {
                "denied"
            },
        )
        .body(
            Full::new(Bytes::from(msg + "\n"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

/// A refusal: its status and message.
struct Refusal(StatusCode, String);

impl Ctx {
    /// The answer to a request on a connection over the workspace's cap: 503, logged.
    fn busy(&self, req: &Request<Incoming>) -> Response<Body> {
        let connect = req.method() == Method::CONNECT;
        let (host, port) = target(req, (!connect).then_some(80)).unwrap_or_default();
        let msg = format!(
            "workspace {} has {} connections through its egress proxy open, the most it may; close some and retry",
            self.workspace, self.settings.max_connections
        );
        let rec = EgressRecord {
            workspace: self.workspace.clone(),
            method: req.method().to_string(),
            host: kraal_core::normalize_host(&host),
            port,
            addr: None,
            allowed: false,
            reason: Some(msg.clone()),
            bytes_up: 0,
            bytes_down: 0,
            ms: 0,
        };
        self.report(rec, Instant::now());
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("kraal egress: {msg}"),
        )
    }

    fn report(&self, mut r: EgressRecord, t0: Instant) {
        r.ms = t0.elapsed().as_millis() as u64;
        if r.allowed {
            tracing::info!(target: "kraal::egress", workspace = %r.workspace, method = %r.method, host = %r.host, port = r.port,
                addr = ?r.addr, up = r.bytes_up, down = r.bytes_down, ms = r.ms, "egress allowed");
        } else {
            tracing::warn!(target: "kraal::egress", workspace = %r.workspace, method = %r.method, host = %r.host, port = r.port,
                addr = ?r.addr, reason = r.reason.as_deref().unwrap_or(""), "egress denied");
        }
        self.sink.record(r);
    }

    /// Checks `host:port` against the allowlist and the address rules and connects.
    async fn open(&self, host: &str, port: u16) -> Result<(TcpStream, SocketAddr), Refusal> {
        let host = kraal_core::normalize_host(host);
        // An address no rule can open gets no hint to add one.
        let literal = host.parse::<IpAddr>().ok();
        if let Some(ip) = literal
            && let Some(w) = always_refused(ip)
        {
            // IPv4 in IPv6 clothing is named as the address it carries.
            let carried = unwrapped(ip);
            let what = if carried == ip {
                host.clone()
            } else {
                format!("{host} ({carried})")
            };
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "{what} is {w}; workspaces never connect there, whatever the allowlist says"
                ),
            ));
        }
        if !kraal_core::allowed(&self.rules.read().unwrap(), &host, port) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "{host}:{port} is not on workspace {}'s egress allowlist (kraal egress allow {} {host})",
                    self.workspace, self.workspace
                ),
            ));
        }
        let addrs: Vec<IpAddr> = if let Some(ip) = literal {
            vec![ip]
        } else if let Some(a) = self.settings.resolve.get(&host) {
            a.clone()
        } else {
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(it)) => it.map(|s| s.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!("cannot resolve {host}: {e}"),
                    ));
                }
                Err(_) => {
                    return Err(Refusal(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("resolving {host} timed out"),
                    ));
                }
            }
        };
        let mut why = None;
        let usable: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|ip| match refused(*ip, &self.settings.allow_cidrs) {
                Some(w) => {
                    why.get_or_insert((*ip, w));
                    false
                }
                None => true,
            })
            .collect();
        if usable.is_empty() {
            let msg = match why {
                Some((ip, w)) if always_refused(ip).is_some() => {
                    format!("{host} resolves to {ip}, {w}; workspaces never connect there")
                }
                Some((ip, w)) => format!(
                    "{host} resolves to {ip}, {w}; the daemon opens private ranges only with `kraal serve --egress-allow-cidr CIDR`"
                ),
                None => format!("{host} has no address"),
            };
            return Err(Refusal(StatusCode::FORBIDDEN, msg));
        }
        let mut last = String::new();
        for ip in usable {
            let sa = SocketAddr::new(ip, port);
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(sa)).await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, sa));
                }
                Ok(Err(e)) => last = format!("cannot connect to {sa}: {e}"),
                Err(_) => last = format!("connecting to {sa} timed out"),
            }
        }
        Err(Refusal(StatusCode::BAD_GATEWAY, last))
    }
}

/// `host:port` of a request target; `default_port` when it has none.
fn target(req: &Request<Incoming>, default_port: Option<u16>) -> Option<(String, u16)> {
    let auth = req.uri().authority()?;
    let port = auth.port_u16().or(default_port)?;
    Some((auth.host().to_owned(), port))
}

async fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    let connect = req.method() == Method::CONNECT;
    let method = req.method().to_string();
    let target = if connect {
        target(&req, None)
    } else if req.uri().scheme_str() == Some("http") {
        target(&req, Some(80))
    } else {
        None
    };
    let Some((host, port)) = target else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "this is kraal's egress proxy: use it as HTTP_PROXY/HTTPS_PROXY (CONNECT host:port, or absolute http:// URLs)".into(),
        ));
    };
    let mut rec = EgressRecord {
        workspace: ctx.workspace.clone(),
        method,
        host: kraal_core::normalize_host(&host),
        port,
        addr: None,
        allowed: false,
        reason: None,
        bytes_up: 0,
        bytes_down: 0,
        ms: 0,
    };
    let (upstream, addr) = match ctx.open(&host, port).await {
        Ok(x) => x,
        Err(Refusal(status, msg)) => {
            rec.reason = Some(msg.clone());
            ctx.report(rec, t0);
            return Ok(text(status, format!("kraal egress: {msg}")));
        }
    };
    rec.addr = Some(addr);
    rec.allowed = true;
    if connect {
        tokio::spawn(async move {
            // The tunnel counts against the workspace's connections until it closes.
            let _slot = slot;
            let mut upstream = upstream;
            match hyper::upgrade::on(req).await {
                Ok(up) => {
                    let mut client = TokioIo::new(up);
                    match tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut upstream,
                        64 * 1024,
                        64 * 1024,
                    )
                    .await
                    {
                        Ok((up, down)) => {
                            rec.bytes_up = up;
                            rec.bytes_down = down;
                        }
                        Err(e) => rec.reason = Some(format!("tunnel ended: {e}")),
                    }
                }
                Err(e) => rec.reason = Some(format!("upgrade failed: {e}")),
            }
            ctx.report(rec, t0);
        });
        return Ok(empty(StatusCode::OK));
    }
    // Plain HTTP: one request on a fresh upstream connection, in origin form.
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = pq.parse().unwrap_or_default();
    for h in [
        "proxy-connection",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    let out = Request::from_parts(parts, body);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => {
                rec.allowed = false;
                rec.reason = Some(format!("HTTP handshake with {addr} failed: {e}"));
                ctx.report(rec, t0);
                return Ok(text(
                    StatusCode::BAD_GATEWAY,
                    format!("kraal egress: {host}:{port} failed: {e}"),
                ));
            }
        };
    tokio::spawn(conn);
    match sender.send_request(out).await {
        Ok(resp) => {
            ctx.report(rec, t0);
            Ok(resp.map(|b| b.boxed()))
        }
        Err(e) => {
            rec.reason = Some(format!("request failed: {e}"));
            ctx.report(rec, t0);
            Ok(text(
                StatusCode::BAD_GATEWAY,
                format!("kraal egress: {host}:{port} failed: {e}"),
            ))
        }
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
