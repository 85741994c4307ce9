//! Session records and the daemon's mirror of each session's event log. The guest agent
//! numbers events; the mirror stores them under the same sequence numbers and refuses gaps,
//! so a reader of the mirror sees exactly what the guest journaled, in order.

use kraal_core::{
    AgentEvent, AgentKind, AgentSpec, SessionEvent, SessionId, SessionState, WorkspaceId,
};
use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError, now};

/// One session as stored, with a summary kept current from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub workspace_id: WorkspaceId,
    pub agent: AgentKind,
    pub spec: AgentSpec,
    pub title: String,
    pub state: SessionState,
    pub reason: Option<String>,
    pub agent_session: Option<String>,
    pub last_seq: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub created_at: String,
    pub updated_at: String,
}

impl SessionRecord {
    /// A session that has no events, usage, cost or agent-side id yet.
    pub fn new(
        id: SessionId,
        workspace_id: WorkspaceId,
        spec: AgentSpec,
        title: String,
        state: SessionState,
        at: String,
    ) -> Self {
        SessionRecord {
            id,
            workspace_id,
            agent: spec.agent,
            spec,
            title,
            state,
            reason: None,
            agent_session: None,
            last_seq: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            created_at: at.clone(),
            updated_at: at,
        }
    }
}

const SCOLS: &str = "id, workspace_id, agent, spec, title, state, reason, agent_session, last_seq, input_tokens, output_tokens, cost_usd, created_at, updated_at";

fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRecord, StoreError>> {
    let id: String = r.get(0)?;
    let ws: String = r.get(1)?;
    let agent: String = r.get(2)?;
    let spec: String = r.get(3)?;
    let state: String = r.get(5)?;
    let corrupt = |what: String| StoreError::Corrupt {
        id: id.clone(),
        what,
    };
    let rec = (|| -> Result<SessionRecord, StoreError> {
        Ok(SessionRecord {
            id: SessionId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
            workspace_id: WorkspaceId::parse(&ws).map_err(|e| corrupt(e.to_string()))?,
            agent: AgentKind::parse(&agent).map_err(|e| corrupt(e.to_string()))?,
            spec: serde_json::from_str(&spec).map_err(|e| corrupt(format!("spec: {e}")))?,
            title: r.get(4)?,
            state: SessionState::parse(&state)
                .ok_or_else(|| corrupt(format!("state {state:?}")))?,
            reason: r.get(6)?,
            agent_session: r.get(7)?,
            last_seq: r.get::<_, i64>(8)? as u64,
            input_tokens: r.get::<_, i64>(9)? as u64,
            output_tokens: r.get::<_, i64>(10)? as u64,
            cost_usd: r.get(11)?,
            created_at: r.get(12)?,
            updated_at: r.get(13)?,
        })
    })();
    Ok(rec)
}

impl Store {
    pub fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO sessions ({SCOLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
                params![
                    s.id.as_str(),
                    s.workspace_id.as_str(),
                    s.agent.as_str(),
                    serde_json::to_string(&s.spec).expect("serializes"),
                    s.title,
                    s.state.as_str(),
                    s.reason,
                    s.agent_session,
                    s.last_seq as i64,
                    s.input_tokens as i64,
                    s.output_tokens as i64,
                    s.cost_usd,
                    s.created_at,
                    s.updated_at,
                ],
            )?;
            Ok(())
        })
    }

    pub fn get_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SCOLS} FROM sessions WHERE id = ?1"),
                [id.as_str()],
                decode,
            )
            .optional()?
            .transpose()
        })
    }

    /// Sessions whose id starts with `prefix` (at most `limit`).
    pub fn sessions_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        // Ids are `se-` + hex, so a prefix never contains LIKE wildcards once validated.
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Ok(Vec::new());
        }
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {SCOLS} FROM sessions WHERE id LIKE ?1 ORDER BY created_at LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![format!("{prefix}%"), limit as i64], decode)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().collect()
        })
    }

    /// Sessions of one workspace (or of all), oldest first.
    pub fn list_sessions(
        &self,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|c| {
            let rows = match workspace {
                Some(ws) => {
                    let mut stmt = c.prepare(&format!(
                        "SELECT {SCOLS} FROM sessions WHERE workspace_id = ?1 ORDER BY created_at, id"
                    ))?;
                    stmt.query_map([ws.as_str()], decode)?
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => {
                    let mut stmt = c.prepare(&format!(
                        "SELECT {SCOLS} FROM sessions ORDER BY created_at, id"
                    ))?;
                    stmt.query_map([], decode)?
                        .collect::<Result<Vec<_>, _>>()?
                }
            };
            rows.into_iter().collect()
        })
    }

    /// Records a state the daemon itself decided (e.g. the guest could not start the agent),
    /// for sessions whose log cannot carry it.
    pub fn set_session_state(
        &self,
        id: &SessionId,
        state: SessionState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sessions SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id.as_str(), state.as_str(), reason, now()],
            )?;
            Ok(())
        })
    }

    /// Appends mirrored events in one transaction and updates the session's summary.
    /// Events at or below the stored `last_seq` are skipped (a re-subscription may replay
    /// them); a gap is refused. Returns the new `last_seq`.
    pub fn append_session_events(
        &self,
        id: &SessionId,
        events: &[SessionEvent],
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let last = append_in(&tx, id, events)?;
        tx.commit()?;
        Ok(last)
    }

    /// Group commit: appends the events of several sessions in one transaction, each
    /// session's part in its own savepoint, so one session's gap or bad row fails only that
    /// part. Returns each part's new `last_seq` or its error, in order; the outer error is
    /// for the transaction itself (nothing stored).
    pub fn append_session_events_many(
        &self,
        parts: &[(&SessionId, &[SessionEvent])],
    ) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = conn.transaction()?;
        let mut out = Vec::with_capacity(parts.len());
        for (id, events) in parts {
            let sp = tx.savepoint()?;
            match append_in(&sp, id, events) {
                Ok(last) => {
                    sp.commit()?;
                    out.push(Ok(last));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Mirrored events with `seq > after`, oldest first, at most `limit`.
    pub fn session_events(
        &self,
        id: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at_ms, event FROM session_events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![id.as_str(), after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(seq, at_ms, json)| {
                    let event: AgentEvent =
                        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                            id: id.to_string(),
                            what: format!("event {seq}: {e}"),
                        })?;
                    Ok(SessionEvent {
                        seq: seq as u64,
                        at_ms: at_ms as u64,
                        event,
                    })
                })
                .collect()
        })
    }
}

