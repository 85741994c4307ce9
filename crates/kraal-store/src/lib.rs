//! The daemon's durable state in SQLite: workspace records (desired and observed state,
//! guest credentials) and a per-workspace lifecycle log. Schema changes are migrations
//! applied at open; the database is the source of truth the reconciler works from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kraal_core::{
    BackendKind, DesiredState, Resources, Source, WorkspaceId, WorkspaceName, WorkspaceState,
};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

mod budgets;
mod security;
mod sessions;
mod supervision;
mod tasks;
mod web;
pub use budgets::{BudgetRecord, SpendTotal, utc_day};
pub use security::{
    ANTHROPIC_KEY_SECRET, AuditRecord, CLAUDE_LOGIN_SECRET, CLAUDE_TOKEN_SECRET, ClaudeLogin,
    EgressLogRecord, GEMINI_KEY_SECRET, OPENAI_KEY_SECRET, SecretInfo, SecretKey,
};
pub use sessions::SessionRecord;
pub use supervision::{ActionUse, CommentRecord, PushSubscriptionRecord};
pub use tasks::TaskRecord;
pub use web::{TemplateRecord, TokenRecord, WebSession, hash_secret};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migrating the database at {path} failed")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("a workspace named {name} already exists")]
    NameTaken { name: String },
    #[error("database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt row for {id}: {what}")]
    Corrupt { id: String, what: String },
    #[error("secret key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("secret {name} cannot be decrypted (wrong key file, or the row was altered)")]
    Crypto { name: String },
    #[error("a token named {name} already exists")]
    TokenNameTaken { name: String },
    #[error("a template named {name} already exists")]
    TemplateNameTaken { name: String },
    #[error("event log of session {session} has a gap: expected event {expected}, got {got}")]
    Gap {
        session: String,
        expected: u64,
        got: u64,
    },
}

/// One workspace as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    pub name: WorkspaceName,
    pub backend: BackendKind,
    pub source: Source,
    pub resources: Resources,
    pub state: WorkspaceState,
    pub desired: DesiredState,
    pub reason: Option<String>,
    pub guest_token: String,
    pub guest_addr: Option<String>,
    pub persistent: bool,
    pub created_at: String,
    pub updated_at: String,
    /// The image it was created from (`None`: the backend's default).
    pub image: Option<String>,
    /// Host directories mounted into it.
    pub mounts: Vec<kraal_core::Mount>,
    /// Its egress allowlist.
    pub egress: Vec<kraal_core::EgressRule>,
    /// Git hosts whose credentials the git gateway adds.
    pub git: Vec<kraal_core::GitCredential>,
    /// The backup it is being restored from, until that is complete.
    pub restoring: Option<String>,
    /// Idle stop and backup interval (unset: the daemon's defaults).
    pub policy: kraal_core::Policy,
    /// When it was last backed up.
    pub last_backup_at: Option<String>,
}

/// One line of a workspace's lifecycle log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub at: String,
    pub level: String,
    pub message: String,
}

/// Handle to the database; cheap to clone. Queries are short, so callers run them inline.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// A connection of its own for WAL checkpoints (see [`Store::defer_checkpoints`]).
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    /// A passive checkpoint: copies what no reader still needs back into the database
    /// file, never waiting for readers or writers. Returns the WAL's size in frames and how
    /// many of them are now in the database file.
    pub fn passive(&self) -> Result<(i64, i64), StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?)
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/0001_workspaces.sql")),
        M::up(include_str!("../migrations/0002_sessions.sql")),
        M::up(include_str!("../migrations/0003_web.sql")),
        M::up(include_str!("../migrations/0004_images.sql")),
        M::up(include_str!("../migrations/0005_mounts.sql")),
        M::up(include_str!("../migrations/0006_security.sql")),
        M::up(include_str!("../migrations/0007_restoring.sql")),
        M::up(include_str!("../migrations/0008_policy.sql")),
        M::up(include_str!("../migrations/0009_supervision.sql")),
        M::up(include_str!("../migrations/0010_tasks.sql")),
        M::up(include_str!("../migrations/0011_budgets.sql")),
        M::up(include_str!("../migrations/0012_task_sources.sql")),
    ])
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

