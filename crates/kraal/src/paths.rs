//! Where the daemon keeps its state and where the CLI finds the daemon.

use std::path::PathBuf;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$KRAAL_DATA_DIR`, else `$XDG_DATA_HOME/kraal`, else `~/.local/share/kraal`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KRAAL_DATA_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kraal");
    }
    home().join(".local/share/kraal")
}

/// `$KRAAL_SOCKET`, else `$XDG_RUNTIME_DIR/kraal/kraal.sock`, else `/run/kraal/kraal.sock`
/// for root, else `<data dir>/kraal.sock`.
pub fn socket() -> PathBuf {
    if let Some(s) = std::env::var_os("KRAAL_SOCKET") {
        return s.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kraal/kraal.sock");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/kraal/kraal.sock");
    }
    data_dir().join("kraal.sock")
}

/// `$KRAAL_IMAGE_DIR`, else `<data dir>/images`.
pub fn image_dir(data: &std::path::Path) -> PathBuf {
    std::env::var_os("KRAAL_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| data.join("images"))
}
