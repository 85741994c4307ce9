//! What every backend shares: the [`Backend`] trait with its capabilities and typed
//! errors, the client for the guest agent, host process execution with timeouts, and
//! materializing a workspace source (copy or clone) into a directory.

mod backend;
pub mod checkout;
pub mod guest;
pub mod process;

pub use backend::{Backend, BackendError, GuestEndpoint, HostCheck, ProbeStatus, SandboxSpec, SandboxStatus};
pub use guest::{ExecEvent, ExecHandle, GuestClient, GuestClientError};
