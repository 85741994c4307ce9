//! Task records: the queue the task scheduler works from. Rows are written whole; the
//! scheduler is their one writer, so a row is never half-updated by two parties.

use kraal_core::{TaskSpec, TaskState};
use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// One task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub title: String,
    pub prompt: String,
    pub spec: TaskSpec,
    pub repo: String,
    pub origin: String,
    pub state: TaskState,
    pub reason: Option<String>,
    pub group_id: Option<String>,
    pub attempt: u32,
    pub tries: u32,
    pub workspace_id: Option<String>,
    pub session_id: Option<String>,
    pub check_code: Option<i32>,
    pub check_output: Option<String>,
    /// Files changed, lines added and removed (counted when the turn ended).
    pub diff: Option<(u32, u32, u32)>,
    pub picked: bool,
    /// The pull request kraal opened for it.
    pub pr: Option<kraal_core::PullState>,
    /// What made it (`github.com/octo/app#12`): one task per key and attempt.
    pub source_key: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
}

const COLS: &str = "id, title, prompt, spec, repo, origin, state, reason, group_id, attempt, tries, workspace_id, session_id, check_code, check_output, diff_files, diff_added, diff_removed, picked, created_at, started_at, finished_at, updated_at, pr, source_key";

/// `col = excluded.col` for every column but the id.
fn update_set() -> String {
    COLS.split(", ")
        .skip(1)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TaskRecord, StoreError>> {
    let id: String = r.get(0)?;
    let spec: String = r.get(3)?;
    let state: String = r.get(6)?;
    let corrupt = |what: String| StoreError::Corrupt {
        id: id.clone(),
        what,
    };
    let spec = match serde_json::from_str(&spec) {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(format!("task spec: {e}")))),
    };
    let Some(state) = TaskState::parse(&state) else {
        return Ok(Err(corrupt(format!("task state {state:?}"))));
    };
    let pr = match r.get::<_, Option<String>>(23)? {
        None => None,
        Some(j) => match serde_json::from_str(&j) {
            Ok(p) => Some(p),
            Err(e) => return Ok(Err(corrupt(format!("task pull request: {e}")))),
        },
    };
    Ok(Ok(TaskRecord {
        title: r.get(1)?,
        prompt: r.get(2)?,
        spec,
        repo: r.get(4)?,
        origin: r.get(5)?,
        state,
        reason: r.get(7)?,
        group_id: r.get(8)?,
        attempt: r.get(9)?,
        tries: r.get(10)?,
        workspace_id: r.get(11)?,
        session_id: r.get(12)?,
        check_code: r.get(13)?,
        check_output: r.get(14)?,
        diff: match (r.get(15)?, r.get(16)?, r.get(17)?) {
            (Some(f), Some(a), Some(d)) => Some((f, a, d)),
            _ => None,
        },
        picked: r.get::<_, i64>(18)? != 0,
        created_at: r.get(19)?,
        started_at: r.get(20)?,
        finished_at: r.get(21)?,
        updated_at: r.get(22)?,
        pr,
        source_key: r.get(24)?,
        id,
    }))
}

