//! Section `memory`: host memory per idle gVisor workspace and the largest number of idle
//! workspaces that fit, measured by filling the host until only a reserve of memory is
//! left, next to raw runsc sandboxes idling (`sleep infinity`) on the same root file system.

#![allow(clippy::disallowed_methods)] // Automation: spawns runsc and kraal directly.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::bench::{RawRunsc, Setup, mem_available_kib, ms, percentile, sandbox_rss_kib, stats};
use crate::report::{Row, Section, Unit};

/// Workspaces measured closely before filling.
const SAMPLE: usize = 10;

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn settle() {
    std::thread::sleep(Duration::from_secs(8));
}

fn warm_exec(s: &Setup, ws: &str) -> anyhow::Result<Vec<f64>> {
    (0..10)
        .map(|_| {
            let t = Instant::now();
            s.kraal(&["exec", ws, "--", "true"])?;
            Ok(ms(t.elapsed()))
        })
        .collect()
}

pub(crate) fn section(s: &Setup, max_idle: usize) -> anyhow::Result<Section> {
    s.warm_up()?;
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // Stop filling while this much is still available: the host must stay usable.
    let reserve_kib = (2.0 * 1048576.0f64).max(total_kib * 0.1);

    // Baseline: raw sandboxes that just sleep.
    println!("  raw baseline: {SAMPLE} idle runsc sandboxes");
    let raw = RawRunsc::new(s.tmp.path(), &s.base_rootfs()?, &["/bin/sleep", "infinity"])?;
    let before = mem_available_kib();
    for i in 0..SAMPLE {
        raw.start_detached(&format!("idle-{i}"))?;
    }
    settle();
    let raw_rss = sandbox_rss_kib(&raw.root_arg()).unwrap_or(0.0);
    let raw_per = (before - mem_available_kib()) / SAMPLE as f64;
    for i in 0..SAMPLE {
        raw.delete(&format!("idle-{i}"));
    }
    settle();

    println!("  kraal: {SAMPLE} idle workspaces");
    let start_avail = mem_available_kib();
    let daemon_before = rss_kib(s.d.pid());
    let names: Vec<String> = (0..SAMPLE).map(|i| format!("idle-{i}")).collect();
    s.create_many(&names, SAMPLE)?;
    settle();
    let runsc_root = format!("--root={}", s.d.data.join("runsc").display());
    let kraal_rss = sandbox_rss_kib(&runsc_root).unwrap_or(0.0);
    let kraal_per = (start_avail - mem_available_kib()) / SAMPLE as f64;
    let exec_few = warm_exec(s, "idle-0")?;

    println!(
        "  filling: 10 at a time until {:.1} GiB are left or {max_idle} workspaces",
        reserve_kib / 1048576.0
    );
    let t = Instant::now();
    let mut count = SAMPLE;
    let stop = loop {
        if count >= max_idle {
            break format!("reached --max-idle {max_idle}");
        }
        let avail = mem_available_kib();
        if avail - 10.0 * kraal_per.max(1.0) < reserve_kib {
            break format!(
                "{:.1} GiB available, the reserve is {:.1} GiB",
                avail / 1048576.0,
                reserve_kib / 1048576.0
            );
        }
        let batch: Vec<String> = (count..(count + 10).min(max_idle))
            .map(|i| format!("idle-{i}"))
            .collect();
        match s.create_many(&batch, batch.len()) {
            Ok(_) => count += batch.len(),
            Err(e) => break format!("a create failed: {e:#}"),
        }
        if count.is_multiple_of(50) {
            println!(
                "    {count} idle workspaces, {:.1} GiB available",
                mem_available_kib() / 1048576.0
            );
        }
    };
    let fill_s = t.elapsed().as_secs_f64();
    settle();
    let end_avail = mem_available_kib();
    let per_filled = (start_avail - end_avail) / count as f64;
    // If a cap stopped the fill early, how many more the remaining memory would hold.
    let fits = count as f64 + ((end_avail - reserve_kib) / per_filled).max(0.0).floor();
    let raw_fits = ((start_avail - reserve_kib) / raw_per.max(1.0)).floor();
    let exec_many = warm_exec(s, "idle-0")?;
    let daemon_after = rss_kib(s.d.pid());
    println!("  {count} idle workspaces ({stop}); removing them");
    s.remove_all()?;

    let mib = |k: f64| k / 1024.0;
    Ok(Section {
        name: "memory",
        title: "gVisor: idle workspaces".into(),
        rows: vec![
            Row::vs(
                "host memory per idle workspace (MemAvailable drop)",
                Unit::MiB,
                mib(kraal_per),
                "raw runsc sandbox (sleep)",
                mib(raw_per),
            ),
            Row::vs(
                "sandbox RSS per idle workspace (runsc processes)",
                Unit::MiB,
                mib(kraal_rss),
                "raw runsc sandbox (sleep)",
                mib(raw_rss),
            ),
            Row::vs(
                format!("idle workspaces that fit (filled to {count})"),
                Unit::Count,
                fits,
                "raw sandboxes (estimated)",
                raw_fits,
            ),
            Row::vs(
                format!("warm exec p50 with {count} idle workspaces"),
                Unit::Ms,
                percentile(&exec_many, 0.5),
                format!("with {SAMPLE} idle").as_str(),
                percentile(&exec_few, 0.5),
            ),
        ],
        details: json!({
            "mem_total_kib": total_kib,
            "reserve_kib": reserve_kib,
            "raw_per_sandbox_kib": raw_per,
            "raw_rss_per_sandbox_kib": raw_rss,
            "kraal_per_workspace_kib": kraal_per,
            "kraal_rss_per_workspace_kib": kraal_rss,
            "kraal_per_workspace_filled_kib": per_filled,
            "filled": count,
            "fill_seconds": fill_s,
            "fill_stopped_because": stop,
            "fits_estimate": fits,
            "raw_fits_estimate": raw_fits,
            "daemon_rss_kib_before": daemon_before,
            "daemon_rss_kib_filled": daemon_after,
            "warm_exec_few": stats(exec_few),
            "warm_exec_filled": stats(exec_many),
        }),
    })
}
