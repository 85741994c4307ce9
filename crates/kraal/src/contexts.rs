//! `kraal context`: named daemons one CLI can drive (a Unix socket, or `tcp://HOST:PORT`
//! with its API token), kept in `~/.config/kraal/contexts.json` (owner-only). The daemon
//! a command talks to is, in order: `--host`/`KRAAL_HOST`, `--context`/`KRAAL_CONTEXT`,
//! the current context, the local socket.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// `tcp://HOST:PORT`, `unix:/path` or a socket path.
    pub host: String,
    /// The daemon's API token (TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Ctx>,
}

/// `$KRAAL_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kraal`, else `~/.config/kraal`.
fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KRAAL_CONFIG_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kraal");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".config/kraal")
}

fn file() -> PathBuf {
    config_dir().join("contexts.json")
}

impl Contexts {
    pub fn load() -> anyhow::Result<Contexts> {
        let f = file();
        match std::fs::read(&f) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a valid contexts file", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", f.display())),
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let f = file();
        let dir = f.parent().expect("a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = f.with_extension("json.tmp");
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        out.write_all(&serde_json::to_vec_pretty(self)?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &f).with_context(|| format!("cannot write {}", f.display()))?;
        Ok(())
    }

    /// The context a command uses: `name` if given, else the current one.
    pub fn pick(&self, name: Option<&str>) -> anyhow::Result<Option<(String, Ctx)>> {
        match name.or(self.current.as_deref()) {
            None => Ok(None),
            Some(n) => match self.contexts.get(n) {
                Some(c) => Ok(Some((n.to_owned(), c.clone()))),
                None => bail!(
                    "there is no context {n:?}{}",
                    if self.contexts.is_empty() {
                        " (add one with `kraal context add NAME --host tcp://HOST:PORT`)".to_owned()
                    } else {
                        format!(
                            "; known: {}",
                            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            },
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_host(h: &str) -> anyhow::Result<()> {
    if let Some(addr) = h.strip_prefix("tcp://") {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            bail!("--host {h:?}: expected tcp://HOST:PORT");
        }
        return Ok(());
    }
    let path = h.strip_prefix("unix:").unwrap_or(h);
    if !path.starts_with('/') {
        bail!("--host {h:?}: expected tcp://HOST:PORT or an absolute socket path");
    }
    Ok(())
}

pub fn add(name: &str, host: &str, token: Option<String>, use_it: bool) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("context name {name:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    check_host(host)?;
    if host.starts_with("tcp://") && token.is_none() {
        bail!(
            "a TCP daemon needs its API token: --token TOKEN (it is in the daemon's data directory, api-token)"
        );
    }
    let mut all = Contexts::load()?;
    let replaced = all
        .contexts
        .insert(
            name.to_owned(),
            Ctx {
                host: host.to_owned(),
                token,
            },
        )
        .is_some();
    if use_it || all.current.is_none() {
        all.current = Some(name.to_owned());
    }
    all.save()?;
    eprintln!(
        "context {name} {} ({host}){}",
        if replaced { "updated" } else { "added" },
        if all.current.as_deref() == Some(name) {
            "; in use"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn use_(name: &str) -> anyhow::Result<()> {
    let mut all = Contexts::load()?;
    if name == "default" || name == "local" {
        all.current = None;
        all.save()?;
        eprintln!("using the local daemon");
        return Ok(());
    }
    all.pick(Some(name))?;
    all.current = Some(name.to_owned());
    all.save()?;
    eprintln!("using context {name}");
    Ok(())
}

pub fn rm(name: &str) -> anyhow::Result<()> {
    let mut all = Contexts::load()?;
    if all.contexts.remove(name).is_none() {
        bail!("there is no context {name:?}");
    }
    if all.current.as_deref() == Some(name) {
        all.current = None;
    }
    all.save()?;
    eprintln!("context {name} removed");
    Ok(())
}

pub fn ls(json: bool) -> anyhow::Result<()> {
    let all = Contexts::load()?;
    if json {
        // Tokens stay out of listings.
        let v: Vec<_> = all
            .contexts
            .iter()
            .map(|(n, c)| {
                serde_json::json!({
                    "name": n,
                    "host": c.host,
                    "current": all.current.as_deref() == Some(n.as_str()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["", "NAME", "HOST"]);
    t.add_row([
        if all.current.is_none() { "*" } else { "" }.to_owned(),
        "local".to_owned(),
        crate::paths::socket().display().to_string(),
    ]);
    for (n, c) in &all.contexts {
        t.add_row([
            if all.current.as_deref() == Some(n.as_str()) {
                "*"
            } else {
                ""
            }
            .to_owned(),
            n.clone(),
            c.host.clone(),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}
