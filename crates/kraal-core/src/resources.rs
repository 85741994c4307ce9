//! CPU, memory and process-count limits of a workspace sandbox.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a resource value was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourcesError {
    #[error("cpus must be between 0.1 and 256, got {0}")]
    Cpus(f64),
    #[error("memory must be between 64 MiB and 1 TiB, got {0} MiB")]
    Memory(u64),
    #[error("pids must be between 16 and 1000000, got {0}")]
    Pids(u64),
    #[error(
        "cannot parse memory size {input:?}: use a number with an optional unit (M, G), e.g. 512M or 2G"
    )]
    MemoryFormat { input: String },
}

/// Limits enforced through the sandbox's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// CPU quota in cores (fractions allowed).
    pub cpus: f64,
    /// Memory limit in MiB.
    pub memory_mib: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 2.0,
            memory_mib: 2048,
            pids: 4096,
        }
    }
}

impl Resources {
    pub fn validate(&self) -> Result<(), ResourcesError> {
        if !(0.1..=256.0).contains(&self.cpus) || self.cpus.is_nan() {
            return Err(ResourcesError::Cpus(self.cpus));
        }
        if !(64..=1024 * 1024).contains(&self.memory_mib) {
            return Err(ResourcesError::Memory(self.memory_mib));
        }
        if !(16..=1_000_000).contains(&self.pids) {
            return Err(ResourcesError::Pids(self.pids));
        }
        Ok(())
    }
}

/// Parses "512", "512M", "512MiB", "2G", "2GiB" (case-insensitive) into MiB.
pub fn parse_memory_mib(input: &str) -> Result<u64, ResourcesError> {
    let err = || ResourcesError::MemoryFormat {
        input: input.to_owned(),
    };
    let s = input.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit.trim() {
        "" | "m" | "mb" | "mi" | "mib" => 1,
        "g" | "gb" | "gi" | "gib" => 1024,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}
