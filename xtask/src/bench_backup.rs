//! Section `backup`: a 1 GiB workspace (768 MiB of random data, 256 MiB of
//! repetitive text, a git checkout) backed up to the local backup store twice — the
//! second time unchanged — and restored as a new workspace, each the median of 3 runs on
//! an emptied store; a restore of an empty workspace for the fixed costs, apart from the
//! data phase; a tree of 100,000 small files backed up and restored; then an export and
//! an import. Raw baselines in the same run: `cp -a` of the same volume directory, and
//! GNU `tar` creating and extracting the same small-file tree, on the host.

#![allow(clippy::disallowed_methods)] // Automation: spawns kraal, cp and tar directly.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::bench::{Setup, ms, sh};
use crate::report::{Row, Section, Unit};

const RUNS: usize = 3;
const TREE_FILES: usize = 100_000;

fn mib_per_s(bytes: f64, millis: f64) -> f64 {
    bytes / 1048576.0 / (millis / 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn du(path: &Path) -> anyhow::Result<u64> {
    Ok(sh(Command::new("du").args(["-sb"]).arg(path))?
        .split_whitespace()
        .next()
        .context("du")?
        .parse()?)
}

fn timed(f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let out = f()?;
    Ok((ms(t.elapsed()), out))
}

fn backup_id(out: &str) -> anyhow::Result<String> {
    Ok(out
        .split_whitespace()
        .find(|w| w.starts_with("bk-"))
        .context("no backup id")?
        .to_owned())
}

/// A workspace's volume directory on the host.
fn volume_of(s: &Setup, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let ws: serde_json::Value =
        serde_json::from_str(&sh(s.d.kraal(&s.kraal).args(["ls", "--json"]))?)?;
    let id = ws
        .as_array()
        .context("ls")?
        .iter()
        .find(|w| w["name"] == name)
        .and_then(|w| w["id"].as_str())
        .context("no workspace id")?
        .to_owned();
    Ok(s.d.data.join("workspaces").join(id).join("volume"))
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
    let volume = volume_of(s, "bk")?;
    let size = du(&volume)?;
    // Past the coarse-clock window: the second backup may count these files unchanged.
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let store = s.d.data.join("backups");
    let empty_store = || -> anyhow::Result<()> {
        for d in ["chunks", "backups"] {
            let p = store.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p)?;
            }
        }
        Ok(())
    };
    let (mut cp, mut first, mut second, mut restore, mut growth) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        println!("  1 GiB backup, run {}/{RUNS}…", run + 1);
        // Raw baseline: copy the same volume on the host.
        sh(&mut Command::new("sync"))?;
        let copy = s.tmp.path().join("copy");
        let t = Instant::now();
        sh(Command::new("cp").arg("-a").arg(&volume).arg(&copy))?;
        sh(&mut Command::new("sync"))?;
        cp.push(ms(t.elapsed()));
        std::fs::remove_dir_all(&copy)?;

        empty_store()?;
        let (t1, out) = timed(|| kraal(&["backup", "bk"]))?;
        first.push(t1);
        let after_first = du(&store)?;
        let (t2, _) = timed(|| kraal(&["backup", "bk"]))?;
        second.push(t2);
        growth.push(du(&store)?.saturating_sub(after_first) as f64);
        let id = backup_id(&out)?;
        let (t3, _) = timed(|| kraal(&["restore", &id, "--as", "bk2"]))?;
        restore.push(t3);
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
    }

    // The fixed costs of a restore: an (almost) empty workspace.
    println!("  restoring an empty workspace…");
    let tiny = s.tmp.path().join("tiny");
    std::fs::create_dir_all(&tiny)?;
    kraal(&["up", tiny.to_str().unwrap(), "--name", "tiny"])?;
    let tiny_id = backup_id(&kraal(&["backup", "tiny"])?)?;
    let mut fixed = vec![];
    for _ in 0..RUNS {
        let (t, _) = timed(|| kraal(&["restore", &tiny_id, "--as", "tiny2"]))?;
        fixed.push(t);
        kraal(&["rm", "--yes", "tiny2"])?;
    }
    kraal(&["rm", "--yes", "tiny"])?;

    // 100,000 small files (1 KiB each, 1,000 directories), written on the host into a
    // running workspace's volume.
    println!("  a tree of {TREE_FILES} small files…");
    kraal(&["up", tiny.to_str().unwrap(), "--name", "tree"])?;
    let tree = volume_of(s, "tree")?.join("many");
    for d in 0..TREE_FILES / 100 {
        let dir = tree.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..100 {
            let line = format!("directory {d} file {f}: some source text\n");
            std::fs::write(
                dir.join(format!("f{f:03}.txt")),
                line.repeat(1024 / line.len() + 1),
            )?;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let tree_bytes = du(&tree)?;
    let tar_file = s.tmp.path().join("tree.tar");
    let untar = s.tmp.path().join("untar");
    let (mut tar_c, mut tar_x, mut tree_first, mut tree_second, mut tree_restore) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        println!("  small-file tree, run {}/{RUNS}…", run + 1);
        sh(&mut Command::new("sync"))?;
        let t = Instant::now();
        sh(Command::new("tar")
            .arg("-C")
            .arg(tree.parent().unwrap())
            .arg("-cf")
            .arg(&tar_file)
            .arg("."))?;
        sh(&mut Command::new("sync"))?;
        tar_c.push(ms(t.elapsed()));
        std::fs::create_dir_all(&untar)?;
        let t = Instant::now();
        sh(Command::new("tar")
            .arg("-C")
            .arg(&untar)
            .arg("-xf")
            .arg(&tar_file))?;
        sh(&mut Command::new("sync"))?;
        tar_x.push(ms(t.elapsed()));
        std::fs::remove_dir_all(&untar)?;
        std::fs::remove_file(&tar_file)?;

        empty_store()?;
        let (t1, out) = timed(|| kraal(&["backup", "tree"]))?;
        tree_first.push(t1);
        let (t2, _) = timed(|| kraal(&["backup", "tree"]))?;
        tree_second.push(t2);
        let id = backup_id(&out)?;
        let (t3, _) = timed(|| kraal(&["restore", &id, "--as", "tree2"]))?;
        tree_restore.push(t3);
        let n = kraal(&[
            "exec",
            "tree2",
            "--",
            "sh",
            "-c",
            "find /workspace/many -type f | wc -l",
        ])?;
        if n.trim() != TREE_FILES.to_string() {
            anyhow::bail!("the restored tree has {n} files");
        }
        kraal(&["rm", "--yes", "tree2"])?;
    }
    kraal(&["rm", "--yes", "tree"])?;

    // Export to a file and import it as a new workspace (through the guest's tar).
    println!("  export and import…");
    let file = s.tmp.path().join("bk.tar.zst");
    let (export_ms, _) = timed(|| kraal(&["export", "bk", "-o", file.to_str().unwrap()]))?;
    let export_bytes = std::fs::metadata(&file)?.len();
    let (import_ms, _) = timed(|| kraal(&["import", file.to_str().unwrap(), "--as", "bk3"]))?;
    let check = kraal(&["exec", "bk3", "--", "sh", "-c", "wc -c < random.bin"])?;
    if check.trim() != "805306368" {
        anyhow::bail!("the imported workspace differs: {check}");
    }
    kraal(&["rm", "--yes", "bk3"])?;
    kraal(&["rm", "--yes", "bk"])?;

    let b = size as f64;
    let (cp_ms, first_ms, second_ms, restore_ms, fixed_ms) = (
        median(cp.clone()),
        median(first.clone()),
        median(second.clone()),
        median(restore.clone()),
        median(fixed.clone()),
    );
    let data_ms = (restore_ms - fixed_ms).max(1.0);
    let cp_rate = mib_per_s(b, cp_ms);
    let (tc, tx) = (median(tar_c.clone()), median(tar_x.clone()));
    let (tf, ts, tr) = (
        median(tree_first.clone()),
        median(tree_second.clone()),
        median(tree_restore.clone()),
    );
    let rows = vec![
        Row::vs(
            "first backup",
            Unit::MiBPerS,
            mib_per_s(b, first_ms),
            "cp -a",
            cp_rate,
        ),
        Row::alone("second backup, unchanged", Unit::Ms, second_ms),
        Row::vs(
            "restore as a new workspace, whole",
            Unit::MiBPerS,
            mib_per_s(b, restore_ms),
            "cp -a",
            cp_rate,
        ),
        Row::vs(
            "restore, data phase (whole − fixed costs)",
            Unit::MiBPerS,
            mib_per_s(b, data_ms),
            "cp -a",
            cp_rate,
        ),
        Row::alone(
            "restore, fixed costs (an empty workspace)",
            Unit::Ms,
            fixed_ms,
        ),
        Row::vs(
            format!("first backup of {TREE_FILES} small files"),
            Unit::Ms,
            tf,
            "tar -c",
            tc,
        ),
        Row::alone(
            format!("second backup of {TREE_FILES} small files, unchanged"),
            Unit::Ms,
            ts,
        ),
        Row::vs(
            format!("restore of {TREE_FILES} small files (whole)"),
            Unit::Ms,
            tr,
            "tar -x",
            tx,
        ),
        Row::vs(
            "export to .tar.zst",
            Unit::MiBPerS,
            mib_per_s(b, export_ms),
            "cp -a",
            cp_rate,
        ),
        Row::vs(
            "import as a new workspace",
            Unit::MiBPerS,
            mib_per_s(b, import_ms),
            "cp -a",
            cp_rate,
        ),
        Row::alone(
            "store growth of the unchanged backup",
            Unit::MiB,
            median(growth.clone()) / 1048576.0,
        ),
    ];
    Ok(Section {
        name: "backup",
        title: format!(
            "Backups of a {:.0} MiB workspace and of {TREE_FILES} small files (local store, median of {RUNS} runs)",
            b / 1048576.0
        ),
        rows,
        details: json!({
            "volume_bytes": size,
            "tree_bytes": tree_bytes,
            "raw_cp_ms": cp,
            "first_backup_ms": first,
            "second_backup_ms": second,
            "restore_ms": restore,
            "restore_empty_ms": fixed,
            "store_bytes_added_by_second": growth,
            "tar_create_ms": tar_c,
            "tar_extract_ms": tar_x,
            "tree_first_backup_ms": tree_first,
            "tree_second_backup_ms": tree_second,
            "tree_restore_ms": tree_restore,
            "export_ms": export_ms,
            "export_file_bytes": export_bytes,
            "import_ms": import_ms,
        }),
    })
}
