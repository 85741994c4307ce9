//! Workspace images: a declarative [`Recipe`] (Debian suite + packages) is built with
//! debootstrap into a root file system directory, cached under a content hash of the
//! recipe. Builds happen in a temporary directory renamed into place only when complete,
//! under a per-hash lock, so concurrent daemons and interrupted builds never see or leave
//! a half-built image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraal_sandbox::process::{Cmd, ProcessError, which};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "debootstrap is not installed; run the project's setup (scripts/setup.sh) or `apt-get install debootstrap`"
    )]
    NoDebootstrap,
    #[error("building image {name} failed")]
    Build {
        name: String,
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What goes into an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub suite: String,
    /// debootstrap variant, e.g. `minbase`.
    pub variant: String,
    pub packages: Vec<String>,
    /// Bumped when the post-processing below changes.
    pub revision: u32,
}

impl Recipe {
    /// The minimal image of the foundation: a shell, coreutils, git, CA certificates and
    /// the usual process tools. The guest agent is mounted in by the backend.
    pub fn base() -> Recipe {
        Recipe {
            name: "base".to_owned(),
            suite: "bookworm".to_owned(),
            variant: "minbase".to_owned(),
            packages: ["git", "ca-certificates", "procps", "less", "openssh-client"]
                .map(String::from)
                .to_vec(),
            revision: 1,
        }
    }

    /// Content hash of the recipe (mirror excluded: it does not change what is built).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("recipe serializes");
        hex::encode(&Sha256::digest(json)[..8])
    }
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub hash: String,
    pub rootfs: PathBuf,
}

/// Where images live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    mirror: String,
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let mirror = std::env::var("KRAAL_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned());
        ImageStore {
            dir: dir.into(),
            mirror,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn final_dir(&self, r: &Recipe) -> PathBuf {
        self.dir.join(format!("{}-{}", r.name, r.hash()))
    }

    /// The image if it is already built.
    pub fn get(&self, r: &Recipe) -> Option<Image> {
        let d = self.final_dir(r);
        d.join("complete").is_file().then(|| Image {
            name: r.name.clone(),
            hash: r.hash(),
            rootfs: d.join("rootfs"),
        })
    }

    /// Returns the image, building it first if needed. `progress` receives human-readable
    /// status lines.
    pub async fn ensure(
        &self,
        r: &Recipe,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Image, ImageError> {
        if let Some(img) = self.get(r) {
            return Ok(img);
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(format!(".{}-{}.lock", r.name, r.hash()));
        let lp = lock_path.clone();
        let _lock = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lp)
                .map_err(io(&lp))?;
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                ImageError::Io {
                    path: lp.clone(),
                    source: e.into(),
                }
            })
        })
        .await
        .expect("lock task does not panic")?;
        // Somebody else may have built it while we waited for the lock.
        if let Some(img) = self.get(r) {
            return Ok(img);
        }
        if which("debootstrap").is_none() {
            return Err(ImageError::NoDebootstrap);
        }
        let final_dir = self.final_dir(r);
        let tmp = self.dir.join(format!(
            ".build-{}-{}-{}",
            r.name,
            r.hash(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        // Leftovers of builds killed half-way.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!(
                    ".build-{}-{}-",
                    r.name,
                    r.hash()
                )) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        progress(&format!(
            "building image {} ({} {}, {} extra packages) with debootstrap",
            r.name,
            r.suite,
            r.variant,
            r.packages.len()
        ));
        let t0 = std::time::Instant::now();
        let result = Cmd::new("debootstrap")
            .arg(format!("--variant={}", r.variant))
            .arg(format!("--include={}", r.packages.join(",")))
            .args([r.suite.as_str()])
            .arg(&rootfs)
            .arg(&self.mirror)
            .timeout(Duration::from_secs(45 * 60))
            .run()
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::Build {
                name: r.name.clone(),
                source: e,
            });
        }
        post_process(&rootfs)?;
        std::fs::write(
            tmp.join("recipe.json"),
            serde_json::to_vec_pretty(r).expect("serializes"),
        )
        .map_err(io(&tmp))?;
        std::fs::write(tmp.join("complete"), b"").map_err(io(&tmp))?;
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        progress(&format!(
            "image {} built in {:.0} s",
            r.name,
            t0.elapsed().as_secs_f64()
        ));
        Ok(Image {
            name: r.name.clone(),
            hash: r.hash(),
            rootfs: final_dir.join("rootfs"),
        })
    }

    /// Built images, newest first.
    pub fn list(&self) -> Vec<Image> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !p.join("complete").is_file() {
                    continue;
                }
                let Ok(text) = std::fs::read(p.join("recipe.json")) else {
                    continue;
                };
                let Ok(r) = serde_json::from_slice::<Recipe>(&text) else {
                    continue;
                };
                v.push(Image {
                    name: r.name.clone(),
                    hash: r.hash(),
                    rootfs: p.join("rootfs"),
                });
            }
        }
        v
    }
}

/// Makes a debootstrapped tree fit to be a sandbox root: mount points for the workspace
/// volume and the guest agent, no package caches.
fn post_process(rootfs: &Path) -> Result<(), ImageError> {
    for d in ["workspace", ".kraal"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    for f in [".kraal/kraal-guest", ".kraal/guest.json"] {
        let p = rootfs.join(f);
        std::fs::write(&p, b"").map_err(io(&p))?;
    }
    let cache = rootfs.join("var/cache/apt/archives");
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_recipe_content() {
        let a = Recipe::base();
        let mut b = Recipe::base();
        assert_eq!(a.hash(), b.hash());
        b.packages.push("vim".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn incomplete_builds_are_not_images() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path());
        let r = Recipe::base();
        let dir = d.path().join(format!("base-{}", r.hash()));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        assert!(store.get(&r).is_none());
        std::fs::write(dir.join("complete"), "").unwrap();
        std::fs::write(dir.join("recipe.json"), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(store.get(&r).unwrap().rootfs, dir.join("rootfs"));
        assert_eq!(store.list().len(), 1);
    }
}
