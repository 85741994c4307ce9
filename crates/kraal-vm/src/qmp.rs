//! A small QMP (QEMU Machine Protocol) client: JSON lines over the VM's Unix socket —
//! greeting, capability negotiation, then commands whose answers are matched by `id`
//! while asynchronous events are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP i/o failed")]
    Io(#[from] std::io::Error),
    #[error("QMP sent invalid JSON: {0}")]
    Json(String),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {command} did not answer within {secs} s")]
    Timeout { command: String, secs: u64 },
}

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = s.into_split();
        let mut q = Qmp {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        };
        let greeting = tokio::time::timeout(Duration::from_secs(10), q.read_value())
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                secs: 10,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Json(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Json(format!("{e}: {line}")))
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_within(command, args, Duration::from_secs(30))
            .await
    }

    pub async fn execute_within(
        &mut self,
        command: &str,
        args: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let wait = async {
            loop {
                let v = self.read_value().await?;
                if v.get("event").is_some() || v.get("id") != Some(&json!(id)) {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class: e["class"].as_str().unwrap_or("Error").to_owned(),
                        desc: e["desc"].as_str().unwrap_or_default().to_owned(),
                    });
                }
                return Ok(v.get("return").cloned().unwrap_or(Value::Null));
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.to_owned(),
                secs: limit.as_secs(),
            })?
    }

    /// `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, …
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A scripted QMP server: greeting, then answers by the request's id, with an event
    /// thrown in before each answer.
    #[tokio::test]
    async fn commands_are_matched_by_id_and_events_skipped() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                seen.push(cmd.clone());
                w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n")
                    .await
                    .unwrap();
                let answer = match cmd.as_str() {
                    "query-status" => {
                        json!({"id": v["id"], "return": {"status": "paused", "running": false}})
                    }
                    "stop" => {
                        json!({"id": v["id"], "error": {"class": "GenericError", "desc": "nope"}})
                    }
                    _ => json!({"id": v["id"], "return": {}}),
                };
                w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest).await;
            seen
        });
        let mut q = Qmp::connect(&sock).await.unwrap();
        assert_eq!(q.status().await.unwrap(), "paused");
        let e = q.execute("stop", None).await.unwrap_err();
        assert_eq!(e.to_string(), "QMP stop failed: GenericError: nope");
        drop(q);
        assert_eq!(
            server.await.unwrap(),
            ["qmp_capabilities", "query-status", "stop"]
        );
        let e = Qmp::connect(&d.path().join("missing")).await.err().unwrap();
        assert!(e.to_string().contains("cannot connect to QMP socket"));
    }
}
