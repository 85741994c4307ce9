//! Command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kraal", version, about = "Run coding agents in isolated sandboxes on your own machines", long_about = None)]
pub struct Cli {
    /// Daemon address: a Unix socket path, or tcp://HOST:PORT (token from $KRAAL_TOKEN).
    #[arg(long, global = true, env = "KRAAL_HOST")]
    pub host: Option<String>,
    /// The daemon to talk to, by context name (`kraal context ls`).
    #[arg(long, global = true, env = "KRAAL_CONTEXT")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Create a workspace from a directory or git URL, or start an existing one.
    Up(UpArgs),
    /// List workspaces.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a workspace; exits with the command's exit code.
    Exec(ExecArgs),
    /// Open an interactive shell in a workspace.
    Shell {
        workspace: String,
        /// Working directory inside the workspace.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
    },
    /// Stop a workspace; its volume is kept.
    Down {
        workspace: String,
        /// Return without waiting for the sandbox to stop.
        #[arg(long)]
        detach: bool,
    },
    /// Remove a workspace and its volume.
    Rm {
        workspace: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// Also remove a persistent (control) workspace.
        #[arg(long)]
        force: bool,
        /// Also delete its backups (kept otherwise, so it can be restored).
        #[arg(long)]
        purge: bool,
        /// Do not take a final backup first (a workspace that uses backups — it has one,
        /// or a backup schedule applies — gets one so its last state is kept).
        #[arg(long, conflicts_with = "purge")]
        no_backup: bool,
    },
    /// Save a running microVM workspace — memory, processes and disks — as NAME.
    Snapshot { workspace: String, name: String },
    /// `restore BACKUP [--as NAME]`: a new workspace from a backup; `restore WORKSPACE
    /// SNAPSHOT`: a microVM workspace back to a snapshot (files and running processes).
    Restore {
        /// A backup id (`bk-…`), or a workspace.
        target: String,
        /// With a workspace: the snapshot.
        snapshot: Option<String>,
        /// The restored workspace's name (default: the backed-up one's).
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Back a running workspace up to the daemon's backup store (deduplicated, encrypted):
    /// its volume — checkout, untracked files, git state — and session logs.
    Backup {
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// List or remove backups.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Back up the daemon's own state (database, encrypted secrets, tokens) so another
    /// machine can take over with `kraal serve --take-over`.
    #[command(subcommand)]
    State(StateCommand),
    /// Named daemons this CLI can drive: add, use, list, remove.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Write a running workspace — volume, git state, session logs, settings — to a
    /// zstd-compressed tar file (`kraal import` reads it, on any daemon).
    Export {
        workspace: String,
        /// The file (default: WORKSPACE.tar.zst; `-` for standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Create a workspace from a `kraal export` file.
    Import {
        file: PathBuf,
        /// The new workspace's name (default: the exported one's).
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show or change when a workspace stops by itself and how often it is backed up.
    Policy {
        workspace: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Go back to the daemon's defaults for the settings not given.
        #[arg(long)]
        reset: bool,
    },
    /// Show a workspace's lifecycle events and sandbox console.
    Logs {
        workspace: String,
        /// Only the lifecycle events.
        #[arg(long)]
        events_only: bool,
    },
    /// Show processes started through kraal in a workspace.
    Ps { workspace: String },
    /// Start a conversation with a coding agent in a workspace.
    NewChat(NewChatArgs),
    /// Talk to an agent: its history, live events and a prompt (`/help` inside).
    Chat {
        /// Pick among this workspace's sessions (a new one if it has none).
        #[arg(short = 'w', long)]
        workspace: Option<String>,
        /// The session to talk to (id or unique prefix).
        #[arg(short = 'c', long = "conversation", alias = "session")]
        session: Option<String>,
    },
    /// Send a message to a session; it is queued or steered in while the agent works.
    Send {
        session: String,
        /// The message (words are joined with spaces); `-` reads it from standard input.
        #[arg(required = true)]
        message: Vec<String>,
        /// Print the agent's work until the turn that handles the message ends.
        #[arg(long)]
        wait: bool,
    },
    /// List agent sessions.
    Sessions {
        /// Only this workspace's sessions.
        workspace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop the current turn of a session.
    Interrupt { session: String },
    /// Approve a request an agent is waiting on.
    Approve {
        session: String,
        request: String,
        /// A note for the agent.
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Deny a request an agent is waiting on.
    Deny {
        session: String,
        request: String,
        /// Why (the agent sees it).
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Print a session's events.
    Events {
        session: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep following new events.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// End a session: the agent finishes and exits; its log is kept.
    EndChat { session: String },
    /// Print the web UI's address (and open it when a desktop is around).
    Web {
        /// Only print the address.
        #[arg(long)]
        no_open: bool,
    },
    /// Manage access tokens for the web UI.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Log the agents in once, for every workspace: the login stays on the host (and is
    /// refreshed there); agents reach it only through the model gateway.
    #[command(subcommand)]
    Login(LoginCommand),
    /// Secrets kept on the host, encrypted at rest; sandboxes never see their values.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// What a workspace may reach outside: its egress allowlist and connection log.
    #[command(subcommand)]
    Egress(EgressCommand),
    /// SSH into a workspace with the real OpenSSH client, through the daemon (no port is
    /// opened); extra arguments go to ssh (e.g. a command).
    Ssh {
        workspace: String,
        /// The user to log in as (default root).
        #[arg(short = 'l', long)]
        user: Option<String>,
        /// Arguments for ssh after the host, e.g. a remote command.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Host entries for OpenSSH and VS Code Remote-SSH: `ssh WORKSPACE` then just works.
    SshConfig {
        /// Write them to this file instead of printing them.
        #[arg(short, long, conflicts_with = "install")]
        output: Option<PathBuf>,
        /// Write them to ~/.config/kraal/ssh/config and include that from ~/.ssh/config.
        #[arg(long)]
        install: bool,
    },
    /// The ProxyCommand of `kraal ssh-config`: the SSH stream on standard input and output.
    #[command(hide = true)]
    SshProxy {
        workspace: String,
        #[arg(long, default_value = "root")]
        user: String,
    },
    /// Forward a port of a workspace (e.g. RDP 3389 of the desktop image) to localhost.
    Forward {
        workspace: String,
        port: u16,
        /// Local address to listen on (default 127.0.0.1:PORT, or a free port if taken).
        #[arg(long, value_name = "ADDR")]
        local: Option<String>,
        /// Relay standard input and output once instead of listening.
        #[arg(long)]
        stdio: bool,
    },
    /// Security-relevant actions: logins, tokens, secrets, exec, ssh.
    Audit {
        /// Newest entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only this action (e.g. exec, ssh, secret.set).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build, list and remove workspace images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Show the daemon's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Inspect this host.
    #[command(subcommand)]
    Host(HostCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Internal: run the KVM test guest in this process.
    #[command(name = "__kvm-probe", hide = true)]
    KvmProbe,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Every backup in the store.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a backup (chunks no other backup uses are deleted).
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Back the daemon's state up to its backup store now.
    Backup {
        #[arg(long)]
        json: bool,
    },
    /// List the daemon state backups in the store.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Remember a daemon under NAME (and use it if it is the first, or with --use).
    Add {
        name: String,
        /// tcp://HOST:PORT, or a Unix socket path.
        #[arg(long)]
        host: String,
        /// The daemon's API token (from its data directory's api-token file).
        #[arg(long, env = "KRAAL_CONTEXT_TOKEN")]
        token: Option<String>,
        /// Make it the current context.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make NAME the current context (`local`: the daemon on this machine).
    Use { name: String },
    /// List contexts; `*` marks the current one.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a context.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum LoginCommand {
    /// Share this machine's Claude login (from `claude` + `/login`, in
    /// ~/.claude/.credentials.json), or with --token a `claude setup-token` token.
    Claude {
        /// The credentials file to import.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        credentials: Option<PathBuf>,
        /// Read a long-lived token (`claude setup-token`) from standard input.
        #[arg(long)]
        token: bool,
    },
    /// Share an OpenAI API key for Codex: from $CODEX_HOME/auth.json (~/.codex), or with
    /// --api-key from standard input.
    Codex {
        #[arg(long)]
        api_key: bool,
    },
    /// How each agent is logged in.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret: from standard input (the default), a file, or the output of a
    /// command run here (e.g. `--command 'rbw get github-pat'`).
    Set {
        name: String,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "command")]
        file: Option<PathBuf>,
        /// Run this shell command on this machine and store its output.
        #[arg(long)]
        command: Option<String>,
    },
    /// List secrets (names and sources, never values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Show a workspace's allowlist.
    Ls {
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// Add rules: `example.com`, `*.example.com` (subdomains), `host:port`.
    Allow {
        workspace: String,
        #[arg(required = true)]
        rules: Vec<String>,
    },
    /// Remove rules.
    Deny {
        workspace: String,
        #[arg(required = true)]
        rules: Vec<String>,
    },
    /// Connections the workspace's egress proxy allowed or refused.
    Log {
        workspace: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// A unique label (default: token-<random>).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id or name; its web logins end at once.
    Revoke { token: String },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from a built-in recipe (default, base, desktop) or a recipe file.
    /// Layers are cached by content hash: an unchanged recipe rebuilds in seconds.
    Build {
        /// Built-in recipe name (default: `default`, or the file's recipe).
        name: Option<String>,
        /// A recipe file (TOML; see images/*.toml).
        #[arg(long, short = 'f', conflicts_with = "devcontainer")]
        file: Option<PathBuf>,
        /// A project directory: build its devcontainer.json (what `kraal up` would).
        #[arg(long)]
        devcontainer: Option<PathBuf>,
        /// Outputs to produce: rootfs, ext4, oci (repeat or comma-separate; default all).
        #[arg(long = "output", short = 'o', value_delimiter = ',')]
        outputs: Vec<String>,
        /// Print progress as JSON lines instead of a progress bar.
        #[arg(long)]
        json: bool,
    },
    /// List built images and the built-in recipes.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove every build of an image (refused while a workspace uses it).
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Report which backends are usable here and why.
    Check {
        #[arg(long)]
        json: bool,
    },
}

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
    /// or `sandbox` (runsc's own netstack).
    #[arg(long, default_value = "host", value_parser = ["host", "sandbox"])]
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
    /// Seconds between reconciliation passes.
    #[arg(long, default_value_t = 5)]
    pub reconcile_secs: u64,
    /// Seconds between housekeeping passes (idle stops, scheduled backups).
    #[arg(long, env = "KRAAL_HOUSEKEEPING_SECS", default_value_t = 10)]
    pub housekeeping_secs: u64,
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

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A workspace name or id, a local directory, or a git URL.
    pub target: String,
    /// Name for a new workspace (default: derived from the source).
    #[arg(long)]
    pub name: Option<String>,
    /// Branch to check out (git sources).
    #[arg(long)]
    pub branch: Option<String>,
    /// CPU cores.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 2G or 512M.
    #[arg(long)]
    pub memory: Option<String>,
    /// Process limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Return without waiting for the workspace to run.
    #[arg(long)]
    pub detach: bool,
    /// Image for a new workspace (`kraal image ls`; default: the daemon's `--image`).
    #[arg(long)]
    pub image: Option<String>,
    /// A long-lived control workspace: its address never changes (reserved even while
    /// stopped) and `kraal rm` needs `--force`.
    #[arg(long)]
    pub persistent: bool,
    /// Mount a host directory: HOST:PATH, read-only, or HOST:PATH:rw (repeatable). QEMU
    /// shares it with virtio-fs, gVisor with a bind mount.
    #[arg(long, value_name = "HOST:PATH[:rw]")]
    pub mount: Vec<String>,
    /// Let the workspace reach this host through its egress proxy: `example.com`,
    /// `*.example.com`, `host:port` (repeatable; added to the default allowlist).
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Start from an empty allowlist instead of the default one (model APIs, git hosts,
    /// package registries).
    #[arg(long)]
    pub no_default_allow: bool,
    /// Authenticate git over HTTPS to HOST with a stored secret, added on the host:
    /// HOST=SECRET or USER@HOST=SECRET (repeatable).
    #[arg(long, value_name = "HOST=SECRET")]
    pub git: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Housekeeping settings of one workspace.
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Stop the workspace after this long with no agent turn, terminal or client (30m,
    /// 2h; 0 = never; default: the daemon's --idle-stop).
    #[arg(long, value_name = "DURATION", value_parser = idle_secs)]
    pub idle_stop: Option<u64>,
    /// Back the workspace up this often while it runs (6h, 1d; 0 = never; default: the
    /// daemon's --backup-every).
    #[arg(long, value_name = "DURATION", value_parser = backup_secs)]
    pub backup_every: Option<u64>,
}

impl PolicyArgs {
    pub fn policy(&self) -> kraal_core::Policy {
        kraal_core::Policy {
            idle_stop_secs: self.idle_stop,
            backup_every_secs: self.backup_every,
        }
    }
}

fn idle_secs(s: &str) -> Result<u64, String> {
    kraal_core::parse_duration_secs("idle stop", s).map_err(|e| e.to_string())
}

fn backup_secs(s: &str) -> Result<u64, String> {
    kraal_core::parse_duration_secs("backup interval", s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub workspace: String,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Do not forward standard input.
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
    /// Working directory inside the workspace (default /workspace).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Environment variables, KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NewChatArgs {
    pub workspace: String,
    /// The coding agent.
    #[arg(long, default_value = "claude", value_parser = ["claude", "codex", "gemini", "qwen", "goose", "opencode"])]
    pub agent: String,
    /// The first message (the task); the turn is followed until it ends.
    #[arg(short, long)]
    pub message: Option<String>,
    /// Model name, as the agent knows it.
    #[arg(long)]
    pub model: Option<String>,
    /// Added to the agent's system prompt.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Ask before every tool use (answer with `kraal approve|deny`); the default lets
    /// the agent act freely inside its sandbox.
    #[arg(long)]
    pub ask: bool,
    /// Program to run instead of the agent's usual one.
    #[arg(long)]
    pub binary: Option<String>,
    /// Extra argument for the agent (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Extra environment variable for the agent (stored with the session; not for secrets).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the workspace (default /workspace).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Print the session id and return at once.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the agent's raw protocol traffic in /workspace/.kraal/sessions/<id>/transcript.jsonl.
    #[arg(long)]
    pub transcript: bool,
}
