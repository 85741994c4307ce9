//! What every backend shares: the [`Backend`] trait with its capabilities and typed
//! errors, the client for the guest agent, host process execution with timeouts, and
//! materializing a workspace source (copy or clone) into a directory.

mod backend;
pub mod checkout;
pub mod disk;
pub mod guest;
mod loopdev;
pub mod process;
pub mod template;

pub use backend::{
    Backend, BackendError, GuestEndpoint, HostCheck, ProbeStatus, SandboxSpec, SandboxStatus,
    check_snapshot_name,
};
pub use guest::{ExecEvent, ExecHandle, GuestClient, GuestClientError, Relayed, SessionEvents};

/// Finds the static guest agent binary: `$KRAAL_GUEST_BIN`, then next to the running
/// executable, then a development build in the cargo target directory above the
/// executable (so a checkout tests its own guest), then the install location. Only statically linked binaries qualify.
pub fn locate_guest_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KRAAL_GUEST_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut candidates = vec![];
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("kraal-guest"));
    }
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
    candidates.push("/usr/local/lib/kraal/kraal-guest".into());
    // Only a static binary runs in every image; a dynamically linked development build
    // next to a debug `kraal` is skipped.
    candidates.into_iter().find(|p| is_static_elf(p))
}

/// Finds the agent CLIs mounted into sandboxes: a directory whose `node_modules` holds the
/// CLIs and Node.js (in `node_modules/.bin`). `$KRAAL_AGENTS_DIR`, then the checkout's
/// `agent-clis` (above the cargo target directory of the running executable), then the
/// install location. Only a directory whose `node_modules/.bin/node` exists qualifies.
pub fn locate_agents_dir() -> Option<std::path::PathBuf> {
    let valid = |p: &std::path::Path| p.join("node_modules/.bin/node").exists();
    if let Some(p) = std::env::var_os("KRAAL_AGENTS_DIR") {
        let p = std::path::PathBuf::from(p);
        return valid(&p).then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let mut candidates = vec![];
    for anc in exe.ancestors() {
        if anc.file_name().is_some_and(|n| n == "target") {
            if let Some(checkout) = anc.parent() {
                candidates.push(checkout.join("agent-clis"));
            }
            break;
        }
    }
    candidates.push("/usr/local/lib/kraal/agents".into());
    candidates.into_iter().find(|p| valid(p))
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(path: &std::path::Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false; // Not a 64-bit ELF file.
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP (3) names the dynamic loader.
        data.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

/// The host's resolv.conf minus loopback resolvers (unreachable from a workspace),
/// falling back to public resolvers when nothing else remains.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("nameserver") {
            let addr = addr.trim();
            if addr.starts_with("127.") || addr == "::1" {
                continue;
            }
            servers += 1;
        }
        if t.starts_with("nameserver") || t.starts_with("search") || t.starts_with("options") {
            out.push_str(t);
            out.push('\n');
        }
    }
    if servers == 0 {
        out.push_str("nameserver 1.1.1.1\nnameserver 9.9.9.9\n");
    }
    out
}

/// Writes `data` to `p`, readable by its owner only (secrets: guest tokens, configs).
pub fn write_private(p: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(data)
}

/// The last `max` bytes of a file (a console log) as text; empty when unreadable.
pub fn tail_file(p: &std::path::Path, max: usize) -> String {
    let Ok(data) = std::fs::read(p) else {
        return String::new();
    };
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// The whole chain of an error on one line (`a: b: c`), skipping causes whose text the
/// message already contains.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolv_conf_drops_loopback_resolvers() {
        assert_eq!(
            super::resolv_conf("nameserver 127.0.0.53\nsearch lan\n"),
            "search lan\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n"
        );
        assert_eq!(
            super::resolv_conf("# c\nnameserver 10.0.0.2\n"),
            "nameserver 10.0.0.2\n"
        );
    }
}
