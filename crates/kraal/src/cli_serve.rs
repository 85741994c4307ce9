//! `kraal serve`'s options: listeners, backend, images, model and git upstreams, egress,
//! backups, housekeeping, push notifications and previews.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on.
    #[arg(long, env = "KRAAL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Address of the web UI: loopback by default; a tailnet address to reach it from a
    /// phone; `none` to turn it off. Logins use tokens from `kraal token create`.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub listen: String,
    /// Also listen on TCP (requires a bearer token on every request).
    #[arg(long, value_name = "ADDR", env = "KRAAL_LISTEN_TCP")]
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// File holding the TCP bearer token; created with a random token if missing.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// State directory (database, volumes, images).
    #[arg(long, env = "KRAAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Backend for workspaces: `auto` picks Firecracker (when KRAAL_FIRECRACKER_BIN is set)
    /// or QEMU when KVM boots the guest kernel, gVisor otherwise; `qemu` runs microVMs
    /// under KVM or, without it, TCG emulation; `kubernetes` runs them as pods in a
    /// cluster (see the --kube-* options).
    #[arg(long, env = "KRAAL_BACKEND", default_value = "auto", value_parser = ["auto", "gvisor", "qemu", "firecracker", "kubernetes"])]
    pub backend: String,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Path of qemu-system-x86_64.
    #[arg(long, env = "KRAAL_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// QEMU accelerator: `auto` uses KVM when the bounded probe finds it working.
    #[arg(long, env = "KRAAL_QEMU_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub qemu_accel: String,
    /// Size limit of each new workspace's volume in MiB: a sparse ext4 file, so a
    /// workspace that fills its disk fills only its own (gVisor and microVMs; 0 on gVisor:
    /// a plain host directory without a limit; microVMs always have one).
    #[arg(
        long = "volume-mib",
        visible_alias = "vm-volume-mib",
        env = "KRAAL_VOLUME_MIB",
        default_value_t = 32768
    )]
    pub volume_mib: u64,
    /// How gVisor sandboxes get their network: `host` (runsc inside the workspace netns)
    /// or `sandbox` (runsc's own netstack; needed for `kraal snapshot` on gVisor).
    #[arg(long, env = "KRAAL_GVISOR_NETWORK", default_value = "host", value_parser = ["host", "sandbox"])]
    pub gvisor_network: String,
    /// Image of workspaces created without `--image`: a built-in recipe (default, base,
    /// desktop; built on first use) or an image from `kraal image build --file`.
    #[arg(long, env = "KRAAL_IMAGE", default_value = "default")]
    pub image: String,
    /// Path of runsc.
    #[arg(long, env = "KRAAL_RUNSC", default_value = "runsc")]
    pub runsc: PathBuf,
    /// Path of the static guest agent binary.
    #[arg(long, env = "KRAAL_GUEST_BIN")]
    pub guest_bin: Option<PathBuf>,
    /// Agent CLIs to mount read-only at /opt/kraal/agents in every sandbox: a node_modules
    /// tree with Node.js and the CLIs (default: installed by scripts/setup.sh).
    #[arg(long, env = "KRAAL_AGENTS_DIR")]
    pub agents_dir: Option<PathBuf>,
    /// Anthropic API the model gateway forwards to (credentials: ANTHROPIC_API_KEY or
    /// CLAUDE_CODE_OAUTH_TOKEN in the daemon's environment; they never enter a sandbox).
    #[arg(
        long,
        env = "KRAAL_ANTHROPIC_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_url: String,
    /// Where a Claude subscription login (`kraal login claude`) is refreshed.
    #[arg(
        long,
        env = "KRAAL_CLAUDE_OAUTH_URL",
        default_value = "https://console.anthropic.com/v1/oauth/token"
    )]
    pub claude_oauth_url: String,
    /// OpenAI API the model gateway forwards to (credential: OPENAI_API_KEY).
    #[arg(
        long,
        env = "KRAAL_OPENAI_URL",
        default_value = "https://api.openai.com"
    )]
    pub openai_url: String,
    /// Gemini API the model gateway forwards to (credential: GEMINI_API_KEY).
    #[arg(
        long,
        env = "KRAAL_GOOGLE_URL",
        default_value = "https://generativelanguage.googleapis.com"
    )]
    pub google_url: String,
    /// Seconds a started sandbox may take before its guest agent answers; after that the
    /// start fails with the sandbox's console and the sandbox is stopped.
    #[arg(long, env = "KRAAL_BOOT_TIMEOUT_SECS", default_value_t = 60)]
    pub boot_timeout_secs: u64,
    /// A private range the egress proxy may connect to when a workspace's allowlist leads
    /// there, e.g. a LAN git server (repeatable). Loopback and link-local (cloud metadata)
    /// addresses are refused regardless.
    #[arg(
        long,
        value_name = "CIDR",
        env = "KRAAL_EGRESS_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub egress_allow_cidr: Vec<ipnet::IpNet>,
    /// A fixed address for a host name in the egress proxy, HOST=IP, like `curl
    /// --resolve` (repeatable).
    #[arg(
        long,
        value_name = "HOST=IP",
        env = "KRAAL_EGRESS_RESOLVE",
        value_delimiter = ','
    )]
    pub egress_resolve: Vec<String>,
    /// Where the git gateway sends a git host's requests, HOST=URL (default
    /// https://HOST), e.g. a mirror (repeatable).
    #[arg(
        long,
        value_name = "HOST=URL",
        env = "KRAAL_GIT_URLS",
        value_delimiter = ','
    )]
    pub git_url: Vec<String>,
    /// Where workspace backups go: a directory (default: backups in the data directory)
    /// or s3://BUCKET[/PREFIX] (credentials and endpoint from the AWS_* variables).
    #[arg(long, env = "KRAAL_BACKUP_URL")]
    pub backup_url: Option<String>,
    /// The key backups are encrypted with (default: backup.key in the data directory,
    /// created on first use). Restoring on another machine needs a copy of it.
    #[arg(long, env = "KRAAL_BACKUP_KEY_FILE")]
    pub backup_key_file: Option<PathBuf>,
    /// The key file secrets are encrypted with (default: secret.key in the data
    /// directory, created on first use).
    #[arg(long, env = "KRAAL_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Stop workspaces after this long with no agent turn, terminal or client, unless a
    /// workspace says otherwise (`kraal up --idle-stop`); persistent ones never stop.
    #[arg(long, value_name = "DURATION", env = "KRAAL_IDLE_STOP", default_value = "1h", value_parser = idle_secs)]
    pub idle_stop: u64,
    /// Pause workspaces (their processes frozen, using no CPU) after this long with no
    /// agent turn, terminal or client, unless a workspace says otherwise (`kraal up
    /// --idle-pause`); the next use resumes them. 0: never. Persistent ones never pause.
    #[arg(long, value_name = "DURATION", env = "KRAAL_IDLE_PAUSE", default_value = "0", value_parser = pause_secs)]
    pub idle_pause: u64,
    /// Back running workspaces up this often, unless a workspace says otherwise (0 = no
    /// scheduled backups). An idle stop then backs up first.
    #[arg(long, value_name = "DURATION", env = "KRAAL_BACKUP_EVERY", default_value = "0", value_parser = backup_secs)]
    pub backup_every: u64,
    /// Scheduled backups kept per workspace (manual `kraal backup`s are never removed by
    /// the schedule).
    #[arg(long, value_name = "N", env = "KRAAL_BACKUP_KEEP", default_value_t = 7)]
    pub backup_keep: usize,
    /// Take over from a dead daemon: fill this (empty) data directory from a daemon state
    /// backup in the backup store (its id, or `latest`), then restore every workspace
    /// from its newest backup. Needs the same --backup-url and backup key file.
    #[arg(
        long,
        value_name = "BACKUP",
        env = "KRAAL_TAKE_OVER",
        num_args = 0..=1,
        default_missing_value = "latest"
    )]
    pub take_over: Option<String>,
    /// Contact for the push services that deliver notifications (a `mailto:` or `https:`
    /// URL, sent in every VAPID token; Apple's service wants a real one).
    #[arg(
        long,
        env = "KRAAL_PUSH_CONTACT",
        default_value = "mailto:kraal@localhost"
    )]
    pub push_contact: String,
    /// How long a notification's Approve / Deny buttons work.
    #[arg(long, value_name = "DURATION", env = "KRAAL_PUSH_ACTION_TTL", default_value = "15m", value_parser = action_secs)]
    pub push_action_ttl: u64,
    /// Give every workspace port its own origin, `<port>--<workspace>.DOMAIN` (point a
    /// wildcard DNS name, e.g. with `tailscale serve` or a reverse proxy, at the web UI);
    /// absolute-path apps and WebSockets then work as on localhost.
    #[arg(long, value_name = "DOMAIN", env = "KRAAL_PREVIEW_DOMAIN", value_parser = preview_domain)]
    pub preview_domain: Option<String>,
    /// Tasks (`kraal task add`) running at once in this daemon; the rest wait in the queue.
    #[arg(long, value_name = "N", env = "KRAAL_MAX_RUNNING", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_running: u64,
    /// Tasks running at once on one repository (0: only --max-running applies).
    #[arg(
        long,
        value_name = "N",
        env = "KRAAL_MAX_RUNNING_PER_REPO",
        default_value_t = 0
    )]
    pub max_running_per_repo: u64,
    /// A git host whose API tasks use for issues and pull requests, KIND:HOST[=API_URL]
    /// (repeatable; kind `github`; default API https://api.github.com for github.com,
    /// https://HOST/api/v3 for GitHub Enterprise). The token is the secret `github-token`
    /// unless a task names one with `--git HOST=SECRET`.
    #[arg(
        long,
        value_name = "KIND:HOST[=URL]",
        env = "KRAAL_FORGES",
        value_delimiter = ',',
        default_value = "github:github.com"
    )]
    pub forge: Vec<String>,
    /// Seconds between looks at labelled issues and at tasks' pull requests (checks and
    /// review comments); a signed webhook makes kraal look at once.
    #[arg(long, value_name = "SECS", env = "KRAAL_FORGE_POLL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub forge_poll_secs: u64,
    /// Seconds between reconciliation passes.
    #[arg(long, default_value_t = 5)]
    pub reconcile_secs: u64,
    /// Seconds between housekeeping passes (idle stops, scheduled backups).
    #[arg(long, env = "KRAAL_HOUSEKEEPING_SECS", default_value_t = 10)]
    pub housekeeping_secs: u64,
    /// The daemon's log on stderr: `text` for people, or `json` (one JSON object a line,
    /// for log collectors). Which messages: KRAAL_LOG (default `info`).
    #[arg(long, value_name = "FORMAT", env = "KRAAL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Where and how workspaces run with `--backend kubernetes`.
