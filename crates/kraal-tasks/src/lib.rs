//! Tasks on top of workspaces and sessions: a durable queue with limits per daemon and per
//! repository, one workspace and one session per task, best-of-N attempts compared side by
//! side. The engine knows nothing of tasks; this crate only calls its public use cases.
//!
//! Every task row is written by the [`Scheduler`] under one lock, and every row is saved
//! before the engine is asked to act on it; workspace names are derived from the task
//! (`task-<hex>-<try>`), so a daemon killed at any point adopts what the last one made
//! instead of making it twice.

mod finish;
mod pull;
mod queue;
mod sources;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use kraal_core::{AgentKind, TaskSpec, TaskState, validate_task};
use kraal_engine::{Engine, EngineError};
use kraal_store::{StoreError, TaskRecord};
use tokio::sync::Notify;

pub use pull::{Forges, Secrets, branch_of};
pub use queue::workspace_name;
pub use sources::{
    MIN_EVERY_SECS, NewSource, NewSourceKind, SourceInfo, SourceKind, TriggerFired, parse_cron,
    task_from_issue,
};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no task {reference}")]
    NotFound { reference: String },
    #[error("task reference {reference} matches several tasks; give more digits")]
    Ambiguous { reference: String },
    #[error("{0}")]
    Invalid(String),
    #[error("task {id} is {state}; cannot {op}")]
    Conflict {
        id: String,
        state: TaskState,
        op: &'static str,
    },
    /// A trigger or webhook call without the right token (nothing says which part was
    /// wrong).
    #[error("unknown trigger or wrong token")]
    Denied,
    #[error("webhook delivery refused: {0}")]
    BadSignature(String),
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TaskError {
    /// Stable code for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            TaskError::NotFound { .. } => "not_found",
            TaskError::Ambiguous { .. } | TaskError::Invalid(_) => "invalid",
            TaskError::Conflict { .. } => "conflict",
            TaskError::Denied | TaskError::BadSignature(_) => "unauthorized",
            TaskError::Engine(e) => e.code(),
            TaskError::Store(_) => "internal",
        }
    }
}

impl From<EngineError> for TaskError {
    fn from(e: EngineError) -> Self {
        TaskError::Engine(Box::new(e))
    }
}

impl From<kraal_core::TaskError> for TaskError {
    fn from(e: kraal_core::TaskError) -> Self {
        TaskError::Invalid(e.to_string())
    }
}

/// How many tasks may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// In the whole daemon (at least 1).
    pub max_running: usize,
    /// Per repository (`0`: only the daemon's limit applies).
    pub per_repo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_running: 4,
            per_repo: 0,
        }
    }
}

/// A task to queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewTask {
    pub prompt: String,
    pub spec: TaskSpec,
    /// Who made it (`cli`, `web`, `api`, …), shown on the board.
    pub origin: String,
    /// Best-of-N: this many attempts from the same source.
    pub attempts: u32,
    /// Agents the attempts cycle through (empty: the spec's agent for all).
    #[serde(default)]
    pub agents: Vec<AgentKind>,
    /// What made it (`github.com/octo/app#12`); a second task from the same key is not
    /// made.
    #[serde(default)]
    pub source_key: Option<String>,
}

/// The queue, its limits and the loop that drives tasks.
pub struct Scheduler {
    engine: Arc<Engine>,
    limits: Limits,
    /// Every task write happens under it.
    lock: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Tasks with a step in flight outside the lock (session start, check run).
    busy: Mutex<HashSet<String>>,
    /// Git hosts' APIs (issues, pull requests), when the daemon has them.
    forges: OnceLock<Arc<Forges>>,
    /// Wakes the loop that follows pull requests and task sources (a webhook arrived).
    pub(crate) nudge: Notify,
    /// Source records are read, changed and written back under it.
    pub(crate) sources_lock: Mutex<()>,
}

impl Scheduler {
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Arc<Self> {
        Arc::new(Scheduler {
            engine,
            limits: Limits {
                max_running: limits.max_running.max(1),
                per_repo: limits.per_repo,
            },
            lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            busy: Mutex::new(HashSet::new()),
            forges: OnceLock::new(),
            nudge: Notify::new(),
            sources_lock: Mutex::new(()),
        })
    }

    /// Gives the scheduler the git hosts it may call (once, before [`Scheduler::spawn`]).
    pub fn set_forges(&self, forges: Forges) {
        let _ = self.forges.set(Arc::new(forges));
    }

    pub fn forges(&self) -> Result<&Arc<Forges>, TaskError> {
        self.forges
            .get()
            .ok_or_else(|| TaskError::Invalid("this daemon has no git host APIs configured".into()))
    }

