//! The scheduler's loop: admits queued tasks while the limits allow, and moves each running
//! task one step along (workspace → session → turn ended → review) from what the engine
//! reports. Steps that wait on a sandbox run outside the lock and write back under it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kraal_core::{AgentEvent, SessionState, TaskState, WorkspaceState};
use kraal_engine::{CreateRequest, EngineError, NewSession, chain};
use kraal_store::TaskRecord;
use tokio::task::JoinHandle;

use crate::{Scheduler, TaskError};

/// How often the loop looks even when nothing woke it (workspace state changes are not
/// announced).
const TICK: Duration = Duration::from_millis(500);
/// How long an agent whose input was closed gets to exit before its workspace stops.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The workspace a task's `try` runs in: derived from the task, so a restarted daemon
/// finds the one the last process made.
pub fn workspace_name(t: &TaskRecord) -> String {
    let hex = t.id.strip_prefix("tk-").unwrap_or(&t.id);
    format!("task-{hex}-{}", t.tries.max(1))
}

impl Scheduler {
    /// Runs the loops until the runtime stops: the queue's, and the one for task sources
    /// and pull requests (schedules every second, git hosts at their poll interval or when
    /// a webhook nudges it).
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_forge: Option<tokio::time::Instant> = None;
            loop {
                let poll = me.forges.get().map_or(Duration::from_secs(60), |f| f.poll);
                let forge_due = last_forge.is_none_or(|l| l.elapsed() >= poll);
                me.poll_sources(forge_due).await;
                if forge_due {
                    me.watch_pulls().await;
                    last_forge = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    _ = me.nudge.notified() => last_forge = None,
                    _ = tokio::time::sleep(Duration::from_secs(1).min(poll)) => {}
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = Some(me.engine.subscribe_changes());
            loop {
                me.pass().await;
                tokio::select! {
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                    r = async {
                        match changes.as_mut() {
                            Some(rx) => rx.recv().await.map(|_| ()),
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                            changes = None;
                        }
                    }
                }
            }
        })
    }

    /// One look at every live task: running ones move on, queued ones start while there
    /// is room.
    pub async fn pass(self: &Arc<Self>) {
        let _g = self.lock.lock().await;
        let tasks = match self
            .engine
            .store()
            .list_tasks(&[TaskState::Queued, TaskState::Running])
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("reading the task queue: {}", chain(&e));
                return;
            }
        };
        let mut running = 0usize;
        let mut per_repo: HashMap<String, usize> = HashMap::new();
        for mut t in tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .cloned()
        {
            running += 1;
            *per_repo.entry(t.repo.clone()).or_default() += 1;
            if let Err(e) = self.drive(&mut t) {
                tracing::warn!(task = %t.id, "task step: {}", chain(&e));
            }
        }
        for mut t in tasks.into_iter().filter(|t| t.state == TaskState::Queued) {
            if running >= self.limits.max_running {
                break;
            }
            let repo_count = per_repo.entry(t.repo.clone()).or_default();
            if self.limits.per_repo > 0 && *repo_count >= self.limits.per_repo {
                continue;
            }
            let now = kraal_store::now();
            t.state = TaskState::Running;
            t.tries += 1;
            t.started_at = Some(now.clone());
            t.updated_at = now;
            // Saved before the engine acts, so a crash here starts it once, not twice.
            if let Err(e) = self.engine.store().save_tasks(std::slice::from_ref(&t)) {
                tracing::error!(task = %t.id, "starting: {}", chain(&e));
                return;
            }
            running += 1;
            *repo_count += 1;
            if let Err(e) = self.drive(&mut t) {
                tracing::warn!(task = %t.id, "task step: {}", chain(&e));
            }
        }
    }

    /// Moves one running task a step (the caller holds the lock).
    fn drive(self: &Arc<Self>, t: &mut TaskRecord) -> Result<(), TaskError> {
        if self.busy.lock().unwrap().contains(&t.id) {
            return Ok(());
        }
        let name = workspace_name(t);
        let found = match self
            .engine
            .resolve(t.workspace_id.as_deref().unwrap_or(&name))
        {
            Ok(w) => Some(w),
            Err(EngineError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let ws = match found {
            Some(w) => w,
            None if t.workspace_id.is_some() => {
                return self.finish_as(
                    t,
                    TaskState::Failed,
                    Some("its workspace was removed".into()),
                );
            }
            None => {
                let s = &t.spec;
                let p = match self.engine.create(CreateRequest {
                    name: Some(name),
                    source: s.source.clone(),
                    resources: s.resources,
                    image: s.image.clone(),
                    persistent: false,
                    mounts: Vec::new(),
                    egress: s.egress.clone(),
                    git: task_git(s),
                    restoring: None,
                    policy: s.policy,
                }) {
                    Ok(p) => p,
                    Err(e @ (EngineError::Invalid(_) | EngineError::InvalidName(_))) => {
                        return self.finish_as(
                            t,
                            TaskState::Failed,
                            Some(format!("creating its workspace: {}", chain(&e))),
                        );
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some(usd) = s.budget_usd {
                    // Before the agent starts, so its first request already counts.
                    let scope = format!("workspace:{}", p.record.id);
                    self.engine.store().set_budget(&scope, Some(usd), None)?;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = p.done.await;
                    me.wake.notify_one();
                });
                p.record
            }
        };
        if t.workspace_id.as_deref() != Some(ws.id.as_str()) {
            t.workspace_id = Some(ws.id.to_string());
            t.updated_at = kraal_store::now();
            self.engine.store().save_tasks(std::slice::from_ref(t))?;
        }
        match ws.state {
            WorkspaceState::Failed => {
                let why = ws.reason.as_deref().unwrap_or("no reason given");
                return self.finish_as(
                    t,
                    TaskState::Failed,
                    Some(format!("workspace {} failed: {why}", ws.name)),
                );
            }
            // Stopped under a running task (idle stop, a restart, `kraal down`): its work
            // is not finished, so it comes back.
            WorkspaceState::Stopped => {
                self.engine.up(ws.id.as_str())?;
                return Ok(());
            }
            WorkspaceState::Running => {}
            _ => return Ok(()),
        }
        let session = match &t.session_id {
            Some(id) => self.engine.session(id)?,
            None => {
                // A session the last daemon started before it could note it is adopted.
                match self
                    .engine
                    .sessions(Some(ws.id.as_str()))?
                    .into_iter()
                    .next()
                {
                    Some(s) => {
                        t.session_id = Some(s.id.to_string());
                        t.updated_at = kraal_store::now();
                        self.engine.store().save_tasks(std::slice::from_ref(t))?;
                        s
                    }
                    None => {
                        self.start_session(t.clone(), ws.id.to_string());
                        return Ok(());
                    }
                }
            }
        };
        match session.state {
            // Feedback on its pull request waits for the agent (whose process ended when
            // the workspace stopped for review: the message relaunches it).
            _ if t.pr.as_ref().is_some_and(|p| p.pending_message.is_some()) => {
                self.deliver(t.clone(), session.id.to_string());
                Ok(())
            }
            SessionState::Failed => {
                let why = session.reason.as_deref().unwrap_or("no reason given");
                self.finish_as(
                    t,
                    TaskState::Failed,
                    Some(format!("session {} failed: {why}", session.id)),
                )
            }
            SessionState::WaitingForInput | SessionState::Done
                if self.worked(&session.id, t.pr.as_ref().map_or(0, |p| p.after_seq))? =>
            {
                self.review(t.clone(), ws.id.to_string(), session.id.to_string());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether a session has run a turn after event `after` (its log holds a working state).
    fn worked(&self, id: &kraal_core::SessionId, mut after: u64) -> Result<bool, TaskError> {
        loop {
            let page = self.engine.session_events(id, after, 512)?;
            let Some(last) = page.last() else {
                return Ok(false);
            };
            after = last.seq;
            if page.iter().any(|e| {
                matches!(
                    e.event,
                    AgentEvent::State {
                        state: SessionState::Working | SessionState::NeedsApproval,
                        ..
                    }
                )
            }) {
                return Ok(true);
            }
        }
    }

    /// Marks a task busy and runs `step` outside the lock; it is not driven meanwhile.
    pub(crate) fn off_lock<F>(self: &Arc<Self>, id: String, step: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.busy.lock().unwrap().insert(id.clone()) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            step.await;
            me.busy.lock().unwrap().remove(&id);
            me.wake.notify_one();
        });
    }

    /// Starts the task's agent with its prompt, then notes the session.
    fn start_session(self: &Arc<Self>, t: TaskRecord, ws: String) {
        let me = self.clone();
        self.off_lock(t.id.clone(), async move {
            // A task on a git host fetches its checkout first, through the git gateway.
            if let Err(e) = crate::pull::checkout(&me.engine, &ws, &t).await {
                let _g = me.lock.lock().await;
                if let Ok(Some(mut now)) = me.engine.store().get_task(&t.id)
                    && now.state == TaskState::Running
                    && now.tries == t.tries
                {
                    let _ = me.finish_as(&mut now, TaskState::Failed, Some(e));
                }
                return;
            }
            let r = me
                .engine
                .create_session(
                    &ws,
                    NewSession {
                        spec: t.spec.agent.clone(),
                        message: Some(t.prompt.clone()),
                    },
                )
                .await;
            let _g = me.lock.lock().await;
            let Ok(Some(mut now)) = me.engine.store().get_task(&t.id) else {
                return;
            };
            let current = now.state == TaskState::Running && now.tries == t.tries;
            match r {
                Ok(s) if current => {
                    now.session_id = Some(s.id.to_string());
                    now.updated_at = kraal_store::now();
                    if let Err(e) = me.engine.store().save_tasks(std::slice::from_ref(&now)) {
                        tracing::error!(task = %t.id, "noting session {}: {}", s.id, chain(&e));
                    }
                }
                Ok(s) => {
                    // Cancelled while the session started.
                    drop(_g);
                    let _ = me.engine.stop_session(s.id.as_str()).await;
                }
                Err(e) if current => {
                    let _ = me.finish_as(
                        &mut now,
                        TaskState::Failed,
                        Some(format!("starting the agent: {}", chain(&e))),
                    );
                }
                Err(_) => {}
            }
        });
    }

    /// The turn ended: counts the changes, runs the check, then hands the task to review
    /// and stops its workspace.
    fn review(self: &Arc<Self>, t: TaskRecord, ws: String, session: String) {
        let me = self.clone();
        self.off_lock(t.id.clone(), async move {
            let outcome = crate::finish::inspect(
                &me.engine,
                &ws,
                t.spec.check.as_deref(),
                t.spec.checklist.as_ref(),
            )
            .await;
            // A pull request task pushes its branch and opens (or updates) its request.
            let published = match (&t.spec.forge, me.forges.get()) {
                (Some(f), Some(forges)) if f.pull_request => {
                    Some(crate::pull::publish(&me.engine, forges, &ws, &t).await)
                }
                (Some(f), None) if f.pull_request => {
                    Some(Err("this daemon has no git host APIs configured".to_owned()))
                }
                _ => None,
            };
            let _g = me.lock.lock().await;
            let Ok(Some(mut now)) = me.engine.store().get_task(&t.id) else {
                return;
            };
            if now.state != TaskState::Running || now.tries != t.tries {
                return;
            }
            now.diff = outcome.diff;
            now.check_code = outcome.check.as_ref().map(|c| c.0);
            now.check_output = outcome.check.map(|c| c.1);
            let mut reason = outcome
                .note
                .unwrap_or_else(|| format!("session {session} finished its turn"));
            match published {
                Some(Ok(Some(pr))) => {
                    reason = format!(
                        "pushed {} ({}) to pull request #{}; watching its checks and comments",
                        pr.branch,
                        &pr.head[..pr.head.len().min(12)],
                        pr.number
                    );
                    now.pr = Some(pr);
                }
                Some(Ok(None)) => {
                    reason = "the agent changed nothing: no pull request".into();
                }
                Some(Err(e)) => reason = format!("the pull request could not be updated: {e}"),
                None => {}
            }
            if let Err(e) = me.finish_as(&mut now, TaskState::NeedsReview, Some(reason)) {
                tracing::error!(task = %t.id, "handing to review: {}", chain(&e));
                return;
            }
            drop(_g);
            // A watched pull request's agent gets its input closed first so it exits on its
            // own (its session ends done, not killed); the feedback relaunches it.
            let watched = now.pr.as_ref().is_some_and(|p| !p.status.is_final());
            if watched && me.engine.stop_session(&session).await.is_ok() {
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                while tokio::time::Instant::now() < deadline {
                    match me.engine.session(&session) {
                        Ok(s) if s.state.is_final() => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => break,
                    }
                }
            }
            if let Err(e) = me.engine.down(&ws) {
                tracing::warn!(task = %t.id, "stopping workspace {ws}: {}", chain(&e));
            }
        });
    }
}

/// The git credentials of a task's workspace: a task on a git host reaches its repository
/// with the host's credential, also when the task (or the source that made it) was stored
/// before credentials listed their repositories.
fn task_git(s: &kraal_core::TaskSpec) -> Vec<kraal_core::GitCredential> {
    let mut git = s.git.clone();
    if let Some(f) = &s.forge {
        f.scope_git(&mut git);
    }
    git
}
