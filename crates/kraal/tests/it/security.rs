//! The escape suite, run from inside real sandboxes: host files, the daemon's API, cloud
//! metadata, private ranges, hosts off the allowlist, and the real credentials (model key,
//! git token) anywhere in the sandbox — every attempt must fail, and the allowed paths
//! (the egress proxy to an allowlisted host, git through the git gateway) must work, so
//! the failures mean something. Test hosts live in a network namespace this test creates.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const REAL_ANTHROPIC: &str = "sk-ant-api03-REAL-escape-suite-key-5d1c";
const PAT: &str = "ghp_REALgitTOKENescapeSuite7731";

/// A web server in its own network namespace on two addresses, reachable from the host
/// over a veth pair: `.2` (allowlisted) and `.3` (not).
struct TestHosts {
    netns: String,
    veth: String,
    net: String,
    server: Child,
    log: std::path::PathBuf,
}

fn sh(cmd: &str) {
    #[allow(clippy::disallowed_methods)] // test harness: host network setup
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl TestHosts {
    fn start(root: &std::path::Path) -> TestHosts {
        let n = std::process::id() % 200 + 20;
        let netns = format!("kraal-escape-{n}");
        let veth = format!("kesc{n}");
        let net = format!("10.77.{n}");
        sh(&format!("ip netns del {netns} 2>/dev/null; true"));
        sh(&format!(
            "ip link del {veth} 2>/dev/null; ip netns add {netns} && \
             ip link add {veth} type veth peer name eth0 netns {netns} && \
             ip addr add {net}.1/24 dev {veth} && ip link set {veth} up && \
             ip -n {netns} addr add {net}.2/24 dev eth0 && ip -n {netns} addr add {net}.3/24 dev eth0 && \
             ip -n {netns} link set eth0 up && ip -n {netns} link set lo up && \
             ip -n {netns} route add default via {net}.1"
        ));
        let log = root.join("server.log");
        let script = root.join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        #[allow(clippy::disallowed_methods)] // test harness: the test host's web server
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3"])
            .arg(&script)
            .arg(root.join("www"))
            .arg(PAT)
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let hosts = TestHosts {
            netns,
            veth,
            net,
            server,
            log,
        };
        let addr: std::net::SocketAddr = format!("{}.2:80", hosts.net).parse().unwrap();
        wait_until(Duration::from_secs(20), "the test web server", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        hosts
    }

    /// Requests the server saw, one `HOST PATH AUTH?` line each.
    fn seen(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        #[allow(clippy::disallowed_methods)] // test harness: cleanup
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip link del {} 2>/dev/null; ip netns del {}",
                    self.veth, self.netns
                ),
            ])
            .output();
    }
}