impl Store {
    /// Writes tasks whole (insert or replace), all in one transaction.
    pub fn save_tasks(&self, tasks: &[TaskRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for t in tasks {
                let spec = serde_json::to_string(&t.spec).map_err(|e| StoreError::Corrupt {
                    id: t.id.clone(),
                    what: format!("task spec: {e}"),
                })?;
                let pr = t
                    .pr
                    .as_ref()
                    .map(|p| serde_json::to_string(p).unwrap_or_default());
                tx.execute(
                    &format!(
                        // An upsert on the id only: `OR REPLACE` would delete another task
                        // whose source key collides instead of refusing the write.
                        "INSERT INTO tasks ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25) ON CONFLICT(id) DO UPDATE SET {}",
                        update_set()
                    ),
                    params![
                        t.id,
                        t.title,
                        t.prompt,
                        spec,
                        t.repo,
                        t.origin,
                        t.state.as_str(),
                        t.reason,
                        t.group_id,
                        t.attempt,
                        t.tries,
                        t.workspace_id,
                        t.session_id,
                        t.check_code,
                        t.check_output,
                        t.diff.map(|d| d.0),
                        t.diff.map(|d| d.1),
                        t.diff.map(|d| d.2),
                        t.picked as i64,
                        t.created_at,
                        t.started_at,
                        t.finished_at,
                        t.updated_at,
                        pr,
                        t.source_key,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLS} FROM tasks WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?
            .transpose()
        })
    }

    /// Ids of tasks starting with `prefix` (at most `limit`).
    pub fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT id FROM tasks WHERE substr(id, 1, length(?1)) = ?1 LIMIT ?2")?;
            let ids = st
                .query_map(params![prefix, limit as i64], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
    }

    /// Tasks in any of `states` (all when empty), oldest first.
    pub fn list_tasks(&self, states: &[TaskState]) -> Result<Vec<TaskRecord>, StoreError> {
        // Filtered in SQL: the scheduler asks for the live ones twice a second, and done
        // tasks (with their prompts) pile up.
        let filter = if states.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!("WHERE state IN ({})", list.join(", "))
        };
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM tasks {filter} ORDER BY created_at, attempt, id"
            ))?;
            let all = st
                .query_map([], row)?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
    }

    /// Whether a task was already made from `key` (an issue, …).
    pub fn has_task_from(&self, key: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT 1 FROM tasks WHERE source_key = ?1 LIMIT 1",
                [key],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
    }

    /// Writes a task source's body (insert or replace).
    pub fn save_task_source(&self, id: &str, kind: &str, body: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO task_sources (id, kind, body, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![id, kind, body, crate::now()],
            )?;
            Ok(())
        })
    }

    /// Every task source: id, kind, body, oldest first.
    pub fn task_sources(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT id, kind, body FROM task_sources ORDER BY created_at, id")?;
            let all = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
    }

    pub fn delete_task_source(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM task_sources WHERE id = ?1", [id])? > 0))
    }

    /// The attempts of one best-of-N task, in attempt order.
    pub fn group_tasks(&self, group: &str) -> Result<Vec<TaskRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM tasks WHERE group_id = ?1 ORDER BY attempt, id"
            ))?;
            let all = st
                .query_map([group], row)?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraal_core::{AgentKind, AgentSpec, Source};

    fn task(id: &str, state: TaskState, group: Option<&str>, attempt: u32) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            title: "t".into(),
            prompt: "do it".into(),
            spec: TaskSpec {
                source: Source::Empty,
                resources: None,
                image: None,
                egress: None,
                git: vec![],
                policy: Default::default(),
                agent: AgentSpec::new(AgentKind::Claude),
                check: Some("true".into()),
                budget_usd: None,
                checklist: None,
                forge: None,
            },
            repo: "(empty)".into(),
            origin: "cli".into(),
            state,
            reason: None,
            group_id: group.map(Into::into),
            attempt,
            tries: 0,
            workspace_id: None,
            session_id: None,
            check_code: None,
            check_output: None,
            diff: None,
            picked: false,
            pr: None,
            source_key: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn tasks_are_written_whole_and_read_back_by_state_group_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = task("tk-00000000000a", TaskState::Queued, None, 1);
        let mut b = task("tk-00000000000b", TaskState::Running, Some("g1"), 2);
        let c = task("tk-00000000000c", TaskState::Failed, Some("g1"), 1);
        s.save_tasks(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(s.get_task(&a.id).unwrap().unwrap(), a);
        assert_eq!(s.list_tasks(&[]).unwrap().len(), 3);
        let live = s
            .list_tasks(&[TaskState::Queued, TaskState::Running])
            .unwrap();
        assert_eq!(
            live.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            [a.id.as_str(), b.id.as_str()]
        );
        let g = s.group_tasks("g1").unwrap();
        assert_eq!(g[0].id, c.id);
        assert_eq!(g[1].id, b.id);
        b.state = TaskState::NeedsReview;
        b.workspace_id = Some("ws-1".into());
        b.check_code = Some(1);
        b.diff = Some((2, 10, 3));
        s.save_tasks(std::slice::from_ref(&b)).unwrap();
        assert_eq!(s.get_task(&b.id).unwrap().unwrap(), b);
        assert_eq!(s.task_ids_with_prefix("tk-0000", 10).unwrap().len(), 3);
        assert!(s.get_task("tk-missing").unwrap().is_none());
        // A pull request and where the task came from survive the round trip.
        b.source_key = Some("github.com/o/r#4".into());
        b.pr = Some(kraal_core::PullState {
            number: 9,
            url: "https://github.com/o/r/pull/9".into(),
            branch: "kraal/x".into(),
            head: "abc".into(),
            status: kraal_core::PullStatus::Failing,
            rounds: 1,
            pushes: 2,
            seen_comment: 77,
            reported: vec!["abc".into()],
            pending_message: None,
            after_seq: 12,
        });
        s.save_tasks(std::slice::from_ref(&b)).unwrap();
        assert_eq!(s.get_task(&b.id).unwrap().unwrap(), b);
        assert!(s.has_task_from("github.com/o/r#4").unwrap());
        assert!(!s.has_task_from("github.com/o/r#5").unwrap());
        // The same key and attempt cannot be stored twice.
        let mut dup = task("tk-00000000000d", TaskState::Queued, Some("g1"), 2);
        dup.source_key = b.source_key.clone();
        assert!(s.save_tasks(&[dup]).is_err());
    }

    #[test]
    fn task_sources_are_kept_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.save_task_source("src-1", "schedule", "{\"a\":1}")
            .unwrap();
        s.save_task_source("src-1", "schedule", "{\"a\":2}")
            .unwrap();
        s.save_task_source("src-2", "trigger", "{}").unwrap();
        let all = s.task_sources().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0],
            ("src-1".into(), "schedule".into(), "{\"a\":2}".into())
        );
        assert!(s.delete_task_source("src-1").unwrap());
        assert!(!s.delete_task_source("src-1").unwrap());
        assert_eq!(s.task_sources().unwrap().len(), 1);
    }

    #[test]
    fn a_row_with_an_unknown_state_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = task("tk-00000000000a", TaskState::Queued, None, 1);
        s.save_tasks(std::slice::from_ref(&a)).unwrap();
        s.with(|c| {
            c.execute("UPDATE tasks SET state = 'bogus'", [])?;
            Ok(())
        })
        .unwrap();
        let e = s.get_task(&a.id).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
