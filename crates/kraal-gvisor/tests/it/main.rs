//! The gVisor backend against real runsc: create, exec through the guest, stop, restart.
//! Needs root, runsc, debootstrap and the musl guest build (`.ci/run` provides all).

use std::time::{Duration, Instant};

use kraal_core::{Resources, Source, WorkspaceId, WorkspaceName};
use kraal_gvisor::{GvisorBackend, GvisorConfig, NetworkMode};
use kraal_image::ImageStore;
use kraal_protocol::ExecRequest;
use kraal_sandbox::{Backend, ExecEvent, GuestClient, SandboxSpec, SandboxStatus};

fn backend(tmp: &std::path::Path) -> GvisorBackend {
    let images = std::env::var("KRAAL_TEST_IMAGE_DIR")
        .unwrap_or_else(|_| "/var/tmp/kraal-test-images".into());
    GvisorBackend::new(GvisorConfig {
        state_dir: tmp.join("workspaces"),
        runsc_root: tmp.join("runsc"),
        runsc: "runsc".into(),
        network: NetworkMode::Host,
        pool: kraal_net::DEFAULT_POOL,
        guest_bin: kraal_sandbox::locate_guest_bin().expect("build kraal-guest for musl first"),
        images: ImageStore::new(images).with_guest(kraal_sandbox::locate_guest_bin()),
        default_image: "base".into(),
        platform: None,
        agents_dir: Some(
            kraal_sandbox::locate_agents_dir()
                .expect("agent CLIs (scripts/setup.sh installs them)"),
        ),
        host_ports: vec![7072],
        volume_mib: 256,
    })
}

async fn connect(ep: &kraal_sandbox::GuestEndpoint, token: &str) -> GuestClient {
    GuestClient::connect_retrying(ep.addr, token, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("guest never answered: {e}"))
}

async fn run(c: &GuestClient, cmd: &str) -> (String, Option<i32>) {
    let mut h = c
        .exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), cmd.into()],
            env: vec![],
            cwd: None,
            tty: None,
            as_root: false,
        })
        .await
        .unwrap();
    let mut out = String::new();
    loop {
        match h.next().await.unwrap() {
            ExecEvent::Stdout { data, .. } | ExecEvent::Stderr { data, .. } => {
                out.push_str(&String::from_utf8_lossy(&data))
            }
            ExecEvent::Exit { code, .. } => return (out, code),
            ExecEvent::Truncated { .. } => {}
        }
    }
}

#[tokio::test]
async fn lifecycle_with_real_runsc() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "hello\n").unwrap();
    let b = backend(tmp.path());
    let spec = SandboxSpec {
        id: WorkspaceId::random(),
        name: WorkspaceName::parse("gv-test").unwrap(),
        image: None,
        source: Source::Local { path: src },
        resources: Resources {
            cpus: 1.0,
            memory_mib: 512,
            pids: 256,
        },
        guest_token: "tok".into(),
        persistent: false,
        mounts: vec![],
        git_hosts: vec![],
    };
    // Whatever happens below, leave no sandbox, namespace or mount behind.
    let _cleanup = Cleanup {
        runsc_root: tmp.path().join("runsc"),
        id: spec.id.clone(),
        state: tmp.path().join("workspaces"),
    };
    b.create(&spec).await.unwrap();
    assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Stopped);
    let t0 = Instant::now();
    let ep = b.start(&spec).await.unwrap();
    let c = connect(&ep, "tok").await;
    eprintln!("start→guest ready: {:?}", t0.elapsed());
    assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Running);
    let (out, code) = run(&c, "cat /workspace/README && hostname && git --version && echo data > /workspace/new && apt-get --version >/dev/null && touch /root/layer").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("hello\ngv-test\ngit version"), "{out}");
    let (mem, _) = run(
        &c,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; cat /proc/meminfo | head -1",
    )
    .await;
    eprintln!("inside memory view: {mem}");
    // The host's agent CLIs are mounted read-only and on PATH.
    let (out, code) = run(
        &c,
        "node --version && claude --version && codex --version && touch /opt/kraal/agents/x 2>&1 || true",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("v22."), "{out}");
    assert!(
        out.contains("(Claude Code)") && out.contains("codex-cli"),
        "{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(
        ep.host,
        Some(
            std::net::Ipv4Addr::from(
                u32::from(match ep.addr.ip() {
                    std::net::IpAddr::V4(v) => v,
                    _ => unreachable!(),
                }) - 1
            )
            .into()
        )
    );
    b.stop(&spec.id).await.unwrap();
    assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Stopped);
    let ep = b.start(&spec).await.unwrap();
    let c = connect(&ep, "tok").await;
    let (out, code) = run(&c, "cat /workspace/new && ls /root/layer").await;
    assert_eq!(
        (out.as_str(), code),
        ("data\n/root/layer\n", Some(0)),
        "volume and writable layer survive stop/start"
    );
    b.destroy(&spec.id).await.unwrap();
    assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Absent);
    assert!(!kraal_net::netns_path(&spec.id).exists());
}

/// Removes the test's sandbox even when an assertion failed half-way.
struct Cleanup {
    runsc_root: std::path::PathBuf,
    id: WorkspaceId,
    state: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        #[allow(clippy::disallowed_methods)]
        let run = |args: &[&str]| {
            let _ = std::process::Command::new(args[0])
                .args(&args[1..])
                .output();
        };
        let root = format!("--root={}", self.runsc_root.display());
        run(&["runsc", &root, "delete", "-force", self.id.as_str()]);
        run(&["ip", "netns", "del", &kraal_net::netns_name(&self.id)]);
        let rootfs = self.state.join(self.id.as_str()).join("rootfs");
        run(&["umount", "-l", rootfs.to_str().unwrap_or_default()]);
    }
}