    /// Looks at pull requests and task sources now rather than at the next poll.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Queues a task (N attempts of it for best-of-N); they start when slots free up.
    pub async fn add(&self, req: NewTask) -> Result<Vec<TaskRecord>, TaskError> {
        validate_task(&req.prompt, req.attempts, req.spec.check.as_deref())?;
        if let Some(b) = req.spec.budget_usd
            && (!b.is_finite() || b < 0.0)
        {
            return Err(kraal_core::TaskError::Budget { got: b.to_string() }.into());
        }
        if let Some(f) = &req.spec.forge {
            self.forges()?.host(&f.host)?;
            kraal_forge::check_repo(&f.repo).map_err(|e| TaskError::Invalid(e.to_string()))?;
            if f.base.trim().is_empty() {
                return Err(TaskError::Invalid("the task's base branch is empty".into()));
            }
        }
        if req.origin.trim().is_empty() || req.origin.len() > 200 {
            return Err(TaskError::Invalid(
                "task origin must be 1 to 200 bytes".into(),
            ));
        }
        let now = kraal_store::now();
        let group = (req.attempts > 1).then(kraal_core::new_task_id);
        let tasks: Vec<TaskRecord> = (0..req.attempts)
            .map(|i| {
                let mut spec = req.spec.clone();
                if !req.agents.is_empty() {
                    let kind = req.agents[i as usize % req.agents.len()];
                    if kind != spec.agent.agent {
                        spec.agent.agent = kind;
                        // A binary or model named for one agent means nothing to another.
                        spec.agent.binary = None;
                        spec.agent.model = None;
                    }
                }
                TaskRecord {
                    id: kraal_core::new_task_id(),
                    title: kraal_core::task_title(&req.prompt),
                    prompt: req.prompt.clone(),
                    repo: spec.repo_key(),
                    spec,
                    origin: req.origin.clone(),
                    state: TaskState::Queued,
                    reason: None,
                    group_id: group.clone(),
                    attempt: i + 1,
                    tries: 0,
                    workspace_id: None,
                    session_id: None,
                    check_code: None,
                    check_output: None,
                    diff: None,
                    picked: false,
                    pr: None,
                    source_key: req.source_key.clone(),
                    created_at: now.clone(),
                    started_at: None,
                    finished_at: None,
                    updated_at: now.clone(),
                }
            })
            .collect();
        let _g = self.lock.lock().await;
        if let Some(key) = &req.source_key
            && self.engine.store().has_task_from(key)?
        {
            return Ok(Vec::new());
        }
        self.engine.store().save_tasks(&tasks)?;
        drop(_g);
        self.wake.notify_one();
        Ok(tasks)
    }

    /// A task by full id or unique prefix.
    pub fn get(&self, reference: &str) -> Result<TaskRecord, TaskError> {
        let store = self.engine.store();
        if let Some(t) = store.get_task(reference)? {
            return Ok(t);
        }
        let missing = || TaskError::NotFound {
            reference: reference.to_owned(),
        };
        if !reference.starts_with("tk-") || reference.len() < 5 {
            return Err(missing());
        }
        let ids = store.task_ids_with_prefix(reference, 2)?;
        match ids.as_slice() {
            [one] => store.get_task(one)?.ok_or_else(missing),
            [] => Err(missing()),
            _ => Err(TaskError::Ambiguous {
                reference: reference.to_owned(),
            }),
        }
    }

    /// Tasks in any of `states` (all when empty), oldest first.
    pub fn list(&self, states: &[TaskState]) -> Result<Vec<TaskRecord>, TaskError> {
        Ok(self.engine.store().list_tasks(states)?)
    }

    /// The attempts of the best-of-N task `reference` belongs to (or just it).
    pub fn attempts(&self, reference: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let t = self.get(reference)?;
        match &t.group_id {
            Some(g) => Ok(self.engine.store().group_tasks(g)?),
            None => Ok(vec![t]),
        }
    }

    /// Stops a queued or running task: it leaves the queue, its agent is stopped and its
    /// workspace brought down (kept, for a look at what was done).
    pub async fn cancel(&self, reference: &str) -> Result<TaskRecord, TaskError> {
        let _g = self.lock.lock().await;
        let mut t = self.get(reference)?;
        if !matches!(t.state, TaskState::Queued | TaskState::Running) {
            return Err(TaskError::Conflict {
                id: t.id,
                state: t.state,
                op: "cancel it",
            });
        }
        let was_running = t.state == TaskState::Running;
        self.finish_as(&mut t, TaskState::Cancelled, Some("cancelled".into()))?;
        drop(_g);
        if was_running {
            self.bring_down(&t).await;
        }
        self.wake.notify_one();
        Ok(t)
    }

