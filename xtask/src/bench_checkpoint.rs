//! Section `checkpoint`: gVisor snapshots on runsc's own netstack (`--gvisor-network
//! sandbox`). Resuming from a checkpoint — into a stopped workspace, and into a running
//! one (whose sandbox is killed first) — next to a cold create of the same image, each to
//! the first exec, in the same run. A counter process proves each restore resumed it.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::bench::{Setup, mean, ms, stats};
use crate::report::{Row, Section, Unit};

/// The daemon's environment for this section.
pub(crate) const DAEMON_ENV: [(&str, &str); 1] = [("KRAAL_GVISOR_NETWORK", "sandbox")];

fn ticks(s: &Setup) -> anyhow::Result<u64> {
    Ok(s.kraal(&["exec", "ck", "--", "cat", "/tmp/ticks"])?
        .trim()
        .parse()
        .unwrap_or(0))
}

pub(crate) fn section(s: &Setup, n: usize) -> anyhow::Result<Section> {
    let repo = s.repo.to_str().unwrap();
    s.warm_up()?;
    let mut create = vec![];
    for i in 0..n {
        let name = format!("cold-{i}");
        let t = Instant::now();
        s.kraal(&["up", repo, "--name", &name])?;
        s.kraal(&["exec", &name, "--", "true"])?;
        create.push(ms(t.elapsed()));
        s.kraal(&["rm", "--yes", &name])?;
    }

    s.kraal(&["up", repo, "--name", "ck"])?;
    s.kraal(&[
        "exec",
        "ck",
        "--",
        "sh",
        "-c",
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done' >/dev/null 2>&1 &",
    ])?;
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    s.kraal(&["snapshot", "ck", "bench"])?;
    let snapshot_ms = ms(t.elapsed());
    let at_snapshot = ticks(s)?;

    let mut stopped = vec![];
    let mut running = vec![];
    for i in 0..2 * n {
        let from_stopped = i % 2 == 0;
        std::thread::sleep(Duration::from_secs(2));
        if from_stopped {
            s.kraal(&["down", "ck"])?;
        }
        let t = Instant::now();
        s.kraal(&["restore", "ck", "bench"])?;
        let now = ticks(s)?;
        let took = ms(t.elapsed());
        if now == 0 || now > at_snapshot + 20 {
            bail!(
                "the restored workspace's process did not resume from the snapshot: {now} ticks, {at_snapshot} at the snapshot"
            );
        }
        if from_stopped {
            stopped.push(took)
        } else {
            running.push(took)
        }
    }
    s.remove_all()?;

    Ok(Section {
        name: "checkpoint",
        title: "gVisor checkpoint (runsc netstack)".into(),
        rows: vec![
            Row::vs(
                "resume from checkpoint, stopped workspace → first exec",
                Unit::Ms,
                mean(&stopped),
                "cold create → first exec",
                mean(&create),
            ),
            Row::vs(
                "resume from checkpoint, running workspace → first exec",
                Unit::Ms,
                mean(&running),
                "cold create → first exec",
                mean(&create),
            ),
            Row::alone("snapshot of a running workspace", Unit::Ms, snapshot_ms),
        ],
        details: json!({
            "network": "sandbox",
            "cold_create_to_first_exec": stats(create),
            "resume_stopped_to_first_exec": stats(stopped),
            "resume_running_to_first_exec": stats(running),
            "snapshot_ms": snapshot_ms,
        }),
    })
}
