//! Tasks on a git host: the checkout fetched inside the sandbox through the git gateway
//! (the token stays on the host), the branch pushed and a pull request opened when a turn
//! ends, and the watch that turns failed checks and new review comments into the agent's
//! next message in the same session, until the pull request is green, merged or closed.

use std::sync::Arc;
use std::time::Duration;

use kraal_core::{ForgeTarget, PullState, PullStatus, SessionInput, TaskSpec, TaskState};
use kraal_engine::{Engine, chain};
use kraal_forge::{Check, Comment, Forge, ForgeHost, NewPull};
use kraal_store::TaskRecord;

use crate::{Scheduler, TaskError};

/// Where the daemon's tokens come from (its stored secrets).
pub trait Secrets: Send + Sync + 'static {
    fn secret(&self, name: &str) -> Option<String>;
}

/// The git hosts the daemon speaks the API of, the tokens for them, and how often pull
/// requests and labelled issues are looked at.
pub struct Forges {
    hosts: Vec<ForgeHost>,
    secrets: Arc<dyn Secrets>,
    pub poll: Duration,
}

impl Forges {
    pub fn new(hosts: Vec<ForgeHost>, secrets: Arc<dyn Secrets>, poll: Duration) -> Self {
        Forges {
            hosts,
            secrets,
            poll: poll.max(Duration::from_millis(200)),
        }
    }

    pub fn host(&self, host: &str) -> Result<&ForgeHost, TaskError> {
        self.hosts.iter().find(|h| h.host == host).ok_or_else(|| {
            let known: Vec<&str> = self.hosts.iter().map(|h| h.host.as_str()).collect();
            TaskError::Invalid(format!(
                "kraal knows no git host API for {host} (known: {}); add it with `kraal serve --forge github:{host}=API_URL`",
                known.join(", ")
            ))
        })
    }

    /// The secret a task's calls to `host` use: the one the task names for the host
    /// (`--git HOST=SECRET`), else `<kind>-token`.
    pub fn secret_name(git: &[kraal_core::GitCredential], host: &ForgeHost) -> String {
        git.iter()
            .find(|g| g.host == host.host)
            .map(|g| g.secret.clone())
            .unwrap_or_else(|| format!("{}-token", host.kind.as_str()))
    }

    /// A client for `host` with the token of secret `secret`.
    pub fn client(&self, host: &str, secret: &str) -> Result<Forge, TaskError> {
        let h = self.host(host)?;
        let token = self.secrets.secret(secret).ok_or_else(|| {
            TaskError::Invalid(format!(
                "secret {secret} (the token for {host}) is not set; `kraal secret set {secret}`"
            ))
        })?;
        Forge::new(h, token).map_err(|e| TaskError::Invalid(e.to_string()))
    }

    /// A stored secret (a webhook's signing key).
    pub fn secret(&self, name: &str) -> Option<String> {
        self.secrets.secret(name)
    }

    /// The client a task's forge calls go through.
    pub fn for_task(&self, spec: &TaskSpec) -> Result<(Forge, ForgeTarget), TaskError> {
        let f = spec
            .forge
            .clone()
            .ok_or_else(|| TaskError::Invalid("the task is not on a git host".into()))?;
        let h = self.host(&f.host)?;
        let secret = Self::secret_name(&spec.git, h);
        Ok((self.client(&f.host, &secret)?, f))
    }
}

/// The branch a task's work goes to.
pub fn branch_of(t: &TaskRecord) -> String {
    format!("kraal/{}", t.id)
}

/// Runs a script in the task's checkout; its stdout, or the error with its stderr.
async fn run(engine: &Engine, ws: &str, script: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    let c = engine
        .capture(ws, &argv, Duration::from_secs(600), 64 * 1024)
        .await
        .map_err(|e| chain(&e))?;
    if c.code != 0 {
        let err = c.stderr.trim();
        return Err(if err.is_empty() {
            format!("exit code {}", c.code)
        } else {
            crate::finish::tail(err, 2000)
        });
    }
    Ok(c.stdout)
}

/// Identity for kraal's commits where the checkout has none.
const IDENTITY: &str = "if ! git config user.email >/dev/null; then \
    export GIT_AUTHOR_NAME=kraal GIT_AUTHOR_EMAIL=kraal@localhost \
    GIT_COMMITTER_NAME=kraal GIT_COMMITTER_EMAIL=kraal@localhost; fi";