/// Appends `events` of session `id` on `conn` (inside a transaction or savepoint) and
/// updates the session's summary; returns the new `last_seq`.
fn append_in(
    tx: &rusqlite::Connection,
    id: &SessionId,
    events: &[SessionEvent],
) -> Result<u64, StoreError> {
    let (mut last, mut state, mut reason, mut agent_session, mut tin, mut tout, mut cost): (
            i64,
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            f64,
        ) = tx
            .prepare_cached(
                "SELECT last_seq, state, reason, agent_session, input_tokens, output_tokens, cost_usd FROM sessions WHERE id = ?1",
            )?
            .query_row(
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::Corrupt {
                id: id.to_string(),
                what: "no such session".into(),
            })?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO session_events (session_id, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for e in events {
            let seq = e.seq as i64;
            if seq <= last {
                continue;
            }
            if seq != last + 1 {
                return Err(StoreError::Gap {
                    session: id.to_string(),
                    expected: (last + 1) as u64,
                    got: e.seq,
                });
            }
            insert.execute(params![
                id.as_str(),
                seq,
                e.at_ms as i64,
                serde_json::to_string(&e.event).expect("serializes"),
            ])?;
            last = seq;
            match &e.event {
                AgentEvent::State {
                    state: s,
                    reason: r,
                } => {
                    state = s.as_str().to_owned();
                    reason = r.clone();
                }
                AgentEvent::AgentSession { id } => agent_session = Some(id.clone()),
                AgentEvent::Usage {
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    ..
                } => {
                    tin += *input_tokens as i64;
                    tout += *output_tokens as i64;
                    cost += cost_usd.unwrap_or(0.0);
                }
                _ => {}
            }
        }
    }
    tx.prepare_cached(
            "UPDATE sessions SET last_seq = ?2, state = ?3, reason = ?4, agent_session = ?5, input_tokens = ?6, output_tokens = ?7, cost_usd = ?8, updated_at = ?9 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), last, state, reason, agent_session, tin, tout, cost, now()])?;
    Ok(last as u64)
}

#[cfg(test)]
mod tests {
    use kraal_core::{AgentEvent, AgentKind, AgentSpec, SessionEvent, SessionId, SessionState};

    use crate::tests::rec;
    use crate::{SessionRecord, Store, StoreError, now};

    fn session(ws: &kraal_core::WorkspaceId) -> SessionRecord {
        SessionRecord::new(
            SessionId::random(),
            ws.clone(),
            AgentSpec::new(AgentKind::Claude),
            "fix the tests".into(),
            SessionState::Starting,
            now(),
        )
    }

    fn ev(seq: u64, event: AgentEvent) -> SessionEvent {
        SessionEvent {
            seq,
            at_ms: 1000 + seq,
            event,
        }
    }

    #[test]
    fn a_group_commit_stores_every_part_but_the_one_with_a_gap() {
        let s = Store::open_in_memory().unwrap();
        let w = rec("alpha");
        s.insert(&w).unwrap();
        let (a, b, c) = (session(&w.id), session(&w.id), session(&w.id));
        for x in [&a, &b, &c] {
            s.insert_session(x).unwrap();
        }
        let text = |seq| {
            ev(
                seq,
                AgentEvent::AssistantDelta {
                    text: format!("t{seq}"),
                },
            )
        };
        let a_events = vec![text(1), text(2)];
        let b_events = vec![text(2)]; // a gap: 1 is missing
        let c_events = vec![text(1)];
        let out = s
            .append_session_events_many(&[
                (&a.id, &a_events),
                (&b.id, &b_events),
                (&c.id, &c_events),
            ])
            .unwrap();
        assert_eq!(out[0].as_ref().unwrap(), &2);
        assert!(matches!(
            out[1],
            Err(StoreError::Gap {
                expected: 1,
                got: 2,
                ..
            })
        ));
        assert_eq!(out[2].as_ref().unwrap(), &1);
        assert_eq!(s.session_events(&a.id, 0, 10).unwrap().len(), 2);
        assert!(s.session_events(&b.id, 0, 10).unwrap().is_empty());
        assert_eq!(s.get_session(&b.id).unwrap().unwrap().last_seq, 0);
        assert_eq!(s.session_events(&c.id, 0, 10).unwrap()[0].seq, 1);
    }

    #[test]
    fn events_append_in_order_update_the_summary_and_refuse_gaps() {
        let s = Store::open_in_memory().unwrap();
        let w = rec("alpha");
        s.insert(&w).unwrap();
        let se = session(&w.id);
        s.insert_session(&se).unwrap();
        let batch = vec![
            ev(1, AgentEvent::AgentSession { id: "abc".into() }),
            ev(
                2,
                AgentEvent::State {
                    state: SessionState::Working,
                    reason: None,
                },
            ),
            ev(
                3,
                AgentEvent::Usage {
                    input_tokens: 100,
                    output_tokens: 10,
                    cache_read_tokens: 0,
                    cache_write_tokens: 0,
                    cost_usd: Some(0.25),
                },
            ),
        ];
        assert_eq!(s.append_session_events(&se.id, &batch).unwrap(), 3);
        // A replay of what is already stored is skipped, the new tail appended.
        let more = vec![
            batch[2].clone(),
            ev(
                4,
                AgentEvent::Usage {
                    input_tokens: 5,
                    output_tokens: 1,
                    cache_read_tokens: 0,
                    cache_write_tokens: 0,
                    cost_usd: Some(0.5),
                },
            ),
            ev(
                5,
                AgentEvent::State {
                    state: SessionState::Failed,
                    reason: Some("boom".into()),
                },
            ),
        ];
        assert_eq!(s.append_session_events(&se.id, &more).unwrap(), 5);
        let got = s.get_session(&se.id).unwrap().unwrap();
        assert_eq!(got.last_seq, 5);
        assert_eq!(got.state, SessionState::Failed);
        assert_eq!(got.reason.as_deref(), Some("boom"));
        assert_eq!(got.agent_session.as_deref(), Some("abc"));
        assert_eq!((got.input_tokens, got.output_tokens), (105, 11));
        assert!((got.cost_usd - 0.75).abs() < 1e-9);
        // A gap is refused and changes nothing.
        let err = s
            .append_session_events(
                &se.id,
                &[ev(
                    7,
                    AgentEvent::Error {
                        message: "x".into(),
                    },
                )],
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Gap {
                    expected: 6,
                    got: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.get_session(&se.id).unwrap().unwrap().last_seq, 5);
        let all = s.session_events(&se.id, 0, 100).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all[0].event, batch[0].event);
        let tail = s.session_events(&se.id, 3, 1).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].seq, 4);
    }

    #[test]
    fn sessions_list_by_workspace_resolve_by_prefix_and_cascade() {
        let s = Store::open_in_memory().unwrap();
        let a = rec("alpha");
        let b = rec("beta");
        s.insert(&a).unwrap();
        s.insert(&b).unwrap();
        let sa = session(&a.id);
        let sb = session(&b.id);
        s.insert_session(&sa).unwrap();
        s.insert_session(&sb).unwrap();
        assert_eq!(s.list_sessions(Some(&a.id)).unwrap(), vec![sa.clone()]);
        assert_eq!(s.list_sessions(None).unwrap().len(), 2);
        let found = s.sessions_with_prefix(&sa.id.as_str()[..7], 5).unwrap();
        assert!(found.iter().any(|r| r.id == sa.id));
        assert!(s.sessions_with_prefix("se-%", 5).unwrap().is_empty());
        s.set_session_state(&sb.id, SessionState::Failed, Some("guest gone"))
            .unwrap();
        assert_eq!(
            s.get_session(&sb.id).unwrap().unwrap().state,
            SessionState::Failed
        );
        s.append_session_events(&sa.id, &[ev(1, AgentEvent::user("hi"))])
            .unwrap();
        s.delete(&a.id).unwrap();
        assert!(s.get_session(&sa.id).unwrap().is_none(), "sessions cascade");
        assert!(s.session_events(&sa.id, 0, 10).unwrap().is_empty());
    }
}
