//! Housekeeping: idle workspaces pause (see `freeze`) and stop by themselves, and running
//! ones are backed up on a schedule. A workspace is in use while an agent turn runs (or waits for an approval),
//! while a terminal, exec, SSH session or port connection is attached, and while a client
//! reads it (the API and web UI hold it for each request and each open stream); it is idle
//! once none of that has happened for its idle timeout. Persistent workspaces never stop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kraal_backup::{Manifest, Repo};
use kraal_core::{Policy, SessionState, WorkspaceId, WorkspaceState};
use kraal_store::WorkspaceRecord;
use tokio::task::JoinHandle;

use crate::{Engine, EngineError, chain};

/// The daemon's housekeeping settings.
#[derive(Debug, Clone, Default)]
pub struct Housekeeping {
    /// What workspaces without their own setting get.
    pub defaults: Policy,
    /// Scheduled backups kept per workspace (older ones are deleted; manual backups are
    /// never deleted by the schedule).
    pub keep: usize,
    /// Where scheduled backups go (none: no scheduled backups).
    pub repo: Option<Repo>,
}

#[derive(Debug, Clone, Copy)]
struct Use {
    /// When the workspace was last used (or started, or first seen by this process).
    last: Instant,
    /// Open attachments (terminals, streams, requests).
    holds: usize,
}

#[derive(Default)]
pub(crate) struct State {
    settings: Mutex<Arc<Housekeeping>>,
    uses: Mutex<HashMap<WorkspaceId, Use>>,
    /// Workspaces with a scheduled backup or idle stop under way.
    busy: Mutex<HashSet<WorkspaceId>>,
}

/// Keeps a workspace in use until dropped.
pub struct ActivityHold {
    engine: Weak<Engine>,
    id: WorkspaceId,
}

impl Drop for ActivityHold {
    fn drop(&mut self) {
        if let Some(e) = self.engine.upgrade() {
            let mut uses = e.housekeeping.uses.lock().unwrap();
            if let Some(u) = uses.get_mut(&self.id) {
                u.holds = u.holds.saturating_sub(1);
                u.last = Instant::now();
            }
        }
    }
}

/// Whether a session in `state` is in the middle of a turn.
fn mid_turn(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Starting | SessionState::Working | SessionState::NeedsApproval
    )
}

fn since(rfc3339: &str) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    Some(Duration::from_secs_f64(d.as_seconds_f64().max(0.0)))
}