/// Fetches the task's base branch into `/workspace` on the task's branch (once: a checkout
/// that has a commit is left as it is). The URL goes through the git gateway.
pub(crate) async fn checkout(engine: &Engine, ws: &str, t: &TaskRecord) -> Result<(), String> {
    let Some(f) = &t.spec.forge else {
        return Ok(());
    };
    let script = "set -e; cd /workspace; \
        if git rev-parse -q --verify HEAD >/dev/null 2>&1; then exit 0; fi; \
        git init -q; git remote remove origin 2>/dev/null || true; git remote add origin \"$1\"; \
        mkdir -p .git/info; echo .kraal/ >> .git/info/exclude; \
        git fetch -q origin \"refs/heads/$2\"; git update-ref refs/kraal/base FETCH_HEAD; \
        git checkout -q -B \"$3\" FETCH_HEAD";
    run(
        engine,
        ws,
        script,
        &[&f.clone_url(), &f.base, &branch_of(t)],
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("fetching {} ({}): {e}", f.key(), f.base))
}

/// Commits what the agent left in the working tree, pushes the task's branch and opens its
/// pull request (or finds the one already open). `None` when there is nothing to propose.
pub(crate) async fn publish(
    engine: &Engine,
    forges: &Forges,
    ws: &str,
    t: &TaskRecord,
) -> Result<Option<PullState>, String> {
    let (forge, f) = forges.for_task(&t.spec).map_err(|e| e.to_string())?;
    let branch = branch_of(t);
    let closes = f
        .issue
        .map(|n| format!("\n\nCloses #{n}."))
        .unwrap_or_default();
    let msg = format!("{}\n\nkraal task {}{closes}", t.title, t.id);
    let script = format!(
        "set -e; cd /workspace; {IDENTITY}; git add -A; \
         git diff --cached --quiet || git commit -q -m \"$1\"; \
         if [ \"$(git rev-list --count refs/kraal/base..HEAD)\" = 0 ]; then echo none; exit 0; fi; \
         git push -q origin \"HEAD:refs/heads/$2\" >/dev/null; git rev-parse HEAD"
    );
    let out = run(engine, ws, &script, &[&msg, &branch])
        .await
        .map_err(|e| format!("pushing {branch}: {e}"))?;
    let head = out.trim().to_owned();
    if head == "none" {
        return Ok(None);
    }
    let mut pr = t.pr.clone();
    if pr.is_none() {
        let found = forge
            .find_pull(&f.repo, &branch)
            .await
            .map_err(|e| format!("looking for the pull request of {branch}: {e}"))?;
        let pull = match found {
            Some(p) => p,
            None => forge
                .create_pull(
                    &f.repo,
                    &NewPull {
                        title: t.title.clone(),
                        head: branch.clone(),
                        base: f.base.clone(),
                        body: format!(
                            "{}{closes}\n\n---\nOpened by kraal for task `{}`; failed checks and review comments go back to the agent.",
                            crate::finish::tail(&t.prompt, 4000),
                            t.id
                        ),
                    },
                )
                .await
                .map_err(|e| format!("opening the pull request: {e}"))?,
        };
        pr = Some(PullState {
            number: pull.number,
            url: pull.url,
            branch: branch.clone(),
            head: head.clone(),
            status: PullStatus::Pending,
            rounds: 0,
            pushes: 0,
            seen_comment: 0,
            reported: Vec::new(),
            pending_message: None,
            after_seq: 0,
        });
    }
    let mut pr = pr.expect("set above");
    pr.head = head;
    pr.pushes += 1;
    pr.status = PullStatus::Pending;
    Ok(Some(pr))
}

/// What the host says about a pull request now.
struct Seen {
    open: bool,
    merged: bool,
    head: String,
    checks: Vec<Check>,
    comments: Vec<Comment>,
}

async fn look(forge: &Forge, repo: &str, pr: &PullState) -> Result<Seen, kraal_forge::ForgeError> {
    let pull = forge.pull(repo, pr.number).await?;
    let checks = forge.checks(repo, &pull.head_sha).await?;
    let comments = forge
        .comments(repo, pr.number)
        .await?
        .into_iter()
        .filter(|c| c.id > pr.seen_comment)
        .collect();
    Ok(Seen {
        open: pull.open,
        merged: pull.merged,
        head: pull.head_sha,
        checks,
        comments,
    })
}

