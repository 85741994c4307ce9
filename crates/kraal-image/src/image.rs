//! What a built image is: its outputs, content-addressed layers and the configuration a
//! workspace started from it gets, plus the progress reports builds send.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Recipe;

/// Where the agent CLIs live inside an image that carries them.
pub const AGENTS_DIR: &str = "opt/kraal/agents";

/// The formats a build can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// A root file system directory (always built; the others are made from it).
    Rootfs,
    /// An ext4 file system image with the root file system, for microVMs.
    Ext4,
    /// An OCI image layout directory, one layer per kraal layer.
    Oci,
}

impl Output {
    pub const ALL: [Output; 3] = [Output::Rootfs, Output::Ext4, Output::Oci];

    pub fn as_str(self) -> &'static str {
        match self {
            Output::Rootfs => "rootfs",
            Output::Ext4 => "ext4",
            Output::Oci => "oci",
        }
    }

    pub fn parse(s: &str) -> Result<Output, String> {
        Output::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown image output {s:?} (rootfs, ext4, oci)"))
    }
}

/// One step of a build, for progress displays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// 1-based step number and the number of steps.
    pub step: u32,
    pub steps: u32,
    /// What the step does, e.g. "system packages (debootstrap)".
    pub title: String,
    /// A line of the tool's output, or the step's result ("cached", "done in 3 s").
    pub detail: String,
    /// Whether the step has finished.
    pub done: bool,
}

/// A content-addressed layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// `os`, `agents` or `guest`.
    pub kind: String,
    pub hash: String,
    pub dir: PathBuf,
}

/// What a workspace started from an image gets besides its files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: std::collections::BTreeMap<String, String>,
    pub start: Vec<Vec<String>>,
    pub ports: Vec<u16>,
    /// Whether `/opt/kraal/agents` holds the agent CLIs (else the backend mounts the host's).
    pub has_agents: bool,
    /// The user sessions and commands run as (`None`: root).
    #[serde(default)]
    pub user: Option<String>,
    /// Run once, when the workspace is first started: stages in order, the commands of a
    /// stage in parallel (devcontainer onCreate/updateContent/postCreate commands).
    #[serde(default)]
    pub on_create: Vec<Vec<Vec<String>>>,
    /// Run whenever the workspace starts, after `on_create` (postStartCommand).
    #[serde(default)]
    pub on_start: Vec<Vec<Vec<String>>>,
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub hash: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub recipe: Recipe,
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
    pub built_at: String,
    /// Outputs present besides the root file system.
    #[serde(default)]
    pub outputs: Vec<Output>,
}

impl Image {
    pub fn ext4(&self) -> Option<PathBuf> {
        self.outputs
            .contains(&Output::Ext4)
            .then(|| self.dir.join("rootfs.ext4"))
    }

    pub fn oci(&self) -> Option<PathBuf> {
        self.outputs
            .contains(&Output::Oci)
            .then(|| self.dir.join("oci"))
    }

    /// Bytes on disk of each output (hard links into layers counted once).
    pub fn sizes(&self) -> Vec<(Output, u64)> {
        let mut v = vec![(Output::Rootfs, dir_size(&self.rootfs))];
        if let Some(p) = self.ext4() {
            v.push((
                Output::Ext4,
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
            ));
        }
        if let Some(p) = self.oci() {
            v.push((Output::Oci, dir_size(&p)));
        }
        v
    }
}

/// Apparent size of a tree, hard links once.
pub fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))))
        .map(|m| m.len())
        .sum()
}