/// `90 s`, `30 min`, `2 h`: how the log and reasons say a duration.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) && s >= 3600 {
        format!("{} h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

impl Engine {
    /// Start on demand: schedules a start of `reference` if it is stopped (idle stop,
    /// `kraal down`), so what needs it running (a new session, a message, a terminal)
    /// waits for it instead of failing; returns whether it did. The start runs on its own
    /// (and [`Engine::guest`] waits for it).
    pub fn start_if_stopped(self: &Arc<Self>, reference: &str) -> Result<bool, EngineError> {
        let rec = self.resolve(reference)?;
        if rec.state != WorkspaceState::Stopped {
            return Ok(false);
        }
        self.event(&rec.id, "info", "starting on demand");
        drop(self.up(rec.id.as_str())?);
        Ok(true)
    }

    /// Replaces the housekeeping settings (takes effect on the next pass).
    pub fn set_housekeeping(&self, h: Housekeeping) {
        *self.housekeeping.settings.lock().unwrap() = Arc::new(h);
    }

    fn settings(&self) -> Arc<Housekeeping> {
        self.housekeeping.settings.lock().unwrap().clone()
    }

    /// `rec`'s policy with the daemon's defaults filled in.
    pub fn effective_policy(&self, rec: &WorkspaceRecord) -> Policy {
        rec.policy.or(self.settings().defaults)
    }

    /// Marks workspace `id` as used now.
    pub fn touch(&self, id: &WorkspaceId) {
        let mut uses = self.housekeeping.uses.lock().unwrap();
        uses.entry(id.clone())
            .and_modify(|u| u.last = Instant::now())
            .or_insert(Use {
                last: Instant::now(),
                holds: 0,
            });
    }

    /// Keeps workspace `id` in use until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>, id: &WorkspaceId) -> ActivityHold {
        let mut uses = self.housekeeping.uses.lock().unwrap();
        let u = uses.entry(id.clone()).or_insert(Use {
            last: Instant::now(),
            holds: 0,
        });
        u.holds += 1;
        u.last = Instant::now();
        ActivityHold {
            engine: Arc::downgrade(self),
            id: id.clone(),
        }
    }

    /// How long a running workspace has been idle (`None`: in use now).
    pub fn idle_for(&self, rec: &WorkspaceRecord) -> Option<Duration> {
        if rec.state != WorkspaceState::Running {
            return None;
        }
        let idle = {
            let mut uses = self.housekeeping.uses.lock().unwrap();
            let u = uses.entry(rec.id.clone()).or_insert(Use {
                last: Instant::now(),
                holds: 0,
            });
            (u.holds == 0).then(|| u.last.elapsed())
        };
        // Only a workspace nothing holds needs its sessions read.
        idle?;
        if let Ok(sessions) = self.store.list_sessions(Some(&rec.id))
            && sessions.iter().any(|s| mid_turn(s.state))
        {
            self.touch(&rec.id);
            return None;
        }
        idle
    }

    /// Runs [`Engine::housekeep`] every `tick` until the task is dropped.
    pub fn spawn_housekeeper(self: &Arc<Self>, tick: Duration) -> JoinHandle<()> {
        self.every(tick, |me| async move { me.housekeep().await })
    }

    /// One pass: starts the scheduled backups that are due and stops idle workspaces (each
    /// in its own task; a workspace with one under way is skipped).
    pub async fn housekeep(self: &Arc<Self>) {
        let Ok(all) = self.store.list() else { return };
        let settings = self.settings();
        let live: HashSet<_> = all.iter().map(|r| r.id.clone()).collect();
        self.housekeeping
            .uses
            .lock()
            .unwrap()
            .retain(|id, _| live.contains(id));
        for rec in all {
            if rec.state != WorkspaceState::Running || rec.restoring.is_some() {
                continue;
            }
            if self.housekeeping.busy.lock().unwrap().contains(&rec.id) {
                continue;
            }
            let policy = rec.policy.or(settings.defaults);
            let backup_due = match (policy.backup_every(), &settings.repo) {
                (Some(every), Some(_)) => rec
                    .last_backup_at
                    .as_deref()
                    .and_then(since)
                    .is_none_or(|d| d >= every),
                _ => false,
            };
            let idle = match policy.idle_stop() {
                Some(limit) if !rec.persistent => {
                    self.idle_for(&rec).filter(|d| *d >= limit).map(|_| limit)
                }
                _ => None,
            };
            let pause = match policy.idle_pause() {
                Some(limit)
                    if !rec.persistent && idle.is_none() && !self.is_paused_idle(&rec.id) =>
                {
                    self.idle_for(&rec).filter(|d| *d >= limit).map(|_| limit)
                }
                _ => None,
            };
            if !backup_due && idle.is_none() && pause.is_none() {
                continue;
            }
            self.housekeeping
                .busy
                .lock()
                .unwrap()
                .insert(rec.id.clone());
            let me = self.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                if backup_due && let Some(repo) = &settings.repo {
                    me.scheduled_backup(&rec, repo, settings.keep).await;
                }
                if let Some(limit) = idle {
                    me.idle_stop(&rec, limit, &settings).await;
                } else if let Some(limit) = pause {
                    me.freeze_if_idle(&rec.id, limit).await;
                }
                me.housekeeping.busy.lock().unwrap().remove(&rec.id);
            });
        }
    }

    /// A scheduled backup, then the schedule's older backups beyond `keep` go.
    async fn scheduled_backup(
        self: &Arc<Self>,
        rec: &WorkspaceRecord,
        repo: &Repo,
        keep: usize,
    ) -> Option<Manifest> {
        let m = match self.backup(rec.id.as_str(), repo, true, |_| {}).await {
            Ok(m) => m,
            Err(e) => {
                // Not again before the next interval.
                let _ = self.store.set_last_backup(&rec.id, &kraal_store::now());
                self.event(
                    &rec.id,
                    "error",
                    &format!("scheduled backup failed: {}", chain(&e)),
                );
                return None;
            }
        };
        if let Err(e) = self.prune_scheduled(&rec.id, repo, keep).await {
            self.event(
                &rec.id,
                "warn",
                &format!("removing old scheduled backups failed: {}", chain(&e)),
            );
        }
        Some(m)
    }

    async fn prune_scheduled(
        &self,
        id: &WorkspaceId,
        repo: &Repo,
        keep: usize,
    ) -> Result<(), EngineError> {
        let mut mine: Vec<Manifest> = repo
            .list()
            .await?
            .into_iter()
            .filter(|m| {
                crate::BackupMeta::of(m).is_some_and(|w| w.id == id.as_str() && w.scheduled)
            })
            .collect();
        // Oldest first.
        mine.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        let excess = mine.len().saturating_sub(keep.max(1));
        for m in &mine[..excess] {
            repo.delete(&m.id).await?;
            self.event(
                id,
                "info",
                &format!("removed old scheduled backup {}", m.id),
            );
        }
        if excess > 0 {
            repo.gc().await?;
        }
        Ok(())
    }

    /// Stops an idle workspace; with a backup schedule it is backed up first, so the last
    /// state of a stopped workspace is always in the store.
    async fn idle_stop(self: &Arc<Self>, rec: &WorkspaceRecord, limit: Duration, h: &Housekeeping) {
        // Someone may have come back while a backup ran.
        if self.idle_for(rec).is_none_or(|d| d < limit) {
            return;
        }
        let policy = rec.policy.or(h.defaults);
        if policy.backup_every().is_some()
            && let Some(repo) = &h.repo
            && self.scheduled_backup(rec, repo, h.keep).await.is_none()
        {
            self.event(
                &rec.id,
                "warn",
                "stopping without a final backup (the volume is kept)",
            );
        }
        if self.idle_for(rec).is_none_or(|d| d < limit) {
            return;
        }
        let why = format!(
            "idle for {} (no agent turn, terminal or client)",
            human(limit)
        );
        self.event(&rec.id, "info", &format!("{why}; stopping"));
        match self.down(rec.id.as_str()) {
            Ok(p) => {
                if let Ok(Ok(_)) = p.done.await {
                    let _ = self.store.set_state(
                        &rec.id,
                        WorkspaceState::Stopped,
                        Some(&format!("stopped after {why}")),
                    );
                }
            }
            Err(e) => self.event(&rec.id, "warn", &format!("idle stop: {}", chain(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_secs(1800)), "30 min");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
        assert_eq!(human(Duration::from_secs(90)), "90 s");
    }

    #[test]
    fn turns_in_progress_count_as_use() {
        assert!(mid_turn(SessionState::Working));
        assert!(mid_turn(SessionState::NeedsApproval));
        assert!(!mid_turn(SessionState::WaitingForInput));
        assert!(!mid_turn(SessionState::Done));
    }
}
