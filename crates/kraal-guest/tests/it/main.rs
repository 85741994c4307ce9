//! Drives the real `kraal-guest` binary (as a host process) with the real guest client.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kraal_protocol::{ErrorCode, ExecRequest, TtySize};
use kraal_sandbox::{ExecEvent, ExecHandle, GuestClient, GuestClientError};

mod sessions;

struct Guest {
    child: Child,
    addr: SocketAddr,
    /// Private parent of the file root, so escape checks never look at shared directories.
    parent: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN: &str = "test-token";

/// A private parent directory, the file root inside it, and a free loopback address.
fn scratch() -> (tempfile::TempDir, std::path::PathBuf, SocketAddr) {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("ws");
    std::fs::create_dir(&root).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (parent, root, format!("127.0.0.1:{port}").parse().unwrap())
}

async fn start() -> Guest {
    let (parent, root, addr) = scratch();
    let child = spawn_guest(addr, &root);
    Guest {
        child,
        addr,
        parent,
        root,
    }
}

fn spawn_guest(addr: SocketAddr, root: &std::path::Path) -> Child {
    #[allow(clippy::disallowed_methods)]
    let child = Command::new(env!("CARGO_BIN_EXE_kraal-guest"))
        .args(["--listen", &addr.to_string(), "--token", TOKEN, "--root"])
        .arg(root)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "guest did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Guest {
    /// Starts the guest again on the same address and root (after the test killed it).
    async fn respawn(&mut self) {
        self.child = spawn_guest(self.addr, &self.root);
    }
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        tty: None,
        as_root: false,
    }
}

async fn collect(h: &mut ExecHandle) -> (String, String, Option<i32>, u64) {
    let (mut out, mut err, mut last) = (String::new(), String::new(), 0);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), h.next())
            .await
            .expect("exec hung")
            .unwrap()
        {
            ExecEvent::Stdout { seq, data } => {
                out.push_str(&String::from_utf8_lossy(&data));
                last = seq;
            }
            ExecEvent::Stderr { seq, data } => {
                err.push_str(&String::from_utf8_lossy(&data));
                last = seq;
            }
            ExecEvent::Truncated { .. } => {}
            ExecEvent::Exit { code, .. } => return (out, err, code, last),
        }
    }
}

#[tokio::test]
async fn exec_streams_output_and_exit_code() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut h = c
        .exec(exec(&["sh", "-c", "echo out; echo err >&2; pwd; exit 7"]))
        .await
        .unwrap();
    let (out, err, code, _) = collect(&mut h).await;
    assert_eq!(
        out,
        format!("out\n{}\n", g.root.canonicalize().unwrap().display())
    );
    assert_eq!(err, "err\n");
    assert_eq!(code, Some(7));
}

#[tokio::test]
async fn stdin_is_forwarded_and_eof_ends_it() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut h = c.exec(exec(&["sh", "-c", "tr a-z A-Z"])).await.unwrap();
    let s = h.sender();
    s.stdin(Bytes::from_static(b"hello\n")).await.unwrap();
    s.eof().await.unwrap();
    let (out, _, code, _) = collect(&mut h).await;
    assert_eq!((out.as_str(), code), ("HELLO\n", Some(0)));
}

