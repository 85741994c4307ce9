//! Section `tasks`: what the task queue costs. N tasks on a no-op agent (a script that
//! speaks Claude Code's stream-json and ends each turn at once) are queued and drained
//! with `--max-running 4`; the raw baseline in the same run does the same work by hand,
//! 4 at a time: `kraal up`, `kraal new-chat -m` (waits for the turn), `kraal down` per task.
//! The difference per task is the scheduler's overhead.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::bench::Setup;
use crate::report::{Row, Section, Unit};

/// Tasks (and baseline runs) at once.
pub const AT_ONCE: usize = 4;

/// Answers every message with an init and a result line, like `claude -p` would.
const NOOP_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  case "$line" in *'"type":"user"'*|*'"type": "user"'*) ;; *) continue ;; esac
  echo '{"type":"system","subtype":"init","session_id":"noop"}'
  echo '{"type":"result","subtype":"success","is_error":false,"result":"ok","usage":{"input_tokens":1,"output_tokens":1},"total_cost_usd":0}'
done
"#;

fn noop_repo(s: &Setup) -> anyhow::Result<std::path::PathBuf> {
    let repo = s.tmp.path().join("noop-repo");
    std::fs::create_dir_all(&repo)?;
    let agent = repo.join("noop-agent.sh");
    std::fs::write(&agent, NOOP_AGENT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))?;
    crate::bench::git_init(&repo)?;
    Ok(repo)
}

/// The baseline: each task by hand, `AT_ONCE` at a time. Returns the wall time.
fn by_hand(s: &Setup, repo: &str, n: usize) -> anyhow::Result<Duration> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    let r: Vec<anyhow::Result<()>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                sc.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            return Ok(());
                        }
                        let name = format!("plain-{i}");
                        s.kraal(&["up", repo, "--name", &name])?;
                        s.kraal(&[
                            "new-chat",
                            &name,
                            "--binary",
                            "/workspace/noop-agent.sh",
                            "-m",
                            &format!("noop {i}"),
                        ])?;
                        s.kraal(&["down", &name])?;
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for x in r {
        x?;
    }
    Ok(t.elapsed())
}

/// The same through the queue: queue all, wait until every one waits for review and its
/// workspace is stopped. Returns the wall time and each task's queued → review time (ms).
fn through_queue(s: &Setup, repo: &str, n: usize) -> anyhow::Result<(Duration, Vec<f64>)> {
    let t = Instant::now();
    for i in 0..n {
        s.kraal(&[
            "task",
            "add",
            repo,
            "-m",
            &format!("noop {i}"),
            "--binary",
            "/workspace/noop-agent.sh",
        ])?;
    }
    let submitted = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60 * 30);
    loop {
        let l: serde_json::Value = serde_json::from_str(&s.kraal(&["task", "ls", "--json"])?)?;
        let tasks = l["tasks"].as_array().cloned().unwrap_or_default();
        if let Some(f) = tasks.iter().find(|t| t["state"] == "failed") {
            bail!("a task failed: {f}");
        }
        let reviewed = tasks
            .iter()
            .filter(|t| t["state"] == "needs_review")
            .count();
        if reviewed == n {
            let ws: serde_json::Value = serde_json::from_str(&s.kraal(&["ls", "--json"])?)?;
            let all_stopped = ws
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["name"].as_str().is_some_and(|n| n.starts_with("task-")))
                .all(|w| w["state"] == "stopped");
            if all_stopped {
                let wall = t.elapsed();
                let per: Vec<f64> = tasks
                    .iter()
                    .filter_map(|t| {
                        let p = |k: &str| time_of(t[k].as_str()?);
                        Some((p("finished_at")? - p("created_at")?) * 1000.0)
                    })
                    .collect();
                println!(
                    "  queued {n} tasks in {:.1} s, drained in {:.1} s",
                    submitted.as_secs_f64(),
                    wall.as_secs_f64()
                );
                return Ok((wall, per));
            }
        }
        if Instant::now() > deadline {
            bail!("the queue did not drain in 30 min ({reviewed} of {n} reviewed)");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Seconds since the epoch of an RFC 3339 time, as the daemon writes them.
fn time_of(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

pub fn section(s: &Setup, n: usize) -> anyhow::Result<Section> {
    s.warm_up()?;
    let repo = noop_repo(s)?;
    let repo = repo.to_str().unwrap();
    println!("  baseline: {n} × up + new-chat + down, {AT_ONCE} at a time…");
    let hand = by_hand(s, repo, n)?;
    s.remove_all()?;
    println!("  {n} tasks through the queue (--max-running {AT_ONCE})…");
    let (queue, per) = through_queue(s, repo, n)?;
    s.remove_all()?;
    let overhead_ms = (queue.as_secs_f64() - hand.as_secs_f64()) * 1000.0 / n as f64;
    let mut sorted = per.clone();
    sorted.sort_by(f64::total_cmp);
    let rows = vec![
        Row::vs(
            format!("{n} no-op tasks drained, {AT_ONCE} at a time (s→ms)"),
            Unit::Ms,
            queue.as_secs_f64() * 1000.0,
            &format!("{n} × up + new-chat + down by hand"),
            hand.as_secs_f64() * 1000.0,
        ),
        Row::vs(
            "wall time per task (ms)",
            Unit::Ms,
            queue.as_secs_f64() * 1000.0 / n as f64,
            "by hand",
            hand.as_secs_f64() * 1000.0 / n as f64,
        ),
        Row::alone("scheduler overhead per task (ms)", Unit::Ms, overhead_ms),
    ];
    Ok(Section {
        name: "tasks",
        title: format!("Task queue: {n} no-op tasks, {AT_ONCE} at a time"),
        rows,
        details: json!({
            "tasks": n,
            "at_once": AT_ONCE,
            "queue_s": queue.as_secs_f64(),
            "by_hand_s": hand.as_secs_f64(),
            "overhead_ms_per_task": overhead_ms,
            "queued_to_review_ms": crate::bench::stats(sorted),
        }),
    })
}
