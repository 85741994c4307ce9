//! Section `vm`: the QEMU backend. Create → first exec and the start of a stopped
//! workspace next to a bare `qemu-system-x86_64` boot of the same kernel and initramfs to
//! the guest's init (no disks, no network, no kraal), and resuming a running workspace
//! from a checkpoint (memory, processes, disks) next to a cold create, in the same run.

#![allow(clippy::disallowed_methods)] // Automation: spawns qemu and kraal directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;

use crate::bench::{Setup, mean, ms, sh, stats};
use crate::report::{Row, Section, Unit};

/// What the guest prints when a probe boot reaches init (kraal-guest's `PROBE_OK`).
const PROBE_OK: &str = "kraal-guest: probe boot reached init";

/// The newest built kernel + initramfs in the image store.
fn kernel(images: &Path) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(images.join("kernels"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("complete").is_file())
        .collect();
    dirs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    dirs.pop().context("no kernel built yet")
}

/// The `tsc_early_khz=…` parameter kraal gave its running guests, read from their QEMU
/// command lines.
fn kraal_tsc_param() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a.starts_with("kraal-ws-")) {
            return None;
        }
        args.iter()
            .flat_map(|a| a.split(' '))
            .find(|p| p.starts_with("tsc_early_khz="))
            .map(str::to_owned)
    })
}

fn bare_boot(kernel: &Path, accel: &str, tsc: Option<&str>) -> anyhow::Result<f64> {
    // Bounded: a boot that never reaches init fails the section instead of hanging it.
    let mut c = Command::new("timeout");
    c.args(["120", "qemu-system-x86_64"]);
    c.args(["-machine", "microvm,isa-serial=on,rtc=on"]);
    if accel == "kvm" {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    if Path::new("/usr/share/qemu/qboot.rom").is_file() {
        c.args(["-bios", "/usr/share/qemu/qboot.rom"]);
    }
    c.args(["-m", "2048M", "-smp", "2", "-nodefaults", "-no-user-config"])
        .args(["-nographic", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(kernel.join("initramfs.cpio"))
        .arg("-append");
    // The same kernel parameters as kraal's guests: under TCG kraal gives the host's TSC
    // frequency, without which a loaded host can leave the guest calibrating for minutes.
    let mut append = "console=ttyS0 quiet panic=-1 reboot=t 8250.nr_uarts=1 kraal.probe".to_owned();
    if let Some(tsc) = tsc {
        append.push(' ');
        append.push_str(tsc);
    }
    c.arg(append);
    let t = Instant::now();
    let out = sh(&mut c)?;
    if !out.contains(PROBE_OK) {
        bail!("the bare boot did not reach init: {out}");
    }
    Ok(ms(t.elapsed()))
}

/// The daemon's "ready in N ms" for the workspace's latest start.
fn ready_ms(logs: &str) -> Option<f64> {
    logs.lines()
        .rev()
        .find_map(|l| l.split("ready in ").nth(1)?.split(' ').next()?.parse().ok())
}

/// The QEMU section: boots next to a bare QEMU boot, and resuming from a snapshot next to
/// a cold create.
pub(crate) fn section(s: &Setup, n: usize, accel: &str) -> anyhow::Result<Section> {
    let kraal = |args: &[&str]| s.kraal(args);
    let repo = s.repo.to_str().unwrap();
    println!("  warming up (builds the ext4 image and the kernel on first use)…");
    kraal(&["up", repo, "--name", "vm"])?;
    let k = kernel(Path::new(&s.images))?;
    let tsc = kraal_tsc_param();

    let (mut bare, mut up, mut ready, mut create, mut warm) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        println!("  iteration {}/{n}", i + 1);
        bare.push(bare_boot(&k, accel, tsc.as_deref())?);
        kraal(&["down", "vm"])?;
        let t = Instant::now();
        kraal(&["up", "vm"])?;
        up.push(ms(t.elapsed()));
        ready.extend(ready_ms(&kraal(&["logs", "vm"])?));
        let name = format!("new-{i}");
        let t = Instant::now();
        kraal(&["up", repo, "--name", &name])?;
        kraal(&["exec", &name, "--", "true"])?;
        create.push(ms(t.elapsed()));
        kraal(&["rm", "--yes", &name])?;
    }
    for _ in 0..10 {
        let t = Instant::now();
        kraal(&["exec", "vm", "--", "true"])?;
        warm.push(ms(t.elapsed()));
    }

    // Checkpoint: a workspace with a process running, snapshotted; each restore brings
    // memory, processes and disks back, then the first exec — next to the cold creates
    // above. The process's counter proves it is the same process, resumed.
    println!("  checkpoint: snapshot, then {n} restores");
    kraal(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done' >/dev/null 2>&1 &",
    ])?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t = Instant::now();
    kraal(&["snapshot", "vm", "bench"])?;
    let snapshot_ms = ms(t.elapsed());
    let ticks_at_snapshot: u64 = kraal(&["exec", "vm", "--", "cat", "/tmp/ticks"])?
        .trim()
        .parse()
        .unwrap_or(0);
    let mut resume = vec![];
    for _ in 0..n {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let t = Instant::now();
        kraal(&["restore", "vm", "bench"])?;
        let ticks: u64 = kraal(&["exec", "vm", "--", "cat", "/tmp/ticks"])?
            .trim()
            .parse()
            .unwrap_or(0);
        resume.push(ms(t.elapsed()));
        if ticks == 0 || ticks > ticks_at_snapshot + 20 {
            bail!(
                "the restored workspace's process did not resume from the snapshot: {ticks} ticks, {ticks_at_snapshot} at the snapshot"
            );
        }
    }
    let _ = kraal(&["rm", "--yes", "vm"]);

    let accel_name = accel.to_uppercase();
    Ok(Section {
        name: "vm",
        title: format!("QEMU microVM ({accel_name})"),
        rows: vec![
            Row::vs(
                "create → first exec",
                Unit::Ms,
                mean(&create),
                "bare QEMU boot to init",
                mean(&bare),
            ),
            Row::vs(
                "start of a stopped workspace → guest agent ready",
                Unit::Ms,
                mean(&ready),
                "bare QEMU boot to init",
                mean(&bare),
            ),
            Row::vs(
                "resume from checkpoint → first exec",
                Unit::Ms,
                mean(&resume),
                "cold create → first exec",
                mean(&create),
            ),
            Row::alone("snapshot of a running workspace", Unit::Ms, snapshot_ms),
            Row::alone("warm exec (kraal exec ws -- true)", Unit::Ms, mean(&warm)),
        ],
        details: json!({
            "accel": accel,
            "qemu": sh(Command::new("qemu-system-x86_64").arg("--version")).unwrap_or_default().lines().next().unwrap_or_default(),
            "kernel": k.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bare_boot_tsc_param": tsc,
            "bare_qemu_boot_to_init": stats(bare),
            "kraal_up_stopped_workspace": stats(up),
            "kraal_start_to_guest_ready": stats(ready),
            "kraal_create_to_first_exec": stats(create),
            "kraal_warm_exec": stats(warm),
            "snapshot_ms": snapshot_ms,
            "resume_from_snapshot_to_first_exec": stats(resume),
        }),
    })
}
