//! Access tokens, web login sessions and templates. Tokens and session cookies are stored
//! only as SHA-256 hashes: both are 256-bit random values, so a fast hash is enough, and a
//! copy of the database gives nobody a way in.

use kraal_core::TemplateSpec;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, now};

/// SHA-256 of a secret, hex-encoded.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub token_id: String,
    pub token_name: String,
    pub csrf: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRecord {
    pub id: String,
    pub version: u32,
    pub spec: TemplateSpec,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        last_used_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

impl Store {
    /// Records a new token under `name` (unique); the caller shows `token` once.
    pub fn insert_token(&self, id: &str, name: &str, token: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let r = c.execute(
                "INSERT INTO api_tokens (id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, hash_secret(token), now()],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation
                        && msg.contains("api_tokens.name") =>
                {
                    Err(StoreError::TokenNameTaken {
                        name: name.to_owned(),
                    })
                }
                r => r.map(|_| ()).map_err(Into::into),
            }
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY created_at, name",
            )?;
            Ok(stmt
                .query_map([], token_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Revokes a token by id or name, ending its web sessions; `false` if none matched.
    pub fn revoke_token(&self, reference: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM api_tokens WHERE (id = ?1 OR name = ?1) AND revoked_at IS NULL",
                    [reference],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(false) };
            c.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1",
                params![id, now()],
            )?;
            c.execute("DELETE FROM web_sessions WHERE token_id = ?1", [&id])?;
            // Its devices stop getting notifications and its preview logins end.
            c.execute("DELETE FROM push_subscriptions WHERE token_id = ?1", [&id])?;
            c.execute("DELETE FROM preview_logins WHERE token_id = ?1", [&id])?;
            Ok(true)
        })
    }

    /// The live token `token` is, if any; records its use.
    pub fn check_token(&self, token: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            let rec = c
                .query_row(
                    "SELECT id, name, created_at, last_used_at, revoked_at FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL",
                    [hash_secret(token)],
                    token_row,
                )
                .optional()?;
            if let Some(r) = &rec {
                c.execute(
                    "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                    params![r.id, now()],
                )?;
            }
            Ok(rec)
        })
    }

    pub fn create_web_session(
        &self,
        cookie: &str,
        token_id: &str,
        csrf: &str,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM web_sessions WHERE expires_at < ?1",
                [unix_now()],
            )?;
            c.execute(
                "INSERT INTO web_sessions (hash, token_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash_secret(cookie), token_id, csrf, now(), unix_now() + ttl_secs],
            )?;
            Ok(())
        })
    }

    /// The unexpired session of a cookie whose token is still live.
    pub fn web_session(&self, cookie: &str) -> Result<Option<WebSession>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT s.token_id, t.name, s.csrf, s.expires_at FROM web_sessions s JOIN api_tokens t ON t.id = s.token_id
                 WHERE s.hash = ?1 AND s.expires_at >= ?2 AND t.revoked_at IS NULL",
                params![hash_secret(cookie), unix_now()],
                |r| {
                    Ok(WebSession {
                        token_id: r.get(0)?,
                        token_name: r.get(1)?,
                        csrf: r.get(2)?,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
    }

    pub fn delete_web_session(&self, cookie: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM web_sessions WHERE hash = ?1",
                [hash_secret(cookie)],
            )?;
            Ok(())
        })
    }

    /// Creates a template, or a new version of the one with that id.
    pub fn save_template(&self, id: &str, spec: &TemplateSpec) -> Result<u32, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let exists: Option<Option<String>> = tx
            .query_row(
                "SELECT deleted_at FROM templates WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        // Names stay unique among templates that are not deleted.
        let clash: Option<String> = tx
            .query_row(
                "SELECT id FROM templates t WHERE deleted_at IS NULL AND id != ?1 AND EXISTS (
                   SELECT 1 FROM template_versions v WHERE v.template_id = t.id
                   AND v.version = (SELECT MAX(version) FROM template_versions WHERE template_id = t.id)
                   AND json_extract(v.spec, '$.name') = ?2)",
                params![id, spec.name],
                |r| r.get(0),
            )
            .optional()?;
        if clash.is_some() {
            return Err(StoreError::TemplateNameTaken {
                name: spec.name.clone(),
            });
        }
        match exists {
            Some(Some(_)) => {
                return Err(StoreError::Corrupt {
                    id: id.to_owned(),
                    what: "template was deleted".into(),
                });
            }
            Some(None) => {}
            None => {
                tx.execute(
                    "INSERT INTO templates (id, name, created_at) VALUES (?1, ?1, ?2)",
                    params![id, now()],
                )?;
            }
        }
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM template_versions WHERE template_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO template_versions (template_id, version, spec, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, next, serde_json::to_string(spec).expect("serializes"), now()],
        )?;
        tx.commit()?;
        Ok(next as u32)
    }

    /// A template at `version` (the newest when `None`), if it exists and is not deleted.
    pub fn template(
        &self,
        id: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        self.with(|c| {
            let row: Option<(i64, String, String, String)> = c
                .query_row(
                    "SELECT v.version, v.spec, t.created_at, v.created_at FROM templates t JOIN template_versions v ON v.template_id = t.id
                     WHERE t.id = ?1 AND t.deleted_at IS NULL
                       AND v.version = COALESCE(?2, (SELECT MAX(version) FROM template_versions WHERE template_id = t.id))",
                    params![id, version.map(i64::from)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            row.map(|(v, spec, created, updated)| {
                Ok(TemplateRecord {
                    id: id.to_owned(),
                    version: v as u32,
                    spec: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                        id: id.to_owned(),
                        what: format!("template spec: {e}"),
                    })?,
                    created_at: created,
                    updated_at: updated,
                })
            })
            .transpose()
        })
    }

    /// The newest version of every template that is not deleted, by name.
    pub fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        let ids: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM templates WHERE deleted_at IS NULL")?;
            Ok(stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?)
        })?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(t) = self.template(&id, None)? {
                out.push(t);
            }
        }
        out.sort_by_key(|a| a.spec.name.to_lowercase());
        Ok(out)
    }

    /// Version numbers of a template, newest first.
    pub fn template_versions(&self, id: &str) -> Result<Vec<(u32, String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT version, created_at FROM template_versions WHERE template_id = ?1 ORDER BY version DESC",
            )?;
            Ok(stmt
                .query_map([id], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Deletes a template (its versions stay for the record); `false` if none matched.
    pub fn delete_template(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE templates SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, now()],
            )? > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use kraal_core::{AgentKind, Resources, TemplateSpec};

    use crate::{Store, StoreError};

    #[test]
    fn tokens_are_stored_hashed_checked_and_revoked_with_their_sessions() {
        let s = Store::open_in_memory().unwrap();
        s.insert_token("tk-1", "phone", "kraal_secret_one").unwrap();
        assert!(matches!(
            s.insert_token("tk-2", "phone", "kraal_other"),
            Err(StoreError::TokenNameTaken { .. })
        ));
        // The raw token appears nowhere in the database.
        let dump: String = s
            .with(|c| {
                Ok(
                    c.query_row("SELECT group_concat(hash) FROM api_tokens", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .unwrap();
        assert!(!dump.contains("kraal_secret_one"));
        assert_eq!(
            s.check_token("kraal_secret_one").unwrap().unwrap().name,
            "phone"
        );
        assert!(s.check_token("kraal_secret_two").unwrap().is_none());
        s.create_web_session("cookie-1", "tk-1", "csrf-1", 3600)
            .unwrap();
        let w = s.web_session("cookie-1").unwrap().unwrap();
        assert_eq!(
            (w.token_name.as_str(), w.csrf.as_str()),
            ("phone", "csrf-1")
        );
        assert!(s.web_session("cookie-2").unwrap().is_none());
        // Expired sessions do not count.
        s.create_web_session("cookie-old", "tk-1", "c", -1).unwrap();
        assert!(s.web_session("cookie-old").unwrap().is_none());
        assert!(s.revoke_token("phone").unwrap());
        assert!(!s.revoke_token("phone").unwrap(), "already revoked");
        assert!(s.check_token("kraal_secret_one").unwrap().is_none());
        assert!(
            s.web_session("cookie-1").unwrap().is_none(),
            "sessions end with the token"
        );
        assert!(s.tokens().unwrap()[0].revoked_at.is_some());
    }

    #[test]
    fn templates_are_versioned_unique_by_name_and_deletable() {
        let s = Store::open_in_memory().unwrap();
        let mut spec = TemplateSpec {
            name: "bot".into(),
            description: "v1".into(),
            repos: vec![],
            agent: AgentKind::Claude,
            model: None,
            system_prompt: None,
            first_message: None,
            resources: Resources::default(),
            image: None,
            policy: kraal_core::Policy {
                idle_stop_secs: Some(1800),
                backup_every_secs: None,
                idle_pause_secs: None,
            },
        };
        assert_eq!(s.save_template("tp-1", &spec).unwrap(), 1);
        spec.description = "v2".into();
        assert_eq!(s.save_template("tp-1", &spec).unwrap(), 2);
        assert_eq!(
            s.template("tp-1", None).unwrap().unwrap().spec.description,
            "v2"
        );
        assert_eq!(
            s.template("tp-1", Some(1))
                .unwrap()
                .unwrap()
                .spec
                .description,
            "v1"
        );
        assert_eq!(s.template_versions("tp-1").unwrap().len(), 2);
        assert!(matches!(
            s.save_template("tp-2", &spec),
            Err(StoreError::TemplateNameTaken { .. })
        ));
        assert!(s.delete_template("tp-1").unwrap());
        assert!(s.template("tp-1", None).unwrap().is_none());
        assert!(s.templates().unwrap().is_empty());
        // The name is free again.
        assert_eq!(s.save_template("tp-2", &spec).unwrap(), 1);
    }
}
