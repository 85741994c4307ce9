//! Command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kraal", version, about = "Run coding agents in isolated sandboxes on your own machines", long_about = None)]
pub struct Cli {
    /// Daemon address: a Unix socket path, or tcp://HOST:PORT (token from $KRAAL_TOKEN).
    #[arg(long, global = true, env = "KRAAL_HOST")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
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
    /// Also listen on TCP (requires a bearer token on every request).
    #[arg(long, value_name = "ADDR")]
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// File holding the TCP bearer token; created with a random token if missing.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// State directory (database, volumes, images).
    #[arg(long, env = "KRAAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Backend for new workspaces.
    #[arg(long, default_value = "auto", value_parser = ["auto", "gvisor"])]
    pub backend: String,
    /// How gVisor sandboxes get their network: `host` (runsc inside the workspace netns)
    /// or `sandbox` (runsc's own netstack).
    #[arg(long, default_value = "host", value_parser = ["host", "sandbox"])]
    pub gvisor_network: String,
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
    /// Seconds between reconciliation passes.
    #[arg(long, default_value_t = 5)]
    pub reconcile_secs: u64,
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
