//! `cargo xtask bench-vm`: microVM boot time with the QEMU backend, measured in the same
//! run next to its raw baseline — a bare `qemu-system-x86_64` boot of the same kernel and
//! initramfs to the guest's init (no disks, no network, no kraal). Reports `kraal up` of a
//! stopped workspace (TAP setup, QEMU start, kernel, guest mounts, guest agent answering),
//! the daemon's own "ready in" time, create→first exec, and warm exec.

#![allow(clippy::disallowed_methods)] // Automation: spawns qemu and kraal directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;

use crate::bench::{Setup, ms, setup, sh, stats};
use crate::root;

/// What the guest prints when a probe boot reaches init (kraal-guest's `PROBE_OK`).
const PROBE_OK: &str = "kraal-guest: probe boot reached init";

fn parse(args: &[String]) -> anyhow::Result<(usize, String)> {
    let (mut n, mut accel) = (5, "tcg".to_owned());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => n = it.next().context("--iterations N")?.parse()?,
            "--accel" => accel = it.next().context("--accel kvm|tcg")?.clone(),
            other => bail!("unknown bench-vm option {other}"),
        }
    }
    Ok((n, accel))
}

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

fn bare_boot(kernel: &Path, accel: &str) -> anyhow::Result<f64> {
    let mut c = Command::new("qemu-system-x86_64");
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
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 reboot=t 8250.nr_uarts=1 kraal.probe",
        ]);
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

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (n, accel) = parse(args)?;
    let Setup {
        d,
        kraal,
        images,
        tmp: _tmp,
        repo,
    } = setup(&[("KRAAL_BACKEND", "qemu"), ("KRAAL_QEMU_ACCEL", &accel)])?;
    println!("warming up (builds the ext4 image and the kernel on first use)…");
    sh(d.kraal(&kraal)
        .args(["up", repo.to_str().unwrap(), "--name", "vm"]))?;
    let k = kernel(Path::new(&images))?;

    let (mut bare, mut up, mut ready, mut create, mut warm) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        bare.push(bare_boot(&k, &accel)?);
        sh(d.kraal(&kraal).args(["down", "vm"]))?;
        let t = Instant::now();
        sh(d.kraal(&kraal).args(["up", "vm"]))?;
        up.push(ms(t.elapsed()));
        let logs = sh(d.kraal(&kraal).args(["logs", "vm"]))?;
        ready.extend(ready_ms(&logs));
        let name = format!("new-{i}");
        let t = Instant::now();
        sh(d.kraal(&kraal)
            .args(["up", repo.to_str().unwrap(), "--name", &name]))?;
        sh(d.kraal(&kraal).args(["exec", &name, "--", "true"]))?;
        create.push(ms(t.elapsed()));
        sh(d.kraal(&kraal).args(["rm", "--yes", &name]))?;
    }
    for _ in 0..10 {
        let t = Instant::now();
        sh(d.kraal(&kraal).args(["exec", "vm", "--", "true"]))?;
        warm.push(ms(t.elapsed()));
    }
    let _ = d.kraal(&kraal).args(["rm", "--yes", "vm"]).output();

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let results = json!({
        "accel": accel,
        "qemu": sh(Command::new("qemu-system-x86_64").arg("--version")).unwrap_or_default().lines().next().unwrap_or_default(),
        "kernel": k.file_name().map(|n| n.to_string_lossy().into_owned()),
        "bare_qemu_boot_to_init": stats(bare.clone()),
        "kraal_up_stopped_workspace": stats(up.clone()),
        "kraal_start_to_guest_ready": stats(ready.clone()),
        "kraal_create_to_first_exec": stats(create.clone()),
        "kraal_warm_exec": stats(warm.clone()),
    });
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("vm.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    println!();
    println!(
        "{:<46} {:>10}",
        format!("measurement (mean of {n}, {accel})"),
        ""
    );
    for (name, v) in [
        ("bare qemu boot to init (baseline)", &bare),
        ("kraal: start → guest agent answers (daemon)", &ready),
        ("kraal up of a stopped workspace (CLI)", &up),
        ("kraal: create → first exec", &create),
        ("kraal exec ws -- true (warm)", &warm),
    ] {
        println!("{name:<46} {:>8.0}ms", mean(v));
    }
    println!(
        "{:<46} {:>9.1}x",
        "start → guest ready / bare boot",
        mean(&ready) / mean(&bare)
    );
    println!("\nresults: {}", out_dir.join("vm.json").display());
    Ok(())
}
