//! Section `memory`: what an idle gVisor workspace costs the host — memory and CPU — next
//! to raw runsc sandboxes idling (`sleep infinity`) on the same root file system, and how
//! many idle workspaces the host carries: filled 10 at a time until only a reserve of
//! memory is left, or a new workspace takes longer than `max_create_s` to its first exec
//! (the CPUs, not the memory, are then the limit), or `max_idle`; then idle pause on all
//! of them, and the warm exec and idle CPU again.

#![allow(clippy::disallowed_methods)] // Automation: spawns runsc and kraal directly.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bench::{
    RawRunsc, Setup, is_sentry, mem_available_kib, ms, percentile, proc_kib, runsc_processes,
    sandbox_pss_kib, sandbox_rss_kib, sh, stats,
};
use crate::report::{Row, Section, Unit};

/// Workspaces measured closely before filling.
const SAMPLE: usize = 10;

fn rss_kib(pid: u32) -> f64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0.0)
}

/// CPU time (clock ticks) used so far by the runsc processes under the runsc root
/// `root_arg` (`--root=…`), and how many sandboxes they belong to.
fn runsc_ticks(root_arg: &str) -> (u64, usize) {
    let procs = runsc_processes(root_arg);
    let ticks = procs
        .iter()
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command: state is 3rd, utime 14th, stime 15th overall.
            let rest = stat.rsplit(')').next()?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            )
        })
        .sum();
    let sandboxes = procs.iter().filter(|(_, cmd)| is_sentry(cmd)).count();
    (ticks, sandboxes)
}

