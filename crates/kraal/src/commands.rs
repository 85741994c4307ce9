//! Client commands that talk to the daemon.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Method;
use kraal_api::*;
use kraal_core::{Resources, Source, parse_memory_mib};

use crate::cli::UpArgs;
use crate::client::{Client, ClientError, enc};

pub(crate) fn spinner(msg: String) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        eprintln!("{msg}");
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

/// What `kraal up <target>` refers to.
#[derive(Debug, PartialEq)]
pub enum Target {
    Existing(String),
    Create(Source),
}

/// Paths win when the argument looks like one (has a slash or is `.`/`..`); otherwise an
/// existing workspace of that name wins over a directory of that name.
pub async fn resolve_target(client: &Client, a: &UpArgs) -> anyhow::Result<Target> {
    let t = a.target.as_str();
    if Source::looks_like_git_url(t) {
        return Ok(Target::Create(Source::git(t, a.branch.clone())?));
    }
    let pathish = t.contains('/') || t == "." || t == "..";
    if !pathish {
        match client
            .get::<Workspace>(&format!("/v1/workspaces/{}", enc(t)))
            .await
        {
            Ok(w) => return Ok(Target::Existing(w.name)),
            Err(ClientError::Api { code, .. }) if code == "not_found" => {}
            Err(e) => return Err(e.into()),
        }
    }
    let p = Path::new(t);
    if p.is_dir() {
        let abs = p
            .canonicalize()
            .with_context(|| format!("cannot resolve {t}"))?;
        return Ok(Target::Create(Source::local(abs)?));
    }
    if p.exists() {
        bail!(
            "{t} is not a directory; `kraal up` takes a directory, a git URL or a workspace name"
        );
    }
    bail!("no workspace, directory or git URL named {t:?}\nhint: `kraal ls` lists workspaces")
}

/// The `--git` credentials of a new workspace from `source`. A local checkout's `origin`
/// on a credential's host is one of the repositories it reaches (as a cloned repository
/// is); a credential that reaches none is refused here, since the git gateway would refuse
/// every request for its host.
pub(crate) fn scoped_git(
    mut git: Vec<kraal_core::GitCredential>,
    source: &Source,
) -> anyhow::Result<Vec<kraal_core::GitCredential>> {
    let origin = match source {
        Source::Local { path } => std::fs::read_to_string(path.join(".git/config"))
            .ok()
            .and_then(|c| kraal_core::origin_url(&c))
            .and_then(|u| kraal_core::git_url_repo(&u)),
        Source::Git { .. } | Source::Empty => None,
    };
    for g in &mut git {
        if let Some((host, repo)) = &origin
            && *host == g.host
            && !g.repos.contains(repo)
        {
            g.repos.push(repo.clone());
        }
        if g.scope(source).is_empty() {
            bail!(
                "--git for {host} reaches no repository: the workspace is not cloned from one on {host}\n\
                 hint: name the repositories it may fetch from and push to: --git {host}={secret}:OWNER/REPO[,OWNER/REPO…]",
                host = g.host,
                secret = g.secret
            );
        }
    }
    Ok(git)
}