/// The agent's next message: what failed and what reviewers said.
fn feedback(pr: &PullState, failed: &[&Check], comments: &[Comment]) -> String {
    let mut m = format!("Your pull request {} needs more work.\n", pr.url);
    if !failed.is_empty() {
        m.push_str("\nFailed checks:\n");
        for c in failed {
            m.push_str(&format!("\n### {}\n", c.name));
            if !c.details.trim().is_empty() {
                m.push_str(c.details.trim());
                m.push('\n');
            }
            if let Some(u) = &c.url {
                m.push_str(&format!("({u})\n"));
            }
        }
    }
    if !comments.is_empty() {
        m.push_str("\nReview comments:\n");
        for c in comments {
            let at = match (&c.path, c.line) {
                (Some(p), Some(l)) => format!(" on {p}:{l}"),
                (Some(p), None) => format!(" on {p}"),
                _ => String::new(),
            };
            m.push_str(&format!("\n- {}{at}: {}\n", c.author, c.body.trim()));
        }
    }
    m.push_str(
        "\nFix this in /workspace. When your turn ends kraal commits and pushes the branch again.",
    );
    m
}

impl Scheduler {
    /// Looks at every followed pull request once: merged or closed ends the task, failed
    /// checks (once all have finished) and new comments send the agent back to work.
    pub(crate) async fn watch_pulls(self: &Arc<Self>) {
        let Some(forges) = self.forges.get().cloned() else {
            return;
        };
        let Ok(waiting) = self.list(&[TaskState::NeedsReview]) else {
            return;
        };
        for t in waiting {
            let Some(pr) = t.pr.clone().filter(|p| !p.status.is_final()) else {
                continue;
            };
            let seen = match forges.for_task(&t.spec) {
                Ok((forge, f)) => look(&forge, &f.repo, &pr).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let seen = match seen {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(task = %t.id, "following pull request #{}: {e}", pr.number);
                    continue;
                }
            };
            if let Err(e) = self.after_look(&t, seen).await {
                tracing::warn!(task = %t.id, "pull request #{}: {e}", pr.number);
            }
        }
    }

    async fn after_look(
        self: &Arc<Self>,
        seen_for: &TaskRecord,
        seen: Seen,
    ) -> Result<(), TaskError> {
        let _g = self.lock.lock().await;
        let Some(mut t) = self.engine.store().get_task(&seen_for.id)? else {
            return Ok(());
        };
        // Changed while the host was asked (done, retried, another look).
        if t.state != TaskState::NeedsReview || t.pr != seen_for.pr {
            return Ok(());
        }
        let mut pr = t.pr.clone().expect("checked by the caller");
        let max = t.spec.forge.as_ref().map_or(0, |f| f.max_rounds);
        if seen.merged {
            pr.status = PullStatus::Merged;
            t.pr = Some(pr.clone());
            t.state = TaskState::Done;
            t.reason = Some(format!("pull request #{} was merged", pr.number));
        } else if !seen.open {
            pr.status = PullStatus::Closed;
            t.pr = Some(pr.clone());
            t.state = TaskState::Cancelled;
            t.reason = Some(format!(
                "pull request #{} was closed without merging",
                pr.number
            ));
        } else {
            pr.head = seen.head.clone();
            let pending = seen.checks.iter().any(|c| c.pending);
            let failed: Vec<&Check> = seen.checks.iter().filter(|c| c.failed).collect();
            let report_checks = !pending && !failed.is_empty() && !pr.reported.contains(&pr.head);
            let status = if !failed.is_empty() {
                PullStatus::Failing
            } else if pending || seen.checks.is_empty() {
                PullStatus::Pending
            } else {
                PullStatus::Green
            };
            if report_checks || !seen.comments.is_empty() {
                if pr.rounds >= max {
                    pr.status = status;
                    let why = format!(
                        "pull request #{} has feedback; {} rounds were sent to the agent (the limit): it waits for you",
                        pr.number, pr.rounds
                    );
                    if t.reason.as_deref() == Some(why.as_str()) && t.pr.as_ref() == Some(&pr) {
                        return Ok(());
                    }
                    t.reason = Some(why);
                } else {
                    let shown: &[&Check] = if report_checks { &failed } else { &[] };
                    let msg = feedback(&pr, shown, &seen.comments);
                    if report_checks {
                        pr.reported.push(pr.head.clone());
                    }
                    if let Some(last) = seen.comments.iter().map(|c| c.id).max() {
                        pr.seen_comment = last;
                    }
                    pr.rounds += 1;
                    pr.status = status;
                    pr.pending_message = Some(msg);
                    t.reason = Some(format!(
                        "pull request #{}: {} failed check(s) and {} comment(s) sent to the agent (round {} of {max})",
                        pr.number,
                        shown.len(),
                        seen.comments.len(),
                        pr.rounds
                    ));
                    t.state = TaskState::Running;
                    t.finished_at = None;
                }
            } else {
                if pr.status == status && pr.head == seen_for.pr.as_ref().map_or("", |p| &p.head) {
                    return Ok(());
                }
                pr.status = status;
                if status == PullStatus::Green {
                    t.reason = Some(format!("pull request #{} is green", pr.number));
                }
            }
            t.pr = Some(pr);
        }
        if t.state.is_final() {
            t.finished_at.get_or_insert_with(kraal_store::now);
        }
        t.updated_at = kraal_store::now();
        self.engine.store().save_tasks(std::slice::from_ref(&t))?;
        drop(_g);
        self.wake.notify_one();
        Ok(())
    }