/// Percent of one CPU each idle sandbox under `root_arg` uses, over 10 s.
fn idle_cpu_percent(root_arg: &str) -> f64 {
    let (a, n) = runsc_ticks(root_arg);
    std::thread::sleep(Duration::from_secs(10));
    let (b, _) = runsc_ticks(root_arg);
    let hz = 100.0; // USER_HZ on Linux
    (b.saturating_sub(a)) as f64 / hz / 10.0 * 100.0 / n.max(1) as f64
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

pub(crate) fn section(s: &Setup, max_idle: usize, max_create_s: f64) -> anyhow::Result<Section> {
    s.warm_up()?;
    let total_kib = proc_kib("/proc/meminfo", "MemTotal:").unwrap_or(0.0);
    // Stop filling while this much is still available: the host must stay usable.
    let reserve_kib = (2.0 * 1048576.0f64).max(total_kib * 0.1);

    // Baseline: raw sandboxes that just sleep.
    println!("  raw baseline: {SAMPLE} idle runsc sandboxes");
    let raw = RawRunsc::new(s.tmp.path(), &s.base_rootfs()?, &["/bin/sleep", "infinity"])?;
    settle();
    for i in 0..SAMPLE {
        raw.start_detached(&format!("idle-{i:04}"))?;
    }
    settle();
    let raw_rss = sandbox_rss_kib(&raw.root_arg()).unwrap_or(0.0);
    let raw_pss = sandbox_pss_kib(&raw.root_arg()).unwrap_or(0.0);
    let raw_cpu = idle_cpu_percent(&raw.root_arg());
    for i in 0..SAMPLE {
        raw.delete(&format!("idle-{i:04}"));
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
    let kraal_pss = sandbox_pss_kib(&runsc_root).unwrap_or(0.0);
    let kraal_per = (start_avail - mem_available_kib()) / SAMPLE as f64;
    let kraal_cpu = idle_cpu_percent(&runsc_root);
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
            Ok(times) => {
                count += batch.len();
                let slowest = times.iter().cloned().fold(0.0, f64::max) / 1000.0;
                if slowest > max_create_s {
                    break format!(
                        "a new workspace took {slowest:.1} s to its first exec (limit {max_create_s} s): the CPUs are the limit"
                    );
                }
            }
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
    let stop_short = if stop.contains("CPUs") {
        "CPU-bound"
    } else if stop.contains("reserve") {
        "memory-bound"
    } else if stop.contains("max-idle") {
        "capped"
    } else {
        "a create failed"
    };
    settle();
    let end_avail = mem_available_kib();
    let per_filled = (start_avail - end_avail) / count as f64;
    let exec_many = warm_exec(s, "idle-0")?;
    let daemon_after = rss_kib(s.d.pid());

    // Idle pause on all of them: a paused sandbox uses no CPU, so the one in use is not
    // queued behind the others' idle work.
    println!("  idle pause (5 s) on all {count}…");
    for i in 0..count {
        s.kraal(&["policy", &format!("idle-{i}"), "--idle-pause", "5s"])?;
    }
    let paused = |root: &str| -> usize {
        sh(Command::new("runsc").arg(root).arg("list"))
            .map(|out| out.lines().filter(|l| l.contains(" paused ")).count())
            .unwrap_or(0)
    };
    let t_pause = Instant::now();
    while paused(&runsc_root) < count && t_pause.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let paused_count = paused(&runsc_root);
    let paused_cpu = idle_cpu_percent(&runsc_root);
    let exec_paused = warm_exec(s, "idle-0")?;
    // What one more idle workspace costs: its sandbox's share of memory plus the daemon's
    // growth per workspace; the raw sandbox has no daemon.
    let daemon_per = ((daemon_after - daemon_before) / count as f64).max(0.0);
    let kraal_cost = kraal_pss + daemon_per;
    let fits = ((start_avail - reserve_kib) / kraal_cost.max(1.0)).floor();
    let raw_fits = ((start_avail - reserve_kib) / raw_pss.max(1.0)).floor();
    println!("  {count} idle workspaces ({stop}); removing them");
    s.remove_all()?;

    let mib = |k: f64| k / 1024.0;
    Ok(Section {
        name: "memory",
        title: "gVisor: idle workspaces".into(),
        rows: vec![
            Row::vs(
                "memory per idle workspace (runsc PSS + daemon share)",
                Unit::MiB,
                mib(kraal_cost),
                "raw runsc sandbox (sleep)",
                mib(raw_pss),
            ),
            Row::alone(
                format!("host MemAvailable drop per workspace over {count}"),
                Unit::MiB,
                mib(per_filled),
            ),
            Row::vs(
                "sandbox RSS per idle workspace (runsc processes)",
                Unit::MiB,
                mib(kraal_rss),
                "raw runsc sandbox (sleep)",
                mib(raw_rss),
            ),
            Row::vs(
                "CPU per idle workspace (% of one core)",
                Unit::Percent,
                kraal_cpu,
                "raw runsc sandbox (sleep)",
                raw_cpu,
            ),
            Row::vs(
                "idle workspaces that fit in memory (projected from PSS)",
                Unit::Count,
                fits,
                "raw sandboxes (projected)",
                raw_fits,
            ),
            Row::alone(
                format!("idle workspaces running at once (measured; {stop_short})"),
                Unit::Count,
                count as f64,
            ),
            Row::vs(
                format!("warm exec p50 with {count} idle workspaces"),
                Unit::Ms,
                percentile(&exec_many, 0.5),
                format!("with {SAMPLE} idle").as_str(),
                percentile(&exec_few, 0.5),
            ),
            Row::vs(
                format!(
                    "warm exec p50 with {paused_count} of {count} idle workspaces paused (idle pause 5 s)"
                ),
                Unit::Ms,
                percentile(&exec_paused, 0.5),
                format!("with {SAMPLE} idle").as_str(),
                percentile(&exec_few, 0.5),
            ),
            Row::vs(
                "CPU per idle workspace, paused (% of one core)",
                Unit::Percent,
                paused_cpu,
                "raw runsc sandbox (sleep)",
                raw_cpu,
            ),
        ],
        details: json!({
            "mem_total_kib": total_kib,
            "reserve_kib": reserve_kib,
            "raw_pss_per_sandbox_kib": raw_pss,
            "kraal_pss_per_workspace_kib": kraal_pss,
            "daemon_kib_per_workspace": daemon_per,
            "raw_rss_per_sandbox_kib": raw_rss,
            "kraal_memavailable_drop_first_sample_kib": kraal_per,
            "kraal_rss_per_workspace_kib": kraal_rss,
            "raw_idle_cpu_percent": raw_cpu,
            "kraal_idle_cpu_percent": kraal_cpu,
            "max_create_s": max_create_s,
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
            "paused": paused_count,
            "paused_after_s": t_pause.elapsed().as_secs_f64(),
            "paused_cpu_percent": paused_cpu,
            "warm_exec_paused": stats(exec_paused),
        }),
    })
}