pub async fn up(client: &Client, a: UpArgs) -> anyhow::Result<()> {
    let target = resolve_target(client, &a).await?;
    let wait = !a.detach;
    let (w, verb): (Workspace, &str) = match target {
        Target::Existing(name) => {
            if a.name.is_some()
                || a.cpus.is_some()
                || a.memory.is_some()
                || a.pids.is_some()
                || a.branch.is_some()
                || a.policy.idle_stop.is_some()
                || a.policy.backup_every.is_some()
                || a.policy.idle_pause.is_some()
            {
                bail!(
                    "workspace {name} already exists; --name, --branch, --cpus, --memory, --pids, --idle-stop, --idle-pause and --backup-every only apply when creating one (`kraal policy {name}` changes the last three)"
                );
            }
            let pb = spinner(format!("starting {name}…"));
            let r = client
                .send::<(), Workspace>(
                    Method::POST,
                    &format!("/v1/workspaces/{}/up?wait={wait}", enc(&name)),
                    None,
                )
                .await;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            (r?, "started")
        }
        Target::Create(source) => {
            let mut res = Resources::default();
            if let Some(c) = a.cpus {
                res.cpus = c;
            }
            if let Some(m) = &a.memory {
                res.memory_mib = parse_memory_mib(m)?;
            }
            if let Some(p) = a.pids {
                res.pids = p;
            }
            res.validate()?;
            let body = CreateWorkspace {
                name: a.name.clone(),
                source: source.clone(),
                resources: Some(res),
                image: a.image.clone(),
                wait,
                persistent: a.persistent,
                mounts: a
                    .mount
                    .iter()
                    .map(|m| {
                        // A relative host directory is relative to where the command runs.
                        let spec = match std::env::current_dir() {
                            Ok(cwd) if !m.starts_with('/') => format!("{}/{m}", cwd.display()),
                            _ => m.clone(),
                        };
                        let mut m = kraal_core::Mount::parse(&spec)?;
                        if let Ok(p) = std::fs::canonicalize(&m.host) {
                            m.host = p;
                        }
                        Ok(m)
                    })
                    .collect::<Result<_, kraal_core::MountError>>()?,
                policy: a.policy.policy(),
                egress: a.no_default_allow.then(Vec::new),
                allow: a.allow.clone(),
                git: scoped_git(
                    a.git
                        .iter()
                        .map(|g| kraal_core::GitCredential::parse(g))
                        .collect::<Result<_, _>>()?,
                    &source,
                )?,
            };
            let pb = spinner(format!(
                "creating workspace from {} (the first one on an image also builds it)…",
                source.describe()
            ));
            let r = client
                .send::<_, Workspace>(Method::POST, "/v1/workspaces", Some(&body))
                .await;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            (r?, "created")
        }
    };
    if wait {
        println!(
            "workspace {} {verb} and {} ({}, {})",
            w.name,
            w.state.as_ref_str(),
            w.id,
            w.backend
        );
        for p in &w.ports {
            println!("  port {} → {}", p.port, p.address);
        }
        println!(
            "  kraal exec {} -- git status\n  kraal shell {}",
            w.name, w.name
        );
    } else {
        println!(
            "workspace {} is {} ({}); `kraal ls` shows progress",
            w.name,
            w.state.as_ref_str(),
            w.id
        );
    }
    Ok(())
}

trait StateStr {
    fn as_ref_str(&self) -> &'static str;
}

impl StateStr for kraal_core::WorkspaceState {
    fn as_ref_str(&self) -> &'static str {
        self.as_str()
    }
}

pub async fn ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let list: WorkspaceList = client.get("/v1/workspaces").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list.workspaces)?);
        return Ok(());
    }
    if list.workspaces.is_empty() {
        println!("no workspaces; create one with `kraal up <dir|git-url>`");
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["NAME", "STATE", "BACKEND", "SOURCE", "ADDRESS", "ID"]);
    for w in &list.workspaces {
        let state = match &w.reason {
            _ if w.restoring.is_some() => "restoring".to_owned(),
            Some(r) if w.state == kraal_core::WorkspaceState::Failed => {
                let short: String = r.chars().take(60).collect();
                format!("failed: {short}")
            }
            Some(r) if w.state == kraal_core::WorkspaceState::Stopped => {
                let short: String = r.chars().take(60).collect();
                format!("stopped: {short}")
            }
            _ => w.state.as_str().to_owned(),
        };
        t.add_row([
            w.name.clone(),
            state,
            w.backend.to_string(),
            w.source.describe(),
            w.address.clone().unwrap_or_else(|| "-".into()),
            w.id.clone(),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn snapshot(client: &Client, ws: &str, name: &str) -> anyhow::Result<()> {
    let pb = spinner(format!("saving {ws} as snapshot {name}…"));
    let body = CreateSnapshot {
        name: name.to_owned(),
    };
    let r = client
        .send::<CreateSnapshot, Workspace>(
            Method::POST,
            &format!("/v1/workspaces/{}/snapshots", enc(ws)),
            Some(&body),
        )
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let w = r?;
    println!(
        "snapshot {name} of {} saved (`kraal restore {} {name}` goes back to it)",
        w.name, w.name
    );
    Ok(())
}

pub async fn restore(client: &Client, ws: &str, name: &str) -> anyhow::Result<()> {
    let pb = spinner(format!("restoring {ws} to snapshot {name}…"));
    let r = client
        .send::<(), Workspace>(
            Method::POST,
            &format!("/v1/workspaces/{}/snapshots/{}/restore", enc(ws), enc(name)),
            None,
        )
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let w = r?;
    println!("workspace {} is back at snapshot {name}", w.name);
    Ok(())
}

pub async fn down(client: &Client, ws: &str, detach: bool) -> anyhow::Result<()> {
    let pb = spinner(format!("stopping {ws}…"));
    let r = client
        .send::<(), Workspace>(
            Method::POST,
            &format!("/v1/workspaces/{}/down?wait={}", enc(ws), !detach),
            None,
        )
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let w = r?;
    println!(
        "workspace {} {}; its volume is kept (`kraal up {}` starts it again)",
        w.name,
        if detach { "is stopping" } else { "stopped" },
        w.name
    );
    Ok(())
}

pub async fn rm(
    client: &Client,
    ws: &str,
    yes: bool,
    force: bool,
    purge: bool,
    no_backup: bool,
) -> anyhow::Result<()> {
    let w: Workspace = client.get(&format!("/v1/workspaces/{}", enc(ws))).await?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to remove workspace {} without --yes (standard input is not a terminal to ask on)",
                w.name
            );
        }
        eprint!(
            "Remove workspace {} and everything in its volume{}? [y/N] ",
            w.name,
            if purge { ", and its backups" } else { "" }
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            bail!("not removed");
        }
    }
    let pb = spinner(format!("removing {}…", w.name));
    let r = client
        .send::<(), Workspace>(
            Method::DELETE,
            &format!(
                "/v1/workspaces/{}?wait=true&force={force}&purge={purge}&no_backup={no_backup}",
                enc(&w.id)
            ),
            None,
        )
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let removed = r?;
    match &removed.last_backup_at {
        Some(at) if !purge => println!(
            "workspace {} removed; its backups are kept (the last from {at}): `kraal backups ls`",
            w.name
        ),
        _ => println!("workspace {} removed", w.name),
    }
    Ok(())
}

