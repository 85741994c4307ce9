//! Section `backup`: a 1 GiB workspace (768 MiB of random data, 256 MiB of
//! repetitive text, a git checkout) backed up to the local backup store twice — the
//! second time unchanged, so every chunk is already stored — and restored as a new
//! workspace, then exported to a file and imported; next to the raw baseline in the same
//! run, `cp -a` of the same volume directory on the host.

#![allow(clippy::disallowed_methods)] // Automation: spawns kraal and cp directly.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::bench::{Setup, ms, sh};
use crate::report::{Row, Section, Unit};

fn mib_per_s(bytes: f64, millis: f64) -> f64 {
    bytes / 1048576.0 / (millis / 1000.0)
}

pub(crate) fn section(s: &Setup) -> anyhow::Result<Section> {
    println!("  writing 1 GiB into a workspace…");
    let kraal = |args: &[&str]| -> anyhow::Result<String> { sh(s.d.kraal(&s.kraal).args(args)) };
    kraal(&["up", s.repo.to_str().unwrap(), "--name", "bk"])?;
    kraal(&[
        "exec",
        "bk",
        "--",
        "sh",
        "-c",
        "head -c 768M /dev/urandom > random.bin && yes 'a line of a log file, much like the last one' | head -c 256M > log.txt",
    ])?;
    let ws: serde_json::Value = serde_json::from_str(&kraal(&["ls", "--json"])?)?;
    let id = ws[0]["id"].as_str().context("no workspace id")?.to_owned();
    let volume = s.d.data.join("workspaces").join(&id).join("volume");
    let size: u64 = sh(Command::new("du").args(["-sb"]).arg(&volume))?
        .split_whitespace()
        .next()
        .context("du")?
        .parse()?;

    // Raw baseline: copy the same volume on the host.
    sh(&mut Command::new("sync"))?;
    let copy = s.tmp.path().join("copy");
    let t = Instant::now();
    sh(Command::new("cp").arg("-a").arg(&volume).arg(&copy))?;
    sh(&mut Command::new("sync"))?;
    let cp_ms = ms(t.elapsed());
    std::fs::remove_dir_all(&copy)?;

    let store = s.d.data.join("backups");
    let stored = || -> anyhow::Result<u64> {
        Ok(sh(Command::new("du").args(["-sb"]).arg(&store))?
            .split_whitespace()
            .next()
            .context("du")?
            .parse()?)
    };
    let t = Instant::now();
    let first = kraal(&["backup", "bk"])?;
    let first_ms = ms(t.elapsed());
    let after_first = stored()?;
    let t = Instant::now();
    kraal(&["backup", "bk"])?;
    let second_ms = ms(t.elapsed());
    let after_second = stored()?;
    let backup = first
        .split_whitespace()
        .find(|w| w.starts_with("bk-"))
        .context("no backup id")?
        .to_owned();
    let t = Instant::now();
    kraal(&["restore", &backup, "--as", "bk2"])?;
    let restore_ms = ms(t.elapsed());
    let check = kraal(&[
        "exec",
        "bk2",
        "--",
        "sh",
        "-c",
        "wc -c < random.bin; wc -c < log.txt",
    ])?;
    if check.split_whitespace().collect::<Vec<_>>() != ["805306368", "268435456"] {
        anyhow::bail!("the restored workspace differs: {check}");
    }
    kraal(&["rm", "--yes", "bk2"])?;

    // Export to a file and import it as a new workspace.
    let file = s.tmp.path().join("bk.tar.zst");
    let t = Instant::now();
    kraal(&["export", "bk", "-o", file.to_str().unwrap()])?;
    let export_ms = ms(t.elapsed());
    let export_bytes = std::fs::metadata(&file)?.len();
    let t = Instant::now();
    kraal(&["import", file.to_str().unwrap(), "--as", "bk3"])?;
    let import_ms = ms(t.elapsed());
    let check = kraal(&["exec", "bk3", "--", "sh", "-c", "wc -c < random.bin"])?;
    if check.trim() != "805306368" {
        anyhow::bail!("the imported workspace differs: {check}");
    }
    kraal(&["rm", "--yes", "bk3"])?;
    kraal(&["rm", "--yes", "bk"])?;

    let b = size as f64;
    let cp = mib_per_s(b, cp_ms);
    let rows = vec![
        Row::vs(
            "first backup",
            Unit::MiBPerS,
            mib_per_s(b, first_ms),
            "cp -a",
            cp,
        ),
        Row::vs(
            "second backup, unchanged",
            Unit::MiBPerS,
            mib_per_s(b, second_ms),
            "cp -a",
            cp,
        ),
        Row::vs(
            "restore as a new workspace",
            Unit::MiBPerS,
            mib_per_s(b, restore_ms),
            "cp -a",
            cp,
        ),
        Row::vs(
            "export to .tar.zst",
            Unit::MiBPerS,
            mib_per_s(b, export_ms),
            "cp -a",
            cp,
        ),
        Row::vs(
            "import as a new workspace",
            Unit::MiBPerS,
            mib_per_s(b, import_ms),
            "cp -a",
            cp,
        ),
        Row::alone(
            "store growth of the unchanged backup",
            Unit::MiB,
            after_second.saturating_sub(after_first) as f64 / 1048576.0,
        ),
    ];
    Ok(Section {
        name: "backup",
        title: format!(
            "Backups of a {:.0} MiB workspace (local store)",
            b / 1048576.0
        ),
        rows,
        details: json!({
            "volume_bytes": size,
            "raw_cp_ms": cp_ms,
            "first_backup_ms": first_ms,
            "second_backup_ms": second_ms,
            "restore_ms": restore_ms,
            "store_bytes_after_first": after_first,
            "store_bytes_added_by_second": after_second.saturating_sub(after_first),
            "export_ms": export_ms,
            "export_file_bytes": export_bytes,
            "import_ms": import_ms,
        }),
    })
}
