//! `kraal task`: queue prompts to run in workspaces of their own, see the board, cancel,
//! retry and accept tasks, compare a best-of-N task's attempts side by side and pick one.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use kraal_api::{CreateSession, CreateTask, CreateWorkspace, Task, TaskList};
use kraal_core::{AgentKind, Resources, Source, TaskState, parse_memory_mib};

use crate::client::{Client, enc};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Queue a task: a prompt run by an agent in a workspace of its own.
    Add(Box<AddArgs>),
    /// The board: tasks by state.
    Ls {
        /// Only these states (comma-separated: queued,running,needs_review,done,failed,cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One task in full.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Take a queued task off the queue, or stop a running one (its workspace is kept).
    Cancel { id: String },
    /// Queue a failed or cancelled task again, in a fresh workspace.
    Retry { id: String },
    /// Accept a task that waits for review.
    Done { id: String },
    /// The attempts of a best-of-N task side by side: changes, check, cost, duration.
    Compare {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep one attempt of a best-of-N task; the others are cancelled and removed.
    Pick { id: String },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// A local directory or a git URL to check out (not needed with --template).
    pub source: Option<String>,
    /// The prompt (`-` reads it from standard input).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, value_name = "PATH", conflicts_with = "message")]
    pub file: Option<String>,
    /// One task per unchecked item (`- [ ] …`) of this markdown file in the (local)
    /// checkout; each box is ticked by a commit in its task's checkout when done. A prompt
    /// (-m) is then optional and added to every item.
    #[arg(long, value_name = "FILE")]
    pub checklist: Option<String>,
    /// Take checkout, agent and resources from a template.
    #[arg(long)]
    pub template: Option<String>,
    /// Branch to check out (git sources).
    #[arg(long)]
    pub branch: Option<String>,
    /// The agent; a comma-separated list makes the attempts take turns (claude,codex).
    #[arg(long, value_delimiter = ',', value_parser = crate::cli::agent_kind)]
    pub agent: Vec<AgentKind>,
    /// Best-of-N: run this many attempts from the same source.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// The project's check command, run in each workspace when the agent is done
    /// (e.g. 'cargo test'); compared with `kraal task compare`.
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,
    /// Model name, as the agent knows it.
    #[arg(long)]
    pub model: Option<String>,
    /// Program to run instead of the agent's usual one.
    #[arg(long)]
    pub binary: Option<String>,
    /// Extra argument for the agent (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Extra environment variable for the agent (not for secrets).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// CPU cores of each workspace.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit of each workspace, e.g. 2G.
    #[arg(long)]
    pub memory: Option<String>,
    /// Image of each workspace.
    #[arg(long)]
    pub image: Option<String>,
    /// Let the workspaces reach this host (repeatable).
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Cap each attempt's model spend at this many USD (its requests wait once reached;
    /// `kraal budget set --task ID` raises it).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub budget_usd: Option<f64>,
    /// Wait until every attempt has left the queue and finished its turn.
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(c: &Client, cmd: TaskCommand) -> anyhow::Result<i32> {
    match cmd {
        TaskCommand::Add(a) => add(c, *a).await,
        TaskCommand::Ls { state, json } => {
            let path = match &state {
                Some(s) => format!("/v1/tasks?state={}", enc(s)),
                None => "/v1/tasks".to_owned(),
            };
            let l: TaskList = c.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                board(&l);
            }
            Ok(0)
        }
        TaskCommand::Show { id, json } => {
            let t: Task = c.get(&format!("/v1/tasks/{}", enc(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                show(&t);
            }
            Ok(0)
        }
        TaskCommand::Cancel { id } => act(c, &id, "cancel", "cancelled").await,
        TaskCommand::Retry { id } => act(c, &id, "retry", "queued again").await,
        TaskCommand::Done { id } => act(c, &id, "done", "done").await,
        TaskCommand::Compare { id, json } => {
            let l: TaskList = c.get(&format!("/v1/tasks/{}/attempts", enc(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l.tasks)?);
            } else {
                compare(&l.tasks);
            }
            Ok(0)
        }
        TaskCommand::Pick { id } => {
            let l: TaskList = c
                .send::<(), _>(Method::POST, &format!("/v1/tasks/{}/pick", enc(&id)), None)
                .await?;
            for t in &l.tasks {
                if t.picked {
                    eprintln!(
                        "picked attempt {} ({}); workspace {} is kept",
                        t.attempt,
                        t.id,
                        t.workspace.as_deref().unwrap_or("-")
                    );
                } else {
                    eprintln!(
                        "attempt {} ({}) is {}; its workspace is removed",
                        t.attempt, t.id, t.state
                    );
                }
            }
            Ok(0)
        }
    }
}

fn prompt_of(a: &AddArgs) -> anyhow::Result<String> {
    let p = match (&a.message, &a.file) {
        (Some(m), _) if m == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from standard input")?;
            s
        }
        (Some(m), _) => m.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading the prompt from {f}"))?
        }
        (None, None) if a.checklist.is_some() => String::new(),
        (None, None) => {
            bail!("a task needs a prompt: -m TEXT, -m - (standard input) or --file PATH")
        }
    };
    if p.trim().is_empty() && a.checklist.is_none() {
        bail!("the prompt is empty");
    }
    Ok(p)
}

fn source_of(s: &str, branch: Option<String>) -> anyhow::Result<Source> {
    if Source::looks_like_git_url(s) {
        return Ok(Source::git(s, branch)?);
    }
    let p = Path::new(s);
    if !p.is_dir() {
        bail!("{s} is not a directory or a git URL");
    }
    Ok(Source::local(
        p.canonicalize()
            .with_context(|| format!("cannot resolve {s}"))?,
    )?)
}

async fn add(c: &Client, a: AddArgs) -> anyhow::Result<i32> {
    let prompt = prompt_of(&a)?;
    if let Some(b) = a.budget_usd
        && !b.is_finite()
    {
        bail!("--budget-usd {b} is not a number");
    }
    let workspace = match (&a.source, &a.template) {
        (None, None) => bail!("give a source (a directory or a git URL) or --template NAME"),
        (Some(s), _) => {
            let mut res = Resources::default();
            if let Some(c) = a.cpus {
                res.cpus = c;
            }
            if let Some(m) = &a.memory {
                res.memory_mib = parse_memory_mib(m)?;
            }
            res.validate()?;
            Some(CreateWorkspace {
                resources: Some(res),
                image: a.image.clone(),
                allow: a.allow.clone(),
                ..CreateWorkspace::of(source_of(s, a.branch.clone())?)
            })
        }
        (None, Some(_)) => None,
    };
    let env = a
        .env
        .iter()
        .map(|e| kraal_core::parse_env_entry(e).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let body = CreateTask {
        prompt,
        template: a.template.clone(),
        workspace,
        session: Some(CreateSession {
            agent: a.agent.first().copied(),
            model: a.model.clone(),
            binary: a.binary.clone(),
            args: a.args.clone(),
            env,
            ..Default::default()
        }),
        attempts: Some(a.attempts),
        agents: if a.agent.len() > 1 {
            a.agent.clone()
        } else {
            vec![]
        },
        check: a.check.clone(),
        budget_usd: a.budget_usd,
        checklist: a.checklist.clone(),
        origin: Some("cli".into()),
    };
    let l: TaskList = c.send(Method::POST, "/v1/tasks", Some(&body)).await?;
    for t in &l.tasks {
        println!("{}", t.id);
    }
    eprintln!(
        "queued {} task{} ({} running of {} at most, {} waiting)",
        l.tasks.len(),
        if l.tasks.len() == 1 { "" } else { "s" },
        l.queue.running,
        l.queue.max_running,
        l.queue.queued
    );
    if !a.wait {
        return Ok(0);
    }
    let ids: Vec<String> = l.tasks.iter().map(|t| t.id.clone()).collect();
    loop {
        let mut all_settled = true;
        let mut failed = false;
        for id in &ids {
            let t: Task = c.get(&format!("/v1/tasks/{}", enc(id))).await?;
            match t.state {
                TaskState::Queued | TaskState::Running => all_settled = false,
                TaskState::Failed | TaskState::Cancelled => failed = true,
                _ => {}
            }
        }
        if all_settled {
            if ids.len() > 1 {
                let l: TaskList = c
                    .get(&format!("/v1/tasks/{}/attempts", enc(&ids[0])))
                    .await?;
                compare(&l.tasks);
            }
            return Ok(if failed { 1 } else { 0 });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn act(c: &Client, id: &str, op: &str, done: &str) -> anyhow::Result<i32> {
    let l: TaskList = c
        .send::<(), _>(Method::POST, &format!("/v1/tasks/{}/{op}", enc(id)), None)
        .await?;
    for t in &l.tasks {
        eprintln!("task {} {done}", t.id);
    }
    Ok(0)
}

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t
}

fn dur(t: &Task) -> String {
    t.duration_secs
        .map(|s| crate::render::duration(Duration::from_secs_f64(s)))
        .unwrap_or_else(|| "-".into())
}

fn board(l: &TaskList) {
    let q = &l.queue;
    eprintln!(
        "{} running (at most {}{}), {} queued",
        q.running,
        q.max_running,
        if q.per_repo > 0 {
            format!(", {} per repository", q.per_repo)
        } else {
            String::new()
        },
        q.queued
    );
    if l.tasks.is_empty() {
        eprintln!("no tasks; queue one with `kraal task add DIR|URL -m \"what to do\"`");
        return;
    }
    let mut t = table();
    t.set_header(["ID", "STATE", "AGENT", "WORKSPACE", "TIME", "COST", "TITLE"]);
    for task in &l.tasks {
        t.add_row([
            task.id.clone(),
            task.state.to_string(),
            task.agent.to_string(),
            task.workspace.clone().unwrap_or_else(|| "-".into()),
            dur(task),
            task.usage
                .as_ref()
                .map(|u| format!("${:.4}", u.cost_usd))
                .unwrap_or_else(|| "-".into()),
            crate::render::clean(&task.title).chars().take(50).collect(),
        ]);
    }
    println!("{}", t.trim_fmt());
}

fn show(t: &Task) {
    let line = |k: &str, v: String| println!("{k:>10}  {v}");
    line("id", t.id.clone());
    line("state", t.state.to_string());
    if let Some(r) = &t.reason {
        line("reason", crate::render::clean(r));
    }
    line("source", t.source.describe());
    line("agent", t.agent.to_string());
    if let Some(g) = &t.group {
        line("attempt", format!("{} of group {g}", t.attempt));
    }
    line(
        "workspace",
        t.workspace.clone().unwrap_or_else(|| "-".into()),
    );
    line(
        "session",
        t.session_id.clone().unwrap_or_else(|| "-".into()),
    );
    line("time", dur(t));
    if let Some(u) = &t.usage {
        line(
            "usage",
            format!(
                "${:.4} ({} in, {} out tokens)",
                u.cost_usd, u.input_tokens, u.output_tokens
            ),
        );
    }
    if let Some(d) = &t.diff {
        line(
            "changes",
            format!("{} files, +{} -{}", d.files, d.added, d.removed),
        );
    }
    if let Some(ch) = &t.check {
        line(
            "check",
            format!(
                "{} `{}` (exit {})",
                if ch.passed { "passed" } else { "FAILED" },
                ch.command,
                ch.code
            ),
        );
    }
    line("created", t.created_at.clone());
    println!();
    println!("{}", crate::render::clean(&t.prompt));
}

fn compare(tasks: &[Task]) {
    let mut t = table();
    t.set_header([
        "ATTEMPT",
        "ID",
        "AGENT",
        "STATE",
        "CHANGES",
        "CHECK",
        "COST",
        "TIME",
        "WORKSPACE",
    ]);
    for a in tasks {
        t.add_row([
            format!("{}{}", a.attempt, if a.picked { " *" } else { "" }),
            a.id.clone(),
            a.agent.to_string(),
            a.state.to_string(),
            a.diff
                .map(|d| format!("{} files +{} -{}", d.files, d.added, d.removed))
                .unwrap_or_else(|| "-".into()),
            match &a.check {
                Some(c) if c.passed => "passed".into(),
                Some(c) => format!("failed ({})", c.code),
                None => "-".into(),
            },
            a.usage
                .as_ref()
                .map(|u| format!("${:.4}", u.cost_usd))
                .unwrap_or_else(|| "-".into()),
            dur(a),
            a.workspace.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{}", t.trim_fmt());
}
