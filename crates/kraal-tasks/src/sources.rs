//! Where tasks come from on their own: open issues with a label on a git host (polled,
//! and looked at at once when a signed webhook arrives), schedules (every N seconds or a
//! cron expression, UTC) and HTTP triggers with a token of their own. Each source keeps a
//! task template; each time it fires, a copy is queued through [`Scheduler::add`].

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kraal_core::ForgeTarget;
use kraal_forge::Issue;
use kraal_store::TaskRecord;
use serde::{Deserialize, Serialize};

use crate::{NewTask, Scheduler, TaskError};

/// Shortest interval of a schedule.
pub const MIN_EVERY_SECS: u64 = 5;

/// What a source is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// Open issues of `repo` with `label`: one task each (its pull request closes it).
    Issues {
        host: String,
        repo: String,
        label: String,
        /// The stored secret GitHub signs webhook deliveries with (`None`: polling only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_secret: Option<String>,
    },
    /// Every `every_secs` seconds, or at the times of `cron` (five fields, UTC).
    Schedule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cron: Option<String>,
    },
    /// `POST /v1/triggers/{id}` with the trigger's own token.
    Trigger { token_hash: String },
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Issues { .. } => "issues",
            SourceKind::Schedule { .. } => "schedule",
            SourceKind::Trigger { .. } => "trigger",
        }
    }
}

/// A source as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub id: String,
    pub kind: SourceKind,
    /// What each task it makes is (for issues: the instructions added to the issue).
    pub template: NewTask,
    pub created_at: String,
    #[serde(default)]
    pub last_run: Option<String>,
    #[serde(default)]
    pub next_run: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub tasks_made: u64,
}

/// A source to add.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub kind: NewSourceKind,
    pub template: NewTask,
}

#[derive(Debug, Clone)]
pub enum NewSourceKind {
    Issues {
        label: String,
        webhook_secret: Option<String>,
    },
    Schedule {
        every_secs: Option<u64>,
        cron: Option<String>,
    },
    Trigger,
}

/// What firing a trigger did.
#[derive(Debug, Clone)]
pub struct TriggerFired {
    pub tasks: Vec<TaskRecord>,
}

fn invalid(s: impl Into<String>) -> TaskError {
    TaskError::Invalid(s.into())
}

/// Parses a five-field cron expression (or `@daily` and its kin), with a clear error.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, TaskError> {
    let e = expr.trim();
    if e.split_whitespace().count() == 6 || e.split_whitespace().count() == 7 {
        return Err(invalid(format!(
            "cron expression {expr:?} has a seconds or year field; use five fields: minute hour day-of-month month day-of-week"
        )));
    }
    croner::Cron::from_str(e).map_err(|err| {
        invalid(format!(
            "cron expression {expr:?} is not valid ({err}); five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * 1-5\""
        ))
    })
}

/// A trigger's token: 32 random bytes, hex.
fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("kt_{}", hex::encode(b))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// When a schedule fires next after `after`.
fn next_after(kind: &SourceKind, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match kind {
        SourceKind::Schedule {
            every_secs: Some(s),
            ..
        } => Some(after + chrono::Duration::seconds(*s as i64)),
        SourceKind::Schedule { cron: Some(c), .. } => {
            parse_cron(c).ok()?.find_next_occurrence(&after, false).ok()
        }
        _ => None,
    }
}

/// The task an issue becomes: the issue's text, then the source's instructions.
pub fn task_from_issue(template: &NewTask, issue: &Issue) -> Result<NewTask, TaskError> {
    let mut t = template.clone();
    let f = t
        .spec
        .forge
        .as_mut()
        .ok_or_else(|| invalid("the template is not on a git host"))?;
    f.issue = Some(issue.number);
    let key = format!("{}#{}", f.key(), issue.number);
    let extra = if template.prompt.trim().is_empty() {
        String::new()
    } else {
        format!("\n\n{}", template.prompt.trim())
    };
    t.prompt = format!(
        "Issue #{} in {}: {}\n\n{}{extra}\n\n({})",
        issue.number,
        f.repo,
        issue.title,
        issue.body.trim(),
        issue.url
    );
    t.source_key = Some(key);
    Ok(t)
}