    /// Queues a failed or cancelled task again, in a fresh workspace (the old one stays
    /// until removed).
    pub async fn retry(&self, reference: &str) -> Result<TaskRecord, TaskError> {
        let _g = self.lock.lock().await;
        let mut t = self.get(reference)?;
        if !matches!(t.state, TaskState::Failed | TaskState::Cancelled) {
            return Err(TaskError::Conflict {
                id: t.id,
                state: t.state,
                op: "retry it",
            });
        }
        t.state = TaskState::Queued;
        t.reason = None;
        t.workspace_id = None;
        t.session_id = None;
        t.check_code = None;
        t.check_output = None;
        t.diff = None;
        t.started_at = None;
        t.finished_at = None;
        t.updated_at = kraal_store::now();
        self.engine.store().save_tasks(std::slice::from_ref(&t))?;
        drop(_g);
        self.wake.notify_one();
        Ok(t)
    }

    /// Accepts a reviewed task.
    pub async fn done(&self, reference: &str) -> Result<TaskRecord, TaskError> {
        let _g = self.lock.lock().await;
        let mut t = self.get(reference)?;
        if t.state != TaskState::NeedsReview {
            return Err(TaskError::Conflict {
                id: t.id,
                state: t.state,
                op: "mark it done (only a task waiting for review can be)",
            });
        }
        t.state = TaskState::Done;
        t.updated_at = kraal_store::now();
        self.engine.store().save_tasks(std::slice::from_ref(&t))?;
        Ok(t)
    }

    /// Picks one attempt of a best-of-N task: it is done, every other attempt is cancelled
    /// (if still going) and its workspace removed.
    pub async fn pick(&self, reference: &str) -> Result<Vec<TaskRecord>, TaskError> {
        let _g = self.lock.lock().await;
        let chosen = self.get(reference)?;
        if chosen.state != TaskState::NeedsReview {
            return Err(TaskError::Conflict {
                id: chosen.id,
                state: chosen.state,
                op: "pick it (only an attempt waiting for review can be picked)",
            });
        }
        let Some(group) = chosen.group_id.clone() else {
            return Err(TaskError::Invalid(format!(
                "task {} has no other attempts to pick from; use `kraal task done`",
                chosen.id
            )));
        };
        let mut all = self.engine.store().group_tasks(&group)?;
        let now = kraal_store::now();
        let mut losers = Vec::new();
        for t in &mut all {
            if t.id == chosen.id {
                t.state = TaskState::Done;
                t.picked = true;
            } else {
                if !t.state.is_final() {
                    t.state = TaskState::Cancelled;
                    t.finished_at.get_or_insert_with(|| now.clone());
                }
                t.reason = Some(format!("attempt {} was picked", chosen.attempt));
                losers.push(t.clone());
            }
            t.updated_at = now.clone();
        }
        self.engine.store().save_tasks(&all)?;
        drop(_g);
        for t in &losers {
            if let Some(ws) = &t.workspace_id {
                match self.engine.remove(ws) {
                    Ok(_) | Err(EngineError::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(task = %t.id, "removing workspace {ws}: {e}"),
                }
            }
        }
        self.wake.notify_one();
        Ok(all)
    }

    /// Marks a task final and saves it (caller holds the lock).
    fn finish_as(
        &self,
        t: &mut TaskRecord,
        state: TaskState,
        reason: Option<String>,
    ) -> Result<(), TaskError> {
        let now = kraal_store::now();
        t.state = state;
        t.reason = reason;
        t.finished_at = Some(now.clone());
        t.updated_at = now;
        self.engine.store().save_tasks(std::slice::from_ref(t))?;
        Ok(())
    }

    /// Stops a task's agent and brings its workspace down (best effort: it is logged).
    async fn bring_down(&self, t: &TaskRecord) {
        if let Some(s) = &t.session_id
            && let Err(e) = self.engine.stop_session(s).await
        {
            tracing::debug!(task = %t.id, "stopping session {s}: {e}");
        }
        if let Some(ws) = &t.workspace_id
            && let Err(e) = self.engine.down(ws)
        {
            tracing::debug!(task = %t.id, "stopping workspace {ws}: {e}");
        }
    }
}

/// Seconds from a task's start to the end of its turn (to now while it runs).
pub fn duration_secs(t: &TaskRecord) -> Option<f64> {
    use time::format_description::well_known::Rfc3339;
    let parse = |s: &str| time::OffsetDateTime::parse(s, &Rfc3339).ok();
    let start = parse(t.started_at.as_deref()?)?;
    let end = match &t.finished_at {
        Some(f) => parse(f)?,
        None if t.state == TaskState::Running => time::OffsetDateTime::now_utc(),
        None => return None,
    };
    Some((end - start).as_seconds_f64().max(0.0))
}