pub async fn logs(client: &Client, ws: &str, events_only: bool) -> anyhow::Result<()> {
    let l: Logs = client
        .get(&format!("/v1/workspaces/{}/logs", enc(ws)))
        .await?;
    for e in &l.events {
        println!("{} {:<5} {}", e.at, e.level, e.message);
    }
    if !events_only && !l.console.trim().is_empty() {
        println!("--- console ---");
        print!("{}", l.console);
        if !l.console.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

pub async fn ps(client: &Client, ws: &str) -> anyhow::Result<()> {
    let l: ProcessList = client
        .get(&format!("/v1/workspaces/{}/processes", enc(ws)))
        .await?;
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["PROC", "PID", "STATE", "TTY", "COMMAND"]);
    for p in l.processes {
        let state = if p.running {
            "running".to_owned()
        } else if let Some(s) = p.exit_signal {
            format!("killed ({s})")
        } else {
            format!("exited {}", p.exit_code.unwrap_or(-1))
        };
        t.add_row([
            p.proc.to_string(),
            p.pid.to_string(),
            state,
            if p.tty { "yes" } else { "no" }.into(),
            p.argv.join(" "),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let s: Status = client.get("/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("kraal daemon {} at {}", s.version, client.endpoint);
    println!("  backend:    {}", s.backend);
    println!("  data:       {}", s.data_dir);
    if let Some(u) = &s.web_url {
        println!("  web UI:     {u}");
    }
    println!("  uptime:     {} s", s.uptime_secs);
    println!("  workspaces: {} ({} running)", s.workspaces, s.running);
    Ok(())
}

pub async fn web(client: &Client, no_open: bool) -> anyhow::Result<()> {
    let s: Status = client.get("/v1/status").await?;
    let Some(url) = s.web_url else {
        bail!(
            "the daemon serves no web UI\nhint: start it with `kraal serve --listen 127.0.0.1:7080` (or a tailnet address)"
        );
    };
    println!("{url}");
    let tokens: TokenList = client.get("/v1/tokens").await?;
    if !tokens.tokens.iter().any(|t| t.revoked_at.is_none()) {
        eprintln!("no access token yet: create one with `kraal token create --name phone`");
    }
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_open && desktop && kraal_sandbox::process::which("xdg-open").is_some() {
        let _ = kraal_sandbox::process::Cmd::new("xdg-open")
            .arg(&url)
            .timeout(Duration::from_secs(10))
            .run()
            .await;
    }
    Ok(())
}

pub async fn token_create(client: &Client, name: Option<String>) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(|| {
        use rand::RngCore;
        let mut b = [0u8; 3];
        rand::thread_rng().fill_bytes(&mut b);
        format!("token-{}", hex::encode(b))
    });
    let t: NewToken = client
        .send(Method::POST, "/v1/tokens", Some(&CreateToken { name }))
        .await?;
    println!("{}", t.token);
    eprintln!(
        "token {} ({}) created; it is shown only now. Log in to the web UI with it (`kraal web` prints the address).",
        t.name, t.id
    );
    Ok(())
}

pub async fn token_ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let l: TokenList = client.get("/v1/tokens").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l.tokens)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["ID", "NAME", "CREATED", "LAST USED", "STATE"]);
    for k in l.tokens {
        t.add_row([
            k.id,
            k.name,
            k.created_at,
            k.last_used_at.unwrap_or_else(|| "never".into()),
            if k.revoked_at.is_some() {
                "revoked".into()
            } else {
                "live".to_owned()
            },
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn token_revoke(client: &Client, token: &str) -> anyhow::Result<()> {
    client
        .raw(Method::DELETE, &format!("/v1/tokens/{}", enc(token)), None)
        .await?;
    println!("token {token} revoked");
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn image_build(
    client: &Client,
    name: Option<String>,
    file: Option<&Path>,
    devcontainer: Option<&Path>,
    outputs: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    // The daemon reads the project itself (it runs on this host, like `kraal up DIR`).
    let devcontainer = devcontainer
        .map(|d| {
            std::path::absolute(d)
                .with_context(|| format!("project directory {}", d.display()))
                .map(|p| p.to_string_lossy().into_owned())
        })
        .transpose()?;
    let recipe = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read recipe file {}", f.display()))?,
        ),
        None => None,
    };
    let req = BuildImage {
        name,
        recipe,
        outputs,
        devcontainer,
    };
    let body = client.post_stream("/v1/images/build", &req).await?;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{pos}/{len}] {prefix:.bold} {wide_msg} {elapsed}",
            )
            .expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut result = None;
    crate::client::ndjson_lines(body, |line| {
        if json {
            print!("{}", String::from_utf8_lossy(line));
        }
        let l: BuildLine = serde_json::from_slice(line)
            .with_context(|| "bad build progress from the daemon".to_string())?;
        match l {
            BuildLine::Progress {
                step,
                steps,
                title,
                detail,
                done,
            } => {
                if let Some(b) = &bar {
                    b.set_length(steps as u64);
                    b.set_position(step as u64 - u64::from(!done));
                    b.set_prefix(title.clone());
                    b.set_message(crate::render::clean(&detail));
                    if done {
                        b.println(format!("  [{step}/{steps}] {title}: {detail}"));
                    }
                } else if !json && done {
                    eprintln!("[{step}/{steps}] {title}: {detail}");
                }
            }
            BuildLine::Image(i) => result = Some(Ok(i)),
            BuildLine::Error(e) => result = Some(Err(e)),
        }
        Ok(())
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result {
        Some(Ok(i)) => {
            if !json {
                println!("image {} ({}) built", i.name, i.hash);
                for o in &i.outputs {
                    println!("  {:<6} {:>10}  {}", o.format, human_bytes(o.bytes), o.path);
                }
            }
            Ok(())
        }
        Some(Err(e)) => bail!("{}", e.message),
        None => bail!("the daemon ended the build stream without a result (did it restart?)"),
    }
}

pub async fn image_ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let l: ImageList = client.get("/v1/images").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["NAME", "HASH", "BUILT", "OUTPUTS", "AGENTS", "USED BY"]);
    for i in &l.images {
        t.add_row([
            i.name.clone(),
            i.hash.clone(),
            i.built_at.clone(),
            i.outputs
                .iter()
                .map(|o| format!("{} {}", o.format, human_bytes(o.bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            if i.agents.is_empty() {
                "-".into()
            } else {
                i.agents.join(",")
            },
            i.users.len().to_string(),
        ]);
    }
    if l.images.is_empty() {
        println!("no images built yet");
    } else {
        println!("{}", t.trim_fmt());
    }
    println!();
    println!("recipes (kraal image build NAME):");
    for r in &l.recipes {
        println!("  {:<8} {}", r.name, r.description);
    }
    Ok(())
}

pub async fn image_rm(client: &Client, name: &str) -> anyhow::Result<()> {
    let r: RemovedImages = client
        .send::<(), _>(Method::DELETE, &format!("/v1/images/{}", enc(name)), None)
        .await?;
    for b in r.removed {
        println!("removed {b}");
    }
    Ok(())
}

/// `kraal policy WS [--idle-stop D] [--backup-every D] [--reset]`.
pub async fn policy(
    client: &Client,
    ws: &str,
    args: &crate::cli::PolicyArgs,
    reset: bool,
) -> anyhow::Result<()> {
    let given = args.policy();
    let w: Workspace = if given == kraal_core::Policy::default() && !reset {
        client.get(&format!("/v1/workspaces/{}", enc(ws))).await?
    } else {
        // Settings not given stay as they are (or go back to the defaults with --reset);
        // the workspace record shows the policy in force, so ask for its own through
        // the change itself.
        let body = if reset {
            given
        } else {
            let cur: Workspace = client.get(&format!("/v1/workspaces/{}", enc(ws))).await?;
            kraal_core::Policy {
                idle_stop_secs: given.idle_stop_secs.or(cur.own_policy.idle_stop_secs),
                backup_every_secs: given.backup_every_secs.or(cur.own_policy.backup_every_secs),
                idle_pause_secs: given.idle_pause_secs.or(cur.own_policy.idle_pause_secs),
            }
        };
        client
            .send(
                Method::PUT,
                &format!("/v1/workspaces/{}/policy", enc(ws)),
                Some(&body),
            )
            .await?
    };
    let show = |v: Option<u64>| match v {
        None | Some(0) => "never".to_owned(),
        Some(s) => crate::render::duration(std::time::Duration::from_secs(s)),
    };
    println!("workspace {}", w.name);
    println!(
        "  idle stop:     {}{}",
        if w.persistent {
            "never (persistent)".to_owned()
        } else {
            show(w.policy.idle_stop_secs)
        },
        if w.own_policy.idle_stop_secs.is_none() {
            "  (daemon default)"
        } else {
            ""
        }
    );
    println!(
        "  idle pause:    {}{}",
        if w.persistent {
            "never (persistent)".to_owned()
        } else {
            show(w.policy.idle_pause_secs)
        },
        if w.own_policy.idle_pause_secs.is_none() {
            "  (daemon default)"
        } else {
            ""
        }
    );
    println!(
        "  backup every:  {}{}",
        show(w.policy.backup_every_secs),
        if w.own_policy.backup_every_secs.is_none() {
            "  (daemon default)"
        } else {
            ""
        }
    );
    if let Some(i) = w.idle_secs {
        println!(
            "  idle for:      {}",
            crate::render::duration(std::time::Duration::from_secs(i))
        );
    }
    println!(
        "  last backup:   {}",
        w.last_backup_at.as_deref().unwrap_or("never")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(spec: &str) -> kraal_core::GitCredential {
        kraal_core::GitCredential::parse(spec).unwrap()
    }

    #[test]
    fn a_git_credential_reaches_the_checkouts_origin_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(
            dir.path().join(".git/config"),
            "[remote \"origin\"]\n\turl = https://github.com/Acme/App.git\n",
        )
        .unwrap();
        let local = Source::local(dir.path().to_owned()).unwrap();
        let got = scoped_git(vec![cred("github.com=pat:acme/lib")], &local).unwrap();
        assert_eq!(got[0].repos, ["acme/lib", "acme/app"]);
        let e = scoped_git(vec![cred("gitlab.com=gl")], &local).unwrap_err();
        assert!(
            e.to_string()
                .contains("--git for gitlab.com reaches no repository")
                && e.to_string().contains("--git gitlab.com=gl:OWNER/REPO"),
            "{e}"
        );
        // A clone reaches its own repository without a list; an empty volume needs one.
        let clone = Source::git("https://github.com/acme/app", None).unwrap();
        let got = scoped_git(vec![cred("github.com=pat")], &clone).unwrap();
        assert!(got[0].repos.is_empty());
        assert!(scoped_git(vec![cred("github.com=pat")], &Source::Empty).is_err());
        assert!(scoped_git(vec![cred("github.com=pat:acme/app")], &Source::Empty).is_ok());
    }
}
