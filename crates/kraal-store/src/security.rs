//! Security state: workspace egress allowlists and their connection log, secrets
//! encrypted at rest (XChaCha20-Poly1305 under a key file kept next to the database, the
//! secret's name bound in as associated data), and the audit log.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kraal_core::{EgressRule, WorkspaceId};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError, now};

/// Connection records kept per workspace; older ones are pruned.
const EGRESS_KEEP: i64 = 10_000;

/// One egress proxy decision as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressLogRecord {
    pub id: i64,
    pub workspace: String,
    pub at: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub addr: Option<String>,
    pub allowed: bool,
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ms: u64,
}

/// A secret's metadata (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    /// Where it came from: `stdin`, `file`, `command`, `login:claude`…
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// The secret holding the shared Claude subscription login (JSON [`ClaudeLogin`]).
pub const CLAUDE_LOGIN_SECRET: &str = "claude-login";
/// Secrets the model gateway reads its credentials from (before the daemon's environment).
pub const CLAUDE_TOKEN_SECRET: &str = "claude-oauth-token";
pub const ANTHROPIC_KEY_SECRET: &str = "anthropic-api-key";
pub const OPENAI_KEY_SECRET: &str = "openai-api-key";
pub const GEMINI_KEY_SECRET: &str = "gemini-api-key";

/// A Claude subscription login: what `claude /login` keeps in
/// `~/.claude/.credentials.json`, refreshed by the daemon.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaudeLogin {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for ClaudeLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClaudeLogin(<redacted>, expires_at {})", self.expires_at)
    }
}

/// The key secrets are encrypted with.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Reads the key file, or creates it (owner-only) with a fresh random key.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, StoreError> {
        let io = |e: std::io::Error| StoreError::Key {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        match std::fs::read(path) {
            Ok(b) => {
                let arr: [u8; 32] = b.as_slice().try_into().map_err(|_| StoreError::Key {
                    path: path.to_owned(),
                    reason: format!("expected 32 bytes, found {}", b.len()),
                })?;
                Ok(SecretKey(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut k = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                let tmp = path.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&k).map_err(io)?;
                f.sync_all().map_err(io)?;
                // Never replace a key another process created meanwhile.
                std::fs::hard_link(&tmp, path)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(io)?;
                let _ = std::fs::remove_file(&tmp);
                let b = std::fs::read(path).map_err(io)?;
                k = b.as_slice().try_into().map_err(|_| StoreError::Key {
                    path: path.to_owned(),
                    reason: "wrong length".into(),
                })?;
                Ok(SecretKey(k))
            }
            Err(e) => Err(io(e)),
        }
    }

    #[doc(hidden)]
    pub fn for_tests(b: u8) -> SecretKey {
        SecretKey([b; 32])
    }
}

