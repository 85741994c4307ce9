//! A workspace's housekeeping policy: when it is paused and when it stops by itself after
//! being idle, and how often it is backed up while it runs. Unset fields take the
//! daemon's defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a policy value was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "cannot parse {field} {input:?}: use a duration such as 90s, 30m, 2h or 1d, or 0 for never"
    )]
    Format { field: &'static str, input: String },
    #[error("{field} must be 0 (never) or at least {min} s, got {secs} s")]
    TooShort {
        field: &'static str,
        min: u64,
        secs: u64,
    },
}

/// Housekeeping of one workspace; `None` takes the daemon's default, `Some(0)` means never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    /// Stop the workspace after this many seconds with no agent turn running, no terminal
    /// attached and no client watching it. Persistent workspaces are never stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_secs: Option<u64>,
    /// Back the workspace up every this many seconds while it runs (needs a backup store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_every_secs: Option<u64>,
    /// Pause the workspace's sandbox (its processes frozen, using no CPU) after this many
    /// seconds idle, before any idle stop; the next use resumes it. Persistent workspaces
    /// are never paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_secs: Option<u64>,
}

/// The shortest idle timeout and backup interval accepted.
pub const MIN_IDLE_SECS: u64 = 5;
pub const MIN_BACKUP_EVERY_SECS: u64 = 10;

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, v, min) in [
            ("idle stop", self.idle_stop_secs, MIN_IDLE_SECS),
            ("idle pause", self.idle_pause_secs, MIN_IDLE_SECS),
            (
                "backup interval",
                self.backup_every_secs,
                MIN_BACKUP_EVERY_SECS,
            ),
        ] {
            if let Some(secs) = v
                && secs != 0
                && secs < min
            {
                return Err(PolicyError::TooShort { field, min, secs });
            }
        }
        Ok(())
    }

    /// `self`'s settings, falling back to `defaults`' where unset.
    pub fn or(self, defaults: Policy) -> Policy {
        Policy {
            idle_stop_secs: self.idle_stop_secs.or(defaults.idle_stop_secs),
            backup_every_secs: self.backup_every_secs.or(defaults.backup_every_secs),
            idle_pause_secs: self.idle_pause_secs.or(defaults.idle_pause_secs),
        }
    }

    /// The idle timeout in force, if any.
    pub fn idle_stop(&self) -> Option<Duration> {
        self.idle_stop_secs
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The idle pause in force, if any.
    pub fn idle_pause(&self) -> Option<Duration> {
        self.idle_pause_secs
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The backup interval in force, if any.
    pub fn backup_every(&self) -> Option<Duration> {
        self.backup_every_secs
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }
}

/// Parses `90s`, `30m`, `2h`, `1d`, `1h30m` or a plain number of seconds; `0`, `never` and
/// `off` give 0.
pub fn parse_duration_secs(field: &'static str, input: &str) -> Result<u64, PolicyError> {
    let s = input.trim();
    if matches!(s, "0" | "never" | "off") {
        return Ok(0);
    }
    let err = || PolicyError::Format {
        field,
        input: input.to_owned(),
    };
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        let n: u64 = num.parse().map_err(|_| err())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(err());
    }
    Ok(total)
}