#[tokio::test]
async fn pty_reports_a_terminal_and_resizes() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut req = exec(&[
        "sh",
        "-c",
        "test -t 0 && echo tty; stty size; read x; stty size",
    ]);
    req.tty = Some(TtySize { rows: 24, cols: 80 });
    let mut h = c.exec(req).await.unwrap();
    let s = h.sender();
    // Wait for the first size line before resizing.
    let mut seen = String::new();
    while !seen.contains("24 80") {
        if let ExecEvent::Stdout { data, .. } = h.next().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    s.resize(TtySize {
        rows: 50,
        cols: 132,
    })
    .await
    .unwrap();
    s.stdin(Bytes::from_static(b"go\r")).await.unwrap();
    let (out, _, code, _) = collect(&mut h).await;
    assert!(seen.contains("tty"), "{seen:?}");
    assert!(out.contains("50 132"), "{out:?}");
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn processes_survive_a_lost_link_and_can_be_reattached() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut h = c
        .exec(exec(&[
            "sh",
            "-c",
            "echo one; sleep 1; echo two; sleep 1; echo three",
        ]))
        .await
        .unwrap();
    let proc = h.proc;
    let first = match h.next().await.unwrap() {
        ExecEvent::Stdout { seq, data } => {
            assert_eq!(&data[..], b"one\n");
            seq
        }
        e => panic!("{e:?}"),
    };
    drop(h);
    drop(c); // The "daemon" goes away mid-run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c2 = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let procs = c2.processes().await.unwrap();
    assert!(
        procs.iter().any(|p| p.proc == proc && p.running),
        "{procs:?}"
    );
    let mut h2 = c2.attach(proc, first).await.unwrap();
    let (out, _, code, _) = collect(&mut h2).await;
    assert_eq!(out, "two\nthree\n", "no duplicate of 'one', no gap");
    assert_eq!(code, Some(0));
    // Attaching again from 0 replays everything.
    let mut h3 = c2.attach(proc, 0).await.unwrap();
    assert_eq!(collect(&mut h3).await.0, "one\ntwo\nthree\n");
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut h = c
        .exec(exec(&["sh", "-c", "sleep 100; echo never"]))
        .await
        .unwrap();
    h.sender().signal(15).await.unwrap();
    loop {
        if let ExecEvent::Exit { code, signal } = h.next().await.unwrap() {
            assert!(
                signal == Some(15) || code == Some(143),
                "{code:?} {signal:?}"
            );
            break;
        }
    }
}

#[tokio::test]
async fn unknown_command_is_a_clear_error() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let err = c.exec(exec(&["no-such-cmd-kraal"])).await.err().unwrap();
    match err {
        GuestClientError::Guest(e) => {
            assert_eq!(e.code, ErrorCode::SpawnFailed);
            assert!(e.message.contains("command not found"), "{}", e.message);
        }
        e => panic!("{e}"),
    }
    // The connection is still usable afterwards.
    assert!(c.health().await.is_ok());
}

/// A failed exec is waited for by `Command::spawn` itself; the reaper (woken by the same
/// SIGCHLD) must not collect that child first. Many failures at once, while other children
/// exit, made the race show before the reaper took the table lock first.
#[tokio::test]
async fn many_failed_spawns_race_the_reaper_and_every_one_is_a_clear_error() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let rounds = async {
        for _round in 0..150 {
            let mut tasks = Vec::new();
            for i in 0..40 {
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    if i % 2 == 0 {
                        c.exec(exec(&["no-such-cmd-kraal"]))
                            .await
                            .err()
                            .map(|e| e.to_string())
                    } else {
                        c.exec(exec(&["true"])).await.err().map(|e| e.to_string())
                    }
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let r = t.await.unwrap();
                if i % 2 == 0 {
                    let msg = r.expect("an unknown command is refused");
                    assert!(msg.contains("command not found"), "{msg}");
                } else {
                    assert_eq!(r, None, "true starts");
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), rounds)
        .await
        .expect("every exec answers (a lost exit status hung the guest)");
    assert!(c.health().await.is_ok());
}

#[tokio::test]
async fn files_round_trip_and_stay_confined() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        c.write_file("dir/big.bin", &big, None, true).await.unwrap(),
        big.len() as u64
    );
    assert_eq!(c.read_file("dir/big.bin", 10_000_000).await.unwrap(), big);
    let st = c.stat("dir/big.bin").await.unwrap();
    assert_eq!(st.size, big.len() as u64);
    let ls = c.list_dir("dir").await.unwrap();
    assert_eq!(
        ls.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["big.bin"]
    );
    c.mkdir("a/b/c", true).await.unwrap();
    c.remove("a", true).await.unwrap();
    assert_eq!(
        c.stat("a").await.unwrap_err().to_string(),
        "a: No such file or directory (os error 2)"
    );
    for bad in ["../x", "/etc/passwd", "dir/../../x"] {
        let e = c.read_file(bad, 100).await.unwrap_err();
        assert!(
            matches!(&e, GuestClientError::Guest(g) if g.code == ErrorCode::PathEscape),
            "{bad}: {e}"
        );
        let e = c.write_file(bad, b"x", None, true).await.unwrap_err();
        assert!(
            matches!(&e, GuestClientError::Guest(g) if g.code == ErrorCode::PathEscape),
            "{bad}: {e}"
        );
    }
    assert!(
        !g.parent.path().join("x").exists(),
        "a write escaped the root"
    );
    let e = c.read_file("dir/big.bin", 10).await.unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
}

