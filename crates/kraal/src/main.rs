//! `kraal`: the command-line client and, as `kraal serve`, the daemon.
//!
//! Exit codes: 0 success; 1 error; 2 usage error; for `exec`/`shell`, the command's own
//! exit code (128+N when killed by signal N) and 125 when kraal itself failed.

mod autostart;
mod backups;
mod budget;
mod chat;
mod cli;
mod cli_serve;
mod client;
mod commands;
mod contexts;
mod exec;
mod host;
mod kvm;
mod login;
mod paths;
mod render;
mod review;
mod secure;
mod serve;
mod services;
mod spending;
mod ssh;
mod task_sources;
mod tasks;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{
    BackupsCommand, Cli, Command, ContextCommand, EgressCommand, HostCommand, ImageCommand,
    LoginCommand, SecretCommand, StateCommand, TokenCommand,
};
use client::{Client, ClientError, Endpoint};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::KvmProbe = cli.command {
        return match kvm::run_in_process() {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let is_serve = matches!(cli.command, Command::Serve(_));
    if !is_serve {
        // Like other Unix tools, die quietly when a pipe reader goes away (`kraal ls | head`).
        // SAFETY: setting a signal disposition to its default has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let default_level = if is_serve { "info" } else { "warn" };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRAAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr);
    // `serve --log-format json` (KRAAL_LOG_FORMAT): one JSON object a line.
    if matches!(&cli.command, Command::Serve(a) if a.log_format == "json") {
        serve::JSON_LOG.store(true, std::sync::atomic::Ordering::Relaxed);
        log.json().flatten_event(true).init();
    } else {
        log.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let is_exec = matches!(cli.command, Command::Exec(_) | Command::Shell { .. });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kraal: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if serve::JSON_LOG.load(std::sync::atomic::Ordering::Relaxed) => {
            tracing::error!("kraal: error: {e:#}");
            1
        }
        Err(e) => {
            eprintln!("kraal: error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            if is_exec { 125 } else { 1 }
        }
    };
    // Do not wait for the blocking stdin reader thread of `exec`.
    std::process::exit(code);
}

fn hint(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<ClientError>()? {
        ClientError::DaemonDown { .. } => Some(
            "start the daemon with `kraal serve` (as root), or point --host / KRAAL_HOST at a running one".into(),
        ),
        ClientError::Api { code, message, .. } if code == "not_found" && message.starts_with("no session") => {
            Some("`kraal sessions` lists sessions".into())
        }
        ClientError::Api { code, .. } if code == "not_found" => Some("`kraal ls` lists workspaces".into()),
        ClientError::Api { code, .. } if code == "unauthorized" => Some("set KRAAL_TOKEN to the daemon's API token".into()),
        _ => None,
    }
}

fn client(host: Option<String>, context: Option<&str>) -> anyhow::Result<Client> {
    let mut token = std::env::var("KRAAL_TOKEN").ok();
    let mut host = host;
    if host.is_none()
        && let Some((_, ctx)) = contexts::Contexts::load()?.pick(context)?
    {
        host = Some(ctx.host);
        token = ctx.token.or(token);
    }
    let endpoint = match host {
        Some(h) if h.starts_with("tcp://") => {
            Endpoint::Tcp(h.trim_start_matches("tcp://").to_owned())
        }
        Some(h) => Endpoint::Unix(PathBuf::from(h.trim_start_matches("unix:"))),
        None => Endpoint::Unix(paths::socket()),
    };
    Ok(Client::new(endpoint, token))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    // Context commands work without (and on) the contexts file, whatever it says.
    if let Command::Context(cmd) = &cli.command {
        return match cmd {
            ContextCommand::Add {
                name,
                host,
                token,
                use_it,
            } => contexts::add(name, host, token.clone(), *use_it),
            ContextCommand::Use { name } => contexts::use_(name),
            ContextCommand::Ls { json } => contexts::ls(*json),
            ContextCommand::Rm { name } => contexts::rm(name),
        }
        .map(|()| 0);
    }
    let c = client(cli.host.clone(), cli.context.as_deref())?;
    match cli.command {
        Command::Context(_) => unreachable!("handled above"),
        Command::State(StateCommand::Backup { json }) => {
            backups::state_backup(&c, json).await.map(|()| 0)
        }
        Command::State(StateCommand::Ls { json }) => backups::state_ls(&c, json).await.map(|()| 0),
        Command::Serve(args) => serve::run(*args).await.map(|()| 0),
        Command::Up(a) => commands::up(&c, a).await.map(|()| 0),
        Command::Ls { json } => commands::ls(&c, json).await.map(|()| 0),
        Command::Exec(a) => {
            let mut env = Vec::new();
            for kv in &a.env {
                let Some((k, v)) = kv.split_once('=') else {
                    anyhow::bail!("--env {kv:?} must be KEY=VALUE");
                };
                env.push((k.to_owned(), v.to_owned()));
            }
            autostart::ensure_running(&c, &a.workspace, a.no_start).await?;
            let opts = exec::ExecOptions {
                argv: a.command,
                env,
                cwd: a.workdir,
                tty: a.tty,
                forward_stdin: !a.no_stdin,
            };
            exec::run(&c, &a.workspace, opts).await
        }
        Command::Shell {
            workspace,
            workdir,
            no_start,
        } => {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "`kraal shell` needs a terminal; use `kraal exec {workspace} -- <command>` from scripts"
                );
            }
            autostart::ensure_running(&c, &workspace, no_start).await?;
            let argv = [
                "/bin/sh",
                "-c",
                "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi",
            ];
            let opts = exec::ExecOptions {
                argv: argv.map(String::from).to_vec(),
                env: vec![],
                cwd: workdir,
                tty: true,
                forward_stdin: true,
            };
            exec::run(&c, &workspace, opts).await
        }
        Command::Export {
            workspace,
            output,
            force,
        } => backups::export(&c, &workspace, output.as_deref(), force)
            .await
            .map(|()| 0),
        Command::Import {
            file,
            as_name,
            json,
        } => backups::import(&c, &file, as_name.as_deref(), json)
            .await
            .map(|()| 0),
        Command::Policy {
            workspace,
            policy,
            reset,
        } => commands::policy(&c, &workspace, &policy, reset)
            .await
            .map(|()| 0),
        Command::Down { workspace, detach } => {
            commands::down(&c, &workspace, detach).await.map(|()| 0)
        }
        Command::Rm {
            workspace,
            yes,
            force,
            purge,
            no_backup,
        } => commands::rm(&c, &workspace, yes, force, purge, no_backup)
            .await
            .map(|()| 0),
        Command::Logs {
            workspace,
            events_only,
        } => commands::logs(&c, &workspace, events_only)
            .await
            .map(|()| 0),
        Command::Ps { workspace } => commands::ps(&c, &workspace).await.map(|()| 0),
        Command::Snapshot { workspace, name } => {
            commands::snapshot(&c, &workspace, &name).await.map(|()| 0)
        }
        Command::Restore {
            target,
            snapshot,
            as_name,
            json,
        } => match snapshot {
            Some(name) if as_name.is_none() => {
                commands::restore(&c, &target, &name).await.map(|()| 0)
            }
            Some(_) => {
                anyhow::bail!("--as names a workspace restored from a backup, not a snapshot")
            }
            None if target.starts_with("bk-") => {
                backups::restore(&c, &target, as_name.as_deref(), json)
                    .await
                    .map(|()| 0)
            }
            None => anyhow::bail!(
                "{target:?} is not a backup id (bk-…); to restore a snapshot give the workspace and the snapshot name"
            ),
        },
        Command::Backup { workspace, json } => {
            backups::backup(&c, &workspace, json).await.map(|()| 0)
        }
        Command::Backups(BackupsCommand::Ls { json }) => backups::ls(&c, json).await.map(|()| 0),
        Command::Backups(BackupsCommand::Rm { id }) => backups::rm(&c, &id).await.map(|()| 0),
        Command::Status { json } => commands::status(&c, json).await.map(|()| 0),
        Command::Web { no_open } => commands::web(&c, no_open).await.map(|()| 0),
        Command::Token(TokenCommand::Create { name }) => {
            commands::token_create(&c, name).await.map(|()| 0)
        }
        Command::Token(TokenCommand::Ls { json }) => commands::token_ls(&c, json).await.map(|()| 0),
        Command::Image(ImageCommand::Build {
            name,
            file,
            devcontainer,
            outputs,
            json,
        }) => commands::image_build(
            &c,
            name,
            file.as_deref(),
            devcontainer.as_deref(),
            outputs,
            json,
        )
        .await
        .map(|()| 0),
        Command::Image(ImageCommand::Ls { json }) => commands::image_ls(&c, json).await.map(|()| 0),
        Command::Image(ImageCommand::Rm { name }) => {
            commands::image_rm(&c, &name).await.map(|()| 0)
        }
        Command::Login(LoginCommand::Claude { credentials, token }) => {
            secure::login_claude(&c, credentials.as_deref(), token)
                .await
                .map(|()| 0)
        }
        Command::Login(LoginCommand::Codex { api_key }) => {
            secure::login_codex(&c, api_key).await.map(|()| 0)
        }
        Command::Login(LoginCommand::Status { json }) => {
            secure::login_status(&c, json).await.map(|()| 0)
        }
        Command::Secret(SecretCommand::Set {
            name,
            file,
            command,
        }) => secure::secret_set(&c, &name, file.as_deref(), command.as_deref())
            .await
            .map(|()| 0),
        Command::Secret(SecretCommand::Ls { json }) => {
            secure::secret_ls(&c, json).await.map(|()| 0)
        }
        Command::Secret(SecretCommand::Rm { name }) => {
            secure::secret_rm(&c, &name).await.map(|()| 0)
        }
        Command::Egress(EgressCommand::Ls { workspace, json }) => {
            secure::egress_ls(&c, &workspace, json).await.map(|()| 0)
        }
        Command::Egress(EgressCommand::Allow { workspace, rules }) => {
            secure::egress_change(&c, &workspace, &rules, true)
                .await
                .map(|()| 0)
        }
        Command::Egress(EgressCommand::Deny { workspace, rules }) => {
            secure::egress_change(&c, &workspace, &rules, false)
                .await
                .map(|()| 0)
        }
        Command::Egress(EgressCommand::Log {
            workspace,
            limit,
            json,
        }) => secure::egress_log(&c, &workspace, limit, json)
            .await
            .map(|()| 0),
        Command::Ssh {
            workspace,
            user,
            args,
            no_start,
        } => {
            autostart::ensure_running(&c, &workspace, no_start).await?;
            ssh::ssh(&c, &workspace, user.as_deref(), &args).await
        }
        Command::SshConfig { output, install } => ssh::ssh_config(&c, output.as_deref(), install)
            .await
            .map(|()| 0),
        Command::SshProxy {
            workspace,
            user,
            no_start,
        } => {
            autostart::ensure_running(&c, &workspace, no_start).await?;
            ssh::proxy(&c, &workspace, &user).await
        }
        Command::Forward {
            workspace,
            port,
            local,
            stdio,
        } => ssh::forward(&c, &workspace, port, local.as_deref(), stdio)
            .await
            .map(|()| 0),
        Command::Audit {
            limit,
            action,
            json,
        } => secure::audit(&c, limit, action.as_deref(), json)
            .await
            .map(|()| 0),
        Command::Token(TokenCommand::Revoke { token }) => {
            commands::token_revoke(&c, &token).await.map(|()| 0)
        }
        Command::NewChat(a) => {
            let env = a
                .env
                .iter()
                .map(|kv| {
                    kraal_core::parse_env_entry(kv).map_err(|e| anyhow::anyhow!("--env: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            autostart::ensure_running(&c, &a.workspace, a.no_start).await?;
            chat::new_chat(
                &c,
                chat::NewChat {
                    workspace: a.workspace,
                    agent: kraal_core::AgentKind::parse(&a.agent)?,
                    message: a.message,
                    model: a.model,
                    system_prompt: a.system_prompt,
                    ask: a.ask,
                    binary: a.binary,
                    args: a.args,
                    env,
                    cwd: a.cwd,
                    detach: a.detach,
                    transcript: a.transcript,
                },
            )
            .await
        }
        Command::Chat {
            workspace,
            session,
            no_start,
        } => chat::chat(&c, workspace, session, no_start).await,
        Command::Send {
            session,
            message,
            wait,
            attach,
            no_start,
        } => {
            let text = if message == ["-"] {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
                t
            } else {
                message.join(" ")
            };
            chat::send(&c, &session, text, &attach, wait, no_start).await
        }
        Command::Review(a) => review::run(&c, a).await,
        Command::Task(cmd) => tasks::run(&c, cmd).await,
        Command::Budget { cmd } => budget::run(&c, cmd).await,
        Command::Ports { workspace, json } => review::ports(&c, &workspace, json).await,
        Command::Push(cmd) => review::push(&c, cmd).await,
        Command::Sessions { workspace, json } => chat::list(&c, workspace.as_deref(), json).await,
        Command::Interrupt { session } => {
            chat::input(&c, &session, kraal_core::SessionInput::Interrupt).await
        }
        Command::Approve {
            session,
            request,
            message,
        } => chat::decide(&c, &session, request, true, message).await,
        Command::Deny {
            session,
            request,
            message,
        } => chat::decide(&c, &session, request, false, message).await,
        Command::Events {
            session,
            after,
            follow,
            json,
        } => chat::events(&c, &session, after, follow, json).await,
        Command::EndChat { session } => chat::end_chat(&c, &session).await,
        Command::Host(HostCommand::Check { json }) => {
            let opts = host::BackendOptions {
                data_dir: paths::data_dir(),
                runsc: std::env::var_os("KRAAL_RUNSC")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "runsc".into()),
                guest_bin: std::env::var_os("KRAAL_GUEST_BIN").map(PathBuf::from),
                agents_dir: None,
                network: kraal_gvisor::NetworkMode::Host,
                default_image: "default".into(),
                backend: std::env::var("KRAAL_BACKEND").unwrap_or_else(|_| "auto".into()),
                qemu: std::env::var_os("KRAAL_QEMU")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "qemu-system-x86_64".into()),
                qemu_accel: std::env::var("KRAAL_QEMU_ACCEL").unwrap_or_else(|_| "auto".into()),
                volume_mib: kraal_vm::VmConfig::DEFAULT_VOLUME_MIB,
            };
            let (report, _) = host::inspect(&opts).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                host::print_report(&report);
            }
            Ok(if report.backends.iter().any(|b| b.usable) {
                0
            } else {
                1
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kraal", &mut std::io::stdout());
            Ok(0)
        }
        Command::KvmProbe => unreachable!("handled before the runtime starts"),
    }
}
