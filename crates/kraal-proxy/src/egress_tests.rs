//! Tests of the egress proxy: address rules, refusal hints, the per-workspace cap.

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

/// Loopback and metadata in every spelling a client may write them (decimal, octal, hex,
/// short forms, IPv4-mapped and IPv4-compatible IPv6, NAT64), by CONNECT and by absolute
/// URL, even allowlisted in that very spelling: refused as the address they are, with no
/// hint to allow them, and nothing connects to a listener there.
#[tokio::test]
async fn private_addresses_are_refused_in_every_literal_syntax() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = bait.local_addr().unwrap().port();
    let loopback = [
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0X7F000001",
        "017700000001",
        "127.1",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
    ];
    let metadata = [
        "0xa9fea9fe",
        "2852039166",
        "0251.0376.0251.0376",
        "169.254.43518",
    ];
    let proxies = EgressProxies::new(
        EgressSettings::default(),
        Arc::new(Keep(Default::default())),
    );
    let allow_half: Vec<kraal_core::EgressRule> = loopback
        .iter()
        .chain(&metadata)
        .step_by(2)
        .map(|h| kraal_core::EgressRule::parse(&format!("{h}:{port}")).unwrap())
        .collect();
    let addr = proxies
        .ensure("ws-literal", "127.0.0.1:0".parse().unwrap(), allow_half)
        .await
        .unwrap();
    for (host, named) in loopback
        .iter()
        .map(|h| (h, "127.0.0.1"))
        .chain(metadata.iter().map(|h| (h, "169.254.169.254")))
    {
        let target = format!("{host}:{port}");
        let r = refusal_of(addr, &target).await;
        assert!(r.starts_with("HTTP/1.1 403"), "CONNECT {target}: {r}");
        assert!(
            r.contains("never connect there") && !r.contains("egress allow"),
            "CONNECT {target}: {r}"
        );
        assert!(r.contains(named), "CONNECT {target} names the address: {r}");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let r = String::from_utf8_lossy(&out);
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("never connect there"),
            "GET http://{target}/: {r}"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bait.accept())
            .await
            .is_err(),
        "something connected to loopback through the proxy"
    );
}

/// A workspace gets a bounded number of connections: over the cap, a request is answered
/// 503 (and logged); a connection that never sends its request head is closed after the
/// header timeout, which gives its slot back.
#[tokio::test]
async fn connections_per_workspace_are_capped_and_slow_heads_are_cut() {
    use tokio::io::AsyncReadExt;
    let settings = EgressSettings {
        max_connections: 4,
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let sink = Arc::new(Keep(Default::default()));
    let proxies = EgressProxies::new(settings, sink.clone());
    let addr = proxies
        .ensure("ws-cap", "127.0.0.1:0".parse().unwrap(), vec![])
        .await
        .unwrap();
    // Four connections that say nothing take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = refusal_of(addr, "example.org:443").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        r.contains(
            "workspace ws-cap has 4 connections through its egress proxy open, the most it may"
        ),
        "{r}"
    );
    let logged = sink.0.lock().unwrap().clone();
    assert!(
        logged.iter().any(|e| !e.allowed
            && e.host == "example.org"
            && e.reason
                .as_deref()
                .is_some_and(|r| r.contains("the most it may"))),
        "{logged:?}"
    );
    // The silent ones are cut after the header timeout…
    for s in &mut idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the proxy keeps a connection open that sent no request head"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …and their slots come back: the next request is judged (403), not turned away.
    let r = refusal_of(addr, "example.org:443").await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}
