//! Removal of superseded builds: when an image or a microVM kernel is built anew (a new
//! guest agent, recipe or kernel package), older builds of the same name that no
//! workspace runs on are deleted, so the store does not grow by gigabytes every upgrade.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{ImageStore, remove_any};

/// A build used (loaded from the cache) this recently is kept even without users: a
/// workspace may be between choosing it and recording itself as a user.
pub(crate) const RECENT_USE: Duration = Duration::from_secs(120);

/// The marker whose modification time says when a build was last chosen.
const LAST_USED: &str = "last-used";

/// Notes that the build in `dir` was just chosen (best effort: a read-only store is fine).
pub(crate) fn mark_used(dir: &Path) {
    let _ = std::fs::write(dir.join(LAST_USED), b"");
}

/// When the build in `dir` was last chosen or, failing that, finished.
fn last_used(dir: &Path) -> Option<SystemTime> {
    [LAST_USED, "complete"]
        .iter()
        .filter_map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .max()
}

fn recently_used(dir: &Path, now: SystemTime) -> bool {
    match last_used(dir) {
        Some(t) => now.duration_since(t).unwrap_or_default() < RECENT_USE,
        None => false,
    }
}

/// Removes `dir` if its build lock (`lock`) is free, unmarking it first so that a crash
/// half-way leaves no build that looks complete. Returns whether it was removed.
fn remove_build(dir: &Path, lock: &Path) -> bool {
    let Ok(Some(_held)) = crate::store::flock(lock, true, false) else {
        return false;
    };
    let _ = std::fs::remove_file(dir.join("complete"));
    remove_any(dir);
    let _ = std::fs::remove_file(lock);
    !dir.exists()
}

