//! `kraal budget`: spend through the model gateway and the caps that make it hold an
//! agent's requests (per UTC day, per workspace, per task).

use anyhow::bail;
use clap::{Args, Subcommand};
use hyper::Method;
use kraal_api::{Budget, BudgetReport, SetBudget};

use crate::client::{Client, enc};

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Spend today and per workspace, and every cap.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Set (replace) a cap; requests wait once it is reached, until it is raised.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Limit in US dollars (list prices).
        #[arg(long, allow_negative_numbers = true)]
        usd: Option<f64>,
        /// Limit in tokens (input + output).
        #[arg(long)]
        tokens: Option<u64>,
    },
    /// Remove a cap.
    Rm {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// The whole daemon, per UTC day.
    #[arg(long)]
    day: bool,
    /// One workspace (name or id), all time.
    #[arg(long, value_name = "WORKSPACE")]
    workspace: Option<String>,
    /// A task's workspace.
    #[arg(long, value_name = "TASK")]
    task: Option<String>,
}

impl ScopeArgs {
    fn parts(&self) -> (&'static str, Option<String>, Option<String>) {
        if self.day {
            ("day", None, None)
        } else {
            ("workspace", self.workspace.clone(), self.task.clone())
        }
    }
}

fn cap(b: &Budget) -> String {
    let mut parts = Vec::new();
    if let Some(u) = b.usd {
        parts.push(format!("${:.4} of ${u:.4}", b.spent.usd));
    }
    if let Some(t) = b.tokens {
        parts.push(format!(
            "{} of {t} tokens",
            b.spent.input_tokens + b.spent.output_tokens
        ));
    }
    parts.join(", ")
}

pub async fn run(c: &Client, cmd: Option<BudgetCommand>) -> anyhow::Result<i32> {
    match cmd.unwrap_or(BudgetCommand::Show { json: false }) {
        BudgetCommand::Show { json } => {
            let r: BudgetReport = c.get("/v1/budget").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(0);
            }
            println!(
                "today ({} UTC): ${:.4}, {} requests, {} in / {} out tokens",
                r.day, r.today.usd, r.today.requests, r.today.input_tokens, r.today.output_tokens
            );
            if r.budgets.is_empty() {
                println!("no caps; set one with `kraal budget set --day --usd 20`");
            }
            for b in &r.budgets {
                let what = match &b.workspace {
                    Some(w) => format!("workspace {w}"),
                    None => "per day".into(),
                };
                println!(
                    "cap {what}: {}{}",
                    cap(b),
                    if b.reached {
                        " — REACHED, requests wait"
                    } else {
                        ""
                    }
                );
            }
            for w in &r.workspaces {
                println!(
                    "  {:<32} ${:.4}  {} requests",
                    w.workspace, w.spent.usd, w.spent.requests
                );
            }
            for l in &r.limits {
                let mut parts = Vec::new();
                if let Some(st) = &l.subscription_status {
                    let mut p = format!("subscription {st}");
                    for w in &l.subscription_windows {
                        p.push_str(&format!(", {} {:.0} %", w.name, w.utilization * 100.0));
                    }
                    if let Some(at) = &l.subscription_reset {
                        p.push_str(&format!(", resets {at}"));
                    }
                    parts.push(p);
                }
                if let (Some(rem), Some(lim)) = (l.requests_remaining, l.requests_limit) {
                    parts.push(format!("{rem}/{lim} requests left"));
                }
                if let (Some(rem), Some(lim)) = (l.tokens_remaining, l.tokens_limit) {
                    parts.push(format!("{rem}/{lim} tokens left"));
                }
                parts.push(format!(
                    "{} requests, {} paced, {} hit the limit, {} waiting",
                    l.requests, l.paced, l.limited, l.waiting
                ));
                println!(
                    "limit {} {}: {}",
                    l.provider,
                    l.credential,
                    parts.join("; ")
                );
            }
            Ok(0)
        }
        BudgetCommand::Set { scope, usd, tokens } => {
            if usd.is_none() && tokens.is_none() {
                bail!("give a limit: --usd N, --tokens N or both");
            }
            if let Some(u) = usd
                && !u.is_finite()
            {
                bail!("--usd {u} is not a number");
            }
            let (scope, workspace, task) = scope.parts();
            let b: Budget = c
                .send(
                    Method::PUT,
                    "/v1/budget",
                    Some(&SetBudget {
                        scope: scope.into(),
                        workspace,
                        task,
                        usd,
                        tokens,
                    }),
                )
                .await?;
            eprintln!(
                "cap {}: {}{}",
                b.workspace.as_deref().unwrap_or("per day"),
                cap(&b),
                if b.reached {
                    " (already reached: requests wait)"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        BudgetCommand::Rm { scope } => {
            let (scope, workspace, task) = scope.parts();
            let mut q = format!("/v1/budget?scope={scope}");
            if let Some(w) = workspace {
                q.push_str(&format!("&workspace={}", enc(&w)));
            }
            if let Some(t) = task {
                q.push_str(&format!("&task={}", enc(&t)));
            }
            c.raw(Method::DELETE, &q, None).await?;
            eprintln!("cap removed");
            Ok(0)
        }
    }
}