const COLS: &str = "id, name, backend, source, resources, state, desired, reason, guest_token, guest_addr, persistent, created_at, updated_at, image, mounts, egress, git, restoring, policy, last_backup_at";

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate {
                path: ":memory:".into(),
                source,
            })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Hands WAL checkpoints to the caller: SQLite no longer checkpoints inside whichever
    /// commit crosses the threshold (a request's, say). The returned [`Checkpointer`] is a
    /// second connection to the same file, so its checkpoints run beside the writers
    /// instead of holding the connection they share. `None` for an in-memory store (no WAL).
    pub fn defer_checkpoints(&self) -> Result<Option<Checkpointer>, StoreError> {
        let path = self.with(|c| Ok(c.path().filter(|p| !p.is_empty()).map(PathBuf::from)))?;
        let Some(path) = path else {
            return Ok(None);
        };
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        self.with(|c| Ok(c.pragma_update(None, "wal_autocheckpoint", 0)?))?;
        Ok(Some(Checkpointer { conn }))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    pub fn insert(&self, w: &WorkspaceRecord) -> Result<(), StoreError> {
        self.with(|c| {
            let r = c.execute(
                &format!("INSERT INTO workspaces ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
                params![
                    w.id.as_str(),
                    w.name.as_str(),
                    w.backend.as_str(),
                    serde_json::to_string(&w.source).expect("serializes"),
                    serde_json::to_string(&w.resources).expect("serializes"),
                    w.state.as_str(),
                    w.desired.as_str(),
                    w.reason,
                    w.guest_token,
                    w.guest_addr,
                    w.persistent,
                    w.created_at,
                    w.updated_at,
                    w.image,
                    serde_json::to_string(&w.mounts).expect("serializes"),
                    serde_json::to_string(&w.egress).expect("serializes"),
                    serde_json::to_string(&w.git).expect("serializes"),
                    w.restoring,
                    serde_json::to_string(&w.policy).expect("serializes"),
                    w.last_backup_at,
                ],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("workspaces.name") =>
                {
                    Err(StoreError::NameTaken { name: w.name.to_string() })
                }
                r => r.map(|_| ()).map_err(Into::into),
            }
        })
    }

    pub fn get(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.query_one("id = ?1", id.as_str())
    }

    pub fn get_by_name(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.query_one("name = ?1", name)
    }

    /// Looks a workspace up by id or by name.
    pub fn resolve(&self, reference: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        match WorkspaceId::parse(reference) {
            Ok(id) => self.get(&id),
            Err(_) => self.get_by_name(reference),
        }
    }

    fn query_one(&self, cond: &str, arg: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.with(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {COLS} FROM workspaces WHERE {cond}"),
                    [arg],
                    raw_row,
                )
                .optional()?;
            row.map(decode).transpose()
        })
    }

    pub fn list(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLS} FROM workspaces ORDER BY created_at, name"
            ))?;
            let rows = stmt
                .query_map([], raw_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode).collect()
        })
    }

    /// How many workspaces are in each state (a state with none is absent).
    pub fn workspace_counts(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.counts_by_state("workspaces")
    }

    /// How many sessions are in each state (a state with none is absent).
    pub fn session_counts(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.counts_by_state("sessions")
    }

    fn counts_by_state(
        &self,
        table: &'static str,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT state, COUNT(*) FROM {table} GROUP BY state"
            ))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub fn set_state(
        &self,
        id: &WorkspaceId,
        state: WorkspaceState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id.as_str(), state.as_str(), reason, now()],
            )?;
            Ok(())
        })
    }

    /// Writes a consistent copy of the whole database to `path` (which must not exist),
    /// while it stays in use.
    pub fn snapshot(&self, path: &Path) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("VACUUM INTO ?1", [path.to_string_lossy()])?;
            Ok(())
        })
    }

    /// Replaces a workspace's housekeeping policy.
    pub fn set_policy(
        &self,
        id: &WorkspaceId,
        policy: &kraal_core::Policy,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET policy = ?2, updated_at = ?3 WHERE id = ?1",
                params![
                    id.as_str(),
                    serde_json::to_string(policy).expect("serializes"),
                    now()
                ],
            )?;
            Ok(())
        })
    }

    /// Records that a workspace was backed up at `at` (RFC 3339).
    pub fn set_last_backup(&self, id: &WorkspaceId, at: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET last_backup_at = ?2 WHERE id = ?1",
                params![id.as_str(), at],
            )?;
            Ok(())
        })
    }

    pub fn set_desired(&self, id: &WorkspaceId, desired: DesiredState) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET desired = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_str(), desired.as_str(), now()],
            )?;
            Ok(())
        })
    }

    pub fn set_guest_addr(&self, id: &WorkspaceId, addr: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET guest_addr = ?2 WHERE id = ?1",
                params![id.as_str(), addr],
            )?;
            Ok(())
        })
    }

    pub fn delete(&self, id: &WorkspaceId) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM workspaces WHERE id = ?1", [id.as_str()])?;
            Ok(())
        })
    }

    pub fn add_event(
        &self,
        id: &WorkspaceId,
        level: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO workspace_events (workspace_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_str(), now(), level, message],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` events of every workspace, newest first, with the workspace's
    /// name.
    pub fn all_events(&self, limit: usize) -> Result<Vec<(String, EventRecord)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT w.name, e.seq, e.at, e.level, e.message FROM workspace_events e JOIN workspaces w ON w.id = e.workspace_id ORDER BY e.seq DESC LIMIT ?1",
            )?;
            let v = stmt
                .query_map([limit as i64], |r| {
                    Ok((r.get(0)?, EventRecord { seq: r.get(1)?, at: r.get(2)?, level: r.get(3)?, message: r.get(4)? }))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, id: &WorkspaceId, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, at, level, message FROM workspace_events WHERE workspace_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let mut v = stmt
                .query_map(params![id.as_str(), limit as i64], |r| {
                    Ok(EventRecord { seq: r.get(0)?, at: r.get(1)?, level: r.get(2)?, message: r.get(3)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            v.reverse();
            Ok(v)
        })
    }
}

type Raw = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    bool,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
);

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
        r.get(15)?,
        r.get(16)?,
        r.get(17)?,
        r.get(18)?,
        r.get(19)?,
    ))
}

fn decode(raw: Raw) -> Result<WorkspaceRecord, StoreError> {
    let (
        id,
        name,
        backend,
        source,
        resources,
        state,
        desired,
        reason,
        guest_token,
        guest_addr,
        persistent,
        created_at,
        updated_at,
        image,
        mounts,
        egress,
        git,
        restoring,
        policy,
        last_backup_at,
    ) = raw;
    let corrupt = |what: &str| StoreError::Corrupt {
        id: id.clone(),
        what: what.to_owned(),
    };
    Ok(WorkspaceRecord {
        id: WorkspaceId::parse(&id).map_err(|_| corrupt("id"))?,
        name: WorkspaceName::parse(&name).map_err(|_| corrupt("name"))?,
        backend: BackendKind::parse(&backend).ok_or_else(|| corrupt("backend"))?,
        source: serde_json::from_str(&source).map_err(|_| corrupt("source"))?,
        resources: serde_json::from_str(&resources).map_err(|_| corrupt("resources"))?,
        state: WorkspaceState::parse(&state).ok_or_else(|| corrupt("state"))?,
        desired: DesiredState::parse(&desired).ok_or_else(|| corrupt("desired"))?,
        reason,
        guest_token,
        guest_addr,
        persistent,
        created_at,
        updated_at,
        image,
        mounts: serde_json::from_str(&mounts).map_err(|_| corrupt("mounts"))?,
        egress: match egress {
            None => kraal_core::default_rules(),
            Some(e) => serde_json::from_str(&e).map_err(|_| corrupt("egress"))?,
        },
        git: serde_json::from_str(&git).map_err(|_| corrupt("git"))?,
        restoring,
        policy: serde_json::from_str(&policy).map_err(|_| corrupt("policy"))?,
        last_backup_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(name: &str) -> WorkspaceRecord {
        WorkspaceRecord {
            id: WorkspaceId::random(),
            name: WorkspaceName::parse(name).unwrap(),
            backend: BackendKind::Gvisor,
            source: Source::Empty,
            resources: Resources::default(),
            state: WorkspaceState::Creating,
            desired: DesiredState::Running,
            reason: None,
            guest_token: "t".into(),
            guest_addr: None,
            persistent: false,
            created_at: now(),
            updated_at: now(),
            image: None,
            mounts: Vec::new(),
            egress: kraal_core::default_rules(),
            git: Vec::new(),
            restoring: None,
            policy: kraal_core::Policy::default(),
            last_backup_at: None,
        }
    }

    #[test]
    fn a_snapshot_is_a_whole_database() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        let a = rec("alpha");
        s.insert(&a).unwrap();
        let copy = dir.path().join("copy.db");
        s.snapshot(&copy).unwrap();
        let c = Store::open(&copy).unwrap();
        assert_eq!(c.get(&a.id).unwrap().unwrap().name.as_str(), "alpha");
        assert!(
            s.snapshot(&copy).is_err(),
            "an existing file is not overwritten"
        );
    }

    #[test]
    fn policy_and_last_backup_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let a = rec("alpha");
        s.insert(&a).unwrap();
        assert_eq!(
            s.get(&a.id).unwrap().unwrap().policy,
            kraal_core::Policy::default()
        );
        let p = kraal_core::Policy {
            idle_stop_secs: Some(600),
            backup_every_secs: Some(0),
            idle_pause_secs: None,
        };
        s.set_policy(&a.id, &p).unwrap();
        s.set_last_backup(&a.id, "2026-11-24T05:00:00Z").unwrap();
        let got = s.get(&a.id).unwrap().unwrap();
        assert_eq!(got.policy, p);
        assert_eq!(got.last_backup_at.as_deref(), Some("2026-11-24T05:00:00Z"));
    }

    #[test]
    fn crud_and_unique_names() {
        let s = Store::open_in_memory().unwrap();
        let a = rec("alpha");
        s.insert(&a).unwrap();
        assert!(
            matches!(s.insert(&rec("alpha")), Err(StoreError::NameTaken { name }) if name == "alpha")
        );
        assert_eq!(s.resolve("alpha").unwrap().unwrap().id, a.id);
        assert_eq!(s.resolve(a.id.as_str()).unwrap().unwrap().name, a.name);
        assert!(s.resolve("nope").unwrap().is_none());
        s.set_state(&a.id, WorkspaceState::Failed, Some("boom"))
            .unwrap();
        let got = s.get(&a.id).unwrap().unwrap();
        assert_eq!(
            (got.state, got.reason.as_deref()),
            (WorkspaceState::Failed, Some("boom"))
        );
        s.add_event(&a.id, "info", "one").unwrap();
        s.add_event(&a.id, "info", "two").unwrap();
        s.add_event(&a.id, "warn", "three").unwrap();
        let ev = s.events(&a.id, 2).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["two", "three"]
        );
        s.delete(&a.id).unwrap();
        assert!(s.get(&a.id).unwrap().is_none());
        assert!(s.events(&a.id, 10).unwrap().is_empty(), "events cascade");
    }

    #[test]
    fn workspaces_are_counted_by_state() {
        let s = Store::open_in_memory().unwrap();
        assert!(s.workspace_counts().unwrap().is_empty());
        for n in ["a", "b", "c"] {
            s.insert(&rec(n)).unwrap();
        }
        let b = s.resolve("b").unwrap().unwrap();
        s.set_state(&b.id, WorkspaceState::Running, None).unwrap();
        let counts = s.workspace_counts().unwrap();
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!((counts["creating"], counts["running"]), (2, 1));
        assert!(s.session_counts().unwrap().is_empty());
    }

    #[test]
    fn reopening_keeps_data_and_migrations_are_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let a = rec("beta");
        Store::open(&p).unwrap().insert(&a).unwrap();
        let s = Store::open(&p).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn migrations_validate() {
        assert!(migrations().validate().is_ok());
    }
}