    /// Sends a running task's waiting feedback to its session, then notes from which event
    /// on its next turn counts.
    pub(crate) fn deliver(self: &Arc<Self>, t: TaskRecord, session: String) {
        let me = self.clone();
        self.off_lock(t.id.clone(), async move {
            let Some(msg) = t.pr.as_ref().and_then(|p| p.pending_message.clone()) else {
                return;
            };
            let before = match me.engine.session(&session) {
                Ok(s) => s.last_seq,
                Err(e) => {
                    tracing::warn!(task = %t.id, "feedback for session {session}: {}", chain(&e));
                    return;
                }
            };
            let sent = me
                .engine
                .send_input(&session, SessionInput::message(msg))
                .await;
            let _g = me.lock.lock().await;
            let Ok(Some(mut now)) = me.engine.store().get_task(&t.id) else {
                return;
            };
            if now.state != TaskState::Running || now.tries != t.tries {
                return;
            }
            match sent {
                Ok(_) => {
                    if let Some(p) = now.pr.as_mut() {
                        p.pending_message = None;
                        p.after_seq = before;
                    }
                    now.updated_at = kraal_store::now();
                    if let Err(e) = me.engine.store().save_tasks(std::slice::from_ref(&now)) {
                        tracing::error!(task = %t.id, "noting the feedback: {}", chain(&e));
                    }
                }
                Err(e) => tracing::warn!(task = %t.id, "sending the feedback: {} (tried again)", chain(&e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_names_each_failed_check_and_comment_with_its_place() {
        let pr = PullState {
            number: 3,
            url: "https://github.test/o/r/pull/3".into(),
            branch: "kraal/tk-1".into(),
            head: "abc".into(),
            status: PullStatus::Failing,
            rounds: 0,
            pushes: 1,
            seen_comment: 0,
            reported: vec![],
            pending_message: None,
            after_seq: 0,
        };
        let check = Check {
            name: "unit tests".into(),
            pending: false,
            failed: true,
            details: "assertion failed: add(2, 2) == 4".into(),
            url: Some("https://ci/1".into()),
        };
        let comment = Comment {
            id: 5,
            author: "octocat".into(),
            body: "please rename this".into(),
            path: Some("src/lib.rs".into()),
            line: Some(7),
        };
        let m = feedback(&pr, &[&check], &[comment]);
        for want in [
            "https://github.test/o/r/pull/3",
            "### unit tests",
            "assertion failed: add(2, 2) == 4",
            "(https://ci/1)",
            "- octocat on src/lib.rs:7: please rename this",
        ] {
            assert!(m.contains(want), "{want} missing from {m}");
        }
        let only_comments = feedback(&pr, &[], &[]);
        assert!(!only_comments.contains("Failed checks"));
    }
}
