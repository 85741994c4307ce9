//! Workspace identifiers (random, immutable) and names (user-chosen, DNS-label shaped).

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Why a workspace name or id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("workspace name is empty")]
    Empty,
    #[error("workspace name {name:?} is longer than 63 characters")]
    TooLong { name: String },
    #[error(
        "workspace name {name:?} is invalid: use lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    BadCharacters { name: String },
    #[error(
        "workspace name {name:?} looks like a workspace id; pick a name that is not 'ws-' followed by hex"
    )]
    LooksLikeId { name: String },
    #[error("{id:?} is not a workspace id")]
    BadId { id: String },
}

/// Immutable random identifier of a workspace, `ws-` followed by 10 lowercase hex digits.
///
/// Ids name host resources (network namespaces, veth pairs, cgroups), so they stay short:
/// `kh` + the 10 hex digits fits Linux's 15-byte interface-name limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

/// Whether `s` can name an image: 1-40 characters of a-z, 0-9 and '-'.
pub fn is_image_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl WorkspaceId {
    pub const PREFIX: &'static str = "ws-";

    /// A fresh random id.
    pub fn random() -> Self {
        let n: u64 = rand::thread_rng().r#gen::<u64>() & 0xff_ffff_ffff;
        WorkspaceId(format!("{}{n:010x}", Self::PREFIX))
    }

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| NameError::BadId { id: s.to_owned() })?;
        if hex.len() == 10
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(WorkspaceId(s.to_owned()))
        } else {
            Err(NameError::BadId { id: s.to_owned() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 10 hex digits, used to derive host resource names.
    pub fn short(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        WorkspaceId::parse(&s)
    }
}

impl From<WorkspaceId> for String {
    fn from(id: WorkspaceId) -> String {
        id.0
    }
}

/// A user-facing workspace name: a DNS label (RFC 1123), so it is also valid as a
/// Kubernetes object name and a hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceName(String);

impl WorkspaceName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 63 {
            return Err(NameError::TooLong { name: s.to_owned() });
        }
        let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        let bytes = s.as_bytes();
        if !bytes.iter().all(|&b| ok_char(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-'
        {
            return Err(NameError::BadCharacters { name: s.to_owned() });
        }
        if WorkspaceId::parse(s).is_ok() {
            return Err(NameError::LooksLikeId { name: s.to_owned() });
        }
        Ok(WorkspaceName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for WorkspaceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        WorkspaceName::parse(&s)
    }
}

impl From<WorkspaceName> for String {
    fn from(n: WorkspaceName) -> String {
        n.0
    }
}

/// Derives a valid workspace name from arbitrary text (a directory or repository name):
/// lowercases it, maps other characters to '-', collapses runs and trims to 63 bytes.
/// Falls back to "workspace" when nothing usable remains.
pub fn derive_name(raw: &str) -> WorkspaceName {
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(63);
    let trimmed = out.trim_matches('-');
    WorkspaceName::parse(trimmed).unwrap_or_else(|_| WorkspaceName("workspace".to_owned()))
}
