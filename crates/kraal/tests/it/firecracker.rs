//! The Firecracker backend end to end — the same workspace suite and Claude Code session
//! as gVisor and QEMU. Firecracker needs hardware KVM and its binary, neither of which
//! every host has: these tests run when `KRAAL_FIRECRACKER_BIN` names a Firecracker (1.8 or
//! later) and `/dev/kvm` exists, and say that they were skipped otherwise.

use crate::harness::*;

fn firecracker() -> Option<String> {
    let bin = std::env::var("KRAAL_FIRECRACKER_BIN").ok()?;
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: KRAAL_FIRECRACKER_BIN is set but /dev/kvm does not exist");
        return None;
    }
    Some(bin)
}

#[test]
fn the_workspace_suite_runs_in_a_firecracker_microvm() {
    let Some(bin) = firecracker() else {
        eprintln!("skipped: set KRAAL_FIRECRACKER_BIN on a host with KVM to run it");
        return;
    };
    let d = Daemon::start_with_env(&[
        ("KRAAL_BACKEND", "firecracker"),
        ("KRAAL_FIRECRACKER_BIN", &bin),
    ]);
    crate::lifecycle::exec_write_down_up_keeps_files(&d);
    d.ok(&["up", git_repo(d.dir.path(), "fc").to_str().unwrap()]);
    assert_eq!(d.workspace("fc")["backend"], "firecracker");
    let o = d.exec("fc", "uname -r; findmnt -no FSTYPE /");
    assert!(
        o.stdout.contains("cloud-amd64") && o.stdout.contains("overlay"),
        "{o:?}"
    );
}

#[test]
fn claude_edits_files_in_a_firecracker_microvm() {
    let Some(bin) = firecracker() else {
        eprintln!("skipped: set KRAAL_FIRECRACKER_BIN on a host with KVM to run it");
        return;
    };
    crate::sessions::claude_edits_files_suite(&[
        ("KRAAL_BACKEND", "firecracker"),
        ("KRAAL_FIRECRACKER_BIN", &bin),
    ]);
}