#[tokio::test]
async fn wrong_token_is_denied() {
    let g = start().await;
    let err = GuestClient::connect(g.addr, "wrong").await.unwrap_err();
    assert!(matches!(err, GuestClientError::Denied { .. }), "{err}");
}

#[tokio::test]
async fn many_concurrent_streams_on_one_link() {
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = c
                .exec(exec(&["sh", "-c", &format!("seq 1 2000; echo done-{i}")]))
                .await
                .unwrap();
            let (out, _, code, _) = collect(&mut h).await;
            assert_eq!(code, Some(0));
            assert!(out.ends_with(&format!("2000\ndone-{i}\n")));
            assert_eq!(out.lines().count(), 2001);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn the_image_environment_and_services_come_from_the_config_file() {
    let (parent, root, addr) = scratch();
    let marker = parent.path().join("service-ran");
    let cfg = serde_json::json!({
        "listen": addr.to_string(),
        "token": TOKEN,
        "files_root": root,
        "env": [["IMAGE_VAR", "from-image"], ["LANG", "en_GB.UTF-8"]],
        "start": [["sh", "-c", format!("echo $IMAGE_VAR > {}; exec sleep 300", marker.display())]],
    });
    let cfg_path = parent.path().join("guest.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    #[allow(clippy::disallowed_methods)]
    let child = Command::new(env!("CARGO_BIN_EXE_kraal-guest"))
        .arg("--config")
        .arg(&cfg_path)
        .spawn()
        .unwrap();
    let g = Guest {
        child,
        addr,
        parent,
        root,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() || !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "guest or its service did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "from-image\n");
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    let ps = c.processes().await.unwrap();
    assert!(
        ps.iter()
            .any(|p| p.argv[0] == "sh" && p.argv[2].contains("sleep 300")),
        "the service is listed: {ps:?}"
    );
    // Image env applies to every command; a request's own env wins.
    let mut req = exec(&["sh", "-c", "echo $IMAGE_VAR $LANG"]);
    let mut h = c.exec(req.clone()).await.unwrap();
    assert_eq!(collect(&mut h).await.0, "from-image en_GB.UTF-8\n");
    req.env = vec![("LANG".into(), "C".into())];
    let mut h = c.exec(req).await.unwrap();
    assert_eq!(collect(&mut h).await.0, "from-image C\n");
}

/// A process in the sandbox connects to a loopback port the guest listens on for the
/// host; the host relays each connection to its own service (here an upper-casing echo
/// server), both ways, with half-closes, for several connections at once.
#[tokio::test]
async fn accepted_connections_are_relayed_to_the_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = start().await;
    let c = GuestClient::connect(g.addr, TOKEN).await.unwrap();
    // The host-side service.
    let svc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = svc.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = svc.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(&all.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    // In the sandbox: a loopback address of its own (any 127/8 address is loopback).
    let inside = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.61:{}", l.local_addr().unwrap().port())
    };
    // The host keeps an Accept outstanding and relays what comes.
    let host = {
        let c = c.clone();
        let inside = inside.clone();
        tokio::spawn(async move {
            loop {
                let Ok(a) = c.accept(&inside).await else {
                    return;
                };
                assert!(a.peer.starts_with("127.0.0.1:"), "{}", a.peer);
                let sock = tokio::net::TcpStream::connect(svc_addr).await.unwrap();
                tokio::spawn(a.relay(sock));
            }
        })
    };
    // The listener exists once the first Accept reached the guest.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&inside).is_err() {
        assert!(
            Instant::now() < deadline,
            "the guest never listened on {inside}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut clients = Vec::new();
    for i in 0..8 {
        let inside = inside.clone();
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&inside).await.unwrap();
            let msg = format!("hello from connection {i} ").repeat(5000);
            s.write_all(msg.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg.to_uppercase());
        }));
    }
    for t in clients {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a relayed connection hung")
            .unwrap();
    }
    host.abort();
    // Only loopback addresses, and well-formed ones.
    let e = c.accept("0.0.0.0:7072").await.err().unwrap();
    assert!(e.to_string().contains("only loopback addresses"), "{e}");
    let e = c.accept("gateway").await.err().unwrap();
    assert!(e.to_string().contains("is not an address"), "{e}");
}
