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
}

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            allow_cidrs: Vec::new(),
            resolve: HashMap::new(),
            connect_timeout: Duration::from_secs(15),
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

/// IPv4 in IPv6 clothing (IPv4-mapped, NAT64) as the IPv4 address it carries.
fn unwrapped(ip: IpAddr) -> IpAddr {
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpAddr::V4(v4);
        }
        let s = v6.segments();
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Small writes (the CONNECT answer, then tunnelled bytes) must not wait
                // for delayed ACKs.
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(c.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
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
        if let Some(w) = host.parse::<IpAddr>().ok().and_then(always_refused) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "{host} is {w}; workspaces never connect there, whatever the allowlist says"
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
        let addrs: Vec<IpAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
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

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
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
mod tests {
    use super::*;

    #[test]
    fn addresses_are_judged() {
        let none: Vec<IpNet> = vec![];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "192.0.2.1",
        ] {
            assert!(refused(ip(bad), &none).is_some(), "{bad} must be refused");
        }
        for good in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert_eq!(refused(ip(good), &none), None, "{good}");
        }
        let lan: Vec<IpNet> = vec![
            "10.77.0.0/24".parse().unwrap(),
            "169.254.0.0/16".parse().unwrap(),
        ];
        assert_eq!(
            refused(ip("10.77.0.2"), &lan),
            None,
            "an allowed private range"
        );
        assert!(refused(ip("10.77.1.2"), &lan).is_some());
        assert!(
            refused(ip("169.254.169.254"), &lan).is_some(),
            "metadata stays refused even when the operator allows its range"
        );
        for never in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(always_refused(ip(never)).is_some(), "{never}");
        }
        for openable in ["10.1.2.3", "192.168.1.1", "fc00::1", "1.1.1.1"] {
            assert!(always_refused(ip(openable)).is_none(), "{openable}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    struct Keep(std::sync::Mutex<Vec<EgressRecord>>);
    impl EgressSink for Keep {
        fn record(&self, r: EgressRecord) {
            self.0.lock().unwrap().push(r);
        }
    }

    /// What the proxy answers a CONNECT to `target` with.
    async fn refusal_of(addr: SocketAddr, target: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The hint to allow a host is given only where allowing it would help.
    #[tokio::test]
    async fn refusals_suggest_an_allowlist_rule_only_where_one_would_help() {
        let settings = EgressSettings {
            resolve: [
                ("lan.test".to_owned(), vec![ip("10.9.9.9")]),
                ("meta.test".to_owned(), vec![ip("169.254.169.254")]),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let proxies = EgressProxies::new(settings, Arc::new(Keep(Default::default())));
        let rules = vec![
            kraal_core::EgressRule::parse("lan.test").unwrap(),
            kraal_core::EgressRule::parse("meta.test").unwrap(),
        ];
        let addr = proxies
            .ensure("ws-hint", "127.0.0.1:0".parse().unwrap(), rules)
            .await
            .unwrap();
        for never in [
            "127.0.0.1:22",
            "169.254.169.254:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let r = refusal_of(addr, never).await;
            assert!(r.starts_with("HTTP/1.1 403"), "{never}: {r}");
            assert!(r.contains("never connect there"), "{never}: {r}");
            assert!(
                !r.contains("egress allow"),
                "{never} is given a useless hint: {r}"
            );
        }
        let r = refusal_of(addr, "meta.test:80").await;
        assert!(
            r.contains("never connect") && !r.contains("egress allow") && !r.contains("allow-cidr"),
            "{r}"
        );
        let r = refusal_of(addr, "lan.test:80").await;
        assert!(
            r.contains("--egress-allow-cidr") && !r.contains("egress allow ws"),
            "{r}"
        );
        let r = refusal_of(addr, "example.org:443").await;
        assert!(r.contains("kraal egress allow ws-hint example.org"), "{r}");
        let r = refusal_of(addr, "10.9.9.9:80").await;
        assert!(
            r.contains("kraal egress allow ws-hint 10.9.9.9"),
            "a private literal can be opened: {r}"
        );
    }
}
