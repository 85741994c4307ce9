//! What every backend shares: the [`Backend`] trait with its capabilities and typed
//! errors, the client for the guest agent, host process execution with timeouts, and
//! materializing a workspace source (copy or clone) into a directory.

mod backend;
pub mod checkout;
pub mod guest;
pub mod process;

pub use backend::{
    Backend, BackendError, GuestEndpoint, HostCheck, ProbeStatus, SandboxSpec, SandboxStatus,
};
pub use guest::{ExecEvent, ExecHandle, GuestClient, GuestClientError};

/// Finds the static guest agent binary: `$KRAAL_GUEST_BIN`, then next to the running
/// executable, then the install location, then a development build in the cargo target
/// directory above the executable.
pub fn locate_guest_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KRAAL_GUEST_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut candidates = vec![];
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("kraal-guest"));
    }
    candidates.push("/usr/local/lib/kraal/kraal-guest".into());
    for anc in exe.ancestors() {
        if anc.file_name().is_some_and(|n| n == "target") {
            for profile in ["release", "debug"] {
                candidates.push(
                    anc.join("x86_64-unknown-linux-musl")
                        .join(profile)
                        .join("kraal-guest"),
                );
            }
            break;
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}
