//! `kraal task source`: the sources that queue tasks on their own — open issues with a
//! label on a git host, schedules (`--every`, `--cron`) and HTTP triggers with their own
//! token — added, listed and removed.

use clap::{Args, Subcommand};
use hyper::Method;
use kraal_api::{CreateTaskSource, TaskSource, TaskSourceList};

use crate::client::{Client, enc};
use crate::tasks::{AddArgs, request, request_with};

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Add a source: `issues` (--repo, --label), `schedule` (--every or --cron) or
    /// `trigger` (prints its URL and token once).
    Add(Box<SourceAddArgs>),
    /// The sources, with when they last ran and what they made.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a source (the tasks it made stay).
    Rm { id: String },
}

#[derive(Debug, Args)]
pub struct SourceAddArgs {
    #[arg(value_parser = ["issues", "schedule", "trigger"])]
    pub kind: String,
    /// Issues: the label that makes an open issue a task.
    #[arg(long)]
    pub label: Option<String>,
    /// Issues: the stored secret the repository's webhook signs deliveries with; point
    /// the webhook at /hooks/github/ID on the daemon's TCP listener (polling runs either
    /// way).
    #[arg(long, value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// The task each firing queues.
    #[command(flatten)]
    pub task: AddArgs,
}

pub async fn run(c: &Client, cmd: SourceCommand) -> anyhow::Result<i32> {
    match cmd {
        SourceCommand::Add(a) => {
            let a = *a;
            let (every, cron) = (a.task.every.clone(), a.task.cron.clone());
            // An issues source's prompt is optional: each issue brings its own.
            let mut task = request_with(&a.task, a.kind == "issues")?;
            if a.kind == "issues" {
                task.pull_request = task.pull_request.or(Some(true));
            }
            let body = CreateTaskSource {
                kind: a.kind,
                task,
                label: a.label,
                webhook_secret: a.webhook_secret,
                every,
                cron,
            };
            create(c, &body).await
        }
        SourceCommand::Ls { json } => {
            let l: TaskSourceList = c.get("/v1/task-sources").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(0);
            }
            if l.sources.is_empty() {
                eprintln!(
                    "no task sources; add one with `kraal task source add issues --repo OWNER/REPO --label kraal`"
                );
                return Ok(0);
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header([
                "ID", "KIND", "WHAT", "TASKS", "LAST RUN", "NEXT RUN", "ERROR",
            ]);
            for s in &l.sources {
                t.add_row([
                    s.id.clone(),
                    s.kind.clone(),
                    crate::render::clean(&s.detail),
                    s.tasks_made.to_string(),
                    s.last_run.clone().unwrap_or_else(|| "-".into()),
                    s.next_run.clone().unwrap_or_else(|| "-".into()),
                    s.last_error
                        .as_deref()
                        .map(crate::render::clean)
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{}", t.trim_fmt());
            Ok(0)
        }
        SourceCommand::Rm { id } => {
            c.raw(
                Method::DELETE,
                &format!("/v1/task-sources/{}", enc(&id)),
                None,
            )
            .await?;
            eprintln!("removed task source {id}");
            Ok(0)
        }
    }
}

/// `kraal task add … --every 1d`: the same task, as a schedule.
pub async fn add_schedule(c: &Client, a: &AddArgs) -> anyhow::Result<i32> {
    if a.from_issue.is_some() {
        anyhow::bail!(
            "--every and --cron repeat a task; an issue is worked on once (use `kraal task source add issues` for every labelled issue)"
        );
    }
    let body = CreateTaskSource {
        kind: "schedule".into(),
        task: request(a)?,
        label: None,
        webhook_secret: None,
        every: a.every.clone(),
        cron: a.cron.clone(),
    };
    create(c, &body).await
}

async fn create(c: &Client, body: &CreateTaskSource) -> anyhow::Result<i32> {
    let s: TaskSource = c.send(Method::POST, "/v1/task-sources", Some(body)).await?;
    println!("{}", s.id);
    eprintln!(
        "added task source {}: {}",
        s.id,
        crate::render::clean(&s.detail)
    );
    if let Some(n) = &s.next_run {
        eprintln!("first run {n}");
    }
    if let Some(p) = &s.webhook_path {
        eprintln!("webhook: POST {p} on the daemon's TCP listener (content type application/json)");
    }
    if let Some(token) = &s.token {
        eprintln!(
            "trigger: POST /v1/triggers/{} with `Authorization: Bearer <token>` and an optional {{\"text\": …}}; the token, shown only now:",
            s.id
        );
        println!("{token}");
    }
    Ok(0)
}
