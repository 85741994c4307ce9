//! Section `egress`: what the egress proxy costs. A web server in a network
//! namespace (a stand-in for the internet) serves a small file and a 64 MiB one; the same
//! client (a Perl script, no process started per fetch) fetches them from inside a workspace through
//! its egress proxy (CONNECT tunnel, and plain HTTP) and, as the raw baseline in the same
//! run, from the host directly. Timings are taken inside the client, so `kraal exec`'s own
//! overhead is not counted.

#![allow(clippy::disallowed_methods)] // Automation: spawns ip, python3 and kraal directly.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::bench::{Setup, sh, stats};
use crate::report::{Row, Section, Unit};

const NET: &str = "10.78.9";
/// Runs of each client; figures are medians of the runs.
const RUNS: usize = 3;

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}
const NETNS: &str = "kraal-bench-egress";
const VETH: &str = "kbenchegr";

struct Host {
    server: std::process::Child,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!("ip link del {VETH} 2>/dev/null; ip netns del {NETNS} 2>/dev/null"),
            ])
            .output();
    }
}

fn start_host(dir: &std::path::Path) -> anyhow::Result<Host> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("small.txt"), "x".repeat(1024))?;
    let big = std::fs::File::create(www.join("big.bin"))?;
    big.set_len(64 * 1024 * 1024)?;
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("ip link del {VETH} 2>/dev/null; ip netns del {NETNS} 2>/dev/null"),
        ])
        .output();
    sh(Command::new("sh").args([
        "-c",
        &format!(
            "ip netns add {NETNS} && ip link add {VETH} type veth peer name eth0 netns {NETNS} && \
             ip addr add {NET}.1/24 dev {VETH} && ip link set {VETH} up && \
             ip -n {NETNS} addr add {NET}.2/24 dev eth0 && ip -n {NETNS} link set eth0 up && \
             ip -n {NETNS} link set lo up && ip -n {NETNS} route add default via {NET}.1"
        ),
    ]))?;
    let server = Command::new("ip")
        .args(["netns", "exec", NETNS, "python3", "-m", "http.server", "80"])
        .args(["--bind", "0.0.0.0", "--directory"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let host = Host { server };
    let addr: std::net::SocketAddr = format!("{NET}.2:80").parse()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(host);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the bench web server did not start")
}

/// The client: a Perl script (Perl is in every Debian image) that fetches `path` `n` times
/// and prints one duration (µs) and byte count per fetch. Nothing is spawned inside the
/// timed part: a process start costs about 40 ms in gVisor, which is what the first
/// version of this benchmark (two `cat`s per fetch) measured instead of the proxy.
const CLIENT: &str = r#"
use strict; use Socket; use Time::HiRes qw(time);
my ($via, $proxy, $host, $path, $n) = @ARGV;
$proxy = ($ENV{HTTP_PROXY} // '') =~ s{^http://}{}r =~ s{/$}{}r if $proxy eq '';
my ($h, $p) = $via eq 'direct' ? ($host, 80) : split(/:/, $proxy);
my $addr = pack_sockaddr_in($p, inet_aton($h) // die "no address $h\n");
my $req = $via eq 'proxy-connect'
  ? "CONNECT bench.test:80 HTTP/1.1\r\nHost: bench.test:80\r\n\r\nGET $path HTTP/1.0\r\nHost: bench.test\r\n\r\n"
  : $via eq 'proxy-http'
  ? "GET http://bench.test$path HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"
  : "GET $path HTTP/1.0\r\nHost: bench.test\r\n\r\n";
for (1 .. $n) {
  my $t0 = time;
  socket(my $s, PF_INET, SOCK_STREAM, 6) or die "socket: $!\n";
  connect($s, $addr) or die "connect $h:$p: $!\n";
  syswrite($s, $req) == length($req) or die "write: $!\n";
  my $bytes = 0;
  while (my $r = sysread($s, my $buf, 1 << 20)) { $bytes += $r }
  close $s;
  printf "%d %d\n", (time - $t0) * 1e6, $bytes;
}
"#;

/// The client's arguments: `via` is `proxy-connect` or `proxy-http` (through the proxy at
/// `proxy`, `HOST:PORT`, or `$HTTP_PROXY` when empty), or `direct`.
fn client(via: &str, proxy: &str, path: &str, n: usize) -> Vec<String> {
    let host = format!("{NET}.2");
    [
        "perl",
        "-e",
        CLIENT,
        via,
        proxy,
        &host,
        path,
        &n.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs a client and returns (durations in ms, bytes of the last fetch).
fn measure(mut cmd: Command) -> anyhow::Result<(Vec<f64>, u64)> {
    let out = sh(&mut cmd)?;
    let mut v = Vec::new();
    let mut bytes = 0;
    for l in out.lines() {
        let mut it = l.split_whitespace();
        let us: f64 = it.next().context("no duration")?.parse()?;
        bytes = it.next().context("no byte count")?.parse()?;
        v.push(us / 1000.0);
    }
    if v.is_empty() {
        bail!("the client printed nothing");
    }
    Ok((v, bytes))
}

/// What the daemon of this section needs: the test host's name and network allowed.
pub(crate) fn daemon_env() -> Vec<(String, String)> {
    vec![
        ("KRAAL_EGRESS_RESOLVE".into(), format!("bench.test={NET}.2")),
        ("KRAAL_EGRESS_ALLOW_CIDRS".into(), format!("{NET}.0/24")),
    ]
}

pub(crate) fn section(s: &Setup, n: usize) -> anyhow::Result<Section> {
    let _host = start_host(s.tmp.path())?;
    sh(s.d.kraal(&s.kraal).args([
        "up",
        s.repo.to_str().unwrap(),
        "--name",
        "egress",
        "--allow",
        "bench.test",
    ]))?;
    let in_ws = |argv: Vec<String>| {
        let mut c = s.d.kraal(&s.kraal);
        c.args(["exec", "egress", "--"]).args(argv);
        c
    };
    let on_host = |argv: Vec<String>| {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let ws: serde_json::Value =
        serde_json::from_str(&sh(s.d.kraal(&s.kraal).args(["ls", "--json"]))?)?;
    let guest: std::net::Ipv4Addr = ws[0]["address"]
        .as_str()
        .and_then(|a| a.split(':').next())
        .context("no workspace address")?
        .parse()?;
    // The proxy listens on the host side of the workspace's link; the host itself may
    // use it too, which isolates the proxy's own cost from the sandbox's.
    let proxy = format!("{}:7073", std::net::Ipv4Addr::from(u32::from(guest) - 1));
    let big_n = (n / 10).max(3);
    let mut results = serde_json::Map::new();
    let mut rows = Vec::new();
    for (name, path, count) in [
        ("small (1 KiB)", "/small.txt", n),
        ("large (64 MiB)", "/big.bin", big_n),
    ] {
        // Three runs, the four clients interleaved; each figure is the median of the
        // runs' medians.
        let mut per_run: [Vec<f64>; 4] = Default::default();
        let mut all: [Vec<f64>; 4] = Default::default();
        let mut db = 0;
        for _ in 0..RUNS {
            let (direct, d) = measure(on_host(client("direct", "", path, count)))?;
            let (host_tunnel, hb) = measure(on_host(client("proxy-connect", &proxy, path, count)))?;
            let (tunnel, tb) = measure(in_ws(client("proxy-connect", "", path, count)))?;
            let (plain, pb) = measure(in_ws(client("proxy-http", "", path, count)))?;
            if tb < d || pb < d || hb < d {
                bail!("a proxied fetch came back short ({tb}, {pb}, {hb} vs {d} bytes)");
            }
            db = d;
            for (k, v) in [direct, host_tunnel, tunnel, plain].into_iter().enumerate() {
                per_run[k].push(p50(&v));
                all[k].extend(v);
            }
        }
        let [direct, host_tunnel, tunnel, plain] = per_run;
        let small = path == "/small.txt";
        let unit = if small { Unit::Ms } else { Unit::MiBPerS };
        // Small files: the fetch's time; large ones: its throughput.
        let val = |v: &Vec<f64>| {
            if small {
                p50(v)
            } else {
                db as f64 / 1048576.0 / (p50(v) / 1000.0)
            }
        };
        let what = if small { "fetch" } else { "download" };
        rows.push(Row::vs(
            format!("{name} {what}, workspace via proxy (CONNECT)"),
            unit,
            val(&tunnel),
            "host direct",
            val(&direct),
        ));
        rows.push(Row::vs(
            format!("{name} {what}, workspace via proxy (plain HTTP)"),
            unit,
            val(&plain),
            "host direct",
            val(&direct),
        ));
        rows.push(Row::vs(
            format!("{name} {what}, workspace via proxy (CONNECT)"),
            unit,
            val(&tunnel),
            "host via proxy (CONNECT)",
            val(&host_tunnel),
        ));
        rows.push(Row::vs(
            format!("{name} {what}, host via proxy (CONNECT)"),
            unit,
            val(&host_tunnel),
            "host direct",
            val(&direct),
        ));
        results.insert(
            name.to_owned(),
            json!({
                "bytes": db,
                "runs": RUNS,
                "p50_ms_per_run": {
                    "host_direct": direct, "host_proxy_connect": host_tunnel,
                    "workspace_proxy_connect": tunnel, "workspace_proxy_http": plain,
                },
                "host_direct": stats(all[0].clone()),
                "host_proxy_connect": stats(all[1].clone()),
                "workspace_proxy_connect": stats(all[2].clone()),
                "workspace_proxy_http": stats(all[3].clone()),
            }),
        );
    }
    sh(s.d.kraal(&s.kraal).args(["rm", "--yes", "egress"]))?;
    Ok(Section {
        name: "egress",
        title: format!(
            "Egress proxy, median of {RUNS} runs of the p50 of {n} small / {big_n} large fetches"
        ),
        rows,
        details: serde_json::Value::Object(results),
    })
}
