//! Workspace images: a declarative [`Recipe`] is built into content-addressed **layers**
//! (the Debian system from debootstrap, the agent CLIs from npm, the guest agent), each
//! cached under the hash of what went into it, then assembled into the outputs the
//! backends need: a root file system directory (gVisor), an ext4 disk image (microVMs)
//! and an OCI image layout (Kubernetes). Everything is built in a temporary directory and
//! renamed into place only when complete, under a lock, so concurrent daemons and
//! interrupted builds never see or leave a half-built image.
//!
//! This file is the crate root: the error type, small file helpers and the re-exports that
//! make up the crate's API. The data model is in `image`, the store (finding, choosing and
//! removing images, locks) in `store`, removal of superseded builds in `prune`, recipe builds in `build` with their layers' builders
//! in `layers`; `tree` holds what `devbuild` does to the trees it builds.

mod build;
pub mod devbuild;
pub mod devcontainer;
pub mod dockerfile;
pub mod ext4;
pub mod features;
mod image;
pub mod kernel;
mod layers;
pub mod oci;
mod prune;
pub mod recipe;
pub mod registry;
mod store;
mod tree;

use std::path::{Path, PathBuf};

use kraal_sandbox::process::ProcessError;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use image::{AGENTS_DIR, Image, ImageConfig, Layer, Output, Progress, dir_size};
pub use recipe::Recipe;
pub use store::ImageStore;

pub(crate) use build::{extra_outputs, reporter};
pub(crate) use store::{lock, lock_mode};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("recipe {recipe}: {message}")]
    Recipe { recipe: String, message: String },
    #[error("{}: {message}", path.display())]
    DevContainer { path: PathBuf, message: String },
    #[error("registry: {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("feature {feature}: {message}")]
    Feature { feature: String, message: String },
    #[error("building image {name}: {step} failed: {message}")]
    Step {
        name: String,
        step: String,
        message: String,
    },
    #[error("no recipe named {name:?} (built-in: {known}); give a file with --file")]
    UnknownRecipe { name: String, known: String },
    #[error("no image named {0:?} is built")]
    NotFound(String),
    #[error(
        "no image named {name:?}: it is neither built-in ({known}) nor built with `kraal image build --file`"
    )]
    UnknownImage { name: String, known: String },
    /// A project's dev container failed; the message names the project's own files.
    #[error("{message}")]
    Project { message: String },
    #[error("image {name} is used by workspace(s) {users}; remove them first (`kraal rm`)")]
    InUse { name: String, users: String },
    #[error("{program} is not installed; run the project's setup (scripts/setup.sh){hint}")]
    MissingTool { program: String, hint: String },
    #[error("building image {name}: {step} failed")]
    Build {
        name: String,
        step: &'static str,
        #[source]
        source: ProcessError,
    },
    #[error("image store i/o failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn short_hash(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Removes `path` whatever it is; missing is fine.
fn remove_any(path: &Path) {
    if path.is_dir() && !path.is_symlink() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ImageError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("serializes")).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