/// Serves `www/`; `/private.git/…` only with the right basic-auth token, its fetches over
/// smart HTTP (`git http-backend`, as git hosts serve them). Logs every request, and every
/// datagram to its UDP port 53 (a resolver a workspace must not reach).
const SERVER: &str = r#"
import base64, http.server, os, socket, subprocess, sys, threading
root, token, log = sys.argv[1], sys.argv[2], sys.argv[3]
want = 'Basic ' + base64.b64encode(('x-access-token:' + token).encode()).decode()
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def allowed(self):
        auth = self.headers.get('Authorization')
        with open(log, 'a') as f:
            f.write('%s %s %s %s\n' % (self.headers.get('Host'), self.path, 'auth-ok' if auth == want else ('auth-bad' if auth else 'no-auth'), self.client_address[0]))
        if self.path.startswith('/private.git') and auth != want:
            self.send_response(401)
            self.send_header('WWW-Authenticate', 'Basic realm="git"')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return False
        return True
    def body(self):
        if self.headers.get('Transfer-Encoding', '').lower() != 'chunked':
            return self.rfile.read(int(self.headers.get('Content-Length') or 0))
        out = b''
        while True:
            size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass
                return out
            out += self.rfile.read(size)
            self.rfile.readline()
    def smart(self):
        path, _, query = self.path.partition('?')
        data = self.body() if self.command == 'POST' else b''
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL='1',
                   REMOTE_USER='x-access-token', REQUEST_METHOD=self.command, PATH_INFO=path,
                   QUERY_STRING=query, CONTENT_TYPE=self.headers.get('Content-Type', ''),
                   CONTENT_LENGTH=str(len(data)),
                   HTTP_CONTENT_ENCODING=self.headers.get('Content-Encoding', ''),
                   GIT_PROTOCOL=self.headers.get('Git-Protocol', ''))
        out = subprocess.run(['git', 'http-backend'], input=data, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        head, _, rest = out.partition(b'\r\n\r\n')
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(':')
            if k.lower() == 'status':
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    def do_POST(self):
        if self.allowed():
            self.smart()
    def do_GET(self):
        if self.allowed():
            if self.path.startswith('/private.git/info/refs?service='):
                self.smart()
            else:
                super().do_GET()
    def do_HEAD(self):
        if self.allowed():
            super().do_HEAD()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(('0.0.0.0', 53))
    while True:
        data, peer = u.recvfrom(4096)
        with open(log, 'a') as f:
            f.write('udp53 %s %s\n' % (data.decode('latin1').strip(), peer[0]))
threading.Thread(target=udp, daemon=True).start()
http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()
"#;

/// `www/` with a public file, a public and a private dumb-HTTP git repository.
fn site(root: &std::path::Path) {
    let www = root.join("www");
    std::fs::create_dir_all(www.join("public")).unwrap();
    std::fs::write(
        www.join("public/hello.txt"),
        "hello from the allowed host\n",
    )
    .unwrap();
    let src = git_repo(root, "upstream-src");
    for name in ["public.git", "private.git"] {
        sh(&format!(
            "git clone -q --bare {} {} && git -C {} update-server-info",
            src.display(),
            www.join(name).display(),
            www.join(name).display()
        ));
    }
}

/// A bash fragment run in the sandbox: the proxy's address from the environment kraal
/// set, then a raw request through it, printing the response.
fn through_proxy(request: &str) -> String {
    format!(
        r#"P=${{HTTP_PROXY#http://}}; exec 3<>/dev/tcp/${{P%:*}}/${{P##*:}} || exit 9; printf '{request}' >&3; timeout 10 cat <&3"#
    )
}

fn get_via_proxy(url: &str, host: &str) -> String {
    through_proxy(&format!(
        "GET {url} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"
    ))
}

fn connect_via_proxy(target: &str) -> String {
    through_proxy(&format!(
        "CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\nGET /public/hello.txt HTTP/1.0\\r\\nHost: {target}\\r\\n\\r\\n"
    ))
}

fn direct(ip: &str, port: u16) -> String {
    format!(
        "timeout 3 bash -c 'echo > /dev/tcp/{ip}/{port}' 2>/dev/null && echo CONNECTED || echo BLOCKED"
    )
}

fn bash(d: &Daemon, ws: &str, script: &str) -> Out {
    d.run(&["exec", ws, "--", "bash", "-c", script])
}

#[test]
fn the_escape_suite_every_way_out_fails_and_the_allowed_ones_work() {
    let tmp = tempfile::tempdir().unwrap();
    site(tmp.path());
    let hosts = TestHosts::start(tmp.path());
    let net = hosts.net.clone();
    let api_port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let resolve = format!(
        "allowed.test={net}.2,other.test={net}.3,meta.test=169.254.169.254,lan.test=192.168.77.1"
    );
    let cidr = format!("{net}.0/24");
    let git_url = format!("allowed.test=http://{net}.2");
    let listen_tcp = format!("0.0.0.0:{api_port}");
    let d = Daemon::start_with_env(&[
        ("ANTHROPIC_API_KEY", REAL_ANTHROPIC),
        ("KRAAL_EGRESS_RESOLVE", &resolve),
        ("KRAAL_EGRESS_ALLOW_CIDRS", &cidr),
        ("KRAAL_GIT_URLS", &git_url),
        ("KRAAL_LISTEN_TCP", &listen_tcp),
    ]);

    // Secrets: from a file and from a command run on the host; listed without values.
    let pat_file = tmp.path().join("pat");
    std::fs::write(&pat_file, format!("{PAT}\n")).unwrap();
    d.ok(&[
        "secret",
        "set",
        "git-pat",
        "--file",
        pat_file.to_str().unwrap(),
    ]);
    d.ok(&[
        "secret",
        "set",
        "spare",
        "--command",
        "printf from-a-command",
    ]);
    let ls = d.ok(&["secret", "ls", "--json"]);
    assert!(
        ls.contains("git-pat") && ls.contains("\"command\"") && !ls.contains(PAT),
        "{ls}"
    );
    let bad = d.run(&[
        "up",
        "--git",
        "allowed.test=missing-secret:private",
        tmp.path().join("upstream-src").to_str().unwrap(),
    ]);
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.contains("no secret named missing-secret"),
        "{bad:?}"
    );
    // A credential that would reach no repository: the source is not on its host.
    let bad = d.run(&[
        "up",
        "--git",
        "allowed.test=git-pat",
        tmp.path().join("upstream-src").to_str().unwrap(),
    ]);
    assert!(
        bad.code != Some(0) && bad.stderr.contains("reaches no repository"),
        "{bad:?}"
    );
    let bad = d.run(&["secret", "set", "Bad Name", "--command", "echo x"]);
    assert!(bad.stderr.contains("invalid"), "{bad:?}");

    // The workspace: default allowlist plus the test hosts it may use.
    let repo = git_repo(tmp.path(), "escape");
    let host_marker = format!("host-only-marker-{}", std::process::id());
    let host_file = tmp.path().join("host-secret.txt");
    std::fs::write(&host_file, &host_marker).unwrap();
    d.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--allow",
        "allowed.test",
        "--allow",
        "meta.test",
        "--allow",
        "169.254.169.254",
        "--allow",
        "lan.test",
        "--git",
        "allowed.test=git-pat:private",
    ]);
    let ws = "escape";
    let addr = d.workspace(ws)["address"].as_str().unwrap().to_owned();
    let guest_ip: std::net::Ipv4Addr = addr.split(':').next().unwrap().parse().unwrap();
    let link_host = std::net::Ipv4Addr::from(u32::from(guest_ip) - 1).to_string();
    // Even allowlisted, the host's own address is private: the proxy will not go there.
    d.ok(&["egress", "allow", ws, &format!("{link_host}:{api_port}")]);

    // Allowed: plain HTTP and CONNECT through the proxy to an allowlisted host, and real
    // tools (git over libcurl) through the proxy settings kraal put in the environment.
    let o = bash(
        &d,
        ws,
        &get_via_proxy("http://allowed.test/public/hello.txt", "allowed.test"),
    );
    assert!(
        o.stdout.contains("200 OK") && o.stdout.contains("hello from the allowed host"),
        "{o:?}\n{}",
        d.log_tail()
    );
    let o = bash(&d, ws, &connect_via_proxy("allowed.test:80"));
    assert!(
        o.stdout.contains("200") && o.stdout.contains("hello from the allowed host"),
        "CONNECT tunnel: {o:?}"
    );
    let o = d.exec(
        ws,
        "git clone -q http://allowed.test/public.git /tmp/pub && cat /tmp/pub/README.md",
    );
    assert_eq!(o.stdout, "# demo\n", "git through the egress proxy: {o:?}");
    // git over HTTPS to the credentialed host goes to the git gateway, which adds the token.
    let o = d.exec(
        ws,
        "git clone -q https://allowed.test/private.git /tmp/priv && cat /tmp/priv/README.md",
    );
    assert_eq!(
        o.stdout,
        "# demo\n",
        "git through the git gateway: {o:?}\n{}",
        d.log_tail()
    );
    assert!(
        hosts
            .seen()
            .contains("/private.git/info/refs?service=git-upload-pack auth-ok"),
        "{}",
        hosts.seen()
    );
    // Another repository on the same host: refused by the gateway, the token never sent.
    let o = d.exec(
        ws,
        "GIT_TERMINAL_PROMPT=0 git clone -q https://allowed.test/public.git /tmp/other 2>&1; echo rc=$?",
    );
    assert!(
        o.stdout.contains("rc=128")
            && o.stdout.contains("allowed.test/public refused")
            && o.stdout
                .contains("--git allowed.test=git-pat:private,public"),
        "{o:?}"
    );
    assert!(
        !hosts
            .seen()
            .contains("/public.git/info/refs?service=git-upload-pack auth-ok"),
        "{}",
        hosts.seen()
    );
    // Without the gateway the sandbox has no token to offer.
    let o = d.exec(ws, "GIT_TERMINAL_PROMPT=0 git clone -q http://allowed.test/private.git /tmp/nope 2>&1; echo rc=$?");
    assert!(o.stdout.contains("rc=128"), "{o:?}");

    // Refused: a host off the allowlist, by name and through CONNECT; nothing reaches it.
    let o = bash(
        &d,
        ws,
        &get_via_proxy("http://other.test/public/hello.txt", "other.test"),
    );
    assert!(
        o.stdout.contains("403") && o.stdout.contains("not on workspace"),
        "{o:?}"
    );
    let o = bash(&d, ws, &connect_via_proxy("other.test:80"));
    assert!(
        o.stdout.contains("403") && !o.stdout.contains("hello"),
        "{o:?}"
    );
    assert!(!hosts.seen().contains("other.test"), "{}", hosts.seen());
    // Cloud metadata, by a name that resolves there and as a literal — even allowlisted.
    for target in ["meta.test:80", "169.254.169.254:80"] {
        let o = bash(&d, ws, &connect_via_proxy(target));
        assert!(
            o.stdout.contains("403") && o.stdout.contains("link-local"),
            "{target}: {o:?}"
        );
    }
    // Private ranges the operator did not open, and the daemon's own TCP API on the link.
    let o = bash(&d, ws, &connect_via_proxy("lan.test:80"));
    assert!(
        o.stdout.contains("403") && o.stdout.contains("private"),
        "{o:?}"
    );
    let o = bash(
        &d,
        ws,
        &connect_via_proxy(&format!("{link_host}:{api_port}")),
    );
    assert!(
        o.stdout.contains("403"),
        "the daemon API through the proxy: {o:?}"
    );
    // Loopback and metadata spelled so a naive check misses them (decimal, octal, hex,
    // short, IPv4 in IPv6): refused as what they are, even allowlisted in that spelling,
    // and with no hint to allow them.
    d.ok(&["egress", "allow", ws, "2130706433:80"]);
    for target in [
        "2130706433:80",
        "0177.0.0.1:80",
        "0x7f.1:80",
        "0xa9fea9fe:80",
        "[::ffff:a9fe:a9fe]:80",
        "[::169.254.169.254]:80",
    ] {
        let o = bash(&d, ws, &connect_via_proxy(target));
        assert!(
            o.stdout.contains("403")
                && o.stdout.contains("never connect there")
                && !o.stdout.contains("egress allow"),
            "{target}: {o:?}"
        );
    }
    // DNS is no side channel: no resolver is reachable from inside (not the test hosts'
    // by UDP, not the host's link, not the nameservers resolv.conf names); the host's own
    // probe shows the listener hears.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.send_to(b"host-probe", format!("{net}.2:53")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the UDP listener to hear the host",
        || hosts.seen().contains("udp53 host-probe"),
    );
    let o = bash(
        &d,
        ws,
        &format!(
            "for dst in {net}.2 {net}.3 {link_host} $(awk '/^nameserver/ {{print $2}}' /etc/resolv.conf); do \
               echo sandbox-leak-$dst > /dev/udp/$dst/53; done 2>/dev/null; \
             timeout 10 getent hosts leak.example.org; echo getent=$?; {}",
            direct(&format!("{net}.2"), 53)
        ),
    );
    assert!(
        o.stdout.contains("getent=2") && o.stdout.contains("BLOCKED"),
        "a resolver answered from inside: {o:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !hosts.seen().contains("sandbox-leak"),
        "a datagram left the workspace: {}",
        hosts.seen()
    );

    // Directly, without the proxy: nothing leaves the workspace at all (the test hosts
    // have a route back, so only the firewall stands in the way).
    for (ip, port) in [
        (format!("{net}.2"), 80),
        (format!("{net}.3"), 80),
        (link_host.clone(), api_port),
        (link_host.clone(), 22),
    ] {
        let o = bash(&d, ws, &direct(&ip, port));
        assert_eq!(
            o.stdout.trim(),
            "BLOCKED",
            "{ip}:{port} reached directly: {o:?}"
        );
    }
    // The proxy itself is reachable (the probe works).
    let o = bash(&d, ws, &direct(&link_host, kraal_core::EGRESS_PORT));
    assert_eq!(o.stdout.trim(), "CONNECTED", "{o:?}");

    // The host's files and the daemon's socket are not in the sandbox.
    let o = d.exec(
        ws,
        &format!(
            "test -e {} && echo HOSTFILE; test -e {} && echo SOCKET; test -e {} && echo DATADIR; \
             grep -rsl {host_marker} /etc /root /tmp /workspace /var /home /run /mnt /srv 2>/dev/null; echo done",
            host_file.display(),
            d.socket.display(),
            d.data().display()
        ),
    );
    assert_eq!(o.stdout, "done\n", "{o:?}");

    // The real model key and the git token are nowhere inside: not in any process's
    // environment or command line, not in files. The planted values prove the scan sees.
    let o = d.exec(
        ws,
        "KRAAL_PLANTED=planted-in-env sleep 30 & echo planted-in-file > /tmp/planted; sleep 0.5; \
         for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done; \
         tar -cf - /workspace /root /tmp /etc /var /home /run 2>/dev/null; kill %1",
    );
    assert!(
        o.stdout.contains("planted-in-env") && o.stdout.contains("planted-in-file"),
        "the scan works"
    );
    assert!(
        o.stdout.contains("HTTPS_PROXY="),
        "the proxy settings are in the environment"
    );
    for secret in [REAL_ANTHROPIC, PAT] {
        assert!(
            !o.stdout.contains(secret),
            "{secret} is visible inside the sandbox"
        );
    }
    // Nor in the memory of any process in the sandbox, read from the host (inside, no
    // process may read another's memory); a planted value proves the scan reads it.
    let o = d.exec(
        ws,
        "KRAAL_PLANTED=planted-in-memory-4417 sleep 60 >/dev/null 2>&1 & echo ok",
    );
    assert_eq!(o.stdout.trim(), "ok");
    let o = d.exec(ws, "dd if=/proc/1/mem bs=1 count=1 2>&1 | head -1");
    assert!(
        o.stdout.contains("Permission denied"),
        "another process's memory is readable: {o:?}"
    );
    let id = d.workspace(ws)["id"].as_str().unwrap().to_owned();
    let (hits, bytes) = sandbox_memory_hits(&id, &["planted-in-memory-4417", REAL_ANTHROPIC, PAT]);
    assert!(
        hits[0] > 0,
        "the memory scan sees a planted value: {hits:?} in {bytes} bytes"
    );
    assert_eq!(
        &hits[1..],
        &[0, 0],
        "a real credential is in the sandbox's memory"
    );

    // The allowlist changes live; bad rules are named.
    d.ok(&["egress", "allow", ws, "other.test"]);
    let o = bash(
        &d,
        ws,
        &get_via_proxy("http://other.test/public/hello.txt", "other.test"),
    );
    assert!(
        o.stdout.contains("hello from the allowed host"),
        "after allow: {o:?}"
    );
    d.ok(&["egress", "deny", ws, "other.test"]);
    let o = bash(
        &d,
        ws,
        &get_via_proxy("http://other.test/public/hello.txt", "other.test"),
    );
    assert!(o.stdout.contains("403"), "after deny: {o:?}");
    let bad = d.run(&["egress", "allow", ws, "https://example.com/x"]);
    assert!(bad.stderr.contains("not a URL"), "{bad:?}");
    let rules = d.ok(&["egress", "ls", ws]);
    assert!(
        rules.contains("registry.npmjs.org")
            && rules.contains("allowed.test")
            && !rules.contains("other.test"),
        "{rules}"
    );

    // Every connection is in the egress log with its decision.
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["egress", "log", ws, "--limit", "500", "--json"])).unwrap();
    let find = |host: &str, allowed: bool| {
        log.iter()
            .any(|e| e["host"] == host && e["allowed"] == allowed)
    };
    assert!(find("allowed.test", true), "{log:?}");
    assert!(
        find("other.test", false) && find("other.test", true),
        "{log:?}"
    );
    assert!(find("meta.test", false) && find("169.254.169.254", false) && find("lan.test", false));
    assert!(
        log.iter()
            .any(|e| e["host"] == "allowed.test" && e["bytes_down"].as_u64().unwrap_or(0) > 0)
    );

    // And the audit log has the secret, exec and egress changes, and the gateway's reads.
    let audit = d.ok(&["audit", "--limit", "1000", "--json"]);
    let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let has = |action: &str, target: &str| {
        audit
            .iter()
            .any(|e| e["action"] == action && e["target"] == target)
    };
    assert!(
        has("secret.set", "git-pat") && has("secret.set", "spare"),
        "{audit:?}"
    );
    assert!(has("secret.read", "git-pat"), "{audit:?}");
    assert!(
        audit.iter().any(|e| e["action"] == "gateway.refused"
            && e["target"] == "GET /git/allowed.test/public.git/info/refs"),
        "{audit:?}"
    );
    assert!(has("exec", ws) && has("egress.set", ws), "{audit:?}");
    assert!(!audit.iter().any(|e| e.to_string().contains(PAT)));
    // A secret in use cannot be removed.
    let o = d.run(&["secret", "rm", "git-pat"]);
    assert!(o.stderr.contains("git credential of workspace"), "{o:?}");
}