impl ImageStore {
    /// Deletes the builds of image `name` other than `keep` that no workspace runs on and
    /// nobody chose in the last [`RECENT_USE`], then the layers only they used. Returns
    /// the directories removed.
    pub fn prune_superseded(&self, name: &str, keep: &str) -> Vec<PathBuf> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for img in self.list() {
            if img.name != name || img.hash == keep || !Self::users(&img).is_empty() {
                continue;
            }
            if recently_used(&img.dir, now) {
                continue;
            }
            let lock = self.dir.join(format!(".{}-{}.lock", img.name, img.hash));
            if remove_build(&img.dir, &lock) {
                tracing::info!(image = %img.name, hash = %img.hash, "removed a superseded image build");
                removed.push(img.dir);
            }
        }
        if !removed.is_empty() {
            self.gc_layers();
        }
        removed
    }

    /// Deletes the kernel builds in `root` other than `keep` (a directory name) that
    /// nobody chose in the last [`RECENT_USE`]. A running microVM has its kernel in memory
    /// already; the next boot chooses the current build. Returns the directories removed.
    pub(crate) fn prune_kernels(root: &Path, keep: &str) -> Vec<PathBuf> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            if name == keep || name.starts_with('.') || !dir.join("complete").is_file() {
                continue;
            }
            let Some((_, hash)) = name.rsplit_once('-') else {
                continue;
            };
            if recently_used(&dir, now) {
                continue;
            }
            if remove_build(&dir, &root.join(format!(".{hash}.lock"))) {
                tracing::info!(kernel = %name, "removed a superseded kernel build");
                removed.push(dir);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Image, ImageConfig, Layer, Output, Recipe};

    fn age(dir: &Path, by: Duration) {
        let t = SystemTime::now() - by;
        for f in ["complete", LAST_USED] {
            if let Ok(file) = std::fs::File::options().write(true).open(dir.join(f)) {
                file.set_modified(t).unwrap();
            }
        }
    }

    /// A complete build of `name` with hash `hash` using layer `layer`, finished an hour ago.
    fn build(store: &ImageStore, name: &str, hash: &str, layer: &str) -> PathBuf {
        let dir = store.image_dir(name, hash);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let ldir = store.layers_dir().join(layer);
        std::fs::create_dir_all(&ldir).unwrap();
        std::fs::write(store.layers_dir().join(format!("{layer}.done")), b"").unwrap();
        let img = Image {
            name: name.into(),
            hash: hash.into(),
            dir: dir.clone(),
            rootfs: dir.join("rootfs"),
            recipe: Recipe::base(),
            layers: vec![Layer {
                kind: "guest".into(),
                hash: hash.into(),
                dir: ldir,
            }],
            config: ImageConfig::default(),
            built_at: crate::now(),
            outputs: vec![Output::Rootfs],
        };
        std::fs::write(dir.join("image.json"), serde_json::to_vec(&img).unwrap()).unwrap();
        std::fs::write(dir.join("complete"), b"").unwrap();
        age(&dir, Duration::from_secs(3600));
        dir
    }

    #[test]
    fn only_unused_superseded_builds_of_the_same_image_go() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path());
        let current = build(&store, "default", "cccc", "guest-cccc");
        let old = build(&store, "default", "aaaa", "guest-aaaa");
        let in_use = build(&store, "default", "bbbb", "guest-bbbb");
        let state = d.path().join("state/ws-1");
        std::fs::create_dir_all(&state).unwrap();
        let rootfs = in_use.join("rootfs");
        std::fs::write(state.join("image"), rootfs.to_string_lossy().as_bytes()).unwrap();
        ImageStore::add_user(&rootfs, "ws-1", &state).unwrap();
        // A daemon killed with its data deleted left a record nobody will remove.
        let leaked = build(&store, "default", "9999", "guest-9999");
        ImageStore::add_user(&leaked.join("rootfs"), "ws-2", &d.path().join("gone")).unwrap();
        let chosen = build(&store, "default", "dddd", "guest-dddd");
        mark_used(&chosen);
        let other = build(&store, "base", "aaaa", "guest-eeee");
        let locked = build(&store, "default", "ffff", "guest-ffff");
        let _busy =
            crate::store::flock(&d.path().join(".default-ffff.lock"), false, false).unwrap();

        let mut removed = store.prune_superseded("default", "cccc");
        removed.sort();
        assert_eq!(removed, vec![leaked.clone(), old.clone()]);
        assert!(!old.exists() && !leaked.exists());
        assert!(
            !store.layers_dir().join("guest-aaaa").exists(),
            "its layer went too"
        );
        assert!(!store.layers_dir().join("guest-aaaa.done").exists());
        for kept in [&current, &in_use, &chosen, &other, &locked] {
            assert!(
                ImageStore::load(kept).is_some(),
                "{} was kept",
                kept.display()
            );
        }
        assert!(store.layers_dir().join("guest-bbbb").is_dir());
        assert_eq!(
            ImageStore::users(&ImageStore::load(&in_use).unwrap()),
            ["ws-1"]
        );

        // Once its last workspace is gone and it has not been chosen lately, it goes too.
        ImageStore::remove_user(&in_use.join("rootfs"), "ws-1");
        assert_eq!(store.prune_superseded("default", "cccc"), vec![in_use]);
        age(&chosen, RECENT_USE + Duration::from_secs(1));
        assert_eq!(store.prune_superseded("default", "cccc"), vec![chosen]);
    }

    #[test]
    fn old_kernel_builds_go_and_the_current_one_stays() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mk = |name: &str| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
            std::fs::write(dir.join("complete"), b"").unwrap();
            age(&dir, Duration::from_secs(3600));
            dir
        };
        let keep = mk("linux-image-6.1-cloud-amd64-1111");
        let old = mk("linux-image-6.1-cloud-amd64-2222");
        let fresh = mk("linux-image-6.1-cloud-amd64-3333");
        mark_used(&fresh);
        let half = root.join(".tmp-4444");
        std::fs::create_dir_all(&half).unwrap();
        let removed = ImageStore::prune_kernels(root, "linux-image-6.1-cloud-amd64-1111");
        assert_eq!(removed, vec![old.clone()]);
        assert!(keep.is_dir() && fresh.is_dir() && half.is_dir() && !old.exists());
    }
}
