//! The QEMU backend against real QEMU (KVM if asked for with `KRAAL_TEST_QEMU_ACCEL=kvm`,
//! TCG otherwise): pause and resume, and a snapshot of a running VM — memory, devices and
//! disks — restored after the workspace changed: files and running processes come back as
//! they were. Needs root, QEMU and the musl guest build (`.ci/run` provides all).

use std::time::Duration;

use kraal_core::{Resources, Source, WorkspaceId, WorkspaceName};
use kraal_image::ImageStore;
use kraal_protocol::ExecRequest;
use kraal_sandbox::{Backend, ExecEvent, GuestClient, SandboxSpec, SandboxStatus};
use kraal_vm::{Accel, QemuBackend, VmConfig};

fn backend(tmp: &std::path::Path) -> QemuBackend {
    let images = std::env::var("KRAAL_TEST_IMAGE_DIR")
        .unwrap_or_else(|_| "/var/tmp/kraal-test-images".into());
    let accel = match std::env::var("KRAAL_TEST_QEMU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    QemuBackend::new(VmConfig {
        state_dir: tmp.join("vms"),
        qemu: "qemu-system-x86_64".into(),
        accel,
        pool: kraal_net::DEFAULT_POOL,
        images: ImageStore::new(images).with_guest(kraal_sandbox::locate_guest_bin()),
        default_image: "base".into(),
        agents_dir: None,
        host_ports: vec![],
        volume_mib: 1024,
        root_mib: 1024,
        virtiofsd: kraal_vm::locate_virtiofsd(),
    })
}

async fn connect(ep: &kraal_sandbox::GuestEndpoint, token: &str) -> GuestClient {
    GuestClient::connect_retrying(ep.addr, token, Duration::from_secs(60))
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
async fn pause_resume_and_a_snapshot_restores_files_and_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "hello\n").unwrap();
    let b = backend(tmp.path());
    let spec = SandboxSpec {
        id: WorkspaceId::random(),
        name: WorkspaceName::parse("snap-test").unwrap(),
        image: None,
        source: Source::Local { path: src },
        resources: Resources {
            cpus: 1.0,
            memory_mib: 512,
            pids: 512,
        },
        guest_token: "t0ken".into(),
        persistent: false,
        mounts: vec![],
        git_hosts: vec![],
    };
    let r = async {
        b.create(&spec).await.unwrap();
        let ep = b.start(&spec).await.unwrap();
        let c = connect(&ep, &spec.guest_token).await;
        assert_eq!(run(&c, "cat /workspace/README").await.0, "hello\n");

        // Paused: the guest stops answering; resumed: it goes on.
        b.pause(&spec.id).await.unwrap();
        assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Paused);
        let probe = tokio::time::timeout(Duration::from_secs(2), run(&c, "true")).await;
        assert!(probe.is_err(), "a paused VM runs nothing");
        b.resume(&spec.id).await.unwrap();
        assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Running);

        // State at the snapshot: a file and a running process.
        let (pid, code) = run(
            &c,
            "echo before > /workspace/state; sync; sleep 1000 >/dev/null 2>&1 & echo $!",
        )
        .await;
        assert_eq!(code, Some(0));
        let pid = pid.trim().to_owned();
        let snap = b.take_snapshot(&spec.id, "s1").await.unwrap();
        assert!(snap.join("memory").is_file());
        // Still running after the snapshot; then the workspace changes.
        let (out, _) = run(&c, &format!("echo after > /workspace/state; sync; kill {pid}; sleep 0.3; kill -0 {pid} 2>/dev/null && echo alive || echo gone; cat /workspace/state")).await;
        assert_eq!(out, "gone\nafter\n");
        drop(c);

        let ep = b.restore_snapshot(&spec, "s1").await.unwrap();
        let c = connect(&ep, &spec.guest_token).await;
        let (out, _) = run(
            &c,
            &format!("cat /workspace/state; kill -0 {pid} && echo alive"),
        )
        .await;
        assert_eq!(out, "before\nalive\n", "the file and the process are back");

        let e = b
            .restore_snapshot(&spec, "nope")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no snapshot named \"nope\""), "{e}");
        let e = b
            .take_snapshot(&spec.id, "../x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid snapshot name"), "{e}");
    };
    // Clean up the VM and its TAP device even when an assertion fails.
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(r)).await;
    b.destroy(&spec.id).await.unwrap();
    assert_eq!(b.status(&spec.id).await.unwrap(), SandboxStatus::Absent);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