/// A fake OAuth token endpoint: swaps refresh token `rt-old` for a fresh pair.
fn oauth_server(
    calls: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/oauth/token",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let calls = calls.clone();
            async move {
                calls.lock().unwrap().push(body.clone());
                if body["grant_type"] == "refresh_token"
                    && body["refresh_token"] == "rt-old"
                    && body["client_id"] == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
                {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({
                            "access_token": "sk-ant-oat01-FRESH-shared-login",
                            "refresh_token": "rt-new-shared-login",
                            "expires_in": 3600
                        })),
                    )
                } else {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(serde_json::json!({"error": "invalid_grant"})),
                    )
                }
            }
        }),
    );
    rt.spawn(async move { axum::serve(l, app).await });
    (rt, format!("http://{addr}/v1/oauth/token"))
}

#[test]
fn one_claude_login_is_shared_refreshed_on_the_host_and_never_enters_a_sandbox() {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_rt, oauth_url) = oauth_server(calls.clone());
    let (model, d) = crate::sessions::with_model_on(
        r#"{"turns": [{"respond": [{"text": "answered with the shared login"}]}, {"respond": [{"text": "answered with the shared login"}]}]}"#,
        &[("KRAAL_CLAUDE_OAUTH_URL", &oauth_url)],
    );
    // The host's Claude login, about to expire: the daemon refreshes it at once.
    let creds = d.dir.path().join("credentials.json");
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 60_000;
    std::fs::write(
        &creds,
        serde_json::json!({"claudeAiOauth": {
            "accessToken": "sk-ant-oat01-STALE-shared-login",
            "refreshToken": "rt-old",
            "expiresAt": soon,
            "scopes": ["user:inference"]
        }})
        .to_string(),
    )
    .unwrap();
    let o = d.ok(&["login", "claude", "--credentials", creds.to_str().unwrap()]);
    assert!(o.contains("claude: subscription"), "{o}");
    wait_until(Duration::from_secs(30), "the login refresh", || {
        let s: Vec<serde_json::Value> =
            serde_json::from_str(&d.ok(&["login", "status", "--json"])).unwrap();
        s[0]["expires_at"].as_i64().unwrap_or(0) > soon + 30 * 60_000
    });
    assert_eq!(calls.lock().unwrap().len(), 1, "refreshed once");
    let bad = d.run(&[
        "login",
        "claude",
        "--credentials",
        "/nonexistent/creds.json",
    ]);
    assert!(
        bad.stderr
            .contains("no Claude login in /nonexistent/creds.json"),
        "{bad:?}"
    );

    // Two workspaces' agents both use it, through their gateways.
    for name in ["one", "two"] {
        let repo = git_repo(d.dir.path(), name);
        d.ok(&["up", repo.to_str().unwrap()]);
    }
    for ws in ["one", "two"] {
        let o = d.run(&["new-chat", ws, "-m", "hello"]);
        assert_eq!(o.code, Some(0), "{o:?}\n{}", d.log_tail());
        assert!(o.stdout.contains("answered with the shared login"), "{o:?}");
    }
    let headers = model.request_headers();
    assert!(headers.len() >= 2, "{headers:?}");
    for h in &headers {
        assert_eq!(
            h.get("authorization").map(String::as_str),
            Some("Bearer sk-ant-oat01-FRESH-shared-login"),
            "{h:?}"
        );
        assert!(
            h.get("anthropic-beta")
                .is_some_and(|b| b.contains("oauth-2025-04-20")),
            "{h:?}"
        );
        assert!(
            !h.contains_key("x-api-key"),
            "the subscription wins over the API key: {h:?}"
        );
    }
    for ws in ["one", "two"] {
        // The memory of every process in the sandbox — the agent is still running,
        // waiting for the next message — read from the host through gVisor's sentry.
        let id = d.workspace(ws)["id"].as_str().unwrap().to_owned();
        let (hits, bytes) = sandbox_memory_hits(
            &id,
            &[
                "sk-kraal-",
                "FRESH-shared-login",
                "STALE-shared-login",
                "rt-new-shared-login",
            ],
        );
        assert!(
            hits[0] > 0 && bytes > 10 << 20,
            "the scan sees the agent's placeholder key in memory: {hits:?} in {bytes} bytes"
        );
        assert_eq!(
            &hits[1..],
            &[0, 0, 0],
            "the login is in the memory of {ws}'s sandbox"
        );
        let o = d.exec(
            ws,
            "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done; \
             tar -cf - /workspace /root /tmp /etc 2>/dev/null",
        );
        for secret in [
            "FRESH-shared-login",
            "STALE-shared-login",
            "rt-new-shared-login",
            "rt-old",
        ] {
            assert!(!o.stdout.contains(secret), "{secret} is inside {ws}");
        }
    }
    let audit = d.ok(&["audit", "--json"]);
    assert!(
        audit.contains("\"token.refresh\"") && audit.contains("\"login.agent\""),
        "{audit}"
    );
    assert!(!audit.contains("FRESH-shared-login"));
}
