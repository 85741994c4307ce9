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
    /// Where tasks come from on their own: labelled issues, schedules, HTTP triggers.
    #[command(subcommand)]
    Source(crate::task_sources::SourceCommand),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// A local directory or a git URL to check out (not needed with --template, --repo
    /// or --from-issue).
    pub source: Option<String>,
    /// Work on an issue: OWNER/REPO#N, HOST/OWNER/REPO#N or the issue's URL. Its title
    /// and text are the prompt (-m adds instructions); the branch is pushed and a pull
    /// request opened and watched (--no-pr: not).
    #[arg(long, value_name = "ISSUE", conflicts_with_all = ["source", "checklist"])]
    pub from_issue: Option<String>,
    /// A repository on a git host, OWNER/REPO or HOST/OWNER/REPO: fetched inside the
    /// sandbox through the git gateway (the token stays on the host).
    #[arg(long, value_name = "REPO", conflicts_with_all = ["source", "from_issue"])]
    pub repo: Option<String>,
    /// Push the task's branch and open a pull request when the agent is done, then send
    /// failed checks and review comments back to it until the pull request is green.
    #[arg(long, conflicts_with = "no_pr")]
    pub pr: bool,
    /// No pull request for --from-issue.
    #[arg(long)]
    pub no_pr: bool,
    /// The branch to start from and to target (default: the repository's default).
    #[arg(long, value_name = "BRANCH")]
    pub base: Option<String>,
    /// Feedback rounds (failed checks, review comments) sent to the agent at most.
    #[arg(long, value_name = "N")]
    pub max_rounds: Option<u32>,
    /// The token for a git host, HOST=SECRET[:OWNER/REPO,…] (repeatable; default for a
    /// --repo host: the secret `github-token`). It is sent only for the task's repository
    /// on HOST (--repo, or the source's) and the repositories listed.
    #[arg(long, value_name = "HOST=SECRET[:OWNER/REPO,…]", value_parser = crate::cli::git_credential)]
    pub git: Vec<kraal_core::GitCredential>,
    /// Queue the task again and again at this interval (90s, 6h, 1d): a schedule source.
    #[arg(long, value_name = "INTERVAL", conflicts_with = "cron")]
    pub every: Option<String>,
    /// Queue the task at the times of this cron expression (five fields, UTC): a
    /// schedule source.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
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
        TaskCommand::Source(cmd) => crate::task_sources::run(c, cmd).await,
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

fn prompt_of(a: &AddArgs, optional: bool) -> anyhow::Result<String> {
    let optional = optional || a.checklist.is_some() || a.from_issue.is_some();
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
        (None, None) if optional => String::new(),
        (None, None) => {
            bail!("a task needs a prompt: -m TEXT, -m - (standard input) or --file PATH")
        }
    };
    if p.trim().is_empty() && !optional {
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

/// The request `kraal task add` (and `kraal task source add`) sends.
pub(crate) fn request(a: &AddArgs) -> anyhow::Result<CreateTask> {
    request_with(a, false)
}

/// [`request`], with the prompt optional when `optional_prompt`.
pub(crate) fn request_with(a: &AddArgs, optional_prompt: bool) -> anyhow::Result<CreateTask> {
    let prompt = prompt_of(a, optional_prompt)?;
    if let Some(b) = a.budget_usd
        && !b.is_finite()
    {
        bail!("--budget-usd {b} is not a number");
    }
    let on_forge = a.repo.is_some() || a.from_issue.is_some();
    let workspace = match (&a.source, &a.template) {
        (None, None) if !on_forge => bail!(
            "give a source (a directory or a git URL), --repo OWNER/REPO, --from-issue OWNER/REPO#N or --template NAME"
        ),
        (None, None) => Some(CreateWorkspace {
            resources: Some(resources(a)?),
            image: a.image.clone(),
            allow: a.allow.clone(),
            git: a.git.clone(),
            ..CreateWorkspace::of(Source::Empty)
        }),
        (Some(s), _) => {
            let source = source_of(s, a.branch.clone())?;
            Some(CreateWorkspace {
                resources: Some(resources(a)?),
                image: a.image.clone(),
                allow: a.allow.clone(),
                git: crate::commands::scoped_git(a.git.clone(), &source)?,
                ..CreateWorkspace::of(source)
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
        repo: a.repo.clone(),
        from_issue: a.from_issue.clone(),
        pull_request: if a.pr {
            Some(true)
        } else if a.no_pr {
            Some(false)
        } else {
            None
        },
        base: a.base.clone(),
        max_rounds: a.max_rounds,
    };
    Ok(body)
}

fn resources(a: &AddArgs) -> anyhow::Result<Resources> {
    let mut res = Resources::default();
    if let Some(c) = a.cpus {
        res.cpus = c;
    }
    if let Some(m) = &a.memory {
        res.memory_mib = parse_memory_mib(m)?;
    }
    res.validate()?;
    Ok(res)
}

async fn add(c: &Client, a: AddArgs) -> anyhow::Result<i32> {
    if a.every.is_some() || a.cron.is_some() {
        return crate::task_sources::add_schedule(c, &a).await;
    }
    let body = request(&a)?;
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
    match &t.forge {
        Some(f) => line(
            "repository",
            format!(
                "{}{} (from {})",
                f.key(),
                f.issue.map(|n| format!("#{n}")).unwrap_or_default(),
                f.base
            ),
        ),
        None => line("source", t.source.describe()),
    }
    if let Some(p) = &t.pull {
        line(
            "pull",
            format!(
                "#{} {} — {} ({} pushes, {} feedback rounds)",
                p.number,
                p.url,
                p.status.as_str(),
                p.pushes,
                p.rounds
            ),
        );
    }
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