impl Scheduler {
    fn load_sources(&self) -> Result<Vec<SourceInfo>, TaskError> {
        let mut out = Vec::new();
        for (id, _, body) in self.engine.store().task_sources()? {
            match serde_json::from_str::<SourceInfo>(&body) {
                Ok(s) => out.push(s),
                Err(e) => tracing::error!(source = %id, "unreadable task source: {e}"),
            }
        }
        Ok(out)
    }

    fn save_source(&self, s: &SourceInfo) -> Result<(), TaskError> {
        let body = serde_json::to_string(s).map_err(|e| invalid(e.to_string()))?;
        self.engine
            .store()
            .save_task_source(&s.id, s.kind.name(), &body)?;
        Ok(())
    }

    pub fn sources(&self) -> Result<Vec<SourceInfo>, TaskError> {
        self.load_sources()
    }

    pub fn source(&self, id: &str) -> Result<SourceInfo, TaskError> {
        self.load_sources()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| TaskError::NotFound {
                reference: id.to_owned(),
            })
    }

    pub fn remove_source(&self, id: &str) -> Result<(), TaskError> {
        if !self.engine.store().delete_task_source(id)? {
            return Err(TaskError::NotFound {
                reference: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Where a task on `host/repo` starts: `base`, or the repository's default branch.
    pub async fn forge_target(
        &self,
        host: &str,
        repo: &str,
        git: &[kraal_core::GitCredential],
        base: Option<String>,
        pull_request: bool,
        max_rounds: u32,
    ) -> Result<ForgeTarget, TaskError> {
        kraal_forge::check_repo(repo).map_err(|e| invalid(e.to_string()))?;
        let forges = self.forges()?;
        let h = forges.host(host)?;
        let secret = crate::Forges::secret_name(git, h);
        let client = forges.client(host, &secret)?;
        let base = match base.filter(|b| !b.trim().is_empty()) {
            Some(b) => b,
            None => client.default_branch(repo).await.map_err(|e| {
                if e.is_not_found() {
                    invalid(format!(
                        "no repository {host}/{repo} (or the token cannot see it)"
                    ))
                } else {
                    invalid(format!("asking {host} about {repo}: {e}"))
                }
            })?,
        };
        Ok(ForgeTarget {
            host: h.host.clone(),
            repo: repo.to_owned(),
            issue: None,
            base,
            pull_request,
            max_rounds,
        })
    }

    /// Queues issue `number` of the template's repository as a task.
    pub async fn add_from_issue(
        &self,
        template: NewTask,
        number: u64,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let (client, f) = self.forges()?.for_task(&template.spec)?;
        let issue = client.issue(&f.repo, number).await.map_err(|e| {
            if e.is_not_found() {
                invalid(format!("no issue {}#{number}", f.key()))
            } else {
                invalid(format!("reading issue {}#{number}: {e}", f.key()))
            }
        })?;
        if issue.is_pull {
            return Err(invalid(format!(
                "{}#{number} is a pull request, not an issue",
                f.key()
            )));
        }
        let mut t = task_from_issue(&template, &issue)?;
        // Asked for by hand: made even if an earlier task came from the same issue.
        t.source_key = None;
        self.add(t).await
    }

    /// Adds a source; for a trigger, also returns its token (shown once).
    pub async fn add_source(
        &self,
        new: NewSource,
    ) -> Result<(SourceInfo, Option<String>), TaskError> {
        kraal_core::validate_task(
            if matches!(new.kind, NewSourceKind::Issues { .. }) {
                "(the issue)"
            } else {
                &new.template.prompt
            },
            new.template.attempts,
            new.template.spec.check.as_deref(),
        )?;
        let now = Utc::now();
        let mut token = None;
        let (kind, next) = match new.kind {
            NewSourceKind::Issues {
                label,
                webhook_secret,
            } => {
                let f =
                    new.template.spec.forge.clone().ok_or_else(|| {
                        invalid("an issue source needs a repository on a git host")
                    })?;
                if label.trim().is_empty() || label.len() > 100 {
                    return Err(invalid("the issue label must be 1 to 100 bytes"));
                }
                if let Some(s) = &webhook_secret
                    && self.forges()?.secret(s).is_none()
                {
                    return Err(invalid(format!(
                        "webhook secret {s} is not set; `kraal secret set {s}` with the hook's secret first"
                    )));
                }
                (
                    SourceKind::Issues {
                        host: f.host,
                        repo: f.repo,
                        label,
                        webhook_secret,
                    },
                    Some(now),
                )
            }
            NewSourceKind::Schedule { every_secs, cron } => {
                let kind = match (every_secs, cron) {
                    (Some(s), None) if s >= MIN_EVERY_SECS => SourceKind::Schedule {
                        every_secs: Some(s),
                        cron: None,
                    },
                    (Some(s), None) => {
                        return Err(invalid(format!(
                            "a schedule runs at most every {MIN_EVERY_SECS} s (got {s} s)"
                        )));
                    }
                    (None, Some(c)) => {
                        parse_cron(&c)?;
                        SourceKind::Schedule {
                            every_secs: None,
                            cron: Some(c.trim().to_owned()),
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "a schedule needs either an interval or a cron expression",
                        ));
                    }
                };
                let next = next_after(&kind, now);
                (kind, next)
            }
            NewSourceKind::Trigger => {
                let secret = random_token();
                let kind = SourceKind::Trigger {
                    token_hash: kraal_store::hash_secret(&secret),
                };
                token = Some(secret);
                (kind, None)
            }
        };
        let info = SourceInfo {
            id: format!("src-{}", &kraal_core::new_task_id()[3..]),
            kind,
            template: new.template,
            created_at: rfc3339(now),
            last_run: None,
            next_run: next.map(rfc3339),
            last_error: None,
            tasks_made: 0,
        };
        self.save_source(&info)?;
        self.nudge();
        Ok((info, token))
    }

    /// Fires trigger `id` if `token` is its own; `text` is added to the prompt.
    pub async fn fire_trigger(
        &self,
        id: &str,
        token: &str,
        text: Option<&str>,
    ) -> Result<TriggerFired, TaskError> {
        use subtle::ConstantTimeEq;
        let denied = || TaskError::Denied;
        let s = self.source(id).map_err(|_| denied())?;
        let SourceKind::Trigger { token_hash } = &s.kind else {
            return Err(denied());
        };
        let given = kraal_store::hash_secret(token);
        if !bool::from(given.as_bytes().ct_eq(token_hash.as_bytes())) {
            return Err(denied());
        }
        let mut t = s.template.clone();
        if let Some(x) = text.filter(|x| !x.trim().is_empty()) {
            t.prompt = format!("{}\n\n{}", t.prompt, x.trim());
        }
        let tasks = self.add(t).await?;
        self.ran(&s.id, tasks.len(), None)?;
        Ok(TriggerFired { tasks })
    }

    /// Notes that source `id` ran (and when it runs next).
    fn ran(&self, id: &str, made: usize, error: Option<String>) -> Result<(), TaskError> {
        let _g = self.sources_lock.lock().unwrap();
        let Ok(mut s) = self.source(id) else {
            return Ok(());
        };
        let now = Utc::now();
        s.last_run = Some(rfc3339(now));
        s.tasks_made += made as u64;
        s.last_error = error;
        s.next_run = match &s.kind {
            SourceKind::Schedule { .. } => next_after(&s.kind, now).map(rfc3339),
            SourceKind::Issues { .. } => s.next_run.clone(),
            SourceKind::Trigger { .. } => None,
        };
        self.save_source(&s)
    }

    /// Checks a webhook delivery for source `id` and acts on it: a labelled issue becomes a
    /// task; anything else about the repository (checks, reviews, comments) makes the pull
    /// request watch look at once. Returns the tasks made.
    pub async fn webhook(
        &self,
        id: &str,
        event: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let s = self.source(id).map_err(|_| TaskError::Denied)?;
        let SourceKind::Issues {
            label,
            webhook_secret: Some(secret),
            ..
        } = &s.kind
        else {
            return Err(TaskError::Denied);
        };
        let key = self
            .forges()?
            .secret(secret)
            .ok_or_else(|| invalid(format!("webhook secret {secret} is not set")))?;
        kraal_forge::verify_github_signature(key.as_bytes(), body, signature)
            .map_err(|e| TaskError::BadSignature(e.to_string()))?;
        self.nudge();
        if event != "issues" {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Delivery {
            action: String,
            issue: serde_json::Value,
        }
        let d: Delivery = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the issues delivery is not what GitHub sends: {e}")))?;
        if !matches!(d.action.as_str(), "opened" | "labeled" | "reopened") {
            return Ok(Vec::new());
        }
        let issue = kraal_forge::issue_from_json(d.issue)
            .map_err(|e| invalid(format!("the delivery's issue: {e}")))?;
        if !issue.open || issue.is_pull || !issue.labels.iter().any(|l| l == label) {
            return Ok(Vec::new());
        }
        let made = self.add(task_from_issue(&s.template, &issue)?).await?;
        self.ran(&s.id, made.len(), None)?;
        Ok(made)
    }

    /// Runs the sources that are due: schedules whose time came, issue sources (each
    /// pass: the pass runs at the forge poll interval or when nudged).
    pub(crate) async fn poll_sources(self: &Arc<Self>, forge_due: bool) {
        let Ok(all) = self.load_sources() else {
            return;
        };
        let now = Utc::now();
        for s in all {
            match &s.kind {
                SourceKind::Schedule { .. } => {
                    let due = s
                        .next_run
                        .as_deref()
                        .and_then(|n| DateTime::parse_from_rfc3339(n).ok())
                        .is_some_and(|n| n <= now);
                    if !due {
                        continue;
                    }
                    let (made, err) = match self.add(s.template.clone()).await {
                        Ok(t) => (t.len(), None),
                        Err(e) => (0, Some(e.to_string())),
                    };
                    if let Err(e) = self.ran(&s.id, made, err) {
                        tracing::warn!(source = %s.id, "noting the schedule's run: {e}");
                    }
                }
                SourceKind::Issues { .. } if !forge_due => {}
                SourceKind::Issues { label, .. } => {
                    let r = self.poll_issues(&s, label).await;
                    let (made, err) = match r {
                        Ok(n) => (n, None),
                        Err(e) => (0, Some(e.to_string())),
                    };
                    if (made > 0 || err != s.last_error)
                        && let Err(e) = self.ran(&s.id, made, err)
                    {
                        tracing::warn!(source = %s.id, "noting the poll: {e}");
                    }
                }
                SourceKind::Trigger { .. } => {}
            }
        }
    }

    async fn poll_issues(&self, s: &SourceInfo, label: &str) -> Result<usize, TaskError> {
        let (client, f) = self.forges()?.for_task(&s.template.spec)?;
        let issues = client
            .issues_with_label(&f.repo, label)
            .await
            .map_err(|e| invalid(format!("listing {} issues labelled {label}: {e}", f.key())))?;
        let mut made = 0;
        for i in issues {
            let key = format!("{}#{}", f.key(), i.number);
            if self.engine.store().has_task_from(&key)? {
                continue;
            }
            made += self.add(task_from_issue(&s.template, &i)?).await?.len();
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_parse_and_malformed_ones_are_named() {
        let c = parse_cron("0 3 * * 1-5").unwrap();
        let from = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // 2026-12-05 is a Saturday: the next weekday 03:00 is Monday the 7th.
        assert_eq!(
            rfc3339(c.find_next_occurrence(&from, false).unwrap()),
            "2026-12-07T03:00:00Z"
        );
        assert!(parse_cron("@daily").is_ok());
        for bad in [
            "61 * * * *",
            "* * *",
            "every day",
            "0 0 3 * * *",
            "*/0 * * * *",
        ] {
            let e = parse_cron(bad).unwrap_err().to_string();
            assert!(e.contains("cron expression"), "{bad}: {e}");
        }
    }

    #[test]
    fn schedules_step_by_their_interval() {
        let k = SourceKind::Schedule {
            every_secs: Some(86400),
            cron: None,
        };
        let from = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            rfc3339(next_after(&k, from).unwrap()),
            "2026-12-06T10:00:00Z"
        );
    }
}
