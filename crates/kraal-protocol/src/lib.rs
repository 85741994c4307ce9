//! The host↔guest wire protocol spoken between the daemon and `kraal-guest`.
//!
//! One TCP (or serial/vsock) connection carries many logical streams. Every frame is
//! `[u32 length][u32 stream][u8 kind][payload]`. Stream 0 carries the handshake; after it,
//! the host opens streams with odd ids by sending a `Control` frame holding a [`Request`].
//! Later frames on the stream carry raw bytes (`Stdout`, `Stderr`, `Stdin`, `Data`) or
//! JSON [`StreamMsg`]s (`Control`), and `Close` ends the stream from either side.
//!
//! Output frames carry an 8-byte big-endian sequence number before the bytes so that a
//! client reattaching after a daemon restart can ask for exactly what it has not seen.

mod auth;
mod codec;
mod messages;

pub use auth::{AuthError, Challenge, compute_mac, verify_mac};
pub use codec::{CodecError, Frame, FrameCodec, FrameKind, MAX_FRAME};
pub use messages::*;

/// Version of this protocol; both ends refuse a mismatch during the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// TCP port the guest agent listens on inside the sandbox's private network.
pub const DEFAULT_GUEST_PORT: u16 = 7071;

/// Where backends mount the host's agent CLIs inside every sandbox: a directory whose
/// `node_modules` holds the CLIs and Node.js. [`AGENTS_BIN`] is on the `PATH` of processes
/// the guest starts.
pub const AGENTS_DIR: &str = "/opt/kraal/agents";
/// The agent CLIs' executables (and `node`).
pub const AGENTS_BIN: &str = "/opt/kraal/agents/node_modules/.bin";

#[cfg(test)]
mod tests;