#[derive(Debug, Args, Clone)]
pub struct KubeArgs {
    /// The kubeconfig context (default: the current one; KUBECONFIG or ~/.kube/config, or
    /// the in-cluster service account).
    #[arg(long, env = "KRAAL_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    #[arg(long, env = "KRAAL_KUBE_NAMESPACE", default_value = "kraal")]
    pub kube_namespace: String,
    /// The workspace image in a registry: kraal's OCI output (`kraal image build -o oci`),
    /// pushed.
    #[arg(long, env = "KRAAL_KUBE_IMAGE", default_value = "")]
    pub kube_image: String,
    /// runtimeClassName of workspace pods: kata-fc, kata-qemu, gvisor… (`none`: the
    /// cluster's default runtime).
    #[arg(long, env = "KRAAL_KUBE_RUNTIME_CLASS", default_value = "gvisor")]
    pub kube_runtime_class: String,
    /// Storage class of workspace volumes (default: the cluster's).
    #[arg(long, env = "KRAAL_KUBE_STORAGE_CLASS")]
    pub kube_storage_class: Option<String>,
    #[arg(long, env = "KRAAL_KUBE_VOLUME_SIZE", default_value = "32Gi")]
    pub kube_volume_size: String,
    /// KEY=VALUE a node must carry (repeatable).
    #[arg(
        long,
        value_name = "KEY=VALUE",
        env = "KRAAL_KUBE_NODE_SELECTOR",
        value_delimiter = ','
    )]
    pub kube_node_selector: Vec<String>,
    /// KEY[=VALUE]:EFFECT taint workspace pods tolerate (repeatable).
    #[arg(
        long,
        value_name = "TOLERATION",
        env = "KRAAL_KUBE_TOLERATIONS",
        value_delimiter = ','
    )]
    pub kube_toleration: Vec<String>,
    /// A docker-registry Secret in the namespace for pulling the image.
    #[arg(long, env = "KRAAL_KUBE_PULL_SECRET")]
    pub kube_pull_secret: Option<String>,
}

pub(crate) fn idle_secs(s: &str) -> Result<u64, String> {
    kraal_core::parse_duration_secs("idle stop", s).map_err(|e| e.to_string())
}

pub(crate) fn pause_secs(s: &str) -> Result<u64, String> {
    kraal_core::parse_duration_secs("idle pause", s).map_err(|e| e.to_string())
}

pub(crate) fn backup_secs(s: &str) -> Result<u64, String> {
    kraal_core::parse_duration_secs("backup interval", s).map_err(|e| e.to_string())
}

fn action_secs(s: &str) -> Result<u64, String> {
    let v = kraal_core::parse_duration_secs("action lifetime", s).map_err(|e| e.to_string())?;
    if v == 0 {
        return Err("the action lifetime must be longer than 0".into());
    }
    Ok(v)
}

fn preview_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 200
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(d)
    } else {
        Err(format!(
            "{s:?} is not a domain name like preview.example.ts.net"
        ))
    }
}
