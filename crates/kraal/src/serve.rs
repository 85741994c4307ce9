//! `kraal serve`: the daemon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kraal_engine::Engine;
use kraal_gvisor::NetworkMode;
use kraal_server::AppState;
use kraal_store::Store;
use tokio::net::UnixListener;

use crate::cli::ServeArgs;
use crate::host::{BackendOptions, ensure_dir, inspect};

/// The log is JSON (`--log-format json`): set once, before the daemon starts.
pub static JSON_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line for whoever runs the daemon: plain on stderr, or in a JSON log an event like
/// every other line.
macro_rules! say {
    ($($arg:tt)*) => {
        if JSON_LOG.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!($($arg)*)
        } else {
            eprintln!($($arg)*)
        }
    };
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // The handlers go in before anything listens: a SIGTERM the moment the socket answers
    // (a service manager, a test) is a clean shutdown, not the default kill.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let data_dir = args.data_dir.clone().unwrap_or_else(crate::paths::data_dir);
    ensure_dir(&data_dir, 0o700)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let socket = args.socket.clone().unwrap_or_else(crate::paths::socket);

    let opts = BackendOptions {
        data_dir: data_dir.clone(),
        runsc: args.runsc.clone(),
        guest_bin: args.guest_bin.clone(),
        agents_dir: args.agents_dir.clone(),
        network: NetworkMode::parse(&args.gvisor_network).expect("clap validated"),
        default_image: args.image.clone(),
        backend: args.backend.clone(),
        qemu: args.qemu.clone(),
        qemu_accel: args.qemu_accel.clone(),
        volume_mib: args.volume_mib,
    };
    let (mut report, mut backend) = inspect(&opts).await;
    if args.backend == "kubernetes" {
        let kube = crate::host::kubernetes(&args.kube).await?;
        let c = kraal_sandbox::Backend::check(&kube).await;
        if let Some(b) = report
            .backends
            .iter_mut()
            .find(|b| b.backend == kraal_core::BackendKind::Kubernetes)
        {
            b.usable = c.status == kraal_sandbox::ProbeStatus::Usable;
            b.details = c.details;
        }
        report.selected = kraal_core::BackendKind::Kubernetes;
        backend = Arc::new(kube);
    }
    let chosen = report
        .backends
        .iter()
        .find(|b| b.backend == report.selected)
        .expect("selected is listed");
    if !chosen.usable {
        let hint = if chosen.backend == kraal_core::BackendKind::Kubernetes {
            "check KUBECONFIG (or --kube-context) and the --kube-* options; docs/kubernetes.md walks through a cluster"
        } else {
            "run scripts/setup.sh (installs runsc, QEMU, debootstrap, nftables) and see `kraal host check`"
        };
        bail!(
            "the {} backend is not usable on this host:\n  {}\nhint: {hint}",
            chosen.backend,
            chosen.details.join("\n  ")
        );
    }
    tracing::info!(backend = %report.selected, kvm = report.kvm.usable, "backend selected");

    let key_file = args
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("secret.key"));
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| data_dir.join("api-token"));
    let state_files = vec![
        ("secret.key".to_owned(), key_file.clone()),
        ("api-token".to_owned(), token_file.clone()),
    ];
    let backup_url = args
        .backup_url
        .clone()
        .unwrap_or_else(|| data_dir.join("backups").display().to_string());
    let backup_key = kraal_backup::RepoKey::load_or_create(
        &args
            .backup_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("backup.key")),
    )
    .context("cannot load the backup key")?;
    let backups = kraal_backup::Repo::open(&backup_url, &backup_key)
        .with_context(|| format!("cannot open the backup store {backup_url}"))?;
    let db_path = data_dir.join("state.db");
    if let Some(which) = &args.take_over {
        let m = kraal_server::state::restore_state(&backups, which, &db_path, &state_files)
            .await
            .with_context(|| format!("cannot take over from {backup_url}"))?;
        let d = kraal_server::state::DaemonMeta::of(&m);
        say!(
            "took over the state of {} from backup {} ({}); restoring {} workspaces from their newest backups",
            d.as_ref().map(|d| d.hostname.as_str()).unwrap_or("?"),
            m.id,
            m.created_at,
            d.as_ref().map(|d| d.workspaces.len()).unwrap_or(0),
        );
    }
    let store = Store::open(&db_path).context("cannot open the state database")?;
    let mut git_urls = std::collections::HashMap::new();
    for (host, url) in crate::services::pairs("git-url", &args.git_url)? {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("--git-url {host}={url}: the URL must start with https:// or http://");
        }
        git_urls.insert(host, url);
    }
    let upstreams = kraal_proxy::Upstreams {
        anthropic: args.anthropic_url.clone(),
        openai: args.openai_url.clone(),
        google: args.google_url.clone(),
        git: git_urls,
    };
    let mut resolve: std::collections::HashMap<String, Vec<std::net::IpAddr>> = Default::default();
    for (host, ip) in crate::services::pairs("egress-resolve", &args.egress_resolve)? {
        let ip: std::net::IpAddr = ip.parse().with_context(|| {
            format!("--egress-resolve {host}={ip}: {ip:?} is not an IP address")
        })?;
        resolve.entry(host).or_default().push(ip);
    }
    let egress = kraal_proxy::EgressSettings {
        allow_cidrs: args.egress_allow_cidr.clone(),
        resolve,
        ..Default::default()
    };
    let secret_key =
        kraal_store::SecretKey::load_or_create(&key_file).context("cannot load the secret key")?;
    let creds = crate::services::credentials_from_env();
    tracing::info!(
        anthropic = %upstreams.anthropic,
        openai = %upstreams.openai,
        anthropic_credential = creds.anthropic.is_some(),
        openai_credential = creds.openai.is_some(),
        google_credential = creds.google.is_some(),
        "model gateway"
    );
    let forges = args
        .forge
        .iter()
        .map(|f| kraal_forge::ForgeHost::parse(f).with_context(|| format!("--forge {f}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let host_creds = Arc::new(crate::services::HostCredentials::new(
        store.clone(),
        secret_key.clone(),
        creds,
    ));
    let metrics = Arc::new(kraal_metrics::Metrics::new());
    let services = crate::services::HostServices::new(
        upstreams,
        host_creds.clone(),
        egress,
        store.clone(),
        metrics.clone(),
    )?;
    let engine = Engine::new(store.clone(), backend, Some(services.clone()), metrics);
    engine.set_boot_timeout(Duration::from_secs(args.boot_timeout_secs.max(1)));
    // The web UI: bound first, so its address is known to the API.
    let web = match args.listen.as_str() {
        "none" | "off" => None,
        addr => {
            let addr: std::net::SocketAddr = addr.parse().with_context(|| {
                format!("--listen {addr:?} is not an address like 127.0.0.1:7080 (or `none`)")
            })?;
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("the web UI cannot listen on {addr}; pick another with --listen ADDR, or --listen none")
            })?;
            Some(l)
        }
    };
    let web_url = web
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!("http://{a}"));
    let vapid = kraal_push::VapidKey::load_or_create(&data_dir.join("vapid.key"))
        .context("cannot load the Web Push (VAPID) key")?;
    let push = kraal_server::push::Push::start(
        store.clone(),
        kraal_server::push::PushConfig {
            vapid,
            subject: args.push_contact.clone(),
            action_ttl: Duration::from_secs(args.push_action_ttl),
        },
    )
    .context("cannot start push notifications")?;
    services.set_notices(engine.notice_sender());
    let state = AppState {
        engine: engine.clone(),
        images: crate::host::image_store(&opts),
        host: Arc::new(report),
        data_dir: data_dir.display().to_string(),
        web_url: web_url.clone(),
        secret_key,
        backups: Some(backups.clone()),
        state_files: state_files.clone(),
        push: Some(push),
        preview_domain: args.preview_domain.clone(),
        rate_limits: Some(crate::services::rate_limits(&services)),
        tasks: Some(kraal_tasks::Scheduler::new(
            engine.clone(),
            kraal_tasks::Limits {
                max_running: args.max_running as usize,
                per_repo: args.max_running_per_repo as usize,
            },
        )),
    };
    if let Some(t) = &state.tasks {
        t.set_forges(kraal_tasks::Forges::new(
            forges,
            host_creds,
            Duration::from_secs(args.forge_poll_secs),
        ));
    }
    let notifier = kraal_server::notifier::spawn(state.clone());
    let defaults = kraal_core::Policy {
        idle_stop_secs: Some(args.idle_stop),
        backup_every_secs: Some(args.backup_every),
        idle_pause_secs: Some(args.idle_pause),
    };
    defaults.validate()?;
    engine.set_housekeeping(kraal_engine::Housekeeping {
        defaults,
        keep: args.backup_keep.max(1),
        repo: Some(backups.clone()),
    });

    // Unix socket, owner-only.
    if let Some(dir) = socket.parent() {
        ensure_dir(dir, 0o700).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            bail!(
                "another kraal daemon is already listening on {}",
                socket.display()
            );
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    let unix = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    say!(
        "kraal daemon listening on unix:{} (data in {})",
        socket.display(),
        data_dir.display()
    );

    let refresher = crate::login::spawn_refresher(
        store.clone(),
        state.secret_key.clone(),
        args.claude_oauth_url.clone(),
    );
    let takeover = if args.take_over.is_some() {
        Some(take_over_workspaces(&engine, &backups).await?)
    } else {
        None
    };
    let scheduler = state.tasks.as_ref().map(|t| t.spawn());
    let reconciler = engine.spawn_reconciler(Duration::from_secs(args.reconcile_secs.max(1)));
    let state_schedule = (args.backup_every > 0).then(|| {
        spawn_state_backups(
            store.clone(),
            state_files.clone(),
            backups.clone(),
            Duration::from_secs(args.backup_every),
            args.backup_keep,
        )
    });
    let housekeeper = engine.spawn_housekeeper(Duration::from_secs(args.housekeeping_secs.max(1)));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    {
        let app = kraal_server::router(state.clone(), None);
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(unix, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }));
    }
    if let Some(addr) = args.listen_tcp {
        let token = load_or_create_token(&token_file)?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        say!(
            "kraal daemon listening on tcp://{addr} (bearer token in {})",
            token_file.display()
        );
        let app = kraal_server::router(state.clone(), Some(token));
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(tcp, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }));
    }

    if let Some(l) = web {
        let app = kraal_server::web::router(state.clone())
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        say!(
            "kraal web UI on {} (log in with a token from `kraal token create`)",
            web_url.as_deref().unwrap_or_default()
        );
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }));
    }

    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    say!("kraal daemon shutting down; sandboxes keep running");
    reconciler.abort();
    housekeeper.abort();
    if let Some(t) = scheduler {
        t.abort();
    }
    if let Some(n) = notifier {
        n.abort();
    }
    if let Some(t) = state_schedule {
        t.abort();
    }
    if let Some(t) = takeover {
        t.abort();
    }
    refresher.abort();
    let _ = shutdown_tx.send(true);
    // Open exec streams would hold graceful shutdown forever; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(servers)).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if t.len() < 16 {
            bail!("token in {} is shorter than 16 characters", path.display());
        }
        return Ok(t);
    }
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let t = hex::encode(b);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    writeln!(f, "{t}")?;
    Ok(t)
}