impl Store {
    /// Replaces a workspace's egress allowlist.
    pub fn set_egress(&self, id: &WorkspaceId, rules: &[EgressRule]) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET egress = ?2, updated_at = ?3 WHERE id = ?1",
                params![
                    id.as_str(),
                    serde_json::to_string(rules).expect("serializes"),
                    now()
                ],
            )?;
            Ok(())
        })
    }

    /// Marks a workspace as being restored from `backup` (or, with `None`, as complete).
    pub fn set_restoring(&self, id: &WorkspaceId, backup: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workspaces SET restoring = ?2 WHERE id = ?1",
                params![id.as_str(), backup],
            )?;
            Ok(())
        })
    }

    /// Records egress decisions in one transaction; keeps the newest [`EGRESS_KEEP`] per
    /// workspace.
    pub fn log_egress_batch(&self, records: &[EgressLogRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for r in records {
                tx.execute(
                    "INSERT INTO egress_log (workspace, at, method, host, port, addr, allowed, reason, bytes_up, bytes_down, ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        r.workspace,
                        r.at,
                        r.method,
                        r.host,
                        r.port,
                        r.addr,
                        r.allowed,
                        r.reason,
                        r.bytes_up as i64,
                        r.bytes_down as i64,
                        r.ms as i64
                    ],
                )?;
                if tx.last_insert_rowid() % 500 == 0 {
                    tx.execute(
                        "DELETE FROM egress_log WHERE workspace = ?1 AND id <= (SELECT id FROM egress_log WHERE workspace = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                        params![r.workspace, EGRESS_KEEP],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The newest `limit` egress decisions of a workspace, oldest first.
    pub fn egress_log(
        &self,
        workspace: &WorkspaceId,
        limit: u32,
    ) -> Result<Vec<EgressLogRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, workspace, at, method, host, port, addr, allowed, reason, bytes_up, bytes_down, ms
                 FROM egress_log WHERE workspace = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let mut rows: Vec<EgressLogRecord> = st
                .query_map(params![workspace.as_str(), limit], |r| {
                    Ok(EgressLogRecord {
                        id: r.get(0)?,
                        workspace: r.get(1)?,
                        at: r.get(2)?,
                        method: r.get(3)?,
                        host: r.get(4)?,
                        port: r.get(5)?,
                        addr: r.get(6)?,
                        allowed: r.get(7)?,
                        reason: r.get(8)?,
                        bytes_up: r.get::<_, i64>(9)? as u64,
                        bytes_down: r.get::<_, i64>(10)? as u64,
                        ms: r.get::<_, i64>(11)? as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    /// Stores (or replaces) secret `name`, encrypted with `key`.
    pub fn put_secret(
        &self,
        key: &SecretKey,
        name: &str,
        value: &[u8],
        source: &str,
    ) -> Result<(), StoreError> {
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto {
                name: name.to_owned(),
            })?;
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (name, nonce, ciphertext, source, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET nonce = ?2, ciphertext = ?3, source = ?4, updated_at = ?5",
                params![name, &nonce[..], ct, source, t],
            )?;
            Ok(())
        })
    }

    /// Decrypts secret `name`; `None` when there is none.
    pub fn get_secret(&self, key: &SecretKey, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self.with(|c| {
            Ok(c.query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })?;
        let Some((nonce, ct)) = row else {
            return Ok(None);
        };
        if nonce.len() != 24 {
            return Err(StoreError::Crypto {
                name: name.to_owned(),
            });
        }
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: name.as_bytes(),
                },
            )
            .map(Some)
            .map_err(|_| StoreError::Crypto {
                name: name.to_owned(),
            })
    }

    pub fn list_secrets(&self) -> Result<Vec<SecretInfo>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, source, created_at, updated_at FROM secrets ORDER BY name",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(SecretInfo {
                        name: r.get(0)?,
                        source: r.get(1)?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Removes secret `name`; whether it existed.
    pub fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", params![name])? > 0))
    }

    /// The stored Claude login, if any (and readable).
    pub fn claude_login(&self, key: &SecretKey) -> Option<ClaudeLogin> {
        let raw = self.get_secret(key, CLAUDE_LOGIN_SECRET).ok()??;
        serde_json::from_slice(&raw).ok()
    }

    /// Stores the Claude login.
    pub fn put_claude_login(
        &self,
        key: &SecretKey,
        login: &ClaudeLogin,
        source: &str,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(login).expect("serializes");
        self.put_secret(key, CLAUDE_LOGIN_SECRET, &json, source)
    }

    /// Appends to the audit log.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), actor, action, target, detail],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` audit entries (optionally of one action), oldest first.
    pub fn audit_log(
        &self,
        limit: u32,
        action: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, at, actor, action, target, detail FROM audit
                 WHERE (?2 IS NULL OR action = ?2) ORDER BY id DESC LIMIT ?1",
            )?;
            let mut rows: Vec<AuditRecord> = st
                .query_map(params![limit, action], |r| {
                    Ok(AuditRecord {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_encrypted_bound_to_their_name_and_listed_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(&dir.path().join("secret.key")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("secret.key")).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
        let again = SecretKey::load_or_create(&dir.path().join("secret.key")).unwrap();
        assert_eq!(key.0, again.0, "the key file is reused");

        let s = Store::open(&dir.path().join("state.db")).unwrap();
        s.put_secret(&key, "github-pat", b"ghp_supersecretvalue123", "stdin")
            .unwrap();
        assert_eq!(
            s.get_secret(&key, "github-pat").unwrap().unwrap(),
            b"ghp_supersecretvalue123"
        );
        assert_eq!(s.get_secret(&key, "nope").unwrap(), None);
        let raw = std::fs::read(dir.path().join("state.db")).unwrap();
        assert!(
            !raw.windows(8).any(|w| w == b"ghp_supe"),
            "the value is not stored in the clear"
        );
        // A wrong key, or a ciphertext moved under another name, does not decrypt.
        assert!(matches!(
            s.get_secret(&SecretKey::for_tests(7), "github-pat"),
            Err(StoreError::Crypto { .. })
        ));
        s.with(|c| {
            c.execute(
                "INSERT INTO secrets SELECT 'other', nonce, ciphertext, source, created_at, updated_at FROM secrets WHERE name = 'github-pat'",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        assert!(s.get_secret(&key, "other").is_err());
        s.put_secret(&key, "github-pat", b"v2", "file").unwrap();
        let l = s.list_secrets().unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].source, "file");
        assert!(s.delete_secret("github-pat").unwrap());
        assert!(!s.delete_secret("github-pat").unwrap());
        let bad = dir.path().join("short.key");
        std::fs::write(&bad, b"short").unwrap();
        assert!(
            SecretKey::load_or_create(&bad)
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
    }

    #[test]
    fn egress_log_and_audit_keep_order() {
        let s = Store::open_in_memory().unwrap();
        let w = crate::tests::rec("alpha");
        let git = vec![kraal_core::GitCredential::parse("github.com=pat").unwrap()];
        let w = crate::WorkspaceRecord {
            git: git.clone(),
            ..w
        };
        s.insert(&w).unwrap();
        assert_eq!(
            s.get(&w.id).unwrap().unwrap().egress,
            kraal_core::default_rules()
        );
        let rules = kraal_core::parse_rules(&["example.com"]).unwrap();
        s.set_egress(&w.id, &rules).unwrap();
        let got = s.get(&w.id).unwrap().unwrap();
        assert_eq!((got.egress, got.git), (rules, git));
        let records: Vec<EgressLogRecord> = (0..3u16)
            .map(|i| EgressLogRecord {
                id: 0,
                workspace: w.id.to_string(),
                at: now(),
                method: "CONNECT".into(),
                host: format!("h{i}.example.com"),
                port: 443,
                addr: None,
                allowed: i != 1,
                reason: (i == 1).then(|| "not allowed".into()),
                bytes_up: 1,
                bytes_down: 2,
                ms: 3,
            })
            .collect();
        s.log_egress_batch(&records).unwrap();
        let l = s.egress_log(&w.id, 2).unwrap();
        assert_eq!(
            l.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
            ["h1.example.com", "h2.example.com"]
        );
        assert!(!l[0].allowed);
        s.audit("cli", "secret.set", "github-pat", "stdin").unwrap();
        s.audit("web:phone", "exec", "alpha", "bash").unwrap();
        let a = s.audit_log(10, None).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].action, "secret.set");
        assert_eq!(s.audit_log(10, Some("exec")).unwrap()[0].actor, "web:phone");
    }
}
