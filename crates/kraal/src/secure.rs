//! CLI commands for what keeps secrets on the host: `kraal secret`, `kraal egress` and
//! `kraal audit`. Like the rest of the CLI they speak only the HTTP API.

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use hyper::Method;
use kraal_api::*;

use crate::client::{Client, enc};

/// Reads a secret's value from a file, a command run here, or standard input (without
/// echo on a terminal).
async fn secret_value(
    name: &str,
    file: Option<&std::path::Path>,
    command: Option<&str>,
) -> anyhow::Result<(String, &'static str)> {
    if let Some(f) = file {
        let v = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the value of {name} from {}", f.display()))?;
        return Ok((v, "file"));
    }
    if let Some(cmd) = command {
        let out = kraal_sandbox::process::Cmd::new("sh")
            .args(["-c", cmd])
            .timeout(std::time::Duration::from_secs(120))
            .run()
            .await
            .with_context(|| format!("the command for secret {name} failed"))?;
        return Ok((out.stdout_str(), "command"));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value of {name} (not shown): ");
        let v = read_hidden_line()?;
        eprintln!();
        return Ok((v, "stdin"));
    }
    let mut v = String::new();
    stdin
        .lock()
        .take(1024 * 1024)
        .read_to_string(&mut v)
        .context("cannot read the value from standard input")?;
    Ok((v, "stdin"))
}

/// One line from the terminal with echo off.
fn read_hidden_line() -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let old = tcgetattr(&stdin).context("cannot read the terminal settings")?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn echo off")?;
    let mut line = String::new();
    let r = std::io::stdin().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
    r.context("cannot read from the terminal")?;
    Ok(line)
}

pub async fn secret_set(
    c: &Client,
    name: &str,
    file: Option<&std::path::Path>,
    command: Option<&str>,
) -> anyhow::Result<()> {
    if !kraal_core::is_secret_name(name) {
        bail!(
            "secret name {name:?} is invalid: use 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        );
    }
    let (value, source) = secret_value(name, file, command).await?;
    let info: SecretInfo = c
        .send(
            Method::PUT,
            &format!("/v1/secrets/{}", enc(name)),
            Some(&PutSecret {
                value,
                source: Some(source.to_owned()),
            }),
        )
        .await?;
    eprintln!("secret {} stored (from {})", info.name, info.source);
    Ok(())
}

pub async fn secret_ls(c: &Client, json: bool) -> anyhow::Result<()> {
    let l: Vec<SecretInfo> = c.get("/v1/secrets").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["NAME", "SOURCE", "UPDATED"]);
    for s in l {
        t.add_row([s.name, s.source, s.updated_at]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn secret_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.raw(Method::DELETE, &format!("/v1/secrets/{}", enc(name)), None)
        .await?;
    eprintln!("secret {name} removed");
    Ok(())
}

async fn egress_policy(c: &Client, ws: &str) -> anyhow::Result<EgressPolicy> {
    Ok(c.get(&format!("/v1/workspaces/{}/egress", enc(ws))).await?)
}

pub async fn egress_ls(c: &Client, ws: &str, json: bool) -> anyhow::Result<()> {
    let p = egress_policy(c, ws).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p.rules)?);
    } else {
        for r in p.rules {
            println!("{r}");
        }
    }
    Ok(())
}

/// Adds (`allow`) or removes rules; rules are checked by the daemon.
pub async fn egress_change(
    c: &Client,
    ws: &str,
    rules: &[String],
    allow: bool,
) -> anyhow::Result<()> {
    let given = kraal_core::parse_rules(rules)?;
    let mut current = kraal_core::parse_rules(&egress_policy(c, ws).await?.rules)?;
    if allow {
        for r in given {
            if !current.contains(&r) {
                current.push(r);
            }
        }
    } else {
        let missing: Vec<String> = given
            .iter()
            .filter(|r| !current.contains(r))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} not on {ws}'s allowlist (see `kraal egress ls {ws}`)",
                missing.join(", ")
            );
        }
        current.retain(|r| !given.contains(r));
    }
    let p: EgressPolicy = c
        .send(
            Method::PUT,
            &format!("/v1/workspaces/{}/egress", enc(ws)),
            Some(&EgressPolicy {
                rules: current.iter().map(ToString::to_string).collect(),
            }),
        )
        .await?;
    eprintln!("{ws}: {} egress rules", p.rules.len());
    Ok(())
}