/// After a takeover: every workspace of the restored state that has a backup is
/// recreated from its newest one (under the same name, in the background, one at a
/// time); the others keep their records, so the reconciler recreates them from their
/// source.
async fn take_over_workspaces(
    engine: &Arc<Engine>,
    repo: &kraal_backup::Repo,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let backups = repo.list().await.context("cannot list the backups")?;
    let plan = kraal_server::state::newest_backups(&engine.list()?, &backups);
    let mut todo = Vec::new();
    for (w, m) in plan {
        match m {
            Some(m) => {
                engine.store().delete(&w.id)?;
                todo.push((w.name.to_string(), m));
            }
            None => {
                let _ = engine.store().add_event(
                    &w.id,
                    "warn",
                    "taken over without a backup; recreating it from its source",
                );
                say!(
                    "workspace {} has no backup; recreating it from its source",
                    w.name
                );
            }
        }
    }
    let engine = engine.clone();
    let repo = repo.clone();
    Ok(tokio::spawn(async move {
        for (name, m) in todo {
            match engine.restore_backup(&repo, &m, Some(&name), |_| {}).await {
                Ok(_) => {
                    tracing::info!(workspace = %name, backup = %m.id, "restored after the takeover")
                }
                Err(e) => tracing::error!(
                    workspace = %name,
                    backup = %m.id,
                    "restoring after the takeover failed: {}",
                    kraal_engine::chain(&e)
                ),
            }
        }
    }))
}

/// Backs the daemon's state up every `every`, keeping the newest `keep`.
fn spawn_state_backups(
    store: Store,
    files: Vec<(String, std::path::PathBuf)>,
    repo: kraal_backup::Repo,
    every: Duration,
    keep: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match kraal_server::state::backup_state(&store, &files, &repo, true).await {
                Ok(m) => {
                    tracing::info!(backup = %m.id, "daemon state backed up");
                    if let Err(e) = kraal_server::state::prune_state(&repo, keep).await {
                        tracing::warn!("removing old state backups: {}", kraal_engine::chain(&e));
                    }
                }
                Err(e) => {
                    tracing::error!("daemon state backup failed: {}", kraal_engine::chain(&e))
                }
            }
        }
    })
}
