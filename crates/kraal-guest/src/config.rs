//! Guest configuration, read from a JSON file the backend places in the sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Address to listen on inside the sandbox.
    pub listen: SocketAddr,
    /// Shared secret the host proves knowledge of during the handshake.
    pub token: String,
    /// Directory the file API is confined to.
    #[serde(default = "default_root")]
    pub files_root: PathBuf,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Where session logs live (default `<files_root>/.kraal/sessions`).
    #[serde(default)]
    pub sessions_dir: Option<PathBuf>,
    /// Environment every process gets (the image's), before the request's own.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Programs started in the background when the guest starts (the image's services).
    #[serde(default)]
    pub start: Vec<Vec<String>>,
    /// The user commands and sessions run as (root when absent).
    #[serde(default)]
    pub user: Option<String>,
    /// Run once, on the first start: stages in order, a stage's commands in parallel.
    #[serde(default)]
    pub on_create: Vec<Vec<Vec<String>>>,
    /// Run on every start, after `on_create`.
    #[serde(default)]
    pub on_start: Vec<Vec<Vec<String>>>,
    /// Running as PID 1 of a microVM: a `Shutdown` request ends with powering it off.
    #[serde(skip)]
    pub vm: bool,
}

fn default_root() -> PathBuf {
    PathBuf::from("/workspace")
}

impl Config {
    /// `--config <file>` or, for tests, `--listen <addr> --token <t> --root <dir>`.
    pub fn from_args(args: &[String]) -> Result<Config, String> {
        let mut it = args.iter();
        let (mut listen, mut token, mut root, mut file) = (None, None, None, None);
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--config" => file = Some(val()?),
                "--listen" => listen = Some(val()?),
                "--token" => token = Some(val()?),
                "--root" => root = Some(val()?),
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; usage: kraal-guest --config FILE"
                    ));
                }
            }
        }
        if let Some(f) = file {
            let text =
                std::fs::read_to_string(&f).map_err(|e| format!("cannot read config {f}: {e}"))?;
            return serde_json::from_str(&text).map_err(|e| format!("invalid config {f}: {e}"));
        }
        let listen = listen.ok_or("missing --config FILE (or --listen and --token)")?;
        Ok(Config {
            listen: listen
                .parse()
                .map_err(|e| format!("invalid --listen {listen:?}: {e}"))?,
            token: token.ok_or("missing --token")?,
            files_root: root.map(PathBuf::from).unwrap_or_else(default_root),
            hostname: None,
            sessions_dir: None,
            env: Vec::new(),
            start: Vec::new(),
            user: None,
            on_create: Vec::new(),
            on_start: Vec::new(),
            vm: false,
        })
    }
}
