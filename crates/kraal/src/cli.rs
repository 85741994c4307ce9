//! Command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::cli_serve::{KubeArgs, ServeArgs};
pub(crate) use crate::cli_serve::{backup_secs, idle_secs, pause_secs};

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
        /// Fail instead of starting the workspace if it is stopped.
        #[arg(long)]
        no_start: bool,
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
        /// Fail instead of starting the workspace if it is stopped.
        #[arg(long)]
        no_start: bool,
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
        /// Attach a file (repeatable): stored in the workspace under .kraal/attachments and
        /// given to the agent (images inline where the agent takes them).
        #[arg(long, short = 'a', value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Fail instead of starting the workspace if it is stopped.
        #[arg(long)]
        no_start: bool,
    },
    /// Review a workspace's uncommitted changes: the diff with `path:line:` on every line
    /// (for editors' quickfix lists), line comments, and sending them to an agent.
    Review(ReviewArgs),
    /// Tasks: queue prompts to run in workspaces of their own (with limits), compare
    /// best-of-N attempts and pick one.
    #[command(subcommand)]
    Task(crate::tasks::TaskCommand),
    /// Model spend and budget caps: once a cap is reached the agent's requests wait (nothing
    /// fails) until it is raised. Without a subcommand: show spend and caps.
    Budget {
        #[command(subcommand)]
        cmd: Option<crate::budget::BudgetCommand>,
    },
    /// Ports something listens on in a workspace, with their preview links.
    Ports {
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// Devices that get push notifications (turned on in the web UI).
    #[command(subcommand)]
    Push(PushCommand),
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
        /// Fail instead of starting the workspace if it is stopped.
        #[arg(long)]
        no_start: bool,
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
        /// Fail instead of starting the workspace if it is stopped.
        #[arg(long)]
        no_start: bool,
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

#[derive(Debug, Args)]
pub struct ReviewArgs {
    pub workspace: String,
    /// Comment on a line: FILE:LINE=TEXT (repeatable; LINE as in the working tree).
    #[arg(long, short = 'c', value_name = "FILE:LINE=TEXT", value_parser = crate::review::parse_comment)]
    pub comment: Vec<crate::review::CommentArg>,
    /// The --comment lines are removed lines, numbered as in HEAD.
    #[arg(long)]
    pub removed: bool,
    /// Write comments in $EDITOR: the diff opens, and lines starting with `>>` under a
    /// line become comments on it.
    #[arg(long, short = 'e')]
    pub edit: bool,
    /// Send the comments (those just added, or every open one) to this session, or to a
    /// new session with `new`.
    #[arg(long, value_name = "SESSION|new")]
    pub send: Option<String>,
    /// The agent of a new session (with --send new).
    #[arg(long, value_parser = agent_kind)]
    pub agent: Option<kraal_core::AgentKind>,
    /// Mark a comment resolved (repeatable).
    #[arg(long, value_name = "ID")]
    pub resolve: Vec<String>,
    /// Mark a comment open again (repeatable).
    #[arg(long, value_name = "ID")]
    pub reopen: Vec<String>,
    /// Delete a comment (repeatable).
    #[arg(long, value_name = "ID")]
    pub delete: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

/// `HOST=SECRET` or `USER@HOST=SECRET`, optionally `:OWNER/REPO,…`.
pub(crate) fn git_credential(s: &str) -> Result<kraal_core::GitCredential, String> {
    kraal_core::GitCredential::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn agent_kind(s: &str) -> Result<kraal_core::AgentKind, String> {
    kraal_core::AgentKind::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Devices, what they get and when they last got something.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Stop notifying a device.
    Rm { id: String },
    /// Send a device a test notification.
    Test { id: String },
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
    /// Authenticate git over HTTPS to HOST with a stored secret, added on the host, for
    /// the workspace's own repository on HOST (its source, or a local checkout's origin)
    /// and the ones listed: HOST=SECRET[:OWNER/REPO,…] or USER@HOST=SECRET[:…]
    /// (repeatable). Fetches and pushes of any other repository on HOST are refused.
    #[arg(long, value_name = "HOST=SECRET[:OWNER/REPO,…]")]
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
    /// Pause the workspace (its processes frozen, no CPU) after this long idle; the next
    /// use resumes it in milliseconds (2m; 0 = never; default: the daemon's --idle-pause).
    #[arg(long, value_name = "DURATION", value_parser = pause_secs)]
    pub idle_pause: Option<u64>,
}

impl PolicyArgs {
    pub fn policy(&self) -> kraal_core::Policy {
        kraal_core::Policy {
            idle_stop_secs: self.idle_stop,
            backup_every_secs: self.backup_every,
            idle_pause_secs: self.idle_pause,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub workspace: String,
    /// Fail instead of starting the workspace if it is stopped.
    #[arg(long)]
    pub no_start: bool,
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
    /// Fail instead of starting the workspace if it is stopped.
    #[arg(long)]
    pub no_start: bool,
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