pub async fn egress_log(c: &Client, ws: &str, limit: u32, json: bool) -> anyhow::Result<()> {
    let l: Vec<EgressLogEntry> = c
        .get(&format!(
            "/v1/workspaces/{}/egress/log?limit={limit}",
            enc(ws)
        ))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["TIME", "DECISION", "TARGET", "ADDRESS", "BYTES", "REASON"]);
    for e in l {
        t.add_row([
            e.at,
            if e.allowed { "allowed" } else { "DENIED" }.into(),
            format!("{} {}:{}", e.method, e.host, e.port),
            e.addr.unwrap_or_default(),
            format!("{}↑ {}↓", e.bytes_up, e.bytes_down),
            crate::render::clean(&e.reason.unwrap_or_default()),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn audit(c: &Client, limit: u32, action: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(a) = action {
        path.push_str(&format!("&action={}", enc(a)));
    }
    let l: Vec<AuditEntry> = c.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for e in l {
        t.add_row([
            e.at,
            e.actor,
            e.action,
            crate::render::clean(&e.target),
            crate::render::clean(&e.detail),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

fn home() -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .context("$HOME is not set")
}

fn print_login(l: &LoginStatus) {
    let until = l
        .expires_at
        .map(|ms| {
            let left = (ms - now_ms()) / 1000;
            if left > 0 {
                format!(
                    ", access token valid for {} min (refreshed by the daemon)",
                    left / 60
                )
            } else {
                ", access token expired (the daemon refreshes it)".to_owned()
            }
        })
        .unwrap_or_default();
    println!("{}: {}{until}", l.agent, l.method);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An agent's credentials file, as JSON; a missing file says how to log in (`hint`).
fn read_json(path: &std::path::Path, hint: &str, agent: &str) -> anyhow::Result<serde_json::Value> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("no {agent} login in {}: {hint}", path.display()))?;
    serde_json::from_str(&raw).with_context(|| format!("{} is not JSON", path.display()))
}

/// `kraal login claude`.
pub async fn login_claude(
    c: &Client,
    credentials: Option<&std::path::Path>,
    token: bool,
) -> anyhow::Result<()> {
    let req = if token {
        let (t, _) = secret_value("the Claude token", None, None).await?;
        ClaudeLoginRequest {
            token: Some(t.trim().to_owned()),
            ..Default::default()
        }
    } else {
        let path = match credentials {
            Some(p) => p.to_owned(),
            None => home()?.join(".claude/.credentials.json"),
        };
        let v = read_json(
            &path,
            "run `claude` and `/login` once on this machine, or `claude setup-token` and pipe its token to `kraal login claude --token`",
            "Claude",
        )?;
        let o = &v["claudeAiOauth"];
        let (Some(a), Some(r), Some(exp)) = (
            o["accessToken"].as_str(),
            o["refreshToken"].as_str(),
            o["expiresAt"].as_i64(),
        ) else {
            bail!(
                "{} has no claudeAiOauth.accessToken, refreshToken and expiresAt",
                path.display()
            );
        };
        ClaudeLoginRequest {
            access_token: Some(a.to_owned()),
            refresh_token: Some(r.to_owned()),
            expires_at: Some(exp),
            token: None,
        }
    };
    let l: LoginStatus = c.send(Method::PUT, "/v1/logins/claude", Some(&req)).await?;
    print_login(&l);
    eprintln!("every workspace's Claude Code now uses this login through the model gateway");
    Ok(())
}

/// `kraal login codex`.
pub async fn login_codex(c: &Client, api_key: bool) -> anyhow::Result<()> {
    let key = if api_key {
        secret_value("the OpenAI API key", None, None).await?.0
    } else {
        let dir = std::env::var_os("CODEX_HOME")
            .map(std::path::PathBuf::from)
            .map_or_else(|| home().map(|h| h.join(".codex")), Ok)?;
        let path = dir.join("auth.json");
        let v = read_json(
            &path,
            "pipe an API key to `kraal login codex --api-key`",
            "Codex",
        )?;
        match v["OPENAI_API_KEY"].as_str() {
            Some(k) if !k.trim().is_empty() => k.to_owned(),
            _ => bail!(
                "{} holds a ChatGPT sign-in, which kraal cannot share yet; pipe an API key to `kraal login codex --api-key`",
                path.display()
            ),
        }
    };
    let l: LoginStatus = c
        .send(
            Method::PUT,
            "/v1/logins/codex",
            Some(&CodexLoginRequest {
                api_key: key.trim().to_owned(),
            }),
        )
        .await?;
    print_login(&l);
    Ok(())
}

pub async fn login_status(c: &Client, json: bool) -> anyhow::Result<()> {
    let l: Vec<LoginStatus> = c.get("/v1/logins").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
    } else {
        for s in &l {
            print_login(s);
        }
    }
    Ok(())
}
