//! Records of supervising from a phone: Web Push subscriptions and their rules, the
//! single-use capabilities behind notification actions, and review comments on a
//! workspace's diff.

use rusqlite::{OptionalExtension, params};

use crate::web::{hash_secret, unix_now};
use crate::{Store, StoreError, now};

/// One browser that wants notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscriptionRecord {
    pub id: String,
    /// The login token that made it (`None`: the local API).
    pub token_id: Option<String>,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    /// The web UI's origin as the browser saw it (action links point there).
    pub origin: String,
    pub label: String,
    /// Kinds of notification it wants (`turn_done`, `failed`, `approval`, `egress`).
    pub kinds: Vec<String>,
    /// Workspace ids it wants them for; empty: every workspace.
    pub workspaces: Vec<String>,
    pub created_at: String,
    pub last_sent_at: Option<String>,
    pub last_error: Option<String>,
}

/// What trying a notification action's capability came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionUse {
    /// Valid: it (and every other capability for the same request) is now used.
    Granted,
    /// No such capability, or one made for another request.
    Unknown,
    Expired,
    /// Used before (this one, or another for the same request).
    Used,
}

/// A comment on one line of a workspace's diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRecord {
    pub id: String,
    pub workspace_id: String,
    pub path: String,
    pub line: u32,
    /// `new` (a line of the working tree) or `old` (a removed line, numbered as in HEAD).
    pub side: String,
    pub body: String,
    /// The code around the line when the comment was made.
    pub excerpt: String,
    pub author: String,
    pub created_at: String,
    pub resolved_at: Option<String>,
    pub sent_to: Option<String>,
    pub sent_at: Option<String>,
}

const SUB_COLS: &str = "id, token_id, endpoint, p256dh, auth, origin, label, kinds, workspaces, created_at, last_sent_at, last_error";
const COMMENT_COLS: &str = "id, workspace_id, path, line, side, body, excerpt, author, created_at, resolved_at, sent_to, sent_at";

fn json_list(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn sub_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PushSubscriptionRecord> {
    Ok(PushSubscriptionRecord {
        id: r.get(0)?,
        token_id: r.get(1)?,
        endpoint: r.get(2)?,
        p256dh: r.get(3)?,
        auth: r.get(4)?,
        origin: r.get(5)?,
        label: r.get(6)?,
        kinds: json_list(r.get(7)?),
        workspaces: json_list(r.get(8)?),
        created_at: r.get(9)?,
        last_sent_at: r.get(10)?,
        last_error: r.get(11)?,
    })
}

fn comment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CommentRecord> {
    Ok(CommentRecord {
        id: r.get(0)?,
        workspace_id: r.get(1)?,
        path: r.get(2)?,
        line: r.get(3)?,
        side: r.get(4)?,
        body: r.get(5)?,
        excerpt: r.get(6)?,
        author: r.get(7)?,
        created_at: r.get(8)?,
        resolved_at: r.get(9)?,
        sent_to: r.get(10)?,
        sent_at: r.get(11)?,
    })
}

impl Store {
    /// Records a subscription; a browser subscribing again with the same endpoint
    /// replaces its old record (keys and owner), keeping the id it had.
    pub fn upsert_push_subscription(
        &self,
        s: &PushSubscriptionRecord,
    ) -> Result<PushSubscriptionRecord, StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO push_subscriptions ({SUB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL)
                     ON CONFLICT(endpoint) DO UPDATE SET token_id = excluded.token_id, p256dh = excluded.p256dh,
                       auth = excluded.auth, origin = excluded.origin, label = excluded.label,
                       kinds = excluded.kinds, workspaces = excluded.workspaces, last_error = NULL"
                ),
                params![
                    s.id,
                    s.token_id,
                    s.endpoint,
                    s.p256dh,
                    s.auth,
                    s.origin,
                    s.label,
                    serde_json::to_string(&s.kinds).expect("serializes"),
                    serde_json::to_string(&s.workspaces).expect("serializes"),
                    s.created_at,
                ],
            )?;
            Ok(c.query_row(
                &format!("SELECT {SUB_COLS} FROM push_subscriptions WHERE endpoint = ?1"),
                [&s.endpoint],
                sub_row,
            )?)
        })
    }

    pub fn push_subscriptions(&self) -> Result<Vec<PushSubscriptionRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {SUB_COLS} FROM push_subscriptions ORDER BY created_at, id"
            ))?;
            Ok(st.query_map([], sub_row)?.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn push_subscription(
        &self,
        id: &str,
    ) -> Result<Option<PushSubscriptionRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {SUB_COLS} FROM push_subscriptions WHERE id = ?1"),
                [id],
                sub_row,
            )
            .optional()?)
        })
    }

    /// The subscription with this endpoint (what a browser knows of itself).
    pub fn push_subscription_by_endpoint(
        &self,
        endpoint: &str,
    ) -> Result<Option<PushSubscriptionRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {SUB_COLS} FROM push_subscriptions WHERE endpoint = ?1"),
                [endpoint],
                sub_row,
            )
            .optional()?)
        })
    }

    /// Replaces which kinds and workspaces a subscription is notified about.
    pub fn set_push_rules(
        &self,
        id: &str,
        kinds: &[String],
        workspaces: &[String],
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE push_subscriptions SET kinds = ?2, workspaces = ?3 WHERE id = ?1",
                params![
                    id,
                    serde_json::to_string(kinds).expect("serializes"),
                    serde_json::to_string(workspaces).expect("serializes")
                ],
            )? == 1)
        })
    }

    pub fn delete_push_subscription(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM push_subscriptions WHERE id = ?1", [id])? == 1))
    }

    /// Records a delivery (`error: None`) or why the last one failed.
    pub fn push_delivered(&self, id: &str, error: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            match error {
                None => c.execute(
                    "UPDATE push_subscriptions SET last_sent_at = ?2, last_error = NULL WHERE id = ?1",
                    params![id, now()],
                )?,
                Some(e) => c.execute(
                    "UPDATE push_subscriptions SET last_error = ?2 WHERE id = ?1",
                    params![id, e],
                )?,
            };
            Ok(())
        })
    }

    /// Records the capability behind a notification's actions for one approval request.
    pub fn insert_push_action(
        &self,
        capability: &str,
        session: &str,
        request: &str,
        subscription: Option<&str>,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            // Old capabilities go as new ones are made.
            c.execute(
                "DELETE FROM push_actions WHERE expires_at < ?1",
                [unix_now() - 86_400],
            )?;
            c.execute(
                "INSERT INTO push_actions (hash, session_id, request_id, subscription_id, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash_secret(capability), session, request, subscription, unix_now() + ttl_secs],
            )?;
            Ok(())
        })
    }

    /// Tries a capability for approval `request` of `session`: granted once, then never
    /// again (for any device's capability for the same request).
    pub fn use_push_action(
        &self,
        capability: &str,
        session: &str,
        request: &str,
    ) -> Result<ActionUse, StoreError> {
        self.with(|c| {
            let row: Option<(String, String, i64, Option<String>)> = c
                .query_row(
                    "SELECT session_id, request_id, expires_at, used_at FROM push_actions WHERE hash = ?1",
                    [hash_secret(capability)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((s, r, expires, used)) = row else {
                return Ok(ActionUse::Unknown);
            };
            if s != session || r != request {
                return Ok(ActionUse::Unknown);
            }
            if used.is_some() {
                return Ok(ActionUse::Used);
            }
            if expires <= unix_now() {
                return Ok(ActionUse::Expired);
            }
            let n = c.execute(
                "UPDATE push_actions SET used_at = ?3 WHERE session_id = ?1 AND request_id = ?2 AND used_at IS NULL",
                params![session, request, now()],
            )?;
            Ok(if n > 0 { ActionUse::Granted } else { ActionUse::Used })
        })
    }

    /// Marks every capability for a request used (it was answered some other way).
    pub fn spend_push_actions(&self, session: &str, request: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE push_actions SET used_at = ?3 WHERE session_id = ?1 AND request_id = ?2 AND used_at IS NULL",
                params![session, request, now()],
            )?;
            Ok(())
        })
    }

    pub fn insert_comment(&self, r: &CommentRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO review_comments ({COMMENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    r.id, r.workspace_id, r.path, r.line, r.side, r.body, r.excerpt, r.author,
                    r.created_at, r.resolved_at, r.sent_to, r.sent_at
                ],
            )?;
            Ok(())
        })
    }

    /// A workspace's comments, oldest first.
    pub fn comments(&self, workspace_id: &str) -> Result<Vec<CommentRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COMMENT_COLS} FROM review_comments WHERE workspace_id = ?1 ORDER BY created_at, id"
            ))?;
            Ok(st
                .query_map([workspace_id], comment_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn comment(&self, id: &str) -> Result<Option<CommentRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {COMMENT_COLS} FROM review_comments WHERE id = ?1"),
                [id],
                comment_row,
            )
            .optional()?)
        })
    }

    pub fn set_comment_resolved(&self, id: &str, resolved: bool) -> Result<bool, StoreError> {
        self.with(|c| {
            let at = resolved.then(now);
            Ok(c.execute(
                "UPDATE review_comments SET resolved_at = ?2 WHERE id = ?1",
                params![id, at],
            )? == 1)
        })
    }

    pub fn delete_comment(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM review_comments WHERE id = ?1", [id])? == 1))
    }

    /// Records that `ids` were sent to `session` (in one transaction).
    pub fn mark_comments_sent(&self, ids: &[String], session: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let at = now();
            for id in ids {
                tx.execute(
                    "UPDATE review_comments SET sent_to = ?2, sent_at = ?3 WHERE id = ?1",
                    params![id, session, at],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records a preview login secret (a one-time `code` or a `cookie`) for `host`.
    pub fn insert_preview_login(
        &self,
        secret: &str,
        token_id: &str,
        host: &str,
        kind: &str,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM preview_logins WHERE expires_at < ?1",
                [unix_now()],
            )?;
            c.execute(
                "INSERT INTO preview_logins (hash, token_id, host, kind, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash_secret(secret), token_id, host, kind, unix_now() + ttl_secs],
            )?;
            Ok(())
        })
    }

    /// The token a live preview login secret of `kind` for `host` belongs to; a `code` is
    /// spent by this (it works once).
    pub fn preview_login(
        &self,
        secret: &str,
        host: &str,
        kind: &str,
    ) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let h = hash_secret(secret);
            let token: Option<String> = c
                .query_row(
                    "SELECT p.token_id FROM preview_logins p JOIN api_tokens t ON t.id = p.token_id
                     WHERE p.hash = ?1 AND p.host = ?2 AND p.kind = ?3 AND p.expires_at > ?4 AND t.revoked_at IS NULL",
                    params![h, host, kind, unix_now()],
                    |r| r.get(0),
                )
                .optional()?;
            if token.is_some() && kind == "code" {
                c.execute("DELETE FROM preview_logins WHERE hash = ?1", [&h])?;
            }
            Ok(token)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(endpoint: &str) -> PushSubscriptionRecord {
        PushSubscriptionRecord {
            id: format!("ps-{}", endpoint.len()),
            token_id: None,
            endpoint: endpoint.into(),
            p256dh: "k".into(),
            auth: "a".into(),
            origin: "http://x".into(),
            label: "phone".into(),
            kinds: vec!["approval".into()],
            workspaces: vec![],
            created_at: now(),
            last_sent_at: None,
            last_error: None,
        }
    }

    #[test]
    fn a_browser_subscribing_again_replaces_its_record() {
        let s = Store::open_in_memory().unwrap();
        let a = s.upsert_push_subscription(&sub("https://p/1")).unwrap();
        let mut again = sub("https://p/1");
        again.id = "ps-other".into();
        again.p256dh = "k2".into();
        let b = s.upsert_push_subscription(&again).unwrap();
        assert_eq!(a.id, b.id, "the id stays");
        assert_eq!(b.p256dh, "k2");
        assert_eq!(s.push_subscriptions().unwrap().len(), 1);
        assert!(
            s.set_push_rules(&a.id, &["failed".into()], &["ws-1".into()])
                .unwrap()
        );
        let r = s.push_subscription(&a.id).unwrap().unwrap();
        assert_eq!(
            (r.kinds, r.workspaces),
            (vec!["failed".into()], vec!["ws-1".into()])
        );
        assert!(s.delete_push_subscription(&a.id).unwrap());
        assert!(!s.delete_push_subscription(&a.id).unwrap());
    }

    #[test]
    fn an_action_capability_works_once_for_its_own_request_only() {
        let s = Store::open_in_memory().unwrap();
        s.insert_push_action("cap-a", "se-1", "req-1", None, 60)
            .unwrap();
        s.insert_push_action("cap-b", "se-1", "req-1", None, 60)
            .unwrap();
        s.insert_push_action("cap-old", "se-1", "req-2", None, -1)
            .unwrap();
        assert_eq!(
            s.use_push_action("cap-a", "se-1", "req-2").unwrap(),
            ActionUse::Unknown
        );
        assert_eq!(
            s.use_push_action("nope", "se-1", "req-1").unwrap(),
            ActionUse::Unknown
        );
        assert_eq!(
            s.use_push_action("cap-old", "se-1", "req-2").unwrap(),
            ActionUse::Expired
        );
        assert_eq!(
            s.use_push_action("cap-a", "se-1", "req-1").unwrap(),
            ActionUse::Granted
        );
        assert_eq!(
            s.use_push_action("cap-a", "se-1", "req-1").unwrap(),
            ActionUse::Used
        );
        assert_eq!(
            s.use_push_action("cap-b", "se-1", "req-1").unwrap(),
            ActionUse::Used,
            "another device's button for the answered request is spent too"
        );
    }
}
